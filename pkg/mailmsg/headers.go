package mailmsg

// Header names of the messages mailpipe publishes. NATS header keys are
// case-sensitive: these are the exact spellings on the wire. The meaning of
// each header is documented in docs/messages.md.
const (
	// CloudEvents attributes (binary content mode).
	HeaderSpecVersion     = "ce-specversion"
	HeaderID              = "ce-id"
	HeaderSource          = "ce-source"
	HeaderType            = "ce-type"
	HeaderTime            = "ce-time"
	HeaderDataContentType = "ce-datacontenttype"
	HeaderCESubject       = "ce-subject"

	// HeaderMsgID is the JetStream de-duplication id; equal to ce-id for
	// mail, "dl-" + ce-id for dead letters.
	HeaderMsgID = "Nats-Msg-Id"

	HeaderMailbox   = "Mailpipe-Mailbox"
	HeaderAddress   = "Mailpipe-Address"
	HeaderFolder    = "Mailpipe-Folder"
	HeaderSrc       = "Mailpipe-Source"
	HeaderSourceID  = "Mailpipe-Source-Id"
	HeaderMessageID = "Mailpipe-Message-Id"
	HeaderFrom      = "Mailpipe-From"
	HeaderSubject   = "Mailpipe-Subject"
	HeaderDate      = "Mailpipe-Date"
	HeaderReceived  = "Mailpipe-Received"
	HeaderSize      = "Mailpipe-Size"
	HeaderSHA256    = "Mailpipe-Sha256"

	// Object-store reference of a large message (empty payload).
	HeaderBodyBucket = "Mailpipe-Body-Bucket"
	HeaderBodyObject = "Mailpipe-Body-Object"
	HeaderBodyDigest = "Mailpipe-Body-Digest"

	// HeaderReason is set on dead letters only.
	HeaderReason = "Mailpipe-Reason"
)

// Values of the CloudEvents attributes.
const (
	SpecVersion     = "1.0"
	TypeReceived    = "com.mailpipe.mail.received.v1"
	TypeDeadLetter  = "com.mailpipe.mail.deadletter.v1"
	ContentTypeMail = "message/rfc822"
	// SourcePrefix is followed by the mailbox name in ce-source.
	SourcePrefix = "/mailpipe/"
	// DeadLetterIDPrefix prefixes Nats-Msg-Id of dead letters.
	DeadLetterIDPrefix = "dl-"
)
