package graph

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/mailpipe/mailpipe/internal/mailbox"
)

// Messages have no size property in Graph v1.0: the listing asks for the
// MAPI property PidTagMessageSize (0x0E08, the size of the message in the
// store), which is what Exchange reports as the message's size. It is
// close to, but not always equal to, the size of the MIME content (which
// Fetch reports exactly).
const (
	sizeProperty = "Integer 0x0E08"
	sizeExpand   = "singleValueExtendedProperties($filter=id eq '" + sizeProperty + "')"
	listSelect   = "id,receivedDateTime"
)

type messageJSON struct {
	ID       string `json:"id"`
	Received string `json:"receivedDateTime"`
	Removed  *struct {
		Reason string `json:"reason"`
	} `json:"@removed"`
	Props []struct {
		ID    string `json:"id"`
		Value string `json:"value"`
	} `json:"singleValueExtendedProperties"`
}

type messagePage struct {
	Value     []messageJSON `json:"value"`
	NextLink  string        `json:"@odata.nextLink"`
	DeltaLink string        `json:"@odata.deltaLink"`
}

// size is the PidTagMessageSize of m, 0 if absent.
func (m messageJSON) size() int64 {
	for _, p := range m.Props {
		if isSizeProperty(p.ID) {
			if n, err := strconv.ParseInt(strings.TrimSpace(p.Value), 10, 64); err == nil && n >= 0 {
				return n
			}
		}
	}
	return 0
}

// isSizeProperty matches "Integer 0x0E08" as Graph echoes it ("Integer
// 0xe08").
func isSizeProperty(id string) bool {
	f := strings.Fields(strings.ToLower(id))
	if len(f) != 2 || f[0] != "integer" || !strings.HasPrefix(f[1], "0x") {
		return false
	}
	tag, err := strconv.ParseUint(f[1][2:], 16, 32)
	return err == nil && tag == 0x0E08
}

func (s *Source) ref(f folder, m messageJSON) mailbox.Ref {
	r := mailbox.Ref{Mailbox: s.cfg.Name, Folder: f.path, ID: m.ID, Size: m.size()}
	if t, err := time.Parse(time.RFC3339Nano, m.Received); err == nil {
		r.Received = t
	}
	return r
}

// List returns the messages of the import folder (and its subfolders when
// configured), oldest first within each folder, at most limit (0: all).
// With delta discovery each folder's changes since the last List are
// fetched (the first List of a folder, or one after the delta state
// expired, is a full synchronization); with list discovery the folder is
// listed by arrival time. Neither looks at arrival times to decide what is
// new: mail moved into the folder later is found.
func (s *Source) List(ctx context.Context, limit int) (mailbox.Listing, error) {
	var out mailbox.Listing
	folders, err := s.importFolders(ctx)
	if err != nil {
		return out, err
	}
	for _, f := range folders {
		want := 0
		if limit > 0 {
			want = limit - len(out.Refs)
			if want <= 0 {
				break
			}
		}
		var refs []mailbox.Ref
		if s.delta {
			refs, err = s.listDelta(ctx, f, want)
		} else {
			refs, err = s.listFolder(ctx, f, want)
		}
		if err != nil {
			return out, err
		}
		out.Refs = append(out.Refs, refs...)
	}
	s.stats.listed.Add(int64(len(out.Refs)))
	return out, nil
}

// listFolder lists folder f oldest first, following @odata.nextLink
// verbatim, until want refs (0: all).
func (s *Source) listFolder(ctx context.Context, f folder, want int) ([]mailbox.Ref, error) {
	top := s.pageSize
	if want > 0 && want < top {
		top = want
	}
	c := call{
		op: "list", method: http.MethodGet, retry5xx: true,
		tmpl:   "/users/{user}/mailFolders/{folder}/messages{?%24top,%24select,%24orderby,%24expand}",
		params: map[string]string{"user": s.user, "folder": f.id},
		query: map[string]string{"%24top": itoa(top), "%24select": listSelect,
			"%24orderby": "receivedDateTime asc", "%24expand": sizeExpand},
	}
	var out []mailbox.Ref
	for {
		resp, err := s.c.do(ctx, c)
		if err != nil {
			return out, s.folderErr(ctx, "list", f, err)
		}
		var page messagePage
		if err := decode(resp, &page); err != nil {
			return out, s.classify("list", f.path, err)
		}
		for _, m := range page.Value {
			if m.ID != "" && m.Removed == nil {
				out = append(out, s.ref(f, m))
			}
		}
		if want > 0 && len(out) >= want {
			return out[:want], nil
		}
		if page.NextLink == "" {
			return out, nil
		}
		c = call{op: "list", method: http.MethodGet, retry5xx: true, url: page.NextLink}
	}
}

