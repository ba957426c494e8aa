package devmail

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"crypto/subtle"
	"crypto/tls"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/mail"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/emersion/go-imap/v2"
	"go.uber.org/zap"
)

// SMTPOptions configures a development SMTP submission server, a stand-in
// for smtp.office365.com:587.
type SMTPOptions struct {
	// Addr is the TCP address to listen on. Default 127.0.0.1:0 (read the
	// port back with SMTPServer.Addr).
	Addr string
	// TLSConfig, when set, is offered with STARTTLS (or spoken from the
	// start with ImplicitTLS); it must carry a certificate. AUTH is then
	// only offered and accepted over TLS, as on Exchange Online. When nil
	// the server is plaintext and accepts AUTH without TLS.
	TLSConfig *tls.Config
	// ImplicitTLS makes the listener speak TLS from the first byte (port
	// 465 style) instead of offering STARTTLS. It needs TLSConfig.
	ImplicitTLS bool
	// Hostname is the name in the greeting and EHLO reply. Default
	// "devmail.localhost".
	Hostname string
	// Users with a Password may log in with AUTH PLAIN.
	Users []User
	// AllowAnonymous accepts mail without AUTH (like a relay that trusts
	// its network), with any sender. By default MAIL before AUTH gets
	// 530 5.7.57, as on Exchange Online.
	AllowAnonymous bool
	// ValidateToken checks an XOAUTH2 bearer token and returns the
	// address it grants access to (the same function as Options'): the
	// login succeeds when that address equals the SASL user= field
	// (case-insensitively). When nil, XOAUTH2 is not offered.
	ValidateToken func(token string) (email string, err error)
	// MaySendAs reports whether the authenticated login may send as from
	// (Send As right). Default: only as itself, case-insensitively.
	MaySendAs func(login, from string) bool
	// DeferSendAsCheck skips the Send As check of MAIL FROM: the sender is
	// then only checked against the From header at the end of DATA. That
	// is what Exchange Online is reported to do (550 5.7.60 as the answer
	// to the end of DATA). By default both are checked.
	DeferSendAsCheck bool
	// AuthDisabled lists logins for which SMTP AUTH is disabled
	// (Set-CASMailbox -SmtpClientAuthenticationDisabled $true): their
	// AUTH fails with 535 5.7.139, whatever the credentials.
	AuthDisabled []string
	// MaxMessageSize is the largest message accepted, in bytes (SIZE
	// extension, 552 5.3.4 beyond). Default 35 MiB, Exchange Online's
	// default send limit.
	MaxMessageSize int64
	// MaxRecipients bounds the recipients of one message (452 4.5.3
	// beyond). Default 1000, as on Exchange Online.
	MaxRecipients int
	// Deliver receives every accepted message: the envelope sender, the
	// envelope recipients and the message as received (CRLF line endings,
	// dot-stuffing removed). An error makes the server answer 451 4.3.0
	// instead of 250. When nil, accepted messages are dropped.
	// Server.DeliverLocal fits here.
	Deliver func(from string, to []string, raw []byte) error
	// Logger receives session events. Default: no logging.
	Logger *zap.Logger
}

// SMTPStage is the point of an SMTP session at which a fault strikes.
type SMTPStage string

// Stages for SMTPFault.
const (
	SMTPAtGreeting SMTPStage = "greeting" // instead of the 220 greeting
	SMTPAtEHLO     SMTPStage = "ehlo"     // the answer to EHLO/HELO
	SMTPAtAuth     SMTPStage = "auth"     // the answer to AUTH (after the credentials arrived)
	SMTPAtMail     SMTPStage = "mail"     // the answer to MAIL FROM
	SMTPAtRcpt     SMTPStage = "rcpt"     // the answer to RCPT TO
	SMTPAtData     SMTPStage = "data"     // the answer to the DATA command (instead of 354)
	SMTPAtDataEnd  SMTPStage = "data-end" // the answer after the message's final "."
)

