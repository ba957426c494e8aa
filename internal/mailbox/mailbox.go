// Package mailbox defines the contract every mailbox source (IMAP, Graph)
// implements, the identity of a message, and the error kinds sources report.
//
// A Source is bound to one mailbox and its configured folders. It is used by
// one goroutine at a time (the importer's per-mailbox loop); implementations
// need not be safe for concurrent use.
package mailbox

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"strconv"
	"time"
)

// Dest names where a handled message goes.
type Dest int

const (
	// ToProcessed is the folder for mail published successfully.
	ToProcessed Dest = iota
	// ToError is the folder for mail that cannot be handled.
	ToError
)

func (d Dest) String() string {
	if d == ToError {
		return "error"
	}
	return "processed"
}

// Ref identifies one message in a source folder. Its identity is stable for
// as long as the message stays in that folder: for IMAP (mailbox, folder,
// UIDVALIDITY, UID); for Graph (mailbox, immutable id).
type Ref struct {
	Mailbox string // configured mailbox name
	Folder  string // folder path, "/"-separated, as the user sees it
	// IMAP identity.
	UIDValidity uint32
	UID         uint32
	// Graph identity (immutable id).
	ID string
	// Size in bytes as reported by the server (0 if unknown).
	Size int64
	// Received is the server's arrival time (INTERNALDATE / receivedDateTime).
	Received time.Time
}

// Key is the identity of the message as a string.
func (r Ref) Key() string {
	if r.ID != "" {
		return "graph/" + r.Mailbox + "/" + r.ID
	}
	return "imap/" + r.Mailbox + "/" + r.Folder + "/" + strconv.FormatUint(uint64(r.UIDValidity), 10) + "/" + strconv.FormatUint(uint64(r.UID), 10)
}

// DedupID is the Nats-Msg-Id for this message: a hash of Key, so distinct
// messages sharing a Message-ID header are still distinct.
func (r Ref) DedupID() string {
	sum := sha256.Sum256([]byte(r.Key()))
	return hex.EncodeToString(sum[:16])
}

// String is for logs.
func (r Ref) String() string {
	if r.ID != "" {
		return r.Mailbox + ":" + r.ID
	}
	return fmt.Sprintf("%s:%s:%d:%d", r.Mailbox, r.Folder, r.UIDValidity, r.UID)
}

// Message is a message being streamed from the source.
type Message struct {
	Ref Ref
	// Size of Body in bytes, exact.
	Size int64
	// Body yields the raw RFC 5322 bytes. It is valid only during the
	// callback it was passed to.
	Body io.Reader
}

// Listing is the content of the import folder(s) at one moment.
type Listing struct {
	// Refs are the messages found, oldest first within each folder.
	Refs []Ref
	// Validity maps each listed folder to its UIDVALIDITY (IMAP only), so
	// the caller can detect a change against what it saw before.
	Validity map[string]uint32
}

// FolderStatus describes one folder for `importer check`.
type FolderStatus struct {
	Path     string
	Exists   bool
	Messages int
	Unseen   int
}

// Source is one mailbox reached over one protocol.
//
// All methods block until done or ctx ends; none retries on its own beyond
// reconnecting once a broken connection is detected: the caller owns retry
// policy and receives classified errors (see Error).
type Source interface {
	// List returns the messages currently in the import folder (and its
	// subfolders when configured), oldest first, at most limit (0: all).
	List(ctx context.Context, limit int) (Listing, error)

	// Fetch streams the given messages, calling fn once per message in order
	// with a Body that must be consumed (or abandoned) before fn returns.
	// A message that disappeared meanwhile (moved by another worker) is
	// skipped without error. An error returned by fn stops Fetch and is
	// returned as is. Bodies are fetched without setting \Seen.
	Fetch(ctx context.Context, refs []Ref, fn func(*Message) error) error

	// Move moves the messages to dest. Messages no longer in their folder
	// are not an error (another worker moved them): Move is idempotent.
	// A move is never done by deleting before the copy is confirmed.
	Move(ctx context.Context, refs []Ref, dest Dest) error

	// Check reports the import, processed and error folders for
	// `importer check`; with create, missing processed/error folders are
	// created.
	Check(ctx context.Context, create bool) ([]FolderStatus, error)

	// Close releases connections. It does not block on the network for
	// longer than the source's timeout.
	Close() error
}

// Kind classifies an error for retry decisions.
type Kind int

const (
	// Transient errors (network, 5xx, server busy) are retried with backoff.
	Transient Kind = iota
	// Throttled errors carry a RetryAfter to wait before the next request.
	Throttled
	// Auth errors (bad token, wrong credentials, missing permission) need
	// an operator; they are retried slowly.
	Auth
	// NotFound: a folder or message does not exist.
	NotFound
	// Permanent errors will not succeed on retry (bad request, too large).
	Permanent
)

func (k Kind) String() string {
	switch k {
	case Transient:
		return "transient"
	case Throttled:
		return "throttled"
	case Auth:
		return "auth"
	case NotFound:
		return "not-found"
	default:
		return "permanent"
	}
}

// Error is a classified source error.
type Error struct {
	Kind       Kind
	Op         string // e.g. "select", "fetch", "move"
	Mailbox    string
	Folder     string
	RetryAfter time.Duration
	Err        error
}

func (e *Error) Error() string {
	s := e.Op
	if e.Mailbox != "" {
		s += " mailbox " + strconv.Quote(e.Mailbox)
	}
	if e.Folder != "" {
		s += " folder " + strconv.Quote(e.Folder)
	}
	if e.Err != nil {
		s += ": " + e.Err.Error()
	}
	if e.RetryAfter > 0 {
		s += " (retry after " + e.RetryAfter.String() + ")"
	}
	return s
}

func (e *Error) Unwrap() error { return e.Err }

// KindOf returns the kind of err: the Kind of the first *Error in its chain,
// Transient when there is none.
func KindOf(err error) Kind {
	var e *Error
	if asError(err, &e) {
		return e.Kind
	}
	return Transient
}

// RetryAfterOf returns the server-suggested wait carried by err, if any.
func RetryAfterOf(err error) time.Duration {
	var e *Error
	if asError(err, &e) {
		return e.RetryAfter
	}
	return 0
}
