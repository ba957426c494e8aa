// Package mailmsg reads the mail messages mailpipe publishes to NATS
// JetStream. It is the Go side of the contract documented in
// docs/messages.md: Parse turns a JetStream message into a Mail, and
// Mail.Body returns the raw RFC 5322 bytes whether they travelled in the
// message payload or, for large mail, in the JetStream object store.
//
// A typical consumer:
//
//	m, err := mailmsg.Parse(msg)
//	if err != nil {
//		_ = msg.TermWithReason(err.Error()) // not a mailpipe message
//		return
//	}
//	body, err := m.Body(ctx, js)
//	if err != nil {
//		_ = msg.Nak() // object store unreachable: try again later
//		return
//	}
//	defer body.Close()
//	// ... parse the mail from body, dedup on m.ID ...
//	_ = msg.Ack()
package mailmsg

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

var (
	// ErrNotMailpipe is returned by Parse for a message that lacks the
	// CloudEvents headers of a mailpipe message or has an unknown ce-type.
	ErrNotMailpipe = errors.New("mailmsg: not a mailpipe message")
	// ErrMalformed is returned by Parse when a header has an invalid value.
	ErrMalformed = errors.New("mailmsg: malformed header")
	// ErrBodyMismatch is returned by a body reader at the end of the body
	// when the bytes read do not match Mail.SHA256 (or the object digest).
	ErrBodyMismatch = errors.New("mailmsg: body does not match its SHA-256 digest")
)

// ObjectRef points to a body stored in the JetStream object store.
type ObjectRef struct {
	Bucket string // Mailpipe-Body-Bucket
	Name   string // Mailpipe-Body-Object
	// Digest is the object store digest, "SHA-256=<base64url>".
	Digest string // Mailpipe-Body-Digest
}

// Mail is one mail message (or dead letter) read from its NATS headers.
type Mail struct {
	// ID is ce-id: stable for one message in one source folder. At-least-once
	// consumers should de-duplicate on it.
	ID string
	// Type is ce-type: TypeReceived or TypeDeadLetter.
	Type string
	// Time is ce-time, when mailpipe published the message.
	Time time.Time

	Mailbox   string // configured mailbox name
	Address   string // mailbox e-mail address
	Folder    string // folder the mail was found in, "/"-separated
	Source    string // "imap" or "graph"
	SourceID  string // "<uidvalidity>/<uid>" (IMAP) or the Graph immutable id
	MessageID string // Message-ID header of the mail
	From      string // From header, decoded, single line
	Subject   string // Subject header, decoded, single line
	Date      string // Date header as written
	// Received is the mail server's arrival time.
	Received time.Time
	// Size of the raw message in bytes.
	Size int64
	// SHA256 is the lower-case hex SHA-256 of the raw message.
	SHA256 string
	// Object is set when the body is in the object store; the payload is
	// then empty.
	Object *ObjectRef
	// Reason is set on dead letters only.
	Reason string

	payload []byte
}

// IsDeadLetter reports whether m is a dead letter.
func (m *Mail) IsDeadLetter() bool { return m.Type == TypeDeadLetter }

// HasBody reports whether the raw message is available through Body: always
// for mail, only sometimes for dead letters (which carry the body inline
// when it was small enough, and never an object reference).
func (m *Mail) HasBody() bool { return m.Object != nil || len(m.payload) > 0 }

// Parse reads the headers of msg into a Mail. The payload is kept (not
// copied) for Body.
func Parse(msg jetstream.Msg) (*Mail, error) {
	return ParseHeaders(msg.Headers(), msg.Data())
}

// ParseHeaders is Parse for a message received some other way (core NATS
// subscription, a stream message fetched by sequence).
func ParseHeaders(h nats.Header, payload []byte) (*Mail, error) {
	if h == nil {
		return nil, fmt.Errorf("%w: no headers", ErrNotMailpipe)
	}
	if v := h.Get(HeaderSpecVersion); v != SpecVersion {
		return nil, fmt.Errorf("%w: %s is %q, want %q", ErrNotMailpipe, HeaderSpecVersion, v, SpecVersion)
	}
	m := &Mail{
		ID:        h.Get(HeaderID),
		Type:      h.Get(HeaderType),
		Mailbox:   h.Get(HeaderMailbox),
		Address:   h.Get(HeaderAddress),
		Folder:    h.Get(HeaderFolder),
		Source:    h.Get(HeaderSrc),
		SourceID:  h.Get(HeaderSourceID),
		MessageID: h.Get(HeaderMessageID),
		From:      h.Get(HeaderFrom),
		Subject:   h.Get(HeaderSubject),
		Date:      h.Get(HeaderDate),
		SHA256:    strings.ToLower(h.Get(HeaderSHA256)),
		Reason:    h.Get(HeaderReason),
		payload:   payload,
	}
	if m.Type != TypeReceived && m.Type != TypeDeadLetter {
		return nil, fmt.Errorf("%w: unsupported %s %q", ErrNotMailpipe, HeaderType, m.Type)
	}
	if m.ID == "" {
		return nil, fmt.Errorf("%w: %s is empty", ErrMalformed, HeaderID)
	}
	var err error
	if m.Time, err = parseTime(h, HeaderTime); err != nil {
		return nil, err
	}
	if m.Received, err = parseTime(h, HeaderReceived); err != nil {
		return nil, err
	}
	if v := h.Get(HeaderSize); v != "" {
		if m.Size, err = strconv.ParseInt(v, 10, 64); err != nil || m.Size < 0 {
			return nil, fmt.Errorf("%w: %s %q", ErrMalformed, HeaderSize, v)
		}
	}
	if m.SHA256 != "" {
		if b, err := hex.DecodeString(m.SHA256); err != nil || len(b) != sha256.Size {
			return nil, fmt.Errorf("%w: %s %q", ErrMalformed, HeaderSHA256, m.SHA256)
		}
	}
	if bucket := h.Get(HeaderBodyBucket); bucket != "" {
		ref := &ObjectRef{Bucket: bucket, Name: h.Get(HeaderBodyObject), Digest: h.Get(HeaderBodyDigest)}
		if ref.Name == "" {
			return nil, fmt.Errorf("%w: %s set without %s", ErrMalformed, HeaderBodyBucket, HeaderBodyObject)
		}
		if ref.Digest != "" {
			if _, err := HexFromObjectDigest(ref.Digest); err != nil {
				return nil, fmt.Errorf("%w: %s %q", ErrMalformed, HeaderBodyDigest, ref.Digest)
			}
		}
		m.Object = ref
	}
	return m, nil
}

