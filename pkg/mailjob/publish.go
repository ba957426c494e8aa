package mailjob

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// ErrNoStream is returned when no JetStream stream stores the subject a
// job or status event goes to, or a status is watched on. The sender
// creates its streams when it starts.
var ErrNoStream = errors.New("mailjob: no JetStream stream for the subject")

// PublishResult is JetStream's acknowledgement of a published message.
type PublishResult struct {
	Subject  string
	Stream   string
	Sequence uint64
	// Duplicate is true when the stream already had a message with the
	// same id (job_id) within its duplicate window and stored nothing new:
	// the job had been published before, for example by an attempt whose
	// acknowledgement got lost. It is not an error.
	Duplicate bool
}

// Option changes how Publish, PublishStatus and WatchStatus work.
type Option func(*options)

type options struct {
	prefix string
	limits Limits
	source string
	stream string
}

func buildOptions(opts []Option, defaultPrefix string) options {
	o := options{prefix: defaultPrefix, source: DefaultSource}
	for _, f := range opts {
		f(&o)
	}
	return o
}

// WithSubjectPrefix sets the subject prefix: of jobs for Publish (default
// DefaultJobsPrefix), of status events for PublishStatus and WatchStatus
// (default DefaultStatusPrefix).
func WithSubjectPrefix(prefix string) Option {
	return func(o *options) {
		if prefix != "" {
			o.prefix = prefix
		}
	}
}

// WithLimits sets the limits Publish validates against (default
// DefaultLimits). Use the sender's configured limits.
func WithLimits(l Limits) Option { return func(o *options) { o.limits = l } }

// WithSource sets ce-source of published jobs, a URI reference naming the
// producer, such as "/erp/billing" (default DefaultSource). The sender
// logs it.
func WithSource(source string) Option {
	return func(o *options) {
		if source != "" {
			o.source = source
		}
	}
}

// WithStream names the stream: Publish and PublishStatus make JetStream
// refuse the message if the subject belongs to another stream;
// WatchStatus reads this stream instead of looking it up by subject.
func WithStream(name string) Option { return func(o *options) { o.stream = name } }

// Publish validates job, sets CreatedAt when it is zero, and publishes it
// on Subject(prefix, job.From) with Nats-Msg-Id set to the job_id and the
// CloudEvents headers. It waits for JetStream's acknowledgement.
//
// An invalid job is not published: the error is a *ValidationError. If
// the acknowledgement does not arrive (timeout, lost connection), publish
// the same job again: the same job_id is stored at most once within the
// stream's duplicate window, and PublishResult.Duplicate tells.
func Publish(ctx context.Context, js jetstream.JetStream, job *Job, opts ...Option) (*PublishResult, error) {
	o := buildOptions(opts, DefaultJobsPrefix)
	if job.CreatedAt.IsZero() {
		job.CreatedAt = time.Now().UTC()
	}
	if err := job.Validate(o.limits); err != nil {
		return nil, err
	}
	data, err := json.Marshal(job)
	if err != nil {
		return nil, fmt.Errorf("mailjob: encode job %s: %w", job.JobID, err)
	}
	msg := nats.NewMsg(Subject(o.prefix, job.From))
	msg.Data = data
	h := msg.Header
	h.Set(HeaderSpecVersion, SpecVersion)
	h.Set(HeaderID, job.JobID)
	h.Set(HeaderSource, o.source)
	h.Set(HeaderType, TypeJob)
	h.Set(HeaderTime, time.Now().UTC().Format(time.RFC3339Nano))
	h.Set(HeaderDataContentType, ContentTypeJSON)
	h.Set(HeaderMsgID, job.JobID)
	return publish(ctx, js, msg, o)
}

func publish(ctx context.Context, js jetstream.JetStream, msg *nats.Msg, o options) (*PublishResult, error) {
	if nc := js.Conn(); nc != nil {
		if size, limit := int64(len(msg.Data)+headerSize(msg.Header)), nc.MaxPayload(); limit > 0 && size > limit {
			return nil, fmt.Errorf("mailjob: the message for %s is %d bytes, the NATS server's max_payload is %d: upload large attachments to the object store", msg.Subject, size, limit)
		}
	}
	var popts []jetstream.PublishOpt
	if o.stream != "" {
		popts = append(popts, jetstream.WithExpectStream(o.stream))
	}
	ack, err := js.PublishMsg(ctx, msg, popts...)
	if err != nil {
		if errors.Is(err, jetstream.ErrNoStreamResponse) {
			return nil, fmt.Errorf("%w %s (the sender creates its streams when it starts: is it running, and is the subject prefix right?): %w", ErrNoStream, msg.Subject, err)
		}
		return nil, fmt.Errorf("mailjob: publish to %s: %w", msg.Subject, err)
	}
	return &PublishResult{Subject: msg.Subject, Stream: ack.Stream, Sequence: ack.Sequence, Duplicate: ack.Duplicate}, nil
}

// headerSize is the size of h in the NATS wire format.
func headerSize(h nats.Header) int {
	n := len("NATS/1.0\r\n\r\n")
	for k, vs := range h {
		for _, v := range vs {
			n += len(k) + len(": ") + len(v) + len("\r\n")
		}
	}
	return n
}
