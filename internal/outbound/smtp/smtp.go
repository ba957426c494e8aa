// Package smtp is an outbound.Transport that submits mail over SMTP:
// smtp.office365.com:587 with STARTTLS and AUTH XOAUTH2 for Microsoft 365
// (a token for https://outlook.office365.com/.default with the app
// permission SMTP.SendAsApp, or a delegated token with
// https://outlook.office.com/SMTP.Send), or AUTH PLAIN with a password for
// other servers.
//
// Each Send opens one connection: connect, STARTTLS (or implicit TLS),
// EHLO, AUTH, MAIL FROM, RCPT TO for every To, Cc and Bcc recipient, DATA
// with the MIME message streamed from the job (attachments are read from
// the Attachments opener piece by piece and base64-encoded on the way, so
// a large attachment is never held in memory), then QUIT. Every network
// step runs under Options.Timeout, renewed per step and per write while
// the message is streamed; canceling the context aborts the step at once.
//
// # Idempotency
//
// outbound.Transport asks Send to be idempotent per job id by finding an
// earlier send. SMTP has no way to look up an earlier submission, so this
// transport cannot find one; what it guarantees instead:
//
//   - A failure before the message was handed over (before the final "."
//     of DATA was written in full, or any negative reply) means the server
//     did not take the message: such errors are Transient, Throttled, Auth
//     or Permanent, and sending again cannot make a duplicate.
//   - A 250 reply to the end of DATA means the mail was sent. The
//     transport remembers it for the life of the process: Send for the
//     same job id returns the Result again with AlreadySent set, without
//     connecting. Beyond that (another process, a restart), the sender's
//     per-job state must ensure that a job confirmed as sent is never
//     handed to Send again.
//   - A failure after the final "." was written and before the reply
//     arrived (connection dropped, timeout, context canceled) leaves the
//     outcome unknown: the server may have accepted the mail. Send
//     returns an Ambiguous error wrapping ErrMaybeSent, and every later
//     Send of the same job id in this process returns that error again
//     without sending. The sender must not resend such a job blindly; it
//     should report it failed (outcome unknown) rather than risk a
//     duplicate: a sender configured for this transport treats it as one
//     that cannot look up earlier sends. For that window the transport is at-most-once: a mail
//     may be lost (an operator checks the mailbox's Sent Items for the
//     Message-ID), never sent twice by this transport. The same holds
//     when the process dies in that window: the sender must record that
//     an attempt was under way before calling Send and not call it again
//     for a job whose earlier attempt has no recorded outcome.
//
// Send for a job id that is already being sent by this transport fails
// at once (Transient) instead of sending it a second time in parallel.
//
// # Sent Items
//
// Exchange Online keeps a copy of a message submitted over SMTP in the
// Sent Items of the authenticated mailbox (with Send As from a shared
// mailbox, in the authenticating account's, unless the shared mailbox has
// MessageCopyForSentAsEnabled). Job.SaveToSentItems cannot change that.
package smtp

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/mailpipe/mailpipe/internal/auth"
	"github.com/mailpipe/mailpipe/internal/outbound"
	"github.com/mailpipe/mailpipe/pkg/mailjob"
)

// Token scopes for SMTP AUTH XOAUTH2 against Exchange Online.
const (
	// ScopeSMTPApp is the app-only scope; the app needs the
	// SMTP.SendAsApp permission of Office 365 Exchange Online.
	ScopeSMTPApp = "https://outlook.office365.com/.default"
	// ScopeSMTPDelegated is the delegated permission of a signed-in
	// account.
	ScopeSMTPDelegated = "https://outlook.office.com/SMTP.Send"
)

// Security modes.
const (
	SecurityStartTLS = "starttls" // plaintext, then STARTTLS (port 587); the default
	SecurityTLS      = "tls"      // TLS from the first byte (port 465)
	SecurityInsecure = "insecure" // no TLS at all: local test servers only
)

// DefaultTimeout bounds each network step when Options.Timeout is zero.
const DefaultTimeout = time.Minute

