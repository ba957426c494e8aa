package sender

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/mailpipe/mailpipe/internal/config"
	"github.com/mailpipe/mailpipe/pkg/mailjob"
)

const (
	billing = "billing@example.com"
	support = "support@example.com"
	sales   = "sales@example.com"
)

func TestSendsJobsAndReportsStatus(t *testing.T) {
	e := newEnv(t)
	cfg := testConfig(t, mbox{address: billing, profiles: []string{"dunning"}})
	f := newFake("billing", true)
	startReplica(t, e, cfg, map[string]*fakeTransport{billing: f}, replicaOpts{})

	j1 := newJob("inv-1", billing, 2)
	j2 := newJob("inv.2:a", billing, 1)
	j2.SenderProfile = "dunning"
	publish(t, e, cfg, j1, j2)

	finals := waitFinal(t, e, cfg, j1.JobID, j2.JobID)
	evs := events(t, e, cfg)
	for _, j := range []*mailjob.Job{j1, j2} {
		ev := finals[j.JobID]
		if ev.Type != mailjob.StatusSent || ev.Attempt != 1 || ev.From != billing || ev.Correlation["document"] != j.JobID {
			t.Errorf("%s: final event %+v", j.JobID, ev)
		}
		if want := "<mailpipe." + j.JobID + "@example.com>"; ev.InternetMessageID != want {
			t.Errorf("%s: message id %q, want %q", j.JobID, ev.InternetMessageID, want)
		}
		if got := evs[j.JobID]; len(got) != 2 || got[0].Type != mailjob.StatusAccepted {
			t.Errorf("%s: events %+v, want accepted, sent", j.JobID, got)
		}
		if n := f.deliveredTo(j.JobID); n != 1 {
			t.Errorf("%s delivered %d times", j.JobID, n)
		}
	}
	// The work queue is empty; the state says sent.
	eventually(t, "an empty work queue", func() bool { return streamMsgs(t, e, cfg.Streams.Jobs.Name) == 0 })
	st, _, err := stateStore{kv: mustKV(t, e, cfg)}.get(testCtx(t), j2.JobID)
	if err != nil || st == nil || st.Phase != PhaseSent || st.Attempt != 1 || st.MessageID == "" {
		t.Errorf("state of %s: %+v, %v", j2.JobID, st, err)
	}
}

func mustKV(t testing.TB, e *env, cfg *config.Sender) jetstream.KeyValue {
	kv, err := e.js.KeyValue(testCtx(t), cfg.Streams.StateBucket)
	if err != nil {
		t.Fatal(err)
	}
	return kv
}

// rawJob publishes a job message as a producer might, without the
// validation of mailjob.Publish.
func rawJob(t testing.TB, e *env, subject, msgID string, hdr map[string]string, body string) {
	t.Helper()
	m := nats.NewMsg(subject)
	m.Data = []byte(body)
	m.Header.Set(mailjob.HeaderSpecVersion, mailjob.SpecVersion)
	m.Header.Set(mailjob.HeaderType, mailjob.TypeJob)
	m.Header.Set(mailjob.HeaderSource, "/test/raw")
	if msgID != "" {
		m.Header.Set(mailjob.HeaderMsgID, msgID)
		m.Header.Set(mailjob.HeaderID, msgID)
	}
	for k, v := range hdr {
		if v == "" {
			m.Header.Del(k)
		} else {
			m.Header.Set(k, v)
		}
	}
	if _, err := e.js.PublishMsg(testCtx(t), m); err != nil {
		t.Fatalf("publish %s: %v", msgID, err)
	}
}

