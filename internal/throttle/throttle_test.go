package throttle

import (
	"context"
	"errors"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// hang bounds waits that only fail when the code under test deadlocks.
const hang = 30 * time.Second

// fakeClock is a manual clock: timers fire only when Advance passes them.
type fakeClock struct {
	mu     sync.Mutex
	now    time.Time
	timers map[*fakeTimer]bool
	// made receives each timer's duration when one is created.
	made chan time.Duration
}

type fakeTimer struct {
	c     *fakeClock
	at    time.Time
	ch    chan time.Time
	fired bool
}

func newFakeClock() *fakeClock {
	return &fakeClock{now: time.Date(2025, 3, 1, 10, 0, 0, 0, time.UTC), timers: map[*fakeTimer]bool{}, made: make(chan time.Duration, 100)}
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) NewTimer(d time.Duration) Timer {
	c.mu.Lock()
	t := &fakeTimer{c: c, at: c.now.Add(d), ch: make(chan time.Time, 1)}
	if d <= 0 {
		t.fired = true
		t.ch <- c.now
	} else {
		c.timers[t] = true
	}
	c.mu.Unlock()
	c.made <- d
	return t
}

func (t *fakeTimer) C() <-chan time.Time { return t.ch }

func (t *fakeTimer) Stop() bool {
	t.c.mu.Lock()
	defer t.c.mu.Unlock()
	active := t.c.timers[t]
	delete(t.c.timers, t)
	return active
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
	for t := range c.timers {
		if !t.at.After(c.now) {
			delete(c.timers, t)
			t.fired = true
			t.ch <- c.now
		}
	}
}

// nextTimer waits until code under test creates a timer and returns its
// duration.
func (c *fakeClock) nextTimer(t *testing.T) time.Duration {
	t.Helper()
	select {
	case d := <-c.made:
		return d
	case <-time.After(hang):
		t.Fatal("no timer was created: Acquire did not block on time")
		return 0
	}
}

func (c *fakeClock) noTimer(t *testing.T) {
	t.Helper()
	select {
	case d := <-c.made:
		t.Fatalf("unexpected timer of %s", d)
	default:
	}
}

func waitDone(t *testing.T, done <-chan error) error {
	t.Helper()
	select {
	case err := <-done:
		return err
	case <-time.After(hang):
		t.Fatal("Acquire did not return")
		return nil
	}
}

func notDone(t *testing.T, done <-chan error) {
	t.Helper()
	select {
	case err := <-done:
		t.Fatalf("Acquire returned (%v) while it should block", err)
	default:
	}
}

func acquireAsync(ctx context.Context, l *Limiter, n int, releases chan<- func()) <-chan error {
	done := make(chan error, 1)
	go func() {
		rel, err := l.AcquireN(ctx, n)
		if err == nil && releases != nil {
			releases <- rel
		}
		done <- err
	}()
	return done
}

func mustAcquire(t *testing.T, l *Limiter) func() {
	t.Helper()
	rel, err := l.Acquire(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return rel
}

func TestParseRetryAfter(t *testing.T) {
	now := time.Date(2025, 3, 1, 10, 0, 0, 0, time.UTC)
	cases := []struct {
		in   string
		want time.Duration
		ok   bool
	}{
		{"2.128", 2128 * time.Millisecond, true},
		{" 2.128 ", 2128 * time.Millisecond, true},
		{"0.001", time.Millisecond, true},
		{"0.1", 100 * time.Millisecond, true},
		{"1.5", 1500 * time.Millisecond, true},
		{"7", 7 * time.Second, true},
		{"0", 0, true},
		{"120", 2 * time.Minute, true},
		{"99999999", MaxRetryAfter, true},
		{now.Add(90 * time.Second).Format(http.TimeFormat), 90 * time.Second, true},
		{now.Add(-time.Minute).Format(http.TimeFormat), 0, true},
		{"Sat, 01 Mar 2025 10:00:30 GMT", 30 * time.Second, true},
		{"", 0, false},
		{"-1", 0, false},
		{"1e3", 0, false},
		{"0x10", 0, false},
		{"Inf", 0, false},
		{"NaN", 0, false},
		{"1.2.3", 0, false},
		{".", 0, false},
		{"soon", 0, false},
	}
	for _, c := range cases {
		got, ok := ParseRetryAfter(c.in, now)
		if got != c.want || ok != c.ok {
			t.Errorf("ParseRetryAfter(%q) = %v, %v; want %v, %v", c.in, got, ok, c.want, c.ok)
		}
	}
}

func TestBackoff(t *testing.T) {
	prev := time.Duration(0)
	for attempt := 1; attempt <= 12; attempt++ {
		lo, hi := Backoff(attempt, 0), Backoff(attempt, 0.999999)
		if lo < prev/2 || hi > backoffMax || lo > hi || lo < hi/2-time.Millisecond {
			t.Errorf("attempt %d: backoff range [%s, %s]", attempt, lo, hi)
		}
		prev = hi
	}
	if Backoff(1, 0) != 500*time.Millisecond || Backoff(1, 0.5) != 750*time.Millisecond || Backoff(2, 0) != time.Second {
		t.Errorf("backoff 1: %s %s, 2: %s", Backoff(1, 0), Backoff(1, 0.5), Backoff(2, 0))
	}
	if Backoff(100, 0.999999) > backoffMax || Backoff(100, 0) != backoffMax/2 {
		t.Errorf("backoff not capped: %s", Backoff(100, 0.999999))
	}
}

func TestMailboxConcurrencyCap(t *testing.T) {
	app := NewApp(AppOptions{MaxConcurrency: 100})
	l := app.Mailbox("a@example.com", MailboxOptions{MaxConcurrency: 4})
	var cur, peak atomic.Int64
	var wg sync.WaitGroup
	for i := 0; i < 64; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rel, err := l.Acquire(context.Background())
			if err != nil {
				t.Error(err)
				return
			}
			n := cur.Add(1)
			for {
				p := peak.Load()
				if n <= p || peak.CompareAndSwap(p, n) {
					break
				}
			}
			time.Sleep(time.Millisecond)
			cur.Add(-1)
			rel()
		}()
	}
	wg.Wait()
	if p := peak.Load(); p > 4 || p < 1 {
		t.Fatalf("peak in flight %d, want 1..4", p)
	}
	st := l.Stats()
	if st.Requests != 64 || st.InFlight != 0 {
		t.Fatalf("stats %+v", st)
	}
}

