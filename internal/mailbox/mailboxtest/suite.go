package mailboxtest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"sync"
	"testing"

	"github.com/mailpipe/mailpipe/internal/mailbox"
)

type suite struct {
	h Harness
	f Features
}

// Run runs the conformance suite against h. Every subtest gets a fresh
// mailbox from h.New and runs in parallel with the others.
func Run(t *testing.T, h Harness) {
	s := &suite{h: h, f: h.Features()}
	tests := []struct {
		name string
		fn   func(*testing.T)
	}{
		{"List/OldestFirst", s.testListOldestFirst},
		{"List/StableIdentity", s.testListStableIdentity},
		{"List/Limit", s.testListLimit},
		{"List/Empty", s.testListEmpty},
		{"List/NewMail", s.testListNewMail},
		{"List/SubfoldersExcluded", s.testListSubfoldersExcluded},
		{"Fetch/ExactBytes", s.testFetchExactBytes},
		{"Fetch/Large", s.testFetchLarge},
		{"Fetch/SubsetInOrder", s.testFetchSubset},
		{"Fetch/AlreadyMoved", s.testFetchAlreadyMoved},
		{"Fetch/CallbackError/BodyUnread", func(t *testing.T) { s.testFetchCallbackError(t, 0) }},
		{"Fetch/CallbackError/BodyHalfRead", func(t *testing.T) { s.testFetchCallbackError(t, 1) }},
		{"Fetch/CallbackError/BodyRead", func(t *testing.T) { s.testFetchCallbackError(t, 2) }},
		{"Fetch/ContextCanceled", s.testFetchContextCanceled},
		{"Fetch/LeavesSeenAlone", s.testFetchLeavesSeenAlone},
		{"Move/ProcessedAndError", s.testMoveProcessedAndError},
		{"Move/Idempotent", s.testMoveIdempotent},
		{"Move/MovedByAnotherClient", s.testMoveMovedByAnother},
		{"Move/MissingProcessedFolder", func(t *testing.T) { s.testMoveMissingDest(t, mailbox.ToProcessed) }},
		{"Move/MissingErrorFolder", func(t *testing.T) { s.testMoveMissingDest(t, mailbox.ToError) }},
		{"Identity/AcrossReconnect", s.testIdentityAcrossReconnect},
		{"Check/Folders", s.testCheckFolders},
		{"Check/CreateMissing", s.testCheckCreate},
		{"Subfolders", s.testSubfolders},
		{"Errors/MissingImportFolder", s.testMissingImport},
		{"Errors/BadCredentials", s.testBadCredentials},
		{"Concurrent/MoveSameRefs", s.testConcurrentMove},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tc.fn(t)
		})
	}
}

// List returns every message of the import folder, oldest first, each with
// the folder's path, its size and arrival time.
func (s *suite) testListOldestFirst(t *testing.T) {
	msgs := messages("oldest-first", 5)
	src, fx := s.h.New(t, FixtureOptions{}, msgs)
	refs := list(t, src, 0)
	if len(refs) != len(msgs) {
		t.Fatalf("List: %d refs, want %d", len(refs), len(msgs))
	}
	for i, r := range refs {
		if r.Folder != fx.Folders().Import {
			t.Errorf("ref %d: Folder %q, want %q", i, r.Folder, fx.Folders().Import)
		}
		if r.Mailbox == "" {
			t.Errorf("ref %d: empty Mailbox", i)
		}
		if w := int64(len(s.want(msgs[i]))); r.Size != 0 && r.Size != w {
			t.Errorf("ref %d: Size %d, want %d (or 0: unknown)", i, r.Size, w)
		}
		if r.Received.IsZero() {
			t.Errorf("ref %d: zero Received", i)
		}
	}
	got := fetch(t, src, refs)
	s.sameBodies(t, "Fetch of the listing (in listing order)", bodiesOf(got), msgs)
	for i, g := range got {
		if g.Ref.Key() != refs[i].Key() {
			t.Errorf("Fetch delivered %s as message %d, want %s", g.Ref.Key(), i, refs[i].Key())
		}
	}
}