// SMTPFault makes the server misbehave once, at a given stage of a
// session (see InjectFault). Exactly one of Reply, Drop and Hang is used,
// in that order of precedence.
type SMTPFault struct {
	At SMTPStage
	// Reply replaces the normal answer, e.g. "451 4.3.0 Temporary server
	// error". A 421 reply closes the connection after it, as RFC 5321
	// says.
	Reply string
	// Drop closes the connection without answering.
	Drop bool
	// Hang stops answering: the connection stays open and silent until
	// the client closes it or the server is closed.
	Hang bool
	// Deliver, at SMTPAtDataEnd, delivers the message before the fault
	// strikes: the mail is sent although the client sees a failure (the
	// case an SMTP client cannot tell from "not sent").
	Deliver bool
}

// SMTPServer is a running development SMTP submission server. It speaks
// EHLO, STARTTLS, AUTH (XOAUTH2, PLAIN), MAIL, RCPT, DATA, RSET, NOOP and
// QUIT with Exchange Online's replies for the failures mailpipe
// classifies: 535 5.7.3 for a refused token (after an XOAUTH2 error
// challenge the client must answer), 535 5.7.139 when SMTP AUTH is
// disabled, 530 5.7.57 before authentication, 550 5.7.60 SendAsDenied,
// 552 5.3.4 for a message over the size limit.
type SMTPServer struct {
	opts SMTPOptions
	log  *zap.Logger
	ln   net.Listener

	users        map[string]string // lower-case address → password
	authDisabled map[string]bool

	wg sync.WaitGroup

	mu     sync.Mutex
	conns  map[net.Conn]struct{}
	faults []SMTPFault
	closed bool
}

// StartSMTP starts a development SMTP server on opts.Addr.
func StartSMTP(opts SMTPOptions) (*SMTPServer, error) {
	if opts.Addr == "" {
		opts.Addr = "127.0.0.1:0"
	}
	if opts.Hostname == "" {
		opts.Hostname = "devmail.localhost"
	}
	if opts.MaxMessageSize <= 0 {
		opts.MaxMessageSize = 35 << 20
	}
	if opts.MaxRecipients <= 0 {
		opts.MaxRecipients = 1000
	}
	if opts.MaySendAs == nil {
		opts.MaySendAs = func(login, from string) bool { return strings.EqualFold(login, from) }
	}
	if cfg := opts.TLSConfig; cfg != nil && len(cfg.Certificates) == 0 && cfg.GetCertificate == nil && cfg.GetConfigForClient == nil {
		return nil, errors.New("devmail: SMTP TLSConfig has no certificate")
	}
	if opts.ImplicitTLS && opts.TLSConfig == nil {
		return nil, errors.New("devmail: SMTP ImplicitTLS needs a TLSConfig")
	}
	log := opts.Logger
	if log == nil {
		log = zap.NewNop()
	}
	s := &SMTPServer{
		opts:         opts,
		log:          log,
		users:        make(map[string]string),
		authDisabled: make(map[string]bool),
		conns:        make(map[net.Conn]struct{}),
	}
	for _, u := range opts.Users {
		if !validAddress(u.Address) {
			return nil, fmt.Errorf("devmail: invalid SMTP user address %q", u.Address)
		}
		if u.Password != "" {
			s.users[strings.ToLower(u.Address)] = u.Password
		}
	}
	for _, a := range opts.AuthDisabled {
		s.authDisabled[strings.ToLower(a)] = true
	}
	ln, err := net.Listen("tcp", opts.Addr)
	if err != nil {
		return nil, fmt.Errorf("devmail: SMTP listen: %w", err)
	}
	if opts.ImplicitTLS {
		ln = tls.NewListener(ln, opts.TLSConfig)
	}
	s.ln = ln
	s.wg.Add(1)
	go s.acceptLoop()
	s.log.Info("devmail: SMTP listening", zap.String("addr", ln.Addr().String()),
		zap.Bool("starttls", opts.TLSConfig != nil && !opts.ImplicitTLS), zap.Bool("implicit_tls", opts.ImplicitTLS))
	return s, nil
}

// Addr is the address the server listens on, as host:port.
func (s *SMTPServer) Addr() string { return s.ln.Addr().String() }

// InjectFault queues a one-time fault: the next session to reach f.At
// suffers it. Faults for the same stage strike in the order injected.
func (s *SMTPServer) InjectFault(f SMTPFault) {
	s.mu.Lock()
	s.faults = append(s.faults, f)
	s.mu.Unlock()
}

