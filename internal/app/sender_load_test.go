package app

import (
	"context"
	"fmt"
	"net/http"
	"sort"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/mailpipe/mailpipe/internal/bus"
	"github.com/mailpipe/mailpipe/internal/outbound"
	"github.com/mailpipe/mailpipe/internal/testenv/graphfake"
	"github.com/mailpipe/mailpipe/internal/testenv/stack"
	"github.com/mailpipe/mailpipe/pkg/mailjob"
)

// TestSenderLoadThroughGraph: 1,000 jobs across 3 sending mailboxes sent
// by the real Graph transport into the Graph fake, 2 sender replicas at a
// time (one replaced by a new one mid-run, its work cut off), with sends
// that Exchange carries out but answers with 504 or a dropped connection
// (ambiguous: the next attempt must find the mail, not send it again) and
// 429s. Counted in the fake's Sent Items: every job exactly once, each
// mailbox within its rate (Exchange's 30 per minute, scaled down to 30 per
// 2 s), every job with a final status event.
func TestSenderLoadThroughGraph(t *testing.T) {
	const (
		jobs   = 1000
		limit  = 30
		window = 2 * time.Second
	)
	lim := graphfake.DefaultLimits()
	lim.SendPerMinute = 100000 // the sender's own shaping is under test
	st := stack.StartGraph(t, stack.GraphOptions{Mailboxes: 3, Limits: lim})
	st.SetAppRoles("Mail.ReadWrite", "Mail.Send")
	cfg := graphSenderConfig(t, st)
	for i := range cfg.Mailboxes {
		cfg.Mailboxes[i].Rate.MessagesPerMinute = limit
		cfg.Mailboxes[i].Rate.MessageWindow = window
	}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	log := zaptest.NewLogger(t, zaptest.Level(zap.WarnLevel))
	conn, err := bus.Connect(context.Background(), cfg.NATS, log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(conn.Close)
	d := Deps{Logger: log, Conn: conn}

	// Faults on the final send: carried out, then 504 or the connection
	// dropped (ambiguous), and 429s before it is carried out.
	send := `/messages/[^/]+/send$`
	for _, f := range []graphfake.Fault{
		{Method: http.MethodPost, Path: send, Status: http.StatusGatewayTimeout, Applied: true, Count: 15},
		{Method: http.MethodPost, Path: send, Drop: true, Applied: true, Count: 10},
		{Method: http.MethodPost, Path: send, Status: http.StatusTooManyRequests, RetryAfter: "0.25", Count: 15},
	} {
		if err := st.Graph.InjectFault(f); err != nil {
			t.Fatal(err)
		}
	}

	var ids []string
	byMailbox := map[string]int{}
	for i := range jobs {
		from := stack.GraphAddress(i % 3)
		j := &mailjob.Job{JobID: fmt.Sprintf("load-%04d", i), From: from,
			To:      []mailjob.Recipient{{Address: fmt.Sprintf("ap%d@customer.example", i%7)}},
			Subject: fmt.Sprintf("Factuur %04d", i), Text: "Zie bijlage."}
		if _, err := EnqueueJob(context.Background(), cfg, jobJSON(t, j), "/load", d); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, j.JobID)
		byMailbox[from]++
	}

	type replica struct {
		cancel context.CancelFunc
		done   chan error
	}
	start := func() *replica {
		ctx, cancel := context.WithCancel(context.Background())
		r := &replica{cancel: cancel, done: make(chan error, 1)}
		go func() {
			r.done <- RunSender(ctx, cfg, SenderDeps{Deps: Deps{Logger: log}, SweepInterval: 200 * time.Millisecond})
		}()
		return r
	}
	stop := func(r *replica) {
		r.cancel()
		select {
		case <-r.done:
		case <-time.After(senderHang):
			t.Error("a sender replica did not stop")
		}
	}
	sent := func() int {
		n := 0
		for i := 0; i < 3; i++ {
			n += len(st.Graph.SentItems(stack.GraphAddress(i)))
		}
		return n
	}
	waitFor := func(what string, cond func() bool) {
		deadline := time.Now().Add(5 * time.Minute)
		for !cond() {
			if time.Now().After(deadline) {
				t.Fatalf("timed out waiting for %s (%d sent)", what, sent())
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	began := time.Now()
	r1, r2 := start(), start()
	waitFor("a third of the jobs", func() bool { return sent() >= jobs/3 })
	stop(r1) // replaced mid-run
	r3 := start()
	waitFor("every job", func() bool { return sent() >= jobs })
	elapsed := time.Since(began)

	// Every job's final status event says sent.
	var mu sync.Mutex
	var failed []string
	var wg sync.WaitGroup
	sem := make(chan struct{}, 16)
	for _, id := range ids {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			ctx, cancel := context.WithTimeout(context.Background(), senderHang)
			defer cancel()
			ev, err := mailjob.WatchStatus(ctx, conn.JetStream(), id)
			if err != nil {
				mu.Lock()
				failed = append(failed, id+": "+err.Error())
				mu.Unlock()
				return
			}
			var last mailjob.StatusEvent
			for e := range ev {
				last = e
				if e.Final() {
					break
				}
			}
			if last.Type != mailjob.StatusSent {
				mu.Lock()
				failed = append(failed, fmt.Sprintf("%s: final %s %s", id, last.Type, last.Reason))
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	stop(r2)
	stop(r3)
	sort.Strings(failed)
	for _, f := range failed {
		t.Error(f)
	}

	for i := 0; i < 3; i++ {
		addr := stack.GraphAddress(i)
		items := st.Graph.SentItems(addr)
		seen := map[string]int{}
		var times []time.Time
		for _, m := range items {
			seen[m.InternetMessageID]++
			times = append(times, m.SentAt)
		}
		if len(items) != byMailbox[addr] {
			t.Errorf("%s: %d mails in Sent Items for %d jobs", addr, len(items), byMailbox[addr])
		}
		for _, id := range ids {
			if n := seen[outbound.MessageID(id, addr)]; n > 1 {
				t.Errorf("%s sent %d times from %s", id, n, addr)
			}
		}
		sort.Slice(times, func(a, b int) bool { return times[a].Before(times[b]) })
		peak := 0
		for a, b := 0, 0; b < len(times); b++ {
			for times[b].Sub(times[a]) >= window {
				a++
			}
			peak = max(peak, b-a+1)
		}
		if peak > limit {
			t.Errorf("%s: %d sends within %s, over its limit of %d", addr, peak, window, limit)
		}
		if len(times) > 1 {
			span := times[len(times)-1].Sub(times[0])
			t.Logf("%s: %d mails in %s = %.1f/s, peak %d in any %s (limit %d per %s = %.1f/s)",
				addr, len(times), span.Round(time.Millisecond), float64(len(times)-1)/span.Seconds(), peak, window, limit, window, float64(limit)/window.Seconds())
		}
	}
	stats := st.Graph.Stats()
	t.Logf("%d jobs sent in %s by 3 replicas (2 at a time, one replaced); fake: %d requests, %d faults served, %d throttled",
		jobs, elapsed.Round(time.Millisecond), stats.Requests, stats.Faults, stats.Throttled)
}
