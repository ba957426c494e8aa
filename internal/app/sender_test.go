package app

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/mailpipe/mailpipe/internal/bus"
	"github.com/mailpipe/mailpipe/internal/config"
	"github.com/mailpipe/mailpipe/internal/devmail"
	"github.com/mailpipe/mailpipe/internal/testenv/graphfake"
	"github.com/mailpipe/mailpipe/internal/testenv/stack"
	"github.com/mailpipe/mailpipe/pkg/mailjob"
)

// senderHang bounds waits that only fail when something hangs.
const senderHang = 3 * time.Minute

func jobJSON(t *testing.T, j *mailjob.Job) []byte {
	t.Helper()
	data, err := json.Marshal(j)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// runSender runs RunSender until the test ends.
func runSender(t *testing.T, cfg *config.Sender, d SenderDeps) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- RunSender(ctx, cfg, d) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("RunSender: %v", err)
			}
		case <-time.After(senderHang):
			t.Error("RunSender did not stop")
		}
	})
}

// finalEvent waits for the final status event of a job.
func finalEvent(t *testing.T, cfg *config.Sender, d Deps, id string) mailjob.StatusEvent {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), senderHang)
	defer cancel()
	var out bytes.Buffer
	ev, err := WatchJob(ctx, cfg, id, &out, d)
	if err != nil {
		t.Fatalf("job %s: %v (events: %s)", id, err, out.String())
	}
	return *ev
}

// graphSenderConfig is a sender configuration for the Graph stack's
// mailboxes with the app-only identity.
func graphSenderConfig(t *testing.T, st *stack.GraphStack) *config.Sender {
	t.Helper()
	return senderConfigFrom(t, st.Config())
}

func senderConfigFrom(t *testing.T, imp *config.Importer) *config.Sender {
	t.Helper()
	cfg := &config.Sender{
		Log:        config.Log{Level: "info", Format: "console"},
		NATS:       imp.NATS,
		Identities: imp.Identities,
		Consumer:   config.Consumer{AckWait: 2 * time.Second, Backoff: []time.Duration{200 * time.Millisecond, 500 * time.Millisecond}},
	}
	for _, m := range imp.Mailboxes {
		cfg.Mailboxes = append(cfg.Mailboxes, config.SenderMailbox{
			Address: m.Address, Identity: m.Identity, Transport: "graph",
			Graph: config.SendGraph{BaseURL: m.Graph.BaseURL, CAFile: m.Graph.CAFile, Timeout: 10 * time.Second},
		})
	}
	cfg.ApplyDefaults()
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	return cfg
}