func TestInvalidJobsAreRefusedAndDeadLettered(t *testing.T) {
	e := newEnv(t)
	cfg := testConfig(t, mbox{address: billing, profiles: []string{"dunning"}}, mbox{address: "a.b@example.com"})
	f := newFake("billing", true)
	fab := newFake("ab", true)
	r := startReplica(t, e, cfg, map[string]*fakeTransport{billing: f, "a.b@example.com": fab}, replicaOpts{})
	_ = r
	subj := mailjob.Subject(cfg.Streams.Jobs.SubjectPrefix, billing)
	ok := `"to":[{"address":"ap@customer.example"}],"subject":"s","text":"t"`
	cases := []struct {
		id, subject string
		hdr         map[string]string
		body        string
		code        string
		reasons     []string // each must appear in the reason
	}{
		{id: "bad-json", subject: subj, body: `{"job_id":"bad-json",`, code: mailjob.ReasonInvalidJob,
			reasons: []string{"not valid JSON"}},
		{id: "many-problems", subject: subj, code: mailjob.ReasonInvalidJob,
			body:    `{"job_id":"many-problems","from":"billing@example.com","to":[{"address":"not an address"}],"subject":"a\nb","colour":"red"}`,
			reasons: []string{"colour: unknown field", "to[0].address", "subject", "text: a body is required"}},
		{id: "no-recipient", subject: subj, code: mailjob.ReasonInvalidJob,
			body: `{"job_id":"no-recipient","from":"billing@example.com","subject":"s","text":"t"}`, reasons: []string{"at least one recipient"}},
		{id: "too-many", subject: subj, code: mailjob.ReasonInvalidJob,
			body:    `{"job_id":"too-many","from":"billing@example.com","to":[` + strings.Repeat(`{"address":"x@customer.example"},`, 20) + `{"address":"y@customer.example"}],"subject":"s","text":"t"}`,
			reasons: []string{"21 recipients", "over the limit of 20"}},
		{id: "id-mismatch", subject: subj, hdr: map[string]string{mailjob.HeaderMsgID: "other-id"}, code: mailjob.ReasonInvalidJob,
			body: `{"job_id":"id-mismatch","from":"billing@example.com",` + ok + `}`, reasons: []string{"differs from the Nats-Msg-Id header"}},
		{id: "wrong-subject", subject: mailjob.Subject(cfg.Streams.Jobs.SubjectPrefix, "a.b@example.com"), code: mailjob.ReasonInvalidJob,
			body: `{"job_id":"wrong-subject","from":"billing@example.com",` + ok + `}`, reasons: []string{"belong on subjects ending in .billing_example_com"}},
		{id: "v2-job", subject: subj, hdr: map[string]string{mailjob.HeaderType: "com.mailpipe.job.submitted.v2"}, code: mailjob.ReasonUnsupportedType,
			body: `{"job_id":"v2-job"}`, reasons: []string{"com.mailpipe.job.submitted.v2"}},
		{id: "no-profile", subject: subj, code: mailjob.ReasonUnknownSenderProfile,
			body: `{"job_id":"no-profile","from":"billing@example.com","sender_profile":"ceo",` + ok + `}`, reasons: []string{`"ceo" is not configured`, "dunning"}},
		{id: "extra-token", subject: cfg.Streams.Jobs.SubjectPrefix + ".evil.billing_example_com", code: mailjob.ReasonInvalidJob,
			body: `{"job_id":"extra-token","from":"billing@example.com",` + ok + `}`, reasons: []string{"belong on " + subj}},
	}
	for _, c := range cases {
		rawJob(t, e, c.subject, c.id, c.hdr, c.body)
	}
	var ids []string
	for _, c := range cases {
		ids = append(ids, c.id)
	}
	finals := waitFinal(t, e, cfg, ids...)
	for _, c := range cases {
		ev := finals[c.id]
		if ev.Type != mailjob.StatusFailed || !ev.Permanent || ev.ReasonCode != c.code {
			t.Errorf("%s: final event %+v, want failed permanently with %s", c.id, ev, c.code)
			continue
		}
		for _, r := range c.reasons {
			if !strings.Contains(ev.Reason, r) {
				t.Errorf("%s: reason %q lacks %q", c.id, ev.Reason, r)
			}
		}
	}
	if n := f.totalDelivered() + fab.totalDelivered(); n != 0 {
		t.Errorf("%d invalid jobs were sent", n)
	}
	// Each one is a dead letter with the reason, under its own id.
	eventually(t, "every dead letter", func() bool { return streamMsgs(t, e, cfg.Streams.DeadLetter.Name) == uint64(len(cases)) })
	dls := map[string]*nats.Msg{}
	for _, m := range deadLetters(t, e, cfg) {
		dls[m.Header.Get(mailjob.HeaderMsgID)] = m
	}
	for _, c := range cases {
		m := dls[mailjob.DeadLetterIDPrefix+c.id]
		if m == nil {
			t.Errorf("%s: no dead letter", c.id)
			continue
		}
		if m.Header.Get(mailjob.HeaderType) != mailjob.TypeDeadLetter || m.Header.Get(mailjob.HeaderReasonCode) != c.code ||
			m.Header.Get(mailjob.HeaderReason) != finals[c.id].Reason || m.Header.Get(mailjob.HeaderID) != mailjob.DeadLetterIDPrefix+c.id {
			t.Errorf("%s: dead letter headers %v", c.id, m.Header)
		}
		if !bytes.Equal(m.Data, []byte(c.body)) {
			t.Errorf("%s: dead letter payload %q", c.id, m.Data)
		}
		last := c.subject[strings.LastIndexByte(c.subject, '.')+1:]
		if want := cfg.Streams.DeadLetter.SubjectPrefix + "." + last; m.Subject != want {
			t.Errorf("%s: dead letter on %s, want %s", c.id, m.Subject, want)
		}
	}
	eventually(t, "an empty work queue", func() bool { return streamMsgs(t, e, cfg.Streams.Jobs.Name) == 0 })
}

