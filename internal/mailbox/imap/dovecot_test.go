package imap

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mailpipe/mailpipe/internal/config"
	"github.com/mailpipe/mailpipe/internal/mailbox"
	"github.com/mailpipe/mailpipe/internal/testenv/dovecot"
)

const (
	testUser     = "invoices@example.test"
	testPassword = "correct horse"
)

func startDovecot(t *testing.T, opts dovecot.Options) *dovecot.Server {
	t.Helper()
	opts.Users = append(opts.Users, dovecot.User{Name: testUser, Password: testPassword})
	return dovecot.Start(t, opts)
}

// passwordMailbox is a password-login configuration for testUser at addr.
func passwordMailbox(t *testing.T, addr string, folders config.Folders) config.Mailbox {
	t.Helper()
	m := testMailbox(t, addr, 30*time.Second)
	m.IMAP.Auth = "password"
	m.IMAP.Password = testPassword
	m.Folders = folders
	return m
}

func testMsg(i int, size int) []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "From: supplier@example.test\r\nSubject: message %d\r\nMessage-ID: <m%d@example.test>\r\n\r\n", i, i)
	for b.Len() < size {
		b.WriteString(strings.Repeat("y", 70) + "\r\n")
	}
	return b.Bytes()
}

func mustList(t *testing.T, src *Source) []mailbox.Ref {
	t.Helper()
	var (
		l   mailbox.Listing
		err error
	)
	within(t, hangGuard, "List", func() { l, err = src.List(t.Context(), 0) })
	if err != nil {
		t.Fatalf("List: %v", err)
	}
	return l.Refs
}

func fetchBodies(t *testing.T, src *Source, refs []mailbox.Ref) ([][]byte, error) {
	t.Helper()
	var (
		out [][]byte
		err error
	)
	within(t, hangGuard, "Fetch", func() {
		err = src.Fetch(t.Context(), refs, func(m *mailbox.Message) error {
			b, err := io.ReadAll(m.Body)
			if err != nil {
				return fmt.Errorf("read %s: %w", m.Ref, err)
			}
			out = append(out, b)
			return nil
		})
	})
	return out, err
}

// A wrong password is an Auth error that names the login.
func TestWrongPassword(t *testing.T) {
	t.Parallel()
	srv := startDovecot(t, dovecot.Options{})
	srv.CreateFolder(testUser, "INBOX/Import")
	m := passwordMailbox(t, srv.Addr(), config.Folders{Import: "INBOX/Import", Processed: "INBOX/Processed", Error: "INBOX/Error"})
	m.IMAP.Password = "wrong"
	src := newTestSource(t, m, nil)
	var err error
	within(t, hangGuard, "List", func() { _, err = src.List(t.Context(), 0) })
	wantKind(t, "wrong password", err, mailbox.Auth, testUser)

	m.IMAP.Password = testPassword
	if refs := mustList(t, newTestSource(t, m, nil)); len(refs) != 0 {
		t.Errorf("List with the right password: %d refs", len(refs))
	}
}

// A localized inbox name in the configuration ("Postvak IN/...") means
// INBOX, whatever the server's separator, for finding and for creating
// folders.
func TestFolderResolutionLocalizedInbox(t *testing.T) {
	t.Parallel()
	for _, sep := range []string{"/", "."} {
		t.Run("separator "+sep, func(t *testing.T) {
			t.Parallel()
			srv := startDovecot(t, dovecot.Options{Separator: sep})
			msgs := [][]byte{testMsg(1, 100), testMsg(2, 100)}
			srv.AppendMany(testUser, "INBOX/Algemeen/Import", msgs)
			srv.CreateFolder(testUser, "INBOX/Algemeen/Verwerkt-Ä")
			src := newTestSource(t, passwordMailbox(t, srv.Addr(), config.Folders{
				Import:    "Postvak IN/Algemeen/Import",
				Processed: "Postvak IN/Algemeen/Verwerkt-Ä",
				Error:     "postvak in / Algemeen / Fout", // missing; spaces and case as users type them
			}), nil)
			refs := mustList(t, src)
			if len(refs) != 2 {
				t.Fatalf("List: %d refs, want 2", len(refs))
			}
			for _, r := range refs {
				if r.Folder != "INBOX/Algemeen/Import" {
					t.Errorf("Folder %q, want INBOX/Algemeen/Import", r.Folder)
				}
			}
			got, err := fetchBodies(t, src, refs)
			if err != nil || len(got) != 2 || !bytes.Equal(got[0], msgs[0]) || !bytes.Equal(got[1], msgs[1]) {
				t.Errorf("Fetch: %d bodies, %v", len(got), err)
			}
			if _, err := src.Check(t.Context(), true); err != nil {
				t.Fatalf("Check with create: %v", err)
			}
			folders := srv.Folders(testUser)
			if !slices.Contains(folders, "INBOX/Algemeen/Fout") {
				t.Errorf("error folder not created as INBOX/Algemeen/Fout: %q", folders)
			}
			for _, f := range folders {
				if strings.HasPrefix(strings.ToLower(f), "postvak") {
					t.Errorf("created %q: the localized inbox name was taken literally", f)
				}
			}
			if err := src.Move(t.Context(), refs[:1], mailbox.ToProcessed); err != nil {
				t.Fatalf("Move to processed: %v", err)
			}
			if err := src.Move(t.Context(), refs[1:], mailbox.ToError); err != nil {
				t.Fatalf("Move to error: %v", err)
			}
			if n := srv.Count(testUser, "INBOX/Algemeen/Verwerkt-Ä"); n != 1 {
				t.Errorf("INBOX/Algemeen/Verwerkt-Ä holds %d messages, want 1", n)
			}
			if n := srv.Count(testUser, "INBOX/Algemeen/Fout"); n != 1 {
				t.Errorf("INBOX/Algemeen/Fout holds %d messages, want 1", n)
			}
		})
	}
}