// TestSenderThroughGraph sends through the real Graph transport against
// the Graph fake: a plain job, one whose send times out after Exchange
// took it (the next attempt finds it in Sent Items: one mail), one that
// meets a 429, one from a mailbox that is not allowed.
func TestSenderThroughGraph(t *testing.T) {
	st := stack.StartGraph(t, stack.GraphOptions{Mailboxes: 2})
	st.SetAppRoles("Mail.ReadWrite", "Mail.Send")
	cfg := graphSenderConfig(t, st)
	log := zaptest.NewLogger(t, zaptest.Level(zap.InfoLevel))
	conn, err := bus.Connect(context.Background(), cfg.NATS, log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(conn.Close)
	d := Deps{Logger: log, Conn: conn}

	var out bytes.Buffer
	if err := CheckSender(context.Background(), cfg, &out, SenderDeps{Deps: d}); err != nil {
		t.Fatalf("check: %v\n%s", err, out.String())
	}
	for _, want := range []string{"stream MAILPIPE_OUTBOUND", "consumer mailpipe-sender_facturen_example_test", "send as " + stack.GraphAddress(0)} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("check output lacks %q:\n%s", want, out.String())
		}
	}

	runSender(t, cfg, SenderDeps{Deps: d, SweepInterval: 200 * time.Millisecond})

	a0, a1 := stack.GraphAddress(0), stack.GraphAddress(1)
	plain := &mailjob.Job{JobID: "inv-2026-0001", From: a0, To: []mailjob.Recipient{{Address: "ap@customer.example", Name: "Accounts Payable"}},
		Subject: "Factuur 2026-0001", Text: "Zie bijlage.", Correlation: map[string]string{"document": "2026-0001"}}
	res, err := EnqueueJob(context.Background(), cfg, jobJSON(t, plain), "/test", d)
	if err != nil {
		t.Fatal(err)
	}
	if res.Result.Duplicate {
		t.Error("first enqueue is a duplicate")
	}
	if res, err := EnqueueJob(context.Background(), cfg, jobJSON(t, plain), "/test", d); err != nil || !res.Result.Duplicate {
		t.Errorf("second enqueue: %+v %v, want a duplicate", res, err)
	}
	ev := finalEvent(t, cfg, d, plain.JobID)
	if ev.Type != mailjob.StatusSent || ev.Correlation["document"] != "2026-0001" || ev.InternetMessageID == "" {
		t.Fatalf("plain: %+v", ev)
	}

	// The send is carried out, then Graph answers 504: ambiguous.
	if err := st.Graph.InjectFault(graphfake.Fault{Method: http.MethodPost, Path: `/messages/[^/]+/send$`, Status: http.StatusGatewayTimeout, Applied: true}); err != nil {
		t.Fatal(err)
	}
	amb := &mailjob.Job{JobID: "inv-2026-0002", From: a1, To: []mailjob.Recipient{{Address: "ap@customer.example"}}, Subject: "Factuur 2026-0002", HTML: "<p>Zie bijlage.</p>"}
	if _, err := EnqueueJob(context.Background(), cfg, jobJSON(t, amb), "/test", d); err != nil {
		t.Fatal(err)
	}
	if ev := finalEvent(t, cfg, d, amb.JobID); ev.Type != mailjob.StatusSent || ev.Attempt != 2 {
		t.Errorf("ambiguous: %+v", ev)
	}

	// A 429 on the send: the job waits for Retry-After and goes.
	if err := st.Graph.InjectFault(graphfake.Fault{Method: http.MethodPost, Path: `/messages/[^/]+/send$`, Status: http.StatusTooManyRequests, RetryAfter: "0.5"}); err != nil {
		t.Fatal(err)
	}
	thr := &mailjob.Job{JobID: "inv-2026-0003", From: a0, To: []mailjob.Recipient{{Address: "ap@customer.example"}}, Subject: "Factuur 2026-0003", Text: "x"}
	if _, err := EnqueueJob(context.Background(), cfg, jobJSON(t, thr), "/test", d); err != nil {
		t.Fatal(err)
	}
	if ev := finalEvent(t, cfg, d, thr.JobID); ev.Type != mailjob.StatusSent {
		t.Errorf("throttled: %+v", ev)
	}

	// Not on the allow-list: EnqueueJob refuses; published anyway, the
	// sender refuses it.
	ceo := &mailjob.Job{JobID: "ceo-1", From: "ceo@example.test", To: []mailjob.Recipient{{Address: "bank@customer.example"}}, Subject: "Urgent", Text: "Pay"}
	if _, err := EnqueueJob(context.Background(), cfg, jobJSON(t, ceo), "/test", d); err == nil || !strings.Contains(err.Error(), "allow-list") {
		t.Errorf("enqueue from ceo: %v", err)
	}
	if _, err := mailjob.Publish(context.Background(), conn.JetStream(), ceo); err != nil {
		t.Fatal(err)
	}
	if ev := finalEvent(t, cfg, d, ceo.JobID); ev.Type != mailjob.StatusFailed || ev.ReasonCode != mailjob.ReasonSenderNotAllowed {
		t.Errorf("ceo: %+v", ev)
	}

	// Sent Items: every job exactly once, with its Message-ID.
	sent := map[string]int{}
	for _, a := range []string{a0, a1} {
		for _, m := range st.Graph.SentItems(a) {
			sent[m.InternetMessageID]++
			if m.From != a {
				t.Errorf("sent item from %q in %s", m.From, a)
			}
		}
	}
	for _, j := range []*mailjob.Job{plain, amb, thr} {
		if n := sent["<mailpipe."+j.JobID+"@example.test>"]; n != 1 {
			t.Errorf("%s: %d copies in Sent Items (%v)", j.JobID, n, sent)
		}
	}
	if len(sent) != 3 {
		t.Errorf("Sent Items: %v", sent)
	}
}

// smtpEnv is a dev mailbox server with a dev SMTP submission server that
// delivers into it, and embedded NATS.
type smtpEnv struct {
	mail *devmail.Server
	smtp *devmail.SMTPServer
	cfg  *config.Sender
	d    Deps
}

const (
	smtpFrom = "facturen@demo.mailpipe.test"
	smtpTo   = "boekhouding@demo.mailpipe.test"
)

