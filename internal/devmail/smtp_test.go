package devmail

import (
	"bufio"
	"crypto/tls"
	"encoding/base64"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"
)

// delivered records what an SMTP server handed to Deliver.
type delivered struct {
	mu   sync.Mutex
	msgs []delivery
}

type delivery struct {
	from string
	to   []string
	raw  string
}

func (d *delivered) deliver(from string, to []string, raw []byte) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.msgs = append(d.msgs, delivery{from, append([]string(nil), to...), string(raw)})
	return nil
}

func (d *delivered) all() []delivery {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]delivery(nil), d.msgs...)
}

func startSMTP(t *testing.T, opts SMTPOptions) *SMTPServer {
	t.Helper()
	if opts.Logger == nil {
		opts.Logger = zaptest.NewLogger(t)
	}
	if opts.ValidateToken == nil {
		opts.ValidateToken = validateToken
	}
	s, err := StartSMTP(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return s
}

// wire is a raw SMTP client for checking the server's exact answers.
type wire struct {
	t    *testing.T
	conn net.Conn
	r    *bufio.Reader
}

func dialSMTP(t *testing.T, addr string) *wire {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	conn.SetDeadline(time.Now().Add(20 * time.Second))
	t.Cleanup(func() { conn.Close() })
	w := &wire{t: t, conn: conn, r: bufio.NewReader(conn)}
	w.expect("220 ")
	return w
}

// reply reads a whole (multi-line) reply.
func (w *wire) reply() string {
	w.t.Helper()
	var lines []string
	for {
		l, err := w.r.ReadString('\n')
		if err != nil {
			w.t.Fatalf("read reply: %v (so far %q)", err, lines)
		}
		l = strings.TrimRight(l, "\r\n")
		lines = append(lines, l)
		if len(l) < 4 || l[3] == ' ' {
			return strings.Join(lines, "\n")
		}
	}
}

func (w *wire) expect(prefix string) string {
	w.t.Helper()
	r := w.reply()
	if !strings.HasPrefix(r, prefix) {
		w.t.Fatalf("reply %q, want %q...", r, prefix)
	}
	return r
}

func (w *wire) send(line string) {
	w.t.Helper()
	if _, err := fmt.Fprintf(w.conn, "%s\r\n", line); err != nil {
		w.t.Fatal(err)
	}
}

func (w *wire) cmd(line, prefix string) string {
	w.t.Helper()
	w.send(line)
	return w.expect(prefix)
}

func (w *wire) startTLS(cfg *tls.Config) {
	w.t.Helper()
	w.cmd("STARTTLS", "220 2.0.0")
	tc := tls.Client(w.conn, cfg)
	if err := tc.Handshake(); err != nil {
		w.t.Fatal(err)
	}
	w.conn = tc
	w.r = bufio.NewReader(tc)
}

func xoauth2IR(user, token string) string {
	return base64.StdEncoding.EncodeToString([]byte("user=" + user + "\x01auth=Bearer " + token + "\x01\x01"))
}

func TestSMTPStartTLSAndXOAuth2(t *testing.T) {
	cert, pool := selfSignedCert(t)
	var d delivered
	s := startSMTP(t, SMTPOptions{TLSConfig: &tls.Config{Certificates: []tls.Certificate{cert}}, Deliver: d.deliver})
	w := dialSMTP(t, s.Addr())

	ehlo := w.cmd("EHLO client.example", "250-")
	if !strings.Contains(ehlo, "STARTTLS") || strings.Contains(ehlo, "AUTH") {
		t.Errorf("EHLO before TLS = %q: want STARTTLS and no AUTH", ehlo)
	}
	w.cmd("AUTH XOAUTH2 "+xoauth2IR(alice, "token-alice"), "530 5.7.0")
	w.cmd("MAIL FROM:<"+alice+">", "530 5.7.57")

	w.startTLS(&tls.Config{RootCAs: pool, ServerName: "localhost"})
	ehlo = w.cmd("EHLO client.example", "250-")
	if strings.Contains(ehlo, "STARTTLS") || !strings.Contains(ehlo, "AUTH XOAUTH2") || !strings.Contains(ehlo, "SIZE 36700160") {
		t.Errorf("EHLO after TLS = %q", ehlo)
	}

	// A refused token: error challenge, answered with an empty line, then
	// 535 5.7.3.
	ch := w.cmd("AUTH XOAUTH2 "+xoauth2IR(alice, "expired"), "334 ")
	dec, err := base64.StdEncoding.DecodeString(strings.TrimPrefix(ch, "334 "))
	if err != nil || !strings.Contains(string(dec), `"status":"401"`) {
		t.Errorf("error challenge %q (%s)", ch, dec)
	}
	w.cmd("", "535 5.7.3 Authentication unsuccessful")
	// A token for someone else.
	w.cmd("AUTH XOAUTH2 "+xoauth2IR(alice, "token-bob"), "334 ")
	w.cmd("", "535 5.7.3")
	// Without initial response.
	w.cmd("AUTH XOAUTH2", "334 ")
	w.cmd(xoauth2IR("BOB@fabrikam.example", "token-bob"), "235 2.7.0")
	w.cmd("AUTH XOAUTH2 "+xoauth2IR(alice, "token-alice"), "503")

	// Send As: bob may only send as himself.
	w.cmd("MAIL FROM:<"+alice+">", "550 5.7.60 SMTP; Client does not have permissions to send as this sender")
	w.cmd("MAIL FROM:<"+bob+"> SIZE=1000", "250 2.1.0")
	w.cmd("MAIL FROM:<"+bob+">", "503 5.5.1")
	w.cmd("RCPT TO:<someone@example.com>", "250 2.1.5")
	w.cmd("RCPT TO:<"+alice+">", "250 2.1.5")
	w.cmd("DATA", "354 ")
	w.send("From: <" + bob + ">\r\nTo: <someone@example.com>\r\nSubject: dots\r\n\r\n..leading dot\r\n..\r\nend")
	w.send(".")
	w.expect("250 2.0.0 OK <")
	w.cmd("NOOP", "250")
	w.cmd("RSET", "250")
	w.cmd("QUIT", "221")

	got := d.all()
	if len(got) != 1 {
		t.Fatalf("%d deliveries, want 1", len(got))
	}
	m := got[0]
	if m.from != bob || strings.Join(m.to, ",") != "someone@example.com,"+alice {
		t.Errorf("envelope %s → %v", m.from, m.to)
	}
	if want := "\r\n\r\n.leading dot\r\n.\r\nend\r\n"; !strings.HasSuffix(m.raw, want) {
		t.Errorf("message %q does not end with %q (dot-stuffing undone, CRLF kept)", m.raw, want)
	}
}

func TestSMTPSendAsAndAuthDisabled(t *testing.T) {
	var d delivered
	s := startSMTP(t, SMTPOptions{
		Users:            []User{{Address: alice, Password: alicePassword}},
		DeferSendAsCheck: true,
		AuthDisabled:     []string{bob},
		Deliver:          d.deliver,
	})
	w := dialSMTP(t, s.Addr())
	if ehlo := w.cmd("EHLO c", "250-"); !strings.Contains(ehlo, "AUTH PLAIN XOAUTH2") {
		t.Errorf("EHLO = %q", ehlo)
	}
	// SMTP AUTH disabled for bob: 5.7.139 whatever the credentials.
	w.cmd("AUTH XOAUTH2 "+xoauth2IR(bob, "token-bob"), "535 5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled")
	w.cmd("AUTH PLAIN "+base64.StdEncoding.EncodeToString([]byte("\x00"+alice+"\x00wrong")), "535 5.7.3")
	w.cmd("AUTH PLAIN "+base64.StdEncoding.EncodeToString([]byte("\x00"+alice+"\x00"+alicePassword)), "235")

	// Deferred check: MAIL FROM another mailbox passes, the From header
	// is refused at the end of DATA.
	w.cmd("MAIL FROM:<"+bob+">", "250")
	w.cmd("RCPT TO:<x@example.com>", "250")
	w.cmd("DATA", "354")
	w.send("From: Bob <" + bob + ">\r\n\r\nhi\r\n.")
	w.expect("550 5.7.60")
	if n := len(d.all()); n != 0 {
		t.Errorf("%d deliveries after SendAsDenied", n)
	}
	// Too large, announced and not.
	w.cmd("MAIL FROM:<"+alice+"> SIZE=99999999999", "552 5.3.4")
	w.cmd("QUIT", "221")
}

func TestSMTPSizeLimitAndFaults(t *testing.T) {
	var d delivered
	s := startSMTP(t, SMTPOptions{MaxMessageSize: 1000, Deliver: d.deliver})
	login := func() *wire {
		w := dialSMTP(t, s.Addr())
		w.cmd("EHLO c", "250")
		w.cmd("AUTH XOAUTH2 "+xoauth2IR(alice, "token-alice"), "235")
		return w
	}
	send := func(w *wire, body string, want string) {
		t.Helper()
		w.cmd("MAIL FROM:<"+alice+">", "250")
		w.cmd("RCPT TO:<x@example.com>", "250")
		w.cmd("DATA", "354")
		w.send("From: " + alice + "\r\n\r\n" + body + "\r\n.")
		w.expect(want)
	}
	w := login()
	send(w, strings.Repeat("x", 2000), "552 5.3.4")
	send(w, "small", "250")

	s.InjectFault(SMTPFault{At: SMTPAtDataEnd, Reply: "451 4.7.500 Server busy"})
	send(w, "again", "451 4.7.500")
	s.InjectFault(SMTPFault{At: SMTPAtMail, Reply: "421 4.3.2 Service not available"})
	w.cmd("MAIL FROM:<"+alice+">", "421 4.3.2")
	if _, err := w.r.ReadByte(); err == nil {
		t.Error("connection still open after 421")
	}

	// Dropped after the message was delivered.
	w = login()
	s.InjectFault(SMTPFault{At: SMTPAtDataEnd, Drop: true, Deliver: true})
	w.cmd("MAIL FROM:<"+alice+">", "250")
	w.cmd("RCPT TO:<x@example.com>", "250")
	w.cmd("DATA", "354")
	w.send("From: " + alice + "\r\n\r\ndropped\r\n.")
	if _, err := w.r.ReadByte(); err == nil {
		t.Error("connection not dropped")
	}
	got := d.all()
	if len(got) != 2 || !strings.Contains(got[1].raw, "dropped") {
		t.Errorf("deliveries %d, want the small one and the dropped one", len(got))
	}

	// A hanging server is released by Close.
	w = login()
	s.InjectFault(SMTPFault{At: SMTPAtRcpt, Hang: true})
	w.cmd("MAIL FROM:<"+alice+">", "250")
	w.send("RCPT TO:<x@example.com>")
	w.conn.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
	if _, err := w.r.ReadByte(); err == nil {
		t.Error("hanging server answered")
	}
}

func TestSMTPImplicitTLS(t *testing.T) {
	cert, pool := selfSignedCert(t)
	s := startSMTP(t, SMTPOptions{TLSConfig: &tls.Config{Certificates: []tls.Certificate{cert}}, ImplicitTLS: true})
	conn, err := tls.Dial("tcp", s.Addr(), &tls.Config{RootCAs: pool, ServerName: "localhost"})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(20 * time.Second))
	w := &wire{t: t, conn: conn, r: bufio.NewReader(conn)}
	w.expect("220 ")
	if ehlo := w.cmd("EHLO c", "250"); strings.Contains(ehlo, "STARTTLS") || !strings.Contains(ehlo, "AUTH XOAUTH2") {
		t.Errorf("EHLO = %q", ehlo)
	}
	w.cmd("AUTH XOAUTH2 "+xoauth2IR(alice, "token-alice"), "235")

	if _, err := StartSMTP(SMTPOptions{ImplicitTLS: true}); err == nil {
		t.Error("ImplicitTLS without TLSConfig accepted")
	}
	if _, err := StartSMTP(SMTPOptions{TLSConfig: &tls.Config{}}); err == nil {
		t.Error("TLSConfig without certificate accepted")
	}
}

