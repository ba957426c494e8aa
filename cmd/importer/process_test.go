package main

// Process-level tests: the real importer binary runs as a subprocess
// against the test stack (fake Entra ID, real Dovecot, real NATS), which
// lives in the test process and so survives the importer being killed.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	goimap "github.com/emersion/go-imap/v2"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/mailpipe/mailpipe/internal/testenv/stack"
)

const (
	streamName     = "MAILPIPE_INBOUND"    // config.DefaultStreamName
	deadLetterName = "MAILPIPE_DEADLETTER" // config.DefaultDeadLetterName
	invoiceSize    = 5000
)

var (
	buildOnce sync.Once
	binDir    string
	binPath   string
	buildErr  error
)

func TestMain(m *testing.M) {
	code := m.Run()
	if binDir != "" {
		os.RemoveAll(binDir)
	}
	os.Exit(code)
}

// importerBin builds the importer once per test binary and returns its path.
func importerBin(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		binDir, buildErr = os.MkdirTemp("", "importer-process-test-")
		if buildErr != nil {
			return
		}
		binPath = filepath.Join(binDir, "importer")
		// go test runs the package from its directory and puts the go
		// command of its GOROOT first in PATH.
		out, err := exec.Command("go", "build", "-o", binPath, ".").CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binPath
}

// syncBuffer is a bytes.Buffer safe for the writer goroutine of exec.Cmd
// and concurrent readers.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// proc is one importer subprocess.
type proc struct {
	name           string
	cmd            *exec.Cmd
	stdout, stderr syncBuffer
	done           chan struct{}
}

// startImporter starts the importer with args. The process is killed at
// test end if it is still running.
func startImporter(t *testing.T, name string, args ...string) *proc {
	t.Helper()
	p := &proc{name: name, done: make(chan struct{})}
	p.cmd = exec.Command(importerBin(t), args...)
	p.cmd.Stdout, p.cmd.Stderr = &p.stdout, &p.stderr
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	go func() {
		_ = p.cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		select {
		case <-p.done:
		default:
			_ = p.cmd.Process.Kill()
			<-p.done
		}
	})
	return p
}

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// wait waits for the process to exit and returns its exit code (-1 when a
// signal ended it). guard is a hang guard only: past it the process gets
// SIGQUIT (a goroutine dump on its stderr), then SIGKILL, and the test
// fails.
func (p *proc) wait(t *testing.T, guard time.Duration) int {
	t.Helper()
	select {
	case <-p.done:
	case <-time.After(guard):
		_ = p.cmd.Process.Signal(syscall.SIGQUIT)
		select {
		case <-p.done:
		case <-time.After(10 * time.Second):
			_ = p.cmd.Process.Kill()
			<-p.done
		}
		t.Fatalf("%s did not exit within %v (hang guard); stderr:\n%s", p.name, guard, tail(p.stderr.String(), 200))
	}
	return p.cmd.ProcessState.ExitCode()
}

// run starts the importer with args and waits for it to exit.
func runImporter(t *testing.T, name string, guard time.Duration, args ...string) *proc {
	t.Helper()
	p := startImporter(t, name, args...)
	p.wait(t, guard)
	return p
}

func (p *proc) code() int { return p.cmd.ProcessState.ExitCode() }

func tail(s string, lines int) string {
	l := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(l) > lines {
		l = append([]string{fmt.Sprintf("... (%d lines before)", len(l)-lines)}, l[len(l)-lines:]...)
	}
	return strings.Join(l, "\n")
}

// logLines decodes the JSON log lines of an importer's stderr; other lines
// are skipped.
func logLines(stderr string) []map[string]any {
	var out []map[string]any
	sc := bufio.NewScanner(strings.NewReader(stderr))
	sc.Buffer(make([]byte, 0, 64<<10), 4<<20)
	for sc.Scan() {
		line := sc.Bytes()
		if len(line) == 0 || line[0] != '{' {
			continue
		}
		var m map[string]any
		if json.Unmarshal(line, &m) == nil {
			out = append(out, m)
		}
	}
	return out
}