func TestAppConcurrencySharedByMailboxes(t *testing.T) {
	app := NewApp(AppOptions{MaxConcurrency: 5})
	var cur, peak atomic.Int64
	var wg sync.WaitGroup
	for m := 0; m < 4; m++ {
		l := app.Mailbox(string(rune('a'+m))+"@example.com", MailboxOptions{})
		for i := 0; i < 16; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				rel, err := l.Acquire(context.Background())
				if err != nil {
					t.Error(err)
					return
				}
				n := cur.Add(1)
				for {
					p := peak.Load()
					if n <= p || peak.CompareAndSwap(p, n) {
						break
					}
				}
				time.Sleep(time.Millisecond)
				cur.Add(-1)
				rel()
			}()
		}
	}
	wg.Wait()
	if p := peak.Load(); p > 5 {
		t.Fatalf("peak in flight across mailboxes %d, want <= 5", p)
	}
}

func TestSameMailboxSameLimiter(t *testing.T) {
	app := NewApp(AppOptions{})
	a := app.Mailbox("Shared@Example.com", MailboxOptions{Budget: 7})
	b := app.Mailbox("shared@example.com ", MailboxOptions{Budget: 9})
	if a != b {
		t.Fatal("two limiters for one mailbox")
	}
	if a.budget != 7 || a.conc != DefaultMailboxConcurrency || a.window != DefaultWindow {
		t.Fatalf("options: budget %d conc %d window %s", a.budget, a.conc, a.window)
	}
	if c := app.Mailbox("other@example.com", MailboxOptions{}); c == a || c.budget != DefaultBudget {
		t.Fatal("other mailbox shares the limiter or lacks defaults")
	}
}

