// Package throttle shapes requests to Microsoft Graph the way Exchange Online
// limits them: per app and mailbox at most a few requests in flight
// (MailboxConcurrency, 4) and a sliding-window budget (10,000 requests per
// 10 minutes), a cap on requests in flight for the whole app, and pauses
// when the server answers 429/503 with Retry-After (or exponential backoff
// with jitter when it gives none).
//
// An App is shared by every mailbox of one app registration (one identity);
// App.Mailbox returns the Limiter of one mailbox, the same one for every
// caller that names the same mailbox, so that two connections to a mailbox
// (an importer's fetcher and mover) share its limits.
//
// Every request calls Limiter.Acquire before it is sent and the release
// func when it is done (its response body consumed), and reports the
// server's answer with Limiter.Observe. A request is counted against the
// budget when it starts, whatever the answer: Exchange counts throttled
// requests too.
package throttle

import (
	"context"
	"math/rand/v2"
	"strings"
	"sync"
	"time"

	"golang.org/x/sync/semaphore"
)

// Defaults, Exchange Online's limits per app and mailbox.
const (
	DefaultMailboxConcurrency = 4
	DefaultBudget             = 10000
	DefaultWindow             = 10 * time.Minute
	DefaultAppConcurrency     = 16
)

// Backoff bounds for 503/504 (and 429) answers without Retry-After.
const (
	backoffBase = time.Second
	backoffMax  = time.Minute
)

// Clock is the time source; tests use a fake one.
type Clock interface {
	Now() time.Time
	NewTimer(d time.Duration) Timer
}

// Timer is a one-shot timer of a Clock.
type Timer interface {
	C() <-chan time.Time
	Stop() bool
}

// RealClock is the wall clock.
type RealClock struct{}

// Now returns time.Now().
func (RealClock) Now() time.Time { return time.Now() }

// NewTimer returns a time.Timer.
func (RealClock) NewTimer(d time.Duration) Timer { return realTimer{time.NewTimer(d)} }

type realTimer struct{ t *time.Timer }

func (t realTimer) C() <-chan time.Time { return t.t.C }
func (t realTimer) Stop() bool          { return t.t.Stop() }

// Hooks receive metrics. Any nil func is skipped. They are called without
// locks held and must not block.
type Hooks struct {
	// Request is called when n requests start (n > 1 for a $batch, whose
	// items count one each).
	Request func(mailbox string, n int)
	// Throttled is called for each 429 answer (also one inside a $batch),
	// with the pause it caused.
	Throttled func(mailbox string, pause time.Duration)
	// Waited is called once per successful Acquire with the time it
	// blocked (0 when it did not).
	Waited func(mailbox string, d time.Duration)
}

// AppOptions configure an App.
type AppOptions struct {
	// Name is used in errors and logs (the identity's name).
	Name string
	// MaxConcurrency caps requests in flight for the app across all its
	// mailboxes (default 16).
	MaxConcurrency int
	// Clock defaults to the wall clock.
	Clock Clock
	Hooks Hooks
	// Jitter returns a float in [0,1) for backoff jitter (default
	// math/rand/v2).
	Jitter func() float64
}

// App holds the limits shared by all mailboxes of one app registration.
type App struct {
	name   string
	max    int64
	sem    *semaphore.Weighted
	clock  Clock
	hooks  Hooks
	jitter func() float64

	mu        sync.Mutex
	mailboxes map[string]*Limiter
}

// NewApp returns an App.
func NewApp(opts AppOptions) *App {
	if opts.MaxConcurrency <= 0 {
		opts.MaxConcurrency = DefaultAppConcurrency
	}
	if opts.Clock == nil {
		opts.Clock = RealClock{}
	}
	if opts.Jitter == nil {
		opts.Jitter = rand.Float64
	}
	return &App{
		name: opts.Name, max: int64(opts.MaxConcurrency), sem: semaphore.NewWeighted(int64(opts.MaxConcurrency)),
		clock: opts.Clock, hooks: opts.Hooks, jitter: opts.Jitter, mailboxes: map[string]*Limiter{},
	}
}

// Name is the app's name.
func (a *App) Name() string { return a.name }

// MailboxOptions configure the limits of one mailbox.
type MailboxOptions struct {
	// MaxConcurrency: requests in flight (default 4).
	MaxConcurrency int
	// Budget requests per Window (default 10,000 per 10 minutes).
	Budget int
	Window time.Duration
}

