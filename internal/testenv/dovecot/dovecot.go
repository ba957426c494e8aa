// Package dovecot starts a real Dovecot 2.3 IMAP server for tests.
//
// Each Server is a private `dovecot -F -c <generated config>` process with
// its own base_dir, state_dir, log file and mail homes in a temporary
// directory, listening on random free ports on 127.0.0.1. The system's
// Dovecot configuration and service are never touched.
//
// Mail is stored as maildir (maildir++ layout, "." between hierarchy levels
// on disk, folder names in modified UTF-7) under <tmp>/home/<user>/Maildir.
// The namespace separator that IMAP clients see is Options.Separator
// (default "/"). All helpers of this package take folder paths with "/"
// between levels, whatever the server separator is.
//
// When Dovecot is missing, Start fails the test (it never skips) and tells
// how to install it: run scripts/install-test-deps.sh (make test-deps).
//
// The mailbox helpers (CreateFolder, Append, AppendFunc, Count, Messages,
// ...) fail the test given to Start with t.Fatalf, so call them from that
// test's goroutine. They work through an IMAP master-user login (or, for
// bulk seeding, by writing maildir files directly) and so work for any
// user, whether it logs in with a password or with OAuth2.
//
// Facts about Dovecot 2.3.19 that this package relies on:
//
//   - Mail processes may not run as uid 0 ("userdb returned 0 as uid"), so
//     when the tests run as root, mail is owned by a dedicated uid/gid
//     (MailUID) and files written directly into maildirs are chowned to it.
//   - The oauth2 passdb with introspection_mode = local looks an HS256 key
//     up in local_validation_key_dict under "shared/<azp>/<alg>/<kid>"; the
//     fs dict maps that to <prefix><azp>/<alg>/<kid>. A token without azp
//     and kid therefore uses <prefix>default/HS256/default, which holds the
//     base64 encoded key.
//   - Local JWT validation requires a "sub" claim (besides exp; iss is
//     checked against issuers), otherwise it fails with "Missing 'sub'
//     field". MintToken sets sub = email.
//   - Failed logins are delayed by the anvil auth penalty (2, 4, 8, 15 s
//     per client IP) regardless of auth_failure_delay and of
//     login_trusted_networks. The generated config makes the penalty socket
//     unreachable for the auth process, which disables the penalty.
//   - Without an explicit imap_capability Dovecot advertises MOVE and
//     UIDPLUS. NoMove and NoUIDPlus set imap_capability to the 2.3.19 list
//     without them; this changes what is advertised (before and after
//     login), not what the server accepts.
package dovecot

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// User is a mailbox account that can log in with a password (PLAIN/LOGIN).
type User struct {
	// Name is the login name, an e-mail address such as
	// invoices@example.test. Dovecot lower-cases it.
	Name     string
	Password string
}

// OAuth2 enables the XOAUTH2 and OAUTHBEARER mechanisms, validated locally
// against HS256-signed JWTs.
type OAuth2 struct {
	// Issuer is the only accepted "iss" claim.
	Issuer string
	// HS256Key is the HMAC key tokens are signed with.
	HS256Key []byte
}

// Options configure a Server.
type Options struct {
	// Users can log in with LOGIN or AUTHENTICATE PLAIN.
	Users []User
	// OAuth2, when set, enables XOAUTH2 and OAUTHBEARER. Any user whose
	// token validates can log in, listed in Users or not.
	OAuth2 *OAuth2
	// NoMove removes MOVE from the advertised capabilities.
	NoMove bool
	// NoUIDPlus removes UIDPLUS from the advertised capabilities.
	NoUIDPlus bool
	// TLS also starts an implicit-TLS (imaps) listener with a freshly
	// generated self-signed certificate, and enables STARTTLS.
	TLS bool
	// Separator is the hierarchy separator of the inbox namespace: "/" (the
	// default) or ".".
	Separator string
}

// MailUID and MailGID own the mail files when the tests run as root
// (Dovecot refuses to access mail as root).
const (
	MailUID = 5000
	MailGID = 5000
)

