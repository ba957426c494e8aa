package mailjob

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// ErrNotStatus is returned by ParseStatus for a message that is not a
// mailpipe status event.
var ErrNotStatus = errors.New("mailjob: not a mailpipe status event")

// StatusType is the type of a status event.
type StatusType string

// Status event types. More may be added within version 1: ignore types
// you do not know.
const (
	// StatusAccepted: a sender took the job (it passed validation and the
	// allow-list) and is about to send it.
	StatusAccepted StatusType = "accepted"
	// StatusSent: Microsoft 365 accepted the mail for delivery. Final.
	StatusSent StatusType = "sent"
	// StatusFailed: an attempt failed. Final when Permanent is true;
	// otherwise the sender tries again later.
	StatusFailed StatusType = "failed"
)

// Reason codes of failed events (StatusEvent.ReasonCode) and dead letters.
// They are stable identifiers for programs; Reason is text for humans. New
// codes may appear within version 1: decide on Permanent, not on the code.
const (
	// Permanent: the job itself is wrong; publishing it again fails again.
	ReasonInvalidJob           = "invalid_job"            // format or limits (the reason lists every problem)
	ReasonUnsupportedType      = "unsupported_type"       // ce-type or ce-specversion not understood
	ReasonSenderNotAllowed     = "sender_not_allowed"     // from is not on the sender's allow-list
	ReasonUnknownSenderProfile = "unknown_sender_profile" // sender_profile is not configured
	ReasonAttachmentNotFound   = "attachment_not_found"   // an object is not in its bucket
	ReasonAttachmentMismatch   = "attachment_mismatch"    // an object's size or sha256 differs from the job
	ReasonMessageTooLarge      = "message_too_large"      // Exchange refused the size of the message
	ReasonRecipientRejected    = "recipient_rejected"     // Graph refused a recipient address
	// Permanent until an administrator acts.
	ReasonSendAsDenied    = "send_as_denied"    // no Send As right on the mailbox (ErrorSendAsDenied)
	ReasonMailboxNotFound = "mailbox_not_found" // the from mailbox does not exist
	// Permanent: the last allowed attempt failed transiently; the reason
	// repeats that failure.
	ReasonAttemptsExhausted = "attempts_exhausted"
	// Transient: the sender tries again (Permanent false) until it gives up.
	ReasonThrottled        = "throttled"         // Graph answered 429, or a sending limit of the mailbox was reached
	ReasonGraphUnavailable = "graph_unavailable" // 5xx, timeout, network
	ReasonAuthFailed       = "auth_failed"       // no token for the sender profile
	ReasonInternal         = "internal"          // unexpected error in the sender
)

// ReasonCodes lists the reason codes of this version.
var ReasonCodes = []string{
	ReasonInvalidJob, ReasonUnsupportedType, ReasonSenderNotAllowed, ReasonUnknownSenderProfile,
	ReasonAttachmentNotFound, ReasonAttachmentMismatch, ReasonMessageTooLarge, ReasonRecipientRejected,
	ReasonSendAsDenied, ReasonMailboxNotFound, ReasonAttemptsExhausted,
	ReasonThrottled, ReasonGraphUnavailable, ReasonAuthFailed, ReasonInternal,
}

// StatusEvent reports what happened to a job. Its JSON form is the
// payload of a status message.
type StatusEvent struct {
	JobID string     `json:"job_id"`
	Type  StatusType `json:"type"`
	// Time is when the sender published the event.
	Time time.Time `json:"time"`
	// Attempt counts the deliveries of the job to a sender, from 1.
	Attempt int `json:"attempt"`
	// From is the job's from address.
	From string `json:"from,omitempty"`
	// Permanent is set on failed events: true when the sender gave up.
	// (Always present in the JSON of failed events.)
	Permanent bool `json:"-"`
	// Reason says why an attempt failed, for humans.
	Reason string `json:"reason,omitempty"`
	// ReasonCode is one of the Reason* constants.
	ReasonCode string `json:"reason_code,omitempty"`
	// InternetMessageID is the Message-ID of the sent mail (sent events).
	InternetMessageID string `json:"internet_message_id,omitempty"`
	// Correlation is the job's correlation object, echoed.
	Correlation map[string]string `json:"correlation,omitempty"`

	// Sequence is the event's stream sequence when it was read from
	// JetStream (not part of the payload).
	Sequence uint64 `json:"-"`
}

