// Package imap is the IMAP mailbox source: SASL XOAUTH2 (Microsoft 365) or
// password login, folder paths resolved with the server's hierarchy
// delimiter, bodies streamed with BODY.PEEK[], safe moves, and every network
// operation bounded by a timeout (go-imap has no context support, so a timer
// closes the connection when the server goes silent).
package imap

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	goimap "github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"
	"go.uber.org/zap"

	"github.com/mailpipe/mailpipe/internal/auth"
	"github.com/mailpipe/mailpipe/internal/config"
	"github.com/mailpipe/mailpipe/internal/mailbox"
)

// tokenMargin: reconnect with a fresh token when the session's token has
// less than this left, rather than waiting for "BYE ... AccessTokenExpired".
const tokenMargin = 2 * time.Minute

// Options configures a Source.
type Options struct {
	Mailbox config.Mailbox
	// Tokens supplies access tokens for XOAUTH2 (scope
	// https://outlook.office365.com/.default); nil for password auth.
	Tokens auth.TokenSource
	Logger *zap.Logger
}

// Source is an IMAP mailbox source. Not safe for concurrent use.
type Source struct {
	cfg    config.Mailbox
	tokens auth.TokenSource
	log    *zap.Logger
	tlsCfg *tls.Config

	conn *session
	// warned records one-time warnings (e.g. no UIDPLUS).
	warned map[string]bool
}

var _ mailbox.Source = (*Source)(nil)

// session is one authenticated connection.
type session struct {
	c *imapclient.Client
	// raw is the TCP connection under c. Closing it (kill) makes every
	// pending go-imap call fail without waiting for go-imap's reader,
	// which c.Close does and which blocks for as long as a fetched
	// literal is left unread.
	raw      net.Conn
	dead     atomic.Bool
	delim    string
	caps     goimap.CapSet
	folders  map[string][]goimap.MailboxAttr // server names from LIST
	selected string
	validity uint32
	exists   uint32 // messages in the selected folder at SELECT
	tokenExp time.Time
	timedOut atomic.Bool
	sniff    *byeSniffer
}

// kill closes the connection under the session without blocking; the
// session is unusable afterwards.
func (sess *session) kill() {
	sess.dead.Store(true)
	sess.raw.Close()
}

// New validates the options and returns a Source. It does not connect:
// the first operation does.
func New(opts Options) (*Source, error) {
	m := opts.Mailbox
	if m.IMAP.Auth != "password" && opts.Tokens == nil {
		return nil, fmt.Errorf("mailbox %q: xoauth2 needs a token source", m.Name)
	}
	log := opts.Logger
	if log == nil {
		log = zap.NewNop()
	}
	s := &Source{cfg: m, tokens: opts.Tokens, log: log.With(zap.String("mailbox", m.Name)), warned: map[string]bool{}}
	if m.IMAP.Security != "insecure" {
		tc := &tls.Config{ServerName: m.IMAP.Host, MinVersion: tls.VersionTLS12}
		if m.IMAP.TLS.ServerName != "" {
			tc.ServerName = m.IMAP.TLS.ServerName
		}
		if m.IMAP.TLS.CAFile != "" {
			pem, err := os.ReadFile(m.IMAP.TLS.CAFile)
			if err != nil {
				return nil, fmt.Errorf("mailbox %q: imap.tls.ca_file: %w", m.Name, err)
			}
			pool := x509.NewCertPool()
			if !pool.AppendCertsFromPEM(pem) {
				return nil, fmt.Errorf("mailbox %q: imap.tls.ca_file %s: no PEM certificates", m.Name, m.IMAP.TLS.CAFile)
			}
			tc.RootCAs = pool
		}
		if m.IMAP.TLS.CertFile != "" {
			cert, err := tls.LoadX509KeyPair(m.IMAP.TLS.CertFile, m.IMAP.TLS.KeyFile)
			if err != nil {
				return nil, fmt.Errorf("mailbox %q: imap.tls.cert_file: %w", m.Name, err)
			}
			tc.Certificates = []tls.Certificate{cert}
		}
		s.tlsCfg = tc
	}
	return s, nil
}

