package imap

import (
	"context"
	"encoding/base64"
	"errors"
	"io"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2/imapclient"

	"github.com/mailpipe/mailpipe/internal/auth"
	"github.com/mailpipe/mailpipe/internal/mailbox"
)

// hangGuard bounds calls that must return on their own; it is not a
// performance assertion.
const hangGuard = 30 * time.Second

// countingTokens is an auth.TokenSource with one token that counts calls.
type countingTokens struct {
	value       string
	tokens      atomic.Int32
	invalidated atomic.Int32
}

func (c *countingTokens) Token(context.Context) (auth.Token, error) {
	c.tokens.Add(1)
	return auth.Token{Value: c.value, ExpiresOn: time.Now().Add(time.Hour)}, nil
}

func (c *countingTokens) Invalidate() { c.invalidated.Add(1) }

// within runs f and fails the test when it has not returned in time.
func within(t *testing.T, d time.Duration, what string, f func()) {
	t.Helper()
	done := make(chan struct{})
	go func() { defer close(done); f() }()
	select {
	case <-done:
	case <-time.After(d):
		t.Fatalf("%s did not return within %v", what, d)
	}
}

func wantKind(t *testing.T, what string, err error, kind mailbox.Kind, contains ...string) *mailbox.Error {
	t.Helper()
	var me *mailbox.Error
	if !errors.As(err, &me) {
		t.Fatalf("%s: %v (%T), want a *mailbox.Error", what, err, err)
	}
	if me.Kind != kind {
		t.Errorf("%s: kind %v, want %v: %v", what, me.Kind, kind, err)
	}
	for _, c := range contains {
		if !strings.Contains(err.Error(), c) {
			t.Errorf("%s: %q does not mention %q", what, err, c)
		}
	}
	return me
}

// The XOAUTH2 initial response goes out exactly; a rejected token's error
// challenge is answered with 0x01 and described in the Auth error, and
// the token is invalidated.
func TestXOAuth2Rejected(t *testing.T) {
	const challenge = `{"status":"401","schemes":"bearer","scope":"https://outlook.office365.com/.default"}`
	var ir, answer atomic.Value
	srv := startFakeIMAP(t, func(c *fakeConn, tag, cmd, args string) bool {
		if cmd != "AUTHENTICATE" {
			return false
		}
		mech, resp, _ := strings.Cut(args, " ")
		if mech != "XOAUTH2" {
			c.send(tag + " NO unsupported")
			return true
		}
		ir.Store(resp)
		c.send("+ " + base64.StdEncoding.EncodeToString([]byte(challenge)))
		line, _ := c.readLine()
		answer.Store(line)
		c.send(tag + " NO AUTHENTICATE failed.")
		return true
	})
	tokens := &countingTokens{value: "tok.en.value"}
	src := newTestSource(t, testMailbox(t, srv.ln.Addr().String(), 10*time.Second), tokens)
	var err error
	within(t, hangGuard, "List", func() { _, err = src.List(t.Context(), 0) })
	wantKind(t, "rejected token", err, mailbox.Auth, "invoices@example.test", "server status 401, expects scope https://outlook.office365.com/.default")

	got, _ := base64.StdEncoding.DecodeString(ir.Load().(string))
	if want := "user=invoices@example.test\x01auth=Bearer tok.en.value\x01\x01"; string(got) != want {
		t.Errorf("initial response %q, want %q", got, want)
	}
	if a := answer.Load(); a != "AQ==" {
		t.Errorf("answer to the error challenge %q, want \"AQ==\" (0x01)", a)
	}
	if n := tokens.invalidated.Load(); n != 1 {
		t.Errorf("token invalidated %d times, want 1", n)
	}
}

// Exchange's "NO AUTHENTICATE failed." without a challenge is Auth.
func TestXOAuth2FailedWithoutChallenge(t *testing.T) {
	srv := startFakeIMAP(t, func(c *fakeConn, tag, cmd, args string) bool {
		if cmd == "AUTHENTICATE" {
			c.send(tag + " NO AUTHENTICATE failed.")
			return true
		}
		return false
	})
	src := newTestSource(t, testMailbox(t, srv.ln.Addr().String(), 10*time.Second), &countingTokens{value: "x"})
	_, err := src.List(t.Context(), 0)
	wantKind(t, "AUTHENTICATE failed", err, mailbox.Auth, "AUTHENTICATE failed")
}

