// Package graphfake is a loopback fake of the Microsoft Graph v1.0 mail API
// (Exchange Online behind graph.microsoft.com) for tests and benchmarks. It
// reproduces Microsoft's documented behaviour, including the parts that
// bite: REST ids change when a message moves (immutable ids with
// Prefer: IdType="ImmutableId" do not), opaque nextLinks with $skip
// semantics, per-folder delta with @removed entries and 410 for expired
// state, $batch limits and per-item 429s, Exchange's throttling per (app,
// mailbox) with fractional Retry-After, delegated access to shared
// mailboxes, and the send paths (sendMail, drafts, upload sessions).
//
// It serves HTTPS with a CA made at start; trust it with CertPool,
// HTTPClient or WriteCAFile. Point a client at BaseURL. Tokens are checked by
// Options.ValidateToken, which maps onto devidp.Server.Validate:
//
//	ValidateToken: func(tok string) (graphfake.Claims, error) {
//		c, err := idp.Validate(tok, "")
//		if errors.Is(err, devidp.ErrTokenExpired) {
//			return graphfake.Claims{}, fmt.Errorf("%w: %v", graphfake.ErrTokenExpired, err)
//		}
//		if err != nil {
//			return graphfake.Claims{}, err
//		}
//		return graphfake.Claims{Audience: c.Audience, AppID: c.AppID, TenantID: c.TenantID,
//			UPN: c.UPN, Roles: c.Roles, ExpiresAt: c.ExpiresAt}, nil // Scopes: the scp claim
//	}
//
// Paging: list nextLinks carry an opaque $skiptoken that, like Graph's
// $skip, is an offset: moving messages out of a folder while paging through
// it makes later pages skip messages. Delta does not have that problem.
//
// It is not a security component: never expose it beyond loopback.
package graphfake

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mailpipe/mailpipe/internal/devcert"
)

// Options configure Start.
type Options struct {
	// ValidateToken checks a bearer token (signature, expiry, issuer) and
	// returns its claims. Required. The fake itself checks the audience
	// and the permissions.
	ValidateToken func(token string) (Claims, error)
	// Addr is the listen address (default 127.0.0.1 on a random port). Only
	// loopback addresses are accepted.
	Addr string
	// Limits (zero fields: DefaultLimits).
	Limits Limits
	// Latency added to every request and every batch item.
	Latency time.Duration
}

// Server is a running fake.
type Server struct {
	opts      Options
	ln        net.Listener
	srv       *http.Server
	host      string
	caPEM     []byte
	caPool    *x509.CertPool
	closeOnce sync.Once
	latency   atomic.Int64
	lim       *limiter
	stats     statsCounter

	mu         sync.Mutex // the store below
	mailboxes  map[string]*mailbox
	byObjectID map[string]*mailbox
	appPolicy  map[string]map[string]bool
	nextKey    uint64
	syncStates map[string]*syncState
	rounds     map[string]*deltaRound
	deltaGen   int
	deltaMin   int
	uploads    map[string]*uploadSession
	submitted  []SentMessage
}

// Start starts a fake. Close it when done.
func Start(opts Options) (*Server, error) {
	if opts.ValidateToken == nil {
		return nil, errors.New("graphfake: Options.ValidateToken is required")
	}
	addr := opts.Addr
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("graphfake: listen address %q: %w", addr, err)
	}
	if ip := net.ParseIP(host); host != "localhost" && (ip == nil || !ip.IsLoopback()) {
		return nil, fmt.Errorf("graphfake: listen address %q is not loopback", addr)
	}
	ca, err := devcert.New("graphfake", "")
	if err != nil {
		return nil, err
	}
	s := &Server{
		opts:       opts,
		caPEM:      ca.PEM,
		caPool:     x509.NewCertPool(),
		lim:        newLimiter(opts.Limits),
		mailboxes:  map[string]*mailbox{},
		byObjectID: map[string]*mailbox{},
		appPolicy:  map[string]map[string]bool{},
		syncStates: map[string]*syncState{},
		rounds:     map[string]*deltaRound{},
		uploads:    map[string]*uploadSession{},
	}
	s.stats.st = newStats()
	s.caPool.AddCert(ca.Cert)
	s.latency.Store(int64(opts.Latency))
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("graphfake: %w", err)
	}
	s.ln = ln
	s.host = ln.Addr().String()
	s.srv = &http.Server{
		Handler:           s,
		ReadHeaderTimeout: 10 * time.Second,
		TLSConfig: &tls.Config{
			MinVersion:   tls.VersionTLS12,
			Certificates: []tls.Certificate{ca.Server},
		},
		ErrorLog: log.New(io.Discard, "", 0),
	}
	go func() { _ = s.srv.ServeTLS(ln, "", "") }()
	return s, nil
}

