// Package bench holds the end-to-end import benchmarks: a real Dovecot
// (maildir), a fake Entra ID (XOAUTH2 through real MSAL) and a real
// nats-server with JetStream, all on loopback (internal/testenv/stack), and
// the importer binary run as a subprocess exactly as in production:
//
//	importer run --once --config F
//
// Each benchmark measures the wall time of that process (start to exit) and
// its peak RSS, then checks that every message arrived exactly once and was
// moved. Run them with
//
//	make bench
//
// or go test -run '^$' -bench . -benchtime 1x -timeout 30m ./internal/bench/
//
// # One import per invocation
//
// An import of 10,000 messages takes seconds and consumes its input, so each
// benchmark function does the work once per invocation, whatever b.N is,
// and reports its own figures (ns/op is replaced by the wall time of that
// one run). Use -benchtime 1x; -count N repeats a benchmark N times, each
// with a fresh stack. With a larger b.N the extra iterations are ignored.
//
// # Peak RSS
//
// The peak RSS is ru_maxrss of the waited importer process. On Linux a
// child's ru_maxrss also counts the high-water RSS of the process it was
// forked from (exec records the old address space's peak), so a child of
// this test process, which hosts nats-server and seeds the mail, would
// report this process's peak instead of its own. The importer is therefore
// started by a small spawner process (this test binary re-executed by
// TestMain before anything grows), whose own peak (about 16 MB) is then the
// floor of the measurement.
//
// # Where the time goes
//
// Each benchmark also logs the CPU seconds used during the run by the
// importer, by this process (nats-server, mostly) and by Dovecot. On a
// 2-core machine their sum over 2 is the shortest possible run: a wall time
// well above it means that the pipeline waits, or that other work shares
// the machine.
//
// # Knobs
//
//	MAILPIPE_BENCH_FETCH_BATCH=N    imap.fetch_batch (default: the product's)
//	MAILPIPE_BENCH_MAX_IN_FLIGHT=N  bus.max_in_flight (default: the product's)
//	MAILPIPE_BENCH_IMPORTER=path    a prebuilt importer, to compare versions
//	MAILPIPE_BENCH_LOG=path         keep the importer's log of the last run
//
// # Profiling
//
// MAILPIPE_BENCH_INPROCESS=1 runs app.RunImporter inside the test process
// instead of the subprocess, so that -cpuprofile / -memprofile see the
// import path (nats-server runs in the same process: focus the profile on
// the importer's goroutines with -tagfocus=mailpipe=importer). Peak RSS is
// not reported in that mode.
package bench

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/pprof"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/mailpipe/mailpipe/internal/app"
	"github.com/mailpipe/mailpipe/internal/config"
	"github.com/mailpipe/mailpipe/internal/testenv/stack"
	"github.com/mailpipe/mailpipe/pkg/mailmsg"
)

const (
	spawnerEnv   = "MAILPIPE_BENCH_SPAWNER"
	inProcessEnv = "MAILPIPE_BENCH_INPROCESS"
	runTimeout   = 10 * time.Minute
)

var spawn *spawner

func TestMain(m *testing.M) {
	if os.Getenv(spawnerEnv) == "1" {
		os.Exit(serveSpawner(os.Stdin, os.Stdout))
	}
	flag.Parse()
	// Start the spawner now, while this process is small, and only when
	// benchmarks will run.
	if f := flag.Lookup("test.bench"); f != nil && f.Value.String() != "" && os.Getenv(inProcessEnv) != "1" {
		var err error
		if spawn, err = startSpawner(); err != nil {
			fmt.Fprintln(os.Stderr, "bench: start spawner:", err)
			os.Exit(1)
		}
	}
	code := m.Run()
	if spawn != nil {
		spawn.close()
	}
	if buildDir != "" {
		os.RemoveAll(buildDir)
	}
	os.Exit(code)
}

// ---------------------------------------------------------------- spawner

// spawnRequest asks the spawner to run one command.
type spawnRequest struct {
	Path    string
	Args    []string
	Env     []string
	Stdout  string // file paths
	Stderr  string
	Timeout time.Duration
}

// spawnResult is what the spawner measured.
type spawnResult struct {
	Wall      time.Duration
	MaxRSSKiB int64
	CPU       time.Duration // user + system
	ExitCode  int
	Err       string
}

