package bus

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/mailpipe/mailpipe/internal/config"
	"github.com/mailpipe/mailpipe/pkg/mailmsg"
)

const serverDirEnv = "MAILPIPE_BUS_TEST_SERVER_DIR"

// TestMain doubles as a NATS server process for TestLargeMemoryBound.
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
// this process is the importer's alone.
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

// TestLargeMemoryBound publishes and reads back 30 MB and checks that the
// importer's heap grows by far less than that.
func TestLargeMemoryBound(t *testing.T) {
	url := serverProcess(t)
	ctx := testCtx(t)
	log := zaptest.NewLogger(t, zaptest.Level(zap.WarnLevel))
	c, err := Connect(ctx, config.NATS{URL: url}, log)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	b := openBus(t, c, testBusConfig())

	const size = 30 << 20
	const bound = 16 << 20
	// Warm up: connection buffers, consumers, JSON encoders.
	if _, err := b.PublishLargeMail(ctx, testEnvelope("warm-up"), newGenReader(1<<20, 1)); err != nil {
		t.Fatal(err)
	}

	gen := newGenReader(size, 99)
	hp := startHeapPeak()
	_, err = b.PublishLargeMail(ctx, testEnvelope("big"), gen)
	peak := hp.done()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("publishing 30 MB: heap peak +%.1f MB", float64(peak)/(1<<20))
	if peak > bound {
		t.Errorf("publishing 30 MB raised the heap by %.1f MB (bound %d MB)", float64(peak)/(1<<20), bound>>20)
	}

	msgs, err := b.Messages(ctx, "support")
	if err != nil || len(msgs) != 2 {
		t.Fatalf("messages: %d %v", len(msgs), err)
	}
	m, err := mailmsg.Parse(msgs[1])
	if err != nil {
		t.Fatal(err)
	}
	hp = startHeapPeak()
	r, err := m.Body(ctx, c.JetStream())
	if err != nil {
		t.Fatal(err)
	}
	check := newGenReader(0, 0)
	n, err := io.Copy(check.h, r)
	r.Close()
	peak = hp.done()
	if err != nil || n != size || check.sum() != gen.sum() {
		t.Fatalf("read back %d bytes, %v, digest match %v", n, err, check.sum() == gen.sum())
	}
	t.Logf("reading back 30 MB: heap peak +%.1f MB", float64(peak)/(1<<20))
	if peak > bound {
		t.Errorf("reading 30 MB raised the heap by %.1f MB (bound %d MB)", float64(peak)/(1<<20), bound>>20)
	}
}
