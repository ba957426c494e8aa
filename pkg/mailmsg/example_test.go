package mailmsg_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/mailpipe/mailpipe/internal/bus"
	"github.com/mailpipe/mailpipe/internal/config"
	"github.com/mailpipe/mailpipe/pkg/mailmsg"
)

// A consumer reads mail from the inbound stream with a durable pull
// consumer; Body returns the raw message whether it is in the payload or in
// the object store. The first half of the example plays the importer
// against an embedded NATS server.
func Example() {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	// --- importer side (normally a separate process) ---
	dir, err := os.MkdirTemp("", "mailmsg-example")
	if err != nil {
		panic(err)
	}
	defer os.RemoveAll(dir)
	conn, err := bus.Connect(ctx, config.NATS{Embedded: config.Embedded{StoreDir: dir}}, nil)
	if err != nil {
		panic(err)
	}
	defer conn.Close()
	b, err := bus.Open(ctx, conn, exampleBusConfig(), nil)
	if err != nil {
		panic(err)
	}
	small := []byte("From: alice@example.com\r\nSubject: Hello\r\n\r\nHi!\r\n")
	p, err := b.PublishMail(ctx, bus.Envelope{
		DedupID: "6f1c0e", Mailbox: "support", Folder: "INBOX", Source: "imap",
		SourceID: "1700000000/1", Subject: "Hello", Received: time.Now(),
	}, small)
	if err != nil {
		panic(err)
	}
	if _, err := p.Wait(ctx); err != nil {
		panic(err)
	}
	large := bytes.Repeat([]byte("0123456789abcdef"), 64<<10) // 1 MiB
	if _, err := b.PublishLargeMail(ctx, bus.Envelope{
		DedupID: "9a2b4d", Mailbox: "support", Folder: "INBOX", Source: "imap",
		SourceID: "1700000000/2", Subject: "Scans", Received: time.Now(),
	}, bytes.NewReader(large)); err != nil {
		panic(err)
	}

	// --- consumer side ---
	js := conn.JetStream() // jetstream.New(nc) in a consumer process
	cons, err := js.CreateOrUpdateConsumer(ctx, "MAILPIPE_INBOUND", jetstream.ConsumerConfig{
		Durable:       "example-worker",
		FilterSubject: "mailpipe.inbound.support",
		AckPolicy:     jetstream.AckExplicitPolicy,
		MaxDeliver:    5,
	})
	if err != nil {
		panic(err)
	}
	batch, err := cons.Fetch(2, jetstream.FetchMaxWait(5*time.Second))
	if err != nil {
		panic(err)
	}
	for msg := range batch.Messages() {
		m, err := mailmsg.Parse(msg)
		if err != nil {
			_ = msg.TermWithReason(err.Error())
			continue
		}
		body, err := m.Body(ctx, js)
		if err != nil {
			_ = msg.Nak()
			continue
		}
		h := sha256.New()
		n, err := io.Copy(h, body) // a mismatch with Mailpipe-Sha256 is an error here
		body.Close()
		if err != nil {
			_ = msg.Nak()
			continue
		}
		fmt.Printf("%s %s %q %d bytes, in object store: %v, verified: %v\n",
			m.ID, m.Folder, m.Subject, n, m.Object != nil, hex.EncodeToString(h.Sum(nil)) == m.SHA256)
		// Large bodies can be removed once processed.
		if err := m.DeleteBody(ctx, js); err != nil {
			_ = msg.Nak()
			continue
		}
		_ = msg.Ack()
	}
	// Output:
	// 6f1c0e INBOX "Hello" 48 bytes, in object store: false, verified: true
	// 9a2b4d INBOX "Scans" 1048576 bytes, in object store: true, verified: true
}

func exampleBusConfig() config.Bus {
	return config.Bus{
		Stream: config.Stream{Name: "MAILPIPE_INBOUND", SubjectPrefix: "mailpipe.inbound",
			MaxAge: 7 * 24 * time.Hour, DuplicateWindow: 24 * time.Hour},
		DeadLetter: config.Stream{Name: "MAILPIPE_DEADLETTER", SubjectPrefix: "mailpipe.deadletter",
			MaxAge: 30 * 24 * time.Hour, DuplicateWindow: 24 * time.Hour},
		ObjectBucket:          "mailpipe-bodies",
		StateBucket:           "mailpipe-state",
		LargeMessageThreshold: 512 << 10,
		MaxInFlight:           256,
		PublishTimeout:        30 * time.Second,
	}
}
