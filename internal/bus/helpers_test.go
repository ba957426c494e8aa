package bus

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
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