type spawner struct {
	cmd *exec.Cmd
	in  io.WriteCloser
	out *bufio.Reader
	mu  sync.Mutex
}

func startSpawner() (*spawner, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(self)
	cmd.Env = append(os.Environ(), spawnerEnv+"=1")
	cmd.Stderr = os.Stderr
	in, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	return &spawner{cmd: cmd, in: in, out: bufio.NewReader(out)}, nil
}

func (s *spawner) run(req spawnRequest) (spawnResult, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var res spawnResult
	line, err := json.Marshal(req)
	if err != nil {
		return res, err
	}
	if _, err := s.in.Write(append(line, '\n')); err != nil {
		return res, fmt.Errorf("spawner: %w", err)
	}
	reply, err := s.out.ReadBytes('\n')
	if err != nil {
		return res, fmt.Errorf("spawner: %w", err)
	}
	return res, json.Unmarshal(reply, &res)
}

func (s *spawner) close() {
	s.in.Close()
	_ = s.cmd.Wait()
}

// serveSpawner runs one command per request line and answers with its wall
// time and ru_maxrss, until stdin closes.
func serveSpawner(in io.Reader, out io.Writer) int {
	sc := bufio.NewScanner(in)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	enc := json.NewEncoder(out)
	for sc.Scan() {
		var req spawnRequest
		if err := json.Unmarshal(sc.Bytes(), &req); err != nil {
			fmt.Fprintln(os.Stderr, "spawner:", err)
			return 1
		}
		if err := enc.Encode(runMeasured(req)); err != nil {
			return 1
		}
	}
	return 0
}

func runMeasured(req spawnRequest) spawnResult {
	var res spawnResult
	stdout, err := os.Create(req.Stdout)
	if err != nil {
		res.Err = err.Error()
		return res
	}
	defer stdout.Close()
	stderr, err := os.Create(req.Stderr)
	if err != nil {
		res.Err = err.Error()
		return res
	}
	defer stderr.Close()
	ctx, cancel := context.WithTimeout(context.Background(), req.Timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, req.Path, req.Args...)
	cmd.Env = req.Env
	cmd.Stdout, cmd.Stderr = stdout, stderr
	start := time.Now()
	if err := cmd.Start(); err != nil {
		res.Err = err.Error()
		return res
	}
	err = cmd.Wait()
	res.Wall = time.Since(start)
	if ru, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage); ok {
		res.MaxRSSKiB = ru.Maxrss // KiB on Linux
		res.CPU = time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	}
	res.ExitCode = cmd.ProcessState.ExitCode()
	if err != nil {
		res.Err = err.Error()
		if ctx.Err() != nil {
			res.Err += " (killed after " + req.Timeout.String() + ")"
		}
	}
	return res
}

// ------------------------------------------------------------- importer

var (
	buildOnce sync.Once
	buildDir  string
	buildBin  string
	buildErr  error
)

// importerBinary builds cmd/importer once per test binary run.
func importerBinary(b *testing.B) string {
	b.Helper()
	buildOnce.Do(func() {
		if bin := os.Getenv("MAILPIPE_BENCH_IMPORTER"); bin != "" {
			buildBin = bin // a prebuilt importer, e.g. to compare two versions
			return
		}
		gomod, err := exec.Command("go", "env", "GOMOD").Output()
		if err != nil {
			buildErr = fmt.Errorf("go env GOMOD: %w", err)
			return
		}
		root := filepath.Dir(strings.TrimSpace(string(gomod)))
		if buildDir, err = os.MkdirTemp("", "mailpipe-bench-"); err != nil {
			buildErr = err
			return
		}
		buildBin = filepath.Join(buildDir, "importer")
		cmd := exec.Command("go", "build", "-o", buildBin, "./cmd/importer")
		cmd.Dir = root
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("go build ./cmd/importer: %w\n%s", err, out)
		}
	})
	if buildErr != nil {
		b.Fatal(buildErr)
	}
	return buildBin
}

// tuning is what a benchmark sets in the importer configuration.
type tuning struct {
	FetchBatch     int    // imap.fetch_batch; 0: default
	MaxInFlight    int    // bus.max_in_flight; 0: default
	MaxMessageSize string // mailboxes[].max_message_size; "": default
}