func newSMTPEnv(t *testing.T) *smtpEnv {
	t.Helper()
	log := zaptest.NewLogger(t, zaptest.Level(zap.InfoLevel))
	mail, err := devmail.Start(devmail.Options{Users: []devmail.User{{Address: smtpFrom, Password: "pw"}, {Address: smtpTo, Password: "pw"}}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { mail.Close() })
	srv, err := devmail.StartSMTP(devmail.SMTPOptions{Users: []devmail.User{{Address: smtpFrom, Password: "smtp-pw"}},
		Deliver: mail.DeliverLocal, Logger: log.Named("smtp")})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	host, port, _ := strings.Cut(srv.Addr(), ":")
	y := fmt.Sprintf(`
log: {level: info, format: console}
nats: {embedded: {store_dir: %s}}
consumer: {ack_wait: 2s, backoff: [200ms]}
mailboxes:
  - address: %s
    transport: smtp
    smtp: {host: %s, port: %s, security: insecure, auth: password, password: smtp-pw}
`, t.TempDir(), smtpFrom, host, port)
	cfg, err := config.ParseSender([]byte(y), func(string) (string, bool) { return "", false })
	if err != nil {
		t.Fatal(err)
	}
	conn, err := bus.Connect(context.Background(), cfg.NATS, log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(conn.Close)
	return &smtpEnv{mail: mail, smtp: srv, cfg: cfg, d: Deps{Logger: log, Conn: conn}}
}

// TestSenderThroughSMTP sends through the SMTP transport and the dev SMTP
// server into the dev mailboxes; a connection that drops after the message
// was taken leaves the outcome unknown, and the job fails rather than
// going out twice.
func TestSenderThroughSMTP(t *testing.T) {
	e := newSMTPEnv(t)
	var out bytes.Buffer
	if err := CheckSender(context.Background(), e.cfg, &out, SenderDeps{Deps: e.d}); err != nil {
		t.Fatalf("check: %v\n%s", err, out.String())
	}
	runSender(t, e.cfg, SenderDeps{Deps: e.d})

	ok := &mailjob.Job{JobID: "reply-1", From: smtpFrom, To: []mailjob.Recipient{{Address: smtpTo}}, Subject: "Re: Factuur 1", Text: "Ontvangen, dank u."}
	if _, err := EnqueueJob(context.Background(), e.cfg, jobJSON(t, ok), "", e.d); err != nil {
		t.Fatal(err)
	}
	if ev := finalEvent(t, e.cfg, e.d, ok.JobID); ev.Type != mailjob.StatusSent || ev.InternetMessageID != "<mailpipe.reply-1@demo.mailpipe.test>" {
		t.Fatalf("reply-1: %+v", ev)
	}
	count := func(user, folder string) int {
		n, err := e.mail.Count(user, folder)
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	if count(smtpTo, "INBOX") != 1 || count(smtpFrom, "Sent Items") != 1 {
		t.Errorf("INBOX %d, Sent Items %d", count(smtpTo, "INBOX"), count(smtpFrom, "Sent Items"))
	}

	// The server takes the message, then the connection drops before its
	// 250: the sender cannot know, SMTP cannot look: failed, not resent.
	e.smtp.InjectFault(devmail.SMTPFault{At: devmail.SMTPAtDataEnd, Drop: true, Deliver: true})
	amb := &mailjob.Job{JobID: "reply-2", From: smtpFrom, To: []mailjob.Recipient{{Address: smtpTo}}, Subject: "Re: Factuur 2", Text: "Ontvangen."}
	if _, err := EnqueueJob(context.Background(), e.cfg, jobJSON(t, amb), "", e.d); err != nil {
		t.Fatal(err)
	}
	ev := finalEvent(t, e.cfg, e.d, amb.JobID)
	if ev.Type != mailjob.StatusFailed || !ev.Permanent || !strings.Contains(ev.Reason, "cannot look up sent mail") {
		t.Errorf("reply-2: %+v", ev)
	}
	time.Sleep(500 * time.Millisecond)
	if n := count(smtpTo, "INBOX"); n != 2 {
		t.Errorf("INBOX has %d messages, want 2 (reply-2 once)", n)
	}
}

func TestEnqueueRefusesInvalidJobs(t *testing.T) {
	e := newSMTPEnv(t)
	_, err := EnqueueJob(context.Background(), e.cfg, []byte(`{"job_id":"x","from":"`+smtpFrom+`","subject":"s","colour":"red"}`), "", e.d)
	var verr *mailjob.ValidationError
	if !errors.As(err, &verr) || len(verr.Problems) < 3 {
		t.Fatalf("err = %v", err)
	}
	for _, want := range []string{"colour", "to", "text"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("%v lacks %q", err, want)
		}
	}
	// Nothing was published.
	s, err := e.d.Conn.JetStream().Stream(context.Background(), e.cfg.Streams.Jobs.Name)
	if err == nil {
		if info, _ := s.Info(context.Background()); info != nil && info.State.Msgs != 0 {
			t.Errorf("%d jobs queued", info.State.Msgs)
		}
	} else if !errors.Is(err, jetstream.ErrStreamNotFound) {
		t.Fatal(err)
	}
}

func TestSenderAuthStatusAndLoginRefusals(t *testing.T) {
	st := stack.StartGraph(t, stack.GraphOptions{})
	cfg := graphSenderConfig(t, st)
	var out bytes.Buffer
	d := Deps{Logger: zaptest.NewLogger(t, zaptest.Level(zap.WarnLevel))}
	if err := SenderAuthStatus(context.Background(), cfg, &out, d); err != nil && !errors.Is(err, ErrAuthAttention) {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), `identity "`+stack.GraphIdentityID+`": kind app`) || !strings.Contains(out.String(), "sends as "+stack.GraphAddress(0)) {
		t.Errorf("status:\n%s", out.String())
	}
	err := SenderAuthLogin(context.Background(), cfg, stack.GraphAddress(0), "", &out, d)
	if err == nil || !strings.Contains(err.Error(), "no sign-in is needed") {
		t.Errorf("login with an app identity: %v", err)
	}
	if err := SenderAuthLogin(context.Background(), cfg, "ceo@example.test", "", &out, d); err == nil || !strings.Contains(err.Error(), "allow-list") {
		t.Errorf("login for an unknown mailbox: %v", err)
	}
}

// TestSenderDelegatedThroughGraph: a service account signs in with
// `sender auth login` (device code) and sends as the shared mailbox with
// Send As: the drafts live in its own mailbox, the mail goes out from the
// shared one.
func TestSenderDelegatedThroughGraph(t *testing.T) {
	st := stack.StartGraph(t, stack.GraphOptions{Delegated: true})
	st.Graph.AddMailbox(stack.GraphServiceUser, graphfake.MailboxOptions{DisplayName: "Service mailpipe"})
	st.Graph.GrantSendAs(stack.GraphServiceUser, stack.GraphAddress(0))
	cfg := senderConfigFrom(t, st.DelegatedConfig())
	log := zaptest.NewLogger(t, zaptest.Level(zap.InfoLevel))
	conn, err := bus.Connect(context.Background(), cfg.NATS, log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(conn.Close)
	d := Deps{Logger: log, Conn: conn}

	var out bytes.Buffer
	if err := SenderAuthStatus(context.Background(), cfg, &out, d); !errors.Is(err, ErrAuthAttention) || !strings.Contains(out.String(), "not signed in") {
		t.Errorf("status before the sign-in: %v\n%s", err, out.String())
	}
	w := &codeApprover{t: t, idp: st.IdP, as: stack.GraphServiceUser}
	if err := SenderAuthLogin(context.Background(), cfg, stack.GraphAddress(0), "", w, d); err != nil {
		t.Fatalf("login: %v\n%s", err, w.String())
	}
	if !strings.Contains(w.String(), "Mail.Send.Shared") || !strings.Contains(w.String(), "Signed in as "+stack.GraphServiceUser) {
		t.Errorf("login output:\n%s", w.String())
	}
	out.Reset()
	if err := SenderAuthStatus(context.Background(), cfg, &out, d); err != nil {
		t.Errorf("status after the sign-in: %v\n%s", err, out.String())
	}
	if !strings.Contains(out.String(), "signed in as "+stack.GraphServiceUser) {
		t.Errorf("status:\n%s", out.String())
	}

	runSender(t, cfg, SenderDeps{Deps: d})
	j := &mailjob.Job{JobID: "delegated-1", From: stack.GraphAddress(0), To: []mailjob.Recipient{{Address: "ap@customer.example"}},
		Subject: "Factuur", Text: "Zie bijlage.", Attachments: []mailjob.Attachment{mailjob.InlineAttachment("factuur.txt", "text/plain", []byte("factuur 1"))}}
	if _, err := EnqueueJob(context.Background(), cfg, jobJSON(t, j), "", d); err != nil {
		t.Fatal(err)
	}
	if ev := finalEvent(t, cfg, d, j.JobID); ev.Type != mailjob.StatusSent {
		t.Fatalf("delegated: %+v", ev)
	}
	sent := st.Graph.SentItems(stack.GraphServiceUser)
	if len(sent) != 1 || sent[0].From != stack.GraphAddress(0) || sent[0].InternetMessageID != "<mailpipe.delegated-1@example.test>" {
		t.Errorf("service account's Sent Items: %+v", sent)
	}
}