// A folder literally named like a localized inbox takes precedence.
func TestFolderResolutionLiteralWins(t *testing.T) {
	t.Parallel()
	srv := startDovecot(t, dovecot.Options{})
	srv.AppendMany(testUser, "INBOX/Algemeen/Import", [][]byte{testMsg(1, 100), testMsg(2, 100)})
	literal := testMsg(3, 100)
	srv.AppendMany(testUser, "Postvak IN/Algemeen/Import", [][]byte{literal})
	src := newTestSource(t, passwordMailbox(t, srv.Addr(), config.Folders{
		Import:    "Postvak IN/Algemeen/Import",
		Processed: "Postvak IN/Algemeen/Verwerkt",
		Error:     "Postvak IN/Algemeen/Fout",
	}), nil)
	refs := mustList(t, src)
	if len(refs) != 1 || refs[0].Folder != "Postvak IN/Algemeen/Import" {
		t.Fatalf("List = %+v, want the one message of the literal folder", refs)
	}
	if got, err := fetchBodies(t, src, refs); err != nil || len(got) != 1 || !bytes.Equal(got[0], literal) {
		t.Errorf("Fetch: %d bodies, %v", len(got), err)
	}
	if _, err := src.Check(t.Context(), true); err != nil {
		t.Fatalf("Check with create: %v", err)
	}
	folders := srv.Folders(testUser)
	for _, want := range []string{"Postvak IN/Algemeen/Verwerkt", "Postvak IN/Algemeen/Fout"} {
		if !slices.Contains(folders, want) {
			t.Errorf("%q not created next to the literal import folder: %q", want, folders)
		}
	}
}

// Non-ASCII folder names work both ways (modified UTF-7 on the wire).
func TestFolderResolutionNonASCII(t *testing.T) {
	t.Parallel()
	srv := startDovecot(t, dovecot.Options{})
	srv.AppendMany(testUser, "Eingänge/Rechnungen €", [][]byte{testMsg(1, 100)})
	src := newTestSource(t, passwordMailbox(t, srv.Addr(), config.Folders{
		Import: "Eingänge/Rechnungen €", Processed: "Eingänge/Verwerkt-Ä", Error: "Eingänge/Fehler-ß",
	}), nil)
	refs := mustList(t, src)
	if len(refs) != 1 || refs[0].Folder != "Eingänge/Rechnungen €" {
		t.Fatalf("List = %+v", refs)
	}
	if _, err := src.Check(t.Context(), true); err != nil {
		t.Fatalf("Check with create: %v", err)
	}
	if err := src.Move(t.Context(), refs, mailbox.ToProcessed); err != nil {
		t.Fatalf("Move: %v", err)
	}
	if n := srv.Count(testUser, "Eingänge/Verwerkt-Ä"); n != 1 {
		t.Errorf("Eingänge/Verwerkt-Ä holds %d messages, want 1", n)
	}
	if !slices.Contains(srv.Folders(testUser), "Eingänge/Fehler-ß") {
		t.Errorf("Eingänge/Fehler-ß not created: %q", srv.Folders(testUser))
	}
}

