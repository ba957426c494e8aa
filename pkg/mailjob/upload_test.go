package mailjob

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"strings"
	"testing"

	"github.com/mailpipe/mailpipe/internal/testenv/memtest"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

func TestUploadAttachment(t *testing.T) {
	js := embedded(t)
	senderStreams(t, js)
	ctx := testCtx(t)
	obs, err := js.ObjectStore(ctx, DefaultAttachmentBucket)
	if err != nil {
		t.Fatal(err)
	}
	for _, size := range []int{0, 1, uploadChunkSize, 3*uploadChunkSize + 5, 11 * uploadChunkSize} {
		data := make([]byte, size)
		for i := range data {
			data[i] = byte(i*31 + size)
		}
		name := "job-1/file.bin"
		ref, err := UploadAttachment(ctx, js, DefaultAttachmentBucket, name, bytes.NewReader(data))
		if err != nil {
			t.Fatalf("%d bytes: %v", size, err)
		}
		sum := sha256.Sum256(data)
		if ref.Bucket != DefaultAttachmentBucket || ref.Name != name || ref.Size != int64(size) || ref.SHA256 != hex.EncodeToString(sum[:]) {
			t.Errorf("%d bytes: ref %+v", size, ref)
		}
		// Any object store client reads it (and checks the digest).
		got, err := obs.GetBytes(ctx, name)
		if err != nil || !bytes.Equal(got, data) {
			t.Errorf("%d bytes: read back %d bytes, %v", size, len(got), err)
		}
		// Replacing the object removed the previous chunks: the bucket
		// holds this object's chunks and one meta message.
		chunks := (size + uploadChunkSize - 1) / uploadChunkSize
		if n := streamMsgs(t, js, "OBJ_"+DefaultAttachmentBucket); n != uint64(chunks+1) {
			t.Errorf("%d bytes: %d messages in the bucket, want %d", size, n, chunks+1)
		}
		// The reference is what a job needs.
		j := minimalJob()
		j.Attachments = []Attachment{ObjectAttachment("file.bin", "application/octet-stream", ref)}
		if size > 0 {
			if err := j.Validate(DefaultLimits); err != nil {
				t.Error(err)
			}
		}
	}
}

type failingReader struct {
	left int
}

func (r *failingReader) Read(p []byte) (int, error) {
	if r.left == 0 {
		return 0, errors.New("disk on fire")
	}
	n := min(len(p), r.left)
	r.left -= n
	return n, nil
}

func TestUploadAttachmentErrors(t *testing.T) {
	js := embedded(t)
	ctx := testCtx(t)
	if _, err := UploadAttachment(ctx, js, DefaultAttachmentBucket, "a", strings.NewReader("x")); err == nil || !strings.Contains(err.Error(), "does not exist") {
		t.Errorf("missing bucket: %v", err)
	}
	senderStreams(t, js)
	for _, c := range []struct{ bucket, name string }{{"bad.bucket", "a"}, {"", "a"}, {DefaultAttachmentBucket, ""}, {DefaultAttachmentBucket, "a\nb"}} {
		if _, err := UploadAttachment(ctx, js, c.bucket, c.name, strings.NewReader("x")); err == nil {
			t.Errorf("bucket %q name %q accepted", c.bucket, c.name)
		}
	}
	// A reader that fails half-way: nothing is left behind.
	_, err := UploadAttachment(ctx, js, DefaultAttachmentBucket, "broken", &failingReader{left: 5*uploadChunkSize + 3})
	if err == nil || !strings.Contains(err.Error(), "disk on fire") {
		t.Errorf("failing reader: %v", err)
	}
	if n := streamMsgs(t, js, "OBJ_"+DefaultAttachmentBucket); n != 0 {
		t.Errorf("%d messages left in the bucket", n)
	}
	obs, _ := js.ObjectStore(ctx, DefaultAttachmentBucket)
	if _, err := obs.GetInfo(ctx, "broken"); !errors.Is(err, jetstream.ErrObjectNotFound) {
		t.Errorf("broken object: %v", err)
	}
}

// TestUploadMemoryBound uploads 20 MB and checks that the producer's heap
// grows by far less than that (the server runs in another process).
func TestUploadMemoryBound(t *testing.T) {
	url := memtest.ServerProcess(t)
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	senderStreams(t, js)
	ctx := testCtx(t)

	const size = 20 << 20
	const bound = 8 << 20
	// Warm up: connection buffers, reply subscriptions.
	if _, err := UploadAttachment(ctx, js, DefaultAttachmentBucket, "warm-up", memtest.NewGenReader(1<<20, 1)); err != nil {
		t.Fatal(err)
	}
	gen := memtest.NewGenReader(size, 99)
	hp := memtest.StartHeapPeak()
	ref, err := UploadAttachment(ctx, js, DefaultAttachmentBucket, "big.tiff", gen)
	peak := hp.Done()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("uploading 20 MB: heap peak +%.1f MB", float64(peak)/(1<<20))
	if peak > bound {
		t.Errorf("uploading 20 MB raised the heap by %.1f MB (bound %d MB)", float64(peak)/(1<<20), bound>>20)
	}
	if ref.Size != size || ref.SHA256 != gen.Sum() {
		t.Errorf("ref %+v, want size %d sha256 %s", ref, size, gen.Sum())
	}
	// Read it back with the standard client, hashing as it streams.
	obs, err := js.ObjectStore(ctx, DefaultAttachmentBucket)
	if err != nil {
		t.Fatal(err)
	}
	r, err := obs.Get(ctx, "big.tiff")
	if err != nil {
		t.Fatal(err)
	}
	h := sha256.New()
	n, err := io.Copy(h, r)
	r.Close()
	if err != nil || n != size || hex.EncodeToString(h.Sum(nil)) != ref.SHA256 {
		t.Errorf("read back %d bytes, %v", n, err)
	}
}
