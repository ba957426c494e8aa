package graph

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	abs "github.com/microsoft/kiota-abstractions-go"
	kauth "github.com/microsoft/kiota-authentication-azure-go"
	khttp "github.com/microsoft/kiota-http-go"
	msgraphcore "github.com/microsoftgraph/msgraph-sdk-go-core"
	"go.uber.org/zap"

	"github.com/mailpipe/mailpipe/internal/auth"
	"github.com/mailpipe/mailpipe/internal/throttle"
)

// preferImmutable is sent on every request (and every $batch item): ids
// then survive moves within the mailbox.
const preferImmutable = `IdType="ImmutableId"`

// Retry bounds of one request. 429 means the request was not executed, so
// any request is sent again, after the Retry-After pause the transport
// applied; 5xx only for requests that may run twice.
const (
	maxThrottledTries = 6
	maxServerTries    = 3
	// maxInlineWait: a 429 asking for a longer pause is returned to the
	// caller (a Throttled error) instead of waited for inside a request.
	maxInlineWait = 2 * time.Minute
	maxErrorBody  = 64 << 10
)

// credential adapts an auth.TokenSource to azcore.TokenCredential for the
// SDK's authentication provider. The TokenSource is bound to one resource,
// so the requested scopes are not used.
type credential struct{ ts auth.TokenSource }

func (c credential) GetToken(ctx context.Context, opts policy.TokenRequestOptions) (azcore.AccessToken, error) {
	var tok auth.Token
	var err error
	switch cs, ok := c.ts.(auth.ClaimsTokenSource); {
	case opts.Claims != "" && ok:
		tok, err = cs.TokenWithClaims(ctx, opts.Claims)
	case opts.Claims != "":
		// The token was revoked or no longer satisfies a policy: at
		// least do not hand out the cached one again.
		c.ts.Invalidate()
		tok, err = c.ts.Token(ctx)
	default:
		tok, err = c.ts.Token(ctx)
	}
	if err != nil {
		return azcore.AccessToken{}, err
	}
	return azcore.AccessToken{Token: tok.Value, ExpiresOn: tok.ExpiresOn}, nil
}

type clientOptions struct {
	base       *url.URL
	tokens     auth.TokenSource
	lim        *throttle.Limiter
	transport  http.RoundTripper
	timeout    time.Duration
	log        *zap.Logger
	onResponse func(op string, units, status int)
}

// client sends requests through the SDK's request adapter, whose HTTP
// pipeline ends in the throttling transport.
type client struct {
	adapter    *msgraphcore.GraphRequestAdapterBase
	http       *http.Client
	base       http.RoundTripper // the transport under the pipeline
	tokens     auth.TokenSource
	lim        *throttle.Limiter
	timeout    time.Duration
	log        *zap.Logger
	onResponse func(op string, units, status int)
}

func newClient(o clientOptions) (*client, error) {
	host := o.base.Hostname()
	// The provider attaches tokens only to requests for these hosts: the
	// configured base URL's (a national cloud, a test server). Any other
	// host would silently get no token.
	prov, err := kauth.NewAzureIdentityAuthenticationProviderWithScopesAndValidHosts(
		credential{o.tokens}, []string{"https://" + host + "/.default"}, []string{host})
	if err != nil {
		return nil, fmt.Errorf("graph authentication provider: %w", err)
	}
	base := o.transport
	if base == nil {
		base = http.DefaultTransport
	}
	lt := &limitTransport{base: base, lim: o.lim, timeout: o.timeout, onResponse: o.onResponse}
	opts := &msgraphcore.GraphClientOptions{GraphServiceVersion: "v1.0"}
	// Not kiota's default middleware: no retry handler (it retries POSTs
	// and truncates fractional Retry-After), no redirect or compression
	// handlers, no parameter-name decoding (nextLinks are used verbatim).
	pipeline := khttp.NewCustomTransportWithParentTransport(lt,
		msgraphcore.NewGraphTelemetryHandler(opts),
		khttp.NewUserAgentHandler(),
	)
	hc := &http.Client{
		Transport: pipeline,
		CheckRedirect: func(*http.Request, []*http.Request) error {
			return http.ErrUseLastResponse
		},
		// No client timeout: it would also bound reading a large body.
		// Requests are bounded by contexts (see do).
	}
	adapter, err := msgraphcore.NewGraphRequestAdapterBaseWithParseNodeFactoryAndSerializationWriterFactoryAndHttpClient(prov, *opts, nil, nil, hc)
	if err != nil {
		return nil, fmt.Errorf("graph request adapter: %w", err)
	}
	adapter.SetBaseUrl(o.base.String())
	return &client{adapter: adapter, http: hc, base: base, tokens: o.tokens, lim: o.lim, timeout: o.timeout, log: o.log, onResponse: o.onResponse}, nil
}

