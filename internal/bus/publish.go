package bus

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/mailpipe/mailpipe/pkg/mailmsg"
)

var (
	// ErrRejected marks a permanent failure: the message will never be
	// accepted as it is (too large, invalid envelope, refused by the stream
	// with a JetStream API error). The mail belongs in the error folder.
	ErrRejected = errors.New("bus: message rejected")
	// ErrTransient marks a failure worth retrying later: no PubAck in time,
	// no stream responded, the connection was lost, the caller's context
	// ended, JetStream temporarily unavailable.
	ErrTransient = errors.New("bus: publish failed temporarily")
	// ErrTooLarge (also ErrRejected) is returned by PublishMail for a body
	// above bus.large_message_threshold.
	ErrTooLarge = errors.New("body above bus.large_message_threshold: use PublishLargeMail")
)

// MaxHeaderValue is the longest header value written, in bytes; longer
// values are truncated at a UTF-8 boundary.
const MaxHeaderValue = 1000

// PublishResult is the outcome of a successful publish.
type PublishResult struct {
	// Duplicate is true when the stream already had a message with this
	// DedupID inside its duplicate window: nothing new was stored, and the
	// mail can be moved to the processed folder like any other.
	Duplicate bool
	Stream    string
	Seq       uint64
}

// Pending is an asynchronous publish awaiting its PubAck.
type Pending struct {
	done chan struct{}
	sem  chan struct{}
	res  PublishResult
	err  error
}

// Done is closed when the publish completed (acknowledged or failed).
func (p *Pending) Done() <-chan struct{} { return p.done }

// Wait waits for the PubAck. Errors match ErrRejected or ErrTransient with
// errors.Is. When ctx ends first the error matches ErrTransient and ctx's
// error; the publish itself may still succeed later.
func (p *Pending) Wait(ctx context.Context) (PublishResult, error) {
	select {
	case <-p.done:
		return p.res, p.err
	default:
	}
	select {
	case <-p.done:
		return p.res, p.err
	case <-ctx.Done():
		return PublishResult{}, fmt.Errorf("%w: waiting for PubAck: %w", ErrTransient, ctx.Err())
	}
}

func (p *Pending) finish(res PublishResult, err error) {
	p.res, p.err = res, err
	<-p.sem
	close(p.done)
}

// take removes the Pending of m; only the first caller gets it.
func (b *Bus) take(m *nats.Msg) *Pending {
	b.mu.Lock()
	p := b.pending[m]
	delete(b.pending, m)
	b.mu.Unlock()
	return p
}

// onAck and onErr run on nats.go's goroutines, onErr sometimes with the
// JetStream publisher lock held: they must not publish or block.
func (b *Bus) onAck(_ jetstream.JetStream, m *nats.Msg, ack *jetstream.PubAck) {
	if p := b.take(m); p != nil {
		p.finish(PublishResult{Duplicate: ack.Duplicate, Stream: ack.Stream, Seq: ack.Sequence}, nil)
	}
}

func (b *Bus) onErr(_ jetstream.JetStream, m *nats.Msg, err error) {
	if p := b.take(m); p != nil {
		p.finish(PublishResult{}, classify(err))
	}
}

func (b *Bus) semaphore(mailbox string) chan struct{} {
	b.mu.Lock()
	defer b.mu.Unlock()
	s, ok := b.sems[mailbox]
	if !ok {
		s = make(chan struct{}, b.inFlight)
		b.sems[mailbox] = s
	}
	return s
}

// InFlight is the number of unacknowledged PublishMail calls of a mailbox.
func (b *Bus) InFlight(mailbox string) int { return len(b.semaphore(mailbox)) }

// Flush waits until every publish started before the call has completed.
func (b *Bus) Flush(ctx context.Context) error {
	b.mu.Lock()
	ps := make([]*Pending, 0, len(b.pending))
	for _, p := range b.pending {
		ps = append(ps, p)
	}
	b.mu.Unlock()
	for _, p := range ps {
		select {
		case <-p.done:
		case <-ctx.Done():
			return fmt.Errorf("%w: flush: %w", ErrTransient, ctx.Err())
		}
	}
	return nil
}