// envTuning overrides tn from MAILPIPE_BENCH_FETCH_BATCH and
// MAILPIPE_BENCH_MAX_IN_FLIGHT, to compare settings without editing code.
func envTuning(b *testing.B, tn tuning) tuning {
	b.Helper()
	for _, o := range []struct {
		env string
		p   *int
	}{{"MAILPIPE_BENCH_FETCH_BATCH", &tn.FetchBatch}, {"MAILPIPE_BENCH_MAX_IN_FLIGHT", &tn.MaxInFlight}} {
		if v := os.Getenv(o.env); v != "" {
			if _, err := fmt.Sscanf(v, "%d", o.p); err != nil {
				b.Fatalf("%s=%q: not a number", o.env, v)
			}
		}
	}
	return tn
}

// writeConfig writes the importer configuration for st as YAML, the way an
// operator would: the client secret in a file next to it.
func writeConfig(b *testing.B, st *stack.Stack, tn tuning) string {
	b.Helper()
	tn = envTuning(b, tn)
	cfg := st.Config() // resolved addresses, CA file, authority host
	id := cfg.Identities[stack.IdentityID]
	mb := cfg.Mailboxes[0]
	dir := b.TempDir()
	secretFile := filepath.Join(dir, "client-secret")
	if err := os.WriteFile(secretFile, []byte(stack.Secret+"\n"), 0o600); err != nil {
		b.Fatal(err)
	}
	var y strings.Builder
	fmt.Fprintf(&y, "log:\n  level: info\n  format: json\n")
	fmt.Fprintf(&y, "nats:\n  url: %q\n", cfg.NATS.URL)
	if tn.MaxInFlight > 0 {
		fmt.Fprintf(&y, "bus:\n  max_in_flight: %d\n", tn.MaxInFlight)
	}
	fmt.Fprintf(&y, "identities:\n  %s:\n", stack.IdentityID)
	fmt.Fprintf(&y, "    tenant_id: %q\n    client_id: %q\n    client_secret_file: %q\n    authority_host: %q\n    ca_file: %q\n",
		id.TenantID, id.ClientID, secretFile, id.AuthorityHost, id.CAFile)
	fmt.Fprintf(&y, "mailboxes:\n  - name: %q\n    address: %q\n    source: imap\n    identity: %q\n", mb.Name, mb.Address, mb.Identity)
	fmt.Fprintf(&y, "    imap:\n      host: %q\n      port: %d\n      security: insecure\n      auth: xoauth2\n      timeout: 60s\n",
		mb.IMAP.Host, mb.IMAP.Port)
	if tn.FetchBatch > 0 {
		fmt.Fprintf(&y, "      fetch_batch: %d\n", tn.FetchBatch)
	}
	fmt.Fprintf(&y, "    folders:\n      import: %q\n      processed: %q\n      error: %q\n",
		mb.Folders.Import, mb.Folders.Processed, mb.Folders.Error)
	fmt.Fprintf(&y, "    poll_interval: 1s\n")
	if tn.MaxMessageSize != "" {
		fmt.Fprintf(&y, "    max_message_size: %s\n", tn.MaxMessageSize)
	}
	path := filepath.Join(dir, "importer.yaml")
	if err := os.WriteFile(path, []byte(y.String()), 0o600); err != nil {
		b.Fatal(err)
	}
	// Fail here, with the loader's message, rather than in the subprocess.
	if _, err := config.LoadImporter(path); err != nil {
		b.Fatalf("benchmark configuration rejected: %v\n%s", err, y.String())
	}
	return path
}

// measurement of one import run.
type measurement struct {
	wall      time.Duration
	maxRSSKiB int64         // 0 in-process
	cpu       time.Duration // importer user+system CPU; 0 in-process
	// CPU used meanwhile by this process (nats-server, mostly) and by
	// Dovecot: where the 2 cores went.
	natsCPU, dovecotCPU time.Duration
}

// runImporter runs `importer run --once --config cfgPath` and measures it.
func runImporter(b *testing.B, st *stack.Stack, cfgPath string) measurement {
	b.Helper()
	self0, dc0 := selfCPU(), dovecotCPU(st)
	m := runImporterOnly(b, cfgPath)
	m.natsCPU, m.dovecotCPU = selfCPU()-self0, dovecotCPU(st)-dc0
	return m
}