// errorLines returns the error-level (and worse) JSON log lines.
func errorLines(stderr string) []string {
	var out []string
	for _, m := range logLines(stderr) {
		switch m["level"] {
		case "error", "dpanic", "panic", "fatal":
			b, _ := json.Marshal(m)
			out = append(out, string(b))
		}
	}
	return out
}

// passTotals sums the "import pass done" log lines.
type passTotals struct{ passes, published, duplicates, moved int }

func sumPasses(stderr string) passTotals {
	var s passTotals
	num := func(m map[string]any, k string) int {
		f, _ := m[k].(float64)
		return int(f)
	}
	for _, m := range logLines(stderr) {
		if m["msg"] == "import pass done" {
			s.passes++
			s.published += num(m, "published")
			s.duplicates += num(m, "duplicates")
			s.moved += num(m, "moved")
		}
	}
	return s
}

// cfgOpts adjust the configuration written by writeConfig.
type cfgOpts struct {
	secret          string // default stack.Secret
	fetchBatch      int    // 0: default
	shutdownTimeout time.Duration
}

// writeConfig writes the stack's configuration as a YAML file (secret in
// its own file) and returns the file's path.
func writeConfig(t *testing.T, st *stack.Stack, o cfgOpts) string {
	t.Helper()
	c := st.Config()
	dir := t.TempDir()
	if o.secret == "" {
		o.secret = stack.Secret
	}
	if err := os.WriteFile(filepath.Join(dir, "client-secret"), []byte(o.secret+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	id := c.Identities[stack.IdentityID]
	m := c.Mailboxes[0]
	var b strings.Builder
	fmt.Fprintf(&b, "log:\n  level: info\n  format: json\n")
	fmt.Fprintf(&b, "nats:\n  url: %q\n", c.NATS.URL)
	fmt.Fprintf(&b, "identities:\n  %s:\n", stack.IdentityID)
	fmt.Fprintf(&b, "    tenant_id: %q\n    client_id: %q\n    client_secret_file: client-secret\n", id.TenantID, id.ClientID)
	fmt.Fprintf(&b, "    authority_host: %q\n    ca_file: %q\n", id.AuthorityHost, id.CAFile)
	fmt.Fprintf(&b, "mailboxes:\n  - name: %s\n    address: %q\n    source: imap\n    identity: %s\n", m.Name, m.Address, m.Identity)
	fmt.Fprintf(&b, "    imap:\n      host: %q\n      port: %d\n      security: %s\n      auth: %s\n      timeout: 20s\n",
		m.IMAP.Host, m.IMAP.Port, m.IMAP.Security, m.IMAP.Auth)
	if o.fetchBatch > 0 {
		fmt.Fprintf(&b, "      fetch_batch: %d\n", o.fetchBatch)
	}
	fmt.Fprintf(&b, "    folders:\n      import: %q\n      processed: %q\n      error: %q\n",
		m.Folders.Import, m.Folders.Processed, m.Folders.Error)
	fmt.Fprintf(&b, "    poll_interval: 1s\n")
	if o.shutdownTimeout > 0 {
		fmt.Fprintf(&b, "shutdown_timeout: %s\n", o.shutdownTimeout)
	}
	path := filepath.Join(dir, "importer.yaml")
	if err := os.WriteFile(path, []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// jsClient is a JetStream client on the stack's NATS server, closed at
// test end.
func jsClient(t *testing.T, st *stack.Stack) jetstream.JetStream {
	t.Helper()
	nc, err := nats.Connect(st.NATSURL())
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

// streamMsgs is the number of messages in a stream (0 before the importer
// created it).
func streamMsgs(t *testing.T, js jetstream.JetStream, name string) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := js.Stream(ctx, name)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return 0
	}
	if err != nil {
		t.Fatalf("stream %s: %v", name, err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatalf("stream %s info: %v", name, err)
	}
	return int(info.State.Msgs)
}

// folderDigests returns the SHA-256 digests of the messages in a folder.
func folderDigests(st *stack.Stack, folder string) map[string]int {
	out := map[string]int{}
	for _, raw := range st.Dovecot.Messages(stack.User, folder) {
		out[stack.Digest(raw)]++
	}
	return out
}

type folderCounts struct{ imp, processed, errs int }

func counts(st *stack.Stack) folderCounts {
	return folderCounts{
		imp:       st.Dovecot.Count(stack.User, stack.Import),
		processed: st.Dovecot.Count(stack.User, stack.Processed),
		errs:      st.Dovecot.Count(stack.User, stack.ErrorBox),
	}
}

// assertExactlyOnce checks the end state after every message of n was
// imported: import and error folders empty, n in processed, n distinct
// messages in the stream, each seeded body exactly once, processed folder
// and stream holding the same bodies, and no dead letters.
func assertExactlyOnce(t *testing.T, st *stack.Stack, js jetstream.JetStream, n int) {
	t.Helper()
	if c := counts(st); c != (folderCounts{0, n, 0}) {
		t.Errorf("folders: import %d, processed %d, error %d; want 0, %d, 0", c.imp, c.processed, c.errs, n)
	}
	s := st.Stream(streamName)
	if s.Messages != n || s.DistinctID != n || len(s.PerDigest) != n {
		t.Errorf("stream: %d messages, %d distinct ce-id, %d distinct SHA-256; want %d each", s.Messages, s.DistinctID, len(s.PerDigest), n)
	}
	var dups int
	for d, c := range s.PerDigest {
		if c != 1 {
			dups++
			if dups <= 5 {
				t.Errorf("body %s is %d times in the stream", d, c)
			}
		}
	}
	seeded := map[string]bool{}
	for i := range n {
		seeded[stack.Digest(stack.Invoice(i, invoiceSize))] = true
	}
	var missing int
	for d := range seeded {
		if s.PerDigest[d] == 0 {
			missing++
		}
	}
	if missing > 0 {
		t.Errorf("%d seeded messages are not in the stream", missing)
	}
	proc := folderDigests(st, stack.Processed)
	var notInStream int
	for d := range proc {
		if s.PerDigest[d] == 0 {
			notInStream++
		}
	}
	if notInStream > 0 {
		t.Errorf("%d messages in the processed folder are not in the stream", notInStream)
	}
	var copies, extra int
	for _, c := range proc {
		if c > 1 {
			copies++
			extra += c - 1
		}
	}
	if copies > 0 {
		t.Errorf("processed folder: %d messages are there more than once (%d extra copies)", copies, extra)
	}
	if dl := streamMsgs(t, js, deadLetterName); dl != 0 {
		t.Errorf("dead-letter stream has %d messages, want 0", dl)
	}
}

// TestKill9AtRandomPointsThenRecover kills continuously running importers
// with SIGKILL at random moments (landing in start-up, fetch, publish, the
// wait for PubAcks and the move), then lets `run --once` finish: every
// message must end up exactly once in the stream and in the processed
// folder.
func TestKill9AtRandomPointsThenRecover(t *testing.T) {
	// Enough mail that about 15 kills 50-400ms apart land before the
	// import folder is empty (an importer gets through roughly 2,000 of
	// these messages per second on a fast machine).
	const n = 6000
	st := stack.Start(t, stack.Options{})
	st.Dovecot.AppendFunc(stack.User, stack.Import, n, func(i int) []byte { return stack.Invoice(i, invoiceSize) })
	cfg := writeConfig(t, st, cfgOpts{fetchBatch: 25})
	js := jsClient(t, st)
	importerBin(t) // build before timing anything

	seed := time.Now().UnixNano()
	if s := os.Getenv("MAILPIPE_KILL_SEED"); s != "" {
		v, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			t.Fatalf("MAILPIPE_KILL_SEED: %v", err)
		}
		seed = v
	}
	t.Logf("kill seed %d (rerun with MAILPIPE_KILL_SEED=%d)", seed, seed)
	rng := rand.New(rand.NewPCG(uint64(seed), uint64(seed)>>1))

	var (
		all                              []*proc
		prevStream, prevProc             int
		kills, idle, gapKills, afterMove int
	)
	for i := range 15 {
		p := startImporter(t, fmt.Sprintf("run #%d", i+1), "run", "--config", cfg)
		all = append(all, p)
		d := 50*time.Millisecond + time.Duration(rng.Int64N(int64(351*time.Millisecond)))
		time.Sleep(d)
		if p.exited() {
			t.Fatalf("%s exited on its own (code %d) in continuous mode; stderr:\n%s", p.name, p.code(), tail(p.stderr.String(), 50))
		}
		if err := p.cmd.Process.Signal(syscall.SIGKILL); err != nil {
			t.Fatalf("kill %s: %v", p.name, err)
		}
		if code := p.wait(t, time.Minute); code != -1 {
			t.Fatalf("%s: exit code %d after SIGKILL", p.name, code)
		}
		kills++
		c := counts(st)
		sn := streamMsgs(t, js, streamName)
		gap := sn - c.processed // published (acknowledged or not) but not moved
		where := "no publish outstanding (fetching, between batches, or in a move the server completed)"
		switch {
		case sn == prevStream && c.processed == prevProc:
			where = "no progress (start-up, token, login, list or first fetch)"
			idle++
		case gap > 0:
			where = "between publish and move (publishing, waiting for PubAcks, or moving)"
			gapKills++
		default:
			afterMove++
		}
		t.Logf("kill %2d after %3dms: import %4d, processed %4d, error %d, stream %4d (published-not-moved %3d): %s",
			i+1, d.Milliseconds(), c.imp, c.processed, c.errs, sn, gap, where)
		if sn > n {
			t.Errorf("stream holds %d messages after kill %d, more than the %d seeded", sn, i+1, n)
		}
		if gap < 0 {
			t.Errorf("after kill %d the processed folder holds %d messages more than the stream: moved without a PubAck", i+1, -gap)
		}
		if c.errs != 0 {
			t.Errorf("error folder holds %d messages after kill %d", c.errs, i+1)
		}
		if e := errorLines(p.stderr.String()); len(e) > 0 {
			t.Logf("%s logged errors before being killed:\n%s", p.name, strings.Join(e, "\n"))
		}
		prevStream, prevProc = sn, c.processed
		if c.imp == 0 {
			break
		}
	}
	t.Logf("%d kills: %d without progress, %d between publish and move, %d with no publish outstanding", kills, idle, gapKills, afterMove)

	final := runImporter(t, "final run --once", 5*time.Minute, "run", "--once", "--config", cfg)
	all = append(all, final)
	if final.code() != 0 {
		t.Fatalf("final run --once: exit code %d; stderr:\n%s", final.code(), tail(final.stderr.String(), 80))
	}
	var tot passTotals
	for _, p := range all {
		s := sumPasses(p.stderr.String())
		tot.published += s.published
		tot.duplicates += s.duplicates
	}
	t.Logf("logged by completed passes: %d published, %d duplicates dropped by JetStream", tot.published, tot.duplicates)
	if e := errorLines(final.stderr.String()); len(e) > 0 {
		t.Errorf("final run logged errors:\n%s", strings.Join(e, "\n"))
	}
	assertExactlyOnce(t, st, js, n)
}

// TestSIGTERMIsGraceful: SIGTERM while importing makes the importer finish
// its batch in progress and exit 0; nothing is moved without a PubAck (every
// message in the processed folder is in the stream); `run --once` then
// imports the rest exactly once.
func TestSIGTERMIsGraceful(t *testing.T) {
	const n = 3000
	st := stack.Start(t, stack.Options{})
	st.Dovecot.AppendFunc(stack.User, stack.Import, n, func(i int) []byte { return stack.Invoice(i, invoiceSize) })
	cfg := writeConfig(t, st, cfgOpts{fetchBatch: 100, shutdownTimeout: 30 * time.Second})
	js := jsClient(t, st)
	importerBin(t)

	p := startImporter(t, "run", "run", "--config", cfg)
	// About 300ms, and at least until the import is under way, so the
	// signal lands in the middle of it.
	time.Sleep(300 * time.Millisecond)
	for deadline := time.Now().Add(time.Minute); streamMsgs(t, js, streamName) == 0; {
		if p.exited() {
			t.Fatalf("importer exited on its own (code %d); stderr:\n%s", p.code(), tail(p.stderr.String(), 50))
		}
		if time.Now().After(deadline) {
			t.Fatalf("nothing published after a minute; stderr:\n%s", tail(p.stderr.String(), 50))
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	// shutdown_timeout (30s) plus a generous margin: a hang guard only.
	if code := p.wait(t, 60*time.Second); code != 0 {
		t.Fatalf("importer exited with code %d after SIGTERM, want 0; stderr:\n%s", code, tail(p.stderr.String(), 80))
	}
	if !strings.Contains(p.stderr.String(), "shutting down") {
		t.Errorf("no shutdown log line; stderr:\n%s", tail(p.stderr.String(), 20))
	}
	if e := errorLines(p.stderr.String()); len(e) > 0 {
		t.Errorf("errors logged on a graceful shutdown:\n%s", strings.Join(e, "\n"))
	}

	c := counts(st)
	s := st.Stream(streamName)
	t.Logf("after SIGTERM: import %d, processed %d, error %d; stream %d messages", c.imp, c.processed, c.errs, s.Messages)
	if c.imp+c.processed != n || c.errs != 0 {
		t.Errorf("folders after SIGTERM: import %d + processed %d = %d, error %d; want %d and 0", c.imp, c.processed, c.imp+c.processed, c.errs, n)
	}
	proc := folderDigests(st, stack.Processed)
	var unacked int
	for d := range proc {
		if s.PerDigest[d] == 0 {
			unacked++
		}
	}
	if unacked > 0 {
		t.Errorf("%d of %d messages in the processed folder are not in the stream: moved without a PubAck", unacked, len(proc))
	}
	if s.Messages != c.processed {
		// The batch in progress at SIGTERM is finished: what was
		// acknowledged is moved too.
		t.Errorf("after a graceful shutdown the stream holds %d messages but the processed folder %d", s.Messages, c.processed)
	}
	for d, k := range s.PerDigest {
		if k != 1 {
			t.Errorf("body %s is %d times in the stream", d, k)
		}
	}

	rest := runImporter(t, "run --once", 5*time.Minute, "run", "--once", "--config", cfg)
	if rest.code() != 0 {
		t.Fatalf("run --once: exit code %d; stderr:\n%s", rest.code(), tail(rest.stderr.String(), 80))
	}
	assertExactlyOnce(t, st, js, n)
}

// TestTwoProcessesSameMailbox runs two `run --once` at the same time on the
// same mailbox (a rolling update or a second replica): both exit 0 without
// logging errors, and every message is imported exactly once.
func TestTwoProcessesSameMailbox(t *testing.T) {
	const n = 2000
	st := stack.Start(t, stack.Options{})
	st.Dovecot.AppendFunc(stack.User, stack.Import, n, func(i int) []byte { return stack.Invoice(i, invoiceSize) })
	cfg := writeConfig(t, st, cfgOpts{fetchBatch: 50})
	js := jsClient(t, st)
	importerBin(t)

	a := startImporter(t, "replica A", "run", "--once", "--config", cfg)
	b := startImporter(t, "replica B", "run", "--once", "--config", cfg)
	for _, p := range []*proc{a, b} {
		code := p.wait(t, 5*time.Minute)
		s := sumPasses(p.stderr.String())
		t.Logf("%s: exit %d; %d passes, %d published, %d duplicates, %d moved", p.name, code, s.passes, s.published, s.duplicates, s.moved)
		if code != 0 {
			t.Errorf("%s: exit code %d, want 0; stderr:\n%s", p.name, code, tail(p.stderr.String(), 60))
		}
		if e := errorLines(p.stderr.String()); len(e) > 0 {
			t.Errorf("%s logged %d errors:\n%s", p.name, len(e), strings.Join(e[:min(len(e), 20)], "\n"))
		}
	}
	assertExactlyOnce(t, st, js, n)
}

// TestExitCodesAndMessages checks what an operator sees: exit codes and the
// messages for a wrong secret, an invalid configuration and `importer check`.
func TestExitCodesAndMessages(t *testing.T) {
	st := stack.Start(t, stack.Options{})
	const seeded, seen = 7, 2
	st.Dovecot.AppendFunc(stack.User, stack.Import, seeded, func(i int) []byte { return stack.Invoice(i, invoiceSize) })
	markSeen(t, st, seen)
	importerBin(t)

	t.Run("wrong client secret", func(t *testing.T) {
		const wrong = "wrong-secret~Zq8vXr2pLk4"
		cfg := writeConfig(t, st, cfgOpts{secret: wrong})
		p := runImporter(t, "run --once", 2*time.Minute, "run", "--once", "--config", cfg)
		out := p.stderr.String() + p.stdout.String()
		if p.code() == 0 {
			t.Errorf("exit code 0 with a wrong client secret")
		}
		for _, want := range []string{"AADSTS7000215", stack.ClientID} {
			if !strings.Contains(p.stderr.String(), want) {
				t.Errorf("stderr lacks %q", want)
			}
		}
		for _, secret := range []string{wrong, stack.Secret} {
			if strings.Contains(out, secret) {
				t.Errorf("output contains the client secret %q", secret)
			}
		}
		if n := st.Dovecot.Count(stack.User, stack.Import); n != seeded {
			t.Errorf("import folder has %d messages, want %d untouched", n, seeded)
		}
		t.Logf("exit code %d; last line: %s", p.code(), tail(p.stderr.String(), 1))
		if t.Failed() {
			t.Logf("exit code %d; stderr:\n%s", p.code(), tail(p.stderr.String(), 40))
		}
	})

	t.Run("invalid configuration", func(t *testing.T) {
		dir := t.TempDir()
		cfg := filepath.Join(dir, "importer.yaml")
		// Two unknown keys (one a typo of imap.host) and a missing
		// required field (folders.processed).
		writeFile(t, cfg, `nats:
  url: nats://127.0.0.1:4222
mailboxes:
  - name: invoices
    address: invoices@example.test
    auth: password
    imap:
      hots: imap.example.test
      auth: password
      password: pw-Secr3t-77
    folders:
      import: INBOX/Import
      error: INBOX/Error
`)
		p := runImporter(t, "run --once", time.Minute, "run", "--once", "--config", cfg)
		if p.code() != 2 {
			t.Errorf("exit code %d, want 2", p.code())
		}
		stderr := p.stderr.String()
		for _, want := range []string{
			`mailboxes[0].auth: unknown key (did you mean "imap.auth"?) (line 6)`,
			`mailboxes[0].imap.hots: unknown key (did you mean "host"?) (line 8)`,
		} {
			if !strings.Contains(stderr, want) {
				t.Errorf("stderr lacks %q", want)
			}
		}
		// The loader reports the problems of decoding (unknown keys, bad
		// values) and stops there: validation (missing required fields)
		// runs on a configuration that decoded cleanly, so the missing
		// folders.processed is reported by the next run, below.
		if !strings.Contains(stderr, "mailboxes[0].folders.processed: required") {
			t.Logf("not reported together with the unknown keys: mailboxes[0].folders.processed: required")
		}
		if k := strings.Count(stderr, cfg); k != 1 {
			t.Errorf("the file name is printed %d times, want once", k)
		}
		if strings.Contains(stderr, "pw-Secr3t-77") {
			t.Errorf("stderr shows the password")
		}
		if t.Failed() {
			t.Logf("stderr:\n%s", stderr)
		}

		// With the keys right, the validation problems: every one with
		// its key path.
		writeFile(t, cfg, `nats:
  url: nats://127.0.0.1:4222
mailboxes:
  - name: invoices
    imap:
      auth: password
      password: pw-Secr3t-77
    folders:
      import: INBOX/Import
      error: INBOX/Error
`)
		p = runImporter(t, "run --once", time.Minute, "run", "--once", "--config", cfg)
		if p.code() != 2 {
			t.Errorf("exit code %d, want 2", p.code())
		}
		for _, want := range []string{
			"mailboxes[0].address: required",
			"mailboxes[0].imap.host: required",
			"mailboxes[0].folders.processed: required",
		} {
			if !strings.Contains(p.stderr.String(), want) {
				t.Errorf("stderr lacks %q", want)
			}
		}
		if strings.Contains(p.stderr.String(), "pw-Secr3t-77") {
			t.Errorf("stderr shows the password")
		}
		if t.Failed() {
			t.Logf("stderr:\n%s", p.stderr.String())
		}
	})

	t.Run("check", func(t *testing.T) {
		cfg := writeConfig(t, st, cfgOpts{})
		p := runImporter(t, "check", 2*time.Minute, "check", "--config", cfg)
		if p.code() != 0 {
			t.Errorf("check on the healthy stack: exit code %d, want 0", p.code())
		}
		t.Logf("check:\n%s", p.stdout.String())
		want := fmt.Sprintf("opened import folder '%s' containing %d messages (%d unread)", stack.Import, seeded, seeded-seen)
		if !strings.Contains(p.stdout.String(), want) {
			t.Errorf("check output lacks %q", want)
		}
		if t.Failed() {
			t.Logf("stdout:\n%s\nstderr:\n%s", p.stdout.String(), tail(p.stderr.String(), 30))
		}

		st.Dovecot.DeleteFolder(stack.User, stack.ErrorBox)
		p = runImporter(t, "check", 2*time.Minute, "check", "--config", cfg)
		if p.code() != 1 {
			t.Errorf("check without error folder: exit code %d, want 1", p.code())
		}
		t.Logf("check without error folder:\n%s", p.stdout.String())
		for _, want := range []string{"error folder '" + stack.ErrorBox + "' not found", "--create-folders"} {
			if !strings.Contains(p.stdout.String(), want) {
				t.Errorf("check output lacks %q", want)
			}
		}
		if t.Failed() {
			t.Logf("stdout:\n%s\nstderr:\n%s", p.stdout.String(), tail(p.stderr.String(), 30))
		}

		p = runImporter(t, "check --create-folders", 2*time.Minute, "check", "--create-folders", "--config", cfg)
		if p.code() != 0 {
			t.Errorf("check --create-folders: exit code %d, want 0; stdout:\n%s", p.code(), p.stdout.String())
		}
		if !slices.Contains(st.Dovecot.Folders(stack.User), stack.ErrorBox) {
			t.Errorf("error folder not created; folders: %v", st.Dovecot.Folders(stack.User))
		}
		p = runImporter(t, "check", 2*time.Minute, "check", "--config", cfg)
		if p.code() != 0 {
			t.Errorf("check after --create-folders: exit code %d, want 0; stdout:\n%s", p.code(), p.stdout.String())
		}
	})
}

// markSeen flags the first k messages of the import folder \Seen.
func markSeen(t *testing.T, st *stack.Stack, k int) {
	t.Helper()
	c := st.Dovecot.AdminClient(stack.User)
	name := strings.ReplaceAll(stack.Import, "/", st.Dovecot.Separator())
	if _, err := c.Select(name, nil).Wait(); err != nil {
		t.Fatal(err)
	}
	var set goimap.SeqSet
	set.AddRange(1, uint32(k))
	if err := c.Store(set, &goimap.StoreFlags{Op: goimap.StoreFlagsAdd, Silent: true, Flags: []goimap.Flag{goimap.FlagSeen}}, nil).Close(); err != nil {
		t.Fatal(err)
	}
	if err := c.Unselect().Wait(); err != nil {
		t.Fatal(err)
	}
}

func writeFile(t *testing.T, path, text string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
}