func (c *client) closeIdle() {
	if tr, ok := c.base.(interface{ CloseIdleConnections() }); ok {
		tr.CloseIdleConnections()
	}
}

// reqInfo travels with a request's context to the transport.
type reqInfo struct {
	op     string
	units  int
	stream bool
}

type reqInfoKey struct{}

// limitTransport takes a slot of the mailbox's throttle before each request
// and gives it back when the response body is closed (a download holds its
// slot while it streams), and lets the throttle see every answer, so a 429
// or 503 pauses all requests to the mailbox for Retry-After.
//
// It also bounds each request from the moment it holds its slot (time spent
// waiting for the throttle does not count): the whole of a small answer by
// the timeout, a streamed one by lack of progress for that long.
type limitTransport struct {
	base       http.RoundTripper
	lim        *throttle.Limiter
	timeout    time.Duration
	onResponse func(op string, units, status int)
}

func (t *limitTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	info, _ := req.Context().Value(reqInfoKey{}).(reqInfo)
	if info.units < 1 {
		info.units = 1
	}
	release, err := t.lim.AcquireN(req.Context(), info.units)
	if err != nil {
		if req.Body != nil {
			req.Body.Close()
		}
		return nil, err
	}
	ctx, cancel := context.WithCancel(req.Context())
	w := &watchdog{d: t.timeout, cancel: cancel}
	w.t = time.AfterFunc(t.timeout, w.fire)
	resp, err := t.base.RoundTrip(req.WithContext(ctx))
	if err != nil {
		w.stop()
		cancel()
		release()
		if t.onResponse != nil {
			t.onResponse(info.op, info.units, 0)
		}
		if w.fired() && req.Context().Err() == nil {
			return nil, fmt.Errorf("no answer within %s: %w", t.timeout, errTimeout)
		}
		return nil, err
	}
	t.lim.Observe(resp.StatusCode, resp.Header.Get("Retry-After"))
	if t.onResponse != nil {
		t.onResponse(info.op, info.units, resp.StatusCode)
	}
	resp.Body = &watchedBody{r: resp.Body, w: w, progress: info.stream, parent: req.Context(), release: release}
	return resp, nil
}

// watchdog cancels a request when its timer fires.
type watchdog struct {
	d      time.Duration
	t      *time.Timer
	cancel context.CancelFunc
	mu     sync.Mutex
	done   bool
}

func (w *watchdog) fire() {
	w.mu.Lock()
	w.done = true
	w.mu.Unlock()
	w.cancel()
}

func (w *watchdog) fired() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.done
}

func (w *watchdog) stop() { w.t.Stop() }

// watchedBody is a response body under a watchdog: progress bodies push the
// deadline back with every read; Close ends the request (timer, context,
// throttle slot).
type watchedBody struct {
	r        io.ReadCloser
	w        *watchdog
	progress bool
	parent   context.Context
	release  func()
	once     sync.Once
}