func (s *Source) timeout() time.Duration {
	if s.cfg.IMAP.Timeout > 0 {
		return s.cfg.IMAP.Timeout
	}
	return 60 * time.Second
}

func (s *Source) fail(op, folder string, err error) error {
	if s.conn != nil {
		return s.failSess(s.conn, op, folder, err)
	}
	return classify(op, s.cfg.Name, folder, err)
}

// failSess classifies err from an operation on sess: a connection the
// guard closed is reported as a timeout, and a BYE seen is quoted.
func (s *Source) failSess(sess *session, op, folder string, err error) error {
	var me *mailbox.Error
	if errors.As(err, &me) {
		return err
	}
	if sess.timedOut.Load() {
		err = fmt.Errorf("no response from server within %s: %w", s.timeout(), errConnLost)
	} else if bye := sess.sniff.bye.Load(); bye != nil {
		err = fmt.Errorf("%w (server said BYE %s)", err, *bye)
	}
	return classify(op, s.cfg.Name, folder, err)
}

// guard bounds one operation: when the server stays silent for longer than
// the timeout, or ctx ends, the connection is closed, which makes every
// pending go-imap call return. touch extends the deadline (progress seen);
// pause suspends it while the caller works; done ends the guard.
type guard struct {
	t    *time.Timer
	d    time.Duration
	stop func() bool

	// mu orders the timer's and the context's kill against done: after
	// done returns, the session is either killed already or never will
	// be by this guard (a kill arriving late would break the next
	// operation on a session that looked healthy).
	mu       sync.Mutex
	finished bool
}

func (s *Source) guard(ctx context.Context, sess *session) *guard {
	d := s.timeout()
	g := &guard{d: d}
	g.t = time.AfterFunc(d, func() {
		g.mu.Lock()
		defer g.mu.Unlock()
		if !g.finished {
			sess.timedOut.Store(true)
			sess.kill()
		}
	})
	g.stop = context.AfterFunc(ctx, func() {
		g.mu.Lock()
		defer g.mu.Unlock()
		if !g.finished {
			sess.kill()
		}
	})
	return g
}

func (g *guard) touch()  { g.t.Reset(g.d) }
func (g *guard) pause()  { g.t.Stop() }
func (g *guard) resume() { g.t.Reset(g.d) }

func (g *guard) done() {
	g.mu.Lock()
	g.finished = true
	g.mu.Unlock()
	g.t.Stop()
	g.stop()
}

// ensure returns a live, authenticated session, connecting when needed.
func (s *Source) ensure(ctx context.Context) (*session, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if s.conn != nil {
		select {
		case <-s.conn.c.Closed():
			s.drop()
		default:
			if s.conn.dead.Load() {
				s.drop()
				break
			}
			if !s.conn.tokenExp.IsZero() && time.Until(s.conn.tokenExp) < tokenMargin {
				s.log.Debug("token about to expire, reconnecting")
				s.drop()
			}
		}
	}
	if s.conn != nil {
		return s.conn, nil
	}
	sess, err := s.connect(ctx)
	if err != nil {
		return nil, err
	}
	s.conn = sess
	return sess, nil
}

// drop closes the current session (if any) without waiting for the server.
func (s *Source) drop() {
	if s.conn == nil {
		return
	}
	sess := s.conn
	s.conn = nil
	if bye := sess.sniff.bye.Load(); bye != nil {
		s.log.Info("server ended the session", zap.String("reason", *bye))
		if strings.Contains(*bye, "AccessTokenExpired") && s.tokens != nil {
			s.tokens.Invalidate()
		}
	}
	sess.kill()
	// c.Close waits for go-imap's reader, which ends promptly now that the
	// connection is closed unless a caller still holds an unread literal.
	go sess.c.Close()
}

