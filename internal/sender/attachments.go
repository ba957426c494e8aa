package sender

import (
	"context"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/mailpipe/mailpipe/internal/outbound"
	"github.com/mailpipe/mailpipe/pkg/mailjob"
)

// objectStore binds the bucket a job refers to (any bucket the sender may
// read, not only its own).
func (s *Sender) objectStore(ctx context.Context, bucket string) (jetstream.ObjectStore, error) {
	s.objMu.Lock()
	obs := s.objects[bucket]
	s.objMu.Unlock()
	if obs != nil {
		return obs, nil
	}
	obs, err := s.js.ObjectStore(ctx, bucket)
	if errors.Is(err, jetstream.ErrBucketNotFound) || errors.Is(err, jetstream.ErrStreamNotFound) {
		return nil, fmt.Errorf("bucket %s does not exist: %w", bucket, outbound.ErrAttachmentNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("open bucket %s: %w", bucket, err)
	}
	s.objMu.Lock()
	s.objects[bucket] = obs
	s.objMu.Unlock()
	return obs, nil
}

// objectInfo looks an attachment's object up and compares it with the
// reference.
func (s *Sender) objectInfo(ctx context.Context, ref mailjob.ObjectRef) (jetstream.ObjectStore, error) {
	obs, err := s.objectStore(ctx, ref.Bucket)
	if err != nil {
		return nil, err
	}
	info, err := obs.GetInfo(ctx, ref.Name)
	if errors.Is(err, jetstream.ErrObjectNotFound) {
		return nil, fmt.Errorf("object %q is not in bucket %s (expired, deleted or misnamed): %w", ref.Name, ref.Bucket, outbound.ErrAttachmentNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("object %q in bucket %s: %w", ref.Name, ref.Bucket, err)
	}
	if ref.Size > 0 && int64(info.Size) != ref.Size {
		return nil, fmt.Errorf("object %q in bucket %s has %d bytes, the job says %d: %w", ref.Name, ref.Bucket, info.Size, ref.Size, outbound.ErrAttachmentMismatch)
	}
	if ref.SHA256 != "" {
		if sum, ok := digestHex(info.Digest); ok && !strings.EqualFold(sum, ref.SHA256) {
			return nil, fmt.Errorf("object %q in bucket %s has SHA-256 %s, the job says %s: %w", ref.Name, ref.Bucket, sum, strings.ToLower(ref.SHA256), outbound.ErrAttachmentMismatch)
		}
	}
	return obs, nil
}

// digestHex turns an object's digest ("SHA-256=<base64url>") into hex.
func digestHex(d string) (string, bool) {
	b64, ok := strings.CutPrefix(d, "SHA-256=")
	if !ok {
		return "", false
	}
	raw, err := base64.URLEncoding.DecodeString(b64)
	if err != nil {
		if raw, err = base64.RawURLEncoding.DecodeString(b64); err != nil {
			return "", false
		}
	}
	return hex.EncodeToString(raw), true
}

// checkAttachments makes sure, before an attempt, that every object the
// job refers to is there and matches its reference.
func (s *Sender) checkAttachments(ctx context.Context, job *mailjob.Job) error {
	for i := range job.Attachments {
		if ref := job.Attachments[i].Object; ref != nil {
			if _, err := s.objectInfo(ctx, *ref); err != nil {
				return fmt.Errorf("attachments[%d]: %w", i, err)
			}
		}
	}
	return nil
}

// attachmentReason maps an attachment error to its reason code, and says
// whether it is permanent.
func attachmentReason(err error) (string, bool) {
	switch {
	case errors.Is(err, outbound.ErrAttachmentNotFound):
		return mailjob.ReasonAttachmentNotFound, true
	case errors.Is(err, outbound.ErrAttachmentMismatch):
		return mailjob.ReasonAttachmentMismatch, true
	}
	return mailjob.ReasonInternal, false
}

// openAttachment is the outbound.Attachments the transports read objects
// with: the content streams from the object store, and a digest that does
// not match fails the read with ErrAttachmentMismatch.
func (s *Sender) openAttachment(ctx context.Context, ref mailjob.ObjectRef) (io.ReadCloser, error) {
	obs, err := s.objectInfo(ctx, ref)
	if err != nil {
		return nil, err
	}
	r, err := obs.Get(ctx, ref.Name)
	if errors.Is(err, jetstream.ErrObjectNotFound) {
		return nil, fmt.Errorf("object %q in bucket %s: %w", ref.Name, ref.Bucket, outbound.ErrAttachmentNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("object %q in bucket %s: %w", ref.Name, ref.Bucket, err)
	}
	return &objectReader{r: r, ref: ref}, nil
}

type objectReader struct {
	r   jetstream.ObjectResult
	ref mailjob.ObjectRef
}

func (o *objectReader) Read(p []byte) (int, error) {
	n, err := o.r.Read(p)
	if errors.Is(err, jetstream.ErrDigestMismatch) {
		err = fmt.Errorf("object %q in bucket %s: %w: %w", o.ref.Name, o.ref.Bucket, outbound.ErrAttachmentMismatch, err)
	}
	return n, err
}

func (o *objectReader) Close() error { return o.r.Close() }
