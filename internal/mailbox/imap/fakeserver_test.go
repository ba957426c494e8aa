package imap

import (
	"bufio"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"

	"github.com/mailpipe/mailpipe/internal/config"
)

// fakeIMAP is a scripted IMAP server on loopback for the conversations a
// real server cannot be made to have (Exchange's replies, a BYE at a chosen
// moment). It answers the commands the source sends with an empty mailbox
// holding the folders INBOX/Import, INBOX/Processed and INBOX/Error;
// handle can take over any command.
type fakeIMAP struct {
	t  *testing.T
	ln net.Listener
	// handle, when set, is offered every command first; it returns true
	// when it answered.
	handle func(c *fakeConn, tag, cmd, args string) bool

	mu    sync.Mutex
	conns int
	lines []string // every line received, prefixed with the connection number
}

// fakeConn is one client connection to a fakeIMAP.
type fakeConn struct {
	net.Conn
	N int // 1 for the first connection
	r *bufio.Reader
}

func (c *fakeConn) send(lines ...string) {
	for _, l := range lines {
		fmt.Fprintf(c.Conn, "%s\r\n", l)
	}
}

func (c *fakeConn) readLine() (string, error) {
	l, err := c.r.ReadString('\n')
	return strings.TrimRight(l, "\r\n"), err
}

func startFakeIMAP(t *testing.T, handle func(c *fakeConn, tag, cmd, args string) bool) *fakeIMAP {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeIMAP{t: t, ln: ln, handle: handle}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			f.mu.Lock()
			f.conns++
			n := f.conns
			f.mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer conn.Close()
				f.serve(&fakeConn{Conn: conn, N: n, r: bufio.NewReader(conn)})
			}()
		}
	}()
	return f
}

func (f *fakeIMAP) serve(c *fakeConn) {
	_ = c.SetDeadline(time.Now().Add(2 * time.Minute))
	c.send("* OK [CAPABILITY IMAP4rev1 SASL-IR AUTH=XOAUTH2 AUTH=PLAIN] fake server ready")
	for {
		line, err := c.readLine()
		if err != nil {
			return
		}
		f.mu.Lock()
		f.lines = append(f.lines, strconv.Itoa(c.N)+": "+line)
		f.mu.Unlock()
		tag, rest, _ := strings.Cut(line, " ")
		cmd, args, _ := strings.Cut(rest, " ")
		cmd = strings.ToUpper(cmd)
		if cmd == "UID" {
			sub, subArgs, _ := strings.Cut(args, " ")
			cmd, args = "UID "+strings.ToUpper(sub), subArgs
		}
		if f.handle != nil && f.handle(c, tag, cmd, args) {
			continue
		}
		switch cmd {
		case "CAPABILITY":
			c.send("* CAPABILITY IMAP4rev1 SASL-IR AUTH=XOAUTH2 MOVE UIDPLUS", tag+" OK done")
		case "AUTHENTICATE", "LOGIN":
			c.send(tag + " OK logged in")
		case "LIST":
			c.send(`* LIST (\HasChildren) "/" INBOX`,
				`* LIST (\HasNoChildren) "/" INBOX/Import`,
				`* LIST (\HasNoChildren) "/" INBOX/Processed`,
				`* LIST (\HasNoChildren) "/" INBOX/Error`,
				tag+" OK done")
		case "SELECT", "EXAMINE":
			c.send("* 0 EXISTS", "* OK [UIDVALIDITY 7] ok", "* OK [UIDNEXT 1] ok", tag+" OK [READ-WRITE] selected")
		case "LOGOUT":
			c.send("* BYE logging out", tag+" OK bye")
			return
		default:
			c.send(tag + " OK done")
		}
	}
}

// received returns the lines the server received so far.
func (f *fakeIMAP) received() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.lines...)
}

func (f *fakeIMAP) connections() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.conns
}

// testMailbox is a configuration for a server at addr (plain IMAP).
func testMailbox(t *testing.T, addr string, timeout time.Duration) config.Mailbox {
	t.Helper()
	host, portStr, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	port, _ := strconv.Atoi(portStr)
	return config.Mailbox{
		Name: "invoices", Address: "invoices@example.test", Source: "imap",
		IMAP:    config.IMAP{Host: host, Port: port, Security: "insecure", Auth: "xoauth2", Timeout: timeout},
		Folders: config.Folders{Import: "INBOX/Import", Processed: "INBOX/Processed", Error: "INBOX/Error"},
	}
}

// newTestSource returns a Source for m logging to t, closed when t ends.
func newTestSource(t *testing.T, m config.Mailbox, tokens *countingTokens) *Source {
	t.Helper()
	opts := Options{Mailbox: m, Logger: zaptest.NewLogger(t)}
	if tokens != nil {
		opts.Tokens = tokens
	}
	s, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}