// Options configure New.
type Options struct {
	// Host is the SMTP server, e.g. smtp.office365.com.
	Host string
	// Port defaults to 587 (465 with SecurityTLS).
	Port int
	// Security is SecurityStartTLS (default), SecurityTLS or
	// SecurityInsecure. With STARTTLS, a server that does not offer it is
	// an error: credentials never go out unencrypted.
	Security string
	// Username is the SASL user: the service account a delegated token
	// belongs to, or the mailbox for a password. Empty means the job's
	// From (app-only XOAUTH2 authenticates as the mailbox it sends as).
	Username string
	// Tokens gives the access token for AUTH XOAUTH2 (ScopeSMTPApp or
	// ScopeSMTPDelegated). It is invalidated when the server refuses the
	// token, so that the next attempt gets a fresh one.
	Tokens auth.TokenSource
	// Password is for AUTH PLAIN on servers other than Microsoft 365
	// (which no longer accepts passwords). At most one of Tokens and
	// Password may be set; with neither, the transport does not
	// authenticate (local relays and test servers only).
	Password string
	// CAFile adds trusted roots (PEM) to the system's, for a private CA or
	// a TLS-inspecting proxy.
	CAFile string
	// ServerName is the name the server's certificate must carry; default
	// Host.
	ServerName string
	// CertFile and KeyFile are a client certificate (PEM), for relays that
	// ask for one.
	CertFile, KeyFile string
	// Timeout bounds each network step: connecting, the TLS handshake,
	// each command's reply, each write of the message, and the wait for
	// the reply to the end of the message. Default DefaultTimeout.
	Timeout time.Duration
	// LocalName is the name sent with EHLO. Default: the host name when
	// it looks like a domain name, else "localhost".
	LocalName string
	// Logger receives debug events and warnings. Default: none.
	Logger *zap.Logger
}

// Transport sends mail over SMTP. It is safe for concurrent use.
type Transport struct {
	opts   Options
	addr   string
	tlsCfg *tls.Config
	log    *zap.Logger

	mu       sync.Mutex
	closed   bool
	active   map[*conn]struct{}
	inflight map[string]bool
	outcomes map[string]outcome
	order    []string // job ids in outcomes, oldest first
}

var _ outbound.Transport = (*Transport)(nil)

// outcome is what the transport knows of a job it handled.
type outcome struct {
	maybeSent bool // true: unknown (Ambiguous); false: sent
	messageID string
}

// maxOutcomes bounds the jobs remembered.
const maxOutcomes = 100_000

