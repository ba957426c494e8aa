package dovecot

import (
	"fmt"
	"net"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// TestPortTakenRetries makes the first port Start picks belong to another
// IMAP-ish server: Start must notice it is not talking to its own Dovecot
// and retry on another port. Not parallel: it replaces pickPort.
func TestPortTakenRetries(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			_, _ = c.Write([]byte("* OK somebody else's server\r\n"))
			c.Close()
		}
	}()
	taken := l.Addr().(*net.TCPAddr).Port
	calls := 0
	pickPort = func() (int, error) {
		calls++
		if calls == 1 {
			return taken, nil
		}
		return freePort()
	}
	defer func() { pickPort = freePort }()

	s := Start(t, Options{})
	if calls < 2 || strings.HasSuffix(s.Addr(), ":"+strconv.Itoa(taken)) {
		t.Fatalf("Start did not retry: %d port picks, addr %s, taken %d", calls, s.Addr(), taken)
	}
	if n := s.Count("x@example.test", "INBOX"); n != 0 {
		t.Fatalf("Count = %d", n)
	}
}

// fatalTB records Fatalf instead of failing the real test.
type fatalTB struct {
	*testing.T
	msg string
}

type fatalled struct{}

func (f *fatalTB) Fatalf(format string, args ...any) {
	f.msg = fmt.Sprintf(format, args...)
	panic(fatalled{})
}

// TestMissingDovecotFails checks that a missing Dovecot fails (never skips)
// with the install instruction. Not parallel: it changes PATH.
func TestMissingDovecotFails(t *testing.T) {
	t.Setenv("PATH", t.TempDir())
	old := fallbackDovecot
	fallbackDovecot = filepath.Join(t.TempDir(), "sbin", "dovecot")
	defer func() { fallbackDovecot = old }()

	tb := &fatalTB{T: t}
	func() {
		defer func() {
			if r := recover(); r != nil {
				if _, ok := r.(fatalled); !ok {
					panic(r)
				}
			}
		}()
		Start(tb, Options{})
		t.Error("Start returned without failing")
	}()
	for _, want := range []string{"dovecot is not installed", "scripts/install-test-deps.sh", "make test-deps"} {
		if !strings.Contains(tb.msg, want) {
			t.Errorf("failure message %q lacks %q", tb.msg, want)
		}
	}
}
