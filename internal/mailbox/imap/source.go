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
	c        *imapclient.Client
	delim    string
	caps     goimap.CapSet
	folders  map[string][]goimap.MailboxAttr // server names from LIST
	selected string
	validity uint32
	tokenExp time.Time
	timedOut atomic.Bool
	sniff    *byeSniffer
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
	if s.conn != nil && s.conn.timedOut.Load() {
		err = fmt.Errorf("no response from server within %s: %w", s.timeout(), errConnLost)
	}
	return classify(op, s.cfg.Name, folder, err)
}

// guard bounds one operation: when the server stays silent for longer than
// the timeout, or ctx ends, the connection is closed, which makes every
// pending go-imap call return. touch extends the deadline (progress seen);
// pause suspends it while the caller works; stop ends the guard.
type guard struct {
	t    *time.Timer
	d    time.Duration
	stop func() bool
}

func (s *Source) guard(ctx context.Context, sess *session) *guard {
	d := s.timeout()
	g := &guard{d: d}
	g.t = time.AfterFunc(d, func() {
		sess.timedOut.Store(true)
		sess.c.Close()
	})
	g.stop = context.AfterFunc(ctx, func() { sess.c.Close() })
	return g
}

func (g *guard) touch()  { g.t.Reset(g.d) }
func (g *guard) pause()  { g.t.Stop() }
func (g *guard) done()   { g.t.Stop(); g.stop() }
func (g *guard) resume() { g.t.Reset(g.d) }

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
	if bye := s.conn.sniff.bye.Load(); bye != nil {
		s.log.Info("server ended the session", zap.String("reason", *bye))
		if strings.Contains(*bye, "AccessTokenExpired") && s.tokens != nil {
			s.tokens.Invalidate()
		}
	}
	s.conn.c.Close()
	s.conn = nil
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
	sess := &session{sniff: sniff}

	// Bound the whole connect + login sequence.
	deadline := time.AfterFunc(s.timeout(), func() { sess.timedOut.Store(true); raw.Close() })
	defer deadline.Stop()
	stop := context.AfterFunc(ctx, func() { raw.Close() })
	defer stop()

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
// connection broke.
func authKind(err error) mailbox.Kind {
	var ie *goimap.Error
	if errors.As(err, &ie) {
		if k := kindOf(err); k == mailbox.Throttled || k == mailbox.Transient && ie.Code == goimap.ResponseCodeUnavailable {
			return k
		}
		return mailbox.Auth
	}
	return mailbox.Transient
}

// Close logs out (bounded by the timeout) and closes the connection.
func (s *Source) Close() error {
	if s.conn == nil {
		return nil
	}
	sess := s.conn
	s.conn = nil
	t := time.AfterFunc(5*time.Second, func() { sess.c.Close() })
	defer t.Stop()
	_ = sess.c.Logout().Wait()
	return sess.c.Close()
}

// byeSniffer sees the decrypted server traffic (go-imap's debug tap) and
// remembers an untagged BYE, whose text go-imap drops: Exchange says
// "* BYE Session invalidated - AccessTokenExpired".
type byeSniffer struct {
	bye atomic.Pointer[string]
}

var byeMarker = []byte("* BYE ")

func (b *byeSniffer) Write(p []byte) (int, error) {
	if i := bytes.Index(p, byeMarker); i >= 0 {
		line := p[i+len(byeMarker):]
		if j := bytes.IndexByte(line, '\r'); j >= 0 {
			line = line[:j]
		}
		if len(line) > 200 {
			line = line[:200]
		}
		s := string(line)
		b.bye.Store(&s)
	}
	return len(p), nil
}