// Two listings give the same identities; every message has its own
// DedupID, also when two messages are byte-for-byte the same (same
// Message-ID header).
func (s *suite) testListStableIdentity(t *testing.T) {
	twin := message("twin", 1)
	msgs := [][]byte{message("identity", 0), twin, message("identity", 2), twin}
	src, _ := s.h.New(t, FixtureOptions{}, msgs)
	first := list(t, src, 0)
	second := list(t, src, 0)
	if !slices.Equal(keysOf(first), keysOf(second)) {
		t.Fatalf("two Lists differ:\n%q\n%q", keysOf(first), keysOf(second))
	}
	if len(first) != len(msgs) {
		t.Fatalf("List: %d refs, want %d", len(first), len(msgs))
	}
	keys, dedup := map[string]bool{}, map[string]bool{}
	for _, r := range first {
		keys[r.Key()] = true
		dedup[r.DedupID()] = true
	}
	if len(keys) != len(msgs) || len(dedup) != len(msgs) {
		t.Errorf("%d distinct Keys and %d distinct DedupIDs for %d messages (two share a Message-ID): %q", len(keys), len(dedup), len(msgs), keysOf(first))
	}
}

// List with a limit returns the oldest messages first, the same refs as an
// unlimited listing.
func (s *suite) testListLimit(t *testing.T) {
	msgs := messages("limit", 5)
	src, _ := s.h.New(t, FixtureOptions{}, msgs)
	all := list(t, src, 0)
	if len(all) != 5 {
		t.Fatalf("List(0): %d refs, want 5", len(all))
	}
	for _, limit := range []int{1, 2, 5, 6, 100} {
		got := list(t, src, limit)
		want := all[:min(limit, len(all))]
		if !slices.Equal(keysOf(got), keysOf(want)) {
			t.Errorf("List(%d) = %q, want %q", limit, keysOf(got), keysOf(want))
		}
	}
	// Once the oldest are gone, the limit covers the next ones.
	move(t, src, all[:2], mailbox.ToProcessed)
	if got := list(t, src, 2); !slices.Equal(keysOf(got), keysOf(all[2:4])) {
		t.Errorf("List(2) after moving the two oldest = %q, want %q", keysOf(got), keysOf(all[2:4]))
	}
}

func (s *suite) testListEmpty(t *testing.T) {
	src, _ := s.h.New(t, FixtureOptions{}, nil)
	for _, limit := range []int{0, 10} {
		if refs := list(t, src, limit); len(refs) != 0 {
			t.Errorf("List(%d) of an empty folder: %q", limit, keysOf(refs))
		}
	}
	got := fetch(t, src, nil)
	if len(got) != 0 {
		t.Errorf("Fetch(nil) delivered %d messages", len(got))
	}
	move(t, src, nil, mailbox.ToProcessed)
}

// Mail that arrives later is listed last; what was listed keeps its Key.
func (s *suite) testListNewMail(t *testing.T) {
	msgs := messages("new-mail", 2)
	src, fx := s.h.New(t, FixtureOptions{}, msgs)
	before := list(t, src, 0)
	late := message("new-mail-late", 9)
	fx.Add(fx.Folders().Import, late)
	after := list(t, src, 0)
	if len(after) != 3 {
		t.Fatalf("List after new mail: %d refs, want 3", len(after))
	}
	if !slices.Equal(keysOf(after[:2]), keysOf(before)) {
		t.Errorf("Keys changed when mail arrived: %q, then %q", keysOf(before), keysOf(after))
	}
	got := fetch(t, src, after[2:])
	s.sameBodies(t, "the newest listed message", bodiesOf(got), [][]byte{late})
}

// Without include_subfolders, mail in subfolders of the import folder is
// not listed.
func (s *suite) testListSubfoldersExcluded(t *testing.T) {
	msgs := messages("no-subfolders", 2)
	src, fx := s.h.New(t, FixtureOptions{}, msgs)
	fx.Add(fx.Folders().Import+"/Sub", message("in-subfolder", 0))
	refs := list(t, src, 0)
	if len(refs) != 2 {
		t.Fatalf("List: %q, want only the 2 messages of the import folder", keysOf(refs))
	}
	for _, r := range refs {
		if r.Folder != fx.Folders().Import {
			t.Errorf("listed %s from folder %q", r.Key(), r.Folder)
		}
	}
}

