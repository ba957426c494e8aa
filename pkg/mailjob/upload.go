package mailjob

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"time"
	"unicode/utf8"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"
)

const (
	// uploadChunkSize is the object store's default chunk size.
	uploadChunkSize = 128 << 10
	// uploadWindow bounds the chunks published and not yet acknowledged,
	// and so the memory an upload holds here and in the server's queues.
	// (ObjectStore.Put publishes without waiting, which lets a fast reader
	// queue a whole file in the server's memory.)
	uploadWindow = 8
)

// UploadAttachment stores the content of r as object name in the object
// store bucket (which must exist: the sender creates
// DefaultAttachmentBucket) and returns a reference with its size and
// SHA-256, ready for Attachment.Object. It streams: at most a few chunks
// of 128 KiB are held in memory whatever the size. An existing object of
// the same name is replaced.
//
// The object is a standard NATS object (any object store client reads
// it). The sender does not delete it: the bucket's TTL does, or the
// producer after the job's final status event.
func UploadAttachment(ctx context.Context, js jetstream.JetStream, bucket, name string, r io.Reader) (ObjectRef, error) {
	if !bucketRe.MatchString(bucket) {
		return ObjectRef{}, fmt.Errorf("mailjob: invalid object store bucket name %q", bucket)
	}
	if name == "" || lineProblem(name) != "" || utf8.RuneCountInString(name) > MaxObjectNameLen {
		return ObjectRef{}, fmt.Errorf("mailjob: invalid object name %q (one line of at most %d characters)", name, MaxObjectNameLen)
	}
	obs, err := js.ObjectStore(ctx, bucket)
	if err != nil {
		if errors.Is(err, jetstream.ErrBucketNotFound) {
			return ObjectRef{}, fmt.Errorf("mailjob: object store bucket %s does not exist (the sender creates %s when it starts): %w", bucket, DefaultAttachmentBucket, err)
		}
		return ObjectRef{}, fmt.Errorf("mailjob: object store bucket %s: %w", bucket, err)
	}
	stream, err := js.Stream(ctx, "OBJ_"+bucket)
	if err != nil {
		return ObjectRef{}, fmt.Errorf("mailjob: object store bucket %s: %w", bucket, err)
	}
	prev, err := obs.GetInfo(ctx, name, jetstream.GetObjectInfoShowDeleted())
	if err != nil && !errors.Is(err, jetstream.ErrObjectNotFound) {
		return ObjectRef{}, fmt.Errorf("mailjob: object %s/%s: %w", bucket, name, err)
	}

	id := nuid.Next()
	chunkSubj := "$O." + bucket + ".C." + id

	type inflight struct {
		ack jetstream.PubAckFuture
		buf []byte
	}
	var (
		queue  []inflight
		free   [][]byte
		h      = sha256.New()
		size   uint64
		chunks uint32
	)
	fail := func(err error) (ObjectRef, error) {
		// Remove the chunks written so far, once those in flight have
		// landed; best effort, also when ctx has ended.
		pctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), max(js.Options().DefaultTimeout, 5*time.Second))
		defer cancel()
		for _, f := range queue {
			select {
			case <-f.ack.Ok():
			case <-f.ack.Err():
			case <-pctx.Done():
			}
		}
		_ = stream.Purge(pctx, jetstream.WithPurgeSubject(chunkSubj))
		return ObjectRef{}, fmt.Errorf("mailjob: upload %s/%s: %w", bucket, name, err)
	}
	waitOldest := func() error {
		f := queue[0]
		select {
		case <-f.ack.Ok():
			// Only now may the buffer be reused: the future keeps the
			// message for a retry until it is acknowledged.
			queue = queue[1:]
			free = append(free, f.buf)
			return nil
		case err := <-f.ack.Err():
			queue = queue[1:]
			return err
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	for {
		if len(queue) == uploadWindow {
			if err := waitOldest(); err != nil {
				return fail(err)
			}
		}
		var buf []byte
		if n := len(free); n > 0 {
			buf, free = free[n-1], free[:n-1]
		} else {
			buf = make([]byte, uploadChunkSize)
		}
		n, rerr := io.ReadFull(r, buf)
		if n > 0 {
			h.Write(buf[:n])
			size += uint64(n)
			chunks++
			ack, err := js.PublishMsgAsync(&nats.Msg{Subject: chunkSubj, Data: buf[:n]})
			if err != nil {
				return fail(err)
			}
			queue = append(queue, inflight{ack, buf})
		} else {
			free = append(free, buf)
		}
		if rerr == io.EOF || rerr == io.ErrUnexpectedEOF {
			break
		}
		if rerr != nil {
			return fail(fmt.Errorf("read: %w", rerr))
		}
	}
	for len(queue) > 0 {
		if err := waitOldest(); err != nil {
			return fail(err)
		}
	}

	info := jetstream.ObjectInfo{
		ObjectMeta: jetstream.ObjectMeta{
			Name: name,
			Opts: &jetstream.ObjectMetaOptions{ChunkSize: uploadChunkSize},
		},
		Bucket: bucket,
		NUID:   id,
		Size:   size,
		Chunks: chunks,
		Digest: jetstream.GetObjectDigestValue(h),
	}
	data, err := json.Marshal(info)
	if err != nil {
		return fail(err)
	}
	meta := nats.NewMsg("$O." + bucket + ".M." + base64.URLEncoding.EncodeToString([]byte(name)))
	meta.Header.Set(jetstream.MsgRollup, jetstream.MsgRollupSubject)
	meta.Data = data
	if _, err := js.PublishMsg(ctx, meta); err != nil {
		return fail(err)
	}
	if prev != nil && !prev.Deleted && prev.NUID != "" && prev.NUID != id {
		_ = stream.Purge(ctx, jetstream.WithPurgeSubject("$O."+bucket+".C."+prev.NUID))
	}
	return ObjectRef{Bucket: bucket, Name: name, Size: int64(size), SHA256: hex.EncodeToString(h.Sum(nil))}, nil
}
