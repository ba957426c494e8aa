package app

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"

	"github.com/mailpipe/mailpipe/internal/bus"
	"github.com/mailpipe/mailpipe/internal/config"
	"github.com/mailpipe/mailpipe/internal/importer"
	"github.com/mailpipe/mailpipe/internal/mailbox"
	"github.com/mailpipe/mailpipe/internal/testenv/dovecot"
	"github.com/mailpipe/mailpipe/internal/testenv/stack"
)

var errCrash = errors.New("simulated crash")

// crashBus and crashSource stop the world at one step: they cancel the
// worker's context (so nothing after that point happens, as if the process
// died) and fail.
type crashBus struct {
	importer.Bus
	step   string
	at, n  int
	cancel context.CancelFunc
}

func (b *crashBus) PublishMail(ctx context.Context, env bus.Envelope, body []byte) (*bus.Pending, error) {
	b.n++
	switch {
	case b.step == "after-fetch" && b.n == b.at:
		b.cancel()
		return nil, errCrash
	case b.step == "before-ack" && b.n == b.at:
		p, err := b.Bus.PublishMail(ctx, env, body)
		if err != nil {
			return nil, err
		}
		_ = p // the ack is never awaited
		b.cancel()
		return nil, errCrash
	}
	return b.Bus.PublishMail(ctx, env, body)
}

type crashSource struct {
	mailbox.Source
	step   string
	cancel context.CancelFunc
	done   bool
}

func (s *crashSource) Move(ctx context.Context, refs []mailbox.Ref, dest mailbox.Dest) error {
	if s.done || len(refs) == 0 {
		return s.Source.Move(ctx, refs, dest)
	}
	switch s.step {
	case "before-move":
		s.done = true
		s.cancel()
		return errCrash
	case "mid-move":
		s.done = true
		if err := s.Source.Move(ctx, refs[:len(refs)/2], dest); err != nil {
			return err
		}
		s.cancel()
		return errCrash
	}
	return s.Source.Move(ctx, refs, dest)
}