// exactBytes are messages that are easy to get wrong on the way through.
func exactBytes() [][]byte {
	return [][]byte{
		message("plain", 0),
		{}, // empty message
		[]byte("From: lf@example.test\nSubject: bare LF\n\nline one\nline two\n"),
		[]byte("From: =?utf-8?q?J=C3=BCrgen?= <j@example.test>\r\nSubject: Factuur – Größe ÄÖÜ € 日本\r\nX-Raw-Name: Jürgen Müller\r\nMessage-ID: <utf8@example.test>\r\n\r\nBedrag: € 100,00 — betaald.\r\n"),
		[]byte("Subject: mixed line ends\r\n\nCRLF then LF\nthen CRLF\r\nend"),
		[]byte("Subject: no body, no final newline"),
		[]byte("Subject: IMAP syntax inside\r\n\r\n* BYE Session invalidated - AccessTokenExpired\r\nA1 OK done\r\n{5}\r\n)\r\n* 1 FETCH (UID 7 BODY[] {3}\r\n"),
		append([]byte("Subject: long line\r\n\r\n"), bytes.Repeat([]byte("ä"), 3000)...),
	}
}

// Fetch streams exactly the stored bytes (compared by SHA-256), with the
// exact size, also for an empty message, bare LF line ends and non-ASCII
// header text.
func (s *suite) testFetchExactBytes(t *testing.T) {
	msgs := exactBytes()
	src, fx := s.h.New(t, FixtureOptions{}, msgs)
	refs := list(t, src, 0)
	if len(refs) != len(msgs) {
		t.Fatalf("List: %d refs, want %d", len(refs), len(msgs))
	}
	got := fetch(t, src, refs)
	s.sameBodies(t, "Fetch", bodiesOf(got), msgs)
	for i, g := range got {
		if g.Size != int64(len(g.Body)) {
			t.Errorf("message %d: Message.Size %d, but the body has %d bytes", i, g.Size, len(g.Body))
		}
	}
	for i, r := range refs {
		if w := int64(len(s.want(msgs[i]))); r.Size != 0 && r.Size != w {
			t.Errorf("ref %d: listed Size %d, want %d", i, r.Size, w)
		}
	}
	// What the server holds is what Fetch yielded.
	s.sameBodies(t, "stored messages", fx.Bodies(fx.Folders().Import), msgs)
}

// A 5 MB message streams intact, between small ones.
func (s *suite) testFetchLarge(t *testing.T) {
	big := large("large-5MB", 5<<20)
	msgs := [][]byte{message("around-large", 0), big, message("around-large", 2)}
	src, _ := s.h.New(t, FixtureOptions{}, msgs)
	refs := list(t, src, 0)
	if len(refs) != 3 {
		t.Fatalf("List: %d refs, want 3", len(refs))
	}
	if refs[1].Size != 0 && refs[1].Size != int64(len(big)) {
		t.Errorf("listed Size %d, want %d", refs[1].Size, len(big))
	}
	got := fetch(t, src, refs)
	s.sameBodies(t, "Fetch", bodiesOf(got), msgs)
	if len(got) == 3 && got[1].Size != int64(len(big)) {
		t.Errorf("Message.Size %d, want %d", got[1].Size, len(big))
	}
}

// Fetch delivers exactly the refs asked for, in the order given (oldest
// first), each once.
func (s *suite) testFetchSubset(t *testing.T) {
	msgs := messages("subset", 5)
	src, _ := s.h.New(t, FixtureOptions{}, msgs)
	refs := list(t, src, 0)
	pick := []mailbox.Ref{refs[1], refs[3], refs[4]}
	got := fetch(t, src, pick)
	if !slices.Equal(keysOf(refsOf(got)), keysOf(pick)) {
		t.Fatalf("Fetch delivered %q, want %q", keysOf(refsOf(got)), keysOf(pick))
	}
	s.sameBodies(t, "Fetch", bodiesOf(got), [][]byte{msgs[1], msgs[3], msgs[4]})
}

func refsOf(fs []fetched) []mailbox.Ref {
	out := make([]mailbox.Ref, len(fs))
	for i, f := range fs {
		out[i] = f.Ref
	}
	return out
}