// takeFault removes and returns the first queued fault for stage.
func (s *SMTPServer) takeFault(stage SMTPStage) *SMTPFault {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i, f := range s.faults {
		if f.At == stage {
			s.faults = slices.Delete(s.faults, i, i+1)
			return &f
		}
	}
	return nil
}

// Close stops listening, closes every connection and waits for the
// sessions to end. It is safe to call more than once.
func (s *SMTPServer) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	err := s.ln.Close()
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
	if errors.Is(err, net.ErrClosed) {
		err = nil
	}
	return err
}

func (s *SMTPServer) acceptLoop() {
	defer s.wg.Done()
	for {
		nc, err := s.ln.Accept()
		if err != nil {
			if !errors.Is(err, net.ErrClosed) {
				s.log.Debug("devmail: SMTP accept", zap.Error(err))
			}
			return
		}
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			nc.Close()
			return
		}
		s.conns[nc] = struct{}{}
		s.wg.Add(1)
		s.mu.Unlock()
		go func() {
			defer s.wg.Done()
			sess := &smtpSession{srv: s, nc: nc, tls: s.opts.ImplicitTLS,
				log: s.log.With(zap.String("remote", nc.RemoteAddr().String()))}
			sess.serve()
			s.mu.Lock()
			delete(s.conns, sess.nc)
			delete(s.conns, nc)
			s.mu.Unlock()
			sess.nc.Close()
		}()
	}
}

// Timeouts of a session: waiting for a command, and receiving a message.
const (
	smtpCommandTimeout = 5 * time.Minute
	smtpDataTimeout    = 10 * time.Minute
	// smtpMaxLine bounds a command line; RFC 4954 asks for 12288 octets so
	// that AUTH with an initial response fits.
	smtpMaxLine = 16 << 10
)

// errCloseSession ends a session after its last reply.
var errCloseSession = errors.New("close session")

type smtpSession struct {
	srv *SMTPServer
	log *zap.Logger
	nc  net.Conn
	r   *bufio.Reader
	w   *bufio.Writer
	tls bool

	helo  string
	login string // authenticated address, "" before AUTH
	from  string
	hasTx bool // MAIL FROM accepted
	rcpts []string
}

func (c *smtpSession) serve() {
	c.r = bufio.NewReaderSize(c.nc, 32<<10)
	c.w = bufio.NewWriter(c.nc)
	if tc, ok := c.nc.(*tls.Conn); ok {
		tc.SetDeadline(time.Now().Add(smtpCommandTimeout))
		if err := tc.Handshake(); err != nil {
			c.log.Debug("devmail: SMTP TLS handshake failed", zap.Error(err))
			return
		}
	}
	if f := c.srv.takeFault(SMTPAtGreeting); f != nil {
		if c.fault(f) != nil {
			return
		}
	} else if c.reply("220 %s Microsoft ESMTP MAIL Service ready at %s", c.srv.opts.Hostname, time.Now().UTC().Format(time.RFC1123Z)) != nil {
		return
	}
	for {
		c.nc.SetDeadline(time.Now().Add(smtpCommandTimeout))
		line, err := c.readLine()
		if err != nil {
			if errors.Is(err, errLineTooLong) {
				c.reply("500 5.5.2 Line too long")
				continue
			}
			return
		}
		verb, arg, _ := strings.Cut(line, " ")
		if err := c.command(strings.ToUpper(verb), strings.TrimSpace(arg)); err != nil {
			if !errors.Is(err, errCloseSession) {
				c.log.Debug("devmail: SMTP session ended", zap.Error(err))
			}
			return
		}
	}
}

var errLineTooLong = errors.New("line too long")

// readLine reads one CRLF- (or LF-) terminated line without its ending.
func (c *smtpSession) readLine() (string, error) {
	var buf []byte
	for {
		chunk, err := c.r.ReadSlice('\n')
		if len(buf)+len(chunk) > smtpMaxLine {
			// Skip the rest of the line.
			for errors.Is(err, bufio.ErrBufferFull) {
				_, err = c.r.ReadSlice('\n')
			}
			if err != nil {
				return "", err
			}
			return "", errLineTooLong
		}
		buf = append(buf, chunk...)
		if errors.Is(err, bufio.ErrBufferFull) {
			continue
		}
		if err != nil {
			return "", err
		}
		return strings.TrimRight(string(buf), "\r\n"), nil
	}
}

