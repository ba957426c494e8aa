package bus

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/mailpipe/mailpipe/internal/testenv/memtest"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap/zaptest"

	"github.com/mailpipe/mailpipe/internal/config"
	"github.com/mailpipe/mailpipe/pkg/mailmsg"
)

const rawMail = "From: Alice <alice@example.com>\r\nTo: support@example.com\r\nSubject: Order 42\r\nMessage-ID: <abc@example.com>\r\nDate: Tue, 14 Nov 2023 10:00:00 +0100\r\n\r\nHello.\r\n"

func TestOpenCreatesAndUpdatesStreams(t *testing.T) {
	ctx := testCtx(t)
	c := embedded(t)
	cfg := testBusConfig()
	b := openBus(t, c, cfg)

	info, err := b.StreamInfo(ctx)
	if err != nil {
		t.Fatal(err)
	}
	in := info.Inbound
	if in.Name != "MAILPIPE_INBOUND" || !slices.Equal(in.Subjects, []string{"mailpipe.inbound.>"}) ||
		in.DuplicateWindow != 24*time.Hour || in.MaxAge != 7*24*time.Hour || in.Replicas != 1 || in.Storage != "file" {
		t.Errorf("inbound stream: %+v", in)
	}
	if want := int32(512<<10 + HeaderRoom); in.MaxMsgSize != want {
		t.Errorf("MaxMsgSize %d, want %d", in.MaxMsgSize, want)
	}
	if dl := info.DeadLetter; dl.Name != "MAILPIPE_DEADLETTER" || !slices.Equal(dl.Subjects, []string{"mailpipe.deadletter.>"}) {
		t.Errorf("dead-letter stream: %+v", dl)
	}
	if info.Objects.Name != "mailpipe-bodies" || info.State.Name != "mailpipe-state" || !info.Embedded {
		t.Errorf("buckets: %+v %+v", info.Objects, info.State)
	}
	if s := info.String(); !strings.Contains(s, "stream MAILPIPE_INBOUND [mailpipe.inbound.>]: 0 messages") ||
		!strings.Contains(s, "max_payload 1.0 MiB") || !strings.Contains(s, "duplicate window 24h0m0s") {
		t.Errorf("summary: %s", s)
	}

	// A second Open with another max_age and max_bytes updates the stream.
	cfg.Stream.MaxAge = 48 * time.Hour
	cfg.Stream.MaxBytes = 1 << 30
	b = openBus(t, c, cfg)
	info, err = b.StreamInfo(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.Inbound.MaxAge != 48*time.Hour || info.Inbound.MaxBytes != 1<<30 {
		t.Errorf("stream not updated: %+v", info.Inbound)
	}
	// Unchanged config: Open again is a no-op.
	openBus(t, c, cfg)

	// The same stream name with other subjects is an error naming both.
	bad := cfg
	bad.Stream.SubjectPrefix = "other.inbound"
	_, err = Open(ctx, c, bad, zaptest.NewLogger(t))
	if err == nil || !strings.Contains(err.Error(), "MAILPIPE_INBOUND") || !strings.Contains(err.Error(), "bus.stream.subject_prefix") {
		t.Errorf("subject mismatch: %v", err)
	}
	// Storage cannot change.
	bad = cfg
	bad.Stream.Storage = "memory"
	_, err = Open(ctx, c, bad, zaptest.NewLogger(t))
	if err == nil || !strings.Contains(err.Error(), "MAILPIPE_INBOUND") || !strings.Contains(err.Error(), "bus.stream.storage") {
		t.Errorf("storage mismatch: %v", err)
	}
	// Invalid settings are reported with their keys.
	bad = cfg
	bad.DeadLetter.SubjectPrefix = "mailpipe.inbound.dead"
	bad.Stream.DuplicateWindow = 100 * time.Hour
	_, err = Open(ctx, c, bad, zaptest.NewLogger(t))
	if err == nil || !strings.Contains(err.Error(), "bus.dead_letter.subject_prefix") || !strings.Contains(err.Error(), "bus.stream.duplicate_window") {
		t.Errorf("validation: %v", err)
	}
}

func TestOpenMaxPayloadTooSmall(t *testing.T) {
	c := embedded(t) // default max_payload 1 MiB
	cfg := testBusConfig()
	cfg.LargeMessageThreshold = 1 << 20
	_, err := Open(testCtx(t), c, cfg, zaptest.NewLogger(t))
	if err == nil || !strings.Contains(err.Error(), "bus.large_message_threshold") || !strings.Contains(err.Error(), "max_payload") {
		t.Fatalf("want max_payload error, got %v", err)
	}
}

func TestPublishSmall(t *testing.T) {
	ctx := testCtx(t)
	c := embedded(t)
	b := openBus(t, c, testBusConfig())

	env := testEnvelope("id-small-1")
	body := []byte(rawMail)
	before := time.Now().UTC().Add(-time.Second)
	p, err := b.PublishMail(ctx, env, body)
	if err != nil {
		t.Fatal(err)
	}
	res, err := p.Wait(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if res.Duplicate || res.Stream != "MAILPIPE_INBOUND" || res.Seq != 1 {
		t.Errorf("result %+v", res)
	}

	msgs, err := b.Messages(ctx, "support")
	if err != nil || len(msgs) != 1 {
		t.Fatalf("messages: %d, %v", len(msgs), err)
	}
	m := msgs[0]
	if m.Subject() != "mailpipe.inbound.support" {
		t.Errorf("subject %q", m.Subject())
	}
	if !bytes.Equal(m.Data(), body) {
		t.Errorf("payload differs")
	}
	h := m.Headers()
	ceTime, err := time.Parse(time.RFC3339, h.Get("ce-time"))
	if err != nil || ceTime.Before(before) || ceTime.After(time.Now().Add(time.Second)) {
		t.Errorf("ce-time %q: %v", h.Get("ce-time"), err)
	}
	want := map[string]string{
		"ce-specversion":      "1.0",
		"ce-id":               "id-small-1",
		"ce-source":           "/mailpipe/support",
		"ce-type":             "com.mailpipe.mail.received.v1",
		"ce-time":             h.Get("ce-time"),
		"ce-datacontenttype":  "message/rfc822",
		"ce-subject":          "INBOX/Orders",
		"Nats-Msg-Id":         "id-small-1",
		"Mailpipe-Mailbox":    "support",
		"Mailpipe-Address":    "support@example.com",
		"Mailpipe-Folder":     "INBOX/Orders",
		"Mailpipe-Source":     "imap",
		"Mailpipe-Source-Id":  "1700000000/42",
		"Mailpipe-Message-Id": "<abc@example.com>",
		"Mailpipe-From":       "Alice <alice@example.com>",
		"Mailpipe-Subject":    "Order 42",
		"Mailpipe-Date":       "Tue, 14 Nov 2023 10:00:00 +0100",
		"Mailpipe-Received":   "2023-11-14T09:00:01Z",
		"Mailpipe-Size":       fmt.Sprint(len(body)),
		"Mailpipe-Sha256":     sha(body),
	}
	got := map[string]string{}
	for k, v := range h {
		if len(v) != 1 {
			t.Errorf("header %s has %d values", k, len(v))
		}
		got[k] = v[0]
	}
	if !maps.Equal(got, want) {
		for k := range maps.Keys(want) {
			if got[k] != want[k] {
				t.Errorf("header %s = %q, want %q", k, got[k], want[k])
			}
		}
		for k := range maps.Keys(got) {
			if _, ok := want[k]; !ok {
				t.Errorf("unexpected header %s = %q", k, got[k])
			}
		}
	}

	// pkg/mailmsg reads it back.
	mm, err := mailmsg.Parse(m)
	if err != nil {
		t.Fatal(err)
	}
	if mm.ID != "id-small-1" || mm.Mailbox != "support" || mm.Folder != "INBOX/Orders" || mm.Size != int64(len(body)) ||
		mm.SHA256 != sha(body) || mm.Object != nil || !mm.Received.Equal(env.Received) || mm.Subject != "Order 42" {
		t.Errorf("parsed %+v", mm)
	}
	r, err := mm.Body(ctx, c.JetStream())
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if got, err := io.ReadAll(r); err != nil || !bytes.Equal(got, body) {
		t.Errorf("body: %v", err)
	}
}

func TestPublishDuplicate(t *testing.T) {
	ctx := testCtx(t)
	b := openBus(t, embedded(t), testBusConfig())
	body := []byte(rawMail)
	var results []PublishResult
	for range 2 {
		p, err := b.PublishMail(ctx, testEnvelope("same-id"), body)
		if err != nil {
			t.Fatal(err)
		}
		res, err := p.Wait(ctx)
		if err != nil {
			t.Fatal(err)
		}
		results = append(results, res)
	}
	if results[0].Duplicate || !results[1].Duplicate || results[1].Seq != results[0].Seq {
		t.Errorf("results %+v", results)
	}
	if n, err := b.CountMessages(ctx, "support"); err != nil || n != 1 {
		t.Errorf("count %d, %v", n, err)
	}

	// Distinct DedupIDs with the same Message-ID are distinct messages.
	for _, id := range []string{"id-a", "id-b"} {
		p, err := b.PublishMail(ctx, testEnvelope(id), body)
		if err != nil {
			t.Fatal(err)
		}
		if res, err := p.Wait(ctx); err != nil || res.Duplicate {
			t.Fatalf("%s: %+v %v", id, res, err)
		}
	}
	if n, err := b.CountMessages(ctx, "support"); err != nil || n != 3 {
		t.Errorf("count %d, %v", n, err)
	}
}

func TestPublishLarge(t *testing.T) {
	ctx := testCtx(t)
	c := embedded(t)
	b := openBus(t, c, testBusConfig())
	js := c.JetStream()

	for i, size := range []int64{5 << 20, 30 << 20} {
		id := fmt.Sprintf("large-%d", i)
		env := testEnvelope(id)
		gen := memtest.NewGenReader(size, uint64(size))

		// The heap here includes the in-process server's block caches;
		// TestLargeMemoryBound measures the importer side alone.
		hp := memtest.StartHeapPeak()
		res, err := b.PublishLargeMail(ctx, env, gen)
		peak := hp.Done()
		if err != nil {
			t.Fatalf("%d bytes: %v", size, err)
		}
		t.Logf("%d MB: heap peak +%.1f MB while publishing, server included", size>>20, float64(peak)/(1<<20))
		if res.Duplicate || res.Stream != "MAILPIPE_INBOUND" {
			t.Errorf("result %+v", res)
		}

		msgs, err := b.Messages(ctx, "support")
		if err != nil || len(msgs) != i+1 {
			t.Fatalf("messages: %d, %v", len(msgs), err)
		}
		m := msgs[i]
		h := m.Headers()
		if len(m.Data()) != 0 || h.Get("Mailpipe-Body-Bucket") != "mailpipe-bodies" || h.Get("Mailpipe-Body-Object") != id ||
			!strings.HasPrefix(h.Get("Mailpipe-Body-Digest"), "SHA-256=") || h.Get("Mailpipe-Sha256") != gen.Sum() ||
			h.Get("Mailpipe-Size") != fmt.Sprint(size) || h.Get("Nats-Msg-Id") != id || h.Get("ce-id") != id {
			t.Errorf("reference message: %d bytes payload, headers %v", len(m.Data()), h)
		}

		mm, err := mailmsg.Parse(m)
		if err != nil {
			t.Fatal(err)
		}
		if mm.Object == nil || mm.Object.Bucket != "mailpipe-bodies" || mm.Object.Name != id {
			t.Fatalf("object ref %+v", mm.Object)
		}
		hp = memtest.StartHeapPeak()
		r, err := mm.Body(ctx, js)
		if err != nil {
			t.Fatal(err)
		}
		check := sha256.New()
		n, err := io.Copy(check, r)
		r.Close()
		peak = hp.Done()
		if err != nil || n != size {
			t.Fatalf("read back %d bytes: %v", n, err)
		}
		if hex.EncodeToString(check.Sum(nil)) != gen.Sum() {
			t.Errorf("read-back SHA-256 %s, want %s", hex.EncodeToString(check.Sum(nil)), gen.Sum())
		}
		t.Logf("%d MB: heap peak +%.1f MB while reading back, server included", size>>20, float64(peak)/(1<<20))

		// Publishing again (crash before the move) re-puts the object and
		// is a duplicate message.
		if i == 0 {
			// The object is readable by the stock object store client.
			obs, err := js.ObjectStore(ctx, "mailpipe-bodies")
			if err != nil {
				t.Fatal(err)
			}
			or, err := obs.Get(ctx, id)
			if err != nil {
				t.Fatal(err)
			}
			stock := sha256.New()
			if _, err := io.Copy(stock, or); err != nil || hex.EncodeToString(stock.Sum(nil)) != gen.Sum() {
				t.Errorf("stock client read: %v", err)
			}
			or.Close()
			objStream, _ := js.Stream(ctx, "OBJ_mailpipe-bodies")
			before, _ := objStream.Info(ctx)

			res, err := b.PublishLargeMail(ctx, env, memtest.NewGenReader(size, uint64(size)))
			if err != nil || !res.Duplicate {
				t.Errorf("republish: %+v %v", res, err)
			}
			if n, _ := b.CountMessages(ctx, "support"); n != 1 {
				t.Errorf("count after republish %d", n)
			}
			// The previous chunks were purged: the bucket did not grow.
			after, _ := objStream.Info(ctx)
			if after.State.Msgs != before.State.Msgs || after.State.Bytes > before.State.Bytes+1024 {
				t.Errorf("object stream grew on re-put: %d→%d msgs, %d→%d bytes",
					before.State.Msgs, after.State.Msgs, before.State.Bytes, after.State.Bytes)
			}
		}

		if err := mm.DeleteBody(ctx, js); err != nil {
			t.Fatal(err)
		}
		if err := mm.DeleteBody(ctx, js); err != nil {
			t.Errorf("second delete: %v", err)
		}
		if _, err := mm.Body(ctx, js); !errors.Is(err, jetstream.ErrObjectNotFound) {
			t.Errorf("body after delete: %v", err)
		}
	}
}

func TestPublishLargeReadError(t *testing.T) {
	ctx := testCtx(t)
	b := openBus(t, embedded(t), testBusConfig())
	boom := errors.New("imap connection reset")
	r := io.MultiReader(memtest.NewGenReader(300<<10, 7), &errReader{boom})
	_, err := b.PublishLargeMail(ctx, testEnvelope("broken"), r)
	if !errors.Is(err, boom) || errors.Is(err, ErrTransient) || errors.Is(err, ErrRejected) {
		t.Fatalf("got %v", err)
	}
	if n, _ := b.CountMessages(ctx, "support"); n != 0 {
		t.Errorf("message published despite read error")
	}
}

type errReader struct{ err error }

func (e *errReader) Read([]byte) (int, error) { return 0, e.err }

func TestPublishDeadLetter(t *testing.T) {
	ctx := testCtx(t)
	c := embedded(t)
	b := openBus(t, c, testBusConfig())
	body := []byte(rawMail)
	if err := b.PublishDeadLetter(ctx, DeadLetter{Envelope: testEnvelope("dead-1"), Reason: "unparseable:\r\nbad header", Body: body}); err != nil {
		t.Fatal(err)
	}
	env := testEnvelope("dead-2")
	env.Size = 50 << 20
	if err := b.PublishDeadLetter(ctx, DeadLetter{Envelope: env, Reason: "too large"}); err != nil {
		t.Fatal(err)
	}
	// Same id again: deduplicated.
	if err := b.PublishDeadLetter(ctx, DeadLetter{Envelope: testEnvelope("dead-1"), Reason: "again"}); err != nil {
		t.Fatal(err)
	}
	msgs, err := b.DeadLetters(ctx, "support")
	if err != nil || len(msgs) != 2 {
		t.Fatalf("dead letters: %d %v", len(msgs), err)
	}
	h := msgs[0].Headers()
	if msgs[0].Subject() != "mailpipe.deadletter.support" || h.Get("Nats-Msg-Id") != "dl-dead-1" || h.Get("ce-id") != "dl-dead-1" ||
		h.Get("ce-type") != "com.mailpipe.mail.deadletter.v1" || h.Get("Mailpipe-Reason") != "unparseable: bad header" ||
		h.Get("Mailpipe-Sha256") != sha(body) || !bytes.Equal(msgs[0].Data(), body) || h.Get("ce-datacontenttype") != "message/rfc822" {
		t.Errorf("dead letter 1: %v", h)
	}
	h = msgs[1].Headers()
	if len(msgs[1].Data()) != 0 || h.Get("Mailpipe-Reason") != "too large" || h.Get("Mailpipe-Size") != fmt.Sprint(50<<20) ||
		h.Get("ce-datacontenttype") != "" || h.Get("Mailpipe-Sha256") != "" {
		t.Errorf("dead letter 2: %v", h)
	}
	mm, err := mailmsg.Parse(msgs[1])
	if err != nil || !mm.IsDeadLetter() || mm.Reason != "too large" || mm.HasBody() {
		t.Errorf("parsed dead letter: %+v %v", mm, err)
	}
	if n, _ := b.CountMessages(ctx, "support"); n != 0 {
		t.Errorf("dead letters leaked into the inbound stream")
	}
}

func TestMaxInFlight(t *testing.T) {
	ctx := testCtx(t)
	c := embedded(t)
	cfg := testBusConfig()
	cfg.MaxInFlight = 3
	b := openBus(t, c, cfg)

	// Without the stream nobody answers: publishes stay pending while the
	// client retries, then fail as transient.
	if err := c.JetStream().DeleteStream(ctx, cfg.Stream.Name); err != nil {
		t.Fatal(err)
	}
	var ps []*Pending
	for i := range 3 {
		p, err := b.PublishMail(ctx, testEnvelope(fmt.Sprint("nr-", i)), []byte(rawMail))
		if err != nil {
			t.Fatal(err)
		}
		ps = append(ps, p)
	}
	if n := b.InFlight("support"); n != 3 {
		t.Errorf("in flight %d", n)
	}
	short, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	_, err := b.PublishMail(short, testEnvelope("nr-4"), []byte(rawMail))
	cancel()
	if !errors.Is(err, context.DeadlineExceeded) || !errors.Is(err, ErrTransient) {
		t.Fatalf("fourth publish: %v", err)
	}
	// Another mailbox has its own slots.
	other := testEnvelope("other-1")
	other.Mailbox = "sales"
	if _, err := b.PublishMail(short, other, []byte(rawMail)); err == nil {
		t.Errorf("expired context accepted")
	}
	po, err := b.PublishMail(ctx, other, []byte(rawMail))
	if err != nil {
		t.Fatalf("other mailbox blocked: %v", err)
	}
	for _, p := range append(ps, po) {
		_, err := p.Wait(ctx)
		if !errors.Is(err, ErrTransient) || errors.Is(err, ErrRejected) || !errors.Is(err, jetstream.ErrNoStreamResponse) {
			t.Errorf("no-responders publish: %v", err)
		}
	}
	if n := b.InFlight("support"); n != 0 {
		t.Errorf("in flight after completion %d", n)
	}

	// With the stream back, a burst never exceeds the bound.
	b = openBus(t, c, cfg)
	var max int
	var wg sync.WaitGroup
	stop := make(chan struct{})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
				if n := b.InFlight("support"); n > max {
					max = n
				}
			}
		}
	}()
	body := bytes.Repeat([]byte("x"), 10<<10)
	ps = ps[:0]
	for i := range 500 {
		p, err := b.PublishMail(ctx, testEnvelope(fmt.Sprint("burst-", i)), body)
		if err != nil {
			t.Fatal(err)
		}
		ps = append(ps, p)
	}
	for _, p := range ps {
		if _, err := p.Wait(ctx); err != nil {
			t.Fatal(err)
		}
	}
	close(stop)
	wg.Wait()
	if max > 3 || max == 0 {
		t.Errorf("max in flight observed %d, bound 3", max)
	}
	if err := b.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if n, _ := b.CountMessages(ctx, "support"); n != 500 {
		t.Errorf("count %d", n)
	}
}