func TestDeliverLocal(t *testing.T) {
	s := startServer(t, nil)
	raw := []byte("From: <" + alice + ">\r\nTo: <" + bob + ">\r\nSubject: hi\r\n\r\nhello\r\n")
	if err := s.DeliverLocal(alice, []string{strings.ToUpper(bob), bob, "outside@example.com"}, raw); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ user, folder string }{{bob, "INBOX"}, {alice, "Sent Items"}} {
		if n, err := s.Count(c.user, c.folder); err != nil || n != 1 {
			t.Errorf("%s %s: %d messages, %v; want 1", c.user, c.folder, n, err)
		}
	}
	if n, _ := s.Count(alice, "INBOX"); n != 0 {
		t.Errorf("sender's INBOX has %d messages", n)
	}
	// A sender without mailbox here: recipients only.
	if err := s.DeliverLocal("someone@example.com", []string{alice}, raw); err != nil {
		t.Fatal(err)
	}
	if n, _ := s.Count(alice, "INBOX"); n != 1 {
		t.Errorf("INBOX of %s has %d messages, want 1", alice, n)
	}

	// Through the dev SMTP server.
	smtp := startSMTP(t, SMTPOptions{Deliver: s.DeliverLocal})
	w := dialSMTP(t, smtp.Addr())
	w.cmd("EHLO c", "250")
	w.cmd("AUTH XOAUTH2 "+xoauth2IR(bob, "token-bob"), "235")
	w.cmd("MAIL FROM:<"+bob+">", "250")
	w.cmd("RCPT TO:<"+alice+">", "250")
	w.cmd("DATA", "354")
	w.send("From: <" + bob + ">\r\nSubject: reply\r\n\r\nthanks\r\n.")
	w.expect("250")
	if n, _ := s.Count(alice, "INBOX"); n != 2 {
		t.Errorf("INBOX of %s has %d messages, want 2", alice, n)
	}
	if n, _ := s.Count(bob, "Sent Items"); n != 1 {
		t.Errorf("Sent Items of %s has %d messages, want 1", bob, n)
	}
}
