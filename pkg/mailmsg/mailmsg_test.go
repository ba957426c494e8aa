package mailmsg

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

func hexSum(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

func validHeader(body []byte) nats.Header {
	return nats.Header{
		HeaderSpecVersion:     {SpecVersion},
		HeaderID:              {"abc123"},
		HeaderSource:          {"/mailpipe/support"},
		HeaderType:            {TypeReceived},
		HeaderTime:            {"2024-05-01T10:00:00.123456789Z"},
		HeaderDataContentType: {ContentTypeMail},
		HeaderCESubject:       {"INBOX"},
		HeaderMsgID:           {"abc123"},
		HeaderMailbox:         {"support"},
		HeaderAddress:         {"support@example.com"},
		HeaderFolder:          {"INBOX"},
		HeaderSrc:             {"imap"},
		HeaderSourceID:        {"7/42"},
		HeaderMessageID:       {"<m@example.com>"},
		HeaderFrom:            {"alice@example.com"},
		HeaderSubject:         {"Hi"},
		HeaderDate:            {"Wed, 01 May 2024 11:59:00 +0200"},
		HeaderReceived:        {"2024-05-01T09:59:30Z"},
		HeaderSize:            {"5"},
		HeaderSHA256:          {strings.ToUpper(hexSum(body))},
	}
}

func TestParse(t *testing.T) {
	body := []byte("hello")
	m, err := ParseHeaders(validHeader(body), body)
	if err != nil {
		t.Fatal(err)
	}
	want := Mail{
		ID: "abc123", Type: TypeReceived, Time: time.Date(2024, 5, 1, 10, 0, 0, 123456789, time.UTC),
		Mailbox: "support", Address: "support@example.com", Folder: "INBOX", Source: "imap", SourceID: "7/42",
		MessageID: "<m@example.com>", From: "alice@example.com", Subject: "Hi", Date: "Wed, 01 May 2024 11:59:00 +0200",
		Received: time.Date(2024, 5, 1, 9, 59, 30, 0, time.UTC), Size: 5, SHA256: hexSum(body), payload: body,
	}
	if m.ID != want.ID || m.Type != want.Type || !m.Time.Equal(want.Time) || m.Mailbox != want.Mailbox ||
		m.Address != want.Address || m.Folder != want.Folder || m.Source != want.Source || m.SourceID != want.SourceID ||
		m.MessageID != want.MessageID || m.From != want.From || m.Subject != want.Subject || m.Date != want.Date ||
		!m.Received.Equal(want.Received) || m.Size != want.Size || m.SHA256 != want.SHA256 || m.Object != nil ||
		m.IsDeadLetter() || !m.HasBody() {
		t.Errorf("got %+v", m)
	}
	r, err := m.Body(context.Background(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := io.ReadAll(r); err != nil || !bytes.Equal(got, body) {
		t.Errorf("body %q %v", got, err)
	}
}

func TestParseErrors(t *testing.T) {
	body := []byte("hello")
	cases := []struct {
		name string
		edit func(nats.Header)
		want error
	}{
		{"no specversion", func(h nats.Header) { delete(h, HeaderSpecVersion) }, ErrNotMailpipe},
		{"lower-case key is another key", func(h nats.Header) { h["Ce-Specversion"] = h[HeaderSpecVersion]; delete(h, HeaderSpecVersion) }, ErrNotMailpipe},
		{"unknown type", func(h nats.Header) { h.Set(HeaderType, "com.mailpipe.mail.received.v2") }, ErrNotMailpipe},
		{"no id", func(h nats.Header) { delete(h, HeaderID) }, ErrMalformed},
		{"bad size", func(h nats.Header) { h.Set(HeaderSize, "-1") }, ErrMalformed},
		{"bad time", func(h nats.Header) { h.Set(HeaderReceived, "yesterday") }, ErrMalformed},
		{"bad sha", func(h nats.Header) { h.Set(HeaderSHA256, "abc") }, ErrMalformed},
		{"bucket without object", func(h nats.Header) { h.Set(HeaderBodyBucket, "b") }, ErrMalformed},
		{"bad digest", func(h nats.Header) {
			h.Set(HeaderBodyBucket, "b")
			h.Set(HeaderBodyObject, "o")
			h.Set(HeaderBodyDigest, "MD5=xyz")
		}, ErrMalformed},
	}
	for _, c := range cases {
		h := validHeader(body)
		c.edit(h)
		if _, err := ParseHeaders(h, body); !errors.Is(err, c.want) {
			t.Errorf("%s: got %v, want %v", c.name, err, c.want)
		}
	}
	if _, err := ParseHeaders(nil, nil); !errors.Is(err, ErrNotMailpipe) {
		t.Errorf("nil header: %v", err)
	}
}

func TestBodyMismatch(t *testing.T) {
	body := []byte("hello")
	h := validHeader(body)
	m, err := ParseHeaders(h, []byte("hellO"))
	if err != nil {
		t.Fatal(err)
	}
	r, _ := m.Body(context.Background(), nil)
	got, err := io.ReadAll(r)
	if !errors.Is(err, ErrBodyMismatch) {
		t.Errorf("read %q, err %v", got, err)
	}
	// The error sticks.
	if _, err := r.Read(make([]byte, 1)); !errors.Is(err, ErrBodyMismatch) {
		t.Errorf("second read: %v", err)
	}
}

func TestHexFromObjectDigest(t *testing.T) {
	sum := sha256.Sum256([]byte("x"))
	for _, d := range []string{
		"SHA-256=" + base64.URLEncoding.EncodeToString(sum[:]),
		"SHA-256=" + base64.RawURLEncoding.EncodeToString(sum[:]),
	} {
		if got, err := HexFromObjectDigest(d); err != nil || got != hex.EncodeToString(sum[:]) {
			t.Errorf("%s: %s %v", d, got, err)
		}
	}
	for _, d := range []string{"", "SHA-256=", "MD5=abc", "SHA-256=" + base64.URLEncoding.EncodeToString(sum[:8])} {
		if _, err := HexFromObjectDigest(d); err == nil {
			t.Errorf("%q accepted", d)
		}
	}
}

// TestObjectBody reads bodies stored by other object store clients and
// detects a reference whose SHA-256 does not match the object.
func TestObjectBody(t *testing.T) {
	ns, err := server.NewServer(&server.Options{JetStream: true, StoreDir: t.TempDir(), DontListen: true, NoSigs: true})
	if err != nil {
		t.Fatal(err)
	}
	ns.Start()
	t.Cleanup(func() { ns.Shutdown(); ns.WaitForShutdown() })
	if !ns.ReadyForConnections(10 * time.Second) {
		t.Fatal("not ready")
	}
	nc, err := nats.Connect("", nats.InProcessServer(ns))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	obs, err := js.CreateObjectStore(ctx, jetstream.ObjectStoreConfig{Bucket: "bodies"})
	if err != nil {
		t.Fatal(err)
	}
	for _, size := range []int{0, 1, 128 << 10, 1<<20 + 17} {
		body := make([]byte, size)
		for i := range body {
			body[i] = byte(i * 7)
		}
		info, err := obs.PutBytes(ctx, "obj", body)
		if err != nil {
			t.Fatal(err)
		}
		h := validHeader(body)
		h.Set(HeaderBodyBucket, "bodies")
		h.Set(HeaderBodyObject, "obj")
		h.Set(HeaderBodyDigest, info.Digest)
		m, err := ParseHeaders(h, nil)
		if err != nil {
			t.Fatal(err)
		}
		if m.Object == nil || !m.HasBody() {
			t.Fatalf("no object ref: %+v", m)
		}
		r, err := m.Body(ctx, js)
		if err != nil {
			t.Fatal(err)
		}
		got, err := io.ReadAll(r)
		r.Close()
		if err != nil || !bytes.Equal(got, body) {
			t.Errorf("%d bytes: read %d, %v", size, len(got), err)
		}

		// Mailpipe-Sha256 of other bytes: the read fails at the end.
		h.Set(HeaderSHA256, hexSum([]byte("other")))
		m, _ = ParseHeaders(h, nil)
		r, err = m.Body(ctx, js)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadAll(r); !errors.Is(err, ErrBodyMismatch) {
			t.Errorf("%d bytes: mismatch not detected: %v", size, err)
		}
		r.Close()

		// No JetStream context: a clear error.
		if _, err := m.Body(ctx, nil); err == nil {
			t.Errorf("nil JetStream accepted")
		}
	}
	m, _ := ParseHeaders(func() nats.Header {
		h := validHeader(nil)
		h.Set(HeaderBodyBucket, "bodies")
		h.Set(HeaderBodyObject, "obj")
		return h
	}(), nil)
	if err := m.DeleteBody(ctx, js); err != nil {
		t.Fatal(err)
	}
	if err := m.DeleteBody(ctx, js); err != nil {
		t.Errorf("second delete: %v", err)
	}
	if _, err := m.Body(ctx, js); !errors.Is(err, jetstream.ErrObjectNotFound) {
		t.Errorf("deleted object: %v", err)
	}
}