func TestPublishRejected(t *testing.T) {
	ctx := testCtx(t)
	c := embedded(t)
	b := openBus(t, c, testBusConfig())

	_, err := b.PublishMail(ctx, testEnvelope("big"), make([]byte, 512<<10+1))
	if !errors.Is(err, ErrRejected) || !errors.Is(err, ErrTooLarge) {
		t.Errorf("too large: %v", err)
	}
	env := testEnvelope("x")
	env.Mailbox = "bad.name"
	if _, err := b.PublishMail(ctx, env, []byte(rawMail)); !errors.Is(err, ErrRejected) {
		t.Errorf("bad mailbox: %v", err)
	}
	if _, err := b.PublishMail(ctx, testEnvelope(""), []byte(rawMail)); !errors.Is(err, ErrRejected) {
		t.Errorf("no DedupID: %v", err)
	}

	// The stream refusing a message is a permanent rejection.
	s, err := c.JetStream().Stream(ctx, "MAILPIPE_INBOUND")
	if err != nil {
		t.Fatal(err)
	}
	sc := s.CachedInfo().Config
	sc.MaxMsgSize = 1000
	if _, err := c.JetStream().UpdateStream(ctx, sc); err != nil {
		t.Fatal(err)
	}
	p, err := b.PublishMail(ctx, testEnvelope("refused"), bytes.Repeat([]byte("y"), 5000))
	if err != nil {
		t.Fatal(err)
	}
	_, err = p.Wait(ctx)
	var apiErr *jetstream.APIError
	if !errors.Is(err, ErrRejected) || errors.Is(err, ErrTransient) || !errors.As(err, &apiErr) {
		t.Errorf("stream rejection: %v", err)
	}
	if err := b.PublishDeadLetter(ctx, DeadLetter{Envelope: testEnvelope("refused"), Reason: "rejected"}); err != nil {
		t.Errorf("dead letter: %v", err)
	}
}