// PublishMail publishes one mail asynchronously to
// <bus.stream.subject_prefix>.<env.Mailbox> with env.DedupID as Nats-Msg-Id,
// the raw RFC 5322 body as payload and the headers of docs/messages.md.
// env.SHA256 is computed when empty, env.Size set to len(body) when zero.
//
// At most bus.max_in_flight publishes per mailbox are unacknowledged: when
// that many are pending PublishMail blocks until one completes or ctx ends.
//
// body is not copied: the caller must not modify or reuse it until the
// returned Pending is done (the client may send it again on a retry).
//
// Errors match ErrRejected (ErrTooLarge for a body above
// bus.large_message_threshold, invalid envelope) or ErrTransient.
func (b *Bus) PublishMail(ctx context.Context, env Envelope, body []byte) (*Pending, error) {
	if err := checkEnvelope(env); err != nil {
		return nil, err
	}
	if int64(len(body)) > b.threshold {
		return nil, fmt.Errorf("%w: %w (%d > %d bytes)", ErrRejected, ErrTooLarge, len(body), b.threshold)
	}
	if env.SHA256 == "" {
		sum := sha256.Sum256(body)
		env.SHA256 = hex.EncodeToString(sum[:])
	}
	if env.Size == 0 {
		env.Size = int64(len(body))
	}
	m := &nats.Msg{
		Subject: b.Subject(env.Mailbox),
		Header:  mailHeader(env, mailmsg.TypeReceived, env.DedupID, true, time.Now()),
		Data:    body,
	}

	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrTransient, err)
	}
	sem := b.semaphore(env.Mailbox)
	select {
	case sem <- struct{}{}:
	default:
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
			return nil, fmt.Errorf("%w: waiting for a publish slot (bus.max_in_flight %d): %w", ErrTransient, b.inFlight, ctx.Err())
		}
	}
	p := &Pending{done: make(chan struct{}), sem: sem}
	b.mu.Lock()
	b.pending[m] = p
	b.mu.Unlock()
	if _, err := b.js.PublishMsgAsync(m, jetstream.WithMsgID(env.DedupID)); err != nil {
		err = classify(err)
		if p := b.take(m); p != nil {
			p.finish(PublishResult{}, err)
		}
		return nil, err
	}
	return p, nil
}

// PublishLargeMail streams r into the object store as object env.DedupID
// (putting the same name again replaces it), then publishes, synchronously
// and with the same Nats-Msg-Id, a message with an empty payload and the
// Mailpipe-Body-* headers referencing the object. env.SHA256 and env.Size
// are taken from the stored object. Memory use does not depend on the size
// of the body: it is read and stored in chunks.
//
// Errors from reading r are returned as they are (neither ErrRejected nor
// ErrTransient); bus errors match one of the two.
func (b *Bus) PublishLargeMail(ctx context.Context, env Envelope, r io.Reader) (PublishResult, error) {
	if err := checkEnvelope(env); err != nil {
		return PublishResult{}, err
	}
	src := &trackingReader{r: r}
	info, err := b.putObject(ctx, env.DedupID, sanitize("mail "+env.Mailbox+" "+env.SourceID), src)
	if err != nil {
		if src.err != nil && errors.Is(err, src.err) {
			return PublishResult{}, fmt.Errorf("bus: reading body of %s: %w", env.DedupID, err)
		}
		return PublishResult{}, fmt.Errorf("bus: store body of %s in object bucket %s: %w", env.DedupID, b.cfg.ObjectBucket, classify(err))
	}
	sum, err := mailmsg.HexFromObjectDigest(info.Digest)
	if err != nil {
		return PublishResult{}, fmt.Errorf("%w: object %s: %w", ErrTransient, env.DedupID, err)
	}
	if env.SHA256 != "" && !strings.EqualFold(env.SHA256, sum) {
		b.log.Warn("envelope SHA-256 differs from the stored body; using the body's",
			zap.String("id", env.DedupID), zap.String("envelope", env.SHA256), zap.String("body", sum))
	}
	env.SHA256 = sum
	env.Size = int64(info.Size)

	h := mailHeader(env, mailmsg.TypeReceived, env.DedupID, true, time.Now())
	h.Set(mailmsg.HeaderBodyBucket, b.cfg.ObjectBucket)
	h.Set(mailmsg.HeaderBodyObject, env.DedupID)
	h.Set(mailmsg.HeaderBodyDigest, info.Digest)
	m := &nats.Msg{Subject: b.Subject(env.Mailbox), Header: h}
	return b.publishSync(ctx, m, env.DedupID)
}