func runImporterOnly(b *testing.B, cfgPath string) measurement {
	b.Helper()
	if os.Getenv(inProcessEnv) == "1" {
		cfg, err := config.LoadImporter(cfgPath)
		if err != nil {
			b.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), runTimeout)
		defer cancel()
		start := time.Now()
		// The label lets pprof -tagfocus=mailpipe=importer separate the
		// importer's goroutines from nats-server's.
		pprof.Do(ctx, pprof.Labels("mailpipe", "importer"), func(ctx context.Context) {
			err = app.RunImporter(ctx, cfg, true, app.Deps{Logger: zap.NewNop()})
		})
		if err != nil {
			b.Fatalf("RunImporter: %v", err)
		}
		return measurement{wall: time.Since(start)}
	}
	if spawn == nil {
		b.Fatal("no spawner: run with -bench")
	}
	bin := importerBinary(b)
	dir := b.TempDir()
	res, err := spawn.run(spawnRequest{
		Path:    bin,
		Args:    []string{"run", "--once", "--config", cfgPath},
		Env:     os.Environ(),
		Stdout:  filepath.Join(dir, "stdout"),
		Stderr:  filepath.Join(dir, "stderr"),
		Timeout: runTimeout,
	})
	if err != nil {
		b.Fatal(err)
	}
	if keep := os.Getenv("MAILPIPE_BENCH_LOG"); keep != "" {
		if logs, err := os.ReadFile(filepath.Join(dir, "stderr")); err == nil {
			_ = os.WriteFile(keep, logs, 0o600)
		}
	}
	if res.Err != "" || res.ExitCode != 0 {
		logs, _ := os.ReadFile(filepath.Join(dir, "stderr"))
		b.Fatalf("importer run --once: %s (exit %d)\n%s", res.Err, res.ExitCode, tail(logs, 40))
	}
	return measurement{wall: res.Wall, maxRSSKiB: res.MaxRSSKiB, cpu: res.CPU}
}

// selfCPU is the user+system CPU of this process so far.
func selfCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// dovecotCPU is the CPU used so far by st's Dovecot: its master process
// (found by its configuration path), the master's reaped children and the
// live descendants. Best effort, from /proc; 0 when unreadable.
func dovecotCPU(st *stack.Stack) time.Duration {
	const tick = 10 * time.Millisecond // USER_HZ is 100 on Linux
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return 0
	}
	type proc struct {
		ppid     int
		own, kid int64 // ticks: utime+stime, cutime+cstime
	}
	procs := map[int]proc{}
	master := 0
	for _, e := range ents {
		var pid int
		if _, err := fmt.Sscanf(e.Name(), "%d", &pid); err != nil {
			continue
		}
		stat, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		// Fields after the parenthesised command name.
		i := bytes.LastIndexByte(stat, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(string(stat[i+1:]))
		if len(f) < 15 {
			continue
		}
		var p proc
		var ut, stt, cut, cst int64
		fmt.Sscanf(f[1], "%d", &p.ppid)
		fmt.Sscanf(f[11], "%d", &ut)
		fmt.Sscanf(f[12], "%d", &stt)
		fmt.Sscanf(f[13], "%d", &cut)
		fmt.Sscanf(f[14], "%d", &cst)
		p.own, p.kid = ut+stt, cut+cst
		procs[pid] = p
		if master == 0 {
			if cmd, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline")); err == nil &&
				bytes.Contains(cmd, []byte(st.Dovecot.Dir())) {
				master = pid
			}
		}
	}
	if master == 0 {
		return 0
	}
	in := map[int]bool{master: true}
	for changed := true; changed; {
		changed = false
		for pid, p := range procs {
			if !in[pid] && in[p.ppid] {
				in[pid], changed = true, true
			}
		}
	}
	ticks := procs[master].kid
	for pid := range in {
		ticks += procs[pid].own
	}
	return time.Duration(ticks) * tick
}

func tail(b []byte, lines int) string {
	s := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	return strings.Join(s[max(len(s)-lines, 0):], "\n")
}