func TestDisallowedSenderSendsNothing(t *testing.T) {
	e := newEnv(t)
	cfg := testConfig(t, mbox{address: billing}, mbox{address: "a.b@example.com"})
	f, fab := newFake("billing", true), newFake("ab", true)
	startReplica(t, e, cfg, map[string]*fakeTransport{billing: f, "a.b@example.com": fab}, replicaOpts{})

	// The CEO's mailbox is not on the allow-list: its subject has no
	// consumer of its own, the rejects consumer takes the job.
	ceo := newJob("ceo-wire-transfer", "ceo@example.com", 1)
	// Same subject token as the allowed a.b@example.com, another mailbox.
	twin := newJob("twin", "a_b@example.com", 1)
	good := newJob("good", billing, 1)
	publish(t, e, cfg, ceo, twin, good)
	finals := waitFinal(t, e, cfg, ceo.JobID, twin.JobID, good.JobID)
	for _, id := range []string{ceo.JobID, twin.JobID} {
		ev := finals[id]
		if ev.Type != mailjob.StatusFailed || !ev.Permanent || ev.ReasonCode != mailjob.ReasonSenderNotAllowed ||
			!strings.Contains(ev.Reason, "allow-list") {
			t.Errorf("%s: %+v", id, ev)
		}
	}
	if finals[good.JobID].Type != mailjob.StatusSent {
		t.Errorf("good job: %+v", finals[good.JobID])
	}
	if f.totalDelivered() != 1 || fab.totalDelivered() != 0 || fab.callsFor(twin.JobID) != 0 {
		t.Errorf("delivered: billing %d, a.b %d", f.totalDelivered(), fab.totalDelivered())
	}
	eventually(t, "two dead letters", func() bool { return streamMsgs(t, e, cfg.Streams.DeadLetter.Name) == 2 })
	eventually(t, "an empty work queue", func() bool { return streamMsgs(t, e, cfg.Streams.Jobs.Name) == 0 })
}

func TestRedeliveryAfterLostAckSendsNothing(t *testing.T) {
	e := newEnv(t)
	cfg := testConfig(t, mbox{address: billing})
	f := newFake("billing", false) // cannot look up: only the job state protects
	var crashed atomic.Bool
	startReplica(t, e, cfg, map[string]*fakeTransport{billing: f}, replicaOpts{hooks: hooks{
		// The state says sent, the sent event is out, then the process
		// dies before its ack reaches the server.
		beforeAck: func(string) bool { return crashed.CompareAndSwap(false, true) },
	}})
	j := newJob("lost-ack", billing, 1)
	publish(t, e, cfg, j)
	eventually(t, "the redelivery to be settled", func() bool {
		return crashed.Load() && streamMsgs(t, e, cfg.Streams.Jobs.Name) == 0
	})
	if n := f.callsFor(j.JobID); n != 1 {
		t.Errorf("Send called %d times", n)
	}
	evs := events(t, e, cfg)[j.JobID]
	sent := 0
	for _, ev := range evs {
		if ev.Type == mailjob.StatusSent {
			sent++
		}
	}
	if sent != 1 {
		t.Errorf("%d sent events (the redelivery's is a duplicate of the first): %+v", sent, evs)
	}
}