// PublishDeadLetter publishes, synchronously, a dead letter to
// <bus.dead_letter.subject_prefix>.<mailbox> with Nats-Msg-Id (and ce-id)
// "dl-"+DedupID, the reason in Mailpipe-Reason and dl.Body as payload. A
// body above bus.large_message_threshold is left out.
func (b *Bus) PublishDeadLetter(ctx context.Context, dl DeadLetter) error {
	if err := checkEnvelope(dl.Envelope); err != nil {
		return err
	}
	env := dl.Envelope
	body := dl.Body
	if int64(len(body)) > b.threshold {
		b.log.Warn("dead letter body above the large-message threshold left out",
			zap.String("id", env.DedupID), zap.Int("size", len(body)))
		body = nil
	}
	if len(body) > 0 {
		if env.SHA256 == "" {
			sum := sha256.Sum256(body)
			env.SHA256 = hex.EncodeToString(sum[:])
		}
		if env.Size == 0 {
			env.Size = int64(len(body))
		}
	}
	id := mailmsg.DeadLetterIDPrefix + env.DedupID
	h := mailHeader(env, mailmsg.TypeDeadLetter, id, len(body) > 0, time.Now())
	h.Set(mailmsg.HeaderReason, sanitize(dl.Reason))
	m := &nats.Msg{Subject: b.DeadLetterSubject(env.Mailbox), Header: h, Data: body}
	_, err := b.publishSync(ctx, m, id)
	return err
}

func (b *Bus) publishSync(ctx context.Context, m *nats.Msg, id string) (PublishResult, error) {
	ctx, cancel := context.WithTimeout(ctx, b.timeout)
	defer cancel()
	ack, err := b.js.PublishMsg(ctx, m, jetstream.WithMsgID(id))
	if err != nil {
		return PublishResult{}, classify(err)
	}
	return PublishResult{Duplicate: ack.Duplicate, Stream: ack.Stream, Seq: ack.Sequence}, nil
}

// classify wraps err with ErrRejected or ErrTransient.
func classify(err error) error {
	if err == nil || errors.Is(err, ErrRejected) || errors.Is(err, ErrTransient) {
		return err
	}
	var apiErr *jetstream.APIError
	switch {
	case errors.As(err, &apiErr):
		// 5xx: JetStream temporarily unavailable, no quorum, storage
		// failure; 4xx: this message is refused.
		if apiErr.Code >= 500 {
			return fmt.Errorf("%w: %w", ErrTransient, err)
		}
		return fmt.Errorf("%w: %w", ErrRejected, err)
	case errors.Is(err, nats.ErrMaxPayload), errors.Is(err, nats.ErrBadSubject),
		errors.Is(err, nats.ErrHeadersNotSupported), errors.Is(err, jetstream.ErrInvalidOption):
		return fmt.Errorf("%w: %w", ErrRejected, err)
	}
	return fmt.Errorf("%w: %w", ErrTransient, err)
}

func checkEnvelope(env Envelope) error {
	if env.DedupID == "" {
		return fmt.Errorf("%w: envelope without DedupID", ErrRejected)
	}
	if len(env.DedupID) > 200 || strings.IndexFunc(env.DedupID, func(r rune) bool { return r <= ' ' || r == 0x7f }) >= 0 {
		return fmt.Errorf("%w: invalid DedupID %q", ErrRejected, env.DedupID)
	}
	if !validToken(env.Mailbox) {
		return fmt.Errorf("%w: mailbox name %q is not a valid subject token", ErrRejected, env.Mailbox)
	}
	return nil
}