// A ref whose message was moved meanwhile (by another worker, or by this
// source) is skipped without error.
func (s *suite) testFetchAlreadyMoved(t *testing.T) {
	msgs := messages("already-moved", 4)
	src, fx := s.h.New(t, FixtureOptions{}, msgs)
	refs := list(t, src, 0)
	if len(refs) != 4 {
		t.Fatalf("List: %d refs, want 4", len(refs))
	}
	other := fx.NewSource()
	otherRefs := list(t, other, 0)
	move(t, other, otherRefs[1:2], mailbox.ToProcessed)
	move(t, src, refs[3:], mailbox.ToError)

	got := fetch(t, src, refs)
	if !slices.Equal(keysOf(refsOf(got)), keysOf([]mailbox.Ref{refs[0], refs[2]})) {
		t.Errorf("Fetch delivered %q, want only the two messages still there", keysOf(refsOf(got)))
	}
	s.sameBodies(t, "Fetch", bodiesOf(got), [][]byte{msgs[0], msgs[2]})
	if got := fetch(t, src, refs[1:2]); len(got) != 0 {
		t.Errorf("Fetch of a moved message delivered %d messages", len(got))
	}
}

var errStop = errors.New("callback says stop")

// An error returned by the callback stops Fetch and is returned as is,
// whether the callback read none, part or all of the body; the source works
// afterwards.
func (s *suite) testFetchCallbackError(t *testing.T, read int) {
	msgs := [][]byte{large("callback-error-first", 1<<20), message("callback-error", 1), message("callback-error", 2)}
	src, fx := s.h.New(t, FixtureOptions{}, msgs)
	refs := list(t, src, 0)
	if len(refs) != 3 {
		t.Fatalf("List: %d refs, want 3", len(refs))
	}
	calls := 0
	var readErr error
	var err error
	bounded(t, "Fetch with a failing callback", func() {
		err = src.Fetch(ctxOf(t), refs, func(m *mailbox.Message) error {
			calls++
			switch read {
			case 1:
				_, readErr = io.CopyN(io.Discard, m.Body, m.Size/2)
			case 2:
				_, readErr = io.CopyN(io.Discard, m.Body, m.Size)
			}
			return errStop
		})
	})
	if err != errStop { //nolint:errorlint // "as is": the very same value
		t.Errorf("Fetch returned %v (%T), want the callback's error as is", err, err)
	}
	if calls != 1 {
		t.Errorf("callback called %d times, want 1", calls)
	}
	if readErr != nil {
		t.Errorf("reading the body in the callback: %v", readErr)
	}

	// Still usable, nothing lost or moved.
	again := list(t, src, 0)
	if !slices.Equal(keysOf(again), keysOf(refs)) {
		t.Errorf("List after the failed Fetch = %q, want %q", keysOf(again), keysOf(refs))
	}
	got := fetch(t, src, again)
	s.sameBodies(t, "Fetch after the failed Fetch", bodiesOf(got), msgs)
	move(t, src, again[:1], mailbox.ToProcessed)
	if n := fx.Count(fx.Folders().Processed); n != 1 {
		t.Errorf("processed folder holds %d messages after moving one, want 1", n)
	}
}

// A context canceled while a message is delivered makes Fetch return an
// error; the source works afterwards.
func (s *suite) testFetchContextCanceled(t *testing.T) {
	msgs := [][]byte{large("canceled-first", 1<<20), message("canceled", 1)}
	src, _ := s.h.New(t, FixtureOptions{}, msgs)
	refs := list(t, src, 0)
	ctx, cancel := context.WithCancel(ctxOf(t))
	defer cancel()
	var err error
	bounded(t, "Fetch with a canceled context", func() {
		err = src.Fetch(ctx, refs, func(m *mailbox.Message) error {
			cancel()
			_, rerr := io.Copy(io.Discard, m.Body)
			return rerr
		})
	})
	if err == nil {
		t.Log("Fetch finished before it noticed the canceled context")
	}
	got := fetch(t, src, list(t, src, 0))
	s.sameBodies(t, "Fetch after the canceled Fetch", bodiesOf(got), msgs)
}

