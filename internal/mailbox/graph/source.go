// Package graph is mailpipe's Microsoft Graph client, for importing and for
// sending.
//
// Importing: Source is the mailbox source: folders resolved from a
// well-known root by display name, discovery by per-folder delta query (or
// full listings), raw MIME streamed from messages/{id}/$value, and moves by
// immutable id, batched with $batch.
//
// Sending: Transport is the sender's outbound.Transport: each job becomes a
// draft (with its own Internet Message-ID and a marker property holding the
// job id) that is then sent, so that a retry finds what an earlier attempt
// did (in Sent Items, or by the marker) and does not send twice;
// attachments over 2.9 MB go through upload sessions, streamed a chunk at
// a time.
//
// It is the only package that imports the Microsoft Graph SDK: its core
// (msgraph-sdk-go-core's request adapter, kiota's HTTP pipeline and the
// Azure credential authentication provider). The generated request
// builders and models of msgraph-sdk-go are not used: compiling them takes
// minutes and gigabytes of memory, and every request this source makes is
// a plain URL with a small JSON answer.
//
// The source owns retries and throttling (the Transport makes one attempt
// and leaves retries to the sender): the SDK's retry handler is left
// out of the pipeline (it retries POSTs and truncates fractional
// Retry-After); every request goes through a throttle.Limiter shared by all
// Sources of the mailbox, and a throttle.App shared by all mailboxes of the
// app registration. Every request asks for immutable ids, so a message's
// identity (mailbox, immutable id) survives moves.
package graph

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/mailpipe/mailpipe/internal/auth"
	"github.com/mailpipe/mailpipe/internal/config"
	"github.com/mailpipe/mailpipe/internal/mailbox"
	"github.com/mailpipe/mailpipe/internal/throttle"
)

// Defaults for unset configuration.
const (
	DefaultBaseURL  = "https://graph.microsoft.com/v1.0"
	defaultPageSize = 200
	maxPageSize     = 1000
	defaultTimeout  = 60 * time.Second
	// maxFetchWindow: bodies downloaded ahead of the callback (each one
	// holds a request slot while it downloads and a spool until used).
	maxFetchWindow = 4
	// batchLimit is Graph's maximum of requests in one $batch.
	batchLimit = 20
)

// StateStore keeps small strings across restarts (the delta link of each
// import folder); the caller backs it with the NATS KV state bucket. Keys
// consist of [a-z0-9._-] only. Get reports ok=false for a missing key.
type StateStore interface {
	Get(ctx context.Context, key string) (value string, ok bool, err error)
	Put(ctx context.Context, key, value string) error
	Delete(ctx context.Context, key string) error
}

// Metrics receives counts; any nil func is skipped. Funcs are called from
// several goroutines and must not block.
type Metrics struct {
	// Request is called for each answer (or failure) of a request: op is
	// "folder", "list", "delta", "fetch", "move", "lookup" or "create";
	// units is how many requests Exchange counts (the items of a $batch);
	// status is the HTTP status, 0 when no answer arrived.
	Request func(mailbox, op string, units, status int)
	// Fetched is called for each message body delivered to Fetch's callback.
	Fetched func(mailbox string, bytes int64)
	// Moved is called with the number of messages a Move moved.
	Moved func(mailbox string, dest mailbox.Dest, n int)
}

// Options configure a Source.
type Options struct {
	Mailbox config.Mailbox
	// Tokens yields access tokens for Graph: app-only with scope
	// https://<graph host>/.default (application permission
	// Mail.ReadWrite), or delegated (Mail.ReadWrite.Shared, the account
	// having Full Access to the mailbox). When it also implements
	// TokenWithClaims(ctx, claims) (auth.Token, error), claims challenges
	// (continuous access evaluation) are passed to it.
	Tokens auth.TokenSource
	// Delegated says Tokens are delegated (used for the hint of a 403).
	Delegated bool
	// App is the throttle shared by every mailbox of the identity; nil
	// gives this Source a throttle of its own.
	App *throttle.App
	// HTTPClient, when set, provides the transport (its Timeout is not
	// used; graph.ca_file is then the caller's business). Otherwise a
	// transport trusting the system roots plus graph.ca_file is built.
	HTTPClient *http.Client
	// State keeps delta links; nil keeps them in memory only (a restart
	// then does a full resync of each folder).
	State   StateStore
	Logger  *zap.Logger
	Metrics Metrics
}