// capabilities2319 is what Dovecot 2.3.19 advertises after login with this
// package's configuration when imap_capability is not set.
var capabilities2319 = []string{
	"IMAP4rev1", "SASL-IR", "LOGIN-REFERRALS", "ID", "ENABLE", "IDLE",
	"SORT", "SORT=DISPLAY", "THREAD=REFERENCES", "THREAD=REFS",
	"THREAD=ORDEREDSUBJECT", "MULTIAPPEND", "URL-PARTIAL", "CATENATE",
	"UNSELECT", "CHILDREN", "NAMESPACE", "UIDPLUS", "LIST-EXTENDED",
	"I18NLEVEL=1", "CONDSTORE", "QRESYNC", "ESEARCH", "ESORT", "SEARCHRES",
	"WITHIN", "CONTEXT=SEARCH", "LIST-STATUS", "BINARY", "MOVE",
	"SNIPPET=FUZZY", "PREVIEW=FUZZY", "PREVIEW", "STATUS=SIZE", "SAVEDATE",
	"LITERAL+", "NOTIFY",
}

const installHint = "run make test-deps / scripts/install-test-deps.sh (installs the Debian package dovecot-imapd)"

// Server is a running Dovecot instance.
type Server struct {
	t    testing.TB
	opts Options
	sep  string

	bin      string
	dir      string
	confPath string
	logPath  string
	errPath  string
	greeting string

	addr    string
	tlsAddr string
	caPEM   []byte

	adminUser string
	adminPass string

	uid, gid int
	chown    bool

	cmd     *exec.Cmd
	done    chan struct{}
	waitErr error

	stopOnce *sync.Once
	seq      atomic.Int64
}

// Start starts a Dovecot server configured by opts and registers its
// shutdown and the removal of its files with t.Cleanup. It fails the test
// if Dovecot is not installed or does not come up.
func Start(t testing.TB, opts Options) *Server {
	t.Helper()
	bin, err := findDovecot()
	if err != nil {
		t.Fatalf("dovecot: %v; %s", err, installHint)
	}
	if err := checkVersion(bin); err != nil {
		t.Fatalf("dovecot: %v", err)
	}
	sep := opts.Separator
	if sep == "" {
		sep = "/"
	}
	if sep != "/" && sep != "." {
		t.Fatalf("dovecot: unsupported Separator %q (use \"/\" or \".\")", sep)
	}
	for _, u := range opts.Users {
		if u.Name == "" || strings.ContainsAny(u.Name+u.Password, ":\r\n*") {
			t.Fatalf("dovecot: invalid user %q: name must be non-empty and name and password may not contain ':', '*' or line breaks", u.Name)
		}
	}
	if opts.OAuth2 != nil && (opts.OAuth2.Issuer == "" || len(opts.OAuth2.HS256Key) == 0) {
		t.Fatalf("dovecot: OAuth2 needs an Issuer and an HS256Key")
	}

	// A short path of our own rather than t.TempDir(): unix socket paths
	// under base_dir are limited to ~107 bytes, and t.TempDir() contains
	// the test name.
	dir, err := os.MkdirTemp("", "dovecot-")
	if err != nil {
		t.Fatalf("dovecot: %v", err)
	}
	t.Cleanup(func() {
		if err := os.RemoveAll(dir); err != nil {
			t.Logf("dovecot: removing %s: %v", dir, err)
		}
	})

	s := &Server{
		t:         t,
		opts:      opts,
		sep:       sep,
		bin:       bin,
		dir:       dir,
		confPath:  filepath.Join(dir, "dovecot.conf"),
		logPath:   filepath.Join(dir, "dovecot.log"),
		errPath:   filepath.Join(dir, "stderr.log"),
		adminUser: "testenv-admin",
		adminPass: randomHex(16),
		greeting:  "testenv-dovecot-" + randomHex(8) + " ready.",
	}
	if err := s.prepare(); err != nil {
		t.Fatalf("dovecot: preparing %s: %v", dir, err)
	}

	var lastErr error
	for attempt := 0; attempt < 5; attempt++ {
		err := s.startOnce()
		if err == nil {
			t.Cleanup(func() {
				s.stop()
				if t.Failed() {
					t.Logf("dovecot log (%s):\n%s", s.addr, tail(s.Log(), 200))
				}
			})
			return s
		}
		lastErr = err
		if !errors.Is(err, errPortInUse) {
			break
		}
	}
	t.Fatalf("dovecot did not come up: %v\n--- log ---\n%s", lastErr, tail(s.Log(), 100))
	return nil
}

var errPortInUse = errors.New("port already in use")

// findDovecot looks dovecot up in PATH and then in /usr/sbin, which is not
// in the PATH of unprivileged users on Debian.
func findDovecot() (string, error) {
	if p, err := exec.LookPath("dovecot"); err == nil {
		return p, nil
	}
	if fi, err := os.Stat(fallbackDovecot); err == nil && !fi.IsDir() {
		return fallbackDovecot, nil
	}
	return "", fmt.Errorf("dovecot is not installed (not in PATH nor %s)", filepath.Dir(fallbackDovecot))
}