func (c *smtpSession) reply(format string, args ...any) error {
	fmt.Fprintf(c.w, format+"\r\n", args...)
	return c.w.Flush()
}

// fault acts out f; a nil error means the session goes on.
func (c *smtpSession) fault(f *SMTPFault) error {
	c.log.Info("devmail: SMTP fault", zap.String("at", string(f.At)), zap.String("reply", f.Reply), zap.Bool("drop", f.Drop), zap.Bool("hang", f.Hang))
	switch {
	case f.Reply != "":
		if err := c.reply("%s", f.Reply); err != nil {
			return err
		}
		if strings.HasPrefix(f.Reply, "421") {
			return errCloseSession
		}
		return nil
	case f.Hang:
		// Silent until the peer or Close ends the connection.
		c.nc.SetDeadline(time.Time{})
		_, _ = io.Copy(io.Discard, c.nc)
		return errCloseSession
	default:
		return errCloseSession
	}
}

func (c *smtpSession) resetTx() {
	c.from, c.hasTx, c.rcpts = "", false, nil
}

// authOffered: AUTH is offered after STARTTLS when TLS is configured.
func (c *smtpSession) authOffered() bool {
	return c.tls || c.srv.opts.TLSConfig == nil
}

func (c *smtpSession) mechanisms() []string {
	var m []string
	if len(c.srv.users) > 0 {
		m = append(m, "PLAIN")
	}
	if c.srv.opts.ValidateToken != nil {
		m = append(m, "XOAUTH2")
	}
	return m
}

func (c *smtpSession) command(verb, arg string) error {
	switch verb {
	case "EHLO", "HELO":
		if arg == "" {
			return c.reply("501 5.5.4 Invalid domain name")
		}
		c.resetTx()
		c.helo = arg
		if f := c.srv.takeFault(SMTPAtEHLO); f != nil {
			return c.fault(f)
		}
		if verb == "HELO" {
			return c.reply("250 %s Hello [%s]", c.srv.opts.Hostname, hostOf(c.nc.RemoteAddr()))
		}
		lines := []string{
			fmt.Sprintf("%s Hello [%s]", c.srv.opts.Hostname, hostOf(c.nc.RemoteAddr())),
			"SIZE " + strconv.FormatInt(c.srv.opts.MaxMessageSize, 10),
			"8BITMIME",
			"ENHANCEDSTATUSCODES",
			"SMTPUTF8",
		}
		if c.srv.opts.TLSConfig != nil && !c.tls {
			lines = append(lines, "STARTTLS")
		}
		if mechs := c.mechanisms(); c.authOffered() && len(mechs) > 0 {
			lines = append(lines, "AUTH "+strings.Join(mechs, " "))
		}
		for i, l := range lines {
			sep := "-"
			if i == len(lines)-1 {
				sep = " "
			}
			fmt.Fprintf(c.w, "250%s%s\r\n", sep, l)
		}
		return c.w.Flush()

	case "STARTTLS":
		if c.srv.opts.TLSConfig == nil || c.tls {
			return c.reply("502 5.3.3 Command not implemented")
		}
		if c.r.Buffered() > 0 {
			// Commands sent along with STARTTLS would be taken for
			// encrypted ones (CVE-2011-0411 style injection).
			c.reply("501 5.5.4 Unexpected data after STARTTLS")
			return errCloseSession
		}
		if err := c.reply("220 2.0.0 SMTP server ready"); err != nil {
			return err
		}
		tc := tls.Server(c.nc, c.srv.opts.TLSConfig)
		tc.SetDeadline(time.Now().Add(smtpCommandTimeout))
		if err := tc.Handshake(); err != nil {
			return fmt.Errorf("STARTTLS handshake: %w", err)
		}
		c.srv.mu.Lock()
		delete(c.srv.conns, c.nc)
		c.srv.conns[tc] = struct{}{}
		c.srv.mu.Unlock()
		c.nc = tc
		c.r.Reset(tc)
		c.w.Reset(tc)
		c.tls = true
		c.helo, c.login = "", ""
		c.resetTx()
		return nil

	case "AUTH":
		return c.auth(arg)

	case "MAIL":
		return c.mail(arg)

	case "RCPT":
		return c.rcpt(arg)

	case "DATA":
		return c.data()

	case "RSET":
		c.resetTx()
		return c.reply("250 2.0.0 Resetting")
	case "NOOP":
		return c.reply("250 2.0.0 OK")
	case "VRFY":
		return c.reply("252 2.1.5 Cannot VRFY user")
	case "QUIT":
		c.reply("221 2.0.0 Service closing transmission channel")
		return errCloseSession
	default:
		return c.reply("500 5.3.3 Unrecognized command")
	}
}

