package sender

import (
	"context"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/mailpipe/mailpipe/internal/config"
	"github.com/mailpipe/mailpipe/internal/outbound"
	"github.com/mailpipe/mailpipe/pkg/mailjob"
)

// hangGuard bounds every wait of the tests: generous, only there so that
// a bug shows as a failure instead of a hung test binary.
const hangGuard = 90 * time.Second

func testCtx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// env is an embedded JetStream server; every replica and the producer get
// their own connection to it.
type env struct {
	t  testing.TB
	ns *server.Server
	js jetstream.JetStream // the producer's and the test's
}

func newEnv(t testing.TB) *env {
	t.Helper()
	ns, err := server.NewServer(&server.Options{JetStream: true, StoreDir: t.TempDir(), DontListen: true, NoSigs: true})
	if err != nil {
		t.Fatal(err)
	}
	ns.Start()
	t.Cleanup(func() { ns.Shutdown(); ns.WaitForShutdown() })
	if !ns.ReadyForConnections(10 * time.Second) {
		t.Fatal("server not ready")
	}
	e := &env{t: t, ns: ns}
	e.js = e.connect()
	return e
}

func (e *env) connect() jetstream.JetStream {
	e.t.Helper()
	nc, err := nats.Connect("", nats.InProcessServer(e.ns))
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		e.t.Fatal(err)
	}
	return js
}

// crash kills a replica as a process crash would: its connection drops at
// once (nothing more reaches NATS) and its sends are cut off.
func (r *replica) crash() {
	r.js.Conn().Close()
	r.cancel()
	<-r.done
}

// senderYAML is a configuration for tests: short ack wait and backoff.
// Mailboxes are appended by testConfig.
const senderYAML = `
log: {level: debug, format: console}
identities:
  test: {tenant_id: contoso.onmicrosoft.com, client_id: 0b6a2f1e-3c4d-4e5f-8a9b-1c2d3e4f5a6b, client_secret: x}
consumer:
  ack_wait: 1s
  max_deliver: 3
  backoff: [100ms, 200ms, 300ms]
limits:
  max_recipients: 20
mailboxes:
`

// mbox describes a mailbox of a test configuration.
type mbox struct {
	address   string
	perWindow int           // messages per message window (default 30)
	window    time.Duration // message window (default 1m)
	rcpts     int           // recipients per recipient window (default 10000)
	rcptWin   time.Duration // default 24h
	profiles  []string
}

func testConfig(t testing.TB, boxes ...mbox) *config.Sender {
	t.Helper()
	var b strings.Builder
	b.WriteString(senderYAML)
	for _, m := range boxes {
		fmt.Fprintf(&b, "  - address: %s\n    identity: test\n    name: %s\n", m.address, mailjob.MailboxToken(strings.Split(m.address, "@")[0]))
		fmt.Fprintf(&b, "    rate: {messages_per_minute: %d, message_window: %s, recipients_per_day: %d, recipient_window: %s}\n",
			orInt(m.perWindow, 30), orDur(m.window, time.Minute), orInt(m.rcpts, 10000), orDur(m.rcptWin, 24*time.Hour))
		if len(m.profiles) > 0 {
			b.WriteString("    profiles:\n")
			for _, p := range m.profiles {
				fmt.Fprintf(&b, "      - name: %s\n", p)
			}
		}
	}
	cfg, err := config.ParseSender([]byte(b.String()), func(string) (string, bool) { return "", false })
	if err != nil {
		t.Fatalf("test config: %v\n%s", err, b.String())
	}
	return cfg
}

func orInt(v, d int) int {
	if v == 0 {
		return d
	}
	return v
}

func orDur(v, d time.Duration) time.Duration {
	if v == 0 {
		return d
	}
	return v
}

// behaviour is what the fake transport does with one Send call.
type behaviour int

const (
	sendOK behaviour = iota
	failTransient
	failThrottled
	failPermanent
	failAuth
	ambiguousSent    // the mail goes out, the answer is lost
	ambiguousNotSent // the request broke before the mail went out
)