// A missing folder is NotFound, and the message suggests folders with
// similar names.
func TestFolderResolutionSuggests(t *testing.T) {
	t.Parallel()
	srv := startDovecot(t, dovecot.Options{})
	srv.CreateFolder(testUser, "INBOX/Algemeen/Import")
	srv.CreateFolder(testUser, "INBOX/Facturen/Import 2026")
	srv.CreateFolder(testUser, "INBOX/Verwerkt")
	for _, tc := range []struct {
		path    string
		suggest []string
		not     []string
	}{
		{"INBOX/Algemeen/Improt", []string{"INBOX/Algemeen/Import"}, []string{"INBOX/Verwerkt"}},
		{"INBOX/algemeen/import", []string{"INBOX/Algemeen/Import", "INBOX/Facturen/Import 2026"}, nil},
		{"Import", []string{"INBOX/Algemeen/Import"}, nil},
		{"INBOX/Nothing-Like-It", nil, []string{"INBOX/Algemeen/Import"}},
	} {
		src := newTestSource(t, passwordMailbox(t, srv.Addr(), config.Folders{Import: tc.path, Processed: "INBOX/Verwerkt", Error: "INBOX/Verwerkt"}), nil)
		var err error
		within(t, hangGuard, "List", func() { _, err = src.List(t.Context(), 0) })
		me := wantKind(t, tc.path, err, mailbox.NotFound, tc.suggest...)
		if me != nil && me.Folder != tc.path {
			t.Errorf("%s: error names folder %q", tc.path, me.Folder)
		}
		for _, n := range tc.not {
			if strings.Contains(err.Error(), n) {
				t.Errorf("%s: %q suggests %q", tc.path, err, n)
			}
		}
	}
}

// A folder created after the source connected is found without a
// reconnect (the folder list is read again before NotFound).
func TestFolderCreatedLater(t *testing.T) {
	t.Parallel()
	srv := startDovecot(t, dovecot.Options{})
	srv.AppendMany(testUser, "INBOX/Import", [][]byte{testMsg(1, 100)})
	src := newTestSource(t, passwordMailbox(t, srv.Addr(), config.Folders{Import: "INBOX/Import", Processed: "INBOX/Processed", Error: "INBOX/Error"}), nil)
	refs := mustList(t, src)
	err := src.Move(t.Context(), refs, mailbox.ToProcessed)
	wantKind(t, "Move to a missing folder", err, mailbox.NotFound, "INBOX/Processed", "--create-folders")
	srv.CreateFolder(testUser, "INBOX/Processed") // e.g. by importer check in another process
	if err := src.Move(t.Context(), refs, mailbox.ToProcessed); err != nil {
		t.Fatalf("Move after the folder was created: %v", err)
	}
	if n := srv.Count(testUser, "INBOX/Processed"); n != 1 {
		t.Errorf("processed folder holds %d messages, want 1", n)
	}
}

// stallProxy forwards TCP connections to a server and can stop forwarding
// (in both directions) at once or after some more server bytes.
type stallProxy struct {
	ln     net.Listener
	target string

	mu     sync.Mutex
	cond   *sync.Cond
	frozen bool
	closed bool
	budget int64 // server→client bytes still let through; <0: no limit
	conns  []net.Conn
}

func startStallProxy(t *testing.T, target string) *stallProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &stallProxy{ln: ln, target: target, budget: -1}
	p.cond = sync.NewCond(&p.mu)
	t.Cleanup(func() {
		ln.Close()
		p.mu.Lock()
		p.closed = true
		p.cond.Broadcast()
		for _, c := range p.conns {
			c.Close()
		}
		p.mu.Unlock()
	})
	go func() {
		for {
			client, err := ln.Accept()
			if err != nil {
				return
			}
			server, err := net.Dial("tcp", target)
			if err != nil {
				client.Close()
				continue
			}
			p.mu.Lock()
			p.conns = append(p.conns, client, server)
			p.mu.Unlock()
			go p.pipe(server, client, false)
			go p.pipe(client, server, true)
		}
	}()
	return p
}