func (b *watchedBody) Read(p []byte) (int, error) {
	n, err := b.r.Read(p)
	if n > 0 && b.progress {
		b.w.t.Reset(b.w.d)
	}
	if err != nil && err != io.EOF && b.w.fired() && b.parent.Err() == nil {
		if b.progress {
			err = fmt.Errorf("no data for %s: %w", b.w.d, errTimeout)
		} else {
			err = fmt.Errorf("answer not complete within %s: %w", b.w.d, errTimeout)
		}
	}
	return n, err
}

func (b *watchedBody) Close() error {
	err := b.r.Close()
	b.once.Do(func() {
		b.w.stop()
		b.w.cancel()
		b.release()
	})
	return err
}

// call is one Graph request.
type call struct {
	op     string
	method string
	// url is an absolute URL used verbatim (an @odata.nextLink or
	// deltaLink); otherwise tmpl (a URL template after the base URL) and
	// params build it.
	url    string
	tmpl   string
	params map[string]string
	query  map[string]string
	body   any
	prefer []string // Prefer values besides IdType
	units  int      // requests Exchange counts ($batch items)
	// stream leaves the body open for the caller, bounded by lack of
	// progress instead of a total timeout.
	stream bool
	// retry5xx: the request may be sent again after a 5xx or a network
	// error (it is a read, or idempotent by construction).
	retry5xx bool
	// no504Retry leaves 504 out of retry5xx.
	no504Retry bool
	accept     string
}

// response is a successful (2xx) answer.
type response struct {
	status int
	header http.Header
	body   []byte        // !stream
	stream io.ReadCloser // stream: the caller closes it
	size   int64         // Content-Length, -1 if unknown
}

// do sends c, retrying throttled requests (after the pause the transport
// applied) and, when c allows it, server errors; a 401 is retried once
// with a fresh token. Non-2xx answers are returned as *apiError, other
// failures as they are.
func (cl *client) do(ctx context.Context, c call) (*response, error) {
	throttled, server := 0, 0
	refreshed := false
	for {
		res, err := cl.send(ctx, c)
		if err != nil {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			var ae *apiError
			if !errors.As(err, &ae) && c.retry5xx && !isTokenError(err) && !isTLSError(err) && server+1 < maxServerTries {
				server++
				cl.log.Debug("graph request failed, retrying", zap.String("op", c.op), zap.Error(err))
				cl.lim.Pause(throttle.Backoff(server, jitter()))
				continue
			}
			return nil, err
		}
		if res.apiErr == nil {
			return res.response, nil
		}
		ae := res.apiErr
		switch {
		case ae.Status == http.StatusUnauthorized && !refreshed:
			refreshed = true
			cl.log.Debug("graph answered 401, retrying with a new token", zap.String("op", c.op), zap.String("code", ae.Code))
			cl.tokens.Invalidate()
			continue
		case ae.Status == http.StatusTooManyRequests && throttled+1 < maxThrottledTries && ae.RetryAfter <= maxInlineWait:
			throttled++
			cl.log.Debug("graph throttled the request, retrying after the pause", zap.String("op", c.op),
				zap.Duration("retry_after", ae.RetryAfter), zap.String("code", ae.Code))
			continue
		case isServerBusy(ae.Status) && c.retry5xx && server+1 < maxServerTries &&
			!(c.no504Retry && ae.Status == http.StatusGatewayTimeout):
			server++
			cl.log.Debug("graph server error, retrying", zap.String("op", c.op), zap.Int("status", ae.Status))
			continue
		}
		return nil, ae
	}
}

func isServerBusy(status int) bool {
	return status == http.StatusServiceUnavailable || status == http.StatusGatewayTimeout ||
		status == http.StatusBadGateway || status == http.StatusInternalServerError
}

// isTLSError reports a certificate the client does not trust: retrying
// cannot help (graph.ca_file, or a TLS-inspecting proxy).
func isTLSError(err error) bool {
	var cv *tls.CertificateVerificationError
	var ua x509.UnknownAuthorityError
	var hn x509.HostnameError
	var ci x509.CertificateInvalidError
	return errors.As(err, &cv) || errors.As(err, &ua) || errors.As(err, &hn) || errors.As(err, &ci)
}

