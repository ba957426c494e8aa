package bus

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

const (
	objectChunkSize = 128 << 10
	// objectWindow bounds the chunks published but not yet acknowledged, and
	// so the memory a Put holds in this process and in the server's queues.
	// ObjectStore.Put in nats.go publishes without waiting (up to 4000
	// chunks outstanding), which lets a fast reader queue a whole body in
	// the server's memory.
	objectWindow = 8
)

// putObject stores r as object name in the object store bucket, in the
// same layout as ObjectStore.Put (chunks on $O.<bucket>.C.<nuid>, the
// meta message with a rollup on $O.<bucket>.M.<base64url(name)>), so that
// every object store client reads it, but with at most objectWindow chunks
// unacknowledged. Replacing an object purges its previous chunks.
func (b *Bus) putObject(ctx context.Context, name, description string, r io.Reader) (*jetstream.ObjectInfo, error) {
	bucket := b.cfg.ObjectBucket
	prev, err := b.obs.GetInfo(ctx, name, jetstream.GetObjectInfoShowDeleted())
	if err != nil && !errors.Is(err, jetstream.ErrObjectNotFound) {
		return nil, classify(err)
	}
	id, err := newNUID()
	if err != nil {
		return nil, err
	}
	chunkSubj := "$O." + bucket + ".C." + id
	purge := func() {
		// Best effort, also when ctx has ended.
		pctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), b.timeout)
		defer cancel()
		_ = b.objStream.Purge(pctx, jetstream.WithPurgeSubject(chunkSubj))
	}

	type inflight struct {
		paf jetstream.PubAckFuture
		buf []byte
	}
	var (
		queue  []inflight
		free   [][]byte
		h      = sha256.New()
		size   uint64
		chunks uint32
	)
	waitOldest := func() error {
		f := queue[0]
		queue = queue[1:]
		free = append(free, f.buf)
		select {
		case <-f.paf.Ok():
			return nil
		case err := <-f.paf.Err():
			return classify(err)
		case <-ctx.Done():
			return fmt.Errorf("%w: %w", ErrTransient, ctx.Err())
		}
	}
	for {
		if len(queue) == objectWindow {
			if err := waitOldest(); err != nil {
				purge()
				return nil, err
			}
		}
		var buf []byte
		if n := len(free); n > 0 {
			buf, free = free[n-1], free[:n-1]
		} else {
			buf = make([]byte, objectChunkSize)
		}
		n, rerr := io.ReadFull(r, buf)
		if n > 0 {
			h.Write(buf[:n])
			size += uint64(n)
			chunks++
			m := &nats.Msg{Subject: chunkSubj, Data: buf[:n]}
			paf, err := b.js.PublishMsgAsync(m)
			if err != nil {
				purge()
				return nil, classify(err)
			}
			queue = append(queue, inflight{paf, buf})
		} else {
			free = append(free, buf)
		}
		if rerr == io.EOF || rerr == io.ErrUnexpectedEOF {
			break
		}
		if rerr != nil {
			purge()
			return nil, rerr
		}
	}
	for len(queue) > 0 {
		if err := waitOldest(); err != nil {
			purge()
			return nil, err
		}
	}

	info := &jetstream.ObjectInfo{
		ObjectMeta: jetstream.ObjectMeta{
			Name:        name,
			Description: description,
			Opts:        &jetstream.ObjectMetaOptions{ChunkSize: objectChunkSize},
		},
		Bucket: bucket,
		NUID:   id,
		Size:   size,
		Chunks: chunks,
		Digest: jetstream.GetObjectDigestValue(h),
	}
	data, err := json.Marshal(info)
	if err != nil {
		purge()
		return nil, err
	}
	meta := nats.NewMsg("$O." + bucket + ".M." + base64.URLEncoding.EncodeToString([]byte(name)))
	meta.Header.Set(jetstream.MsgRollup, jetstream.MsgRollupSubject)
	meta.Data = data
	pctx, cancel := context.WithTimeout(ctx, b.timeout)
	_, err = b.js.PublishMsg(pctx, meta)
	cancel()
	if err != nil {
		purge()
		return nil, classify(err)
	}
	if prev != nil && !prev.Deleted && prev.NUID != "" {
		_ = b.objStream.Purge(ctx, jetstream.WithPurgeSubject("$O."+bucket+".C."+prev.NUID))
	}
	return info, nil
}

// newNUID returns a 22-character random token like nuid.Next.
func newNUID() (string, error) {
	const digits = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
	var b [22]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", err
	}
	for i := range b {
		b[i] = digits[int(b[i])%len(digits)]
	}
	return string(b[:]), nil
}