// New checks opts and returns a transport. It does not connect.
func New(opts Options) (*Transport, error) {
	if strings.TrimSpace(opts.Host) == "" {
		return nil, errors.New("smtp: no host")
	}
	switch opts.Security {
	case "":
		opts.Security = SecurityStartTLS
	case SecurityStartTLS, SecurityTLS, SecurityInsecure:
	default:
		return nil, fmt.Errorf("smtp: security %q: want starttls, tls or insecure", opts.Security)
	}
	if opts.Port == 0 {
		opts.Port = 587
		if opts.Security == SecurityTLS {
			opts.Port = 465
		}
	}
	if opts.Port < 0 || opts.Port > 65535 {
		return nil, fmt.Errorf("smtp: port %d out of range", opts.Port)
	}
	switch {
	case opts.Tokens != nil && opts.Password != "":
		return nil, errors.New("smtp: both a token source and a password; choose one")
	case opts.Password != "" && opts.Username == "":
		return nil, errors.New("smtp: a password needs a username")
	case opts.Tokens == nil && opts.Password == "" && opts.Username != "":
		return nil, errors.New("smtp: a username without a token source or password")
	case (opts.CertFile == "") != (opts.KeyFile == ""):
		return nil, errors.New("smtp: a client certificate needs both cert_file and key_file")
	}
	if opts.Timeout <= 0 {
		opts.Timeout = DefaultTimeout
	}
	if opts.LocalName == "" {
		opts.LocalName = defaultLocalName()
	}
	if strings.ContainsAny(opts.LocalName, " \r\n") {
		return nil, fmt.Errorf("smtp: local name %q", opts.LocalName)
	}
	log := opts.Logger
	if log == nil {
		log = zap.NewNop()
	}
	t := &Transport{
		opts:     opts,
		addr:     net.JoinHostPort(opts.Host, strconv.Itoa(opts.Port)),
		log:      log,
		active:   make(map[*conn]struct{}),
		inflight: make(map[string]bool),
		outcomes: make(map[string]outcome),
	}
	if opts.Security != SecurityInsecure {
		cfg := &tls.Config{ServerName: opts.Host, MinVersion: tls.VersionTLS12}
		if opts.ServerName != "" {
			cfg.ServerName = opts.ServerName
		}
		if opts.CertFile != "" {
			cert, err := tls.LoadX509KeyPair(opts.CertFile, opts.KeyFile)
			if err != nil {
				return nil, fmt.Errorf("smtp: client certificate: %w", err)
			}
			cfg.Certificates = []tls.Certificate{cert}
		}
		if opts.CAFile != "" {
			pem, err := os.ReadFile(opts.CAFile)
			if err != nil {
				return nil, fmt.Errorf("smtp: ca_file: %w", err)
			}
			pool, err := x509.SystemCertPool()
			if err != nil || pool == nil {
				pool = x509.NewCertPool()
			}
			if !pool.AppendCertsFromPEM(pem) {
				return nil, fmt.Errorf("smtp: ca_file %s: no PEM certificate", opts.CAFile)
			}
			cfg.RootCAs = pool
		}
		t.tlsCfg = cfg
	} else {
		log.Warn("smtp: security is insecure: credentials and mail travel unencrypted", zap.String("server", t.addr))
	}
	return t, nil
}

func defaultLocalName() string {
	h, err := os.Hostname()
	if err != nil || !strings.Contains(h, ".") || strings.ContainsAny(h, " \r\n") {
		return "localhost"
	}
	return h
}

