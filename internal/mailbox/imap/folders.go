package imap

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"

	goimap "github.com/emersion/go-imap/v2"
	"go.uber.org/zap"

	"github.com/mailpipe/mailpipe/internal/mailbox"
)

// inboxNames are localized display names of the inbox that users copy from
// Outlook; over IMAP the inbox is always INBOX.
var inboxNames = map[string]bool{
	"inbox": true, "postvak in": true, "posteingang": true, "boîte de réception": true,
	"bandeja de entrada": true, "posta in arrivo": true, "caixa de entrada": true,
	"inkorgen": true, "indbakke": true, "innboks": true, "saapuneet": true, "skrzynka odbiorcza": true,
}

// listFolders reads every folder and the hierarchy delimiter.
func (s *Source) listFolders(sess *session) error {
	cmd := sess.c.List("", "*", nil)
	folders := map[string][]goimap.MailboxAttr{}
	for {
		d := cmd.Next()
		if d == nil {
			break
		}
		folders[d.Mailbox] = d.Attrs
		if d.Delim != 0 && sess.delim == "" {
			sess.delim = string(d.Delim)
		}
	}
	if err := cmd.Close(); err != nil {
		return err
	}
	if sess.delim == "" {
		sess.delim = "/"
	}
	sess.folders = folders
	return nil
}

// serverName maps a configured "/"-separated path to the server's name.
// A path that starts with a localized inbox name ("Postvak IN/Algemeen")
// means INBOX ("INBOX/Algemeen"), unless a folder by that literal name
// exists: an existing path wins, then a literal top folder. Paths that do
// not exist yet (to be created) follow the same rule.
func (s *Source) serverName(sess *session, path string) string {
	parts := strings.Split(strings.Trim(path, "/"), "/")
	for i := range parts {
		parts[i] = strings.TrimSpace(parts[i])
	}
	name := strings.Join(parts, sess.delim)
	if _, ok := sess.folders[name]; ok || !inboxNames[strings.ToLower(parts[0])] || parts[0] == "INBOX" {
		return name
	}
	top := parts[0]
	parts[0] = "INBOX"
	alt := strings.Join(parts, sess.delim)
	if _, ok := sess.folders[alt]; ok {
		return alt
	}
	if _, literal := sess.folders[top]; literal && !strings.EqualFold(top, "INBOX") {
		return name
	}
	return alt
}

// userPath maps a server name back to a "/"-separated path.
func userPath(sess *session, name string) string {
	if sess.delim == "/" {
		return name
	}
	return strings.ReplaceAll(name, sess.delim, "/")
}

// resolve finds a configured folder on the server; a missing folder is a
// NotFound error that suggests what exists. The folder list read at login
// is refreshed once before a folder counts as missing, so a folder created
// meanwhile (`importer check --create-folders`, a user) is found without a
// reconnect.
func (s *Source) resolve(sess *session, key, path string) (string, error) {
	name := s.serverName(sess, path)
	attrs, ok := sess.folders[name]
	if !ok {
		if err := s.listFolders(sess); err != nil {
			return "", s.fail("list folders", path, err)
		}
		name = s.serverName(sess, path)
		attrs, ok = sess.folders[name]
	}
	if !ok {
		return "", &mailbox.Error{Kind: mailbox.NotFound, Op: "resolve " + key, Mailbox: s.cfg.Name, Folder: path,
			Err: fmt.Errorf("no such folder on %s%s", s.cfg.IMAP.Host, s.suggest(sess, path))}
	}
	for _, a := range attrs {
		if a == goimap.MailboxAttrNoSelect || a == goimap.MailboxAttrNonExistent {
			return "", &mailbox.Error{Kind: mailbox.NotFound, Op: "resolve " + key, Mailbox: s.cfg.Name, Folder: path,
				Err: errors.New("folder cannot hold messages (\\Noselect)")}
		}
	}
	return name, nil
}

// suggest lists folders whose last component resembles path's: equal but
// for case, one containing the other, or a few typos apart.
func (s *Source) suggest(sess *session, path string) string {
	parts := strings.Split(strings.Trim(path, "/"), "/")
	last := strings.ToLower(strings.TrimSpace(parts[len(parts)-1]))
	var near []string
	for name, attrs := range sess.folders {
		if hasAttr(attrs, goimap.MailboxAttrNoSelect) || hasAttr(attrs, goimap.MailboxAttrNonExistent) {
			continue
		}
		p := userPath(sess, name)
		seg := strings.Split(p, "/")
		if similar(strings.ToLower(seg[len(seg)-1]), last) {
			near = append(near, p)
		}
	}
	sort.Strings(near)
	if len(near) > 5 {
		near = near[:5]
	}
	if len(near) == 0 {
		return " (path separator in the config is \"/\"; run `importer check --create-folders` to create processed/error folders)"
	}
	return " (similar folders: " + strings.Join(near, ", ") + ")"
}

func hasAttr(attrs []goimap.MailboxAttr, a goimap.MailboxAttr) bool {
	for _, x := range attrs {
		if strings.EqualFold(string(x), string(a)) {
			return true
		}
	}
	return false
}

// similar reports whether two lower-cased folder names look alike: one
// contains the other, or they are a typo or two apart.
func similar(a, b string) bool {
	if a == "" || b == "" {
		return false
	}
	if strings.Contains(a, b) || strings.Contains(b, a) {
		return true
	}
	ra, rb := []rune(a), []rune(b)
	return editDistance(ra, rb) <= max(1, min(len(ra), len(rb))/3)
}