// testSource builds the source of cfg's first mailbox as RunImporter does.
func testSource(t *testing.T, cfg *config.Importer) mailbox.Source {
	t.Helper()
	srcs, err := newSources(context.Background(), cfg, nil, nil, nil, Deps{Logger: zaptest.NewLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	src, err := srcs.New(cfg.Mailboxes[0])
	if err != nil {
		t.Fatal(err)
	}
	return src
}

// worker builds a worker like RunImporter does, with optional wrappers.
func worker(t *testing.T, cfg *config.Importer, wrapBus func(importer.Bus) importer.Bus, wrapSrc func(mailbox.Source) mailbox.Source) (*importer.Worker, func()) {
	t.Helper()
	ctx := context.Background()
	log := zaptest.NewLogger(t)
	conn, err := bus.Connect(ctx, cfg.NATS, log)
	if err != nil {
		t.Fatal(err)
	}
	b, err := bus.Open(ctx, conn, cfg.Bus, log)
	if err != nil {
		t.Fatal(err)
	}
	src := testSource(t, cfg)
	var ib importer.Bus = b
	if wrapBus != nil {
		ib = wrapBus(b)
	}
	if wrapSrc != nil {
		src = wrapSrc(src)
	}
	w := importer.NewWorker(cfg.Mailboxes[0], src, ib, importer.Settings{
		LargeThreshold: int64(cfg.Bus.LargeMessageThreshold), DuplicateWindow: cfg.Bus.Stream.DuplicateWindow,
	}, log, nil)
	return w, func() { src.Close(); conn.Close() }
}

// TestCrashAtEachStep kills the importer (in-process: everything after the
// crash point is cut off) after fetch, after publish before the PubAck,
// after the PubAck before the move, and in the middle of a move; a restart
// must leave every message in processed, published exactly once.
func TestCrashAtEachStep(t *testing.T) {
	for _, step := range []string{"after-fetch", "before-ack", "before-move", "mid-move"} {
		t.Run(step, func(t *testing.T) {
			st := stack.Start(t, stack.Options{})
			const n = 120
			st.Dovecot.AppendFunc(stack.User, stack.Import, n, func(i int) []byte { return stack.Invoice(i, 3000) })
			cfg := st.Config()
			cfg.Mailboxes[0].IMAP.FetchBatch = 50

			ctx, cancel := context.WithCancel(context.Background())
			w, closeFn := worker(t, cfg,
				func(b importer.Bus) importer.Bus { return &crashBus{Bus: b, step: step, at: 70, cancel: cancel} },
				func(s mailbox.Source) mailbox.Source { return &crashSource{Source: s, step: step, cancel: cancel} })
			done := make(chan error, 1)
			go func() { done <- w.Run(ctx, ctx, false) }()
			select {
			case <-done:
			case <-time.After(2 * time.Minute):
				t.Fatal("worker did not stop after the simulated crash")
			}
			closeFn()
			if ctx.Err() == nil {
				t.Fatal("the crash point was never reached")
			}
			if got := st.Dovecot.Count(stack.User, stack.Import); got == 0 {
				t.Fatalf("crash at %s left nothing to recover (import folder empty)", step)
			}

			// Restart.
			if err := runOnce(t, cfg); err != nil {
				t.Fatalf("restart: %v", err)
			}
			assertFolders(t, st, 0, n, 0)
			s := st.Stream(cfg.Bus.Stream.Name)
			if s.Messages != n || s.DistinctID != n || len(s.PerDigest) != n {
				t.Fatalf("stream after crash at %s: %d messages, %d distinct ids, %d distinct bodies; want %d each",
					step, s.Messages, s.DistinctID, len(s.PerDigest), n)
			}
		})
	}
}

// TestUIDValidityChange: messages published but not moved (crash after the
// PubAck), then the folder is recreated so every message gets a new
// identity. The restart must move them without publishing them again, and
// still publish mail that is really new.
func TestUIDValidityChange(t *testing.T) {
	st := stack.Start(t, stack.Options{})
	const n = 40
	msgs := make([][]byte, n)
	for i := range msgs {
		msgs[i] = stack.Invoice(i, 1500)
	}
	msgs[3] = stack.Invoice(3, 2<<20) // through the object store
	st.Dovecot.AppendMany(stack.User, stack.Import, msgs)
	cfg := st.Config()

	ctx, cancel := context.WithCancel(context.Background())
	w, closeFn := worker(t, cfg, nil, func(s mailbox.Source) mailbox.Source {
		return &crashSource{Source: s, step: "before-move", cancel: cancel}
	})
	_ = w.Run(ctx, ctx, false)
	closeFn()
	if s := st.Stream(cfg.Bus.Stream.Name); s.Messages != n {
		t.Fatalf("before the UIDVALIDITY change the stream has %d messages, want %d", s.Messages, n)
	}

	// Recreate the folder: same mail, new UIDVALIDITY, new UIDs; plus one
	// new message.
	st.Dovecot.DeleteFolder(stack.User, stack.Import)
	st.Dovecot.CreateFolder(stack.User, stack.Import)
	st.Dovecot.AppendMany(stack.User, stack.Import, append(msgs, stack.Invoice(999, 1500)))

	if err := runOnce(t, cfg); err != nil {
		t.Fatalf("run after UIDVALIDITY change: %v", err)
	}
	assertFolders(t, st, 0, n+1, 0)
	s := st.Stream(cfg.Bus.Stream.Name)
	if s.Messages != n+1 || len(s.PerDigest) != n+1 {
		t.Fatalf("stream: %d messages, %d distinct bodies; want %d (each mail once)", s.Messages, len(s.PerDigest), n+1)
	}
}

// TestBadInput: mail that is odd but valid is published as is; mail over
// the size limit goes to the error folder with a dead letter.
func TestBadInput(t *testing.T) {
	st := stack.Start(t, stack.Options{})
	big := stack.Invoice(7, 30<<20) // 30 MB
	msgs := [][]byte{
		{}, // empty message
		[]byte("From: a@example.test\nSubject: bare LF\nMessage-ID: <lf@example.test>\n\nline one\nline two\n"),
		[]byte("From: =?UTF-8?Q?J=C3=BCrgen_M=C3=BCller?= <jm@example.test>\r\nSubject: =?UTF-8?B?UmVjaG51bmcgTsKwIDQy?= =?ISO-8859-1?Q?_f=FCr_M=E4rz?=\r\nMessage-ID: <rfc2047@example.test>\r\n\r\nHallo\r\n"),
		[]byte("From: a@example.test\r\nSubject: twin one\r\nMessage-ID: <same@example.test>\r\n\r\nfirst\r\n"),
		[]byte("From: a@example.test\r\nSubject: twin two\r\nMessage-ID: <same@example.test>\r\n\r\nsecond\r\n"),
		[]byte("no header at all, just text without a blank line"),
		big,
	}
	st.Dovecot.AppendMany(stack.User, stack.Import, msgs)
	cfg := st.Config()
	cfg.Mailboxes[0].MaxMessageSize = 10 << 20

	if err := runOnce(t, cfg); err != nil {
		t.Fatalf("run --once: %v", err)
	}
	assertFolders(t, st, 0, len(msgs)-1, 1)
	s := st.Stream(cfg.Bus.Stream.Name)
	if s.Messages != len(msgs)-1 {
		t.Fatalf("stream has %d messages, want %d", s.Messages, len(msgs)-1)
	}
	for _, m := range msgs[:len(msgs)-1] {
		// IMAP servers hand out CRLF line endings (RFC 3501): the bare-LF
		// message is published as the server serves it.
		if !bytes.Contains(m, []byte("\r\n")) {
			m = bytes.ReplaceAll(m, []byte("\n"), []byte("\r\n"))
		}
		if s.PerDigest[stack.Digest(m)] != 1 {
			t.Errorf("message %.40q published %d times, want once with identical bytes", m, s.PerDigest[stack.Digest(m)])
		}
	}
	subjects := strings.Join(s.Subjects, "|")
	for _, want := range []string{"bare LF", "Rechnung N° 42 für März", "twin one", "twin two"} {
		if !strings.Contains(subjects, want) {
			t.Errorf("no published message has subject %q (got %s)", want, subjects)
		}
	}
	dl := st.Stream(cfg.Bus.DeadLetter.Name)
	if dl.Messages != 1 {
		t.Fatalf("dead letters: %d, want 1", dl.Messages)
	}
	if r := dl.Headers[0].Get("Mailpipe-Reason"); !strings.Contains(r, "max_message_size") {
		t.Errorf("dead letter reason %q does not name max_message_size", r)
	}
	// Raising the limit: the 30 MB message is streamed through the object
	// store (not held in memory) once it is put back.
	cfg.Mailboxes[0].MaxMessageSize = 40 << 20
	st.Dovecot.Append(stack.User, stack.Import, big)
	if err := runOnce(t, cfg); err != nil {
		t.Fatalf("run with higher limit: %v", err)
	}
	s = st.Stream(cfg.Bus.Stream.Name)
	if s.PerDigest[stack.Digest(big)] != 1 {
		t.Fatalf("30 MB message published %d times, want 1", s.PerDigest[stack.Digest(big)])
	}
	last := s.Headers[len(s.Headers)-1]
	if last.Get("Mailpipe-Body-Object") == "" {
		t.Errorf("30 MB message was not stored in the object store: headers %v", last)
	}
}

// TestNonASCIIFolders: localized folder names with non-ASCII characters,
// stored in modified UTF-7 by the server.
func TestNonASCIIFolders(t *testing.T) {
	st := stack.Start(t, stack.Options{
		Import: "Postvak IN/Algemeen/Import", Processed: "Postvak IN/Algemeen/Verwerkt-Ä", Error: "Postvak IN/Algemeen/Fout-ß",
	})
	st.Dovecot.AppendFunc(stack.User, "Postvak IN/Algemeen/Import", 5, func(i int) []byte { return stack.Invoice(i, 1000) })
	cfg := st.Config()
	if err := runOnce(t, cfg); err != nil {
		t.Fatalf("run --once: %v", err)
	}
	if n := st.Dovecot.Count(stack.User, "Postvak IN/Algemeen/Verwerkt-Ä"); n != 5 {
		t.Fatalf("Verwerkt-Ä has %d messages, want 5", n)
	}
	s := st.Stream(cfg.Bus.Stream.Name)
	if s.Messages != 5 || s.Headers[0].Get("Mailpipe-Folder") != "Postvak IN/Algemeen/Import" {
		t.Fatalf("stream: %d messages, folder header %q", s.Messages, s.Headers[0].Get("Mailpipe-Folder"))
	}
}

// TestServerWithoutMove: on a server without MOVE the importer copies
// (checked), flags and UID EXPUNGEs; a COPY that fails (destination gone)
// deletes nothing, and a later run finishes the job without duplicates.
func TestServerWithoutMove(t *testing.T) {
	st := stack.Start(t, stack.Options{Dovecot: dovecot.Options{NoMove: true}})
	const n = 30
	st.Dovecot.AppendFunc(stack.User, stack.Import, n, func(i int) []byte { return stack.Invoice(i, 1000) })
	cfg := st.Config()
	st.Dovecot.DeleteFolder(stack.User, stack.Processed)

	err := runOnce(t, cfg)
	if err == nil || mailbox.KindOf(err) != mailbox.NotFound || !strings.Contains(err.Error(), stack.Processed) {
		t.Fatalf("run with the processed folder missing: got %v, want a not-found error naming %s", err, stack.Processed)
	}
	if got := st.Dovecot.Count(stack.User, stack.Import); got != n {
		t.Fatalf("failed COPY deleted mail: import folder has %d, want %d", got, n)
	}
	for i, f := range st.Dovecot.Flags(stack.User, stack.Import) {
		for _, fl := range f {
			if fl == `\Deleted` {
				t.Fatalf("message %d flagged \\Deleted after a failed COPY", i)
			}
		}
	}

	st.Dovecot.CreateFolder(stack.User, stack.Processed)
	if err := runOnce(t, cfg); err != nil {
		t.Fatalf("run after creating the folder: %v", err)
	}
	assertFolders(t, st, 0, n, 0)
	if s := st.Stream(cfg.Bus.Stream.Name); s.Messages != n || s.DistinctID != n {
		t.Fatalf("stream: %d messages, %d distinct; want %d", s.Messages, s.DistinctID, n)
	}
}

// TestWrongCredentials: a wrong IMAP password and a wrong client secret give
// errors that say what is wrong, without the secret.
func TestWrongCredentials(t *testing.T) {
	st := stack.Start(t, stack.Options{})
	st.Dovecot.AppendFunc(stack.User, stack.Import, 1, func(i int) []byte { return stack.Invoice(i, 500) })

	cfg := st.Config()
	id := cfg.Identities[stack.IdentityID]
	id.ClientSecret = "wrong-secret-value"
	cfg.Identities[stack.IdentityID] = id
	err := runOnce(t, cfg)
	if err == nil || mailbox.KindOf(err) != mailbox.Auth {
		t.Fatalf("wrong client secret: got %v, want an auth error", err)
	}
	for _, want := range []string{"AADSTS7000215", stack.ClientID} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %s", err, want)
		}
	}
	if strings.Contains(err.Error(), "wrong-secret-value") {
		t.Errorf("error leaks the secret: %v", err)
	}

	cfg = st.Config()
	cfg.Mailboxes[0].IMAP.Auth = "password"
	cfg.Mailboxes[0].Identity = ""
	cfg.Mailboxes[0].IMAP.Password = "not-the-password"
	err = runOnce(t, cfg)
	if err == nil || mailbox.KindOf(err) != mailbox.Auth || !strings.Contains(err.Error(), stack.User) {
		t.Fatalf("wrong password: got %v, want an auth error naming %s", err, stack.User)
	}
	if strings.Contains(err.Error(), "not-the-password") {
		t.Errorf("error leaks the password: %v", err)
	}
	// And with the right password it works.
	cfg.Mailboxes[0].IMAP.Password = stack.Password
	if err := runOnce(t, cfg); err != nil {
		t.Fatalf("right password: %v", err)
	}
	assertFolders(t, st, 0, 1, 0)
}