type statusWire StatusEvent

// MarshalJSON writes permanent on failed events only.
func (e StatusEvent) MarshalJSON() ([]byte, error) {
	var w struct {
		statusWire
		Permanent *bool `json:"permanent,omitempty"`
	}
	w.statusWire = statusWire(e)
	if e.Type == StatusFailed || e.Permanent {
		w.Permanent = &e.Permanent
	}
	return json.Marshal(w)
}

// UnmarshalJSON reads a status event; unknown fields are ignored.
func (e *StatusEvent) UnmarshalJSON(data []byte) error {
	var w struct {
		statusWire
		Permanent *bool `json:"permanent"`
	}
	if err := json.Unmarshal(data, &w); err != nil {
		return err
	}
	*e = StatusEvent(w.statusWire)
	e.Permanent = w.Permanent != nil && *w.Permanent
	return nil
}

// Final reports whether no more events are expected for the job: it was
// sent, or it failed permanently.
func (e *StatusEvent) Final() bool {
	return e.Type == StatusSent || (e.Type == StatusFailed && e.Permanent)
}

// ID is the event's ce-id and Nats-Msg-Id: job_id/type/attempt, unique per
// event, so that a sender publishing an event again stores it once.
func (e *StatusEvent) ID() string {
	return e.JobID + "/" + string(e.Type) + "/" + strconv.Itoa(e.Attempt)
}

// ParseStatus reads a status event from a JetStream message.
func ParseStatus(msg jetstream.Msg) (*StatusEvent, error) {
	ev, err := ParseStatusHeaders(msg.Headers(), msg.Data())
	if err != nil {
		return nil, err
	}
	if md, err := msg.Metadata(); err == nil {
		ev.Sequence = md.Sequence.Stream
	}
	return ev, nil
}

// ParseStatusHeaders is ParseStatus for a message received some other way
// (core NATS subscription, a stream message fetched by sequence).
func ParseStatusHeaders(h nats.Header, data []byte) (*StatusEvent, error) {
	if v := h.Get(HeaderSpecVersion); v != SpecVersion {
		return nil, fmt.Errorf("%w: %s is %q, want %q", ErrNotStatus, HeaderSpecVersion, v, SpecVersion)
	}
	if v := h.Get(HeaderType); v != TypeStatus {
		return nil, fmt.Errorf("%w: %s is %q, want %q", ErrNotStatus, HeaderType, v, TypeStatus)
	}
	var ev StatusEvent
	if err := json.Unmarshal(data, &ev); err != nil {
		return nil, fmt.Errorf("mailjob: malformed status event: %w", err)
	}
	if ev.JobID == "" || ev.Type == "" {
		return nil, fmt.Errorf("mailjob: malformed status event: job_id and type are required")
	}
	return &ev, nil
}

