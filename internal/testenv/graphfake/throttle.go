package graphfake

import (
	"fmt"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Limits are Exchange Online's limits as the fake applies them. Zero fields
// take the defaults of DefaultLimits; a negative value turns a limit off.
type Limits struct {
	// RequestBudget requests per BudgetWindow per (app, mailbox); requests
	// answered 429 count too (default 10,000 per 10 minutes).
	RequestBudget int
	BudgetWindow  time.Duration
	// MailboxConcurrency: requests in flight per (app, mailbox); more answer
	// 429 ApplicationThrottled "MailboxConcurrency" (default 4).
	MailboxConcurrency int
	// AppConcurrency: requests in flight per app over all mailboxes (some
	// revisions of the docs state the 4-concurrent limit per app). Zero or
	// negative: no such limit (the default).
	AppConcurrency int
	// ConcurrencyRetryAfter is the Retry-After of a concurrency 429
	// (default 1s).
	ConcurrencyRetryAfter time.Duration
	// UploadBytes of POST/PUT/PATCH bodies per UploadWindow per (app,
	// mailbox) (default 150 MB per 5 minutes).
	UploadBytes  int64
	UploadWindow time.Duration
	// SendPerMinute: messages submitted per mailbox per minute (default 30).
	SendPerMinute int
	// MaxRequestBody: larger request bodies answer 413 (default 4 MiB).
	MaxRequestBody int64
	// MaxInlineAttachment: a POST .../attachments file must be smaller
	// (default 3 MiB); larger files need an upload session.
	MaxInlineAttachment int64
	// MaxUploadChunk: a larger PUT to an upload session answers 413
	// (default 4 MiB).
	MaxUploadChunk int64
	// MaxAttachmentSize for upload sessions (default 150 MB).
	MaxAttachmentSize int64
	// MaxSendSize: a larger message is refused at submission (default
	// 35 MB, Exchange Online's default send limit).
	MaxSendSize int64
	// ValueTimeoutBytes: GET .../$value of a message at least this large
	// answers 504 after ValueTimeoutAfter (default off; Exchange times out
	// on ~25 MB messages after ~30 s).
	ValueTimeoutBytes int64
	ValueTimeoutAfter time.Duration
	// PageTimeoutBytes: a message or delta page whose JSON is larger answers
	// 504 (large pages with full payloads time out; default off).
	PageTimeoutBytes int
}

// DefaultLimits are Exchange Online's documented limits.
func DefaultLimits() Limits {
	return Limits{
		RequestBudget:         10000,
		BudgetWindow:          10 * time.Minute,
		MailboxConcurrency:    4,
		ConcurrencyRetryAfter: time.Second,
		UploadBytes:           150 << 20,
		UploadWindow:          5 * time.Minute,
		SendPerMinute:         30,
		MaxRequestBody:        4 << 20,
		MaxInlineAttachment:   3 << 20,
		MaxUploadChunk:        4 << 20,
		MaxAttachmentSize:     150 << 20,
		MaxSendSize:           35 << 20,
	}
}

func (l Limits) withDefaults() Limits {
	d := DefaultLimits()
	if l.RequestBudget == 0 {
		l.RequestBudget = d.RequestBudget
	}
	if l.BudgetWindow <= 0 {
		l.BudgetWindow = d.BudgetWindow
	}
	if l.MailboxConcurrency == 0 {
		l.MailboxConcurrency = d.MailboxConcurrency
	}
	if l.ConcurrencyRetryAfter <= 0 {
		l.ConcurrencyRetryAfter = d.ConcurrencyRetryAfter
	}
	if l.UploadBytes == 0 {
		l.UploadBytes = d.UploadBytes
	}
	if l.UploadWindow <= 0 {
		l.UploadWindow = d.UploadWindow
	}
	if l.SendPerMinute == 0 {
		l.SendPerMinute = d.SendPerMinute
	}
	if l.MaxRequestBody == 0 {
		l.MaxRequestBody = d.MaxRequestBody
	}
	if l.MaxInlineAttachment == 0 {
		l.MaxInlineAttachment = d.MaxInlineAttachment
	}
	if l.MaxUploadChunk == 0 {
		l.MaxUploadChunk = d.MaxUploadChunk
	}
	if l.MaxAttachmentSize == 0 {
		l.MaxAttachmentSize = d.MaxAttachmentSize
	}
	if l.MaxSendSize == 0 {
		l.MaxSendSize = d.MaxSendSize
	}
	return l
}

// retryAfter formats a duration as Graph's Retry-After: seconds, with
// milliseconds when not whole ("2.128").
func retryAfter(d time.Duration) string {
	if d < time.Millisecond {
		d = time.Millisecond
	}
	ms := d.Milliseconds()
	if d%time.Millisecond != 0 {
		ms++
	}
	if ms%1000 == 0 {
		return strconv.FormatInt(ms/1000, 10)
	}
	return strings.TrimRight(fmt.Sprintf("%d.%03d", ms/1000, ms%1000), "0")
}

type throttleKey struct{ app, mailbox string }

type event struct {
	t time.Time
	n int64
}

// window is a sliding window of events.
type window struct{ ev []event }

func (w *window) prune(now time.Time, d time.Duration) {
	cut := now.Add(-d)
	i := 0
	for i < len(w.ev) && !w.ev[i].t.After(cut) {
		i++
	}
	if i > 0 {
		w.ev = append(w.ev[:0], w.ev[i:]...)
	}
}

func (w *window) sum() int64 {
	var s int64
	for _, e := range w.ev {
		s += e.n
	}
	return s
}

// waitUntilBelow is how long until the sum drops to at most limit.
func (w *window) waitUntilBelow(now time.Time, d time.Duration, limit int64) time.Duration {
	s := w.sum()
	for _, e := range w.ev {
		if s <= limit {
			break
		}
		s -= e.n
		if s <= limit {
			return e.t.Add(d).Sub(now)
		}
	}
	return time.Millisecond
}

type limiter struct {
	mu          sync.Mutex
	lim         Limits
	reqs        map[throttleKey]*window
	bytes       map[throttleKey]*window
	inflight    map[throttleKey]int
	appInflight map[string]int
	maxInflight int
	stormUntil  time.Time
	stormRetry  time.Duration
	faults      []*faultRule
}

func newLimiter(l Limits) *limiter {
	return &limiter{
		lim:         l.withDefaults(),
		reqs:        map[throttleKey]*window{},
		bytes:       map[throttleKey]*window{},
		inflight:    map[throttleKey]int{},
		appInflight: map[string]int{},
	}
}

func (l *limiter) limits() Limits {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.lim
}

func errThrottled(ra string) *gErr {
	e := newErr(http.StatusTooManyRequests, "TooManyRequests", "Please retry again later.")
	e.retryAfter = ra
	return e
}

func errConcurrency(ra string) *gErr {
	e := newErr(http.StatusTooManyRequests, "ApplicationThrottled", msgConcurrency)
	e.retryAfter = ra
	return e
}

// admit counts a request of key and checks the limits. On success the
// caller must call release when the request is done.
func (l *limiter) admit(key throttleKey, method string, bodyBytes int64) (release func(), concurrency bool, e *gErr) {
	now := time.Now()
	l.mu.Lock()
	defer l.mu.Unlock()
	lim := l.lim
	w := l.reqs[key]
	if w == nil {
		w = &window{}
		l.reqs[key] = w
	}
	w.prune(now, lim.BudgetWindow)
	w.ev = append(w.ev, event{now, 1}) // requests made while throttled count too
	if now.Before(l.stormUntil) {
		return nil, false, errThrottled(retryAfter(l.stormRetry))
	}
	if lim.RequestBudget > 0 && w.sum() > int64(lim.RequestBudget) {
		return nil, false, errThrottled(retryAfter(w.waitUntilBelow(now, lim.BudgetWindow, int64(lim.RequestBudget)-1)))
	}
	if lim.UploadBytes > 0 && bodyBytes > 0 && (method == http.MethodPost || method == http.MethodPut || method == http.MethodPatch) {
		bw := l.bytes[key]
		if bw == nil {
			bw = &window{}
			l.bytes[key] = bw
		}
		bw.prune(now, lim.UploadWindow)
		if bw.sum()+bodyBytes > lim.UploadBytes {
			e := newErr(http.StatusTooManyRequests, "ApplicationThrottled", msgIncomingBytes)
			e.retryAfter = retryAfter(bw.waitUntilBelow(now, lim.UploadWindow, lim.UploadBytes-bodyBytes))
			return nil, false, e
		}
		bw.ev = append(bw.ev, event{now, bodyBytes})
	}
	if lim.MailboxConcurrency > 0 && l.inflight[key] >= lim.MailboxConcurrency {
		return nil, true, errConcurrency(retryAfter(lim.ConcurrencyRetryAfter))
	}
	if lim.AppConcurrency > 0 && l.appInflight[key.app] >= lim.AppConcurrency {
		return nil, true, errConcurrency(retryAfter(lim.ConcurrencyRetryAfter))
	}
	l.inflight[key]++
	l.appInflight[key.app]++
	if l.inflight[key] > l.maxInflight {
		l.maxInflight = l.inflight[key]
	}
	var once sync.Once
	return func() {
		once.Do(func() {
			l.mu.Lock()
			defer l.mu.Unlock()
			l.inflight[key]--
			l.appInflight[key.app]--
		})
	}, false, nil
}

// Fault makes matching requests fail, for retry tests.
type Fault struct {
	// Method matches the HTTP method ("" any).
	Method string
	// Path is a regular expression matched against the request path below
	// /v1.0, as in "/users/a@example.com/messages/AAMk.../$value"; "" any.
	// Batch items are matched with their own method and path.
	Path string
	// Status to answer: 503 (default), 504, 500, 429, ...
	Status int
	// Count of matching requests that fail (default 1; negative: until
	// ClearFaults).
	Count int
	// Delay before the answer (a 504 comes after the gateway waited).
	Delay time.Duration
	// RetryAfter header value, e.g. "2.128" (a 429 without one gets "1").
	RetryAfter string
	// CutAfter > 0: instead of an error status, serve the real answer but
	// drop the connection after CutAfter bytes of its body (a download
	// that breaks mid-way). Not applied to batch items.
	CutAfter int64
	// Applied: carry the request out first (its effects stay, as when a
	// gateway times out after the mailbox did the work), then answer
	// Status instead of the real answer, or drop the connection with
	// Drop. The client cannot tell whether the request took effect. Not
	// applied to batch items (they get Status without the effects).
	Applied bool
	// Drop: drop the connection instead of answering (with Applied: after
	// carrying the request out). Not applied to batch items.
	Drop bool
}

type faultRule struct {
	f    Fault
	re   *regexp.Regexp
	left int
}

// InjectFault adds a fault rule; rules are checked in the order added.
func (s *Server) InjectFault(f Fault) error {
	r := &faultRule{f: f, left: f.Count}
	if f.Path != "" {
		re, err := regexp.Compile(f.Path)
		if err != nil {
			return fmt.Errorf("graphfake: fault path: %w", err)
		}
		r.re = re
	}
	if r.f.Status == 0 {
		r.f.Status = http.StatusServiceUnavailable
	}
	if r.left == 0 {
		r.left = 1
	}
	s.lim.mu.Lock()
	defer s.lim.mu.Unlock()
	s.lim.faults = append(s.lim.faults, r)
	return nil
}

// FailNext makes the next n requests with method (or any, "") whose path
// matches pathPattern (or any, "") answer status.
func (s *Server) FailNext(n, status int, method, pathPattern string) error {
	return s.InjectFault(Fault{Method: method, Path: pathPattern, Status: status, Count: n})
}

// ClearFaults removes all fault rules and ends a throttling storm.
func (s *Server) ClearFaults() {
	s.lim.mu.Lock()
	defer s.lim.mu.Unlock()
	s.lim.faults = nil
	s.lim.stormUntil = time.Time{}
}

// ThrottleStorm answers every request 429 (with Retry-After retry) for d.
// The requests still count against the budget.
func (s *Server) ThrottleStorm(d, retry time.Duration) {
	s.lim.mu.Lock()
	defer s.lim.mu.Unlock()
	s.lim.stormUntil = time.Now().Add(d)
	s.lim.stormRetry = retry
}

// fault returns the fault for a request, if any.
func (l *limiter) fault(method, path string) *Fault {
	l.mu.Lock()
	defer l.mu.Unlock()
	for i, r := range l.faults {
		if r.f.Method != "" && !strings.EqualFold(r.f.Method, method) {
			continue
		}
		if r.re != nil && !r.re.MatchString(path) {
			continue
		}
		f := r.f
		if r.left > 0 {
			r.left--
			if r.left == 0 {
				l.faults = append(l.faults[:i:i], l.faults[i+1:]...)
			}
		}
		return &f
	}
	return nil
}

// answerFault answers a request with f: its error status, or a dropped
// connection.
func (s *Server) answerFault(w http.ResponseWriter, f *Fault) {
	if f.Drop {
		panic(http.ErrAbortHandler)
	}
	s.writeError(w, faultError(f))
}

// discardWriter swallows the real answer of a request under an Applied
// fault.
type discardWriter struct{ h http.Header }

func (d *discardWriter) Header() http.Header {
	if d.h == nil {
		d.h = http.Header{}
	}
	return d.h
}
func (*discardWriter) Write(b []byte) (int, error) { return len(b), nil }
func (*discardWriter) WriteHeader(int)             {}

func faultError(f *Fault) *gErr {
	var e *gErr
	switch f.Status {
	case http.StatusTooManyRequests:
		e = errThrottled("1")
	case http.StatusServiceUnavailable:
		e = newErr(f.Status, "serviceNotAvailable", "The service is temporarily unavailable for maintenance or is overloaded. You may repeat the request after a delay, which may be specified in a Retry-After header.")
	case http.StatusGatewayTimeout:
		e = newErr(f.Status, "UnknownError", "The gateway did not receive a timely response from the upstream server.")
	case http.StatusInternalServerError:
		e = newErr(f.Status, "ErrorInternalServerError", "An internal server error occurred. The operation failed.")
	default:
		e = newErr(f.Status, "UnknownError", http.StatusText(f.Status))
	}
	if f.RetryAfter != "" {
		e.retryAfter = f.RetryAfter
	}
	return e
}

// SetLimits replaces the limits (zero fields: defaults). Counters kept so
// far stay.
func (s *Server) SetLimits(l Limits) {
	s.lim.mu.Lock()
	defer s.lim.mu.Unlock()
	s.lim.lim = l.withDefaults()
}

// Limits gives the limits in force.
func (s *Server) Limits() Limits { return s.lim.limits() }

// ResetThrottling forgets the request and upload windows (not requests in
// flight).
func (s *Server) ResetThrottling() {
	s.lim.mu.Lock()
	defer s.lim.mu.Unlock()
	s.lim.reqs = map[throttleKey]*window{}
	s.lim.bytes = map[throttleKey]*window{}
}

// SetLatency sets a delay added to every request and every batch item.
func (s *Server) SetLatency(d time.Duration) { s.latency.Store(int64(d)) }

// Stats count what the fake served.
type Stats struct {
	// HTTPRequests are round trips (a $batch is one).
	HTTPRequests int64
	// Requests as Graph's limits count them: every request outside a batch
	// and every batch item (a $batch itself not).
	Requests   int64
	BatchItems int64
	ByMethod   map[string]int64 // of Requests
	// ByKind groups Requests by operation: "messages.list", "messages.get",
	// "messages.value", "messages.move", "messages.delete", "messages.delta",
	// "messages.create", "messages.update", "messages.send",
	// "folders.get", "folders.list", "folders.create", "attachments.create",
	// "attachments.list", "attachments.get", "attachments.uploadSession",
	// "upload.put", "sendMail", "user.get", "batch", "unknown".
	ByKind   map[string]int64
	ByStatus map[int]int64 // of Requests and round trips that were answered outside a batch
	// Throttled counts 429 answers (batch items included).
	Throttled            int64
	ConcurrencyThrottled int64
	// Faults counts injected faults served.
	Faults int64
	// MaxInFlight is the highest number of requests seen in flight for one
	// (app, mailbox).
	MaxInFlight int
	// ValueBytes counts raw MIME bytes served by $value.
	ValueBytes int64
}

type statsCounter struct {
	mu sync.Mutex
	st Stats
}

func newStats() Stats {
	return Stats{ByMethod: map[string]int64{}, ByKind: map[string]int64{}, ByStatus: map[int]int64{}}
}

func (c *statsCounter) do(f func(*Stats)) {
	c.mu.Lock()
	defer c.mu.Unlock()
	f(&c.st)
}

// Stats returns a copy of the counters.
func (s *Server) Stats() Stats {
	var out Stats
	s.stats.do(func(st *Stats) {
		out = *st
		out.ByMethod = map[string]int64{}
		out.ByKind = map[string]int64{}
		out.ByStatus = map[int]int64{}
		for k, v := range st.ByMethod {
			out.ByMethod[k] = v
		}
		for k, v := range st.ByKind {
			out.ByKind[k] = v
		}
		for k, v := range st.ByStatus {
			out.ByStatus[k] = v
		}
	})
	s.lim.mu.Lock()
	out.MaxInFlight = s.lim.maxInflight
	s.lim.mu.Unlock()
	return out
}

// ResetStats zeroes the counters.
func (s *Server) ResetStats() {
	s.stats.do(func(st *Stats) { *st = newStats() })
	s.lim.mu.Lock()
	s.lim.maxInflight = 0
	s.lim.mu.Unlock()
}