func validToken(s string) bool {
	if s == "" {
		return false
	}
	for _, r := range s {
		if r <= ' ' || r == 0x7f || r == '.' || r == '*' || r == '>' {
			return false
		}
	}
	return true
}

// mailHeader builds the header contract of docs/messages.md.
func mailHeader(env Envelope, ceType, id string, hasBody bool, now time.Time) nats.Header {
	h := make(nats.Header, 24)
	h[mailmsg.HeaderSpecVersion] = []string{mailmsg.SpecVersion}
	h[mailmsg.HeaderID] = []string{id}
	h[mailmsg.HeaderSource] = []string{sanitize(mailmsg.SourcePrefix + env.Mailbox)}
	h[mailmsg.HeaderType] = []string{ceType}
	h[mailmsg.HeaderTime] = []string{now.UTC().Format(time.RFC3339Nano)}
	if hasBody {
		h[mailmsg.HeaderDataContentType] = []string{mailmsg.ContentTypeMail}
	}
	put := func(k, v string) {
		if v = sanitize(v); v != "" {
			h[k] = []string{v}
		}
	}
	put(mailmsg.HeaderCESubject, env.Folder)
	put(mailmsg.HeaderMailbox, env.Mailbox)
	put(mailmsg.HeaderAddress, env.Address)
	put(mailmsg.HeaderFolder, env.Folder)
	put(mailmsg.HeaderSrc, env.Source)
	put(mailmsg.HeaderSourceID, env.SourceID)
	put(mailmsg.HeaderMessageID, env.MessageID)
	put(mailmsg.HeaderFrom, env.From)
	put(mailmsg.HeaderSubject, env.Subject)
	put(mailmsg.HeaderDate, env.Date)
	if !env.Received.IsZero() {
		h[mailmsg.HeaderReceived] = []string{env.Received.UTC().Format(time.RFC3339Nano)}
	}
	if hasBody || env.Size > 0 {
		h[mailmsg.HeaderSize] = []string{strconv.FormatInt(env.Size, 10)}
	}
	put(mailmsg.HeaderSHA256, strings.ToLower(env.SHA256))
	return h
}

// sanitize makes s a single-line header value: every run of control
// characters (CR, LF, tab...) together with the spaces after it (header
// folding) becomes one space, invalid UTF-8 becomes U+FFFD, surrounding
// space is trimmed and the result is cut to MaxHeaderValue bytes at a
// character boundary.
func sanitize(s string) string {
	if isClean(s) {
		return s
	}
	var sb strings.Builder
	sb.Grow(min(len(s), MaxHeaderValue+utf8.UTFMax))
	space := false
	for i := 0; i < len(s) && sb.Len() <= MaxHeaderValue; {
		r, n := utf8.DecodeRuneInString(s[i:])
		i += n
		if r < ' ' || r == 0x7f {
			space = true
			continue
		}
		if space {
			if r == ' ' {
				continue
			}
			sb.WriteByte(' ')
			space = false
		}
		sb.WriteRune(r) // U+FFFD for invalid bytes
	}
	return truncate(strings.TrimSpace(sb.String()), MaxHeaderValue)
}

func isClean(s string) bool {
	if len(s) > MaxHeaderValue || strings.TrimSpace(s) != s {
		return false
	}
	ascii := true
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < ' ' || c == 0x7f {
			return false
		}
		if c >= utf8.RuneSelf {
			ascii = false
		}
	}
	return ascii || utf8.ValidString(s)
}

// truncate cuts s to at most n bytes without splitting a UTF-8 sequence.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return strings.TrimSpace(s[:n])
}

// trackingReader remembers the error of the body reader, to tell it from
// bus errors.
type trackingReader struct {
	r   io.Reader
	err error
}

func (t *trackingReader) Read(p []byte) (int, error) {
	n, err := t.r.Read(p)
	if err != nil && err != io.EOF {
		t.err = err
	}
	return n, err
}
