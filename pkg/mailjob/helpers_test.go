package mailjob

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"hash"
	"io"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

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

const serverDirEnv = "MAILJOB_TEST_SERVER_DIR"

// TestMain doubles as a NATS server process for TestUploadMemoryBound.
func TestMain(m *testing.M) {
	if dir := os.Getenv(serverDirEnv); dir != "" {
		os.Exit(serveForParent(dir))
	}
	os.Exit(m.Run())
}

// serveForParent runs a JetStream server on loopback, prints its URL and
// stops when its standard input is closed (the parent ended).
func serveForParent(dir string) int {
	ns, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: -1, JetStream: true, StoreDir: dir, NoSigs: true})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	ns.Start()
	if !ns.ReadyForConnections(30 * time.Second) {
		fmt.Fprintln(os.Stderr, "server not ready")
		return 1
	}
	fmt.Println(ns.ClientURL())
	_, _ = io.Copy(io.Discard, os.Stdin)
	ns.Shutdown()
	ns.WaitForShutdown()
	return 0
}

// serverProcess starts a server in a child process, so that the heap of
// this process is the producer's alone.
func serverProcess(t *testing.T) string {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), serverDirEnv+"="+t.TempDir())
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	t.Cleanup(func() {
		stdin.Close()
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
		}
	})
	urlc := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if line := sc.Text(); strings.HasPrefix(line, "nats://") {
				urlc <- line
				break
			}
		}
		_, _ = io.Copy(io.Discard, stdout)
		_ = cmd.Wait()
		close(exited)
	}()
	select {
	case u := <-urlc:
		return u
	case <-exited:
		t.Fatal("server process exited")
	case <-time.After(30 * time.Second):
		t.Fatal("server process did not start")
	}
	return ""
}

// genReader produces n pseudo-random bytes without holding them, hashing
// what it produced.
type genReader struct {
	left  int64
	state uint64
	h     hash.Hash
}

func newGenReader(n int64, seed uint64) *genReader {
	return &genReader{left: n, state: seed | 1, h: sha256.New()}
}

func (g *genReader) Read(p []byte) (int, error) {
	if g.left == 0 {
		return 0, io.EOF
	}
	if int64(len(p)) > g.left {
		p = p[:g.left]
	}
	for i := range p {
		g.state ^= g.state << 13
		g.state ^= g.state >> 7
		g.state ^= g.state << 17
		p[i] = byte(g.state)
	}
	g.left -= int64(len(p))
	g.h.Write(p)
	return len(p), nil
}

func (g *genReader) sum() string { return hex.EncodeToString(g.h.Sum(nil)) }

// heapPeak samples the heap in use right after a forced collection (the
// memory actually held) until stopped, and returns the peak above the
// baseline measured at start.
type heapPeak struct {
	base uint64
	peak atomic.Uint64
	stop chan struct{}
	wg   sync.WaitGroup
}

func heapAfterGC() uint64 {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapInuse
}

func startHeapPeak() *heapPeak {
	runtime.GC() // twice: also empties sync.Pools
	h := &heapPeak{base: heapAfterGC(), stop: make(chan struct{})}
	h.peak.Store(h.base)
	h.wg.Add(1)
	go func() {
		defer h.wg.Done()
		tk := time.NewTicker(5 * time.Millisecond)
		defer tk.Stop()
		for {
			select {
			case <-h.stop:
				return
			case <-tk.C:
				if v := heapAfterGC(); v > h.peak.Load() {
					h.peak.Store(v)
				}
			}
		}
	}()
	return h
}

func (h *heapPeak) done() int64 {
	close(h.stop)
	h.wg.Wait()
	return int64(h.peak.Load()) - int64(h.base)
}