// Close stops the server.
func (s *Server) Close() {
	s.closeOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		if err := s.srv.Shutdown(ctx); err != nil {
			_ = s.srv.Close()
		}
	})
}

// Host is host:port of the server.
func (s *Server) Host() string { return s.host }

// BaseURL is the Graph v1.0 root: https://<host>/v1.0 (a Graph base_url).
func (s *Server) BaseURL() string { return "https://" + s.host + "/v1.0" }

// CACertPEM is the PEM of the CA that signed the server certificate.
func (s *Server) CACertPEM() []byte { return append([]byte(nil), s.caPEM...) }

// CertPool is a pool holding only the fake's CA.
func (s *Server) CertPool() *x509.CertPool { return s.caPool.Clone() }

// WriteCAFile writes the CA certificate to dir/graphfake-ca.pem and returns
// the path (for a ca_file setting).
func (s *Server) WriteCAFile(dir string) (string, error) {
	p := filepath.Join(dir, "graphfake-ca.pem")
	if err := os.WriteFile(p, s.caPEM, 0o644); err != nil {
		return "", fmt.Errorf("graphfake: %w", err)
	}
	return p, nil
}

// HTTPClient returns a client that trusts the fake's CA (and nothing else).
func (s *Server) HTTPClient() *http.Client {
	return &http.Client{
		Timeout: 2 * time.Minute,
		Transport: &http.Transport{
			Proxy:               nil,
			TLSClientConfig:     &tls.Config{RootCAs: s.caPool.Clone(), MinVersion: tls.VersionTLS12},
			TLSHandshakeTimeout: 10 * time.Second,
			MaxIdleConnsPerHost: 64,
			IdleConnTimeout:     30 * time.Second,
		},
	}
}

func (s *Server) sleep(ctx context.Context) {
	d := time.Duration(s.latency.Load())
	if d <= 0 {
		return
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	}
}

// statusWriter records the status of an answer.
type statusWriter struct {
	http.ResponseWriter
	status  int
	written int64
	cut     int64 // >0: drop the connection after that many body bytes
}

func (w *statusWriter) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	if w.cut > 0 && w.written+int64(len(b)) > w.cut {
		n, _ := w.ResponseWriter.Write(b[:w.cut-w.written])
		w.written += int64(n)
		if f, ok := w.ResponseWriter.(http.Flusher); ok {
			f.Flush()
		}
		panic(http.ErrAbortHandler)
	}
	n, err := w.ResponseWriter.Write(b)
	w.written += int64(n)
	return n, err
}

func (w *statusWriter) Flush() {
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

// ServeHTTP serves Graph v1.0 under /v1.0 and upload sessions under
// /api/v2.0.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	sw := &statusWriter{ResponseWriter: w}
	defer func() {
		s.stats.do(func(st *Stats) {
			st.HTTPRequests++
			if sw.status != 0 {
				st.ByStatus[sw.status]++
			}
		})
	}()
	h := sw.Header()
	rid := randomGUID()
	h.Set("request-id", rid)
	crid := r.Header.Get("client-request-id")
	if crid == "" {
		crid = rid
	}
	h.Set("client-request-id", crid)
	if strings.HasPrefix(r.URL.Path, "/api/v2.0/") {
		s.serveUpload(sw, r)
		return
	}
	p, ok := strings.CutPrefix(r.URL.Path, "/v1.0")
	if !ok || (p != "" && p[0] != '/') {
		s.writeError(sw, errBadRequest("Invalid version."))
		return
	}
	if strings.EqualFold(p, "/$batch") {
		s.count("batch", r.Method, false)
		s.sleep(r.Context())
		claims, e := s.authenticate(r)
		if e != nil {
			s.writeError(sw, e)
			return
		}
		if r.Method != http.MethodPost {
			s.writeError(sw, errMethod())
			return
		}
		s.serveBatch(sw, r, claims)
		return
	}
	s.serveCall(sw, r, p, nil, false)
}

func errMethod() *gErr {
	return newErr(http.StatusMethodNotAllowed, "Request_BadRequest", "Specified HTTP method is not allowed for the request target.")
}

// count counts a request; batch: the $batch round trip itself.
func (s *Server) count(kind, method string, item bool) {
	s.stats.do(func(st *Stats) {
		st.ByKind[kind]++
		if kind == "batch" {
			return
		}
		st.Requests++
		st.ByMethod[method]++
		if item {
			st.BatchItems++
		}
	})
}