func TestRecentDigests(t *testing.T) {
	ctx := testCtx(t)
	b := openBus(t, embedded(t), testBusConfig())
	publish := func(mailbox, id, body string) string {
		env := testEnvelope(id)
		env.Mailbox = mailbox
		p, err := b.PublishMail(ctx, env, []byte(body))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := p.Wait(ctx); err != nil {
			t.Fatal(err)
		}
		return sha([]byte(body))
	}
	if d, err := b.RecentDigests(ctx, "support", time.Time{}); err != nil || len(d) != 0 {
		t.Fatalf("empty stream: %v %v", d, err)
	}
	old := publish("support", "r1", "one")
	time.Sleep(20 * time.Millisecond)
	mid := time.Now()
	time.Sleep(20 * time.Millisecond)
	newer := []string{publish("support", "r2", "two"), publish("support", "r3", "three")}
	publish("sales", "r4", "four")

	all, err := b.RecentDigests(ctx, "support", time.Now().Add(-time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	if len(all) != 3 || !all[old] || !all[newer[0]] || !all[newer[1]] {
		t.Errorf("all: %v", all)
	}
	recent, err := b.RecentDigests(ctx, "support", mid)
	if err != nil {
		t.Fatal(err)
	}
	if len(recent) != 2 || recent[old] {
		t.Errorf("recent: %v", recent)
	}
	if none, err := b.RecentDigests(ctx, "support", time.Now().Add(time.Hour)); err != nil || len(none) != 0 {
		t.Errorf("future: %v %v", none, err)
	}
}

func TestFolderValidity(t *testing.T) {
	ctx := testCtx(t)
	b := openBus(t, embedded(t), testBusConfig())
	folders := []string{"INBOX", "INBOX/Ärger & Co.*>", "Archive/2024 Q1"}
	for _, f := range folders {
		if v, ok, err := b.FolderValidity(ctx, "support", f); err != nil || ok || v != 0 {
			t.Fatalf("%q before set: %d %v %v", f, v, ok, err)
		}
	}
	for i, f := range folders {
		if err := b.SetFolderValidity(ctx, "support", f, uint32(1000+i)); err != nil {
			t.Fatal(err)
		}
	}
	if err := b.SetFolderValidity(ctx, "support", "INBOX", 4294967295); err != nil {
		t.Fatal(err)
	}
	for i, f := range folders {
		want := uint32(1000 + i)
		if i == 0 {
			want = 4294967295
		}
		if v, ok, err := b.FolderValidity(ctx, "support", f); err != nil || !ok || v != want {
			t.Errorf("%q: %d %v %v", f, v, ok, err)
		}
	}
	if _, ok, _ := b.FolderValidity(ctx, "sales", "INBOX"); ok {
		t.Errorf("validity leaked across mailboxes")
	}
	if err := b.SetFolderValidity(ctx, "support", "", 1); err == nil {
		t.Errorf("empty folder accepted")
	}
}

func TestHeaderSanitization(t *testing.T) {
	long := strings.Repeat("ä", 700) // 1400 bytes
	cases := []struct{ in, want string }{
		{"plain", "plain"},
		{"Hello\r\nBcc: evil@example.com", "Hello Bcc: evil@example.com"},
		{"folded\r\n\t  subject", "folded subject"},
		{"a\nb\rc", "a b c"},
		{"  padded \r\n", "padded"},
		{"nul\x00byte", "nul byte"},
		{"bad\xffutf8", "bad\uFFFDutf8"},
	}
	for _, c := range cases {
		if got := sanitize(c.in); got != c.want {
			t.Errorf("sanitize(%q) = %q, want %q", c.in, got, c.want)
		}
	}
	got := sanitize(long)
	if len(got) > MaxHeaderValue || len(got) < MaxHeaderValue-1 || !utf8.ValidString(got) {
		t.Errorf("long value: %d bytes, valid %v", len(got), utf8.ValidString(got))
	}

	ctx := testCtx(t)
	b := openBus(t, embedded(t), testBusConfig())
	env := testEnvelope("crlf")
	env.Subject = "Invoice\r\nBcc: victim@example.com\r\n\r\nbody"
	env.From = long
	p, err := b.PublishMail(ctx, env, []byte(rawMail))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.Wait(ctx); err != nil {
		t.Fatal(err)
	}
	msgs, err := b.Messages(ctx, "support")
	if err != nil || len(msgs) != 1 {
		t.Fatal(len(msgs), err)
	}
	h := msgs[0].Headers()
	if s := h.Get("Mailpipe-Subject"); s != "Invoice Bcc: victim@example.com body" {
		t.Errorf("subject %q", s)
	}
	if _, ok := h["Bcc"]; ok {
		t.Errorf("header injection: %v", h)
	}
	if f := h.Get("Mailpipe-From"); len(f) > MaxHeaderValue || !utf8.ValidString(f) || !strings.HasPrefix(f, "ää") {
		t.Errorf("from: %d bytes", len(f))
	}
}

func TestConnectExternalURL(t *testing.T) {
	ns, err := server.NewServer(&server.Options{
		Host: "127.0.0.1", Port: -1, JetStream: true, StoreDir: t.TempDir(),
		Username: "mailpipe", Password: "s3cret", NoSigs: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	ns.Start()
	t.Cleanup(func() { ns.Shutdown(); ns.WaitForShutdown() })
	if !ns.ReadyForConnections(10 * time.Second) {
		t.Fatal("server not ready")
	}
	ctx := testCtx(t)
	log := zaptest.NewLogger(t)

	c, err := Connect(ctx, config.NATS{URL: ns.ClientURL(), User: "mailpipe", Password: "s3cret", ConnectTimeout: 5 * time.Second}, log)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if c.Embedded() || c.ClientURL() == "" || c.InProcessOption() != nil {
		t.Errorf("external conn: embedded %v url %q", c.Embedded(), c.ClientURL())
	}
	b := openBus(t, c, testBusConfig())
	p, err := b.PublishMail(ctx, testEnvelope("ext-1"), []byte(rawMail))
	if err != nil {
		t.Fatal(err)
	}
	if res, err := p.Wait(ctx); err != nil || res.Seq != 1 {
		t.Fatalf("%+v %v", res, err)
	}

	_, err = Connect(ctx, config.NATS{URL: ns.ClientURL(), User: "mailpipe", Password: "wrong", ConnectTimeout: 5 * time.Second}, log)
	if err == nil {
		t.Fatal("wrong password accepted")
	}
	if strings.Contains(err.Error(), "wrong") {
		t.Errorf("password in error: %v", err)
	}
}

func TestEmbeddedListen(t *testing.T) {
	ctx := testCtx(t)
	c := embedded(t)
	if c.ClientURL() != "" || c.InProcessOption() == nil || !c.Embedded() {
		t.Errorf("DontListen: url %q", c.ClientURL())
	}
	nc, err := nats.Connect("", c.InProcessOption())
	if err != nil {
		t.Fatal(err)
	}
	nc.Close()

	dir := t.TempDir()
	lc, err := Connect(ctx, config.NATS{Embedded: config.Embedded{StoreDir: dir + "/sub/store", Listen: "127.0.0.1:-1"}}, zaptest.NewLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	url := lc.ClientURL()
	if !strings.HasPrefix(url, "nats://127.0.0.1:") {
		t.Errorf("listen url %q", url)
	}
	nc, err = nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	nc.Close()
	lc.Close()
	if _, err := nats.Connect(url, nats.Timeout(time.Second)); err == nil {
		t.Errorf("server still listening after Close")
	}
}

func TestClassify(t *testing.T) {
	cases := []struct {
		err       error
		rejected  bool
		transient bool
	}{
		{&jetstream.APIError{Code: 400, ErrorCode: jetstream.JSErrCodeStreamMessageExceedsMaximum, Description: "message size exceeds maximum allowed"}, true, false},
		{&jetstream.APIError{Code: 503, ErrorCode: 10008, Description: "JetStream system temporarily unavailable"}, false, true},
		{fmt.Errorf("nats: %w", &jetstream.APIError{Code: 400, ErrorCode: 10060}), true, false},
		{nats.ErrMaxPayload, true, false},
		{jetstream.ErrAsyncPublishTimeout, false, true},
		{jetstream.ErrNoStreamResponse, false, true},
		{nats.ErrDisconnected, false, true},
		{nats.ErrConnectionClosed, false, true},
	}
	for _, c := range cases {
		err := classify(c.err)
		if errors.Is(err, ErrRejected) != c.rejected || errors.Is(err, ErrTransient) != c.transient || !errors.Is(err, c.err) {
			t.Errorf("classify(%v) = %v", c.err, err)
		}
	}
}

func BenchmarkPublishMail50KB(b *testing.B) {
	ctx := testCtx(b)
	c := embedded(b)
	bus := openBus(b, c, testBusConfig())
	body := bytes.Repeat([]byte("0123456789abcdef"), 50<<10/16)
	env := testEnvelope("") // SHA256 empty: PublishMail hashes the body
	ps := make(chan *Pending, 1024)
	done := make(chan error, 1)
	go func() {
		var first error
		for p := range ps {
			if _, err := p.Wait(ctx); err != nil && first == nil {
				first = err
			}
		}
		done <- first
	}()
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	b.ResetTimer()
	start := time.Now()
	for i := 0; i < b.N; i++ {
		env.DedupID = fmt.Sprintf("bench-%d-%d", b.N, i)
		p, err := bus.PublishMail(ctx, env, body)
		if err != nil {
			b.Fatal(err)
		}
		ps <- p
	}
	close(ps)
	if err := <-done; err != nil {
		b.Fatal(err)
	}
	b.StopTimer()
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "msgs/s")
}
