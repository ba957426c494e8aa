package mailjob

import (
	"context"
	"testing"
	"time"

	"github.com/mailpipe/mailpipe/internal/testenv/memtest"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

func testCtx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// embedded starts an in-process JetStream server without a listener and
// returns a JetStream context connected to it.
func embedded(t testing.TB, opts ...func(*server.Options)) jetstream.JetStream {
	t.Helper()
	o := &server.Options{JetStream: true, StoreDir: t.TempDir(), DontListen: true, NoSigs: true}
	for _, f := range opts {
		f(o)
	}
	ns, err := server.NewServer(o)
	if err != nil {
		t.Fatal(err)
	}
	ns.Start()
	t.Cleanup(func() { ns.Shutdown(); ns.WaitForShutdown() })
	if !ns.ReadyForConnections(10 * time.Second) {
		t.Fatal("server not ready")
	}
	nc, err := nats.Connect("", nats.InProcessServer(ns))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return js
}

// senderStreams creates the streams and bucket as the sender does at
// start-up, with the documented default settings.
func senderStreams(t testing.TB, js jetstream.JetStream) {
	t.Helper()
	ctx := testCtx(t)
	for _, cfg := range []jetstream.StreamConfig{
		{
			Name: DefaultJobsStream, Subjects: []string{DefaultJobsPrefix + ".>"},
			Retention: jetstream.WorkQueuePolicy, Discard: jetstream.DiscardNew,
			MaxAge: 7 * 24 * time.Hour, Duplicates: 24 * time.Hour, MaxMsgSize: 1 << 20,
		},
		{
			Name: DefaultStatusStream, Subjects: []string{DefaultStatusPrefix + ".>"},
			Retention: jetstream.LimitsPolicy, Discard: jetstream.DiscardOld,
			MaxAge: 30 * 24 * time.Hour, Duplicates: 24 * time.Hour,
		},
		{
			Name: DefaultDeadLetterStream, Subjects: []string{DefaultDeadLetterPrefix + ".>"},
			Retention: jetstream.LimitsPolicy, Discard: jetstream.DiscardOld,
			MaxAge: 30 * 24 * time.Hour, Duplicates: 24 * time.Hour, MaxMsgSize: 1 << 20,
		},
	} {
		if _, err := js.CreateStream(ctx, cfg); err != nil {
			t.Fatalf("stream %s: %v", cfg.Name, err)
		}
	}
	if _, err := js.CreateObjectStore(ctx, jetstream.ObjectStoreConfig{
		Bucket: DefaultAttachmentBucket, TTL: 7 * 24 * time.Hour,
	}); err != nil {
		t.Fatal(err)
	}
}

func streamMsgs(t testing.TB, js jetstream.JetStream, name string) uint64 {
	t.Helper()
	s, err := js.Stream(testCtx(t), name)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(testCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	return info.State.Msgs
}

// TestMain doubles as a NATS server process for TestUploadMemoryBound.
func TestMain(m *testing.M) { memtest.Main(m) }