// Mailbox returns the Limiter of the mailbox key (an address; compared
// case-insensitively), creating it with opts on first use. Later calls
// return the same Limiter whatever their opts.
func (a *App) Mailbox(key string, opts MailboxOptions) *Limiter {
	k := strings.ToLower(strings.TrimSpace(key))
	a.mu.Lock()
	defer a.mu.Unlock()
	if l, ok := a.mailboxes[k]; ok {
		return l
	}
	if opts.MaxConcurrency <= 0 {
		opts.MaxConcurrency = DefaultMailboxConcurrency
	}
	if opts.Budget <= 0 {
		opts.Budget = DefaultBudget
	}
	if opts.Window <= 0 {
		opts.Window = DefaultWindow
	}
	l := &Limiter{
		app: a, name: key, conc: int64(opts.MaxConcurrency), sem: semaphore.NewWeighted(int64(opts.MaxConcurrency)),
		budget: opts.Budget, window: opts.Window, changed: make(chan struct{}),
	}
	a.mailboxes[k] = l
	return l
}

// Limiter shapes the requests to one mailbox. It is safe for concurrent
// use.
type Limiter struct {
	app    *App
	name   string
	conc   int64
	sem    *semaphore.Weighted
	budget int
	window time.Duration

	mu sync.Mutex
	// starts are the requests counted in the window, oldest first
	// (starts[head:] are live).
	starts []stamp
	head   int
	used   int // requests in starts[head:]
	// reserved: requests that passed the budget check and wait for an app
	// slot; counted against the budget until they start or give up.
	reserved int
	// changed is closed (and replaced) when reserved budget is given back.
	changed     chan struct{}
	pausedUntil time.Time
	failures    int // consecutive 5xx/429 answers, for backoff

	requests  int64
	throttled int64
	inFlight  int64
	waited    time.Duration
}

type stamp struct {
	at time.Time
	n  int
}

// Stats is a snapshot of a Limiter's counters.
type Stats struct {
	// Requests counted against the budget since the Limiter was created.
	Requests int64
	// Throttled answers (429) observed.
	Throttled int64
	// InFlight is the concurrency held now.
	InFlight int64
	// InWindow is the number of requests in the current window.
	InWindow int
	// Waited is the total time Acquire blocked.
	Waited time.Duration
	// PausedUntil is the end of the current pause (zero or past if none).
	PausedUntil time.Time
}

// Name is the mailbox key the Limiter was created for.
func (l *Limiter) Name() string { return l.name }

// Stats returns the Limiter's counters.
func (l *Limiter) Stats() Stats {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.prune(l.app.clock.Now())
	return Stats{Requests: l.requests, Throttled: l.throttled, InFlight: l.inFlight, InWindow: l.used,
		Waited: l.waited, PausedUntil: l.pausedUntil}
}

// Acquire waits until one request may start, counts it, and returns the
// func that ends it (call it once the response body is consumed or
// abandoned; extra calls are no-ops). It returns ctx's error when ctx ends
// first.
func (l *Limiter) Acquire(ctx context.Context) (release func(), err error) {
	return l.AcquireN(ctx, 1)
}

// AcquireN is Acquire for a $batch of n requests: each counts against the
// budget, and since Exchange runs up to 4 items of a batch in parallel,
// the batch holds min(n, MaxConcurrency) of the mailbox's concurrency (and
// as much of the app's).
func (l *Limiter) AcquireN(ctx context.Context, n int) (release func(), err error) {
	n = max(1, min(n, l.budget))
	w := min(int64(n), l.conc)
	aw := min(w, l.app.max)
	start := l.app.clock.Now()
	for {
		if err := l.sem.Acquire(ctx, w); err != nil {
			return nil, err
		}
		if err := l.waitReady(ctx, n); err != nil {
			l.sem.Release(w)
			return nil, err
		}
		if err := l.app.sem.Acquire(ctx, aw); err != nil {
			l.unreserve(n)
			l.sem.Release(w)
			return nil, err
		}
		l.mu.Lock()
		now := l.app.clock.Now()
		if now.Before(l.pausedUntil) {
			// The server asked for a pause while this request waited
			// for an app slot: give everything back and wait again.
			l.mu.Unlock()
			l.unreserve(n)
			l.app.sem.Release(aw)
			l.sem.Release(w)
			continue
		}
		l.reserved -= n
		l.notifyLocked()
		l.starts = append(l.starts, stamp{at: now, n: n})
		l.used += n
		l.requests += int64(n)
		l.inFlight += w
		waited := now.Sub(start)
		if waited < 0 {
			waited = 0
		}
		l.waited += waited
		l.mu.Unlock()
		if h := l.app.hooks.Request; h != nil {
			h(l.name, n)
		}
		if h := l.app.hooks.Waited; h != nil {
			h(l.name, waited)
		}
		var once sync.Once
		return func() {
			once.Do(func() {
				l.mu.Lock()
				l.inFlight -= w
				l.mu.Unlock()
				l.app.sem.Release(aw)
				l.sem.Release(w)
			})
		}, nil
	}
}

