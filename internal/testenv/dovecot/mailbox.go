package dovecot

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"
)

// The helpers below fail the test given to Start (t.Fatalf) on error, so
// call them from that test's goroutine. They reach a user's mailbox through
// an IMAP master-user login ("<user>*<admin>"), which works for any user,
// with or without a password in Options.Users. Folder paths use "/"
// between levels whatever the server's separator is.

const adminTimeout = 2 * time.Minute

// imapName converts a "/"-separated path to the server's mailbox name.
func (s *Server) imapName(path string) string {
	if s.sep == "/" {
		return path
	}
	return strings.ReplaceAll(path, "/", s.sep)
}

// AdminClient returns an IMAP connection logged in to user's mailbox
// through the master user. It is closed when the test ends.
func (s *Server) AdminClient(user string) *imapclient.Client {
	s.t.Helper()
	c, err := s.dialAdmin(user, 0)
	if err != nil {
		s.t.Fatalf("dovecot: admin login for %s: %v", user, err)
	}
	s.t.Cleanup(func() { c.Close() })
	return c
}

// dialAdmin logs in as user through the master user. With timeout > 0 the
// whole connection is bounded by it (go-imap has no deadlines of its own).
func (s *Server) dialAdmin(user string, timeout time.Duration) (*imapclient.Client, error) {
	conn, err := net.DialTimeout("tcp", s.addr, 10*time.Second)
	if err != nil {
		return nil, err
	}
	if timeout > 0 {
		_ = conn.SetDeadline(time.Now().Add(timeout))
	}
	c := imapclient.New(conn, nil)
	if err := c.Login(user+"*"+s.adminUser, s.adminPass).Wait(); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// withAdmin runs f on a short-lived admin connection for user.
func (s *Server) withAdmin(user string, f func(c *imapclient.Client) error) error {
	c, err := s.dialAdmin(user, adminTimeout)
	if err != nil {
		return fmt.Errorf("admin login for %s: %w", user, err)
	}
	defer c.Close()
	if err := f(c); err != nil {
		return err
	}
	return c.Logout().Wait()
}

func hasCode(err error, code imap.ResponseCode) bool {
	var ie *imap.Error
	return errors.As(err, &ie) && ie.Code == code
}

// CreateFolder creates (and subscribes) folder path for user, e.g.
// "Postvak IN/Algemeen/Verwerkt-Ä". Existing folders are fine.
func (s *Server) CreateFolder(user, path string) {
	s.t.Helper()
	if err := s.withAdmin(user, func(c *imapclient.Client) error {
		return s.createFolder(c, path)
	}); err != nil {
		s.t.Fatalf("dovecot: CreateFolder(%s, %q): %v", user, path, err)
	}
}

func (s *Server) createFolder(c *imapclient.Client, path string) error {
	if strings.EqualFold(path, "INBOX") {
		return nil
	}
	name := s.imapName(path)
	if err := c.Create(name, nil).Wait(); err != nil && !hasCode(err, imap.ResponseCodeAlreadyExists) {
		return err
	}
	return c.Subscribe(name).Wait()
}

// DeleteFolder deletes folder path of user with its messages. A missing
// folder is fine.
func (s *Server) DeleteFolder(user, path string) {
	s.t.Helper()
	if err := s.withAdmin(user, func(c *imapclient.Client) error {
		name := s.imapName(path)
		_ = c.Unsubscribe(name).Wait()
		if err := c.Delete(name).Wait(); err != nil && !hasCode(err, imap.ResponseCodeNonExistent) {
			return err
		}
		return nil
	}); err != nil {
		s.t.Fatalf("dovecot: DeleteFolder(%s, %q): %v", user, path, err)
	}
}

// Folders lists user's selectable folders as "/"-separated paths.
func (s *Server) Folders(user string) []string {
	s.t.Helper()
	var out []string
	if err := s.withAdmin(user, func(c *imapclient.Client) error {
		list, err := c.List("", "*", nil).Collect()
		if err != nil {
			return err
		}
		for _, l := range list {
			if hasAttr(l.Attrs, imap.MailboxAttrNoSelect) || hasAttr(l.Attrs, imap.MailboxAttrNonExistent) {
				continue
			}
			name := l.Mailbox
			if l.Delim != 0 && l.Delim != '/' {
				name = strings.ReplaceAll(name, string(l.Delim), "/")
			}
			out = append(out, name)
		}
		return nil
	}); err != nil {
		s.t.Fatalf("dovecot: Folders(%s): %v", user, err)
	}
	return out
}

func hasAttr(attrs []imap.MailboxAttr, a imap.MailboxAttr) bool {
	for _, x := range attrs {
		if strings.EqualFold(string(x), string(a)) {
			return true
		}
	}
	return false
}

// Append stores one message in folder through IMAP APPEND, creating the
// folder if needed.
func (s *Server) Append(user, folder string, raw []byte) {
	s.t.Helper()
	if err := s.withAdmin(user, func(c *imapclient.Client) error {
		err := appendOne(c, s.imapName(folder), raw)
		if hasCode(err, imap.ResponseCodeTryCreate) {
			if err := s.createFolder(c, folder); err != nil {
				return err
			}
			err = appendOne(c, s.imapName(folder), raw)
		}
		return err
	}); err != nil {
		s.t.Fatalf("dovecot: Append(%s, %q, %d bytes): %v", user, folder, len(raw), err)
	}
}

func appendOne(c *imapclient.Client, name string, raw []byte) error {
	cmd := c.Append(name, int64(len(raw)), &imap.AppendOptions{})
	if _, err := cmd.Write(raw); err != nil {
		cmd.Close()
		_, _ = cmd.Wait()
		return err
	}
	if err := cmd.Close(); err != nil {
		return err
	}
	_, err := cmd.Wait()
	return err
}

// AppendMany stores msgs in folder (created if needed) by writing maildir
// files directly, in order: the first message gets the lowest UID. Dovecot
// picks them up at its next sync (any STATUS, SELECT, NOOP or IDLE).
func (s *Server) AppendMany(user, folder string, msgs [][]byte) {
	s.t.Helper()
	s.AppendFunc(user, folder, len(msgs), func(i int) []byte { return msgs[i] })
}

// AppendFunc is AppendMany for n generated messages: gen(i) is called once
// per message, in order, from a single goroutine, and its result is not
// kept, so seeding 10,000 large messages does not hold them in memory.
func (s *Server) AppendFunc(user, folder string, n int, gen func(i int) []byte) {
	s.t.Helper()
	if err := s.appendFiles(user, folder, n, gen); err != nil {
		s.t.Fatalf("dovecot: AppendFunc(%s, %q, %d): %v", user, folder, n, err)
	}
}

func (s *Server) appendFiles(user, folder string, n int, gen func(i int) []byte) error {
	// Let Dovecot create the folder (and the user's Maildir) so that its
	// list index and ownership are right; then check our idea of the
	// on-disk layout.
	if err := s.withAdmin(user, func(c *imapclient.Client) error {
		if err := s.createFolder(c, folder); err != nil {
			return err
		}
		_, err := c.Status(s.imapName(folder), &imap.StatusOptions{NumMessages: true}).Wait()
		return err
	}); err != nil {
		return err
	}
	dir := s.MaildirPath(user, folder)
	for _, sub := range []string{"cur", "tmp"} {
		if fi, err := os.Stat(filepath.Join(dir, sub)); err != nil || !fi.IsDir() {
			return fmt.Errorf("maildir layout mismatch: %s/%s is not a directory (%v)", dir, sub, err)
		}
	}
	if n <= 0 {
		return nil
	}

	// Names sort in order of i (Dovecot orders new files by the seconds
	// and then the M<usecs> field) and are unique across calls.
	secs := time.Now().Unix()
	first := s.seq.Add(int64(n)) - int64(n)
	type job struct {
		i    int
		data []byte
	}
	jobs := make(chan job, 64)
	var (
		mu       sync.Mutex
		firstErr error
		wg       sync.WaitGroup
	)
	workers := min(max(runtime.GOMAXPROCS(0), 4), 16, n)
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range jobs {
				name := fmt.Sprintf("%d.M%dP%d.testenv,S=%d,W=%d", secs, first+int64(j.i), os.Getpid(), len(j.data), virtualSize(j.data))
				if err := s.writeMaildirFile(dir, name, j.data); err != nil {
					mu.Lock()
					if firstErr == nil {
						firstErr = err
					}
					mu.Unlock()
				}
			}
		}()
	}
	for i := 0; i < n; i++ {
		mu.Lock()
		failed := firstErr != nil
		mu.Unlock()
		if failed {
			break
		}
		jobs <- job{i, gen(i)}
	}
	close(jobs)
	wg.Wait()
	return firstErr
}

