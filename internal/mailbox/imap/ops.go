package imap

import (
	"context"
	"errors"
	"fmt"
	"io"

	goimap "github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"
	"go.uber.org/zap"

	"github.com/mailpipe/mailpipe/internal/mailbox"
)

// errStale: a folder's UIDVALIDITY changed since it was listed.
var errStale = errors.New("UIDVALIDITY changed since the folder was listed; the listing is stale")

// selectFolder selects name (read-write) unless it is already selected and
// returns its UIDVALIDITY. A SELECT it sends records the message count in
// sess.exists: go-imap completes Select before it updates Client.Mailbox,
// which may therefore still describe the previous selection.
func (s *Source) selectFolder(sess *session, name string) (uint32, error) {
	if sess.selected == name {
		return sess.validity, nil
	}
	sess.selected = ""
	data, err := sess.c.Select(name, nil).Wait()
	if err != nil {
		return 0, err
	}
	sess.selected, sess.validity, sess.exists = name, data.UIDValidity, data.NumMessages
	return data.UIDValidity, nil
}

// List returns undeleted messages of the import folder(s), oldest first.
// Messages flagged \Deleted are skipped: they are on their way out (e.g. a
// COPY-based move on a server without UIDPLUS).
func (s *Source) List(ctx context.Context, limit int) (mailbox.Listing, error) {
	out := mailbox.Listing{Validity: map[string]uint32{}}
	sess, err := s.ensure(ctx)
	if err != nil {
		return out, err
	}
	g := s.guard(ctx, sess)
	defer g.done()
	if s.cfg.Folders.IncludeSubfolders {
		// Subfolders created since the last pass are imported too.
		if err := s.listFolders(sess); err != nil {
			return out, s.fail("list folders", s.cfg.Folders.Import, err)
		}
	}
	names, err := s.importFolders(sess)
	if err != nil {
		return out, err
	}
	for _, name := range names {
		path := userPath(sess, name)
		// Re-select every time: a fresh SELECT reports new mail and a
		// changed UIDVALIDITY.
		sess.selected = ""
		validity, err := s.selectFolder(sess, name)
		if err != nil {
			return out, s.fail("select", path, err)
		}
		out.Validity[path] = validity
		exists := sess.exists
		// With a limit, fetch the first messages in ranges until enough
		// are found: skipped \Deleted ones must not make a listing fall
		// short while more messages wait.
		for start := uint32(1); start <= exists; {
			end := exists
			if limit > 0 {
				want := limit - len(out.Refs)
				if want <= 0 {
					break
				}
				end = min(start+uint32(want)-1, exists)
			}
			var set goimap.SeqSet
			set.AddRange(start, end)
			start = end + 1
			if err := s.listRange(sess, g, set, path, validity, limit, &out); err != nil {
				return out, err
			}
		}
		if limit > 0 && len(out.Refs) >= limit {
			break
		}
	}
	return out, nil
}

// listRange appends the undeleted messages of set (sequence numbers in the
// selected folder) to out, up to limit.
func (s *Source) listRange(sess *session, g *guard, set goimap.SeqSet, path string, validity uint32, limit int, out *mailbox.Listing) error {
	cmd := sess.c.Fetch(set, &goimap.FetchOptions{UID: true, Flags: true, RFC822Size: true, InternalDate: true})
	for {
		msg := cmd.Next()
		if msg == nil {
			break
		}
		g.touch()
		buf, err := msg.Collect()
		if err != nil {
			cmd.Close()
			return s.fail("fetch metadata", path, err)
		}
		if buf.UID == 0 || hasFlag(buf.Flags, goimap.FlagDeleted) {
			continue
		}
		if limit > 0 && len(out.Refs) >= limit {
			continue
		}
		out.Refs = append(out.Refs, mailbox.Ref{
			Mailbox: s.cfg.Name, Folder: path, UIDValidity: validity, UID: uint32(buf.UID),
			Size: buf.RFC822Size, Received: buf.InternalDate,
		})
	}
	if err := cmd.Close(); err != nil {
		return s.fail("fetch metadata", path, err)
	}
	return nil
}

func hasFlag(flags []goimap.Flag, f goimap.Flag) bool {
	for _, x := range flags {
		if x == f {
			return true
		}
	}
	return false
}

// groups splits refs into runs of the same folder, keeping order.
func groups(refs []mailbox.Ref) [][]mailbox.Ref {
	var out [][]mailbox.Ref
	for i := 0; i < len(refs); {
		j := i + 1
		for j < len(refs) && refs[j].Folder == refs[i].Folder && refs[j].UIDValidity == refs[i].UIDValidity {
			j++
		}
		out = append(out, refs[i:j])
		i = j
	}
	return out
}

// Fetch streams the messages with one UID FETCH per folder run. See
// mailbox.Source.
func (s *Source) Fetch(ctx context.Context, refs []mailbox.Ref, fn func(*mailbox.Message) error) error {
	sess, err := s.ensure(ctx)
	if err != nil {
		return err
	}
	for _, run := range groups(refs) {
		if err := s.fetchRun(ctx, sess, run, fn); err != nil {
			return err
		}
	}
	return nil
}

