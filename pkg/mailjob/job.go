// Package mailjob is the producer side of mailpipe's outbound mail
// contract, documented in docs/jobs.md: programs that want mail sent put a
// Job on NATS JetStream, and mailpipe's sender delivers it through
// Microsoft Graph as a shared mailbox and reports what happened with
// status events.
//
// A producer builds a Job, uploads large attachments with
// UploadAttachment, and calls Publish, which validates the job, sends it
// with its job_id as the JetStream de-duplication id and tells whether
// JetStream had already seen it:
//
//	job := &mailjob.Job{
//		JobID:   "erp-invoice-2026-0142", // derive it from your own data, so that a retry reuses it
//		From:    "billing@example.com",
//		To:      []mailjob.Recipient{{Address: "ap@customer.example", Name: "Customer, Accounts Payable"}},
//		Subject: "Invoice 2026-0142",
//		Text:    "Please find the invoice attached.",
//	}
//	res, err := mailjob.Publish(ctx, js, job)
//	var verr *mailjob.ValidationError
//	if errors.As(err, &verr) {
//		for _, p := range verr.Problems { log.Println(p) } // "to[0].address: ..."
//	}
//
// WatchStatus follows a job's status events (accepted, sent, failed).
// The JSON Schema of a job is Schema; ParseJob and Validate implement it
// (and the rules a schema cannot express) for Go.
package mailjob

import (
	"encoding/base64"
	"time"
)

// Job is one outbound mail. Its JSON form is the payload of a job message
// and is described by the JSON Schema returned by Schema.
type Job struct {
	// JobID identifies the job: 1 to 128 characters A-Z a-z 0-9 . _ : -.
	// It is the idempotency key (sent as Nats-Msg-Id): publishing the same
	// job_id again within the stream's duplicate window stores nothing new.
	// Derive it from the producer's own data (document number, ...), so that
	// a producer that retries after a crash or timeout reuses it.
	JobID string `json:"job_id"`
	// From is the shared mailbox the mail is sent as; it must be on the
	// sender's allow-list. A bare address, no display name.
	From string `json:"from"`
	// SenderProfile optionally names a sender profile (credentials) of the
	// sender's configuration; empty means the mailbox's default.
	SenderProfile string `json:"sender_profile,omitempty"`

	To      []Recipient `json:"to,omitempty"`
	Cc      []Recipient `json:"cc,omitempty"`
	Bcc     []Recipient `json:"bcc,omitempty"`
	ReplyTo []Recipient `json:"reply_to,omitempty"`

	// Subject is one line of text; it may be empty but is always sent.
	Subject string `json:"subject"`
	// Text and HTML are the bodies; at least one must be non-empty. With
	// both, HTML is what recipients see; whether the text also goes along
	// as a plain-text alternative is up to the sender (a Graph message has
	// one body).
	Text string `json:"text,omitempty"`
	HTML string `json:"html,omitempty"`

	Attachments []Attachment `json:"attachments,omitempty"`

	// Headers are custom Internet message headers. Names must start with
	// "X-" or "x-" (Exchange refuses the whole message otherwise); values
	// are one line of at most 998 bytes. "X-Mailpipe-" is reserved.
	Headers map[string]string `json:"headers,omitempty"`

	// SaveToSentItems keeps a copy in the mailbox's Sent Items; nil means
	// true. See SavesToSentItems.
	SaveToSentItems *bool `json:"save_to_sent_items,omitempty"`
	// Importance is low, normal (the default when empty) or high.
	Importance Importance `json:"importance,omitempty"`

	// Correlation is echoed in every status event of the job: at most 16
	// keys of 1-64 characters A-Z a-z 0-9 _ . : -, values of at most 256
	// characters.
	Correlation map[string]string `json:"correlation,omitempty"`

	// CreatedAt is when the producer created the job. Publish sets it to
	// the current time when it is zero.
	CreatedAt time.Time `json:"created_at,omitzero"`
}

// Recipient is an e-mail address with an optional display name.
type Recipient struct {
	// Address is a bare address (local@domain; internationalized domain
	// names are allowed), never "Name <address>".
	Address string `json:"address"`
	// Name is the display name, one line of at most 256 characters. Commas
	// and quotes need no escaping.
	Name string `json:"name,omitempty"`
}

// Attachment is a file attached to the mail. Its content is either inline
// in the job (ContentBase64, for small files) or an object in the
// JetStream object store (Object), never both.
type Attachment struct {
	// Filename is the name shown to recipients (no path separators).
	Filename string `json:"filename"`
	// ContentType is the media type, e.g. "application/pdf".
	ContentType string `json:"content_type"`
	// ContentID is the Content-ID (without < >) an HTML body refers to as
	// "cid:<ContentID>". Required when Inline is true.
	ContentID string `json:"content_id,omitempty"`
	// Inline marks a picture shown in the HTML body rather than listed as
	// an attachment.
	Inline bool `json:"inline,omitempty"`
	// ContentBase64 is the content in standard base64 with padding and
	// without line breaks. All inline content of a job together is limited
	// to Limits.MaxInlineSize encoded bytes.
	ContentBase64 string `json:"content_base64,omitempty"`
	// Object refers to content uploaded to the object store beforehand
	// (UploadAttachment).
	Object *ObjectRef `json:"object,omitempty"`
}