// report sets the benchmark's figures from m, independently of b.N.
func report(b *testing.B, name string, m measurement, msgs int, bytes int64) {
	b.Helper()
	secs := m.wall.Seconds()
	b.ReportMetric(float64(m.wall.Nanoseconds()), "ns/op")
	b.ReportMetric(float64(msgs)/secs, "msgs/s")
	b.ReportMetric(float64(bytes)/secs/1e6, "MB/s")
	rss := "not measured (in-process)"
	if m.maxRSSKiB > 0 {
		mb := float64(m.maxRSSKiB) / 1024
		b.ReportMetric(mb, "peak_rss_MB")
		rss = fmt.Sprintf("%.1f MB", mb)
	}
	b.Logf("%s: %d messages, %.1f MB in %.2fs: %.0f msgs/s, %.1f MB/s, importer peak RSS %s",
		name, msgs, float64(bytes)/1e6, secs, float64(msgs)/secs, float64(bytes)/secs/1e6, rss)
	if m.maxRSSKiB > 0 {
		b.Logf("%s: CPU seconds: importer %.2f, nats-server (test process) %.2f, dovecot %.2f",
			name, m.cpu.Seconds(), m.natsCPU.Seconds(), m.dovecotCPU.Seconds())
	} else {
		b.Logf("%s: CPU seconds: importer and nats-server (test process) %.2f, dovecot %.2f",
			name, m.natsCPU.Seconds(), m.dovecotCPU.Seconds())
	}
}

// ---------------------------------------------------------------- mail

// mimeInvoice returns a multipart/mixed invoice mail of about size bytes
// (at least its fixed parts): a short text part and a base64 PDF-like
// attachment of pseudo-random bytes (incompressible, like a real PDF),
// unique per i and deterministic.
func mimeInvoice(i, size int) []byte {
	boundary := fmt.Sprintf("=_mailpipe_bench_%06d", i)
	var b bytes.Buffer
	b.Grow(size + 256)
	fmt.Fprintf(&b, "Return-Path: <billing@supplier%d.example>\r\n", i%97)
	fmt.Fprintf(&b, "From: \"Supplier %d Billing\" <billing@supplier%d.example>\r\n", i%97, i%97)
	fmt.Fprintf(&b, "To: %s\r\n", stack.User)
	fmt.Fprintf(&b, "Subject: Invoice %06d for order PO-%d\r\n", i, 400000+i)
	fmt.Fprintf(&b, "Date: Mon, 02 Nov 2026 10:%02d:%02d +0100\r\n", (i/60)%60, i%60)
	fmt.Fprintf(&b, "Message-ID: <inv-%06d.%d@supplier%d.example>\r\n", i, i*7919, i%97)
	fmt.Fprintf(&b, "MIME-Version: 1.0\r\n")
	fmt.Fprintf(&b, "Content-Type: multipart/mixed; boundary=\"%s\"\r\n\r\n", boundary)
	fmt.Fprintf(&b, "This is a multi-part message in MIME format.\r\n\r\n")
	fmt.Fprintf(&b, "--%s\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 7bit\r\n\r\n", boundary)
	fmt.Fprintf(&b, "Dear customer,\r\n\r\nplease find attached invoice %06d.\r\nAmount due: EUR %d,%02d, payable within 30 days.\r\n\r\nKind regards\r\nSupplier %d\r\n\r\n",
		i, 100+i%9000, i%100, i%97)
	fmt.Fprintf(&b, "--%s\r\nContent-Type: application/pdf; name=\"invoice-%06d.pdf\"\r\nContent-Transfer-Encoding: base64\r\nContent-Disposition: attachment; filename=\"invoice-%06d.pdf\"\r\n\r\n", boundary, i, i)
	closing := "\r\n--" + boundary + "--\r\n"
	var seed [32]byte
	binary.LittleEndian.PutUint64(seed[:], uint64(i)+1)
	rng := rand.NewChaCha8(seed)
	raw := make([]byte, 57) // one 76-column base64 line
	line := make([]byte, 76)
	for b.Len()+78+len(closing) <= size {
		_, _ = rng.Read(raw)
		base64.StdEncoding.Encode(line, raw)
		b.Write(line)
		b.WriteString("\r\n")
	}
	// A last, shorter line to land close to size.
	if n := (size - b.Len() - len(closing) - 2) / 4 * 3; n > 0 {
		_, _ = rng.Read(raw[:min(n, 57)])
		enc := base64.StdEncoding.EncodeToString(raw[:min(n, 57)])
		b.WriteString(enc)
		b.WriteString("\r\n")
	}
	b.WriteString(closing[2:])
	return b.Bytes()
}