// PublishStatus publishes a status event on StatusSubject(prefix,
// ev.JobID) with the CloudEvents headers, Mailpipe-Job-Id and
// Mailpipe-Status, and ev.ID() as Nats-Msg-Id. Time is set when zero. It
// is the sender's side of the contract; WithSubjectPrefix and WithStream
// apply.
func PublishStatus(ctx context.Context, js jetstream.JetStream, ev *StatusEvent, opts ...Option) (*PublishResult, error) {
	o := buildOptions(opts, DefaultStatusPrefix)
	v := &validator{}
	v.jobID("job_id", ev.JobID)
	if err := v.err(); err != nil {
		return nil, err
	}
	if ev.Type == "" {
		return nil, errors.New("mailjob: status event without type")
	}
	if ev.Type == StatusFailed && (ev.Reason == "" || ev.ReasonCode == "") {
		return nil, errors.New("mailjob: failed status event without reason and reason_code")
	}
	if ev.Time.IsZero() {
		ev.Time = time.Now().UTC()
	}
	data, err := json.Marshal(ev)
	if err != nil {
		return nil, fmt.Errorf("mailjob: encode status event: %w", err)
	}
	msg := nats.NewMsg(StatusSubject(o.prefix, ev.JobID))
	msg.Data = data
	h := msg.Header
	source := StatusSourcePrefix + "unknown"
	if ev.From != "" {
		source = StatusSourcePrefix + MailboxToken(ev.From)
	}
	h.Set(HeaderSpecVersion, SpecVersion)
	h.Set(HeaderID, ev.ID())
	h.Set(HeaderSource, source)
	h.Set(HeaderType, TypeStatus)
	h.Set(HeaderTime, ev.Time.UTC().Format(time.RFC3339Nano))
	h.Set(HeaderDataContentType, ContentTypeJSON)
	h.Set(HeaderCESubject, ev.JobID)
	h.Set(HeaderMsgID, ev.ID())
	h.Set(HeaderJobID, ev.JobID)
	h.Set(HeaderStatus, string(ev.Type))
	return publish(ctx, js, msg, o)
}

// WatchStatus delivers the status events of a job: those already in the
// status stream, then new ones as they come. The channel is closed after
// a final event (Final), when ctx ends or when the connection closes.
// Events of other jobs whose ids share the subject token are skipped.
//
// The status stream is found by subject unless WithStream names it;
// WithSubjectPrefix sets the prefix (default DefaultStatusPrefix).
func WatchStatus(ctx context.Context, js jetstream.JetStream, jobID string, opts ...Option) (<-chan StatusEvent, error) {
	o := buildOptions(opts, DefaultStatusPrefix)
	subject := StatusSubject(o.prefix, jobID)
	stream := o.stream
	if stream == "" {
		var err error
		if stream, err = js.StreamNameBySubject(ctx, subject); err != nil {
			if errors.Is(err, jetstream.ErrStreamNotFound) {
				return nil, fmt.Errorf("%w %s (the sender creates its streams when it starts)", ErrNoStream, subject)
			}
			return nil, fmt.Errorf("mailjob: look up the status stream for %s: %w", subject, err)
		}
	}
	cons, err := js.OrderedConsumer(ctx, stream, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{subject},
		DeliverPolicy:  jetstream.DeliverAllPolicy,
	})
	if err != nil {
		return nil, fmt.Errorf("mailjob: watch %s in stream %s: %w", subject, stream, err)
	}
	it, err := cons.Messages()
	if err != nil {
		return nil, fmt.Errorf("mailjob: watch %s in stream %s: %w", subject, stream, err)
	}
	ch := make(chan StatusEvent, 16)
	go func() {
		defer close(ch)
		defer it.Stop()
		stop := context.AfterFunc(ctx, it.Stop)
		defer stop()
		for {
			msg, err := it.Next()
			if err != nil {
				if errors.Is(err, jetstream.ErrMsgIteratorClosed) || ctx.Err() != nil || js.Conn().IsClosed() {
					return
				}
				// The ordered consumer recreates itself; do not spin.
				select {
				case <-ctx.Done():
					return
				case <-time.After(100 * time.Millisecond):
				}
				continue
			}
			ev, err := ParseStatus(msg)
			if err != nil || ev.JobID != jobID {
				continue
			}
			select {
			case ch <- *ev:
			case <-ctx.Done():
				return
			}
			if ev.Final() {
				return
			}
		}
	}()
	return ch, nil
}