// Exchange accepts the token and then refuses SELECT with "BAD User is
// authenticated but not connected." when the app has no access to the
// mailbox: an Auth problem, not a permanent bad request.
func TestExchangeNotConnected(t *testing.T) {
	srv := startFakeIMAP(t, func(c *fakeConn, tag, cmd, args string) bool {
		if cmd == "SELECT" {
			c.send(tag + " BAD User is authenticated but not connected.")
			return true
		}
		return false
	})
	src := newTestSource(t, testMailbox(t, srv.ln.Addr().String(), 10*time.Second), &countingTokens{value: "x"})
	_, err := src.List(t.Context(), 0)
	wantKind(t, "SELECT refused", err, mailbox.Auth, "not connected")
}

// Exchange's throttling reply carries its backoff.
func TestThrottled(t *testing.T) {
	var throttle atomic.Bool
	throttle.Store(true)
	srv := startFakeIMAP(t, func(c *fakeConn, tag, cmd, args string) bool {
		if cmd == "SELECT" && throttle.Load() {
			c.send(tag + " BAD Request is throttled. Suggested Backoff Time: 155 milliseconds")
			return true
		}
		return false
	})
	src := newTestSource(t, testMailbox(t, srv.ln.Addr().String(), 10*time.Second), &countingTokens{value: "x"})
	_, err := src.List(t.Context(), 0)
	me := wantKind(t, "throttled SELECT", err, mailbox.Throttled)
	if me.RetryAfter != 155*time.Millisecond {
		t.Errorf("RetryAfter %v, want 155ms", me.RetryAfter)
	}
	// The session is still good: the next List works on it.
	throttle.Store(false)
	if _, err := src.List(t.Context(), 0); err != nil {
		t.Errorf("List after throttling: %v", err)
	}
}

// "* BYE Session invalidated - AccessTokenExpired" ends the session; the
// error says so, and the reconnect gets a new token (Invalidate, then
// Token).
func TestByeAccessTokenExpired(t *testing.T) {
	srv := startFakeIMAP(t, func(c *fakeConn, tag, cmd, args string) bool {
		if cmd == "SELECT" && c.N == 1 {
			c.send("* BYE Session invalidated - AccessTokenExpired")
			c.Close()
			return true
		}
		return false
	})
	tokens := &countingTokens{value: "x"}
	src := newTestSource(t, testMailbox(t, srv.ln.Addr().String(), 10*time.Second), tokens)
	_, err := src.List(t.Context(), 0)
	wantKind(t, "List on a session the server ended", err, mailbox.Transient, "AccessTokenExpired")
	if n := tokens.invalidated.Load(); n != 0 {
		t.Errorf("Invalidate called %d times before the reconnect", n)
	}
	if _, err := src.List(t.Context(), 0); err != nil {
		t.Fatalf("List after the BYE: %v", err)
	}
	if n := tokens.invalidated.Load(); n != 1 {
		t.Errorf("Invalidate called %d times, want 1", n)
	}
	if n := tokens.tokens.Load(); n != 2 {
		t.Errorf("Token called %d times, want 2 (one per login)", n)
	}
	if n := srv.connections(); n != 2 {
		t.Errorf("%d connections, want 2", n)
	}
}

// Another BYE does not invalidate the token.
func TestByeOtherReason(t *testing.T) {
	srv := startFakeIMAP(t, func(c *fakeConn, tag, cmd, args string) bool {
		if cmd == "SELECT" && c.N == 1 {
			c.send("* BYE Server shutting down")
			c.Close()
			return true
		}
		return false
	})
	tokens := &countingTokens{value: "x"}
	src := newTestSource(t, testMailbox(t, srv.ln.Addr().String(), 10*time.Second), tokens)
	if _, err := src.List(t.Context(), 0); err == nil {
		t.Fatal("List succeeded on a session the server ended")
	}
	if _, err := src.List(t.Context(), 0); err != nil {
		t.Fatalf("List after the BYE: %v", err)
	}
	if n := tokens.invalidated.Load(); n != 0 {
		t.Errorf("Invalidate called %d times, want 0", n)
	}
}

