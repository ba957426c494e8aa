package sender

import (
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

func TestWindowMessages(t *testing.T) {
	l := Limit{Messages: 3, MessageWindow: time.Minute, Recipients: 1000, RecipientWindow: 24 * time.Hour, Grace: 2 * time.Minute}
	base := time.Date(2026, 3, 2, 8, 0, 0, 0, time.UTC).UnixNano()
	at := func(d time.Duration) int64 { return base + int64(d) }
	var w window
	for i, d := range []time.Duration{0, 10 * time.Second, 20 * time.Second} {
		w.prune(at(d), l)
		if wait := w.wait(at(d), 1, l); wait != 0 {
			t.Fatalf("send %d: wait %s", i, wait)
		}
		w.addSent(at(d), 1, l)
	}
	// The fourth must wait until the first leaves the window.
	now := at(30 * time.Second)
	w.prune(now, l)
	if wait := w.wait(now, 1, l); wait != 30*time.Second {
		t.Errorf("wait = %s, want 30s", wait)
	}
	now = at(60 * time.Second)
	w.prune(now, l)
	if wait := w.wait(now, 1, l); wait != 0 {
		t.Errorf("after a minute: wait %s", wait)
	}
	// A reservation in progress holds a place.
	w.Pending = append(w.Pending, reservation{Job: "x", T: now, N: 1})
	if wait := w.wait(now, 1, l); wait == 0 {
		t.Error("a pending reservation does not count")
	}
	// A reservation whose replica died counts as sent at the end of the
	// grace period.
	later := now + int64(l.Grace)
	w.prune(later, l)
	if len(w.Pending) != 0 || len(w.Sent) != 1 || w.Sent[0] != later {
		t.Errorf("after the grace: pending %v, sent %v", w.Pending, w.Sent)
	}
	// A pause (429) holds every send.
	w = window{PauseUntil: now + int64(5*time.Second)}
	if wait := w.wait(now, 1, l); wait != 5*time.Second {
		t.Errorf("paused: wait %s", wait)
	}
}

func TestWindowRecipients(t *testing.T) {
	l := Limit{Messages: 30, MessageWindow: time.Minute, Recipients: 100, RecipientWindow: 24 * time.Hour, Grace: time.Minute}
	base := time.Date(2026, 3, 2, 8, 0, 0, 0, time.UTC).UnixNano()
	var w window
	w.addSent(base, 60, l)
	w.addSent(base+int64(time.Hour), 30, l)
	now := base + int64(2*time.Hour)
	w.prune(now, l)
	if wait := w.wait(now, 10, l); wait != 0 {
		t.Errorf("10 more recipients: wait %s", wait)
	}
	// 20 more need the first bucket to leave: its end plus a day.
	wait := w.wait(now, 20, l)
	bs := l.bucketSize()
	want := time.Duration(base - base%bs + bs + int64(24*time.Hour) - now)
	if wait != want {
		t.Errorf("wait %s, want %s", wait, want)
	}
	if wait < 22*time.Hour || wait > 22*time.Hour+5*time.Minute {
		t.Errorf("wait %s, not about 22h", wait)
	}
	// Buckets leave a whole day after their end.
	w.prune(base+int64(24*time.Hour)+bs, l)
	if _, r := w.counts(); r != 30 {
		t.Errorf("after a day: %d recipients counted, want 30", r)
	}
}

func TestWindowsConcurrentReservations(t *testing.T) {
	e := newEnv(t)
	ctx := testCtx(t)
	kv, err := e.js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: "rates"})
	if err != nil {
		t.Fatal(err)
	}
	l := Limit{Messages: 10, MessageWindow: time.Hour, Recipients: 1000, RecipientWindow: time.Hour, Grace: time.Hour}
	// Two replicas, each with its own connection, race for the window.
	ws := []windows{{kv: kv, now: time.Now}}
	kv2, err := e.connect().KeyValue(ctx, "rates")
	if err != nil {
		t.Fatal(err)
	}
	ws = append(ws, windows{kv: kv2, now: time.Now})
	var (
		mu      sync.Mutex
		got     int
		granted string
		wg      sync.WaitGroup
	)
	for i := range 40 {
		wg.Go(func() {
			id := "job-" + string(rune('a'+i))
			wait, err := ws[i%2].reserve(ctx, RateKey("billing_example_com"), id, 1, l)
			if err != nil {
				t.Error(err)
				return
			}
			if wait == 0 {
				mu.Lock()
				got++
				granted = id
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if got != l.Messages {
		t.Errorf("%d reservations granted, the limit is %d", got, l.Messages)
	}
	key := RateKey("billing_example_com")
	if room, wait, err := ws[1].peek(ctx, key, l); err != nil || room != 0 || wait <= 0 {
		t.Fatalf("full window: room %d, wait %s, %v", room, wait, err)
	}
	// Releasing one makes room for one.
	if err := ws[0].release(ctx, key, granted, l); err != nil {
		t.Fatal(err)
	}
	if room, wait, err := ws[1].peek(ctx, key, l); err != nil || room != 1 || wait != 0 {
		t.Fatalf("after a release: room %d, wait %s, %v", room, wait, err)
	}
	// Committing keeps the place for the window; a second commit of the
	// same job (its reservation gone) counts again, on the safe side.
	if err := ws[0].commit(ctx, key, "job-late", 1, l); err != nil {
		t.Fatal(err)
	}
	if room, _, _ := ws[1].peek(ctx, key, l); room != 0 {
		t.Errorf("room %d after the commit", room)
	}
}
