package sender

import (
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mailpipe/mailpipe/pkg/mailjob"
)

// TestLoadExactlyOnceUnderCrashes is the load test: 1,000 jobs
// across 3 mailboxes, 2 replicas at a time, with replicas crashing and
// being replaced, acknowledgements lost, processes dying between the send
// and its record, and sends failing ambiguously, transiently or with 429.
// Every job must be delivered exactly once, every mailbox must stay within
// its (scaled) rate, and every job must end with a final status event.
func TestLoadExactlyOnceUnderCrashes(t *testing.T) {
	const (
		jobs   = 1000
		limit  = 30              // messages per window: Exchange's 30 per minute,
		window = 2 * time.Second // scaled down to 30 per 2 s
	)
	addrs := []string{billing, support, sales}
	e := newEnv(t)
	var boxes []mbox
	for _, a := range addrs {
		boxes = append(boxes, mbox{address: a, perWindow: limit, window: window})
	}
	cfg := testConfig(t, boxes...)
	cfg.Consumer.MaxDeliver = 10 // faults stack up: a job may meet several
	fakes := map[string]*fakeTransport{}
	var rngMu sync.Mutex
	rng := rand.New(rand.NewPCG(1, 2))
	roll := func() float64 {
		rngMu.Lock()
		defer rngMu.Unlock()
		return rng.Float64()
	}
	for _, a := range addrs {
		f := newFake(a, true)
		f.delay = func() time.Duration { return time.Duration(2+roll()*18) * time.Millisecond }
		f.script = func(j *mailjob.Job, call int) behaviour {
			if call > 2 {
				return sendOK
			}
			switch x := roll(); {
			case x < 0.03:
				return ambiguousSent
			case x < 0.05:
				return ambiguousNotSent
			case x < 0.08:
				return failTransient
			case x < 0.09:
				return failThrottled
			}
			return sendOK
		}
		fakes[a] = f
	}
	var lostAcks, crashesAfterSend atomic.Int64
	faults := hooks{
		beforeAck: func(string) bool {
			if roll() < 0.02 {
				lostAcks.Add(1)
				return true
			}
			return false
		},
		afterSend: func(string) bool {
			if roll() < 0.01 {
				crashesAfterSend.Add(1)
				return true
			}
			return false
		},
	}
	start := func(name string) *replica {
		return startReplica(t, e, cfg, fakes, replicaOpts{holder: name, hooks: faults})
	}

	// The backlog is there before the replicas start.
	if _, err := EnsureStreams(testCtx(t), e.js, cfg.Streams, nil); err != nil {
		t.Fatal(err)
	}
	var ids []string
	for i := range jobs {
		j := newJob(fmt.Sprintf("load-%04d", i), addrs[i%len(addrs)], 1+i%3)
		ids = append(ids, j.JobID)
		publish(t, e, cfg, j)
	}
	began := time.Now()
	r1, r2 := start("r1"), start("r2")
	total := func() int {
		n := 0
		for _, f := range fakes {
			n += f.totalDelivered()
		}
		return n
	}
	// A third in: r1 stops abruptly, its sends cut off (its bookkeeping
	// still reaches NATS); r3 takes its place.
	eventually(t, "a third of the jobs", func() bool { return total() >= jobs/3 })
	r1.cancel()
	<-r1.done
	r3 := start("r3")
	// Two thirds in: r2 crashes for real (its connection drops first:
	// nothing more of it reaches NATS); r4 takes its place.
	eventually(t, "two thirds of the jobs", func() bool { return total() >= 2*jobs/3 })
	r2.crash()
	start("r4")
	_ = r3

	finals := waitFinal(t, e, cfg, ids...)
	elapsed := time.Since(began)
	evs := events(t, e, cfg)
	for _, id := range ids {
		ev := finals[id]
		if ev.Type != mailjob.StatusSent {
			t.Errorf("%s: final %+v", id, ev)
		}
		sent := 0
		for _, x := range evs[id] {
			if x.Type == mailjob.StatusSent {
				sent++
			}
		}
		if sent != 1 {
			t.Errorf("%s: %d sent events", id, sent)
		}
	}
	var report []string
	found, resent := 0, 0
	for _, a := range addrs {
		f := fakes[a]
		for _, id := range ids {
			if f.deliveredTo(id) > 1 {
				t.Errorf("%s delivered %d times by %s", id, f.deliveredTo(id), a)
			}
		}
		ts := f.sendTimes()
		peak := maxInWindow(ts, window)
		if peak > limit {
			t.Errorf("%s: %d sends within %s, over its limit of %d", a, peak, window, limit)
		}
		span := ts[len(ts)-1].Sub(ts[0])
		rate := float64(len(ts)-1) / span.Seconds()
		report = append(report, fmt.Sprintf("%s: %d mails in %s = %.1f/s, peak %d in any %s (limit %d per %s = %.1f/s)",
			a, len(ts), span.Round(time.Millisecond), rate, peak, window, limit, window, float64(limit)/window.Seconds()))
		f.mu.Lock()
		found += f.found
		for _, n := range f.resent {
			resent += n
		}
		f.mu.Unlock()
	}
	if got := total(); got != jobs {
		t.Errorf("%d mails delivered for %d jobs", got, jobs)
	}
	eventually(t, "an empty work queue", func() bool { return streamMsgs(t, e, cfg.Streams.Jobs.Name) == 0 })
	if n := streamMsgs(t, e, cfg.Streams.DeadLetter.Name); n != 0 {
		t.Errorf("%d dead letters", n)
	}
	t.Logf("%d jobs, %d mails delivered in %s by 4 replicas (2 at a time; one stopped abruptly, one crashed)", jobs, total(), elapsed.Round(time.Millisecond))
	for _, l := range report {
		t.Log("  " + l)
	}
	t.Logf("  injected: %d lost acks, %d crashes between send and record; transport lookups that found an earlier send: %d (calls after a reported success: %d)",
		lostAcks.Load(), crashesAfterSend.Load(), found, resent)
}