func isTokenError(err error) bool {
	var ae *auth.Error
	return errors.As(err, &ae)
}

// sendResult is send's outcome: a 2xx response, or a non-2xx as apiErr.
type sendResult struct {
	*response
	apiErr *apiError
}

// send sends c once.
func (cl *client) send(ctx context.Context, c call) (sendResult, error) {
	ri := abs.NewRequestInformation()
	ri.Method = methodOf(c.method)
	if c.url != "" {
		u, err := url.Parse(c.url)
		if err != nil {
			return sendResult{}, fmt.Errorf("bad link %q from the server: %w", c.url, err)
		}
		ri.SetUri(*u)
	} else {
		ri.UrlTemplate = "{+baseurl}" + c.tmpl
		for k, v := range c.params {
			ri.PathParameters[k] = v
		}
		for k, v := range c.query {
			ri.QueryParameters[k] = v
		}
	}
	ri.Headers.Add("Prefer", strings.Join(append([]string{preferImmutable}, c.prefer...), ", "))
	accept := c.accept
	if accept == "" {
		accept = "application/json"
	}
	ri.Headers.Add("Accept", accept)
	if c.body != nil {
		b, err := json.Marshal(c.body)
		if err != nil {
			return sendResult{}, err
		}
		ri.SetStreamContentAndContentType(b, "application/json")
		// Sets the request's ContentLength (the body is not sent chunked).
		ri.Headers.Add("Content-Length", strconv.Itoa(len(b)))
	}
	var native *http.Response
	h := abs.NewRequestHandlerOption()
	h.SetResponseHandler(func(r any, _ abs.ErrorMappings) (any, error) {
		native, _ = r.(*http.Response)
		return nil, nil
	})
	ri.AddRequestOptions([]abs.RequestOption{h})

	rctx := context.WithValue(ctx, reqInfoKey{}, reqInfo{op: c.op, units: max(c.units, 1), stream: c.stream})
	err := cl.adapter.SendNoContent(rctx, ri, nil)
	if err == nil && native == nil {
		err = errors.New("no response")
	}
	if err != nil {
		return sendResult{}, err
	}
	resp := &response{status: native.StatusCode, header: native.Header, size: native.ContentLength}
	if native.StatusCode >= 300 {
		body, _ := io.ReadAll(io.LimitReader(native.Body, maxErrorBody))
		native.Body.Close()
		return sendResult{response: resp, apiErr: parseAPIError(c.method, native.StatusCode, native.Header, body)}, nil
	}
	if c.stream {
		resp.stream = native.Body
		return sendResult{response: resp}, nil
	}
	body, err := io.ReadAll(native.Body)
	native.Body.Close()
	if err != nil {
		return sendResult{}, err
	}
	resp.body = body
	return sendResult{response: resp}, nil
}

var errTimeout = errors.New("timeout")

func methodOf(m string) abs.HttpMethod {
	switch m {
	case http.MethodPost:
		return abs.POST
	case http.MethodPatch:
		return abs.PATCH
	case http.MethodDelete:
		return abs.DELETE
	case http.MethodPut:
		return abs.PUT
	default:
		return abs.GET
	}
}

// decode parses a JSON answer.
func decode(r *response, v any) error {
	if err := json.NewDecoder(bytes.NewReader(r.body)).Decode(v); err != nil {
		return fmt.Errorf("unreadable answer (HTTP %d, %d bytes): %w", r.status, len(r.body), err)
	}
	return nil
}

// retryAfterOf reads a Retry-After header (seconds with fractions, or a
// date).
func retryAfterOf(h http.Header) time.Duration {
	d, _ := throttle.ParseRetryAfter(h.Get("Retry-After"), time.Now())
	return d
}

func itoa(n int) string { return strconv.Itoa(n) }

func jitter() float64 { return rand.Float64() }
