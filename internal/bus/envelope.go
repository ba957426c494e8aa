package bus

import "time"

// Envelope is the metadata published with an imported message. The header
// names it maps to are the public contract in docs/messages.md.
type Envelope struct {
	// DedupID becomes Nats-Msg-Id and ce-id (mailbox.Ref.DedupID()).
	DedupID string
	// Mailbox is the configured mailbox name; the subject is
	// <stream.subject_prefix>.<Mailbox>.
	Mailbox string
	Address string // mailbox e-mail address
	Folder  string // folder the message was found in ("/"-separated)
	Source  string // "imap" or "graph"
	// SourceID is the source-specific identity: "<uidvalidity>/<uid>" for
	// IMAP, the immutable id for Graph.
	SourceID string
	// Header fields of the mail (decoded to UTF-8, single line).
	MessageID string
	From      string
	Subject   string
	Date      string // the Date header as written
	// Received is the server's arrival time.
	Received time.Time
	Size     int64
	// SHA256 is the hex SHA-256 of the raw bytes (filled in by the bus for
	// large messages from the object store digest if empty).
	SHA256 string
}

// DeadLetter describes a message that could not be handled.
type DeadLetter struct {
	Envelope
	Reason string
	// Body, when not nil, is the raw message (only for messages under the
	// large-message threshold); otherwise the dead letter carries headers only.
	Body []byte
}
