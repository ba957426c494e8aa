package smtp

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Reply is an SMTP server reply.
type Reply struct {
	Code int
	// Enhanced is the enhanced status code (RFC 3463) at the start of the
	// text, e.g. "5.7.60"; empty when the server sent none.
	Enhanced string
	// Lines are the texts of the reply's lines, without code and
	// enhanced code.
	Lines []string
}

// Text is the reply's text on one line.
func (r *Reply) Text() string { return strings.Join(r.Lines, " ") }

func (r *Reply) String() string {
	s := strconv.Itoa(r.Code)
	if r.Enhanced != "" {
		s += " " + r.Enhanced
	}
	if t := r.Text(); t != "" {
		s += " " + t
	}
	return s
}

// maxReplyLine and maxReplyLines bound what a server can make the client
// read.
const (
	maxReplyLine  = 4096
	maxReplyLines = 200
)

// errProtocol marks a reply that is not SMTP.
var errProtocol = errors.New("malformed SMTP reply")

// conn is one SMTP client connection. Every network step runs under a
// deadline of timeout, renewed per step (and per write while a message is
// streamed); canceling ctx, or Transport.Close, moves the deadline into
// the past so that a blocked step returns at once.
type conn struct {
	timeout time.Duration

	mu       sync.Mutex
	nc       net.Conn
	aborted  bool
	abortErr error

	r *bufio.Reader
	w *bufio.Writer

	ext       map[string]string // EHLO keywords (upper case) → parameters
	tls       bool
	tlsState  tls.ConnectionState
	commands  int // commands sent, for Result.Requests
	stopWatch func() bool
}

func newConn(ctx context.Context, nc net.Conn, timeout time.Duration) *conn {
	c := &conn{nc: nc, timeout: timeout}
	c.r = bufio.NewReaderSize(deadlineReader{c}, 4096)
	c.w = bufio.NewWriterSize(deadlineWriter{c}, 64<<10)
	c.stopWatch = context.AfterFunc(ctx, func() { c.abort(context.Cause(ctx)) })
	return c
}

// abort makes every pending and future network step fail at once.
func (c *conn) abort(cause error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.aborted {
		c.aborted, c.abortErr = true, cause
	}
	c.nc.SetDeadline(time.Unix(1, 0))
}

// arm sets the deadline of the next step.
func (c *conn) arm() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.aborted {
		c.nc.SetDeadline(time.Unix(1, 0))
		return
	}
	c.nc.SetDeadline(time.Now().Add(c.timeout))
}

func (c *conn) netConn() net.Conn {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.nc
}

// close closes the connection without QUIT.
func (c *conn) close() {
	c.stopWatch()
	c.netConn().Close()
}

// quit says goodbye (bounded by the timeout, at most 5 s) and closes.
func (c *conn) quit() {
	c.timeout = min(c.timeout, 5*time.Second)
	if _, err := fmt.Fprintf(c.w, "QUIT\r\n"); err == nil && c.w.Flush() == nil {
		c.commands++
		_, _ = c.r.ReadString('\n')
	}
	c.close()
}

// wrapNetErr turns a failed network step into a readable error that
// keeps the cause for errors.Is (context errors, net.Error).
func (c *conn) wrapNetErr(op string, err error) error {
	c.mu.Lock()
	aborted, cause := c.aborted, c.abortErr
	c.mu.Unlock()
	if aborted && cause != nil {
		return fmt.Errorf("%s: %w", op, cause)
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return fmt.Errorf("%s: no response within %s: %w", op, c.timeout, err)
	}
	if errors.Is(err, io.EOF) {
		return fmt.Errorf("%s: connection closed by the server: %w", op, io.ErrUnexpectedEOF)
	}
	return fmt.Errorf("%s: %w", op, err)
}

type deadlineReader struct{ c *conn }

func (d deadlineReader) Read(p []byte) (int, error) {
	d.c.arm()
	return d.c.netConn().Read(p)
}

type deadlineWriter struct{ c *conn }

func (d deadlineWriter) Write(p []byte) (int, error) {
	d.c.arm()
	return d.c.netConn().Write(p)
}

// readReply reads a (multi-line) reply.
func (c *conn) readReply() (*Reply, error) {
	r := &Reply{}
	for {
		line, err := c.readLine()
		if err != nil {
			return nil, err
		}
		if len(line) < 3 {
			return nil, fmt.Errorf("%w: %q", errProtocol, line)
		}
		code, err := strconv.Atoi(line[:3])
		if err != nil || code < 200 || code > 599 || (r.Code != 0 && code != r.Code) {
			return nil, fmt.Errorf("%w: %q", errProtocol, line)
		}
		r.Code = code
		sep, text := byte(' '), ""
		if len(line) > 3 {
			sep, text = line[3], line[4:]
		}
		if sep != ' ' && sep != '-' {
			return nil, fmt.Errorf("%w: %q", errProtocol, line)
		}
		if enh, rest, ok := splitEnhanced(text, code); ok {
			if r.Enhanced == "" {
				r.Enhanced = enh
			}
			text = rest
		}
		r.Lines = append(r.Lines, text)
		if sep == ' ' {
			return r, nil
		}
		if len(r.Lines) >= maxReplyLines {
			return nil, fmt.Errorf("%w: more than %d lines", errProtocol, maxReplyLines)
		}
	}
}