// fakeTransport is an outbound.Transport with a ledger of the mails it
// delivered. With looksUp it finds an earlier delivery of a job (like the
// Graph transport's Sent Items lookup); without, it sends whatever it is
// asked to (like SMTP).
type fakeTransport struct {
	name    string
	looksUp bool
	// script decides what call n (from 1) for a job does; nil: sendOK.
	script func(job *mailjob.Job, call int) behaviour
	// delay is how long a call takes (the mail goes out at its end).
	delay func() time.Duration
	// attachments, when set, is called with what each object attachment
	// read gave.
	attachments func(ref mailjob.ObjectRef, data []byte, err error)

	mu        sync.Mutex
	calls     map[string]int
	delivered map[string]int
	times     []time.Time
	found     int // calls that found an earlier delivery
	// resent counts calls for jobs whose earlier call had returned
	// success: the sender knew the job was sent and asked again.
	resent  map[string]int
	okCalls map[string]bool
}

func newFake(name string, looksUp bool) *fakeTransport {
	return &fakeTransport{name: name, looksUp: looksUp, calls: map[string]int{}, delivered: map[string]int{},
		resent: map[string]int{}, okCalls: map[string]bool{}}
}

func (f *fakeTransport) Send(ctx context.Context, job *mailjob.Job, att outbound.Attachments) (outbound.Result, error) {
	f.mu.Lock()
	f.calls[job.JobID]++
	n := f.calls[job.JobID]
	if f.okCalls[job.JobID] {
		f.resent[job.JobID]++
	}
	mid := outbound.MessageID(job.JobID, job.From)
	if f.looksUp && f.delivered[job.JobID] > 0 {
		f.found++
		f.okCalls[job.JobID] = true
		f.mu.Unlock()
		return outbound.Result{InternetMessageID: mid, AlreadySent: true, Requests: 1}, nil
	}
	f.mu.Unlock()

	for i := range job.Attachments {
		a := job.Attachments[i]
		if a.Object == nil || f.attachments == nil {
			continue
		}
		r, err := att(ctx, *a.Object)
		var data []byte
		if err == nil {
			data, err = io.ReadAll(r)
			r.Close()
		}
		f.attachments(*a.Object, data, err)
		if err != nil {
			return outbound.Result{}, &outbound.Error{Kind: outbound.Permanent, ReasonCode: mailjob.ReasonAttachmentMismatch, Err: err}
		}
	}

	b := sendOK
	if f.script != nil {
		b = f.script(job, n)
	}
	if f.delay != nil {
		t := time.NewTimer(f.delay())
		select {
		case <-ctx.Done():
			t.Stop()
			return outbound.Result{}, ctx.Err()
		case <-t.C:
		}
	}
	deliver := func() {
		f.mu.Lock()
		f.delivered[job.JobID]++
		f.times = append(f.times, time.Now())
		f.mu.Unlock()
	}
	switch b {
	case sendOK:
		deliver()
		f.mu.Lock()
		f.okCalls[job.JobID] = true
		f.mu.Unlock()
		return outbound.Result{InternetMessageID: mid, Requests: 3}, nil
	case failTransient:
		return outbound.Result{}, &outbound.Error{Kind: outbound.Transient, ReasonCode: mailjob.ReasonGraphUnavailable, Err: fmt.Errorf("503 Service Unavailable")}
	case failThrottled:
		return outbound.Result{}, &outbound.Error{Kind: outbound.Throttled, ReasonCode: mailjob.ReasonThrottled, RetryAfter: 300 * time.Millisecond,
			Err: fmt.Errorf("429 ApplicationThrottled")}
	case failPermanent:
		return outbound.Result{}, &outbound.Error{Kind: outbound.Permanent, ReasonCode: mailjob.ReasonRecipientRejected, Err: fmt.Errorf("400 ErrorInvalidRecipients")}
	case failAuth:
		return outbound.Result{}, &outbound.Error{Kind: outbound.Auth, ReasonCode: mailjob.ReasonSendAsDenied, Err: fmt.Errorf("403 ErrorSendAsDenied")}
	case ambiguousSent:
		deliver()
		return outbound.Result{}, &outbound.Error{Kind: outbound.Ambiguous, ReasonCode: mailjob.ReasonGraphUnavailable, Err: fmt.Errorf("connection reset after the send request")}
	case ambiguousNotSent:
		return outbound.Result{}, &outbound.Error{Kind: outbound.Ambiguous, ReasonCode: mailjob.ReasonGraphUnavailable, Err: fmt.Errorf("connection reset")}
	}
	panic("unknown behaviour")
}