// ----------------------------------------------------------- benchmarks

// importMany seeds n messages of about size bytes, imports them with the
// importer binary and checks that each one arrived once and was moved.
func importMany(b *testing.B, name string, n, size int, tn tuning) {
	b.Helper()
	b.StopTimer()
	st := stack.Start(b, stack.Options{})
	var total int64
	st.Dovecot.AppendFunc(stack.User, stack.Import, n, func(i int) []byte {
		m := mimeInvoice(i, size)
		total += int64(len(m))
		return m
	})
	// Let Dovecot index the new maildir files before the clock starts:
	// mail normally arrives over time and is indexed on delivery.
	if got := st.Dovecot.Count(stack.User, stack.Import); got != n {
		b.Fatalf("seeded %d messages, import folder has %d", n, got)
	}
	cfgPath := writeConfig(b, st, tn)

	b.StartTimer()
	m := runImporter(b, st, cfgPath)
	b.StopTimer()

	if got := st.Dovecot.Count(stack.User, stack.Import); got != 0 {
		b.Fatalf("import folder still has %d messages", got)
	}
	if got := st.Dovecot.Count(stack.User, stack.Processed); got != n {
		b.Fatalf("processed folder has %d messages, want %d", got, n)
	}
	if got := st.Dovecot.Count(stack.User, stack.ErrorBox); got != 0 {
		b.Fatalf("error folder has %d messages, want 0", got)
	}
	s := st.Stream(config.DefaultStreamName)
	if s.Messages != n || s.DistinctID != n || len(s.PerDigest) != n {
		b.Fatalf("stream: %d messages, %d distinct ids, %d distinct bodies; want %d each", s.Messages, s.DistinctID, len(s.PerDigest), n)
	}
	report(b, name, m, n, total)
}

// BenchmarkImport10k50KB imports 10,000 MIME mails of 50 KB (base64
// attachment) and moves them. Target: >= 2,000 msgs/s, peak RSS <= 100 MB.
func BenchmarkImport10k50KB(b *testing.B) {
	importMany(b, "10k x 50KB", 10_000, 50_000, tuning{})
}

// BenchmarkImport10k1KB is the same with 1 KB mails: per-message overhead.
func BenchmarkImport10k1KB(b *testing.B) {
	importMany(b, "10k x 1KB", 10_000, 1_000, tuning{})
}

// BenchmarkImport30MB imports one 30 MB mail (through the object store) and
// moves it. Target: peak RSS <= 100 MB.
func BenchmarkImport30MB(b *testing.B) {
	const size = 30_000_000
	b.StopTimer()
	st := stack.Start(b, stack.Options{})
	msg := mimeInvoice(1, size)
	st.Dovecot.AppendMany(stack.User, stack.Import, [][]byte{msg})
	if got := st.Dovecot.Count(stack.User, stack.Import); got != 1 {
		b.Fatalf("import folder has %d messages, want 1", got)
	}
	digest, total := stack.Digest(msg), int64(len(msg))
	cfgPath := writeConfig(b, st, tuning{MaxMessageSize: "40MiB"})
	msg = nil // not held during the run

	b.StartTimer()
	m := runImporter(b, st, cfgPath)
	b.StopTimer()

	if got := st.Dovecot.Count(stack.User, stack.Import); got != 0 {
		b.Fatalf("import folder still has %d messages", got)
	}
	if got := st.Dovecot.Count(stack.User, stack.Processed); got != 1 {
		b.Fatalf("processed folder has %d messages, want 1", got)
	}
	s := st.Stream(config.DefaultStreamName)
	if s.Messages != 1 {
		b.Fatalf("stream has %d messages, want 1", s.Messages)
	}
	h := s.Headers[0]
	if h.Get(mailmsg.HeaderBodyObject) == "" {
		b.Fatalf("stream message has no %s header (not stored in the object store): %v", mailmsg.HeaderBodyObject, h)
	}
	if got := h.Get(mailmsg.HeaderSHA256); got != digest {
		b.Fatalf("stored body SHA-256 %s, want %s", got, digest)
	}
	report(b, "1 x 30MB", m, 1, total)
}