func parseTime(h nats.Header, key string) (time.Time, error) {
	v := h.Get(key)
	if v == "" {
		return time.Time{}, nil
	}
	t, err := time.Parse(time.RFC3339Nano, v)
	if err != nil {
		return time.Time{}, fmt.Errorf("%w: %s %q", ErrMalformed, key, v)
	}
	return t, nil
}

// Body returns the raw RFC 5322 message: the payload, or a stream from the
// object store for large mail. The reader verifies the SHA-256 of what it
// returned when it reaches the end: a mismatch makes Read return
// ErrBodyMismatch instead of io.EOF, so read to EOF before trusting the
// data. ctx must stay valid while the body is read. Close the reader.
func (m *Mail) Body(ctx context.Context, js jetstream.JetStream) (io.ReadCloser, error) {
	want := m.SHA256
	if m.Object == nil {
		return newVerifier(io.NopCloser(bytes.NewReader(m.payload)), want), nil
	}
	if want == "" && m.Object.Digest != "" {
		want, _ = HexFromObjectDigest(m.Object.Digest)
	}
	if js == nil {
		return nil, fmt.Errorf("mailmsg: body of %s is in object %s/%s: a JetStream context is needed", m.ID, m.Object.Bucket, m.Object.Name)
	}
	r, err := openObject(ctx, js, m.Object.Bucket, m.Object.Name)
	if err != nil {
		return nil, err
	}
	return newVerifier(r, want), nil
}

// DeleteBody removes the object holding a large body. It does nothing for
// mail whose body is in the payload, and succeeds when the object is
// already gone. Only delete after every consumer that needs the body has
// processed the message (redeliveries included).
func (m *Mail) DeleteBody(ctx context.Context, js jetstream.JetStream) error {
	if m.Object == nil {
		return nil
	}
	obs, err := js.ObjectStore(ctx, m.Object.Bucket)
	if err != nil {
		return fmt.Errorf("mailmsg: object bucket %s: %w", m.Object.Bucket, err)
	}
	if err := obs.Delete(ctx, m.Object.Name); err != nil && !errors.Is(err, jetstream.ErrObjectNotFound) {
		return fmt.Errorf("mailmsg: delete object %s/%s: %w", m.Object.Bucket, m.Object.Name, err)
	}
	return nil
}

// HexFromObjectDigest converts an object store digest ("SHA-256=" followed
// by base64url) to lower-case hex.
func HexFromObjectDigest(d string) (string, error) {
	v, ok := strings.CutPrefix(d, "SHA-256=")
	if !ok {
		return "", fmt.Errorf("mailmsg: digest %q is not SHA-256", d)
	}
	b, err := base64.URLEncoding.DecodeString(v)
	if err != nil {
		// Some clients write the digest without padding.
		if b, err = base64.RawURLEncoding.DecodeString(v); err != nil {
			return "", fmt.Errorf("mailmsg: digest %q: %w", d, err)
		}
	}
	if len(b) != sha256.Size {
		return "", fmt.Errorf("mailmsg: digest %q has %d bytes", d, len(b))
	}
	return hex.EncodeToString(b), nil
}

// verifier hashes what is read and checks the digest at EOF.
type verifier struct {
	r    io.ReadCloser
	h    hash.Hash
	want string
	err  error
}

func newVerifier(r io.ReadCloser, want string) io.ReadCloser {
	if want == "" {
		return r
	}
	return &verifier{r: r, h: sha256.New(), want: want}
}

func (v *verifier) Read(p []byte) (int, error) {
	if v.err != nil {
		return 0, v.err
	}
	n, err := v.r.Read(p)
	v.h.Write(p[:n])
	if err == io.EOF {
		if got := hex.EncodeToString(v.h.Sum(nil)); got != v.want {
			err = fmt.Errorf("%w: got %s, want %s", ErrBodyMismatch, got, v.want)
		}
	}
	if err != nil {
		v.err = err
	}
	return n, err
}

func (v *verifier) Close() error { return v.r.Close() }