// TestCheck is the "Test connection" report.
func TestCheck(t *testing.T) {
	st := stack.Start(t, stack.Options{})
	st.Dovecot.AppendFunc(stack.User, stack.Import, 3, func(i int) []byte { return stack.Invoice(i, 500) })
	cfg := st.Config()
	var out strings.Builder
	ctx := context.Background()
	if err := CheckImporter(ctx, cfg, &out, false, Deps{Logger: zaptest.NewLogger(t)}); err != nil {
		t.Fatalf("check: %v\n%s", err, out.String())
	}
	if want := fmt.Sprintf("opened import folder '%s' containing 3 messages (3 unread)", stack.Import); !strings.Contains(out.String(), want) {
		t.Fatalf("check output lacks %q:\n%s", want, out.String())
	}
	st.Dovecot.DeleteFolder(stack.User, stack.ErrorBox)
	out.Reset()
	err := CheckImporter(ctx, cfg, &out, false, Deps{Logger: zaptest.NewLogger(t)})
	if !errors.Is(err, ErrCheckFailed) || !strings.Contains(out.String(), "--create-folders") {
		t.Fatalf("check with the error folder missing: %v\n%s", err, out.String())
	}
	out.Reset()
	if err := CheckImporter(ctx, cfg, &out, true, Deps{Logger: zaptest.NewLogger(t)}); err != nil {
		t.Fatalf("check --create-folders: %v\n%s", err, out.String())
	}
	if n := st.Dovecot.Count(stack.User, stack.ErrorBox); n != 0 {
		t.Fatalf("created error folder has %d messages", n)
	}
}