// Send submits job's mail: one attempt, classified failures (see the
// package documentation for what it guarantees about duplicates).
// Result.Requests counts the SMTP commands sent.
func (t *Transport) Send(ctx context.Context, job *mailjob.Job, att outbound.Attachments) (res outbound.Result, err error) {
	if job == nil {
		return outbound.Result{}, invalidJobError(errors.New("no job"))
	}
	release, res, err := t.begin(job.JobID)
	if release == nil {
		return res, err
	}
	defer release()

	env, eerr := newEnvelope(job)
	if eerr != nil {
		return outbound.Result{}, invalidJobError(eerr)
	}
	res = outbound.Result{InternetMessageID: env.messageID}
	log := t.log.With(zap.String("job_id", job.JobID), zap.String("from", job.From))

	c, oerr := t.open(ctx, t.loginFor(job.From))
	if oerr != nil {
		log.Debug("smtp: send failed before the transaction", zap.Error(oerr))
		return res, oerr
	}
	defer func() {
		res.Requests = c.commands
		t.release(c)
	}()

	// MAIL FROM with the estimated size and SMTPUTF8 when needed.
	mailCmd := "MAIL FROM:<" + env.from + ">"
	if c.has("SIZE") {
		mailCmd += " SIZE=" + strconv.FormatInt(estimateSize(job), 10)
	}
	if env.utf8 {
		if !c.has("SMTPUTF8") {
			c.quit()
			return res, invalidJobError(fmt.Errorf("%w: an address has a non-ASCII local part and %s does not offer SMTPUTF8", errInvalid, t.addr))
		}
		mailCmd += " SMTPUTF8"
	}
	if r, err := c.cmd(mailCmd); err != nil {
		return res, t.failed(c, log, networkError(stepMail, c.wrapNetErr(stepMail, err)))
	} else if r.Code != 250 {
		return res, t.refused(c, log, classifyReply(stepMail, env.from, r, t.opts.Tokens != nil))
	}
	for _, rcpt := range env.rcpts {
		r, err := c.cmd("RCPT TO:<" + rcpt + ">")
		if err != nil {
			return res, t.failed(c, log, networkError(stepRcpt, c.wrapNetErr(stepRcpt, err)))
		}
		if r.Code != 250 && r.Code != 251 {
			return res, t.refused(c, log, classifyReply(stepRcpt, rcpt, r, t.opts.Tokens != nil))
		}
	}
	if r, err := c.cmd("DATA"); err != nil {
		return res, t.failed(c, log, networkError(stepData, c.wrapNetErr(stepData, err)))
	} else if r.Code != 354 {
		return res, t.refused(c, log, classifyReply(stepData, "", r, t.opts.Tokens != nil))
	}

	msg := &message{job: job, env: env, att: att, date: time.Now()}
	dw := newDotWriter(c.w)
	if err := msg.writeTo(ctx, dw); err != nil {
		// The terminating "." was not written: closing the connection
		// makes the server discard the partial message.
		c.close()
		return res, t.writeFailure(ctx, c, log, err)
	}
	if _, err := c.w.WriteString(dw.terminator()); err != nil {
		c.close()
		return res, networkError(stepMessage, c.wrapNetErr(stepMessage, err))
	}
	if err := c.w.Flush(); err != nil {
		// The write of the buffer that ends with the terminator failed,
		// so its last bytes did not reach the kernel (a failed write on
		// a socket, or on TLS whose last record is then incomplete): the
		// server has not seen the end of the message and drops it.
		c.close()
		return res, networkError(stepMessage, c.wrapNetErr(stepMessage, err))
	}
	// From here on the server may accept the mail at any moment.
	c.commands++
	r, err := c.readReply()
	if err != nil {
		c.close()
		t.remember(job.JobID, outcome{maybeSent: true, messageID: env.messageID})
		aerr := ambiguousError(c.wrapNetErr("waiting for the reply to the end of the message", err))
		log.Warn("smtp: outcome unknown, the mail may have been sent; it will not be sent again",
			zap.String("message_id", env.messageID), zap.Error(err))
		return res, aerr
	}
	if r.Code != 250 {
		return res, t.refused(c, log, classifyReply(stepDataEnd, "", r, t.opts.Tokens != nil))
	}
	t.remember(job.JobID, outcome{messageID: env.messageID})
	c.quit()
	log.Debug("smtp: sent", zap.String("message_id", env.messageID), zap.Int("recipients", len(env.rcpts)), zap.String("reply", r.String()))
	if !job.SavesToSentItems() {
		log.Debug("smtp: save_to_sent_items=false is not supported over SMTP: Exchange keeps a copy in Sent Items")
	}
	return res, nil
}

// begin marks job id in flight. A nil release means Send must return res
// and err at once: the job was sent or maybe sent before, is being sent
// right now, or the transport is closed.
func (t *Transport) begin(jobID string) (release func(), res outbound.Result, err error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return nil, res, &outbound.Error{Kind: outbound.Transient, ReasonCode: mailjob.ReasonInternal, Err: errors.New("smtp: transport closed")}
	}
	if o, ok := t.outcomes[jobID]; ok {
		if o.maybeSent {
			return nil, outbound.Result{InternetMessageID: o.messageID},
				ambiguousError(errors.New("an earlier attempt of this job ended that way"))
		}
		return nil, outbound.Result{InternetMessageID: o.messageID, AlreadySent: true}, nil
	}
	if t.inflight[jobID] {
		return nil, res, &outbound.Error{Kind: outbound.Transient, ReasonCode: mailjob.ReasonInternal,
			Err: fmt.Errorf("smtp: job %s is being sent by another attempt right now", jobID)}
	}
	t.inflight[jobID] = true
	return func() {
		t.mu.Lock()
		delete(t.inflight, jobID)
		t.mu.Unlock()
	}, res, nil
}

func (t *Transport) remember(jobID string, o outcome) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if _, ok := t.outcomes[jobID]; !ok {
		t.order = append(t.order, jobID)
	}
	t.outcomes[jobID] = o
	for len(t.order) > maxOutcomes {
		delete(t.outcomes, t.order[0])
		t.order = t.order[1:]
	}
}