// xoauth2SMTPErrorChallenge is the error challenge of a refused XOAUTH2
// token (base64 JSON, as Google sends it); the client must answer it
// (with an empty line) before the 535 follows.
var xoauth2SMTPErrorChallenge = base64.StdEncoding.EncodeToString(
	[]byte(`{"status":"401","schemes":"bearer","scope":"https://outlook.office365.com/.default"}`))

const (
	replyAuthFailed   = "535 5.7.3 Authentication unsuccessful"
	replyAuthDisabled = "535 5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled for the Mailbox. Visit https://aka.ms/smtp_auth_disabled for more information."
	replySendAsDenied = "550 5.7.60 SMTP; Client does not have permissions to send as this sender"
	replyTooLarge     = "552 5.3.4 Message size exceeds fixed maximum message size"
)

func (c *smtpSession) auth(arg string) error {
	if c.helo == "" {
		return c.reply("503 5.5.2 Send hello first")
	}
	if c.login != "" {
		return c.reply("503 5.5.2 Already authenticated")
	}
	if c.hasTx {
		return c.reply("503 5.5.2 AUTH not permitted during a mail transaction")
	}
	if !c.authOffered() {
		return c.reply("530 5.7.0 Must issue a STARTTLS command first")
	}
	mech, ir, hasIR := strings.Cut(arg, " ")
	mech = strings.ToUpper(mech)
	if !slices.Contains(c.mechanisms(), mech) {
		return c.reply("504 5.7.4 Unrecognized authentication type")
	}
	if !hasIR {
		if err := c.reply("334 "); err != nil {
			return err
		}
		line, err := c.readLine()
		if err != nil {
			return err
		}
		ir = line
	}
	ir = strings.TrimSpace(ir)
	if ir == "*" {
		return c.reply("501 5.0.0 Authentication cancelled")
	}
	resp, err := base64.StdEncoding.DecodeString(ir)
	if err != nil {
		return c.reply("501 5.5.2 Cannot decode AUTH response")
	}

	var user string
	ok := false
	switch mech {
	case "PLAIN":
		parts := bytes.Split(resp, []byte{0})
		if len(parts) == 3 && (len(parts[0]) == 0 || strings.EqualFold(string(parts[0]), string(parts[1]))) {
			user = string(parts[1])
			pw, found := c.srv.users[strings.ToLower(user)]
			ok = found && subtle.ConstantTimeCompare([]byte(pw), parts[2]) == 1
		}
	case "XOAUTH2":
		u, token, parsed := parseXOAuth2(resp)
		user = u
		if parsed {
			email, err := c.srv.opts.ValidateToken(token)
			switch {
			case err != nil:
				c.log.Info("devmail: SMTP XOAUTH2 token rejected", zap.String("user", user), zap.Error(err))
			case !strings.EqualFold(email, user):
				c.log.Info("devmail: SMTP XOAUTH2 token is for another user", zap.String("user", user), zap.String("token_user", email))
			default:
				ok = true
			}
		}
		if !ok && !c.srv.authDisabled[strings.ToLower(user)] {
			// The error challenge; whatever the client answers, 535
			// follows.
			if err := c.reply("334 %s", xoauth2SMTPErrorChallenge); err != nil {
				return err
			}
			if _, err := c.readLine(); err != nil {
				return err
			}
		}
	}
	if f := c.srv.takeFault(SMTPAtAuth); f != nil {
		return c.fault(f)
	}
	if c.srv.authDisabled[strings.ToLower(user)] {
		c.log.Info("devmail: SMTP AUTH disabled for the mailbox", zap.String("user", user))
		return c.reply(replyAuthDisabled)
	}
	if !ok {
		c.log.Info("devmail: SMTP AUTH failed", zap.String("mechanism", mech), zap.String("user", user))
		return c.reply(replyAuthFailed)
	}
	c.login = user
	c.log = c.log.With(zap.String("user", user))
	c.log.Info("devmail: SMTP authenticated", zap.String("mechanism", mech))
	return c.reply("235 2.7.0 Authentication successful")
}