func TestReleaseFreesSlotAndIsIdempotent(t *testing.T) {
	app := NewApp(AppOptions{})
	l := app.Mailbox("m", MailboxOptions{MaxConcurrency: 1})
	rel := mustAcquire(t, l)
	done := acquireAsync(context.Background(), l, 1, nil)
	notDone(t, done) // the slot is held: nothing can have woken it
	rel()
	rel() // no-op: must not free a second slot
	if err := waitDone(t, done); err != nil {
		t.Fatal(err)
	}
	if st := l.Stats(); st.InFlight != 1 {
		t.Fatalf("in flight %d after double release, want 1", st.InFlight)
	}
}

func TestBudgetSlidingWindow(t *testing.T) {
	clk := newFakeClock()
	app := NewApp(AppOptions{Clock: clk})
	l := app.Mailbox("m", MailboxOptions{Budget: 3, Window: 10 * time.Minute})
	t0 := clk.Now()
	for i := 0; i < 3; i++ {
		mustAcquire(t, l)()
		clk.Advance(time.Minute)
	}
	clk.noTimer(t)
	// t0+3m: 3 in the window; the 4th waits for the first to leave it at
	// t0+10m.
	done := acquireAsync(context.Background(), l, 1, nil)
	if d := clk.nextTimer(t); d != 7*time.Minute {
		t.Fatalf("budget wait %s, want 7m", d)
	}
	clk.Advance(7*time.Minute - time.Nanosecond)
	notDone(t, done)
	clk.Advance(time.Nanosecond)
	if err := waitDone(t, done); err != nil {
		t.Fatal(err)
	}
	if got := clk.Now().Sub(t0); got != 10*time.Minute {
		t.Fatalf("4th request started at +%s", got)
	}
	// Now requests at t0+1m, +2m, +10m: the next waits until t0+11m.
	done = acquireAsync(context.Background(), l, 1, nil)
	if d := clk.nextTimer(t); d != time.Minute {
		t.Fatalf("second budget wait %s, want 1m", d)
	}
	clk.Advance(time.Minute)
	if err := waitDone(t, done); err != nil {
		t.Fatal(err)
	}
	st := l.Stats()
	if st.Requests != 5 || st.InWindow != 3 || st.Waited != 8*time.Minute {
		t.Fatalf("stats %+v", st)
	}
}

func TestBatchCountsEachItemAndHoldsConcurrency(t *testing.T) {
	clk := newFakeClock()
	app := NewApp(AppOptions{Clock: clk})
	l := app.Mailbox("m", MailboxOptions{Budget: 25})
	var reqs atomic.Int64
	app.hooks.Request = func(_ string, n int) { reqs.Add(int64(n)) }
	rel, err := l.AcquireN(context.Background(), 20)
	if err != nil {
		t.Fatal(err)
	}
	if st := l.Stats(); st.Requests != 20 || st.InFlight != 4 || st.InWindow != 20 {
		t.Fatalf("stats after batch %+v", st)
	}
	// A batch holds all 4 slots: a single request waits for it.
	releases := make(chan func(), 1)
	done := acquireAsync(context.Background(), l, 1, releases)
	notDone(t, done)
	rel()
	if err := waitDone(t, done); err != nil {
		t.Fatal(err)
	}
	(<-releases)()
	// 21 of 25 used: a batch of 20 waits for the window.
	done = acquireAsync(context.Background(), l, 20, releases)
	if d := clk.nextTimer(t); d != DefaultWindow {
		t.Fatalf("batch budget wait %s", d)
	}
	clk.Advance(DefaultWindow)
	if err := waitDone(t, done); err != nil {
		t.Fatal(err)
	}
	(<-releases)()
	if reqs.Load() != 41 {
		t.Fatalf("request hook counted %d, want 41", reqs.Load())
	}
	// A batch larger than the whole budget is clamped, not stuck forever.
	clk.Advance(DefaultWindow)
	rel, err = l.AcquireN(context.Background(), 100)
	if err != nil {
		t.Fatal(err)
	}
	rel()
}

