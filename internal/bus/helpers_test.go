package bus

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"hash"
	"io"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/mailpipe/mailpipe/internal/config"
)

func testBusConfig() config.Bus {
	return config.Bus{
		Stream: config.Stream{
			Name: "MAILPIPE_INBOUND", SubjectPrefix: "mailpipe.inbound",
			Replicas: 1, MaxAge: 7 * 24 * time.Hour, DuplicateWindow: 24 * time.Hour, Storage: "file",
		},
		DeadLetter: config.Stream{
			Name: "MAILPIPE_DEADLETTER", SubjectPrefix: "mailpipe.deadletter",
			Replicas: 1, MaxAge: 30 * 24 * time.Hour, DuplicateWindow: 24 * time.Hour, Storage: "file",
		},
		ObjectBucket:          "mailpipe-bodies",
		StateBucket:           "mailpipe-state",
		LargeMessageThreshold: 512 << 10,
		MaxInFlight:           256,
		PublishTimeout:        30 * time.Second,
	}
}

func testCtx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// embedded starts an in-process server (no listener) for one test.
func embedded(t testing.TB) *Conn {
	t.Helper()
	c, err := Connect(testCtx(t), config.NATS{Embedded: config.Embedded{StoreDir: t.TempDir()}}, zaptest.NewLogger(t, zaptest.Level(zap.WarnLevel)))
	if err != nil {
		t.Fatalf("Connect: %v", err)
	}
	t.Cleanup(c.Close)
	return c
}

func openBus(t testing.TB, c *Conn, cfg config.Bus) *Bus {
	t.Helper()
	b, err := Open(testCtx(t), c, cfg, zaptest.NewLogger(t, zaptest.Level(zap.WarnLevel)))
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	return b
}

func testEnvelope(id string) Envelope {
	return Envelope{
		DedupID:   id,
		Mailbox:   "support",
		Address:   "support@example.com",
		Folder:    "INBOX/Orders",
		Source:    "imap",
		SourceID:  "1700000000/42",
		MessageID: "<abc@example.com>",
		From:      "Alice <alice@example.com>",
		Subject:   "Order 42",
		Date:      "Tue, 14 Nov 2023 10:00:00 +0100",
		Received:  time.Date(2023, 11, 14, 9, 0, 1, 0, time.UTC),
	}
}

func sha(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// genReader produces n pseudo-random bytes without holding them, hashing
// what it produced.
type genReader struct {
	left  int64
	state uint64
	h     hash.Hash
}

func newGenReader(n int64, seed uint64) *genReader {
	return &genReader{left: n, state: seed | 1, h: sha256.New()}
}

func (g *genReader) Read(p []byte) (int, error) {
	if g.left == 0 {
		return 0, io.EOF
	}
	if int64(len(p)) > g.left {
		p = p[:g.left]
	}
	for i := range p {
		g.state ^= g.state << 13
		g.state ^= g.state >> 7
		g.state ^= g.state << 17
		p[i] = byte(g.state)
	}
	g.left -= int64(len(p))
	g.h.Write(p)
	return len(p), nil
}

func (g *genReader) sum() string { return hex.EncodeToString(g.h.Sum(nil)) }

// heapPeak samples the heap in use right after a forced collection, that
// is the memory actually held, until stopped, and returns the peak above
// the baseline measured at start. (Sampling without collecting would
// measure the GC's pacing: garbage awaiting collection.)
type heapPeak struct {
	base uint64
	peak atomic.Uint64
	stop chan struct{}
	wg   sync.WaitGroup
}

func heapAfterGC() uint64 {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapInuse
}

func startHeapPeak() *heapPeak {
	runtime.GC() // twice: also empties sync.Pools
	h := &heapPeak{base: heapAfterGC(), stop: make(chan struct{})}
	h.peak.Store(h.base)
	h.wg.Add(1)
	go func() {
		defer h.wg.Done()
		tk := time.NewTicker(5 * time.Millisecond)
		defer tk.Stop()
		for {
			select {
			case <-h.stop:
				return
			case <-tk.C:
				if v := heapAfterGC(); v > h.peak.Load() {
					h.peak.Store(v)
				}
			}
		}
	}()
	return h
}

func (h *heapPeak) done() int64 {
	close(h.stop)
	h.wg.Wait()
	return int64(h.peak.Load()) - int64(h.base)
}