// call is one request (or batch item) being served.
type call struct {
	s         *Server
	w         http.ResponseWriter
	r         *http.Request
	host      string
	claims    Claims
	mb        *mailbox
	userSeg   string // "me" or users/{userSeg}
	path      []string
	q         url.Values
	body      []byte
	prefs     prefs
	immutable bool
	inBatch   bool
	kind      string
}

// prefs are the Prefer header's preferences.
type prefs struct {
	immutable   bool
	maxPageSize int
	bodyText    bool
}

func parsePrefer(h http.Header) prefs {
	var p prefs
	for _, v := range h.Values("Prefer") {
		for _, part := range strings.Split(v, ",") {
			k, val, _ := strings.Cut(strings.TrimSpace(part), "=")
			val = strings.Trim(strings.TrimSpace(val), `"`)
			switch strings.ToLower(strings.TrimSpace(k)) {
			case "idtype":
				p.immutable = strings.EqualFold(val, "ImmutableId")
			case "odata.maxpagesize":
				if n, err := strconv.Atoi(val); err == nil && n > 0 {
					p.maxPageSize = n
				}
			case "outlook.body-content-type":
				p.bodyText = strings.EqualFold(val, "text")
			}
		}
	}
	return p
}

// splitPath splits a Graph path into segments, turning key syntax
// ("mailFolders('id')") into two segments and dropping the
// "microsoft.graph." prefix of functions and actions.
func splitPath(p string) []string {
	var out []string
	for _, seg := range strings.Split(strings.Trim(p, "/"), "/") {
		if seg == "" {
			continue
		}
		if i := strings.IndexByte(seg, '('); i > 0 && strings.HasSuffix(seg, ")") {
			key := seg[i+1 : len(seg)-1]
			if len(key) >= 2 && key[0] == '\'' && key[len(key)-1] == '\'' {
				key = strings.ReplaceAll(key[1:len(key)-1], "''", "'")
			}
			out = append(out, seg[:i], key)
			continue
		}
		if l := strings.ToLower(seg); strings.HasPrefix(l, "microsoft.graph.") {
			seg = seg[len("microsoft.graph."):]
		}
		out = append(out, seg)
	}
	return out
}

// serveCall serves one request below /v1.0 (p is the path after /v1.0).
func (s *Server) serveCall(w http.ResponseWriter, r *http.Request, p string, claims *Claims, inBatch bool) {
	sw, _ := w.(*statusWriter)
	kind := "unknown"
	defer func() {
		status := 0
		if sw != nil {
			status = sw.status
		} else if rec, ok := w.(*recorder); ok {
			status = rec.status
		}
		if status == http.StatusTooManyRequests {
			s.stats.do(func(st *Stats) { st.Throttled++ })
		}
	}()
	c := &call{s: s, w: w, r: r, host: r.Host, q: r.URL.Query(), prefs: parsePrefer(r.Header), inBatch: inBatch}
	if c.host == "" {
		c.host = s.host
	}
	c.immutable = c.prefs.immutable
	segs := splitPath(p)
	// What is asked is known before auth, so that stats group requests.
	var rest []string
	if len(segs) > 0 {
		switch strings.ToLower(segs[0]) {
		case "me":
			rest = segs[1:]
		case "users":
			if len(segs) > 1 {
				rest = segs[2:]
			}
		}
	}
	rt := route(r.Method, rest)
	kind = rt.kind
	c.kind = kind
	c.path = rt.path
	s.count(kind, r.Method, inBatch)
	if claims == nil {
		cl, e := s.authenticate(r)
		if e != nil {
			s.writeError(w, e)
			return
		}
		claims = &cl
	}
	c.claims = *claims
	if len(segs) == 0 {
		s.writeError(w, errSegment("v1.0"))
		return
	}
	switch strings.ToLower(segs[0]) {
	case "me":
		if !c.claims.Delegated() {
			s.writeError(w, errBadRequest(msgMeNotDelegated))
			return
		}
		c.userSeg = "me"
		if e := s.bindMailbox(c, c.claims.UPN); e != nil {
			s.writeError(w, e)
			return
		}
	case "users":
		if len(segs) < 2 {
			s.writeError(w, errSegment("users"))
			return
		}
		c.userSeg = "users/" + segs[1]
		if e := s.bindMailbox(c, segs[1]); e != nil {
			s.writeError(w, e)
			return
		}
	default:
		s.writeError(w, errSegment(segs[0]))
		return
	}
	if rt.handler == nil {
		s.writeError(w, rt.err)
		return
	}
	if r.Body != nil && (r.Method == http.MethodPost || r.Method == http.MethodPatch || r.Method == http.MethodPut) {
		max := s.lim.limits().MaxRequestBody
		b, err := io.ReadAll(io.LimitReader(r.Body, max+1))
		if err != nil {
			s.writeError(w, errBadRequest("Could not read the request body."))
			return
		}
		if int64(len(b)) > max {
			s.writeError(w, errTooLarge())
			return
		}
		c.body = b
	}
	release, conc, e := s.lim.admit(throttleKey{strings.ToLower(c.claims.AppID), c.mb.id}, r.Method, int64(len(c.body)))
	if e != nil {
		if conc {
			s.stats.do(func(st *Stats) { st.ConcurrencyThrottled++ })
		}
		s.writeError(w, e)
		return
	}
	defer release()
	// The request is in flight (and holds its concurrency slot) while the
	// latency passes.
	s.sleep(r.Context())
	var after *Fault // an Applied fault, answered after the handler ran
	if f := s.lim.fault(r.Method, p); f != nil {
		s.stats.do(func(st *Stats) { st.Faults++ })
		if f.Delay > 0 {
			t := time.NewTimer(f.Delay)
			select {
			case <-t.C:
			case <-r.Context().Done():
			}
			t.Stop()
		}
		switch {
		case f.CutAfter > 0 && sw != nil:
			sw.cut = f.CutAfter
		case f.Applied && !inBatch:
			after = f
		case f.Drop && !inBatch:
			s.answerFault(w, f)
		default:
			s.writeError(w, faultError(f))
			return
		}
	}
	if e := s.authorize(c, rt.perm); e != nil {
		s.writeError(w, e)
		return
	}
	if after != nil {
		c.w = &discardWriter{}
		rt.handler(c)
		s.answerFault(w, after)
		return
	}
	rt.handler(c)
}