// Listing, fetching and moving leave the read mark alone.
func (s *suite) testFetchLeavesSeenAlone(t *testing.T) {
	msgs := messages("unseen", 3)
	src, fx := s.h.New(t, FixtureOptions{}, msgs)
	sf, ok := fx.(SeenFixture)
	if !ok {
		t.Log("the fixture cannot tell whether a message is marked read (no SeenFixture): checked nothing")
		return
	}
	refs := list(t, src, 0)
	fetch(t, src, refs)
	for i, seen := range sf.Seen(fx.Folders().Import) {
		if seen {
			t.Errorf("message %d marked read after List and Fetch", i)
		}
	}
	move(t, src, refs[:2], mailbox.ToProcessed)
	for i, seen := range sf.Seen(fx.Folders().Processed) {
		if seen {
			t.Errorf("moved message %d marked read", i)
		}
	}
}

// Move puts messages in the processed and error folders and takes them out
// of the import folder.
func (s *suite) testMoveProcessedAndError(t *testing.T) {
	msgs := messages("move", 4)
	src, fx := s.h.New(t, FixtureOptions{}, msgs)
	refs := list(t, src, 0)
	if len(refs) != 4 {
		t.Fatalf("List: %d refs, want 4", len(refs))
	}
	move(t, src, refs[:2], mailbox.ToProcessed)
	move(t, src, refs[2:3], mailbox.ToError)
	f := fx.Folders()
	s.sameBodies(t, "processed folder", fx.Bodies(f.Processed), msgs[:2])
	s.sameBodies(t, "error folder", fx.Bodies(f.Error), msgs[2:3])
	s.sameBodies(t, "import folder", fx.Bodies(f.Import), msgs[3:])
	left := list(t, src, 0)
	if !slices.Equal(keysOf(left), keysOf(refs[3:])) {
		t.Errorf("List after Move = %q, want %q", keysOf(left), keysOf(refs[3:]))
	}
}

// Moving the same refs again is a no-op that succeeds.
func (s *suite) testMoveIdempotent(t *testing.T) {
	msgs := messages("idempotent", 3)
	src, fx := s.h.New(t, FixtureOptions{}, msgs)
	refs := list(t, src, 0)
	move(t, src, refs[:2], mailbox.ToProcessed)
	move(t, src, refs[:2], mailbox.ToProcessed)
	move(t, src, refs[:2], mailbox.ToError) // already gone from the import folder
	move(t, src, nil, mailbox.ToProcessed)
	move(t, src, []mailbox.Ref{}, mailbox.ToError)
	f := fx.Folders()
	s.sameBodies(t, "processed folder", fx.Bodies(f.Processed), msgs[:2])
	if n := fx.Count(f.Error); n != 0 {
		t.Errorf("error folder holds %d messages, want 0", n)
	}
	s.sameBodies(t, "import folder", fx.Bodies(f.Import), msgs[2:])
	// After a reconnect too.
	again := fx.NewSource()
	move(t, again, refs[:2], mailbox.ToProcessed)
	if n := fx.Count(f.Processed); n != 2 {
		t.Errorf("processed folder holds %d messages after moving twice more, want 2", n)
	}
}

// Refs another client moved meanwhile are not an error.
func (s *suite) testMoveMovedByAnother(t *testing.T) {
	msgs := messages("moved-by-other", 4)
	src, fx := s.h.New(t, FixtureOptions{}, msgs)
	refs := list(t, src, 0)
	other := fx.NewSource()
	move(t, other, list(t, other, 0)[:3], mailbox.ToProcessed)
	// refs[0:3] are gone, refs[3] is still there.
	move(t, src, refs, mailbox.ToProcessed)
	f := fx.Folders()
	s.sameBodies(t, "processed folder", fx.Bodies(f.Processed), msgs)
	if n := fx.Count(f.Import); n != 0 {
		t.Errorf("import folder holds %d messages, want 0", n)
	}
}

