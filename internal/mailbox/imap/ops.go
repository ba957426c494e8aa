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
// returns its UIDVALIDITY.
func (s *Source) selectFolder(sess *session, name string) (uint32, error) {
	if sess.selected == name {
		return sess.validity, nil
	}
	sess.selected = ""
	data, err := sess.c.Select(name, nil).Wait()
	if err != nil {
		return 0, err
	}
	sess.selected, sess.validity = name, data.UIDValidity
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
		if sess.c.Mailbox() == nil || sess.c.Mailbox().NumMessages == 0 {
			continue
		}
		var set goimap.SeqSet
		exists := sess.c.Mailbox().NumMessages
		if limit > 0 {
			n := min(uint32(limit-len(out.Refs)), exists)
			if n == 0 {
				break
			}
			set.AddRange(1, n)
		} else {
			set.AddRange(1, exists)
		}
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
				return out, s.fail("fetch metadata", path, err)
			}
			if buf.UID == 0 || hasFlag(buf.Flags, goimap.FlagDeleted) {
				continue
			}
			out.Refs = append(out.Refs, mailbox.Ref{
				Mailbox: s.cfg.Name, Folder: path, UIDValidity: validity, UID: uint32(buf.UID),
				Size: buf.RFC822Size, Received: buf.InternalDate,
			})
			if limit > 0 && len(out.Refs) >= limit {
				break
			}
		}
		if err := cmd.Close(); err != nil {
			return out, s.fail("fetch metadata", path, err)
		}
		if limit > 0 && len(out.Refs) >= limit {
			break
		}
	}
	return out, nil
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
	byUID := make(map[goimap.UID]mailbox.Ref, len(run))
	var set goimap.UIDSet
	for _, r := range run {
		byUID[goimap.UID(r.UID)] = r
		set.AddNum(goimap.UID(r.UID))
	}
	section := &goimap.FetchItemBodySection{Peek: true}
	cmd := sess.c.Fetch(set, &goimap.FetchOptions{UID: true, BodySection: []*goimap.FetchItemBodySection{section}})
	var cbErr error
	for cbErr == nil {
		msg := cmd.Next()
		if msg == nil {
			break
		}
		g.touch()
		cbErr = s.handleFetched(sess, g, msg, byUID, fn)
	}
	if cbErr != nil {
		// Abandoning a FETCH mid-stream leaves unread literals on the
		// wire: the session cannot be reused.
		s.drop()
		var ce callbackError
		if errors.As(cbErr, &ce) {
			return ce.err
		}
		return s.fail("fetch", path, cbErr)
	}
	if err := cmd.Close(); err != nil {
		return s.fail("fetch", path, err)
	}
	return nil
}

func (s *Source) handleFetched(sess *session, g *guard, msg *imapclient.FetchMessageData, byUID map[goimap.UID]mailbox.Ref, fn func(*mailbox.Message) error) error {
	var uid goimap.UID
	for {
		item := msg.Next()
		if item == nil {
			return nil
		}
		switch it := item.(type) {
		case imapclient.FetchItemDataUID:
			uid = it.UID
		case imapclient.FetchItemDataBodySection:
			ref, ok := byUID[uid]
			if !ok || it.Literal == nil {
				// Not ours (unilateral FETCH) or expunged meanwhile
				// (NIL body): skip.
				if it.Literal != nil {
					if _, err := io.Copy(io.Discard, it.Literal); err != nil {
						return err
					}
				}
				continue
			}
			delete(byUID, uid)
			body := &progressReader{r: it.Literal, g: g}
			g.pause()
			err := fn(&mailbox.Message{Ref: ref, Size: it.Literal.Size(), Body: body})
			g.resume()
			if err != nil {
				return callbackError{err}
			}
			if _, err := io.Copy(io.Discard, it.Literal); err != nil {
				return err
			}
			if body.err != nil {
				return body.err
			}
		}
	}
}

// progressReader extends the guard's deadline while bytes arrive, and
// re-arms it for each read so a server that stalls mid-literal is caught.
type progressReader struct {
	r   io.Reader
	g   *guard
	err error
}

func (p *progressReader) Read(b []byte) (int, error) {
	p.g.resume()
	n, err := p.r.Read(b)
	p.g.pause()
	if err != nil && err != io.EOF {
		p.err = err
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
	if sess.caps.Has(goimap.CapMove) || sess.caps.Has(goimap.CapIMAP4rev2) {
		_, err := sess.c.Move(set, dest).Wait()
		return err
	}
	// Fallback, each step checked before the next: never delete what was
	// not copied, never a bare EXPUNGE (it would also expunge messages
	// other clients flagged \Deleted).
	if _, err := sess.c.Copy(set, dest).Wait(); err != nil {
		return fmt.Errorf("copy (nothing deleted): %w", err)
	}
	store := sess.c.Store(set, &goimap.StoreFlags{Op: goimap.StoreFlagsAdd, Silent: true, Flags: []goimap.Flag{goimap.FlagDeleted}}, nil)
	if err := store.Close(); err != nil {
		return fmt.Errorf("flag \\Deleted after copy: %w", err)
	}
	if !sess.caps.Has(goimap.CapUIDPlus) {
		if !s.warned["uidplus"] {
			s.warned["uidplus"] = true
			s.log.Warn("server has neither MOVE nor UIDPLUS: moved messages stay in the import folder flagged \\Deleted until expunged by another client; mailpipe skips them")
		}
		return nil
	}
	return sess.c.UIDExpunge(set).Close()
}