// folderErr classifies err of a request on folder f; a 404 means the folder
// is gone (deleted, or recreated with a new id): the cache is dropped so
// the next operation resolves the path again.
func (s *Source) folderErr(_ context.Context, op string, f folder, err error) error {
	var ae *apiError
	if errors.As(err, &ae) && ae.Status == http.StatusNotFound && ruleFor(ae.Status, ae.Code).hint != hintMailbox {
		s.folders.forget()
		return s.errorf(mailbox.NotFound, op, f.path, "folder is gone (deleted or recreated; it is looked up again next time): %w", err)
	}
	return s.classify(op, f.path, err)
}

// folderState is the delta synchronization of one folder: the link to
// continue from and the messages present according to it (pending: listed
// but not yet moved away).
type folderState struct {
	f   folder
	key string
	// cursor is the deltaLink of the last complete round; "" means the
	// next round is a full synchronization.
	cursor string
	// stored is the link last written to the state store.
	stored  string
	loaded  bool
	pending map[string]mailbox.Ref
}

func (s *Source) deltaState(f folder) *folderState {
	fs, ok := s.deltas[f.id]
	if !ok {
		sum := sha256.Sum256([]byte(s.user + "\x00" + f.id))
		fs = &folderState{f: f, key: "graph.delta." + s.cfg.Name + "." + hex.EncodeToString(sum[:16]), pending: map[string]mailbox.Ref{}}
		s.deltas[f.id] = fs
	}
	fs.f.path = f.path
	return fs
}

func (s *Source) listDelta(ctx context.Context, f folder, want int) ([]mailbox.Ref, error) {
	fs := s.deltaState(f)
	if err := s.syncFolder(ctx, fs); err != nil {
		return nil, err
	}
	out := make([]mailbox.Ref, 0, len(fs.pending))
	for _, r := range fs.pending {
		r.Folder = f.path
		out = append(out, r)
	}
	sort.Slice(out, func(i, j int) bool {
		if !out[i].Received.Equal(out[j].Received) {
			return out[i].Received.Before(out[j].Received)
		}
		return out[i].ID < out[j].ID
	})
	if want > 0 && len(out) > want {
		out = out[:want]
	}
	return out, nil
}

func (s *Source) deltaCall(f folder) call {
	return call{
		op: "delta", method: http.MethodGet, retry5xx: true,
		tmpl:   "/users/{user}/mailFolders/{folder}/messages/delta{?%24select,%24expand}",
		params: map[string]string{"user": s.user, "folder": f.id},
		query:  map[string]string{"%24select": listSelect, "%24expand": sizeExpand},
		prefer: []string{"odata.maxpagesize=" + itoa(s.pageSize)},
	}
}

// syncFolder runs one complete delta round on fs: from the stored link (or
// a full synchronization when there is none, or it expired), following
// @odata.nextLink to @odata.deltaLink, adding what appeared and removing
// what was deleted or moved away.
func (s *Source) syncFolder(ctx context.Context, fs *folderState) error {
	if !fs.loaded {
		if s.state != nil {
			v, ok, err := s.state.Get(ctx, fs.key)
			if err != nil {
				return s.errorf(mailbox.Transient, "delta", fs.f.path, "read delta state %s: %w", fs.key, err)
			}
			if ok && s.validLink(v) {
				fs.cursor, fs.stored = v, v
			} else if ok {
				s.log.Warn("ignoring a stored delta link for another server", zap.String("folder", fs.f.path))
			}
		}
		fs.loaded = true
	}
	full := fs.cursor == ""
	c := s.deltaCall(fs.f)
	if full {
		fs.pending = map[string]mailbox.Ref{}
	} else {
		c.tmpl, c.url = "", fs.cursor
	}
	for {
		resp, err := s.c.do(ctx, c)
		if err != nil {
			if !full && isSyncStateGone(err) {
				s.log.Warn("delta state of folder expired; synchronizing it in full", zap.String("folder", fs.f.path), zap.Error(err))
				if s.state != nil {
					if derr := s.state.Delete(ctx, fs.key); derr != nil {
						s.log.Warn("cannot delete the expired delta link", zap.Error(derr))
					}
				}
				fs.cursor, fs.stored = "", ""
				full = true
				fs.pending = map[string]mailbox.Ref{}
				c = s.deltaCall(fs.f)
				continue
			}
			return s.folderErr(ctx, "delta", fs.f, err)
		}
		var page messagePage
		if err := decode(resp, &page); err != nil {
			return s.classify("delta", fs.f.path, err)
		}
		for _, m := range page.Value {
			switch {
			case m.ID == "":
			case m.Removed != nil:
				delete(fs.pending, m.ID)
			default:
				fs.pending[m.ID] = s.ref(fs.f, m)
			}
		}
		if page.NextLink != "" {
			c = call{op: "delta", method: http.MethodGet, retry5xx: true, url: page.NextLink, prefer: c.prefer}
			continue
		}
		if page.DeltaLink == "" {
			return s.errorf(mailbox.Transient, "delta", fs.f.path, "delta page without @odata.nextLink or @odata.deltaLink")
		}
		fs.cursor = page.DeltaLink
		break
	}
	s.persist(ctx, fs)
	return nil
}