func TestCrashAfterSendBeforeRecording(t *testing.T) {
	for _, looksUp := range []bool{true, false} {
		t.Run(fmt.Sprintf("looksUp=%v", looksUp), func(t *testing.T) {
			e := newEnv(t)
			cfg := testConfig(t, mbox{address: billing})
			f := newFake("billing", looksUp)
			var crashed atomic.Bool
			startReplica(t, e, cfg, map[string]*fakeTransport{billing: f}, replicaOpts{hooks: hooks{
				// The mail went out; the process dies before it records
				// anything.
				afterSend: func(string) bool { return crashed.CompareAndSwap(false, true) },
			}})
			j := newJob("crash-1", billing, 1)
			publish(t, e, cfg, j)
			ev := waitFinal(t, e, cfg, j.JobID)[j.JobID]
			if n := f.deliveredTo(j.JobID); n != 1 {
				t.Errorf("delivered %d times", n)
			}
			if looksUp {
				// The next attempt finds the mail and reports it sent.
				if ev.Type != mailjob.StatusSent || ev.Attempt != 2 || f.callsFor(j.JobID) != 2 {
					t.Errorf("final %+v after %d calls", ev, f.callsFor(j.JobID))
				}
				return
			}
			// SMTP cannot look: the job fails with a clear reason rather
			// than going out twice.
			if ev.Type != mailjob.StatusFailed || !ev.Permanent || !strings.Contains(ev.Reason, "cannot look up sent mail") ||
				f.callsFor(j.JobID) != 1 {
				t.Errorf("final %+v after %d calls", ev, f.callsFor(j.JobID))
			}
		})
	}
}

func TestAmbiguousFailures(t *testing.T) {
	for _, looksUp := range []bool{true, false} {
		t.Run(fmt.Sprintf("looksUp=%v", looksUp), func(t *testing.T) {
			e := newEnv(t)
			cfg := testConfig(t, mbox{address: billing})
			f := newFake("billing", looksUp)
			f.script = func(j *mailjob.Job, call int) behaviour {
				switch {
				case j.JobID == "amb-sent" && call == 1:
					return ambiguousSent
				case j.JobID == "amb-lost" && call == 1:
					return ambiguousNotSent
				}
				return sendOK
			}
			startReplica(t, e, cfg, map[string]*fakeTransport{billing: f}, replicaOpts{})
			publish(t, e, cfg, newJob("amb-sent", billing, 1), newJob("amb-lost", billing, 1))
			finals := waitFinal(t, e, cfg, "amb-sent", "amb-lost")
			evs := events(t, e, cfg)
			for _, id := range []string{"amb-sent", "amb-lost"} {
				ev := finals[id]
				if looksUp {
					if ev.Type != mailjob.StatusSent || ev.Attempt != 2 || f.deliveredTo(id) != 1 {
						t.Errorf("%s: %+v, delivered %d", id, ev, f.deliveredTo(id))
					}
					types := ""
					for _, x := range evs[id] {
						types += fmt.Sprintf("%s/%d ", x.Type, x.Attempt)
					}
					if types != "accepted/1 failed/1 accepted/2 sent/2 " {
						t.Errorf("%s: events %s", id, types)
					}
					continue
				}
				if ev.Type != mailjob.StatusFailed || !ev.Permanent || ev.Attempt != 1 || f.callsFor(id) != 1 ||
					!strings.Contains(ev.Reason, "outcome of attempt 1 is unknown") {
					t.Errorf("%s: %+v after %d calls", id, ev, f.callsFor(id))
				}
			}
		})
	}
}

func TestThrottledJobsWaitAndNothingIsLost(t *testing.T) {
	e := newEnv(t)
	cfg := testConfig(t, mbox{address: billing}) // max_deliver 3
	f := newFake("billing", true)
	f.script = func(j *mailjob.Job, call int) behaviour {
		if call <= 4 {
			return failThrottled // 429 with Retry-After 300ms
		}
		return sendOK
	}
	startReplica(t, e, cfg, map[string]*fakeTransport{billing: f}, replicaOpts{})
	var ids []string
	for i := range 5 {
		j := newJob(fmt.Sprintf("thr-%d", i), billing, 1)
		ids = append(ids, j.JobID)
		publish(t, e, cfg, j)
	}
	finals := waitFinal(t, e, cfg, ids...)
	evs := events(t, e, cfg)
	for _, id := range ids {
		// Four 429s are more than max_deliver, but a 429 is no failure of
		// the job: it waits and goes.
		if ev := finals[id]; ev.Type != mailjob.StatusSent || f.deliveredTo(id) != 1 {
			t.Errorf("%s: %+v delivered %d", id, ev, f.deliveredTo(id))
		}
		throttled := 0
		for _, ev := range evs[id] {
			if ev.Type == mailjob.StatusFailed && ev.ReasonCode == mailjob.ReasonThrottled && !ev.Permanent {
				throttled++
			}
		}
		if throttled != 4 {
			t.Errorf("%s: %d throttled events, want 4", id, throttled)
		}
	}
}