func TestByeSniffer(t *testing.T) {
	for _, tc := range []struct {
		name   string
		writes []string
		want   string // "" for none
	}{
		{"whole line", []string{"* OK hi\r\n* BYE Session invalidated - AccessTokenExpired\r\n"}, "Session invalidated - AccessTokenExpired"},
		{"split in the marker", []string{"* OK hi\r\n* B", "YE Session invalidated - AccessTokenExpired\r\n"}, "Session invalidated - AccessTokenExpired"},
		{"split in the text", []string{"* BYE Session inval", "idated - AccessTokenExpired\r\n"}, "Session invalidated - AccessTokenExpired"},
		{"at the end without CRLF", []string{"T1 OK done\r\n* BYE Session invalidated - AccessTokenExpired"}, "Session invalidated - AccessTokenExpired"},
		{"mid-line", []string{"* 1 FETCH (BODY[] {40}\r\nSubject: x * BYE Session invalidated\r\n)\r\n"}, ""},
		{"line split, not a BYE", []string{"Subject: x", " * BYE Session invalidated\r\n"}, ""},
		{"none", []string{"* OK [CAPABILITY IMAP4rev1] ready\r\n", "T1 OK done\r\n"}, ""},
		{"client line in between", []string{"* OK ready\r\n", "T1 NOOP\r\n", "* BYE Autologout; idle for too long\r\n"}, "Autologout; idle for too long"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var b byeSniffer
			for _, w := range tc.writes {
				if n, err := b.Write([]byte(w)); n != len(w) || err != nil {
					t.Fatalf("Write = %d, %v", n, err)
				}
			}
			got := b.bye.Load()
			switch {
			case tc.want == "" && got != nil:
				t.Errorf("BYE %q recorded, want none", *got)
			case tc.want != "" && (got == nil || *got != tc.want):
				t.Errorf("BYE %v, want %q", got, tc.want)
			}
		})
	}
}

// A server that accepts the connection and never greets: connecting fails
// with a Transient error after imap.timeout.
func TestSilentServer(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 4)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			accepted <- c // held open, silent
		}
	}()
	t.Cleanup(func() {
		for {
			select {
			case c := <-accepted:
				c.Close()
			default:
				return
			}
		}
	})
	src := newTestSource(t, testMailbox(t, ln.Addr().String(), time.Second), &countingTokens{value: "x"})
	within(t, hangGuard, "List against a silent server", func() { _, err = src.List(t.Context(), 0) })
	wantKind(t, "silent server", err, mailbox.Transient, "no response", "1s")
	// Check too.
	within(t, hangGuard, "Check against a silent server", func() { _, err = src.Check(t.Context(), false) })
	wantKind(t, "silent server", err, mailbox.Transient, "no response")
}

// A context canceled while the server is silent ends the wait.
func TestSilentServerContext(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		var held []net.Conn
		defer func() {
			for _, c := range held {
				c.Close()
			}
		}()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			held = append(held, c)
		}
	}()
	src := newTestSource(t, testMailbox(t, ln.Addr().String(), time.Hour), &countingTokens{value: "x"})
	ctx, cancel := context.WithCancel(t.Context())
	time.AfterFunc(100*time.Millisecond, cancel)
	within(t, hangGuard, "List with a canceled context", func() { _, err = src.List(ctx, 0) })
	if err == nil {
		t.Fatal("List succeeded")
	}
}

// drop() invalidates the token only for an AccessTokenExpired BYE.
func TestDropInvalidates(t *testing.T) {
	for _, tc := range []struct {
		bye  string
		want int32
	}{
		{"Session invalidated - AccessTokenExpired", 1},
		{"Logging out", 0},
		{"", 0},
	} {
		a, b := net.Pipe()
		defer b.Close()
		tokens := &countingTokens{value: "x"}
		s, err := New(Options{Mailbox: testMailbox(t, "127.0.0.1:1", time.Second), Tokens: tokens})
		if err != nil {
			t.Fatal(err)
		}
		sess := &session{raw: a, sniff: &byeSniffer{}}
		if tc.bye != "" {
			sess.sniff.Write([]byte("* BYE " + tc.bye + "\r\n"))
		}
		sess.c = imapclient.New(a, nil) // waits for a greeting that never comes
		s.conn = sess
		s.drop()
		if s.conn != nil {
			t.Error("drop left the session")
		}
		if !sess.dead.Load() {
			t.Error("drop did not close the connection")
		}
		if n := tokens.invalidated.Load(); n != tc.want {
			t.Errorf("BYE %q: Invalidate called %d times, want %d", tc.bye, n, tc.want)
		}
		if _, err := b.Read(make([]byte, 1)); !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrClosedPipe) {
			t.Errorf("peer read after drop: %v, want EOF", err)
		}
	}
}