func (f *fakeTransport) CheckSendAs(context.Context, string) (string, error) { return "fake", nil }
func (f *fakeTransport) Close() error                                        { return nil }

func (f *fakeTransport) deliveredTo(id string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.delivered[id]
}

func (f *fakeTransport) callsFor(id string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls[id]
}

func (f *fakeTransport) totalDelivered() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := 0
	for _, c := range f.delivered {
		n += c
	}
	return n
}

func (f *fakeTransport) sendTimes() []time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	ts := slices.Clone(f.times)
	slices.SortFunc(ts, func(a, b time.Time) int { return a.Compare(b) })
	return ts
}

// maxInWindow is the largest number of deliveries within any interval of
// length w.
func maxInWindow(ts []time.Time, w time.Duration) int {
	best, j := 0, 0
	for i := range ts {
		for ts[i].Sub(ts[j]) >= w {
			j++
		}
		best = max(best, i-j+1)
	}
	return best
}

// replica is one running sender.
type replica struct {
	s      *Sender
	js     jetstream.JetStream
	cancel func() // soft and hard at once
	soft   func()
	done   chan struct{}
}

type replicaOpts struct {
	hooks  hooks
	holder string
	// hardAfter, when set, ends the hard context this long after the soft
	// one (a graceful shutdown); otherwise both end together.
	hardAfter time.Duration
}

func startReplica(t testing.TB, e *env, cfg *config.Sender, fakes map[string]*fakeTransport, o replicaOpts) *replica {
	t.Helper()
	js := e.connect()
	var mbs []Mailbox
	for _, m := range cfg.Mailboxes {
		f := fakes[m.Address]
		if f == nil {
			t.Fatalf("no fake transport for %s", m.Address)
		}
		mb := Mailbox{Config: m, Transport: f, LooksUp: f.looksUp, Profiles: map[string]outbound.Transport{}}
		for _, p := range m.Profiles {
			mb.Profiles[p.Name] = f
		}
		mbs = append(mbs, mb)
	}
	holder := o.holder
	if holder == "" {
		holder = fmt.Sprintf("replica-%d", time.Now().UnixNano()%100000)
	}
	log := zaptest.NewLogger(t, zaptest.Level(zap.InfoLevel)).Named(holder)
	s, err := Open(testCtx(t), Options{Config: cfg, Mailboxes: mbs, JS: js, Logger: log, Metrics: NewMetrics(),
		Holder: holder, SweepInterval: 200 * time.Millisecond, FetchWait: 300 * time.Millisecond, hooks: o.hooks})
	if err != nil {
		t.Fatal(err)
	}
	soft, cancelSoft := context.WithCancel(context.Background())
	hard, cancelHard := context.WithCancel(context.Background())
	if o.hardAfter > 0 {
		context.AfterFunc(soft, func() { time.AfterFunc(o.hardAfter, cancelHard) })
	}
	r := &replica{s: s, js: js, done: make(chan struct{}), soft: cancelSoft,
		cancel: func() { cancelSoft(); cancelHard() }}
	go func() {
		defer close(r.done)
		_ = s.Run(soft, hard)
	}()
	t.Cleanup(func() { r.stop(t) })
	return r
}

func (r *replica) stop(t testing.TB) {
	r.cancel()
	select {
	case <-r.done:
	case <-time.After(hangGuard):
		t.Error("replica did not stop")
	}
}