// fallbackDovecot is replaced in tests.
var fallbackDovecot = "/usr/sbin/dovecot"

func checkVersion(bin string) error {
	out, err := exec.Command(bin, "--version").Output()
	if err != nil {
		return fmt.Errorf("%s --version: %v; %s", bin, err, installHint)
	}
	v := strings.TrimSpace(string(out))
	if !strings.HasPrefix(v, "2.3.") {
		return fmt.Errorf("%s is version %q; this harness generates Dovecot 2.3 configuration (Debian 12 package dovecot-imapd 2.3.x)", bin, v)
	}
	return nil
}

// prepare writes everything that does not depend on the ports.
func (s *Server) prepare() error {
	// Dovecot's unprivileged processes (auth as "dovecot", login as
	// "dovenull", mail as MailUID) must reach the files below.
	if err := os.Chmod(s.dir, 0o755); err != nil {
		return err
	}
	for _, d := range []string{"run", "state", "home", "keys"} {
		if err := os.Mkdir(filepath.Join(s.dir, d), 0o755); err != nil {
			return err
		}
	}
	if os.Geteuid() == 0 {
		s.uid, s.gid, s.chown = MailUID, MailGID, true
	} else {
		s.uid, s.gid = os.Getuid(), os.Getgid()
	}
	if s.chown {
		if err := os.Chown(filepath.Join(s.dir, "home"), s.uid, s.gid); err != nil {
			return err
		}
	}

	var users strings.Builder
	for _, u := range s.opts.Users {
		fmt.Fprintf(&users, "%s:{PLAIN}%s\n", strings.ToLower(u.Name), u.Password)
	}
	if err := os.WriteFile(filepath.Join(s.dir, "users"), []byte(users.String()), 0o644); err != nil {
		return err
	}
	master := fmt.Sprintf("%s:{PLAIN}%s\n", s.adminUser, s.adminPass)
	if err := os.WriteFile(filepath.Join(s.dir, "master-users"), []byte(master), 0o644); err != nil {
		return err
	}

	if o := s.opts.OAuth2; o != nil {
		keyDir := filepath.Join(s.dir, "keys", "default", "HS256")
		if err := os.MkdirAll(keyDir, 0o755); err != nil {
			return err
		}
		key := base64.StdEncoding.EncodeToString(o.HS256Key)
		if err := os.WriteFile(filepath.Join(keyDir, "default"), []byte(key), 0o644); err != nil {
			return err
		}
		conf := fmt.Sprintf(`introspection_mode = local
local_validation_key_dict = fs:posix:prefix=%s/keys/
username_attribute = email
issuers = %s
`, s.dir, o.Issuer)
		if err := os.WriteFile(filepath.Join(s.dir, "oauth2.conf.ext"), []byte(conf), 0o644); err != nil {
			return err
		}
	}

	if s.opts.TLS {
		certPEM, keyPEM, err := selfSignedCert()
		if err != nil {
			return err
		}
		s.caPEM = certPEM
		if err := os.WriteFile(filepath.Join(s.dir, "cert.pem"), certPEM, 0o644); err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(s.dir, "key.pem"), keyPEM, 0o600); err != nil {
			return err
		}
	}
	return nil
}

