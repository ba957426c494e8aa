package imap

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"syscall"
	"testing"
	"time"

	goimap "github.com/emersion/go-imap/v2"

	"github.com/mailpipe/mailpipe/internal/mailbox"
)

// Every response code of the table classifies as the table says, in a NO
// and in a BAD, and through classify.
func TestCodeKinds(t *testing.T) {
	if len(codeKinds) < 20 {
		t.Fatalf("codeKinds has %d entries; it should cover the RFC 5530 codes", len(codeKinds))
	}
	for code, want := range codeKinds {
		for _, typ := range []goimap.StatusResponseType{goimap.StatusResponseTypeNo, goimap.StatusResponseTypeBad} {
			ie := &goimap.Error{Type: typ, Code: code, Text: "something happened"}
			if got := kindOf(ie); got != want {
				t.Errorf("%s [%s]: kind %v, want %v", typ, code, got, want)
			}
			err := classify("select", "invoices", "INBOX/Import", fmt.Errorf("wrapped: %w", ie))
			var me *mailbox.Error
			if !errors.As(err, &me) {
				t.Fatalf("classify returned %T", err)
			}
			if me.Kind != want || me.Op != "select" || me.Mailbox != "invoices" || me.Folder != "INBOX/Import" || !errors.Is(err, ie) {
				t.Errorf("%s [%s]: classify = %+v", typ, code, me)
			}
			if want == mailbox.Throttled && me.RetryAfter != time.Second {
				t.Errorf("%s [%s]: RetryAfter %v, want the 1s default", typ, code, me.RetryAfter)
			}
			if want != mailbox.Throttled && me.RetryAfter != 0 {
				t.Errorf("%s [%s]: RetryAfter %v on a %v error", typ, code, me.RetryAfter, want)
			}
		}
	}
	// The codes that matter most, spelled out.
	for code, want := range map[goimap.ResponseCode]mailbox.Kind{
		goimap.ResponseCodeAuthenticationFailed: mailbox.Auth,
		goimap.ResponseCodeAuthorizationFailed:  mailbox.Auth,
		goimap.ResponseCodeNoPerm:               mailbox.Auth,
		goimap.ResponseCodeTryCreate:            mailbox.NotFound,
		goimap.ResponseCodeNonExistent:          mailbox.NotFound,
		goimap.ResponseCodeUnavailable:          mailbox.Transient,
		goimap.ResponseCodeInUse:                mailbox.Transient,
		goimap.ResponseCodeLimit:                mailbox.Throttled,
		goimap.ResponseCodeOverQuota:            mailbox.Permanent,
		goimap.ResponseCodeTooBig:               mailbox.Permanent,
		"EXPUNGEISSUED":                         mailbox.Transient,
	} {
		if got, ok := codeKinds[code]; !ok || got != want {
			t.Errorf("codeKinds[%s] = %v, %v; want %v", code, got, ok, want)
		}
	}
}