// publish publishes jobs with mailjob.Publish.
func publish(t testing.TB, e *env, cfg *config.Sender, jobs ...*mailjob.Job) {
	t.Helper()
	for _, j := range jobs {
		if _, err := mailjob.Publish(testCtx(t), e.js, j, mailjob.WithLimits(cfg.Limits.Mailjob()),
			mailjob.WithSubjectPrefix(cfg.Streams.Jobs.SubjectPrefix), mailjob.WithSource("/test")); err != nil {
			t.Fatalf("publish %s: %v", j.JobID, err)
		}
	}
}

func newJob(id, from string, rcpts int) *mailjob.Job {
	j := &mailjob.Job{JobID: id, From: from, Subject: "Invoice " + id, Text: "Please find the invoice attached.",
		Correlation: map[string]string{"document": id}}
	for i := range max(rcpts, 1) {
		j.To = append(j.To, mailjob.Recipient{Address: fmt.Sprintf("ap%d@customer.example", i)})
	}
	return j
}

// events reads every status event, by job id, in order.
func events(t testing.TB, e *env, cfg *config.Sender) map[string][]mailjob.StatusEvent {
	t.Helper()
	ctx := testCtx(t)
	out := map[string][]mailjob.StatusEvent{}
	stream, err := e.js.Stream(ctx, cfg.Streams.Status.Name)
	if err != nil {
		if strings.Contains(err.Error(), "not found") {
			return out
		}
		t.Fatal(err)
	}
	info, err := stream.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.State.Msgs == 0 {
		return out
	}
	cons, err := e.js.OrderedConsumer(ctx, cfg.Streams.Status.Name, jetstream.OrderedConsumerConfig{})
	if err != nil {
		t.Fatal(err)
	}
	for seq := uint64(0); seq < info.State.LastSeq; {
		msg, err := cons.Next(jetstream.FetchMaxWait(5 * time.Second))
		if err != nil {
			t.Fatalf("read status events: %v", err)
		}
		ev, err := mailjob.ParseStatus(msg)
		if err != nil {
			t.Fatalf("status event: %v", err)
		}
		seq = ev.Sequence
		out[ev.JobID] = append(out[ev.JobID], *ev)
	}
	return out
}

// final returns the final event of a job's events, if any.
func final(evs []mailjob.StatusEvent) (mailjob.StatusEvent, bool) {
	for _, ev := range evs {
		if ev.Final() {
			return ev, true
		}
	}
	return mailjob.StatusEvent{}, false
}

// waitFinal waits until every job has a final event and returns them.
func waitFinal(t testing.TB, e *env, cfg *config.Sender, ids ...string) map[string]mailjob.StatusEvent {
	t.Helper()
	deadline := time.Now().Add(hangGuard)
	for {
		evs := events(t, e, cfg)
		out := map[string]mailjob.StatusEvent{}
		var missing []string
		for _, id := range ids {
			if ev, ok := final(evs[id]); ok {
				out[id] = ev
			} else {
				missing = append(missing, id)
			}
		}
		if len(missing) == 0 {
			return out
		}
		if time.Now().After(deadline) {
			if len(missing) > 5 {
				missing = append(missing[:5], "...")
			}
			t.Fatalf("no final status event for %d jobs: %v", len(missing), missing)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// eventually polls cond until it holds or the hang guard fires.
func eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(hangGuard)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func streamMsgs(t testing.TB, e *env, name string) uint64 {
	t.Helper()
	s, err := e.js.Stream(testCtx(t), name)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(testCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	return info.State.Msgs
}

// deadLetters reads the dead-letter stream.
func deadLetters(t testing.TB, e *env, cfg *config.Sender) []*nats.Msg {
	t.Helper()
	ctx := testCtx(t)
	n := streamMsgs(t, e, cfg.Streams.DeadLetter.Name)
	if n == 0 {
		return nil
	}
	cons, err := e.js.OrderedConsumer(ctx, cfg.Streams.DeadLetter.Name, jetstream.OrderedConsumerConfig{})
	if err != nil {
		t.Fatal(err)
	}
	var out []*nats.Msg
	for range n {
		msg, err := cons.Next(jetstream.FetchMaxWait(5 * time.Second))
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, &nats.Msg{Subject: msg.Subject(), Header: msg.Headers(), Data: msg.Data()})
	}
	return out
}