// ObjectRef names an object in a JetStream object store bucket.
type ObjectRef struct {
	Bucket string `json:"bucket"`
	Name   string `json:"name"`
	// Size in bytes, if known (0 means unknown). The sender checks it.
	Size int64 `json:"size,omitempty"`
	// SHA256 is the hex SHA-256 of the content, if known. The sender checks
	// it.
	SHA256 string `json:"sha256,omitempty"`
}

// Importance of a mail.
type Importance string

// Importance values. The empty value means ImportanceNormal.
const (
	ImportanceLow    Importance = "low"
	ImportanceNormal Importance = "normal"
	ImportanceHigh   Importance = "high"
)

// SavesToSentItems reports whether the sender keeps a copy in Sent Items
// (SaveToSentItems, true when unset).
func (j *Job) SavesToSentItems() bool {
	return j.SaveToSentItems == nil || *j.SaveToSentItems
}

// Recipients is the number of recipients in To, Cc and Bcc together.
func (j *Job) Recipients() int { return len(j.To) + len(j.Cc) + len(j.Bcc) }

// Bool returns a pointer to v, for Job.SaveToSentItems.
func Bool(v bool) *bool { return &v }

// Limits are the limits a job must respect beyond its format. The sender
// has its own (configurable) limits and the final word; a producer
// validates with the same values to find problems before publishing. A
// zero field means the default in DefaultLimits.
type Limits struct {
	// MaxRecipients bounds To, Cc and Bcc together. Exchange Online refuses
	// more than 1,000 recipients per message.
	MaxRecipients int
	// MaxAttachments bounds the number of attachments.
	MaxAttachments int
	// MaxTotalSize bounds the bodies plus the attachments' decoded content
	// (objects count with their size, when given), in bytes. Exchange
	// measures the encoded message, which is about a third larger for
	// attachments; keep well under its limit (35 MB by default).
	MaxTotalSize int64
	// MaxInlineSize bounds the length of all content_base64 strings of a
	// job together, in bytes.
	MaxInlineSize int
	// MaxJobSize bounds the JSON encoding of a job, in bytes: the job must
	// fit in one NATS message (the server's max_payload, 1 MiB by default,
	// including headers).
	MaxJobSize int
}

// DefaultLimits are the sender's default limits.
var DefaultLimits = Limits{
	MaxRecipients:  500,
	MaxAttachments: 250,
	MaxTotalSize:   35 << 20,
	MaxInlineSize:  700 << 10,
	MaxJobSize:     1000 << 10,
}

// withDefaults fills zero fields from DefaultLimits.
func (l Limits) withDefaults() Limits {
	if l.MaxRecipients <= 0 {
		l.MaxRecipients = DefaultLimits.MaxRecipients
	}
	if l.MaxAttachments <= 0 {
		l.MaxAttachments = DefaultLimits.MaxAttachments
	}
	if l.MaxTotalSize <= 0 {
		l.MaxTotalSize = DefaultLimits.MaxTotalSize
	}
	if l.MaxInlineSize <= 0 {
		l.MaxInlineSize = DefaultLimits.MaxInlineSize
	}
	if l.MaxJobSize <= 0 {
		l.MaxJobSize = DefaultLimits.MaxJobSize
	}
	return l
}

// Fixed limits of the format (the same for every deployment; the JSON
// Schema states them too).
const (
	MaxJobIDLen          = 128
	MaxAddressLen        = 254 // characters
	MaxNameLen           = 256 // characters, display names
	MaxSubjectLen        = 998 // characters
	MaxHeaders           = 64
	MaxHeaderNameLen     = 128       // bytes, "X-" included
	MaxHeaderValueLen    = 998       // bytes
	MaxFilenameLen       = 255       // characters
	MaxContentTypeLen    = 255       // characters
	MaxContentIDLen      = 255       // characters
	MaxObjectNameLen     = 512       // characters
	MaxObjectSize        = 150 << 20 // Graph's largest attachment
	MaxCorrelationKeys   = 16
	MaxCorrelationKeyLen = 64
	MaxCorrelationValLen = 256 // characters
	MaxSenderProfileLen  = 64
)

// InlineAttachment returns an attachment carrying data in the job
// (base64-encoded). Keep it small: all inline content of a job is limited
// to Limits.MaxInlineSize encoded bytes; upload larger files with
// UploadAttachment.
func InlineAttachment(filename, contentType string, data []byte) Attachment {
	return Attachment{Filename: filename, ContentType: contentType, ContentBase64: base64.StdEncoding.EncodeToString(data)}
}

// ObjectAttachment returns an attachment whose content is the uploaded
// object ref.
func ObjectAttachment(filename, contentType string, ref ObjectRef) Attachment {
	return Attachment{Filename: filename, ContentType: contentType, Object: &ref}
}