func (t *Transport) loginFor(mailbox string) string {
	if t.opts.Username != "" {
		return t.opts.Username
	}
	return mailbox
}

// failed ends a connection after a network failure before the message
// was handed over.
func (t *Transport) failed(c *conn, log *zap.Logger, e *outbound.Error) error {
	c.close()
	log.Debug("smtp: send failed", zap.Error(e))
	return e
}

// refused ends a connection after a negative reply (politely: RSET is
// not needed before QUIT).
func (t *Transport) refused(c *conn, log *zap.Logger, e *outbound.Error) error {
	var re *ReplyError
	if errors.As(e, &re) && re.Reply.Code == 421 {
		c.close()
	} else {
		c.quit()
	}
	log.Debug("smtp: refused", zap.Error(e))
	return e
}

// writeFailure classifies a failure while the message was written.
func (t *Transport) writeFailure(ctx context.Context, c *conn, log *zap.Logger, err error) error {
	var ae *attachmentError
	switch {
	case errors.As(err, &ae):
		e := attachmentFailure(ctx, ae)
		log.Debug("smtp: attachment failed, message abandoned", zap.Error(e))
		return e
	case errors.Is(err, errInvalid):
		return invalidJobError(err)
	default:
		return networkError(stepMessage, c.wrapNetErr(stepMessage, err))
	}
}

// attachmentFailure classifies an attachment that could not be read: the
// opener's own *outbound.Error is kept; outbound.ErrAttachmentNotFound and
// outbound.ErrAttachmentMismatch (also reported when the content is
// longer or shorter than ObjectRef.Size) are permanent; other errors are
// transient.
func attachmentFailure(ctx context.Context, ae *attachmentError) *outbound.Error {
	var oe *outbound.Error
	if errors.As(ae.err, &oe) {
		c := *oe
		c.Err = ae
		return &c
	}
	e := &outbound.Error{Err: ae}
	var corrupt base64.CorruptInputError
	switch {
	case errors.Is(ae.err, outbound.ErrAttachmentNotFound) || errors.Is(ae.err, jetstream.ErrObjectNotFound):
		e.Kind, e.ReasonCode = outbound.Permanent, mailjob.ReasonAttachmentNotFound
	case errors.Is(ae.err, outbound.ErrAttachmentMismatch):
		e.Kind, e.ReasonCode = outbound.Permanent, mailjob.ReasonAttachmentMismatch
	case errors.As(ae.err, &corrupt):
		// Inline content_base64 that does not decode.
		e.Kind, e.ReasonCode = outbound.Permanent, mailjob.ReasonInvalidJob
	case ctx.Err() != nil:
		e.Kind, e.ReasonCode = outbound.Transient, mailjob.ReasonGraphUnavailable
	default:
		e.Kind, e.ReasonCode = outbound.Transient, mailjob.ReasonInternal
	}
	return e
}