func TestTransientFailuresExhaustAttempts(t *testing.T) {
	e := newEnv(t)
	cfg := testConfig(t, mbox{address: billing}) // max_deliver 3
	f := newFake("billing", true)
	f.script = func(j *mailjob.Job, call int) behaviour {
		switch j.JobID {
		case "flaky":
			if call <= 2 {
				return failTransient
			}
			return sendOK
		case "rejected":
			return failPermanent
		case "denied":
			return failAuth
		}
		return failTransient
	}
	startReplica(t, e, cfg, map[string]*fakeTransport{billing: f}, replicaOpts{})
	publish(t, e, cfg, newJob("down", billing, 1), newJob("flaky", billing, 1), newJob("rejected", billing, 1), newJob("denied", billing, 1))
	finals := waitFinal(t, e, cfg, "down", "flaky", "rejected", "denied")

	if ev := finals["down"]; ev.Type != mailjob.StatusFailed || !ev.Permanent || ev.ReasonCode != mailjob.ReasonAttemptsExhausted ||
		!strings.Contains(ev.Reason, "3 attempts failed") || !strings.Contains(ev.Reason, "503") || ev.Attempt != 3 || f.callsFor("down") != 3 {
		t.Errorf("down: %+v after %d calls", ev, f.callsFor("down"))
	}
	if ev := finals["flaky"]; ev.Type != mailjob.StatusSent || ev.Attempt != 3 {
		t.Errorf("flaky: %+v", ev)
	}
	if ev := finals["rejected"]; ev.ReasonCode != mailjob.ReasonRecipientRejected || !ev.Permanent || f.callsFor("rejected") != 1 {
		t.Errorf("rejected: %+v", ev)
	}
	if ev := finals["denied"]; ev.ReasonCode != mailjob.ReasonSendAsDenied || !ev.Permanent || f.callsFor("denied") != 1 {
		t.Errorf("denied: %+v", ev)
	}
	evs := events(t, e, cfg)["down"]
	var types []string
	for _, ev := range evs {
		types = append(types, fmt.Sprintf("%s/%d/%v", ev.Type, ev.Attempt, ev.Permanent))
	}
	if got := strings.Join(types, " "); got != "accepted/1/false failed/1/false accepted/2/false failed/2/false accepted/3/false failed/3/true" {
		t.Errorf("events of down: %s", got)
	}
	eventually(t, "three dead letters", func() bool { return streamMsgs(t, e, cfg.Streams.DeadLetter.Name) == 3 })
	for _, m := range deadLetters(t, e, cfg) {
		if id := m.Header.Get(mailjob.HeaderMsgID); id == "dl-down" && m.Header.Get(mailjob.HeaderReasonCode) != mailjob.ReasonAttemptsExhausted {
			t.Errorf("dead letter of down: %v", m.Header)
		}
	}
}