func (s *Source) connect(ctx context.Context) (*session, error) {
	m := s.cfg
	addr := net.JoinHostPort(m.IMAP.Host, strconv.Itoa(m.IMAP.Port))
	dialer := &net.Dialer{Timeout: s.timeout(), KeepAlive: 30 * time.Second}
	raw, err := dialer.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, classify("connect "+addr, m.Name, "", err)
	}
	sniff := &byeSniffer{}
	opts := &imapclient.Options{TLSConfig: s.tlsCfg, DebugWriter: sniff}
	sess := &session{sniff: sniff, raw: raw}

	// Bound the whole connect + login sequence.
	g := s.guard(ctx, sess)
	defer g.done()

	fail := func(op string, err error) (*session, error) {
		raw.Close()
		if sess.timedOut.Load() {
			err = fmt.Errorf("no response from %s within %s: %w", addr, s.timeout(), errConnLost)
		}
		return nil, classify(op, m.Name, "", err)
	}

	switch m.IMAP.Security {
	case "insecure":
		sess.c = imapclient.New(raw, opts)
	case "starttls":
		sess.c, err = imapclient.NewStartTLS(raw, opts)
		if err != nil {
			return fail("starttls "+addr, err)
		}
	default:
		tc := tls.Client(raw, s.tlsCfg)
		if err := tc.HandshakeContext(ctx); err != nil {
			return fail("tls handshake "+addr, err)
		}
		sess.c = imapclient.New(tc, opts)
	}
	if err := sess.c.WaitGreeting(); err != nil {
		return fail("greeting "+addr, err)
	}
	if err := s.login(ctx, sess); err != nil {
		if sess.timedOut.Load() {
			return fail("login", err)
		}
		raw.Close()
		return nil, err
	}
	// Capabilities may change after login (Exchange shows MOVE only then).
	caps, err := sess.c.Capability().Wait()
	if err != nil {
		return fail("capability", err)
	}
	sess.caps = caps
	if err := s.listFolders(sess); err != nil {
		return fail("list folders", err)
	}
	s.log.Debug("connected", zap.String("addr", addr), zap.String("delimiter", sess.delim),
		zap.Bool("move", caps.Has(goimap.CapMove)), zap.Bool("uidplus", caps.Has(goimap.CapUIDPlus)))
	return sess, nil
}

func (s *Source) login(ctx context.Context, sess *session) error {
	m := s.cfg
	user := m.IMAP.Username
	if user == "" {
		user = m.Address
	}
	if m.IMAP.Auth == "password" {
		if err := sess.c.Login(user, m.IMAP.Password.Value()).Wait(); err != nil {
			return &mailbox.Error{Kind: authKind(err), Op: "login", Mailbox: m.Name,
				Err: fmt.Errorf("password login as %s failed: %w", user, err)}
		}
		return nil
	}
	if !sess.c.Caps().Has(goimap.AuthCap("XOAUTH2")) {
		return &mailbox.Error{Kind: mailbox.Permanent, Op: "login", Mailbox: m.Name,
			Err: fmt.Errorf("server %s does not offer AUTH=XOAUTH2 (set imap.auth: password for non-Microsoft servers)", m.IMAP.Host)}
	}
	tok, err := s.tokens.Token(ctx)
	if err != nil {
		return &mailbox.Error{Kind: mailbox.Auth, Op: "token", Mailbox: m.Name, Err: err}
	}
	x := &xoauth2{user: user, token: tok.Value}
	if err := sess.c.Authenticate(x); err != nil {
		// The token may have been revoked or be for the wrong resource:
		// make the next attempt fetch a new one.
		s.tokens.Invalidate()
		detail := ""
		if x.failure != "" {
			detail = " (" + x.failure + ")"
		}
		return &mailbox.Error{Kind: authKind(err), Op: "login", Mailbox: m.Name,
			Err: fmt.Errorf("XOAUTH2 login as %s failed%s: %w; check that the token is for https://outlook.office365.com (not Graph), that the app has IMAP.AccessAsApp with admin consent, and that its service principal has FullAccess on the mailbox (New-ServicePrincipal, Add-MailboxPermission)", user, detail, err)}
	}
	sess.tokenExp = tok.ExpiresOn
	return nil
}

