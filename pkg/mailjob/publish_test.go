package mailjob

import (
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

func TestSubjects(t *testing.T) {
	for addr, want := range map[string]string{
		"billing@example.com":     "billing_example_com",
		"Billing.EU@Example.COM":  "billing_eu_example_com",
		"a+b_c-d@sub.example.org": "a_b_c-d_sub_example_org",
		"rechnung@müller.de":      "rechnung_m_ller_de",
		"用户@例子.广告":                "________", // one '_' per code point
	} {
		if got := MailboxToken(addr); got != want {
			t.Errorf("MailboxToken(%q) = %q, want %q", addr, got, want)
		}
	}
	if got := Subject("", "Billing@Example.com"); got != "mailpipe.outbound.jobs.billing_example_com" {
		t.Errorf("Subject: %s", got)
	}
	if got := Subject("acme.mail.jobs", "a@b.example"); got != "acme.mail.jobs.a_b_example" {
		t.Errorf("Subject with prefix: %s", got)
	}
	if got := StatusSubject("", "erp:inv.2026.0142"); got != "mailpipe.outbound.status.erp:inv_2026_0142" {
		t.Errorf("StatusSubject: %s", got)
	}
	if got := DeadLetterSubject("", "mailpipe.outbound.jobs.billing_example_com"); got != "mailpipe.outbound.deadletter.billing_example_com" {
		t.Errorf("DeadLetterSubject: %s", got)
	}
}

func TestPublish(t *testing.T) {
	js := embedded(t)
	senderStreams(t, js)
	ctx := testCtx(t)

	job := validJob()
	job.CreatedAt = time.Time{}
	res, err := Publish(ctx, js, job, WithSource("/erp/test"), WithStream(DefaultJobsStream))
	if err != nil {
		t.Fatal(err)
	}
	if res.Subject != "mailpipe.outbound.jobs.billing_example_com" || res.Stream != DefaultJobsStream || res.Duplicate || res.Sequence != 1 {
		t.Errorf("result %+v", res)
	}
	if job.CreatedAt.IsZero() || time.Since(job.CreatedAt) > time.Minute {
		t.Errorf("created_at not set: %v", job.CreatedAt)
	}

	// The message on the wire.
	s, _ := js.Stream(ctx, DefaultJobsStream)
	raw, err := s.GetMsg(ctx, res.Sequence)
	if err != nil {
		t.Fatal(err)
	}
	for k, want := range map[string]string{
		HeaderSpecVersion: "1.0", HeaderID: job.JobID, HeaderSource: "/erp/test", HeaderType: "com.mailpipe.job.submitted.v1",
		HeaderDataContentType: "application/json", HeaderMsgID: job.JobID,
	} {
		if got := raw.Header.Get(k); got != want {
			t.Errorf("header %s = %q, want %q", k, got, want)
		}
	}
	if ts, err := time.Parse(time.RFC3339Nano, raw.Header.Get(HeaderTime)); err != nil || time.Since(ts) > time.Minute {
		t.Errorf("ce-time %q: %v", raw.Header.Get(HeaderTime), err)
	}
	got, err := ParseJobHeaders(raw.Subject, raw.Header, raw.Data, DefaultLimits)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, job) {
		t.Errorf("payload:\n got %+v\nwant %+v", got, job)
	}

	// The same job again (a retry after a lost acknowledgement): stored
	// once.
	res2, err := Publish(ctx, js, job)
	if err != nil {
		t.Fatal(err)
	}
	if !res2.Duplicate || res2.Sequence != res.Sequence {
		t.Errorf("republish: %+v", res2)
	}
	// Even with other content: the job_id is the identity.
	changed := validJob()
	changed.Subject = "changed"
	if res3, err := Publish(ctx, js, changed); err != nil || !res3.Duplicate {
		t.Errorf("same job_id, other content: %+v %v", res3, err)
	}
	other := validJob()
	other.JobID = "erp:invoice-2026.0143"
	if res4, err := Publish(ctx, js, other); err != nil || res4.Duplicate || res4.Sequence != 2 {
		t.Errorf("another job: %+v %v", res4, err)
	}
	if n := streamMsgs(t, js, DefaultJobsStream); n != 2 {
		t.Errorf("%d messages in the stream, want 2", n)
	}

	// A sender takes both jobs (the work queue removes them); publishing
	// one again within the duplicate window is still a duplicate.
	cons, err := js.CreateOrUpdateConsumer(ctx, DefaultJobsStream, jetstream.ConsumerConfig{
		Durable: "sender", AckPolicy: jetstream.AckExplicitPolicy, FilterSubject: DefaultJobsPrefix + ".>",
	})
	if err != nil {
		t.Fatal(err)
	}
	batch, err := cons.Fetch(2, jetstream.FetchMaxWait(5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for msg := range batch.Messages() {
		j, err := ParseJobMsg(msg, DefaultLimits)
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, j.JobID)
		if err := msg.DoubleAck(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if len(ids) != 2 || ids[0] != job.JobID || ids[1] != other.JobID {
		t.Errorf("consumed %v", ids)
	}
	if n := streamMsgs(t, js, DefaultJobsStream); n != 0 {
		t.Errorf("%d messages left in the work queue", n)
	}
	if res5, err := Publish(ctx, js, job); err != nil || !res5.Duplicate {
		t.Errorf("republish after the job was consumed: %+v %v", res5, err)
	}
	if n := streamMsgs(t, js, DefaultJobsStream); n != 0 {
		t.Errorf("the consumed job came back: %d messages", n)
	}
}

// TestPublishConcurrent publishes one job from many producers at once:
// JetStream stores it once.
func TestPublishConcurrent(t *testing.T) {
	js := embedded(t)
	senderStreams(t, js)
	ctx := testCtx(t)
	var (
		wg     sync.WaitGroup
		mu     sync.Mutex
		stored int
	)
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			res, err := Publish(ctx, js, minimalJob())
			if err != nil {
				t.Error(err)
				return
			}
			if !res.Duplicate {
				mu.Lock()
				stored++
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if stored != 1 || streamMsgs(t, js, DefaultJobsStream) != 1 {
		t.Errorf("stored %d times, %d messages", stored, streamMsgs(t, js, DefaultJobsStream))
	}
}

func TestPublishErrors(t *testing.T) {
	ctx := testCtx(t)

	// No sender has created the streams.
	bare := embedded(t)
	if _, err := Publish(ctx, bare, minimalJob()); !errors.Is(err, ErrNoStream) {
		t.Errorf("no stream: %v", err)
	}

	js := embedded(t, func(o *server.Options) { o.MaxPayload = 64 << 10 })
	senderStreams(t, js)

	// Invalid: nothing is published.
	bad := validJob()
	bad.Headers = map[string]string{"Content-Type": "text/html"}
	_, err := Publish(ctx, js, bad)
	if p := problemsOf(t, err); len(p) != 1 || p[0].Path != "headers.Content-Type" {
		t.Errorf("invalid job: %v", err)
	}
	// Validated against the given limits.
	j := minimalJob()
	j.Cc = []Recipient{{Address: "c@example.com"}}
	if _, err := Publish(ctx, js, j, WithLimits(Limits{MaxRecipients: 1})); !errors.Is(err, ErrInvalidJob) {
		t.Errorf("over custom limits: %v", err)
	}
	if n := streamMsgs(t, js, DefaultJobsStream); n != 0 {
		t.Errorf("%d messages published", n)
	}

	// Larger than the server's max_payload, though within MaxJobSize.
	big := minimalJob()
	big.HTML = strings.Repeat("<p>x</p>", 10<<10)
	if _, err := Publish(ctx, js, big); err == nil || !strings.Contains(err.Error(), "max_payload") {
		t.Errorf("over max_payload: %v", err)
	}

	// The subject belongs to another stream than expected.
	if _, err := Publish(ctx, js, minimalJob(), WithStream("OTHER")); err == nil {
		t.Error("published to an unexpected stream")
	}

	// Another prefix, captured by another stream.
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "ACME_JOBS", Subjects: []string{"acme.jobs.>"},
		Retention: jetstream.WorkQueuePolicy}); err != nil {
		t.Fatal(err)
	}
	if res, err := Publish(ctx, js, minimalJob(), WithSubjectPrefix("acme.jobs")); err != nil || res.Stream != "ACME_JOBS" || res.Subject != "acme.jobs.a_example_com" {
		t.Errorf("custom prefix: %+v %v", res, err)
	}
}

// TestParseJobMsg checks what the sender checks on a received message.
func TestParseJobMsg(t *testing.T) {
	job := minimalJob()
	data, _ := json.Marshal(job)
	header := func() nats.Header {
		return nats.Header{
			HeaderSpecVersion: {"1.0"}, HeaderType: {TypeJob}, HeaderID: {job.JobID}, HeaderMsgID: {job.JobID},
			HeaderSource: {"/x"}, HeaderDataContentType: {ContentTypeJSON},
		}
	}
	subject := Subject("", job.From)
	if _, err := ParseJobHeaders(subject, header(), data, DefaultLimits); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name    string
		subject string
		edit    func(nats.Header)
		path    string
	}{
		{"other mailbox's subject", "mailpipe.outbound.jobs.ceo_example_com", nil, "from"},
		{"no Nats-Msg-Id", subject, func(h nats.Header) { delete(h, HeaderMsgID) }, "job_id"},
		{"other Nats-Msg-Id", subject, func(h nats.Header) { h.Set(HeaderMsgID, "x") }, "job_id"},
		{"other ce-id", subject, func(h nats.Header) { h.Set(HeaderID, "x") }, "job_id"},
		{"other content type", subject, func(h nats.Header) { h.Set(HeaderDataContentType, "text/plain") }, ""},
	}
	for _, c := range cases {
		h := header()
		if c.edit != nil {
			c.edit(h)
		}
		j, err := ParseJobHeaders(c.subject, h, data, DefaultLimits)
		probs := problemsOf(t, err)
		if len(probs) != 1 || probs[0].Path != c.path {
			t.Errorf("%s: %v", c.name, err)
		}
		if j == nil || j.JobID != job.JobID {
			t.Errorf("%s: job not returned", c.name)
		}
	}
	for _, edit := range []func(nats.Header){
		func(h nats.Header) { h.Set(HeaderType, "com.mailpipe.job.submitted.v2") },
		func(h nats.Header) { delete(h, HeaderSpecVersion) },
		func(h nats.Header) { h["Ce-Type"] = h[HeaderType]; delete(h, HeaderType) }, // header names are case-sensitive
	} {
		h := header()
		edit(h)
		if _, err := ParseJobHeaders(subject, h, data, DefaultLimits); !errors.Is(err, ErrNotJob) {
			t.Errorf("not a job: %v", err)
		}
	}
	// Problems of the payload, the limits and the headers come together;
	// the partial job keeps what could be read (for the failed event).
	bad := []byte(`{"job_id":"j1","from":"a@example.com","to":"b@example.org","subject":"s","text":"t","correlation":{"k":"v"},"extra":1}`)
	j, err := ParseJobHeaders("mailpipe.outbound.jobs.x", header(), bad, DefaultLimits)
	probs := problemsOf(t, err)
	var paths []string
	for _, p := range probs {
		paths = append(paths, p.Path)
	}
	if strings.Join(paths, ",") != "to,extra,from" {
		t.Errorf("problems %v", probs)
	}
	if j == nil || j.Correlation["k"] != "v" {
		t.Errorf("partial job %+v", j)
	}
}