// Moving to a folder that does not exist fails with a NotFound
// *mailbox.Error and deletes nothing.
func (s *suite) testMoveMissingDest(t *testing.T, dest mailbox.Dest) {
	opts := FixtureOptions{NoProcessed: dest == mailbox.ToProcessed, NoError: dest == mailbox.ToError}
	msgs := messages("missing-dest", 3)
	src, fx := s.h.New(t, opts, msgs)
	f := fx.Folders()
	missing, present, other := f.Processed, f.Error, mailbox.ToError
	if dest == mailbox.ToError {
		missing, present, other = f.Error, f.Processed, mailbox.ToProcessed
	}
	refs := list(t, src, 0)
	err := moveErr(t, src, refs[:2], dest)
	if err == nil {
		t.Fatalf("Move to the missing %s folder %q succeeded", dest, missing)
	}
	if me := asError(t, "Move to a missing folder", err); me.Kind != mailbox.NotFound {
		t.Errorf("Move to a missing folder: kind %v, want %v (%v)", me.Kind, mailbox.NotFound, err)
	}
	s.sameBodies(t, "import folder after the failed Move", fx.Bodies(f.Import), msgs)
	if fx.Exists(missing) {
		t.Errorf("the failed Move created %q", missing)
	}
	// The other destination still works, and so does the source.
	move(t, src, refs[2:], other)
	s.sameBodies(t, "the other destination", fx.Bodies(present), msgs[2:])
	if got := list(t, src, 0); !slices.Equal(keysOf(got), keysOf(refs[:2])) {
		t.Errorf("List = %q, want %q", keysOf(got), keysOf(refs[:2]))
	}
}

// A message that stays in the import folder keeps its Key across
// reconnects (Close, a new Source), and while others come and go.
func (s *suite) testIdentityAcrossReconnect(t *testing.T) {
	msgs := messages("identity-reconnect", 4)
	src, fx := s.h.New(t, FixtureOptions{}, msgs)
	first := list(t, src, 0)
	closeSource(t, src)

	next := fx.NewSource()
	second := list(t, next, 0)
	if !slices.Equal(keysOf(first), keysOf(second)) {
		t.Fatalf("Keys changed across Close and a new Source:\n%q\n%q", keysOf(first), keysOf(second))
	}
	move(t, next, second[:1], mailbox.ToProcessed)
	fx.Add(fx.Folders().Import, message("identity-reconnect-late", 9))
	closeSource(t, next)

	third := list(t, fx.NewSource(), 0)
	if len(third) != 4 || !slices.Equal(keysOf(third[:3]), keysOf(first[1:])) {
		t.Errorf("after moving the oldest and adding one, List = %q; want %q then a new one", keysOf(third), keysOf(first[1:]))
	}
	if len(third) == 4 && slices.Contains(keysOf(first), third[3].Key()) {
		t.Errorf("the new message reuses the Key %q of a listed one", third[3].Key())
	}
}

func statusByPath(st []mailbox.FolderStatus) map[string]mailbox.FolderStatus {
	m := map[string]mailbox.FolderStatus{}
	for _, s := range st {
		m[s.Path] = s
	}
	return m
}

// Check reports the import, processed and error folders, in that order,
// with their message counts.
func (s *suite) testCheckFolders(t *testing.T) {
	msgs := messages("check", 3)
	src, fx := s.h.New(t, FixtureOptions{}, msgs)
	f := fx.Folders()
	checkCounts := func(when string, want []mailbox.FolderStatus) {
		t.Helper()
		st, err := check(t, src, false)
		if err != nil {
			t.Fatalf("Check %s: %v", when, err)
		}
		if len(st) < 3 {
			t.Fatalf("Check %s reported %d folders, want at least 3: %+v", when, len(st), st)
		}
		for i, w := range want {
			got := st[i]
			if got.Path != w.Path || got.Exists != w.Exists || w.Messages >= 0 && got.Messages != w.Messages {
				t.Errorf("Check %s: folder %d = %+v, want %+v", when, i, got, w)
			}
			if got.Unseen < 0 || got.Unseen > got.Messages {
				t.Errorf("Check %s: folder %d: Unseen %d of %d messages", when, i, got.Unseen, got.Messages)
			}
		}
	}
	checkCounts("after seeding", []mailbox.FolderStatus{{Path: f.Import, Exists: true, Messages: 3}, {Path: f.Processed, Exists: true}, {Path: f.Error, Exists: true}})
	move(t, src, list(t, src, 0)[:1], mailbox.ToError)
	// (How many the import folder shows now depends on whether the
	// server expunges at once: -1 leaves it unchecked.)
	checkCounts("after a move", []mailbox.FolderStatus{{Path: f.Import, Exists: true, Messages: -1}, {Path: f.Processed, Exists: true}, {Path: f.Error, Exists: true, Messages: 1}})
}