// Source is a Graph mailbox source. Its methods may be called from one
// goroutine at a time (as mailbox.Source requires).
type Source struct {
	cfg       config.Mailbox
	user      string // the mailbox address, as in /users/{user}
	base      *url.URL
	pageSize  int
	window    int
	delta     bool
	delegated bool
	state     StateStore
	log       *zap.Logger
	metrics   Metrics

	c *client

	folders   *folderCache
	deltas    map[string]*folderState // by folder id
	deltaWarn sync.Once

	stats counters
}

var _ mailbox.Source = (*Source)(nil)

// counters are the Source's statistics (atomics: requests are counted
// from the transport's goroutines).
type counters struct {
	requests, units, throttled    atomic.Int64
	fetched, fetchedBytes, moved  atomic.Int64
	listed, skipped, fetchFailure atomic.Int64
}

// Stats are a Source's counters since it was created.
type Stats struct {
	// Requests are HTTP requests sent (a $batch is one).
	Requests int64
	// Units are requests as Exchange counts them against the mailbox's
	// budget (each $batch item is one).
	Units int64
	// Throttled answers (429), batch items included.
	Throttled int64
	// Fetched messages delivered to Fetch callbacks, and their bytes.
	Fetched, FetchedBytes int64
	// Moved messages.
	Moved int64
	// Listed refs returned by List.
	Listed int64
	// Skipped refs of Fetch and Move that were no longer in their folder.
	Skipped int64
}

// Stats returns the Source's counters.
func (s *Source) Stats() Stats {
	return Stats{
		Requests: s.stats.requests.Load(), Units: s.stats.units.Load(), Throttled: s.stats.throttled.Load(),
		Fetched: s.stats.fetched.Load(), FetchedBytes: s.stats.fetchedBytes.Load(), Moved: s.stats.moved.Load(),
		Listed: s.stats.listed.Load(), Skipped: s.stats.skipped.Load(),
	}
}

// Limiter returns the throttle of the Source's mailbox (shared with every
// Source of the same mailbox and App).
func (s *Source) Limiter() *throttle.Limiter { return s.c.lim }

