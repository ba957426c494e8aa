package mailboxtest

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/mailpipe/mailpipe/internal/mailbox"
)

// hang bounds every Source call: a source that deadlocks fails its test
// instead of stalling the test binary. It is a guard, not a performance
// assertion.
const hang = 2 * time.Minute

// bounded runs f and fails t if f has not returned within hang. f must not
// call t.Fatal (it runs on another goroutine).
func bounded(t *testing.T, what string, f func()) {
	t.Helper()
	done := make(chan struct{})
	go func() {
		defer close(done)
		f()
	}()
	select {
	case <-done:
	case <-time.After(hang):
		t.Fatalf("%s did not return within %v (hung)", what, hang)
	}
}

func ctxOf(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), hang)
	t.Cleanup(cancel)
	return ctx
}

func listErr(t *testing.T, src mailbox.Source, limit int) (mailbox.Listing, error) {
	t.Helper()
	var (
		l   mailbox.Listing
		err error
	)
	bounded(t, fmt.Sprintf("List(%d)", limit), func() { l, err = src.List(ctxOf(t), limit) })
	return l, err
}

func list(t *testing.T, src mailbox.Source, limit int) []mailbox.Ref {
	t.Helper()
	l, err := listErr(t, src, limit)
	if err != nil {
		t.Fatalf("List(%d): %v", limit, err)
	}
	return l.Refs
}

func moveErr(t *testing.T, src mailbox.Source, refs []mailbox.Ref, dest mailbox.Dest) error {
	t.Helper()
	var err error
	bounded(t, fmt.Sprintf("Move(%d refs, %s)", len(refs), dest), func() { err = src.Move(ctxOf(t), refs, dest) })
	return err
}

func move(t *testing.T, src mailbox.Source, refs []mailbox.Ref, dest mailbox.Dest) {
	t.Helper()
	if err := moveErr(t, src, refs, dest); err != nil {
		t.Fatalf("Move(%d refs, %s): %v", len(refs), dest, err)
	}
}

func check(t *testing.T, src mailbox.Source, create bool) ([]mailbox.FolderStatus, error) {
	t.Helper()
	var (
		st  []mailbox.FolderStatus
		err error
	)
	bounded(t, fmt.Sprintf("Check(%v)", create), func() { st, err = src.Check(ctxOf(t), create) })
	return st, err
}

func closeSource(t *testing.T, src mailbox.Source) {
	t.Helper()
	var err error
	bounded(t, "Close", func() { err = src.Close() })
	if err != nil {
		t.Errorf("Close: %v", err)
	}
}

// fetched is one message as Fetch delivered it.
type fetched struct {
	Ref  mailbox.Ref
	Size int64 // Message.Size
	Body []byte
}

// fetchErr fetches refs, reading every body completely in uneven chunks.
func fetchErr(t *testing.T, src mailbox.Source, refs []mailbox.Ref) ([]fetched, error) {
	t.Helper()
	var (
		out []fetched
		err error
	)
	bounded(t, fmt.Sprintf("Fetch(%d refs)", len(refs)), func() {
		err = src.Fetch(ctxOf(t), refs, func(m *mailbox.Message) error {
			body, rerr := readUneven(m.Body)
			if rerr != nil {
				return fmt.Errorf("reading body of %s: %w", m.Ref, rerr)
			}
			out = append(out, fetched{Ref: m.Ref, Size: m.Size, Body: body})
			return nil
		})
	})
	return out, err
}

func fetch(t *testing.T, src mailbox.Source, refs []mailbox.Ref) []fetched {
	t.Helper()
	got, err := fetchErr(t, src, refs)
	if err != nil {
		t.Fatalf("Fetch(%d refs): %v", len(refs), err)
	}
	return got
}

// readUneven reads r to EOF in chunks of varying sizes, as consumers do.
func readUneven(r io.Reader) ([]byte, error) {
	var out bytes.Buffer
	sizes := []int{1, 7, 512, 4093, 65536, 3}
	for i := 0; ; i++ {
		buf := make([]byte, sizes[i%len(sizes)])
		n, err := r.Read(buf)
		out.Write(buf[:n])
		if err == io.EOF {
			return out.Bytes(), nil
		}
		if err != nil {
			return out.Bytes(), err
		}
	}
}