func TestRateLimitSharedByReplicas(t *testing.T) {
	e := newEnv(t)
	// Exchange's 30 per minute, scaled down to 30 per 2 seconds.
	const limit, window = 30, 2 * time.Second
	cfg := testConfig(t, mbox{address: billing, perWindow: limit, window: window})
	f := newFake("billing", true)
	f.delay = func() time.Duration { return 5 * time.Millisecond }
	fakes := map[string]*fakeTransport{billing: f}
	startReplica(t, e, cfg, fakes, replicaOpts{holder: "r1"})
	startReplica(t, e, cfg, fakes, replicaOpts{holder: "r2"})
	const n = 100
	var ids []string
	for i := range n {
		j := newJob(fmt.Sprintf("rate-%03d", i), billing, 1)
		ids = append(ids, j.JobID)
		publish(t, e, cfg, j)
	}
	finals := waitFinal(t, e, cfg, ids...)
	for _, id := range ids {
		if finals[id].Type != mailjob.StatusSent || f.deliveredTo(id) != 1 {
			t.Errorf("%s: %+v delivered %d", id, finals[id], f.deliveredTo(id))
		}
	}
	ts := f.sendTimes()
	peak := maxInWindow(ts, window)
	if peak > limit {
		t.Errorf("%d sends within %s, the limit is %d", peak, window, limit)
	}
	span := ts[len(ts)-1].Sub(ts[0])
	t.Logf("%d sends by 2 replicas in %s: at most %d in any %s (limit %d)", len(ts), span.Round(time.Millisecond), peak, window, limit)
	// No job failed or was throttled for the rate: it waited.
	for id, evs := range events(t, e, cfg) {
		for _, ev := range evs {
			if ev.Type == mailjob.StatusFailed {
				t.Errorf("%s: %+v", id, ev)
			}
		}
	}
}

