// Package memtest helps tests that bound memory use: a NATS server in a
// child process (so the test process's heap is the code under test's
// alone), a generator of deterministic bytes that holds none of them, and a
// sampler of the peak heap actually held.
package memtest

import (
	"bufio"
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
)

const serverDirEnv = "MAILPIPE_MEMTEST_SERVER_DIR"

// Main is a TestMain for packages that use ServerProcess: the test binary
// doubles as the child server process.
func Main(m *testing.M) {
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

// ServerProcess starts a JetStream server in a child process (the test
// binary, whose TestMain must call Main) and returns its URL; it stops at
// test cleanup.
func ServerProcess(t *testing.T) string {
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

// GenReader produces n pseudo-random bytes (xorshift, from a seed) without
// holding them, hashing what it produced.
type GenReader struct {
	left  int64
	state uint64
	h     hash.Hash
}

// NewGenReader returns a reader of n bytes; the same n and seed give the
// same bytes.
func NewGenReader(n int64, seed uint64) *GenReader {
	return &GenReader{left: n, state: seed | 1, h: sha256.New()}
}

func (g *GenReader) Read(p []byte) (int, error) {
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

// Sum is the hex SHA-256 of what was read so far.
func (g *GenReader) Sum() string { return hex.EncodeToString(g.h.Sum(nil)) }

// HeapPeak samples the heap in use right after a forced collection (the
// memory actually held, not garbage awaiting collection) until Done, and
// reports the peak above the baseline measured at start.
type HeapPeak struct {
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

// StartHeapPeak starts sampling every 5 ms.
func StartHeapPeak() *HeapPeak {
	runtime.GC() // twice: also empties sync.Pools
	h := &HeapPeak{base: heapAfterGC(), stop: make(chan struct{})}
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

// Done stops sampling and returns the peak growth in bytes.
func (h *HeapPeak) Done() int64 {
	close(h.stop)
	h.wg.Wait()
	return int64(h.peak.Load()) - int64(h.base)
}