// writeMaildirFile writes data to tmp/ and renames it into cur/ with no
// flags, so Dovecot never sees a partial file.
func (s *Server) writeMaildirFile(dir, name string, data []byte) error {
	tmp := filepath.Join(dir, "tmp", name)
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if s.chown {
		if err := f.Chown(s.uid, s.gid); err != nil {
			f.Close()
			return err
		}
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(tmp, filepath.Join(dir, "cur", name+":2,"))
}

// virtualSize is the size with every bare LF counted as CRLF (maildir W=).
func virtualSize(data []byte) int {
	return len(data) + bytes.Count(data, []byte("\n")) - bytes.Count(data, []byte("\r\n"))
}

// Count is the number of messages in folder (IMAP STATUS MESSAGES).
func (s *Server) Count(user, folder string) int {
	s.t.Helper()
	var n int
	if err := s.withAdmin(user, func(c *imapclient.Client) error {
		st, err := c.Status(s.imapName(folder), &imap.StatusOptions{NumMessages: true}).Wait()
		if err != nil {
			return err
		}
		if st.NumMessages == nil {
			return errors.New("STATUS returned no MESSAGES")
		}
		n = int(*st.NumMessages)
		return nil
	}); err != nil {
		s.t.Fatalf("dovecot: Count(%s, %q): %v", user, folder, err)
	}
	return n
}

// Message is a message as stored on the server.
type Message struct {
	UID imap.UID
	// Flags without the session-specific \Recent.
	Flags []string
	Raw   []byte
}

// Messages returns the raw messages in folder in UID order. The folder is
// opened read-only (EXAMINE): flags, including \Seen, are left alone.
func (s *Server) Messages(user, folder string) [][]byte {
	s.t.Helper()
	msgs := s.fetch(user, folder, true)
	out := make([][]byte, len(msgs))
	for i, m := range msgs {
		out[i] = m.Raw
	}
	return out
}

// Flags returns the flags of each message in folder in UID order (the same
// order as Messages), without \Recent.
func (s *Server) Flags(user, folder string) [][]string {
	s.t.Helper()
	msgs := s.fetch(user, folder, false)
	out := make([][]string, len(msgs))
	for i, m := range msgs {
		out[i] = m.Flags
	}
	return out
}

// Fetch returns UID, flags and raw body of each message in folder in UID
// order, read-only.
func (s *Server) Fetch(user, folder string) []Message {
	s.t.Helper()
	return s.fetch(user, folder, true)
}

func (s *Server) fetch(user, folder string, body bool) []Message {
	s.t.Helper()
	var out []Message
	if err := s.withAdmin(user, func(c *imapclient.Client) error {
		sel, err := c.Select(s.imapName(folder), &imap.SelectOptions{ReadOnly: true}).Wait()
		if err != nil {
			return err
		}
		if sel.NumMessages == 0 {
			return nil
		}
		section := &imap.FetchItemBodySection{Peek: true}
		opts := &imap.FetchOptions{UID: true, Flags: true}
		if body {
			opts.BodySection = []*imap.FetchItemBodySection{section}
		}
		var all imap.UIDSet
		all.AddRange(1, 0) // 1:*
		bufs, err := c.Fetch(all, opts).Collect()
		if err != nil {
			return err
		}
		for _, b := range bufs {
			m := Message{UID: b.UID, Flags: []string{}}
			for _, f := range b.Flags {
				if !strings.EqualFold(string(f), `\Recent`) {
					m.Flags = append(m.Flags, string(f))
				}
			}
			if body {
				m.Raw = b.FindBodySection(section)
			}
			out = append(out, m)
		}
		return nil
	}); err != nil {
		s.t.Fatalf("dovecot: reading %s of %s: %v", folder, user, err)
	}
	// UID FETCH 1:* answers in sequence order, which is UID order.
	return out
}