// bindMailbox resolves /users/{u} (object id or address) or /me.
func (s *Server) bindMailbox(c *call, u string) *gErr {
	s.mu.Lock()
	defer s.mu.Unlock()
	mb := s.mailboxLocked(u)
	if mb == nil {
		return errInvalidUser(u)
	}
	if mb.inactive {
		return newErr(http.StatusNotFound, "MailboxNotEnabledForRESTAPI", msgMailboxAbsent)
	}
	c.mb = mb
	return nil
}

// base is the URL of the user as the client addressed it.
func (c *call) base() string { return "https://" + c.host + "/v1.0/" + c.userSeg }

func (c *call) fail(e *gErr) { c.s.writeError(c.w, e) }

func (c *call) applied(extra ...string) {
	var v []string
	if c.immutable {
		v = append(v, `IdType="ImmutableId"`)
	}
	v = append(v, extra...)
	if len(v) > 0 {
		c.w.Header().Set("Preference-Applied", strings.Join(v, ", "))
	}
}

func (c *call) json(status int, v any) {
	c.applied()
	writeJSON(c.w, status, v)
}

// route is what a path below the user asks.
type routed struct {
	kind    string
	perm    perm
	handler func(*call)
	err     *gErr
	path    []string // normalized path below the user
}

func lower(ss []string, i int) string {
	if i < len(ss) {
		return strings.ToLower(ss[i])
	}
	return ""
}