// Check reports missing folders (NotFound) and, with create, creates the
// processed and error folders; the source uses them right away.
func (s *suite) testCheckCreate(t *testing.T) {
	msgs := messages("check-create", 2)
	src, fx := s.h.New(t, FixtureOptions{NoProcessed: true, NoError: true}, msgs)
	f := fx.Folders()
	refs := list(t, src, 0)

	st, err := check(t, src, false)
	if err == nil {
		t.Errorf("Check without create reported no error for the missing folders")
	} else if k := mailbox.KindOf(err); k != mailbox.NotFound {
		t.Errorf("Check without create: kind %v, want %v (%v)", k, mailbox.NotFound, err)
	}
	byPath := statusByPath(st)
	if !byPath[f.Import].Exists || byPath[f.Processed].Exists || byPath[f.Error].Exists {
		t.Errorf("Check without create = %+v; want the import folder to exist and the others not", st)
	}
	if fx.Exists(f.Processed) || fx.Exists(f.Error) {
		t.Fatalf("Check without create created folders")
	}

	st, err = check(t, src, true)
	if err != nil {
		t.Fatalf("Check with create: %v", err)
	}
	byPath = statusByPath(st)
	for _, p := range []string{f.Import, f.Processed, f.Error} {
		if !byPath[p].Exists {
			t.Errorf("Check with create: %q reported missing: %+v", p, st)
		}
	}
	if !fx.Exists(f.Processed) || !fx.Exists(f.Error) {
		t.Fatalf("Check with create did not create %q and %q", f.Processed, f.Error)
	}
	// Idempotent, and the folders are usable at once.
	if _, err := check(t, src, true); err != nil {
		t.Errorf("second Check with create: %v", err)
	}
	move(t, src, refs[:1], mailbox.ToProcessed)
	move(t, src, refs[1:], mailbox.ToError)
	s.sameBodies(t, "created processed folder", fx.Bodies(f.Processed), msgs[:1])
	s.sameBodies(t, "created error folder", fx.Bodies(f.Error), msgs[1:])

	// A new Source finds them too.
	if _, err := check(t, fx.NewSource(), false); err != nil {
		t.Errorf("Check from a new Source: %v", err)
	}
}

// With include_subfolders, messages of subfolders (also ones created after
// the first listing) are listed with their folder path, oldest first within
// each folder, and can be fetched and moved.
func (s *suite) testSubfolders(t *testing.T) {
	msgs := messages("subfolders-root", 2)
	src, fx := s.h.New(t, FixtureOptions{IncludeSubfolders: true}, msgs)
	f := fx.Folders()
	sub, deeper, later := f.Import+"/Sub", f.Import+"/Sub/Deeper Ä", f.Import+"/Later"
	want := map[string][][]byte{
		f.Import: msgs,
		sub:      {message("subfolders-sub", 0), message("subfolders-sub", 1)},
		deeper:   {message("subfolders-deeper", 0)},
	}
	for _, folder := range []string{sub, deeper} {
		for _, m := range want[folder] {
			fx.Add(folder, m)
		}
	}
	checkListing := func(refs []mailbox.Ref) {
		t.Helper()
		byFolder := map[string][]mailbox.Ref{}
		for _, r := range refs {
			byFolder[r.Folder] = append(byFolder[r.Folder], r)
		}
		for folder := range byFolder {
			if _, ok := want[folder]; !ok {
				t.Errorf("listed messages of folder %q", folder)
			}
		}
		for folder, bodies := range want {
			got := fetch(t, src, byFolder[folder])
			s.sameBodies(t, "listing of "+folder, bodiesOf(got), bodies)
		}
	}
	checkListing(list(t, src, 0))

	want[later] = [][]byte{message("subfolders-later", 0)}
	fx.Add(later, want[later][0])
	refs := list(t, src, 0)
	checkListing(refs)

	move(t, src, refs, mailbox.ToProcessed)
	for folder := range want {
		if n := fx.Count(folder); n != 0 {
			t.Errorf("%q holds %d messages after moving all, want 0", folder, n)
		}
	}
	if n := fx.Count(f.Processed); n != 6 {
		t.Errorf("processed folder holds %d messages, want 6", n)
	}
	if refs := list(t, src, 0); len(refs) != 0 {
		t.Errorf("List after moving everything: %q", keysOf(refs))
	}
}