func (s *Server) config(port, tlsPort int) (string, error) {
	var b strings.Builder
	w := func(format string, args ...any) { fmt.Fprintf(&b, format+"\n", args...) }
	d := s.dir

	w("# Generated for one test run; see internal/testenv/dovecot.")
	w("base_dir = %s/run", d)
	w("state_dir = %s/state", d)
	w("instance_name = dovecot-test-%s", filepath.Base(d))
	w("log_path = %s", s.logPath)
	w("protocols = imap")
	w("listen = 127.0.0.1")
	w("shutdown_clients = yes")
	w("login_greeting = %s", s.greeting)
	w("")
	if s.opts.TLS {
		w("ssl = yes")
		w("ssl_cert = <%s/cert.pem", d)
		w("ssl_key = <%s/key.pem", d)
	} else {
		w("ssl = no")
	}
	w("disable_plaintext_auth = no")
	w("auth_failure_delay = 0")
	w("auth_verbose = yes")
	w("auth_debug = yes")
	mechs := "plain login"
	if s.opts.OAuth2 != nil {
		mechs += " xoauth2 oauthbearer"
	}
	w("auth_mechanisms = %s", mechs)
	w("auth_master_user_separator = *")
	w("")
	w("mail_location = maildir:~/Maildir")
	w("mail_fsync = never")
	w("mail_max_userip_connections = 10000")
	if s.uid < 500 {
		w("first_valid_uid = %d", s.uid)
	}
	if s.gid < 1 {
		w("first_valid_gid = %d", s.gid)
	}
	if s.opts.NoMove || s.opts.NoUIDPlus {
		var caps []string
		for _, c := range capabilities2319 {
			if (c == "MOVE" && s.opts.NoMove) || (c == "UIDPLUS" && s.opts.NoUIDPlus) {
				continue
			}
			caps = append(caps, c)
		}
		w("imap_capability = %s", strings.Join(caps, " "))
	}
	if os.Geteuid() != 0 {
		u, err := user.Current()
		if err != nil {
			return "", err
		}
		g, err := user.LookupGroupId(strconv.Itoa(s.gid))
		if err != nil {
			return "", err
		}
		w("default_internal_user = %s", u.Username)
		w("default_internal_group = %s", g.Name)
		w("default_login_user = %s", u.Username)
	}
	w("")
	w("namespace inbox {")
	w("  inbox = yes")
	w("  prefix =")
	w("  separator = %s", s.sep)
	w("}")
	w("")
	w("passdb {")
	w("  driver = passwd-file")
	w("  master = yes")
	w("  args = scheme=PLAIN %s/master-users", d)
	w("}")
	w("passdb {")
	w("  driver = passwd-file")
	w("  mechanisms = plain login")
	w("  args = scheme=PLAIN %s/users", d)
	w("}")
	if s.opts.OAuth2 != nil {
		w("passdb {")
		w("  driver = oauth2")
		w("  mechanisms = xoauth2 oauthbearer")
		w("  args = %s/oauth2.conf.ext", d)
		w("}")
	}
	w("userdb {")
	w("  driver = static")
	w("  args = uid=%d gid=%d home=%s/home/%%u", s.uid, s.gid, d)
	w("}")
	w("")
	w("service imap-login {")
	w("  inet_listener imap {")
	w("    address = 127.0.0.1")
	w("    port = %d", port)
	w("  }")
	w("  inet_listener imaps {")
	w("    address = 127.0.0.1")
	w("    port = %d", tlsPort)
	if s.opts.TLS {
		w("    ssl = yes")
	}
	w("  }")
	w("}")
	w("# Unreachable for the auth process: disables the per-IP failed-login")
	w("# penalty (up to 15 s), which auth_failure_delay does not cover.")
	w("service anvil {")
	w("  unix_listener anvil-auth-penalty {")
	w("    mode = 0")
	w("  }")
	w("}")
	if os.Geteuid() != 0 {
		// chroot needs root.
		for _, svc := range []string{"anvil", "imap-login"} {
			w("service %s {", svc)
			w("  chroot =")
			w("}")
		}
	}
	return b.String(), nil
}

// pickPort is replaced in tests.
var pickPort = freePort

func (s *Server) startOnce() error {
	port, err := pickPort()
	if err != nil {
		return err
	}
	tlsPort := 0
	if s.opts.TLS {
		if tlsPort, err = pickPort(); err != nil {
			return err
		}
	}
	conf, err := s.config(port, tlsPort)
	if err != nil {
		return err
	}
	if err := os.WriteFile(s.confPath, []byte(conf), 0o644); err != nil {
		return err
	}
	// A previous attempt may have left its sockets and pid file behind.
	runDir := filepath.Join(s.dir, "run")
	if err := os.RemoveAll(runDir); err != nil {
		return err
	}
	if err := os.Mkdir(runDir, 0o755); err != nil {
		return err
	}
	// Logs of a failed attempt would confuse the diagnosis of this one.
	if err := os.Remove(s.logPath); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	errFile, err := os.Create(s.errPath)
	if err != nil {
		return err
	}
	defer errFile.Close()

	s.addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	s.tlsAddr = ""
	if s.opts.TLS {
		s.tlsAddr = net.JoinHostPort("127.0.0.1", strconv.Itoa(tlsPort))
	}
	cmd := exec.Command(s.bin, "-F", "-c", s.confPath)
	cmd.Dir = s.dir
	cmd.Stdout = errFile
	cmd.Stderr = errFile
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Setpgid: true,
		// Stop Dovecot if the test binary dies without running cleanups.
		Pdeathsig: syscall.SIGTERM,
	}
	done := make(chan struct{})
	started := make(chan error, 1)
	go func() {
		// Pdeathsig fires when the thread that forked exits: keep this
		// goroutine on its thread for as long as the process runs.
		runtime.LockOSThread()
		if err := cmd.Start(); err != nil {
			started <- err
			close(done)
			return
		}
		started <- nil
		s.waitErr = cmd.Wait()
		close(done)
	}()
	if err := <-started; err != nil {
		return fmt.Errorf("starting %s: %w", s.bin, err)
	}
	s.cmd, s.done, s.stopOnce = cmd, done, new(sync.Once)

	if err := s.waitReady(30 * time.Second); err != nil {
		s.stop()
		if strings.Contains(s.Log(), "Address already in use") {
			return fmt.Errorf("%w: %v", errPortInUse, err)
		}
		return err
	}
	return nil
}