// authKind: a login refused by the server is an Auth problem unless the
// connection broke or the server said it is busy (throttled, or a code
// such as UNAVAILABLE or INUSE that classifies as transient).
func authKind(err error) mailbox.Kind {
	var ie *goimap.Error
	if errors.As(err, &ie) {
		k := kindOf(err)
		if k == mailbox.Throttled {
			return k
		}
		if ck, ok := codeKinds[ie.Code]; ok && ck == mailbox.Transient {
			return k
		}
		return mailbox.Auth
	}
	return mailbox.Transient
}

// Close logs out (bounded by the timeout, at most 5s) and closes the
// connection. The Source may be used again afterwards: the next operation
// connects.
func (s *Source) Close() error {
	if s.conn == nil {
		return nil
	}
	sess := s.conn
	select {
	case <-sess.c.Closed():
		s.drop()
		return nil
	default:
		if sess.dead.Load() {
			s.drop()
			return nil
		}
	}
	s.conn = nil
	t := time.AfterFunc(min(s.timeout(), 5*time.Second), sess.kill)
	defer t.Stop()
	_ = sess.c.Logout().Wait()
	sess.kill()
	go sess.c.Close()
	return nil
}

// byeSniffer sees the decrypted traffic (go-imap's debug tap, both
// directions: the client never sends a line starting with "* ") and
// remembers an untagged BYE, whose text go-imap drops: Exchange says
// "* BYE Session invalidated - AccessTokenExpired". Only a BYE at the start
// of a line counts, and a line split across writes is reassembled.
type byeSniffer struct {
	bye atomic.Pointer[string]

	mu sync.Mutex
	// line holds the start of the current line while it may still turn
	// out to be a BYE (at most maxByeLine bytes).
	line    []byte
	partial bool // line is a prefix of a BYE line still being written
	midLine bool // the last write did not end with '\n'
}

var byeMarker = []byte("* BYE ")

const maxByeLine = 200

func (b *byeSniffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	data := p
	if b.partial {
		data = append(b.line, p...)
		b.line, b.partial = nil, false
	} else if b.midLine {
		// Skip the rest of a line that began in an earlier write.
		i := bytes.IndexByte(data, '\n')
		if i < 0 {
			return len(p), nil
		}
		data = data[i+1:]
	}
	b.midLine = len(p) > 0 && p[len(p)-1] != '\n'
	for len(data) > 0 {
		end := bytes.IndexByte(data, '\n')
		line := data
		if end >= 0 {
			line = data[:end]
		}
		if end < 0 && len(line) < len(byeMarker)+maxByeLine && (bytes.HasPrefix(line, byeMarker) || bytes.HasPrefix(byeMarker, line)) {
			// Maybe a BYE, not complete yet: wait for more, and keep
			// what there is in case the connection ends here.
			b.line, b.partial = append([]byte(nil), line...), true
			if rest, ok := bytes.CutPrefix(line, byeMarker); ok {
				reason := string(bytes.TrimRight(rest, "\r"))
				b.bye.Store(&reason)
			}
			return len(p), nil
		}
		if rest, ok := bytes.CutPrefix(line, byeMarker); ok {
			rest = bytes.TrimRight(rest, "\r")
			if len(rest) > maxByeLine {
				rest = rest[:maxByeLine]
			}
			reason := string(rest)
			b.bye.Store(&reason)
		}
		if end < 0 {
			break
		}
		data = data[end+1:]
	}
	return len(p), nil
}
