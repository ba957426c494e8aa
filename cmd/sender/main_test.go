package main

// Process-level tests: the real sender binary runs as a subprocess against
// a NATS server, a dev SMTP submission server and dev mailboxes that live
// in the test process.

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/mailpipe/mailpipe/internal/devmail"
)

const guard = 2 * time.Minute

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

// senderBin builds the sender once per test binary.
func senderBin(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		binDir, buildErr = os.MkdirTemp("", "sender-process-test-")
		if buildErr != nil {
			return
		}
		binPath = filepath.Join(binDir, "sender")
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

// syncBuffer is a bytes.Buffer safe for exec's writer goroutine.
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

// sender runs the binary to completion.
func sender(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	cmd := exec.Command(senderBin(t), args...)
	var o, e syncBuffer
	cmd.Stdout, cmd.Stderr = &o, &e
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case <-done:
	case <-time.After(guard):
		_ = cmd.Process.Kill()
		<-done
		t.Fatalf("sender %v hung; stderr:\n%s", args, e.String())
	}
	return cmd.ProcessState.ExitCode(), o.String(), e.String()
}

func TestUsageErrors(t *testing.T) {
	var out, errb bytes.Buffer
	if code := run(nil, nil, &out, &errb); code != 2 || !strings.Contains(errb.String(), "usage:") {
		t.Errorf("no arguments: %d %q", code, errb.String())
	}
	for _, args := range [][]string{
		{"bogus"},
		{"run"},
		{"auth"},
		{"auth", "logout", "--config", "x"},
		{"enqueue", "--config", "x.yaml"},
		{"check", "--config", "x.yaml", "extra"},
	} {
		errb.Reset()
		if code := run(args, nil, &out, &errb); code != 2 {
			t.Errorf("%v: exit %d (%s)", args, code, errb.String())
		}
	}
	dir := t.TempDir()
	bad := filepath.Join(dir, "sender.yaml")
	if err := os.WriteFile(bad, []byte("mailboxes:\n  - address: Billing <billing@example.com>\n    transport: fax\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	errb.Reset()
	if code := run([]string{"check", "--config", bad}, nil, &out, &errb); code != 2 ||
		!strings.Contains(errb.String(), "mailboxes[0].address") || !strings.Contains(errb.String(), "mailboxes[0].transport") {
		t.Errorf("bad config: exit %d\n%s", code, errb.String())
	}
}

// TestRunCheckEnqueue: check, enqueue (twice: a duplicate), an invalid
// job, run as a process until SIGTERM, and enqueue --wait.
func TestRunCheckEnqueue(t *testing.T) {
	const from, to = "facturen@demo.mailpipe.test", "boekhouding@demo.mailpipe.test"
	ns, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: -1, JetStream: true, StoreDir: t.TempDir(), NoLog: true, NoSigs: true})
	if err != nil {
		t.Fatal(err)
	}
	ns.Start()
	t.Cleanup(ns.Shutdown)
	if !ns.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats not ready")
	}
	mail, err := devmail.Start(devmail.Options{Users: []devmail.User{{Address: from, Password: "x"}, {Address: to, Password: "x"}}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { mail.Close() })
	smtpSrv, err := devmail.StartSMTP(devmail.SMTPOptions{AllowAnonymous: true, Deliver: mail.DeliverLocal})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { smtpSrv.Close() })
	host, port, _ := strings.Cut(smtpSrv.Addr(), ":")

	dir := t.TempDir()
	cfgPath := filepath.Join(dir, "sender.yaml")
	writeFile(t, cfgPath, fmt.Sprintf(`log: {level: info, format: json}
nats: {url: %s}
consumer: {ack_wait: 2s, backoff: [200ms]}
mailboxes:
  - address: %s
    transport: smtp
    smtp: {host: %s, port: %s, security: insecure, auth: none}
shutdown_timeout: 5s
`, ns.ClientURL(), from, host, port))
	job := func(id string) string {
		p := filepath.Join(dir, id+".json")
		writeFile(t, p, fmt.Sprintf(`{"job_id": %q, "from": %q, "to": [{"address": %q, "name": "Boekhouding"}],
  "subject": "Re: Factuur %s", "text": "Ontvangen, dank u.", "correlation": {"invoice": %q}}`, id, from, to, id, id))
		return p
	}

	code, out, errOut := sender(t, "check", "--config", cfgPath)
	if code != 0 || !strings.Contains(out, "all checks passed") || !strings.Contains(out, "send as "+from) {
		t.Fatalf("check: exit %d\n%s\n%s", code, out, errOut)
	}

	j1 := job("reply-1")
	code, out, errOut = sender(t, "enqueue", "--config", cfgPath, j1)
	if code != 0 || !strings.Contains(out, "job reply-1: queued on mailpipe.outbound.jobs.facturen_demo_mailpipe_test") {
		t.Fatalf("enqueue: exit %d\n%s\n%s", code, out, errOut)
	}
	code, out, _ = sender(t, "enqueue", j1, "--config", cfgPath)
	if code != 0 || !strings.Contains(out, "job reply-1: duplicate") {
		t.Errorf("enqueue again: exit %d\n%s", code, out)
	}
	bad := filepath.Join(dir, "bad.json")
	writeFile(t, bad, `{"job_id": "bad 1", "from": "`+from+`", "subject": "x"}`)
	code, _, errOut = sender(t, "enqueue", "--config", cfgPath, bad)
	if code != 1 || !strings.Contains(errOut, "nothing was queued") || !strings.Contains(errOut, "job_id:") || !strings.Contains(errOut, "text:") {
		t.Errorf("invalid job: exit %d\n%s", code, errOut)
	}

	run := exec.Command(senderBin(t), "run", "--config", cfgPath)
	var runErr syncBuffer
	run.Stderr = &runErr
	if err := run.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { _ = run.Wait(); close(exited) }()
	t.Cleanup(func() {
		select {
		case <-exited:
		default:
			_ = run.Process.Kill()
			<-exited
		}
	})

	code, out, errOut = sender(t, "enqueue", "--config", cfgPath, "--wait", job("reply-2"))
	if code != 0 || !strings.Contains(out, "sent") || !strings.Contains(out, "<mailpipe.reply-2@demo.mailpipe.test>") {
		t.Fatalf("enqueue --wait: exit %d\n%s\n%s\nsender log:\n%s", code, out, errOut, runErr.String())
	}
	deadline := time.Now().Add(guard)
	for {
		n, err := mail.Count(to, "INBOX")
		if err != nil {
			t.Fatal(err)
		}
		if n == 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("INBOX has %d messages, want 2\n%s", n, runErr.String())
		}
		time.Sleep(50 * time.Millisecond)
	}

	if err := run.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-exited:
	case <-time.After(guard):
		t.Fatalf("sender did not stop on SIGTERM\n%s", runErr.String())
	}
	if c := run.ProcessState.ExitCode(); c != 0 {
		t.Errorf("run exited %d\n%s", c, runErr.String())
	}
	if !strings.Contains(runErr.String(), "shutting down") {
		t.Errorf("no graceful shutdown in the log:\n%s", runErr.String())
	}
}

func writeFile(t *testing.T, path, text string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
}
