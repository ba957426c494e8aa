package bus

import (
	"crypto/sha256"
	"encoding/hex"
	"io"
	"testing"

	"github.com/mailpipe/mailpipe/internal/testenv/memtest"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/mailpipe/mailpipe/internal/config"
	"github.com/mailpipe/mailpipe/pkg/mailmsg"
)

// TestMain doubles as a NATS server process for TestLargeMemoryBound.
func TestMain(m *testing.M) { memtest.Main(m) }

// TestLargeMemoryBound publishes and reads back 30 MB and checks that the
// importer's heap grows by far less than that.
func TestLargeMemoryBound(t *testing.T) {
	url := memtest.ServerProcess(t)
	ctx := testCtx(t)
	log := zaptest.NewLogger(t, zaptest.Level(zap.WarnLevel))
	c, err := Connect(ctx, config.NATS{URL: url}, log)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	b := openBus(t, c, testBusConfig())

	const size = 30 << 20
	const bound = 16 << 20
	// Warm up: connection buffers, consumers, JSON encoders.
	if _, err := b.PublishLargeMail(ctx, testEnvelope("warm-up"), memtest.NewGenReader(1<<20, 1)); err != nil {
		t.Fatal(err)
	}

	gen := memtest.NewGenReader(size, 99)
	hp := memtest.StartHeapPeak()
	_, err = b.PublishLargeMail(ctx, testEnvelope("big"), gen)
	peak := hp.Done()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("publishing 30 MB: heap peak +%.1f MB", float64(peak)/(1<<20))
	if peak > bound {
		t.Errorf("publishing 30 MB raised the heap by %.1f MB (bound %d MB)", float64(peak)/(1<<20), bound>>20)
	}

	msgs, err := b.Messages(ctx, "support")
	if err != nil || len(msgs) != 2 {
		t.Fatalf("messages: %d %v", len(msgs), err)
	}
	m, err := mailmsg.Parse(msgs[1])
	if err != nil {
		t.Fatal(err)
	}
	hp = memtest.StartHeapPeak()
	r, err := m.Body(ctx, c.JetStream())
	if err != nil {
		t.Fatal(err)
	}
	check := sha256.New()
	n, err := io.Copy(check, r)
	r.Close()
	peak = hp.Done()
	if err != nil || n != size || hex.EncodeToString(check.Sum(nil)) != gen.Sum() {
		t.Fatalf("read back %d bytes, %v, digest match %v", n, err, hex.EncodeToString(check.Sum(nil)) == gen.Sum())
	}
	t.Logf("reading back 30 MB: heap peak +%.1f MB", float64(peak)/(1<<20))
	if peak > bound {
		t.Errorf("reading 30 MB raised the heap by %.1f MB (bound %d MB)", float64(peak)/(1<<20), bound>>20)
	}
}