// waitReady waits until the mailbox is not paused and the budget has room
// for n more requests, then reserves them.
func (l *Limiter) waitReady(ctx context.Context, n int) error {
	for {
		l.mu.Lock()
		now := l.app.clock.Now()
		l.prune(now)
		wait := time.Duration(-1)
		switch {
		case now.Before(l.pausedUntil):
			wait = l.pausedUntil.Sub(now)
		case l.used+l.reserved+n > l.budget:
			wait = l.budgetWait(now, n)
		default:
			l.reserved += n
			l.mu.Unlock()
			return nil
		}
		changed := l.changed
		l.mu.Unlock()

		var timer Timer
		var fire <-chan time.Time
		if wait >= 0 {
			timer = l.app.clock.NewTimer(wait)
			fire = timer.C()
		}
		select {
		case <-ctx.Done():
			if timer != nil {
				timer.Stop()
			}
			return ctx.Err()
		case <-fire:
		case <-changed:
			if timer != nil {
				timer.Stop()
			}
		}
	}
}

// budgetWait returns how long until enough counted requests leave the
// window for n more to fit, or -1 when that depends on reservations being
// given back (wait for changed).
func (l *Limiter) budgetWait(now time.Time, n int) time.Duration {
	over := l.used + l.reserved + n - l.budget
	freed := 0
	for i := l.head; i < len(l.starts); i++ {
		freed += l.starts[i].n
		if freed >= over {
			return max(l.starts[i].at.Add(l.window).Sub(now), 0)
		}
	}
	return -1
}

// prune drops requests that left the window.
func (l *Limiter) prune(now time.Time) {
	for l.head < len(l.starts) && !l.starts[l.head].at.Add(l.window).After(now) {
		l.used -= l.starts[l.head].n
		l.head++
	}
	if l.head > 64 && l.head*2 > len(l.starts) {
		l.starts = append(l.starts[:0], l.starts[l.head:]...)
		l.head = 0
	}
}

func (l *Limiter) unreserve(n int) {
	l.mu.Lock()
	l.reserved -= n
	l.notifyLocked()
	l.mu.Unlock()
}

func (l *Limiter) notifyLocked() {
	close(l.changed)
	l.changed = make(chan struct{})
}

// Pause stops new requests to the mailbox for d (requests in flight go
// on). A shorter pause than the current one changes nothing.
func (l *Limiter) Pause(d time.Duration) {
	if d <= 0 {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	until := l.app.clock.Now().Add(d)
	if until.After(l.pausedUntil) {
		l.pausedUntil = until
	}
}

// Observe takes the status of an answer (of a request or of one $batch
// item) and its Retry-After header, and pauses the mailbox as the server
// asks: 429, 503 and 504 pause for Retry-After (seconds, fractions
// honoured exactly, or an HTTP date) or, without it, for an exponential
// backoff with jitter that grows with each such answer in a row. Any other
// answer ends the run of failures. It returns the pause (0 if none).
func (l *Limiter) Observe(status int, retryAfter string) time.Duration {
	switch status {
	case 429, 503, 504:
	default:
		if status > 0 {
			l.mu.Lock()
			l.failures = 0
			l.mu.Unlock()
		}
		return 0
	}
	now := l.app.clock.Now()
	l.mu.Lock()
	// Answers to requests that were already in flight when an earlier
	// failure paused the mailbox are the same incident, not failures in a
	// row: escalating on each would stack backoffs (4 concurrent 503s
	// would pause for 8 s instead of 1 s).
	if !now.Before(l.pausedUntil) {
		l.failures++
	}
	failures := max(l.failures, 1)
	if status == 429 {
		l.throttled++
	}
	l.mu.Unlock()
	d, ok := ParseRetryAfter(retryAfter, now)
	if !ok {
		d = Backoff(failures, l.app.jitter())
	}
	l.Pause(d)
	if status == 429 {
		if h := l.app.hooks.Throttled; h != nil {
			h(l.name, d)
		}
	}
	return d
}

// Backoff is the wait after the attempt-th failure in a row (attempt >= 1)
// without a server hint: 1s doubling up to 1m, with jitter (a float in
// [0,1)) taking it down to as little as half.
func Backoff(attempt int, jitter float64) time.Duration {
	d := backoffMax
	if attempt < 1 {
		attempt = 1
	}
	if attempt <= 7 {
		d = min(backoffBase<<(attempt-1), backoffMax)
	}
	half := d / 2
	return half + time.Duration(jitter*float64(d-half))
}