func (c *conn) readLine() (string, error) {
	var b []byte
	for {
		chunk, err := c.r.ReadSlice('\n')
		b = append(b, chunk...)
		if len(b) > maxReplyLine {
			return "", fmt.Errorf("%w: line longer than %d bytes", errProtocol, maxReplyLine)
		}
		if errors.Is(err, bufio.ErrBufferFull) {
			continue
		}
		if err != nil {
			return "", err
		}
		return strings.TrimRight(string(b), "\r\n"), nil
	}
}

// splitEnhanced splits "5.7.60 text" into the enhanced code and the
// text; the class must match the reply code's first digit.
func splitEnhanced(text string, code int) (enh, rest string, ok bool) {
	word, rest, _ := strings.Cut(text, " ")
	parts := strings.Split(word, ".")
	if len(parts) != 3 || parts[0] != strconv.Itoa(code/100) {
		return "", text, false
	}
	for _, p := range parts[1:] {
		if p == "" || len(p) > 3 {
			return "", text, false
		}
		for _, r := range p {
			if r < '0' || r > '9' {
				return "", text, false
			}
		}
	}
	return word, rest, true
}

// cmd sends one command line and reads the reply.
func (c *conn) cmd(line string) (*Reply, error) {
	if err := c.send(line); err != nil {
		return nil, err
	}
	return c.readReply()
}

func (c *conn) send(line string) error {
	if strings.ContainsAny(line, "\r\n") {
		return fmt.Errorf("smtp: line break in command")
	}
	if _, err := c.w.WriteString(line + "\r\n"); err != nil {
		return err
	}
	c.commands++
	return c.w.Flush()
}

// hello sends EHLO and records the extensions.
func (c *conn) hello(name string) (*Reply, error) {
	r, err := c.cmd("EHLO " + name)
	if err != nil {
		return nil, err
	}
	if r.Code != 250 {
		return r, nil
	}
	c.ext = make(map[string]string)
	for _, l := range r.Lines[1:] {
		k, v, _ := strings.Cut(l, " ")
		c.ext[strings.ToUpper(k)] = v
	}
	return r, nil
}

func (c *conn) has(ext string) bool {
	_, ok := c.ext[ext]
	return ok
}

// authMechs lists the AUTH mechanisms offered (upper case).
func (c *conn) authMechs() []string {
	return strings.Fields(strings.ToUpper(c.ext["AUTH"]))
}

// startTLS upgrades the connection after a 220 reply to STARTTLS.
func (c *conn) startTLS(ctx context.Context, cfg *tls.Config) error {
	if c.r.Buffered() > 0 {
		return fmt.Errorf("%w: data after the STARTTLS reply", errProtocol)
	}
	tc := tls.Client(c.netConn(), cfg)
	if err := c.handshake(ctx, tc); err != nil {
		return err
	}
	c.mu.Lock()
	c.nc = tc
	c.mu.Unlock()
	c.r.Reset(deadlineReader{c})
	c.w.Reset(deadlineWriter{c})
	c.tls = true
	c.tlsState = tc.ConnectionState()
	c.ext = nil
	return nil
}

func (c *conn) handshake(ctx context.Context, tc *tls.Conn) error {
	c.arm()
	hctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	return tc.HandshakeContext(hctx)
}

// xoauth2Response is the SASL XOAUTH2 initial response.
func xoauth2Response(user, token string) string {
	return base64.StdEncoding.EncodeToString([]byte("user=" + user + "\x01auth=Bearer " + token + "\x01\x01"))
}

// authXOAuth2 runs AUTH XOAUTH2 with an initial response. A server that
// refuses the token may answer 334 with an error challenge (base64 JSON);
// the client must answer it with an empty line, after which the final
// (5xx) reply follows. Not answering would leave the connection waiting
// for the client forever. challenge returns the decoded error challenge,
// if any.
func (c *conn) authXOAuth2(user, token string) (r *Reply, challenge string, err error) {
	if err := c.sendSecret("AUTH XOAUTH2 " + xoauth2Response(user, token)); err != nil {
		return nil, "", err
	}
	for range 3 {
		r, err = c.readReply()
		if err != nil || r.Code != 334 {
			return r, challenge, err
		}
		if dec, derr := base64.StdEncoding.DecodeString(strings.TrimSpace(r.Text())); derr == nil && len(dec) > 0 {
			challenge = string(dec)
		} else if t := strings.TrimSpace(r.Text()); t != "" {
			challenge = t
		}
		if err := c.send(""); err != nil {
			return nil, challenge, err
		}
	}
	return nil, challenge, fmt.Errorf("%w: AUTH XOAUTH2 did not end after 3 challenges", errProtocol)
}

// authPlain runs AUTH PLAIN with an initial response.
func (c *conn) authPlain(user, password string) (*Reply, error) {
	ir := base64.StdEncoding.EncodeToString([]byte("\x00" + user + "\x00" + password))
	if err := c.sendSecret("AUTH PLAIN " + ir); err != nil {
		return nil, err
	}
	r, err := c.readReply()
	if err != nil || r.Code != 334 {
		return r, err
	}
	// A server that ignored the initial response asks for it.
	if err := c.sendSecret(ir); err != nil {
		return nil, err
	}
	r, err = c.readReply()
	if err == nil && r.Code == 334 {
		// Cancel rather than loop.
		if err := c.send("*"); err != nil {
			return nil, err
		}
		r, err = c.readReply()
	}
	return r, err
}

// sendSecret is send for lines that must never appear in errors or logs.
func (c *conn) sendSecret(line string) error {
	if err := c.send(line); err != nil {
		return errors.New(strings.ReplaceAll(err.Error(), line, "AUTH ..."))
	}
	return nil
}