// pathArg parses "FROM:<addr> params" or "TO:<addr> params".
func pathArg(arg, prefix string) (addr string, params []string, ok bool) {
	if len(arg) < len(prefix) || !strings.EqualFold(arg[:len(prefix)], prefix) {
		return "", nil, false
	}
	rest := strings.TrimSpace(arg[len(prefix):])
	if !strings.HasPrefix(rest, "<") {
		return "", nil, false
	}
	end := strings.IndexByte(rest, '>')
	if end < 0 {
		return "", nil, false
	}
	return rest[1:end], strings.Fields(rest[end+1:]), true
}

func (c *smtpSession) mail(arg string) error {
	if c.helo == "" {
		return c.reply("503 5.5.2 Send hello first")
	}
	if c.login == "" && !c.srv.opts.AllowAnonymous {
		return c.reply("530 5.7.57 Client not authenticated to send mail. [%s]", c.srv.opts.Hostname)
	}
	if c.hasTx {
		return c.reply("503 5.5.1 Sender already specified")
	}
	from, params, ok := pathArg(arg, "FROM:")
	if !ok || (from != "" && !validAddress(from)) {
		return c.reply("501 5.1.7 Invalid address")
	}
	for _, p := range params {
		k, v, _ := strings.Cut(p, "=")
		switch strings.ToUpper(k) {
		case "SIZE":
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil || n < 0 {
				return c.reply("501 5.5.4 Invalid SIZE parameter")
			}
			if n > c.srv.opts.MaxMessageSize {
				return c.reply(replyTooLarge)
			}
		case "BODY", "SMTPUTF8", "AUTH":
		default:
			return c.reply("555 5.5.4 Unsupported parameter %s", k)
		}
	}
	if f := c.srv.takeFault(SMTPAtMail); f != nil {
		return c.fault(f)
	}
	if c.login != "" && !c.srv.opts.DeferSendAsCheck && !c.srv.opts.MaySendAs(c.login, from) {
		c.log.Info("devmail: SMTP SendAsDenied at MAIL FROM", zap.String("from", from))
		return c.reply(replySendAsDenied)
	}
	c.from, c.hasTx = from, true
	return c.reply("250 2.1.0 Sender OK")
}

func (c *smtpSession) rcpt(arg string) error {
	if !c.hasTx {
		return c.reply("503 5.5.1 Need MAIL command")
	}
	to, _, ok := pathArg(arg, "TO:")
	if !ok || !validAddress(to) {
		return c.reply("501 5.1.3 Invalid address")
	}
	if len(c.rcpts) >= c.srv.opts.MaxRecipients {
		return c.reply("452 4.5.3 Too many recipients")
	}
	if f := c.srv.takeFault(SMTPAtRcpt); f != nil {
		return c.fault(f)
	}
	c.rcpts = append(c.rcpts, to)
	return c.reply("250 2.1.5 Recipient OK")
}

func (c *smtpSession) data() error {
	if !c.hasTx {
		return c.reply("503 5.5.1 Need MAIL command")
	}
	if len(c.rcpts) == 0 {
		return c.reply("503 5.5.1 Need RCPT command")
	}
	if f := c.srv.takeFault(SMTPAtData); f != nil {
		return c.fault(f)
	}
	if err := c.reply("354 Start mail input; end with <CRLF>.<CRLF>"); err != nil {
		return err
	}
	c.nc.SetDeadline(time.Now().Add(smtpDataTimeout))
	raw, tooBig, err := readSMTPData(c.r, c.srv.opts.MaxMessageSize)
	if err != nil {
		return fmt.Errorf("DATA: %w", err)
	}
	from, rcpts := c.from, c.rcpts
	c.resetTx()
	if tooBig {
		return c.reply(replyTooLarge)
	}
	f := c.srv.takeFault(SMTPAtDataEnd)
	if f != nil && !f.Deliver {
		return c.fault(f)
	}
	if !c.headerFromAllowed(raw) {
		c.log.Info("devmail: SMTP SendAsDenied for the From header", zap.String("from", from))
		return c.reply(replySendAsDenied)
	}
	if d := c.srv.opts.Deliver; d != nil {
		if err := d(from, rcpts, raw); err != nil {
			c.log.Warn("devmail: SMTP delivery failed", zap.Error(err))
			return c.reply("451 4.3.0 Temporary server error. Please try again later")
		}
	}
	c.log.Info("devmail: SMTP message accepted", zap.String("from", from), zap.Strings("to", rcpts), zap.Int("size", len(raw)))
	if f != nil {
		return c.fault(f)
	}
	id := make([]byte, 8)
	rand.Read(id)
	return c.reply("250 2.0.0 OK <%s@%s> [Hostname=%s]", strings.ToUpper(hex.EncodeToString(id)), c.srv.opts.Hostname, c.srv.opts.Hostname)
}