func TestKindOf(t *testing.T) {
	no := func(code goimap.ResponseCode, text string) error {
		return &goimap.Error{Type: goimap.StatusResponseTypeNo, Code: code, Text: text}
	}
	bad := func(text string) error {
		return &goimap.Error{Type: goimap.StatusResponseTypeBad, Text: text}
	}
	for _, tc := range []struct {
		name       string
		err        error
		want       mailbox.Kind
		retryAfter time.Duration
	}{
		{"Exchange throttling", bad("Request is throttled. Suggested Backoff Time: 155 milliseconds"), mailbox.Throttled, 155 * time.Millisecond},
		{"Exchange throttling as NO", no("", "Request is throttled. Suggested Backoff Time: 2000 milliseconds"), mailbox.Throttled, 2 * time.Second},
		{"throttling wrapped", fmt.Errorf("select: %w", bad("request is THROTTLED. suggested backoff time: 7 milliseconds")), mailbox.Throttled, 7 * time.Millisecond},
		{"LIMIT without a backoff", no(goimap.ResponseCodeLimit, "too many commands"), mailbox.Throttled, time.Second},
		{"Exchange rejected token", no("", "AUTHENTICATE failed."), mailbox.Auth, 0},
		{"Exchange mailbox not reachable", bad("User is authenticated but not connected."), mailbox.Auth, 0},
		{"Exchange mailbox not reachable as NO", no("", "User is authenticated but not connected."), mailbox.Auth, 0},
		{"LOGIN failed", no("", "LOGIN failed."), mailbox.Auth, 0},
		{"Dovecot wrong password", no(goimap.ResponseCodeAuthenticationFailed, "Authentication failed."), mailbox.Auth, 0},
		{"missing folder, no code", no("", "Mailbox doesn't exist: INBOX/Nope"), mailbox.NotFound, 0},
		{"missing folder, TRYCREATE", no(goimap.ResponseCodeTryCreate, "Mailbox doesn't exist: Verwerkt"), mailbox.NotFound, 0},
		{"bad command", bad("Command Error. 12"), mailbox.Permanent, 0},
		{"NO without code", no("", "Server busy, try later"), mailbox.Transient, 0},
		{"EXPUNGEISSUED", no("EXPUNGEISSUED", "Some of the requested messages no longer exist"), mailbox.Transient, 0},
		{"EOF", io.EOF, mailbox.Transient, 0},
		{"unexpected EOF", fmt.Errorf("in response: %w", io.ErrUnexpectedEOF), mailbox.Transient, 0},
		{"closed", net.ErrClosed, mailbox.Transient, 0},
		{"reset", &net.OpError{Op: "read", Net: "tcp", Err: os.NewSyscallError("read", syscall.ECONNRESET)}, mailbox.Transient, 0},
		{"refused", &net.OpError{Op: "dial", Net: "tcp", Err: os.NewSyscallError("connect", syscall.ECONNREFUSED)}, mailbox.Transient, 0},
		{"DNS", &net.DNSError{Err: "no such host", Name: "outlook.invalid", IsNotFound: true}, mailbox.Transient, 0},
		{"timeout", fmt.Errorf("no response: %w", errConnLost), mailbox.Transient, 0},
		{"deadline", context.DeadlineExceeded, mailbox.Transient, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := kindOf(tc.err); got != tc.want {
				t.Errorf("kindOf(%v) = %v, want %v", tc.err, got, tc.want)
			}
			err := classify("op", "invoices", "", tc.err)
			if k := mailbox.KindOf(err); k != tc.want {
				t.Errorf("KindOf(classify(%v)) = %v, want %v", tc.err, k, tc.want)
			}
			if ra := mailbox.RetryAfterOf(err); ra != tc.retryAfter {
				t.Errorf("RetryAfterOf(classify(%v)) = %v, want %v", tc.err, ra, tc.retryAfter)
			}
			if !errors.Is(err, tc.err) {
				t.Errorf("classify does not wrap %v", tc.err)
			}
		})
	}
}

// classify leaves an error that is classified already alone, and nil is
// nil.
func TestClassifyKeepsClassified(t *testing.T) {
	if classify("op", "m", "", nil) != nil {
		t.Error("classify(nil) != nil")
	}
	orig := &mailbox.Error{Kind: mailbox.NotFound, Op: "resolve folders.import", Mailbox: "m", Folder: "INBOX/Nope"}
	if got := classify("select", "m", "x", fmt.Errorf("wrapped: %w", orig)); mailbox.KindOf(got) != mailbox.NotFound {
		t.Errorf("classify of a classified error: %v", got)
	}
}

// A refused login is an operator's problem unless the server is busy or the
// connection broke.
func TestAuthKind(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want mailbox.Kind
	}{
		{&goimap.Error{Type: goimap.StatusResponseTypeNo, Code: goimap.ResponseCodeAuthenticationFailed, Text: "Authentication failed."}, mailbox.Auth},
		{&goimap.Error{Type: goimap.StatusResponseTypeNo, Text: "AUTHENTICATE failed."}, mailbox.Auth},
		{&goimap.Error{Type: goimap.StatusResponseTypeNo, Text: "Something odd"}, mailbox.Auth},
		{&goimap.Error{Type: goimap.StatusResponseTypeBad, Text: "Invalid base64 data in continued response"}, mailbox.Auth},
		{&goimap.Error{Type: goimap.StatusResponseTypeNo, Code: goimap.ResponseCodeUnavailable, Text: "Backend down"}, mailbox.Transient},
		{&goimap.Error{Type: goimap.StatusResponseTypeNo, Code: goimap.ResponseCodeInUse, Text: "Mailbox locked"}, mailbox.Transient},
		{&goimap.Error{Type: goimap.StatusResponseTypeBad, Text: "Request is throttled. Suggested Backoff Time: 155 milliseconds"}, mailbox.Throttled},
		{io.ErrUnexpectedEOF, mailbox.Transient},
	} {
		if got := authKind(tc.err); got != tc.want {
			t.Errorf("authKind(%v) = %v, want %v", tc.err, got, tc.want)
		}
	}
}