func digest(b []byte) string {
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:8])
}

// want is raw as the backend serves it.
func (s *suite) want(raw []byte) []byte {
	if s.f.CRLF {
		return crlf(raw)
	}
	return raw
}

// crlf turns every bare LF into CRLF.
func crlf(b []byte) []byte {
	out := make([]byte, 0, len(b)+bytes.Count(b, []byte("\n")))
	for i, c := range b {
		if c == '\n' && (i == 0 || b[i-1] != '\r') {
			out = append(out, '\r')
		}
		out = append(out, c)
	}
	return out
}

// sameBodies reports differences between got and want (raw messages as
// seeded) by length and SHA-256.
func (s *suite) sameBodies(t *testing.T, what string, got [][]byte, want [][]byte) {
	t.Helper()
	if len(got) != len(want) {
		t.Errorf("%s: %d messages, want %d (got %s, want %s)", what, len(got), len(want), describe(got), s.describeWant(want))
		return
	}
	for i := range want {
		w := s.want(want[i])
		if !bytes.Equal(got[i], w) {
			t.Errorf("%s: message %d is %d bytes sha256 %s, want %d bytes sha256 %s (%.60q)", what, i, len(got[i]), digest(got[i]), len(w), digest(w), got[i])
		}
	}
}

func describe(bodies [][]byte) string {
	var parts []string
	for _, b := range bodies {
		parts = append(parts, subjectOf(b))
	}
	return "[" + strings.Join(parts, ", ") + "]"
}

func (s *suite) describeWant(raw [][]byte) string {
	var w [][]byte
	for _, r := range raw {
		w = append(w, s.want(r))
	}
	return describe(w)
}

func subjectOf(b []byte) string {
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "Subject: "); ok {
			return strings.TrimSpace(rest)
		}
		if strings.TrimSpace(line) == "" {
			break
		}
	}
	return fmt.Sprintf("%d bytes", len(b))
}

func bodiesOf(fs []fetched) [][]byte {
	out := make([][]byte, len(fs))
	for i, f := range fs {
		out[i] = f.Body
	}
	return out
}

func keysOf(refs []mailbox.Ref) []string {
	out := make([]string, len(refs))
	for i, r := range refs {
		out[i] = r.Key()
	}
	return out
}

// message returns a small distinct test message.
func message(tag string, i int) []byte {
	return []byte(fmt.Sprintf("From: Supplier <billing@supplier.example>\r\n"+
		"To: invoices@example.test\r\n"+
		"Subject: %s %d\r\n"+
		"Date: Mon, 02 Nov 2026 10:%02d:00 +0100\r\n"+
		"Message-ID: <%s-%d@supplier.example>\r\n"+
		"MIME-Version: 1.0\r\n"+
		"Content-Type: text/plain; charset=utf-8\r\n"+
		"\r\n"+
		"Invoice %s number %d.\r\n", tag, i, i%60, tag, i, tag, i))
}

func messages(tag string, n int) [][]byte {
	out := make([][]byte, n)
	for i := range out {
		out[i] = message(tag, i)
	}
	return out
}

// large returns a message of exactly size bytes (size > 200).
func large(tag string, size int) []byte {
	head := fmt.Sprintf("From: Scanner <scan@example.test>\r\nSubject: %s\r\nMessage-ID: <%s@example.test>\r\n\r\n", tag, tag)
	b := make([]byte, 0, size)
	b = append(b, head...)
	line := []byte("0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ-=+/0123456\r\n")
	for len(b)+len(line) <= size-2 {
		b = append(b, line...)
	}
	for len(b) < size-2 {
		b = append(b, 'x')
	}
	return append(b, "\r\n"...)
}

// asError returns err's *mailbox.Error or fails t.
func asError(t *testing.T, what string, err error) *mailbox.Error {
	t.Helper()
	var me *mailbox.Error
	if !errors.As(err, &me) {
		t.Fatalf("%s: error %v (%T) is not a *mailbox.Error", what, err, err)
	}
	return me
}