// persist stores fs's delta link when that is safe: every message the
// round reported has been handled (moved away) since, so a restart from
// this link misses nothing. While messages are pending the link is kept in
// memory only; a restart then synchronizes from the last safe link.
func (s *Source) persist(ctx context.Context, fs *folderState) {
	if s.state == nil || fs.cursor == "" || len(fs.pending) > 0 || fs.cursor == fs.stored {
		return
	}
	if err := s.state.Put(ctx, fs.key, fs.cursor); err != nil {
		s.log.Warn("cannot store the delta link (a restart will resynchronize from an older one)", zap.String("folder", fs.f.path), zap.Error(err))
		return
	}
	fs.stored = fs.cursor
}

// validLink accepts a stored link only for the configured server.
func (s *Source) validLink(v string) bool {
	u, err := url.Parse(v)
	return err == nil && strings.EqualFold(u.Host, s.base.Host) && u.Scheme == s.base.Scheme
}

// handled records that ids left folder f (moved, or gone).
func (s *Source) handled(ctx context.Context, f folder, ids []string) {
	fs, ok := s.deltas[f.id]
	if !ok {
		return
	}
	for _, id := range ids {
		delete(fs.pending, id)
	}
	s.persist(ctx, fs)
}

// present tells which messages are still in folder f: with delta
// discovery from a delta round (usually one request), otherwise from a
// listing of the folder's ids.
func (s *Source) present(ctx context.Context, f folder) (func(id string) bool, error) {
	if s.delta {
		fs := s.deltaState(f)
		if err := s.syncFolder(ctx, fs); err != nil {
			return nil, err
		}
		return func(id string) bool { _, ok := fs.pending[id]; return ok }, nil
	}
	ids := map[string]bool{}
	c := call{
		op: "list", method: http.MethodGet, retry5xx: true,
		tmpl:   "/users/{user}/mailFolders/{folder}/messages{?%24top,%24select}",
		params: map[string]string{"user": s.user, "folder": f.id},
		query:  map[string]string{"%24top": itoa(maxPageSize), "%24select": "id"},
	}
	for {
		resp, err := s.c.do(ctx, c)
		if err != nil {
			return nil, s.folderErr(ctx, "list", f, err)
		}
		var page messagePage
		if err := decode(resp, &page); err != nil {
			return nil, s.classify("list", f.path, err)
		}
		for _, m := range page.Value {
			ids[m.ID] = true
		}
		if page.NextLink == "" {
			return func(id string) bool { return ids[id] }, nil
		}
		c = call{op: "list", method: http.MethodGet, retry5xx: true, url: page.NextLink}
	}
}

// stillThere groups refs by folder and drops those no longer in their
// folder (moved by another worker or by this Source, or deleted), keeping
// the order of refs. It returns the kept refs with their folders.
func (s *Source) stillThere(ctx context.Context, refs []mailbox.Ref) ([]mailbox.Ref, []folder, error) {
	type check struct {
		f  folder
		in func(string) bool
	}
	checks := map[string]*check{}
	var kept []mailbox.Ref
	var folders []folder
	for _, r := range refs {
		norm, _ := splitPath(r.Folder)
		ch, ok := checks[norm]
		if !ok {
			f, err := s.folderOf(ctx, r.Folder)
			if err != nil {
				return nil, nil, err
			}
			in, err := s.present(ctx, f)
			if err != nil {
				return nil, nil, err
			}
			ch = &check{f: f, in: in}
			checks[norm] = ch
		}
		if r.ID == "" || !ch.in(r.ID) {
			s.stats.skipped.Add(1)
			continue
		}
		kept = append(kept, r)
		folders = append(folders, ch.f)
	}
	return kept, folders, nil
}
