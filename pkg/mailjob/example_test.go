package mailjob_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/mailpipe/mailpipe/pkg/mailjob"
)

// A producer uploads a large attachment, publishes a job (twice, as a
// retry after a lost acknowledgement would) and follows its status
// events. The sender's part is played by a few lines below, against an
// embedded NATS server.
func Example() {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	js, stop := startJetStream() // nats.Connect(url, ...) and jetstream.New(nc) in a producer
	defer stop()
	createSenderStreams(ctx, js) // the sender does this when it starts

	// --- producer ---
	pdf := bytes.Repeat([]byte("%PDF-1.7 invoice 2026-0142 "), 40000) // about 1 MB
	ref, err := mailjob.UploadAttachment(ctx, js, mailjob.DefaultAttachmentBucket,
		"erp-invoice-2026-0142/invoice.pdf", bytes.NewReader(pdf))
	if err != nil {
		panic(err)
	}
	logo := mailjob.InlineAttachment("logo.png", "image/png", []byte("\x89PNG..."))
	logo.ContentID, logo.Inline = "logo", true
	job := &mailjob.Job{
		JobID:   "erp-invoice-2026-0142", // from the producer's data: a retry reuses it
		From:    "billing@example.com",
		To:      []mailjob.Recipient{{Address: "ap@customer.example", Name: "Customer, Accounts Payable"}},
		Subject: "Invoice 2026-0142",
		Text:    "Please find invoice 2026-0142 attached.",
		HTML:    `<img src="cid:logo"><p>Please find invoice 2026-0142 attached.</p>`,
		Attachments: []mailjob.Attachment{
			logo,
			mailjob.ObjectAttachment("invoice-2026-0142.pdf", "application/pdf", ref),
		},
		Headers:     map[string]string{"X-ERP-Document": "INV-2026-0142"},
		Correlation: map[string]string{"document": "INV-2026-0142"},
	}
	for range 2 {
		res, err := mailjob.Publish(ctx, js, job, mailjob.WithSource("/erp/billing"))
		if err != nil {
			panic(err) // a *mailjob.ValidationError lists every problem
		}
		fmt.Printf("published on %s, duplicate: %v\n", res.Subject, res.Duplicate)
	}
	events, err := mailjob.WatchStatus(ctx, js, job.JobID)
	if err != nil {
		panic(err)
	}

	go playSender(ctx, js)

	for ev := range events { // closed after the final event
		switch {
		case ev.Type == mailjob.StatusSent:
			fmt.Printf("%s (attempt %d) as %s, document %s\n", ev.Type, ev.Attempt, ev.InternetMessageID, ev.Correlation["document"])
		case ev.Type == mailjob.StatusFailed && !ev.Permanent:
			fmt.Printf("%s (attempt %d): %s, will retry\n", ev.Type, ev.Attempt, ev.ReasonCode)
		default:
			fmt.Printf("%s (attempt %d)\n", ev.Type, ev.Attempt)
		}
	}
	// Output:
	// published on mailpipe.outbound.jobs.billing_example_com, duplicate: false
	// published on mailpipe.outbound.jobs.billing_example_com, duplicate: true
	// accepted (attempt 1)
	// failed (attempt 1): throttled, will retry
	// accepted (attempt 2)
	// sent (attempt 2) as <erp-invoice-2026-0142@mailpipe.example>, document INV-2026-0142
}

// playSender takes the job twice: the first attempt is throttled, the
// second sends it.
func playSender(ctx context.Context, js jetstream.JetStream) {
	cons, err := js.CreateOrUpdateConsumer(ctx, mailjob.DefaultJobsStream, jetstream.ConsumerConfig{
		Durable:       "sender-billing",
		FilterSubject: mailjob.Subject("", "billing@example.com"),
		AckPolicy:     jetstream.AckExplicitPolicy,
	})
	if err != nil {
		panic(err)
	}
	for {
		msg, err := cons.Next(jetstream.FetchMaxWait(10 * time.Second))
		if err != nil {
			panic(err)
		}
		md, _ := msg.Metadata()
		job, err := mailjob.ParseJobMsg(msg, mailjob.DefaultLimits)
		if err != nil {
			panic(err) // the sender publishes a failed event (invalid_job) and a dead letter
		}
		ev := mailjob.StatusEvent{JobID: job.JobID, Attempt: int(md.NumDelivered), From: job.From, Correlation: job.Correlation}
		publish := func(typ mailjob.StatusType, edit func(*mailjob.StatusEvent)) {
			e := ev
			e.Type = typ
			if edit != nil {
				edit(&e)
			}
			if _, err := mailjob.PublishStatus(ctx, js, &e); err != nil {
				panic(err)
			}
		}
		publish(mailjob.StatusAccepted, nil)
		if md.NumDelivered == 1 {
			publish(mailjob.StatusFailed, func(e *mailjob.StatusEvent) {
				e.ReasonCode, e.Reason = mailjob.ReasonThrottled, "Graph answered 429 ApplicationThrottled"
			})
			_ = msg.Nak()
			continue
		}
		publish(mailjob.StatusSent, func(e *mailjob.StatusEvent) {
			e.InternetMessageID = "<" + job.JobID + "@mailpipe.example>"
		})
		_ = msg.Ack()
		return
	}
}

func startJetStream() (jetstream.JetStream, func()) {
	dir, err := os.MkdirTemp("", "mailjob-example")
	if err != nil {
		panic(err)
	}
	ns, err := server.NewServer(&server.Options{JetStream: true, StoreDir: dir, DontListen: true, NoSigs: true})
	if err != nil {
		panic(err)
	}
	ns.Start()
	if !ns.ReadyForConnections(10 * time.Second) {
		panic("server not ready")
	}
	nc, err := nats.Connect("", nats.InProcessServer(ns))
	if err != nil {
		panic(err)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		panic(err)
	}
	return js, func() {
		nc.Close()
		ns.Shutdown()
		ns.WaitForShutdown()
		os.RemoveAll(dir)
	}
}

// createSenderStreams creates what the sender creates at start-up, with
// the default settings of docs/jobs.md.
func createSenderStreams(ctx context.Context, js jetstream.JetStream) {
	for _, cfg := range []jetstream.StreamConfig{
		{Name: mailjob.DefaultJobsStream, Subjects: []string{mailjob.DefaultJobsPrefix + ".>"},
			Retention: jetstream.WorkQueuePolicy, Discard: jetstream.DiscardNew,
			MaxAge: 7 * 24 * time.Hour, Duplicates: 24 * time.Hour, MaxMsgSize: 1 << 20},
		{Name: mailjob.DefaultStatusStream, Subjects: []string{mailjob.DefaultStatusPrefix + ".>"},
			MaxAge: 30 * 24 * time.Hour, Duplicates: 24 * time.Hour},
		{Name: mailjob.DefaultDeadLetterStream, Subjects: []string{mailjob.DefaultDeadLetterPrefix + ".>"},
			MaxAge: 30 * 24 * time.Hour, Duplicates: 24 * time.Hour, MaxMsgSize: 1 << 20},
	} {
		if _, err := js.CreateStream(ctx, cfg); err != nil {
			panic(err)
		}
	}
	if _, err := js.CreateObjectStore(ctx, jetstream.ObjectStoreConfig{
		Bucket: mailjob.DefaultAttachmentBucket, TTL: 7 * 24 * time.Hour,
	}); err != nil {
		panic(err)
	}
}