func TestPauseOnRetryAfterIsExact(t *testing.T) {
	clk := newFakeClock()
	var throttled []time.Duration
	var mu sync.Mutex
	app := NewApp(AppOptions{Clock: clk, Hooks: Hooks{Throttled: func(_ string, d time.Duration) {
		mu.Lock()
		throttled = append(throttled, d)
		mu.Unlock()
	}}})
	l := app.Mailbox("m", MailboxOptions{})
	rel := mustAcquire(t, l)
	if d := l.Observe(429, "2.128"); d != 2128*time.Millisecond {
		t.Fatalf("pause %s", d)
	}
	rel()
	done := acquireAsync(context.Background(), l, 1, nil)
	if d := clk.nextTimer(t); d != 2128*time.Millisecond {
		t.Fatalf("waited %s, want exactly 2.128s", d)
	}
	clk.Advance(2127 * time.Millisecond)
	notDone(t, done)
	clk.Advance(time.Millisecond)
	if err := waitDone(t, done); err != nil {
		t.Fatal(err)
	}
	st := l.Stats()
	// The throttled request counted against the budget too.
	if st.Requests != 2 || st.Throttled != 1 || st.Waited != 2128*time.Millisecond {
		t.Fatalf("stats %+v", st)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(throttled) != 1 || throttled[0] != 2128*time.Millisecond {
		t.Fatalf("throttled hook %v", throttled)
	}
}

func TestPauseExtendsWhileWaiting(t *testing.T) {
	clk := newFakeClock()
	app := NewApp(AppOptions{Clock: clk})
	l := app.Mailbox("m", MailboxOptions{})
	l.Pause(time.Second)
	done := acquireAsync(context.Background(), l, 1, nil)
	if d := clk.nextTimer(t); d != time.Second {
		t.Fatalf("wait %s", d)
	}
	l.Pause(3 * time.Second) // a second 429 arrived meanwhile
	l.Pause(time.Second)     // shorter: no effect
	clk.Advance(time.Second)
	if d := clk.nextTimer(t); d != 3*time.Second-time.Second {
		t.Fatalf("rewait %s, want 2s", d)
	}
	notDone(t, done)
	clk.Advance(2 * time.Second)
	if err := waitDone(t, done); err != nil {
		t.Fatal(err)
	}
}

func TestObserveBackoffWithoutRetryAfter(t *testing.T) {
	clk := newFakeClock()
	app := NewApp(AppOptions{Clock: clk, Jitter: func() float64 { return 0.5 }})
	l := app.Mailbox("m", MailboxOptions{})
	// Failures in a row: each one answered after the previous pause ended.
	if d := l.Observe(503, ""); d != 750*time.Millisecond {
		t.Fatalf("first 503 pause %s", d)
	}
	clk.Advance(750 * time.Millisecond)
	if d := l.Observe(504, ""); d != 1500*time.Millisecond {
		t.Fatalf("second pause %s", d)
	}
	clk.Advance(1500 * time.Millisecond)
	if d := l.Observe(504, "garbage"); d != 3*time.Second {
		t.Fatalf("third pause %s", d)
	}
	clk.Advance(3750 * time.Millisecond) // back on a whole second for the HTTP date below
	if d := l.Observe(503, "4"); d != 4*time.Second {
		t.Fatalf("503 with Retry-After: %s", d)
	}
	date := clk.Now().Add(10 * time.Second).Format(http.TimeFormat)
	if d := l.Observe(429, date); d != 10*time.Second {
		t.Fatalf("429 with date: %s", d)
	}
	if d := l.Observe(200, ""); d != 0 {
		t.Fatalf("200 paused %s", d)
	}
	if d := l.Observe(503, ""); d != 750*time.Millisecond {
		t.Fatalf("backoff not reset by success: %s", d)
	}
	if d := l.Observe(404, "5"); d != 0 {
		t.Fatalf("404 paused %s", d)
	}
	if st := l.Stats(); st.Throttled != 1 || !st.PausedUntil.Equal(clk.Now().Add(10*time.Second)) {
		t.Fatalf("stats %+v", st)
	}
}

func TestAcquireContextCancel(t *testing.T) {
	clk := newFakeClock()
	app := NewApp(AppOptions{Clock: clk, MaxConcurrency: 1})
	l := app.Mailbox("m", MailboxOptions{Budget: 1})
	other := app.Mailbox("o", MailboxOptions{})

	// Waiting on the budget.
	mustAcquire(t, l)()
	ctx, cancel := context.WithCancel(context.Background())
	done := acquireAsync(ctx, l, 1, nil)
	clk.nextTimer(t)
	cancel()
	if err := waitDone(t, done); !errors.Is(err, context.Canceled) {
		t.Fatalf("err %v", err)
	}
	// Waiting on the app slot, held by another mailbox.
	clk.Advance(DefaultWindow)
	rel := mustAcquire(t, other)
	ctx, cancel = context.WithCancel(context.Background())
	done = acquireAsync(ctx, l, 1, nil)
	notDone(t, done)
	cancel()
	if err := waitDone(t, done); !errors.Is(err, context.Canceled) {
		t.Fatalf("err %v", err)
	}
	rel()
	// Nothing leaked: the budget reservation and the slots are back.
	rel = mustAcquire(t, l)
	rel()
	if st := l.Stats(); st.InFlight != 0 || st.Requests != 2 {
		t.Fatalf("stats %+v", st)
	}
}

func TestReservationReleaseWakesBudgetWaiter(t *testing.T) {
	clk := newFakeClock()
	app := NewApp(AppOptions{Clock: clk, MaxConcurrency: 1})
	l := app.Mailbox("m", MailboxOptions{Budget: 1})
	other := app.Mailbox("o", MailboxOptions{})
	rel := mustAcquire(t, other) // holds the only app slot
	ctx, cancel := context.WithCancel(context.Background())
	first := acquireAsync(ctx, l, 1, nil) // reserves the only budget unit, waits for the app slot
	notDone(t, first)
	// The second cannot reserve: it waits for the reservation to be given
	// back (no timer: nothing is in the window yet).
	releases := make(chan func(), 1)
	second := acquireAsync(context.Background(), l, 1, releases)
	cancel()
	if err := waitDone(t, first); !errors.Is(err, context.Canceled) {
		t.Fatalf("first: %v", err)
	}
	rel()
	if err := waitDone(t, second); err != nil {
		t.Fatal(err)
	}
	(<-releases)()
	if st := l.Stats(); st.Requests != 1 {
		t.Fatalf("requests %d, want 1", st.Requests)
	}
}

func TestWaitedHook(t *testing.T) {
	clk := newFakeClock()
	var total atomic.Int64
	var calls atomic.Int32
	app := NewApp(AppOptions{Clock: clk, Hooks: Hooks{Waited: func(_ string, d time.Duration) {
		total.Add(int64(d))
		calls.Add(1)
	}}})
	l := app.Mailbox("m", MailboxOptions{})
	mustAcquire(t, l)()
	l.Pause(1500 * time.Millisecond)
	done := acquireAsync(context.Background(), l, 1, nil)
	clk.nextTimer(t)
	clk.Advance(1500 * time.Millisecond)
	if err := waitDone(t, done); err != nil {
		t.Fatal(err)
	}
	if calls.Load() != 2 || time.Duration(total.Load()) != 1500*time.Millisecond {
		t.Fatalf("waited hook: %d calls, %s", calls.Load(), time.Duration(total.Load()))
	}
}

// Concurrent failures answered while the mailbox is already paused are one
// incident: the backoff does not escalate for each of them.
func TestConcurrentFailuresDoNotStackBackoff(t *testing.T) {
	clock := newFakeClock()
	app := NewApp(AppOptions{Name: "a", Clock: clock, Jitter: func() float64 { return 0.999 }})
	l := app.Mailbox("m@example.test", MailboxOptions{})
	first := l.Observe(503, "")
	for i := 0; i < 3; i++ {
		if d := l.Observe(503, ""); d > first {
			t.Fatalf("answer %d of the same incident paused %s, more than the first (%s)", i+2, d, first)
		}
	}
	// After the pause, a new failure escalates.
	clock.Advance(first + time.Millisecond)
	if d := l.Observe(503, ""); d <= first {
		t.Fatalf("a failure after the pause paused %s, want more than %s", d, first)
	}
}