// New validates the options and returns a Source. It sends nothing: the
// first operation does.
func New(opts Options) (*Source, error) {
	m := opts.Mailbox
	if opts.Tokens == nil {
		return nil, fmt.Errorf("mailbox %q: the graph source needs a token source", m.Name)
	}
	user := strings.TrimSpace(m.Address)
	if user == "" {
		return nil, fmt.Errorf("mailbox %q: address is required for the graph source", m.Name)
	}
	g := m.Graph
	raw := strings.TrimRight(strings.TrimSpace(g.BaseURL), "/")
	if raw == "" {
		raw = DefaultBaseURL
	}
	base, err := url.Parse(raw)
	if err != nil || base.Host == "" || (base.Scheme != "https" && !isLoopback(base.Hostname())) {
		return nil, fmt.Errorf("mailbox %q: graph.base_url %q: want an https URL such as %s", m.Name, g.BaseURL, DefaultBaseURL)
	}
	log := opts.Logger
	if log == nil {
		log = zap.NewNop()
	}
	log = log.With(zap.String("mailbox", m.Name))
	app := opts.App
	if app == nil {
		app = throttle.NewApp(throttle.AppOptions{Name: m.Name})
	}
	conc := g.MaxConcurrency
	if conc <= 0 || conc > throttle.DefaultMailboxConcurrency {
		conc = throttle.DefaultMailboxConcurrency
	}
	// Exchange counts a request when it admits it (a $batch item up to
	// items/4 times an item's latency after the batch arrived); the
	// limiter counts it when it is sent, the items of a batch all at once.
	// Budget it gives back at the very end of the window may still be
	// counted by the server, whose answer then is a 429 (which counts
	// too): the limiter's window is 2% longer than the server's.
	window := g.BudgetWindow
	if window <= 0 {
		window = throttle.DefaultWindow
	}
	window += window / 50
	lim := app.Mailbox(user, throttle.MailboxOptions{MaxConcurrency: conc, Budget: g.RequestBudget, Window: window})
	pageSize := g.PageSize
	if pageSize <= 0 {
		pageSize = defaultPageSize
	}
	pageSize = min(pageSize, maxPageSize)
	s := &Source{
		cfg: m, user: user, base: base, pageSize: pageSize, window: min(conc, maxFetchWindow),
		delta: g.Discovery != "list", delegated: opts.Delegated, state: opts.State, log: log, metrics: opts.Metrics,
		folders: newFolderCache(), deltas: map[string]*folderState{},
	}
	if s.delta && strings.HasSuffix(strings.ToLower(base.Hostname()), "chinacloudapi.cn") {
		// Message delta is not offered by the cloud operated by 21Vianet.
		log.Warn("graph.discovery delta is not available in this national cloud; listing folders instead", zap.String("host", base.Host))
		s.delta = false
	}
	hc := opts.HTTPClient
	if hc == nil {
		hc, err = newHTTPClient(g.CAFile)
		if err != nil {
			return nil, fmt.Errorf("mailbox %q: %w", m.Name, err)
		}
	}
	timeout := g.Timeout
	if timeout <= 0 {
		timeout = defaultTimeout
	}
	s.c, err = newClient(clientOptions{
		base: base, tokens: opts.Tokens, lim: lim, transport: hc.Transport, timeout: timeout,
		log: log, onResponse: s.countRequest,
	})
	if err != nil {
		return nil, fmt.Errorf("mailbox %q: %w", m.Name, err)
	}
	return s, nil
}

// countRequest is called by the transport for every answer.
func (s *Source) countRequest(op string, units, status int) {
	s.stats.requests.Add(1)
	s.stats.units.Add(int64(units))
	if status == http.StatusTooManyRequests {
		s.stats.throttled.Add(1)
	}
	if f := s.metrics.Request; f != nil {
		f(s.cfg.Name, op, units, status)
	}
}

// Close releases idle connections. The Source may be used again
// afterwards.
func (s *Source) Close() error {
	s.c.closeIdle()
	return nil
}

func newHTTPClient(caFile string) (*http.Client, error) {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.ForceAttemptHTTP2 = true
	tr.MaxIdleConnsPerHost = 2 * maxFetchWindow
	tr.ResponseHeaderTimeout = 0
	tr.TLSClientConfig = &tls.Config{MinVersion: tls.VersionTLS12}
	if caFile != "" {
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return nil, fmt.Errorf("graph.ca_file: %w", err)
		}
		pool, err := x509.SystemCertPool()
		if err != nil || pool == nil {
			pool = x509.NewCertPool()
		}
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("graph.ca_file %s: no PEM certificates", caFile)
		}
		tr.TLSClientConfig.RootCAs = pool
	}
	return &http.Client{Transport: tr}, nil
}

func isLoopback(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// errorf builds a classified error of kind k.
func (s *Source) errorf(k mailbox.Kind, op, folder, format string, args ...any) error {
	return &mailbox.Error{Kind: k, Op: op, Mailbox: s.cfg.Name, Folder: folder, Err: fmt.Errorf(format, args...)}
}

// ctxErr classifies a context error (a canceled or expired caller).
func (s *Source) ctxErr(op, folder string, err error) error {
	var me *mailbox.Error
	if errors.As(err, &me) {
		return err
	}
	return &mailbox.Error{Kind: mailbox.Transient, Op: op, Mailbox: s.cfg.Name, Folder: folder, Err: err}
}