func route(method string, p []string) routed {
	// mailFolders/{a}/childFolders/{b}/... addresses folder b.
	for len(p) >= 4 && lower(p, 0) == "mailfolders" && lower(p, 2) == "childfolders" {
		p = append([]string{p[0], p[3]}, p[4:]...)
	}
	// mailFolders/{f}/messages/{id}/... is the message {id}.
	if len(p) >= 4 && lower(p, 0) == "mailfolders" && lower(p, 2) == "messages" && lower(p, 3) != "delta" {
		p = p[2:]
	}
	rt := routed{path: p, kind: "unknown"}
	m := method
	bad := func() routed {
		rt.err = errMethod()
		rt.handler = nil
		return rt
	}
	seg := func(i int) string {
		if i < len(p) {
			return p[i]
		}
		return ""
	}
	switch {
	case len(p) == 0:
		rt.kind, rt.perm = "user.get", permUser
		if m != http.MethodGet {
			return bad()
		}
		rt.handler = handleUser
	case lower(p, 0) == "mailfolders":
		switch {
		case len(p) == 1:
			switch m {
			case http.MethodGet:
				rt.kind, rt.perm, rt.handler = "folders.list", permRead, handleListFolders
			case http.MethodPost:
				rt.kind, rt.perm, rt.handler = "folders.create", permWrite, handleCreateFolder
			default:
				return bad()
			}
		case len(p) == 2:
			rt.kind, rt.perm = "folders.get", permRead
			if m != http.MethodGet {
				return bad()
			}
			rt.handler = handleGetFolder
		case len(p) == 3 && lower(p, 2) == "childfolders":
			switch m {
			case http.MethodGet:
				rt.kind, rt.perm, rt.handler = "folders.list", permRead, handleListFolders
			case http.MethodPost:
				rt.kind, rt.perm, rt.handler = "folders.create", permWrite, handleCreateFolder
			default:
				return bad()
			}
		case len(p) == 3 && lower(p, 2) == "messages":
			switch m {
			case http.MethodGet:
				rt.kind, rt.perm, rt.handler = "messages.list", permRead, handleListMessages
			case http.MethodPost:
				rt.kind, rt.perm, rt.handler = "messages.create", permWrite, handleCreateMessage
			default:
				return bad()
			}
		case len(p) == 4 && lower(p, 2) == "messages" && lower(p, 3) == "delta":
			rt.kind, rt.perm = "messages.delta", permRead
			if m != http.MethodGet {
				return bad()
			}
			rt.handler = handleDelta
		default:
			rt.err = errSegment(seg(len(p) - 1))
		}
	case lower(p, 0) == "messages":
		switch {
		case len(p) == 1:
			switch m {
			case http.MethodGet:
				rt.kind, rt.perm, rt.handler = "messages.list", permRead, handleListMessages
			case http.MethodPost:
				rt.kind, rt.perm, rt.handler = "messages.create", permWrite, handleCreateMessage
			default:
				return bad()
			}
		case len(p) == 2:
			switch m {
			case http.MethodGet:
				rt.kind, rt.perm, rt.handler = "messages.get", permRead, handleGetMessage
			case http.MethodPatch:
				rt.kind, rt.perm, rt.handler = "messages.update", permWrite, handleUpdateMessage
			case http.MethodDelete:
				rt.kind, rt.perm, rt.handler = "messages.delete", permWrite, handleDeleteMessage
			default:
				return bad()
			}
		case len(p) == 3 && lower(p, 2) == "$value":
			rt.kind, rt.perm = "messages.value", permRead
			if m != http.MethodGet {
				return bad()
			}
			rt.handler = handleValue
		case len(p) == 3 && lower(p, 2) == "move":
			rt.kind, rt.perm = "messages.move", permWrite
			if m != http.MethodPost {
				return bad()
			}
			rt.handler = handleMove
		case len(p) == 3 && lower(p, 2) == "send":
			rt.kind, rt.perm = "messages.send", permSend
			if m != http.MethodPost {
				return bad()
			}
			rt.handler = handleSendDraft
		case len(p) == 3 && lower(p, 2) == "attachments":
			switch m {
			case http.MethodGet:
				rt.kind, rt.perm, rt.handler = "attachments.list", permRead, handleListAttachments
			case http.MethodPost:
				rt.kind, rt.perm, rt.handler = "attachments.create", permWrite, handleAddAttachment
			default:
				return bad()
			}
		case len(p) == 4 && lower(p, 2) == "attachments" && lower(p, 3) == "createuploadsession":
			rt.kind, rt.perm = "attachments.uploadSession", permWrite
			if m != http.MethodPost {
				return bad()
			}
			rt.handler = handleCreateUploadSession
		case len(p) == 4 && lower(p, 2) == "attachments":
			rt.kind, rt.perm = "attachments.get", permRead
			if m != http.MethodGet {
				return bad()
			}
			rt.handler = handleGetAttachment
		default:
			rt.err = errSegment(seg(len(p) - 1))
		}
	case len(p) == 1 && lower(p, 0) == "sendmail":
		rt.kind, rt.perm = "sendMail", permSend
		if m != http.MethodPost {
			return bad()
		}
		rt.handler = handleSendMail
	default:
		rt.err = errSegment(seg(0))
	}
	return rt
}

func handleUser(c *call) {
	s := c.s
	s.mu.Lock()
	mb := c.mb
	v := map[string]any{
		"@odata.context":    "https://" + c.host + "/v1.0/$metadata#users/$entity",
		"id":                mb.id,
		"displayName":       mb.displayName,
		"mail":              mb.address,
		"userPrincipalName": mb.address,
	}
	s.mu.Unlock()
	c.json(http.StatusOK, v)
}
