// Package outbound defines how the sender hands a validated job to a
// transport (Microsoft Graph, SMTP with XOAUTH2), and how transports report
// failures so the sender can decide between retrying, waiting and giving up.
package outbound

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/mailpipe/mailpipe/pkg/mailjob"
)

// Attachments opens the body of an attachment stored in the JetStream
// object store (mailjob.ObjectRef); the transport closes the reader. The
// reader fails with mailjob-style errors when the object is missing or its
// size/SHA-256 differs from the reference.
type Attachments func(ctx context.Context, ref mailjob.ObjectRef) (io.ReadCloser, error)

// Result is what a successful Send did.
type Result struct {
	// InternetMessageID is the Message-ID the mail was sent with (derived
	// from the job id, so a retry can find an earlier send).
	InternetMessageID string
	// AlreadySent is true when an earlier attempt had sent the mail and
	// this one only found it (nothing was sent again).
	AlreadySent bool
	// Requests counts requests made (for metrics).
	Requests int
}

// Transport sends mail as a mailbox.
//
// Send must be idempotent per job.JobID: when it is called again for a job
// that an earlier attempt may have sent (the sender does so after a crash,
// a lost ack or a redelivery), it must find that mail (e.g. in Sent Items,
// by the Internet Message-ID derived from the job id) and return
// AlreadySent instead of sending a second copy. Send owns no retry loop:
// it makes one attempt and classifies its failure; the sender retries.
// Send is safe for concurrent use for different jobs.
type Transport interface {
	Send(ctx context.Context, job *mailjob.Job, att Attachments) (Result, error)
	// CheckSendAs tests, without sending, whether the transport can send as
	// mailbox (token, permission, mailbox exists) as far as that can be
	// tested; it says what it could not test.
	CheckSendAs(ctx context.Context, mailbox string) (string, error)
	Close() error
}

// Kind classifies a send failure.
type Kind int

const (
	// Transient: retry later with backoff (5xx, network, timeout).
	Transient Kind = iota
	// Throttled: retry after RetryAfter (429, mailbox sending limits).
	Throttled
	// Auth: no token, or no right to send as the mailbox; an operator must
	// act. Not retried by default.
	Auth
	// Permanent: the job can never be sent as it is (too large, recipient
	// refused, bad header); not retried.
	Permanent
	// Ambiguous: the attempt may or may not have sent the mail (e.g. the
	// connection broke after the send request left). The next attempt must
	// look before sending again (Send does that anyway).
	Ambiguous
)

func (k Kind) String() string {
	return [...]string{"transient", "throttled", "auth", "permanent", "ambiguous"}[k]
}

// Error is a classified send failure.
type Error struct {
	Kind       Kind
	ReasonCode string // one of mailjob.Reason*
	RetryAfter time.Duration
	Err        error
}

func (e *Error) Error() string {
	s := e.Kind.String() + " (" + e.ReasonCode + ")"
	if e.Err != nil {
		s += ": " + e.Err.Error()
	}
	if e.RetryAfter > 0 {
		s += fmt.Sprintf(" (retry after %s)", e.RetryAfter)
	}
	return s
}

func (e *Error) Unwrap() error { return e.Err }

// KindOf returns err's Kind (Transient when it carries none).
func KindOf(err error) Kind {
	var e *Error
	if errors.As(err, &e) {
		return e.Kind
	}
	return Transient
}

// ReasonOf returns err's reason code (mailjob.ReasonInternal when none).
func ReasonOf(err error) string {
	var e *Error
	if errors.As(err, &e) && e.ReasonCode != "" {
		return e.ReasonCode
	}
	return mailjob.ReasonInternal
}

// MessageID derives the Internet Message-ID of a job's mail: the same for
// every attempt, unique per job id and sending domain.
func MessageID(jobID, from string) string {
	domain := "mailpipe.invalid"
	for i := len(from) - 1; i >= 0; i-- {
		if from[i] == '@' {
			domain = from[i+1:]
			break
		}
	}
	return "<mailpipe." + jobID + "@" + domain + ">"
}

// Errors of an Attachments opener, or of the reader it returns: wrap them
// (fmt.Errorf("...: %w", ErrAttachmentNotFound)) so that transports report
// the job's failure as permanent with mailjob.ReasonAttachmentNotFound or
// mailjob.ReasonAttachmentMismatch. A transport that finds the content
// longer or shorter than ObjectRef.Size reports ErrAttachmentMismatch
// itself. Other errors of the opener count as transient.
var (
	// ErrAttachmentNotFound: the object is not in its bucket.
	ErrAttachmentNotFound = errors.New("attachment object not found")
	// ErrAttachmentMismatch: the object's size or SHA-256 differs from its
	// reference.
	ErrAttachmentMismatch = errors.New("attachment object differs from its reference (size or sha256)")
)