// callbackError marks an error returned by the caller's fn, so it is
// passed through unclassified.
type callbackError struct{ err error }

func (e callbackError) Error() string { return e.err.Error() }

func (s *Source) fetchRun(ctx context.Context, sess *session, run []mailbox.Ref, fn func(*mailbox.Message) error) error {
	path := run[0].Folder
	name := s.serverName(sess, path)
	g := s.guard(ctx, sess)
	defer g.done()
	validity, err := s.selectFolder(sess, name)
	if err != nil {
		return s.fail("select", path, err)
	}
	if validity != run[0].UIDValidity {
		return &mailbox.Error{Kind: mailbox.Transient, Op: "fetch", Mailbox: s.cfg.Name, Folder: path, Err: errStale}
	}
	pending := make(map[goimap.UID]mailbox.Ref, len(run))
	for _, r := range run {
		pending[goimap.UID(r.UID)] = r
	}
	for attempt := 1; ; attempt++ {
		var set goimap.UIDSet
		for _, r := range run {
			if _, ok := pending[goimap.UID(r.UID)]; ok {
				set.AddNum(goimap.UID(r.UID))
			}
		}
		if len(set) == 0 {
			return nil
		}
		err := s.fetchSet(sess, g, path, set, pending, fn)
		if err == nil {
			return nil
		}
		if ce, ok := err.(callbackError); ok {
			return ce.err
		}
		var me *mailbox.Error
		if errors.As(err, &me) || !isExpungeIssued(err) || attempt == 3 {
			return s.fail("fetch", path, err)
		}
		// NO [EXPUNGEISSUED]: another session expunged some of these
		// messages while they were read. Learn about the expunges and
		// fetch what was not delivered; what is gone is skipped then.
		if err := sess.c.Noop().Wait(); err != nil {
			return s.fail("fetch", path, err)
		}
	}
}

// fetchSet runs one UID FETCH and calls fn for each message of pending that
// arrives, removing it from pending. An error of fn is returned wrapped in
// a callbackError; errors of the server or connection are returned as they
// are (*mailbox.Error once the session was dropped).
func (s *Source) fetchSet(sess *session, g *guard, path string, set goimap.UIDSet, pending map[goimap.UID]mailbox.Ref, fn func(*mailbox.Message) error) error {
	section := &goimap.FetchItemBodySection{Peek: true}
	// FLAGS (sent before the body) tell a message already copied and
	// flagged \Deleted by a move without UIDPLUS: moved, so skipped.
	cmd := sess.c.Fetch(set, &goimap.FetchOptions{UID: true, Flags: true, BodySection: []*goimap.FetchItemBodySection{section}})
	var err error
	for err == nil {
		msg := cmd.Next()
		if msg == nil {
			break
		}
		g.touch()
		err = s.handleFetched(sess, g, path, msg, pending, fn)
	}
	if err != nil {
		// Abandoning a FETCH mid-stream leaves unread literals on the
		// wire: the session cannot be reused. Close the connection first
		// and then let go-imap's reader run out (it waits until the
		// literal in hand is read): a plain Close would block on it.
		sess.kill()
		_ = cmd.Close()
		if _, ok := err.(callbackError); ok {
			s.drop()
			return err
		}
		err = s.failSess(sess, "fetch", path, err)
		s.drop()
		return err
	}
	return cmd.Close()
}

func (s *Source) handleFetched(sess *session, g *guard, path string, msg *imapclient.FetchMessageData, pending map[goimap.UID]mailbox.Ref, fn func(*mailbox.Message) error) error {
	var (
		uid     goimap.UID
		deleted bool
	)
	for {
		item := msg.Next()
		if item == nil {
			return nil
		}
		switch it := item.(type) {
		case imapclient.FetchItemDataUID:
			uid = it.UID
		case imapclient.FetchItemDataFlags:
			deleted = hasFlag(it.Flags, goimap.FlagDeleted)
		case imapclient.FetchItemDataBodySection:
			if it.Literal == nil {
				// Expunged meanwhile (NIL body): skip.
				continue
			}
			body := &progressReader{r: it.Literal, g: g, fail: func(err error) error { return s.failSess(sess, "fetch", path, err) }}
			ref, ok := pending[uid]
			if deleted {
				delete(pending, uid)
				ok = false
			}
			if !ok {
				// Not ours (unilateral FETCH), already delivered, or
				// moved meanwhile but not expunged yet.
				_, err := io.Copy(io.Discard, body)
				g.resume()
				if body.err != nil {
					return body.err
				}
				if err != nil {
					return err
				}
				continue
			}
			delete(pending, uid)
			g.pause()
			err := fn(&mailbox.Message{Ref: ref, Size: it.Literal.Size(), Body: body})
			if err != nil {
				return callbackError{err}
			}
			// Whatever fn left unread.
			_, err = io.Copy(io.Discard, body)
			g.resume()
			if body.err != nil {
				return body.err
			}
			if err != nil {
				return err
			}
		}
	}
}