// open connects, secures, greets and authenticates as user.
func (t *Transport) open(ctx context.Context, user string) (*conn, *outbound.Error) {
	var token string
	if t.opts.Tokens != nil {
		tok, err := t.opts.Tokens.Token(ctx)
		if err != nil {
			return nil, tokenError(err)
		}
		token = tok.Value
	}
	d := &net.Dialer{Timeout: t.opts.Timeout, KeepAlive: 30 * time.Second}
	nc, err := d.DialContext(ctx, "tcp", t.addr)
	if err != nil {
		return nil, networkError(stepConnect, fmt.Errorf("connect %s: %w", t.addr, err))
	}
	c := newConn(ctx, nc, t.opts.Timeout)
	if !t.track(c) {
		c.close()
		return nil, &outbound.Error{Kind: outbound.Transient, ReasonCode: mailjob.ReasonInternal, Err: errors.New("smtp: transport closed")}
	}
	fail := func(e *outbound.Error) (*conn, *outbound.Error) {
		t.release(c)
		c.close()
		return nil, e
	}
	netFail := func(step string, err error) (*conn, *outbound.Error) {
		return fail(networkError(step, c.wrapNetErr(step+" ("+t.addr+")", err)))
	}
	refused := func(step, addr string, r *Reply) (*conn, *outbound.Error) {
		return t.refusedOpen(c, classifyReply(step, addr, r, t.opts.Tokens != nil), r)
	}

	if t.opts.Security == SecurityTLS {
		tc := tls.Client(nc, t.tlsCfg)
		if err := c.handshake(ctx, tc); err != nil {
			return netFail("TLS handshake", err)
		}
		c.mu.Lock()
		c.nc = tc
		c.mu.Unlock()
		c.tls, c.tlsState = true, tc.ConnectionState()
	}
	r, err := c.readReply()
	if err != nil {
		return netFail(stepGreeting, err)
	}
	if r.Code != 220 {
		return refused(stepGreeting, "", r)
	}
	if r, err = c.hello(t.opts.LocalName); err != nil {
		return netFail(stepEHLO, err)
	} else if r.Code != 250 {
		return refused(stepEHLO, "", r)
	}
	if t.opts.Security == SecurityStartTLS {
		if !c.has("STARTTLS") {
			return fail(&outbound.Error{Kind: outbound.Transient, ReasonCode: mailjob.ReasonGraphUnavailable,
				Err: fmt.Errorf("%s does not offer STARTTLS; credentials are not sent without TLS (check host and port, or security)", t.addr)})
		}
		if r, err = c.cmd("STARTTLS"); err != nil {
			return netFail(stepSTARTTLS, err)
		} else if r.Code != 220 {
			return refused(stepSTARTTLS, "", r)
		}
		if err := c.startTLS(ctx, t.tlsCfg); err != nil {
			return netFail("TLS handshake", err)
		}
		if r, err = c.hello(t.opts.LocalName); err != nil {
			return netFail(stepEHLO, err)
		} else if r.Code != 250 {
			return refused(stepEHLO, "", r)
		}
	}

	mechs := c.authMechs()
	switch {
	case t.opts.Tokens != nil:
		if !slices.Contains(mechs, "XOAUTH2") {
			return fail(&outbound.Error{Kind: outbound.Auth, ReasonCode: mailjob.ReasonAuthFailed,
				Err: fmt.Errorf("%s does not offer AUTH XOAUTH2 (offers %q)", t.addr, strings.Join(mechs, " "))})
		}
		r, challenge, err := c.authXOAuth2(user, token)
		if err != nil {
			return netFail(stepAuth, err)
		}
		if r.Code != 235 {
			t.opts.Tokens.Invalidate()
			e := classifyReply(stepAuth, user, r, true)
			if challenge != "" {
				e.Err = fmt.Errorf("%w; XOAUTH2 error challenge %s", e.Err, describeChallenge(challenge))
			}
			return t.refusedOpen(c, e, r)
		}
	case t.opts.Password != "":
		if !slices.Contains(mechs, "PLAIN") {
			return fail(&outbound.Error{Kind: outbound.Auth, ReasonCode: mailjob.ReasonAuthFailed,
				Err: fmt.Errorf("%s does not offer AUTH PLAIN (offers %q)", t.addr, strings.Join(mechs, " "))})
		}
		r, err := c.authPlain(user, t.opts.Password)
		if err != nil {
			return netFail(stepAuth, err)
		}
		if r.Code != 235 {
			return t.refusedOpen(c, classifyReply(stepAuth, user, r, false), r)
		}
	}
	return c, nil
}

// refusedOpen ends a connection after a refusal during open: QUIT,
// except after 421 (the server is closing the connection anyway).
func (t *Transport) refusedOpen(c *conn, e *outbound.Error, r *Reply) (*conn, *outbound.Error) {
	if r.Code == 421 {
		c.close()
	} else {
		c.quit()
	}
	t.release(c)
	return nil, e
}

// describeChallenge shortens an XOAUTH2 error challenge for messages.
func describeChallenge(s string) string {
	s = strings.TrimSpace(s)
	if len(s) > 200 {
		s = s[:200]
	}
	return strings.ToValidUTF8(s, "")
}