func TestOtherMailboxesFlowWhileOneIsRateLimited(t *testing.T) {
	e := newEnv(t)
	cfg := testConfig(t,
		mbox{address: billing, perWindow: 2, window: time.Minute},
		mbox{address: support})
	fb, fs := newFake("billing", true), newFake("support", true)
	startReplica(t, e, cfg, map[string]*fakeTransport{billing: fb, support: fs}, replicaOpts{})
	// A burst for billing first, then support's jobs behind it.
	var sup []string
	for i := range 20 {
		publish(t, e, cfg, newJob(fmt.Sprintf("bill-%02d", i), billing, 1))
	}
	for i := range 10 {
		j := newJob(fmt.Sprintf("sup-%02d", i), support, 1)
		sup = append(sup, j.JobID)
		publish(t, e, cfg, j)
	}
	waitFinal(t, e, cfg, sup...)
	eventually(t, "billing's two sends", func() bool { return fb.totalDelivered() == 2 })
	// Billing's other 18 jobs wait in the stream: not failed, not handed
	// out over and over.
	time.Sleep(500 * time.Millisecond)
	if n := fb.totalDelivered(); n != 2 {
		t.Errorf("billing sent %d, its limit is 2 per minute", n)
	}
	cons, err := e.js.Consumer(testCtx(t), cfg.Streams.Jobs.Name, ConsumerName(cfg.Consumer.Durable, billing))
	if err != nil {
		t.Fatal(err)
	}
	info, err := cons.Info(testCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	if info.NumPending != 18 || info.NumAckPending != 0 {
		t.Errorf("billing's consumer: %d pending, %d handed out; want 18 waiting in the stream", info.NumPending, info.NumAckPending)
	}
	for id, evs := range events(t, e, cfg) {
		for _, ev := range evs {
			if ev.Type == mailjob.StatusFailed {
				t.Errorf("%s failed: %+v", id, ev)
			}
		}
	}
}

func TestRecipientWindow(t *testing.T) {
	e := newEnv(t)
	cfg := testConfig(t, mbox{address: billing, rcpts: 20, rcptWin: time.Hour})
	f := newFake("billing", true)
	startReplica(t, e, cfg, map[string]*fakeTransport{billing: f}, replicaOpts{})
	// 8 + 8 recipients fit in 20; the third job's 8 do not.
	publish(t, e, cfg, newJob("r1", billing, 8), newJob("r2", billing, 8), newJob("r3", billing, 8), newJob("r4", billing, 4))
	finals := waitFinal(t, e, cfg, "r1", "r2", "r4")
	for id, ev := range finals {
		if ev.Type != mailjob.StatusSent {
			t.Errorf("%s: %+v", id, ev)
		}
	}
	time.Sleep(500 * time.Millisecond)
	if f.callsFor("r3") != 0 {
		t.Errorf("r3 sent over the recipient limit")
	}
	if ev, ok := final(events(t, e, cfg)["r3"]); ok {
		t.Errorf("r3 has a final event: %+v", ev)
	}
	if n := streamMsgs(t, e, cfg.Streams.Jobs.Name); n != 1 {
		t.Errorf("%d jobs in the stream, want r3 waiting", n)
	}
}

func TestGracefulShutdownFinishesSends(t *testing.T) {
	e := newEnv(t)
	cfg := testConfig(t, mbox{address: billing})
	f := newFake("billing", true)
	started := make(chan struct{}, 10)
	f.delay = func() time.Duration { started <- struct{}{}; return 700 * time.Millisecond }
	r := startReplica(t, e, cfg, map[string]*fakeTransport{billing: f}, replicaOpts{hardAfter: 10 * time.Second})
	publish(t, e, cfg, newJob("slow", billing, 1))
	select {
	case <-started:
	case <-time.After(hangGuard):
		t.Fatal("the send did not start")
	}
	r.soft() // SIGTERM: no new job, the one in progress finishes
	publish(t, e, cfg, newJob("after-stop", billing, 1))
	select {
	case <-r.done:
	case <-time.After(hangGuard):
		t.Fatal("the replica did not stop")
	}
	if ev := waitFinal(t, e, cfg, "slow")["slow"]; ev.Type != mailjob.StatusSent {
		t.Errorf("slow: %+v", ev)
	}
	if f.callsFor("after-stop") != 0 {
		t.Error("a job was taken after the stop")
	}
	if n := streamMsgs(t, e, cfg.Streams.Jobs.Name); n != 1 {
		t.Errorf("%d jobs in the stream, want the one published after the stop", n)
	}
}

func TestHardStopAbandonsAndAnotherReplicaFinishes(t *testing.T) {
	e := newEnv(t)
	cfg := testConfig(t, mbox{address: billing})
	f := newFake("billing", true)
	var slow atomic.Bool
	slow.Store(true)
	started := make(chan struct{}, 10)
	f.delay = func() time.Duration {
		if slow.Load() {
			started <- struct{}{}
			return time.Hour
		}
		return 0
	}
	r := startReplica(t, e, cfg, map[string]*fakeTransport{billing: f}, replicaOpts{hardAfter: 200 * time.Millisecond})
	publish(t, e, cfg, newJob("stuck", billing, 1))
	<-started
	r.soft()
	select {
	case <-r.done:
	case <-time.After(hangGuard):
		t.Fatal("the replica did not stop at the deadline")
	}
	slow.Store(false)
	startReplica(t, e, cfg, map[string]*fakeTransport{billing: f}, replicaOpts{})
	if ev := waitFinal(t, e, cfg, "stuck")["stuck"]; ev.Type != mailjob.StatusSent || ev.Attempt != 2 {
		t.Errorf("stuck: %+v", ev)
	}
	if f.deliveredTo("stuck") != 1 {
		t.Errorf("delivered %d times", f.deliveredTo("stuck"))
	}
}

func TestAttachments(t *testing.T) {
	e := newEnv(t)
	cfg := testConfig(t, mbox{address: billing})
	f := newFake("billing", true)
	got := map[string][]byte{}
	f.attachments = func(ref mailjob.ObjectRef, data []byte, err error) {
		if err != nil {
			t.Errorf("read %s: %v", ref.Name, err)
		}
		got[ref.Name] = data
	}
	startReplica(t, e, cfg, map[string]*fakeTransport{billing: f}, replicaOpts{})
	ctx := testCtx(t)
	content := bytes.Repeat([]byte("%PDF-1.7 invoice "), 40000)
	ref, err := mailjob.UploadAttachment(ctx, e.js, cfg.Streams.AttachmentBucket, "att-ok/invoice.pdf", bytes.NewReader(content))
	if err != nil {
		t.Fatal(err)
	}
	ok := newJob("att-ok", billing, 1)
	ok.Attachments = []mailjob.Attachment{mailjob.ObjectAttachment("invoice.pdf", "application/pdf", ref)}
	missing := newJob("att-missing", billing, 1)
	missing.Attachments = []mailjob.Attachment{mailjob.ObjectAttachment("x.pdf", "application/pdf",
		mailjob.ObjectRef{Bucket: cfg.Streams.AttachmentBucket, Name: "nope/x.pdf"})}
	bad := newJob("att-bad", billing, 1)
	badRef := ref
	badRef.SHA256 = strings.Repeat("0", 64)
	bad.Attachments = []mailjob.Attachment{mailjob.ObjectAttachment("invoice.pdf", "application/pdf", badRef)}
	publish(t, e, cfg, ok, missing, bad)
	finals := waitFinal(t, e, cfg, "att-ok", "att-missing", "att-bad")
	if finals["att-ok"].Type != mailjob.StatusSent || !bytes.Equal(got["att-ok/invoice.pdf"], content) {
		t.Errorf("att-ok: %+v, read %d bytes", finals["att-ok"], len(got["att-ok/invoice.pdf"]))
	}
	if ev := finals["att-missing"]; ev.ReasonCode != mailjob.ReasonAttachmentNotFound || !ev.Permanent {
		t.Errorf("att-missing: %+v", ev)
	}
	if ev := finals["att-bad"]; ev.ReasonCode != mailjob.ReasonAttachmentMismatch || !ev.Permanent {
		t.Errorf("att-bad: %+v", ev)
	}
	if f.callsFor("att-missing")+f.callsFor("att-bad") != 0 {
		t.Error("jobs with bad attachments reached the transport")
	}
}

func TestStreamsFollowTheContract(t *testing.T) {
	e := newEnv(t)
	cfg := testConfig(t, mbox{address: billing})
	ctx := testCtx(t)
	s, err := EnsureStreams(ctx, e.js, cfg.Streams, nil)
	if err != nil {
		t.Fatal(err)
	}
	jobs := s.Jobs.CachedInfo().Config
	if jobs.Name != mailjob.DefaultJobsStream || jobs.Subjects[0] != mailjob.DefaultJobsPrefix+".>" || jobs.Retention != jetstream.WorkQueuePolicy ||
		jobs.Discard != jetstream.DiscardNew || jobs.MaxAge != 7*24*time.Hour || jobs.Duplicates != 24*time.Hour || jobs.MaxMsgSize != 1<<20 {
		t.Errorf("jobs stream: %+v", jobs)
	}
	st := s.Status.CachedInfo().Config
	if st.Retention != jetstream.LimitsPolicy || st.Discard != jetstream.DiscardOld || st.MaxAge != 30*24*time.Hour || st.Duplicates != 24*time.Hour {
		t.Errorf("status stream: %+v", st)
	}
	dl := s.DeadLetter.CachedInfo().Config
	if dl.Retention != jetstream.LimitsPolicy || dl.MaxAge != 30*24*time.Hour || dl.MaxMsgSize != 1<<20 || dl.Subjects[0] != mailjob.DefaultDeadLetterPrefix+".>" {
		t.Errorf("dead-letter stream: %+v", dl)
	}
	os, err := s.Attachments.Status(ctx)
	if err != nil || os.TTL() != 7*24*time.Hour {
		t.Errorf("attachment bucket: %v %v", os, err)
	}
	// Again: nothing to change.
	if _, err := EnsureStreams(ctx, e.js, cfg.Streams, nil); err != nil {
		t.Fatal(err)
	}
	// A stream of that name that is not a work queue is refused.
	cfg2 := *cfg
	cfg2.Streams.Jobs.Name = "OTHER"
	cfg2.Streams.Jobs.SubjectPrefix = "other.jobs"
	if _, err := e.js.CreateStream(ctx, jetstream.StreamConfig{Name: "OTHER", Subjects: []string{"other.jobs.>"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := EnsureStreams(ctx, e.js, cfg2.Streams, nil); err == nil || !strings.Contains(err.Error(), "retention") {
		t.Errorf("limits stream taken for the work queue: %v", err)
	}
}

func TestJobKey(t *testing.T) {
	for id, want := range map[string]string{
		"erp-invoice-2026-0142": "job.erp-invoice-2026-0142",
		"erp.inv:42":            "job.erp/inv=42",
		".a..b.":                "job./a//b/",
		"a_b":                   "job.a_b",
	} {
		if got := JobKey(id); got != want {
			t.Errorf("JobKey(%q) = %q, want %q", id, got, want)
		}
	}
	// Such keys are accepted by the bucket.
	e := newEnv(t)
	kv, err := e.js.CreateKeyValue(testCtx(t), jetstream.KeyValueConfig{Bucket: "keys"})
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{".a..b.", "x:y", strings.Repeat("z", 128)} {
		if _, err := kv.Put(testCtx(t), JobKey(id), []byte("1")); err != nil {
			t.Errorf("key for %q: %v", id, err)
		}
	}
	_ = context.Background
}