// headerFromAllowed checks the From header against the login's Send As
// rights, as Exchange does at the end of DATA.
func (c *smtpSession) headerFromAllowed(raw []byte) bool {
	if c.login == "" {
		return true // anonymous (AllowAnonymous)
	}
	msg, err := mail.ReadMessage(bytes.NewReader(raw))
	if err != nil {
		return true // not a message we can read: leave it to the recipient
	}
	list, err := msg.Header.AddressList("From")
	if err != nil {
		return true
	}
	for _, a := range list {
		if !c.srv.opts.MaySendAs(c.login, a.Address) {
			return false
		}
	}
	return true
}

// readSMTPData reads a message up to the line "." and undoes
// dot-stuffing; line endings are kept as sent. Beyond max bytes the rest
// is read and discarded and tooBig is set.
func readSMTPData(r *bufio.Reader, max int64) (raw []byte, tooBig bool, err error) {
	var buf bytes.Buffer
	atLineStart := true
	add := func(p []byte) {
		if tooBig {
			return
		}
		if int64(buf.Len()+len(p)) > max {
			tooBig = true
			buf = bytes.Buffer{}
			return
		}
		buf.Write(p)
	}
	for {
		chunk, err := r.ReadSlice('\n')
		full := err == nil
		if err != nil && !errors.Is(err, bufio.ErrBufferFull) {
			return nil, false, err
		}
		if atLineStart && full && (string(chunk) == ".\r\n" || string(chunk) == ".\n") {
			return buf.Bytes(), tooBig, nil
		}
		if atLineStart && len(chunk) > 0 && chunk[0] == '.' {
			chunk = chunk[1:]
		}
		add(chunk)
		atLineStart = full
	}
}

func hostOf(a net.Addr) string {
	if ta, ok := a.(*net.TCPAddr); ok {
		return ta.IP.String()
	}
	h, _, err := net.SplitHostPort(a.String())
	if err != nil {
		return a.String()
	}
	return h
}

// DeliverLocal stores a message the way a mail server delivers it: into
// the INBOX of every recipient that has a mailbox on this server, and into
// the sender's "Sent Items" (marked \Seen) when the sender has one, so a
// mail sent through the dev SMTP server shows up in the dev mailboxes.
// Recipients without a mailbox here are skipped (the outside world); a
// recipient listed twice gets one copy. Its signature fits
// SMTPOptions.Deliver.
func (s *Server) DeliverLocal(from string, to []string, raw []byte) error {
	now := time.Now()
	seen := make(map[string]bool)
	var errs []error
	for _, rcpt := range to {
		key := strings.ToLower(rcpt)
		if seen[key] {
			continue
		}
		seen[key] = true
		acct := s.lookupAccount(rcpt)
		if acct == nil {
			continue
		}
		if _, err := acct.user.Append("INBOX", bytes.NewReader(raw), &imap.AppendOptions{Time: now}); err != nil {
			errs = append(errs, fmt.Errorf("devmail: deliver to %s: %w", rcpt, err))
		}
	}
	if acct := s.lookupAccount(from); acct != nil {
		if name, ok := acct.lookup("Sent Items"); ok {
			opts := &imap.AppendOptions{Time: now, Flags: []imap.Flag{imap.FlagSeen}}
			if _, err := acct.user.Append(name, bytes.NewReader(raw), opts); err != nil {
				errs = append(errs, fmt.Errorf("devmail: save to Sent Items of %s: %w", from, err))
			}
		}
	}
	return errors.Join(errs...)
}
