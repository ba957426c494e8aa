// Package mailboxtest is the conformance suite of mailbox.Source: one set of
// behaviours that every source (IMAP against a real Dovecot, Graph against
// a fake Graph server) must show, run with
//
//	func TestConformance(t *testing.T) { mailboxtest.Run(t, myHarness{}) }
//
// A Harness creates, for each subtest, a fresh mailbox on the backend, a
// Source bound to it and a Fixture that inspects and changes the mailbox
// behind the Source's back. Subtests run in parallel (t.Parallel), so
// Harness.New must be safe for concurrent use; each call must return an
// independent mailbox.
//
// Nothing in the suite skips: a backend that cannot show a behaviour says
// so through Features (or by not implementing an optional Fixture
// interface), and the suite then checks the weaker property it documents.
package mailboxtest

import (
	"testing"

	"github.com/mailpipe/mailpipe/internal/mailbox"
)

// Harness creates fresh mailboxes of one backend.
type Harness interface {
	// New returns a Source bound to a fresh mailbox whose import folder
	// holds msgs in order (msgs[0] is the oldest), and a Fixture of that
	// mailbox. The processed and error folders exist and are empty unless
	// opts says otherwise. Everything is released when t ends; the Source
	// is closed by then too (the suite may Close it earlier). New fails t
	// on error.
	New(t *testing.T, opts FixtureOptions, msgs [][]byte) (mailbox.Source, Fixture)

	// Features tells how the backend differs where sources may.
	Features() Features
}

// FixtureOptions vary the mailbox and the Source's configuration.
type FixtureOptions struct {
	// IncludeSubfolders configures the Source to list the import folder's
	// subfolders too (folders.include_subfolders).
	IncludeSubfolders bool
	// NoImport, NoProcessed and NoError leave that folder missing from
	// the mailbox (the Source is configured with its path all the same).
	// With NoImport, msgs must be empty.
	NoImport, NoProcessed, NoError bool
	// BadCredentials configures the Source with credentials the server
	// rejects (a wrong password, a token for another user or resource).
	// The Fixture still works.
	BadCredentials bool
}

// Features describe what the backend under test does differently.
type Features struct {
	// CRLF: the server stores or serves messages with every bare LF
	// turned into CRLF (IMAP servers do, RFC 3501 literals being CRLF).
	// Fetch then yields, and sizes, the converted bytes.
	CRLF bool
	// ExclusiveMove: when two clients move the same message at the same
	// moment, the server moves it once (Exchange's MOVE, Graph's move).
	// Without it (Dovecot's maildir MOVE and COPY are copy-then-expunge
	// with no lock across sessions) both moves still succeed and nothing
	// is lost, but the destination may hold the message twice.
	ExclusiveMove bool
}

// Folders are the folder paths a Source is configured with, "/"-separated
// as in the configuration file.
type Folders struct {
	Import, Processed, Error string
}

// Fixture inspects and changes one mailbox directly (an admin connection,
// the fake server's state), not through the Source under test. Its
// methods fail the test given to Harness.New on error; call them from that
// test's goroutine. Folder arguments are "/"-separated paths such as
// Folders().Import or Folders().Import+"/Sub".
type Fixture interface {
	// Folders are the paths the Source is configured with.
	Folders() Folders
	// NewSource returns another Source for the same mailbox, configured
	// like the one New returned (same options), with its own connection:
	// another worker, or the same worker after a restart. It is closed
	// when the test ends.
	NewSource() mailbox.Source
	// Exists reports whether folder exists.
	Exists(folder string) bool
	// Count is the number of messages a mail client shows in folder
	// (messages only flagged for deletion are not counted).
	Count(folder string) int
	// Bodies returns the raw messages Count counts, oldest first, as the
	// server serves them.
	Bodies(folder string) [][]byte
	// Add stores raw in folder, creating the folder (and its parents) if
	// needed, as its newest message.
	Add(folder string, raw []byte)
}

// SeenFixture is a Fixture that can tell whether messages are marked read
// (IMAP \Seen, Graph isRead). The suite checks that listing, fetching and
// moving leave that mark alone only when the Fixture implements it.
type SeenFixture interface {
	Fixture
	// Seen reports for each message Bodies returns whether it is marked
	// read.
	Seen(folder string) []bool
}