// A missing import folder is a NotFound *mailbox.Error.
func (s *suite) testMissingImport(t *testing.T) {
	src, fx := s.h.New(t, FixtureOptions{NoImport: true}, nil)
	_, err := listErr(t, src, 0)
	if err == nil {
		t.Fatalf("List of a missing import folder succeeded")
	}
	if me := asError(t, "List of a missing import folder", err); me.Kind != mailbox.NotFound {
		t.Errorf("List of a missing import folder: kind %v, want %v (%v)", me.Kind, mailbox.NotFound, err)
	}
	st, err := check(t, src, true)
	if k := mailbox.KindOf(err); err == nil || k != mailbox.NotFound {
		t.Errorf("Check with a missing import folder: %v (kind %v), want a NotFound error", err, k)
	}
	if statusByPath(st)[fx.Folders().Import].Exists {
		t.Errorf("Check reports the missing import folder as existing: %+v", st)
	}
	if fx.Exists(fx.Folders().Import) {
		t.Errorf("Check created the import folder")
	}
}

// Rejected credentials are an Auth *mailbox.Error.
func (s *suite) testBadCredentials(t *testing.T) {
	src, fx := s.h.New(t, FixtureOptions{BadCredentials: true}, messages("bad-credentials", 1))
	_, err := listErr(t, src, 0)
	if err == nil {
		t.Fatalf("List with bad credentials succeeded")
	}
	if me := asError(t, "List with bad credentials", err); me.Kind != mailbox.Auth {
		t.Errorf("List with bad credentials: kind %v, want %v (%v)", me.Kind, mailbox.Auth, err)
	}
	if _, err := check(t, src, false); mailbox.KindOf(err) != mailbox.Auth {
		t.Errorf("Check with bad credentials: %v, want an Auth error", err)
	}
	if n := fx.Count(fx.Folders().Import); n != 1 {
		t.Errorf("import folder holds %d messages, want 1", n)
	}
}

// Two sources (workers) moving the same refs at the same time both succeed;
// every message ends up in the processed folder (once, with ExclusiveMove).
func (s *suite) testConcurrentMove(t *testing.T) {
	const rounds, n = 3, 10
	src, fx := s.h.New(t, FixtureOptions{}, nil)
	other := fx.NewSource()
	f := fx.Folders()
	var all [][]byte
	for round := range rounds {
		batch := messages(fmt.Sprintf("concurrent-%d", round), n)
		for _, m := range batch {
			fx.Add(f.Import, m)
		}
		all = append(all, batch...)
		a, b := list(t, src, 0), list(t, other, 0)
		if len(a) != n || !slices.Equal(keysOf(a), keysOf(b)) {
			t.Fatalf("round %d: the two sources list %d and %d refs (want %d, the same)", round, len(a), len(b), n)
		}
		var wg sync.WaitGroup
		errs := make([]error, 2)
		ctx := ctxOf(t)
		for i, w := range []struct {
			src  mailbox.Source
			refs []mailbox.Ref
		}{{src, a}, {other, b}} {
			wg.Add(1)
			go func() {
				defer wg.Done()
				errs[i] = w.src.Move(ctx, w.refs, mailbox.ToProcessed)
			}()
		}
		bounded(t, "two concurrent Moves", wg.Wait)
		for i, err := range errs {
			if err != nil {
				t.Errorf("round %d: Move by source %d: %v", round, i, err)
			}
		}
		if c := fx.Count(f.Import); c != 0 {
			t.Errorf("round %d: %d messages left in the import folder", round, c)
		}
	}
	got := fx.Bodies(f.Processed)
	seen := map[string]int{}
	for _, b := range got {
		seen[string(b)]++
	}
	for i, m := range all {
		c := seen[string(s.want(m))]
		switch {
		case c == 0:
			t.Errorf("message %d (%s) is not in the processed folder", i, subjectOf(m))
		case c > 1 && s.f.ExclusiveMove:
			t.Errorf("message %d (%s) is %d times in the processed folder", i, subjectOf(m), c)
		case c > 1:
			t.Logf("message %d (%s) is %d times in the processed folder (the backend has no ExclusiveMove)", i, subjectOf(m), c)
		}
	}
	if len(got) < len(all) || s.f.ExclusiveMove && len(got) != len(all) {
		t.Errorf("processed folder holds %d messages for %d moved", len(got), len(all))
	}
}
