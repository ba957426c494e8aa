package mailmsg

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"hash"
	"io"

	"github.com/nats-io/nats.go/jetstream"
)

// objectPrefetch is how many chunks (128 KiB each by default) are fetched
// ahead of the reader. ObjectStore.Get lets the server push the whole
// object into the client's buffers as fast as it can; reading through a
// pull consumer keeps the memory of a body reader small and fixed.
const objectPrefetch = 4

// openObject reads an object of the JetStream object store chunk by chunk
// with an ordered pull consumer, checking its size and digest at the end.
func openObject(ctx context.Context, js jetstream.JetStream, bucket, name string) (io.ReadCloser, error) {
	obs, err := js.ObjectStore(ctx, bucket)
	if err != nil {
		return nil, fmt.Errorf("mailmsg: object bucket %s: %w", bucket, err)
	}
	info, err := obs.GetInfo(ctx, name)
	if err != nil {
		return nil, fmt.Errorf("mailmsg: object %s/%s: %w", bucket, name, err)
	}
	if info.Opts != nil && info.Opts.Link != nil {
		// Links are not written by mailpipe; let the library follow them.
		r, err := obs.Get(ctx, name)
		if err != nil {
			return nil, fmt.Errorf("mailmsg: object %s/%s: %w", bucket, name, err)
		}
		return r, nil
	}
	want, err := HexFromObjectDigest(info.Digest)
	if err != nil {
		return nil, fmt.Errorf("mailmsg: object %s/%s: %w", bucket, name, err)
	}
	r := &objectReader{ctx: ctx, bucket: bucket, name: name, left: info.Chunks, size: info.Size, want: want, h: sha256.New()}
	if info.Chunks == 0 {
		return r, nil
	}
	cons, err := js.OrderedConsumer(ctx, "OBJ_"+bucket, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{"$O." + bucket + ".C." + info.NUID},
	})
	if err != nil {
		return nil, fmt.Errorf("mailmsg: object %s/%s: %w", bucket, name, err)
	}
	if r.it, err = cons.Messages(jetstream.PullMaxMessages(objectPrefetch)); err != nil {
		return nil, fmt.Errorf("mailmsg: object %s/%s: %w", bucket, name, err)
	}
	return r, nil
}

type objectReader struct {
	ctx          context.Context
	bucket, name string
	it           jetstream.MessagesContext
	left         uint32
	size, n      uint64
	want         string
	h            hash.Hash
	cur          []byte
	err          error
}

func (r *objectReader) Read(p []byte) (int, error) {
	if r.err != nil {
		return 0, r.err
	}
	for len(r.cur) == 0 {
		if r.left == 0 {
			r.err = r.check()
			return 0, r.err
		}
		msg, err := r.it.Next(jetstream.NextContext(r.ctx))
		if err != nil {
			r.err = fmt.Errorf("mailmsg: read object %s/%s: %w", r.bucket, r.name, err)
			return 0, r.err
		}
		r.cur = msg.Data()
		r.left--
		r.n += uint64(len(r.cur))
		r.h.Write(r.cur)
	}
	n := copy(p, r.cur)
	r.cur = r.cur[n:]
	return n, nil
}

func (r *objectReader) check() error {
	if r.n != r.size {
		return fmt.Errorf("%w: object %s/%s has %d bytes, its meta says %d", ErrBodyMismatch, r.bucket, r.name, r.n, r.size)
	}
	if got := hex.EncodeToString(r.h.Sum(nil)); got != r.want {
		return fmt.Errorf("%w: object %s/%s digest %s, its meta says %s", ErrBodyMismatch, r.bucket, r.name, got, r.want)
	}
	return io.EOF
}

func (r *objectReader) Close() error {
	if r.it != nil {
		r.it.Stop()
	}
	if r.err == nil {
		r.err = fmt.Errorf("mailmsg: read object %s/%s: reader closed", r.bucket, r.name)
	}
	return nil
}