func (p *stallProxy) pipe(dst, src net.Conn, fromServer bool) {
	defer dst.Close()
	defer src.Close()
	buf := make([]byte, 16<<10)
	for {
		n, err := src.Read(buf)
		data := buf[:n]
		for len(data) > 0 {
			p.mu.Lock()
			for p.frozen && !p.closed {
				p.cond.Wait()
			}
			if p.closed {
				p.mu.Unlock()
				return
			}
			chunk := data
			if fromServer && p.budget >= 0 {
				if p.budget == 0 {
					p.frozen = true
					p.mu.Unlock()
					continue
				}
				chunk = chunk[:min(int64(len(chunk)), p.budget)]
				p.budget -= int64(len(chunk))
			}
			p.mu.Unlock()
			if _, err := dst.Write(chunk); err != nil {
				return
			}
			data = data[len(chunk):]
		}
		if err != nil {
			return
		}
	}
}

// freeze stops all traffic now.
func (p *stallProxy) freeze() {
	p.mu.Lock()
	p.frozen = true
	p.mu.Unlock()
}

// freezeAfter lets n more bytes from the server through, then freezes.
func (p *stallProxy) freezeAfter(n int64) {
	p.mu.Lock()
	p.budget = n
	p.mu.Unlock()
}

func (p *stallProxy) unfreeze() {
	p.mu.Lock()
	p.frozen, p.budget = false, -1
	p.cond.Broadcast()
	p.mu.Unlock()
}

// A server that goes silent after login (before or in the middle of a
// message) makes Fetch and Move fail with a Transient error after
// imap.timeout; once it answers again the source reconnects and works.
func TestStallMidFetch(t *testing.T) {
	t.Parallel()
	srv := startDovecot(t, dovecot.Options{})
	msgs := [][]byte{testMsg(1, 1000), testMsg(2, 2<<20), testMsg(3, 1000)}
	srv.AppendMany(testUser, "INBOX/Import", msgs)
	srv.CreateFolder(testUser, "INBOX/Processed")
	proxy := startStallProxy(t, srv.Addr())
	m := passwordMailbox(t, proxy.ln.Addr().String(), config.Folders{Import: "INBOX/Import", Processed: "INBOX/Processed", Error: "INBOX/Error"})
	m.IMAP.Timeout = time.Second
	src := newTestSource(t, m, nil)

	refs := mustList(t, src)
	if len(refs) != 3 {
		t.Fatalf("List: %d refs, want 3", len(refs))
	}
	checkWorks := func(when string) {
		t.Helper()
		again := mustList(t, src)
		got, err := fetchBodies(t, src, again)
		if err != nil {
			t.Fatalf("Fetch %s: %v", when, err)
		}
		if len(got) != len(msgs) {
			t.Fatalf("Fetch %s: %d bodies, want %d", when, len(got), len(msgs))
		}
		for i := range msgs {
			if !bytes.Equal(got[i], msgs[i]) {
				t.Errorf("Fetch %s: message %d differs", when, i)
			}
		}
	}

	// Silent before the FETCH response.
	proxy.freeze()
	_, err := fetchBodies(t, src, refs)
	wantKind(t, "Fetch from a frozen server", err, mailbox.Transient, "no response")
	proxy.unfreeze()
	checkWorks("after the server came back")

	// Silent in the middle of the 2 MB message.
	proxy.freezeAfter(256 << 10)
	var partial int
	within(t, hangGuard, "Fetch", func() {
		err = src.Fetch(t.Context(), refs, func(m *mailbox.Message) error {
			b, err := io.ReadAll(m.Body)
			partial = len(b)
			if err != nil {
				return fmt.Errorf("read %s: %w", m.Ref, err)
			}
			return nil
		})
	})
	wantKind(t, "Fetch stalled mid-message", err, mailbox.Transient, "no response")
	if partial == 0 || partial >= len(msgs[1]) {
		t.Errorf("the stalled message yielded %d of %d bytes before the error", partial, len(msgs[1]))
	}
	proxy.unfreeze()
	checkWorks("after a stall mid-message")

	// Silent during a move: nothing lost, and the retry completes it.
	proxy.freeze()
	var merr error
	within(t, hangGuard, "Move", func() { merr = src.Move(t.Context(), refs[:1], mailbox.ToProcessed) })
	wantKind(t, "Move on a frozen server", merr, mailbox.Transient, "no response")
	proxy.unfreeze()
	if err := src.Move(t.Context(), refs[:1], mailbox.ToProcessed); err != nil {
		t.Fatalf("Move after the server came back: %v", err)
	}
	if n := srv.Count(testUser, "INBOX/Processed"); n != 1 {
		t.Errorf("processed folder holds %d messages, want 1", n)
	}
	if n := srv.Count(testUser, "INBOX/Import"); n != 2 {
		t.Errorf("import folder holds %d messages, want 2", n)
	}
}