func (t *Transport) track(c *conn) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return false
	}
	t.active[c] = struct{}{}
	return true
}

// release forgets c and closes it (idempotent).
func (t *Transport) release(c *conn) {
	t.mu.Lock()
	delete(t.active, c)
	t.mu.Unlock()
	c.close()
}

// CheckSendAs connects, secures the connection, authenticates as the
// transport would for mailbox, and sends MAIL FROM:<mailbox> followed by
// RSET: nothing is sent. The returned text says what that verified.
//
// It verifies: the server is reachable and its TLS certificate trusted;
// the token (or password) is accepted, so SMTP AUTH is enabled for the
// authenticating account; the server accepts mailbox as envelope sender.
// It cannot verify everything: Exchange Online checks the Send As right
// against the From header only when the message has been transmitted
// (550 5.7.60 as the answer to the end of DATA), so when the account is
// not the mailbox itself, an accepted MAIL FROM does not prove Send As;
// nor are recipients, message size or the mailbox's sending limits
// tested.
func (t *Transport) CheckSendAs(ctx context.Context, mailbox string) (string, error) {
	from, _, err := asciiDomain(mailbox)
	if err != nil {
		return "", invalidJobError(err)
	}
	user := t.loginFor(mailbox)
	c, oerr := t.open(ctx, user)
	if oerr != nil {
		return "", oerr
	}
	defer t.release(c)
	var b strings.Builder
	fmt.Fprintf(&b, "connected to %s", t.addr)
	switch {
	case c.tls && t.opts.Security == SecurityTLS:
		fmt.Fprintf(&b, " (implicit TLS, %s)", tls.VersionName(c.tlsState.Version))
	case c.tls:
		fmt.Fprintf(&b, " (STARTTLS, %s)", tls.VersionName(c.tlsState.Version))
	default:
		b.WriteString(" (no TLS)")
	}
	switch {
	case t.opts.Tokens != nil:
		fmt.Fprintf(&b, "; authenticated as %s with XOAUTH2", user)
	case t.opts.Password != "":
		fmt.Fprintf(&b, "; authenticated as %s with PLAIN", user)
	default:
		b.WriteString("; not authenticated (no credentials configured)")
	}
	r, err := c.cmd("MAIL FROM:<" + from + ">")
	if err != nil {
		c.close()
		return "", networkError(stepMail, c.wrapNetErr(stepMail, err))
	}
	if r.Code != 250 {
		e := classifyReply(stepMail, from, r, t.opts.Tokens != nil)
		c.quit()
		return b.String() + "; MAIL FROM:<" + from + "> refused", e
	}
	fmt.Fprintf(&b, "; MAIL FROM:<%s> accepted", from)
	if r, err := c.cmd("RSET"); err != nil {
		c.close()
		return "", networkError(stepRset, c.wrapNetErr(stepRset, err))
	} else if r.Code != 250 {
		c.quit()
		return "", classifyReply(stepRset, "", r, t.opts.Tokens != nil)
	}
	c.quit()
	b.WriteString(" and reset (nothing sent)")
	if t.opts.Tokens == nil && t.opts.Password == "" {
		b.WriteString(". Without authentication the server's rules for senders are unknown")
	} else if strings.EqualFold(user, mailbox) {
		b.WriteString(". Authenticated as the mailbox itself, so no Send As right is needed")
	} else {
		b.WriteString(". Not verified: the Send As right of " + user + " on " + mailbox +
			" (Exchange Online checks it against the From header only after the message was transmitted)")
	}
	b.WriteString("; recipients, message size limits and the mailbox's sending limits are not tested")
	return b.String(), nil
}

// Close aborts the connections in use and makes later Sends fail. It is
// safe to call more than once.
func (t *Transport) Close() error {
	t.mu.Lock()
	t.closed = true
	active := make([]*conn, 0, len(t.active))
	for c := range t.active {
		active = append(active, c)
	}
	t.mu.Unlock()
	for _, c := range active {
		c.abort(errors.New("smtp: transport closed"))
	}
	return nil
}