// waitReady waits for our greeting on the plain port. The greeting carries
// a random token so that another process that grabbed the port in between
// is not mistaken for this server.
func (s *Server) waitReady(timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		select {
		case <-s.done:
			return fmt.Errorf("dovecot exited during startup: %v", s.waitErr)
		default:
		}
		conn, err := net.DialTimeout("tcp", s.addr, time.Second)
		if err != nil {
			time.Sleep(20 * time.Millisecond)
			continue
		}
		_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
		line, err := bufio.NewReader(conn).ReadString('\n')
		conn.Close()
		if err != nil {
			time.Sleep(20 * time.Millisecond)
			continue
		}
		if !strings.Contains(line, s.greeting) {
			return fmt.Errorf("%w: %s answers %q", errPortInUse, s.addr, strings.TrimSpace(line))
		}
		return nil
	}
	return fmt.Errorf("no IMAP greeting on %s within %v", s.addr, timeout)
}

func (s *Server) stop() {
	if s.stopOnce == nil {
		return
	}
	s.stopOnce.Do(func() {
		select {
		case <-s.done:
			return
		default:
		}
		_ = s.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-s.done:
		case <-time.After(15 * time.Second):
			// The master is still alive, so its process group exists:
			// take its children down with it.
			_ = syscall.Kill(-s.cmd.Process.Pid, syscall.SIGKILL)
			<-s.done
		}
	})
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func randomHex(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return hex.EncodeToString(b)
}

func tail(s string, lines int) string {
	parts := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(parts) > lines {
		parts = append([]string{fmt.Sprintf("... (%d earlier lines)", len(parts)-lines)}, parts[len(parts)-lines:]...)
	}
	return strings.Join(parts, "\n")
}

// Addr is the plain IMAP address, 127.0.0.1:port.
func (s *Server) Addr() string { return s.addr }

// TLSAddr is the implicit-TLS IMAP address, or "" without Options.TLS.
func (s *Server) TLSAddr() string { return s.tlsAddr }

// CACertPEM is the PEM certificate that signs (and is) the server
// certificate, valid for 127.0.0.1 and localhost; nil without Options.TLS.
func (s *Server) CACertPEM() []byte { return bytes.Clone(s.caPEM) }

// Separator is the hierarchy separator IMAP clients see.
func (s *Server) Separator() string { return s.sep }

// Dir is the server's temporary directory (config, log, mail homes).
func (s *Server) Dir() string { return s.dir }

// MaildirPath is the maildir++ directory that holds folder of user:
// <home>/Maildir for INBOX, <home>/Maildir/.<a>.<b> for "a/b", with each
// level encoded in modified UTF-7.
func (s *Server) MaildirPath(user, folder string) string {
	root := filepath.Join(s.dir, "home", strings.ToLower(user), "Maildir")
	if strings.EqualFold(folder, "INBOX") {
		return root
	}
	levels := strings.Split(folder, "/")
	for i, l := range levels {
		levels[i] = encodeMUTF7(l)
	}
	return filepath.Join(root, "."+strings.Join(levels, "."))
}

// Log returns Dovecot's log (with verbose auth logging) and anything the
// master process printed on stderr.
func (s *Server) Log() string {
	var b strings.Builder
	if data, err := os.ReadFile(s.errPath); err == nil && len(bytes.TrimSpace(data)) > 0 {
		b.WriteString("[stderr]\n")
		b.Write(data)
		b.WriteString("[log]\n")
	}
	data, err := os.ReadFile(s.logPath)
	if err != nil {
		fmt.Fprintf(&b, "(reading %s: %v)\n", s.logPath, err)
		return b.String()
	}
	b.Write(data)
	return b.String()
}