// editDistance is the optimal string alignment distance of a and b:
// insertions, deletions, substitutions and swaps of neighbours count one.
func editDistance(a, b []rune) int {
	d := make([][]int, len(a)+1)
	for i := range d {
		d[i] = make([]int, len(b)+1)
		d[i][0] = i
	}
	for j := range d[0] {
		d[0][j] = j
	}
	for i := 1; i <= len(a); i++ {
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			d[i][j] = min(d[i-1][j]+1, d[i][j-1]+1, d[i-1][j-1]+cost)
			if i > 1 && j > 1 && a[i-1] == b[j-2] && a[i-2] == b[j-1] {
				d[i][j] = min(d[i][j], d[i-2][j-2]+1)
			}
		}
	}
	return d[len(a)][len(b)]
}

// importFolders returns the server names of the import folder and, when
// configured, all its selectable subfolders (sorted, parents first).
func (s *Source) importFolders(sess *session) ([]string, error) {
	root, err := s.resolve(sess, "folders.import", s.cfg.Folders.Import)
	if err != nil {
		return nil, err
	}
	out := []string{root}
	if !s.cfg.Folders.IncludeSubfolders {
		return out, nil
	}
	skip := map[string]bool{}
	for _, p := range []string{s.cfg.Folders.Processed, s.cfg.Folders.Error} {
		skip[s.serverName(sess, p)] = true
	}
	var subs []string
	prefix := root + sess.delim
	for name, attrs := range sess.folders {
		if !strings.HasPrefix(name, prefix) || skip[name] {
			continue
		}
		selectable := true
		for _, a := range attrs {
			if a == goimap.MailboxAttrNoSelect || a == goimap.MailboxAttrNonExistent {
				selectable = false
			}
		}
		if selectable {
			subs = append(subs, name)
		}
	}
	sort.Strings(subs)
	return append(out, subs...), nil
}

// destName resolves the processed or error folder.
func (s *Source) destName(sess *session, dest mailbox.Dest) (string, string, error) {
	key, path := "folders.processed", s.cfg.Folders.Processed
	if dest == mailbox.ToError {
		key, path = "folders.error", s.cfg.Folders.Error
	}
	name, err := s.resolve(sess, key, path)
	return name, path, err
}

// Check reports the configured folders, creating missing processed/error
// folders (and their parents) when create is set.
func (s *Source) Check(ctx context.Context, create bool) ([]mailbox.FolderStatus, error) {
	sess, err := s.ensure(ctx)
	if err != nil {
		return nil, err
	}
	g := s.guard(ctx, sess)
	defer g.done()

	var out []mailbox.FolderStatus
	var problems []error
	type item struct {
		key, path string
		creatable bool
	}
	items := []item{{"folders.import", s.cfg.Folders.Import, false}, {"folders.processed", s.cfg.Folders.Processed, true}, {"folders.error", s.cfg.Folders.Error, true}}
	for _, it := range items {
		name, err := s.resolve(sess, it.key, it.path)
		if err != nil && create && it.creatable && mailbox.KindOf(err) == mailbox.NotFound {
			if cerr := s.createPath(sess, it.path); cerr != nil {
				problems = append(problems, s.fail("create folder", it.path, cerr))
				out = append(out, mailbox.FolderStatus{Path: it.path})
				continue
			}
			name, err = s.resolve(sess, it.key, it.path)
		}
		if err != nil {
			problems = append(problems, err)
			out = append(out, mailbox.FolderStatus{Path: it.path})
			continue
		}
		st, err := sess.c.Status(name, &goimap.StatusOptions{NumMessages: true, NumUnseen: true}).Wait()
		if err != nil {
			problems = append(problems, s.fail("status", it.path, err))
			out = append(out, mailbox.FolderStatus{Path: it.path, Exists: true})
			continue
		}
		fs := mailbox.FolderStatus{Path: it.path, Exists: true}
		if st.NumMessages != nil {
			fs.Messages = int(*st.NumMessages)
		}
		if st.NumUnseen != nil {
			fs.Unseen = int(*st.NumUnseen)
		}
		out = append(out, fs)
	}
	if s.cfg.Folders.IncludeSubfolders {
		if names, err := s.importFolders(sess); err == nil {
			for _, n := range names[1:] {
				out = append(out, mailbox.FolderStatus{Path: userPath(sess, n), Exists: true, Messages: -1, Unseen: -1})
			}
		}
	}
	return out, errors.Join(problems...)
}

// createPath creates each missing level of path.
func (s *Source) createPath(sess *session, path string) error {
	parts := strings.Split(strings.Trim(path, "/"), "/")
	for i := range parts {
		sub := strings.Join(parts[:i+1], "/")
		name := s.serverName(sess, sub)
		if _, ok := sess.folders[name]; ok {
			continue
		}
		if err := sess.c.Create(name, nil).Wait(); err != nil {
			var ie *goimap.Error
			if !errors.As(err, &ie) || ie.Code != goimap.ResponseCodeAlreadyExists {
				return fmt.Errorf("create %q: %w", sub, err)
			}
		}
		sess.folders[name] = nil
		s.log.Info("created folder", zap.String("folder", sub))
	}
	return s.listFolders(sess)
}