// progressReader extends the guard's deadline while bytes arrive, and
// re-arms it for each read so a server that stalls mid-literal is caught.
// A read that fails is reported to the caller as a classified error
// (*mailbox.Error, e.g. Transient "no response from server within ...").
type progressReader struct {
	r    io.Reader
	g    *guard
	fail func(error) error
	err  error // the unclassified read error, if any
}

func (p *progressReader) Read(b []byte) (int, error) {
	if p.err != nil {
		return 0, p.fail(p.err)
	}
	p.g.resume()
	n, err := p.r.Read(b)
	p.g.pause()
	if err != nil && err != io.EOF {
		p.err = err
		return n, p.fail(err)
	}
	return n, err
}

// Move moves the messages with one UID MOVE per folder run. Without MOVE it
// copies (checked), flags \Deleted and UID EXPUNGEs only with UIDPLUS;
// a failed COPY deletes nothing. See mailbox.Source.
func (s *Source) Move(ctx context.Context, refs []mailbox.Ref, dest mailbox.Dest) error {
	if len(refs) == 0 {
		return nil
	}
	sess, err := s.ensure(ctx)
	if err != nil {
		return err
	}
	g := s.guard(ctx, sess)
	defer g.done()
	destName, destPath, err := s.destName(sess, dest)
	if err != nil {
		return err
	}
	for _, run := range groups(refs) {
		path := run[0].Folder
		validity, err := s.selectFolder(sess, s.serverName(sess, path))
		if err != nil {
			return s.fail("select", path, err)
		}
		if validity != run[0].UIDValidity {
			// These identities no longer exist: nothing to move.
			s.log.Warn("folder UIDVALIDITY changed before move; messages will be re-listed",
				zap.String("folder", path), zap.Uint32("listed", run[0].UIDValidity), zap.Uint32("now", validity))
			continue
		}
		var set goimap.UIDSet
		for _, r := range run {
			set.AddNum(goimap.UID(r.UID))
		}
		if err := s.moveSet(sess, set, destName); err != nil {
			if mailbox.KindOf(classify("", "", "", err)) == mailbox.NotFound {
				return &mailbox.Error{Kind: mailbox.NotFound, Op: "move to " + dest.String() + " folder", Mailbox: s.cfg.Name, Folder: destPath,
					Err: fmt.Errorf("%w (run `importer check --create-folders`)", err)}
			}
			return s.fail("move to "+destPath, path, err)
		}
	}
	return nil
}

func (s *Source) moveSet(sess *session, set goimap.UIDSet, dest string) error {
	for attempt := 1; ; attempt++ {
		err := s.moveOnce(sess, set, dest)
		if err == nil || !isExpungeIssued(err) || attempt == 3 {
			return err
		}
		// NO [EXPUNGEISSUED]: another session expunged (moved) some of
		// these messages, and Dovecot then moves none of them until this
		// session has seen the EXPUNGE. Sync and retry: UIDs that are
		// gone are ignored then.
		if err := sess.c.Noop().Wait(); err != nil {
			return err
		}
	}
}

func (s *Source) moveOnce(sess *session, set goimap.UIDSet, dest string) error {
	if sess.caps.Has(goimap.CapMove) || sess.caps.Has(goimap.CapIMAP4rev2) {
		_, err := sess.c.Move(set, dest).Wait()
		return err
	}
	// Fallback, each step checked before the next: never delete what was
	// not copied, never a bare EXPUNGE (it would also expunge messages
	// other clients flagged \Deleted). Messages already flagged \Deleted
	// were copied by an earlier attempt (or another worker) and are not
	// copied again: moving twice must not leave two copies.
	found, err := sess.c.UIDSearch(&goimap.SearchCriteria{UID: []goimap.UIDSet{set}, NotFlag: []goimap.Flag{goimap.FlagDeleted}}, nil).Wait()
	if err != nil {
		return fmt.Errorf("search (nothing copied): %w", err)
	}
	if uids := found.AllUIDs(); len(uids) > 0 {
		todo := goimap.UIDSetNum(uids...)
		if _, err := sess.c.Copy(todo, dest).Wait(); err != nil {
			return fmt.Errorf("copy (nothing deleted): %w", err)
		}
		store := sess.c.Store(todo, &goimap.StoreFlags{Op: goimap.StoreFlagsAdd, Silent: true, Flags: []goimap.Flag{goimap.FlagDeleted}}, nil)
		if err := store.Close(); err != nil {
			return fmt.Errorf("flag \\Deleted after copy: %w", err)
		}
	}
	if !sess.caps.Has(goimap.CapUIDPlus) {
		if !s.warned["uidplus"] {
			s.warned["uidplus"] = true
			s.log.Warn("server has neither MOVE nor UIDPLUS: moved messages stay in the import folder flagged \\Deleted until expunged by another client; mailpipe skips them")
		}
		return nil
	}
	// UID EXPUNGE removes only messages of set that are flagged \Deleted:
	// the ones copied now or by an interrupted earlier attempt.
	return sess.c.UIDExpunge(set).Close()
}
