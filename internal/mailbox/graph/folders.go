package graph

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sort"
	"strings"
	"sync"

	"go.uber.org/zap"

	"github.com/mailpipe/mailpipe/internal/mailbox"
)

// wellKnown maps folder names as users write them (lower case, spaces
// removed: "Sent Items" is sentitems) to Graph's well-known folder names.
var wellKnown = map[string]string{
	"inbox": "inbox", "drafts": "drafts", "sentitems": "sentitems", "deleteditems": "deleteditems",
	"junkemail": "junkemail", "archive": "archive", "outbox": "outbox", "msgfolderroot": "msgfolderroot",
	"clutter": "clutter", "conversationhistory": "conversationhistory", "scheduled": "scheduled",
}

// inboxNames are localized display names of the inbox that users copy from
// Outlook. The mailbox's own inbox name is found by asking for the inbox;
// these cover a configuration written in another language than the
// mailbox's.
var inboxNames = map[string]bool{
	"inbox": true, "postvak in": true, "posteingang": true, "boîte de réception": true,
	"bandeja de entrada": true, "posta in arrivo": true, "caixa de entrada": true,
	"inkorgen": true, "indbakke": true, "innboks": true, "saapuneet": true, "skrzynka odbiorcza": true,
}

const folderSelect = "id,displayName,parentFolderId,childFolderCount,totalItemCount,unreadItemCount"

// folderJSON is a mailFolder.
type folderJSON struct {
	ID               string `json:"id"`
	DisplayName      string `json:"displayName"`
	ParentFolderID   string `json:"parentFolderId"`
	ChildFolderCount int    `json:"childFolderCount"`
	TotalItemCount   int    `json:"totalItemCount"`
	UnreadItemCount  int    `json:"unreadItemCount"`
}

type folderPage struct {
	Value    []folderJSON `json:"value"`
	NextLink string       `json:"@odata.nextLink"`
}

// folder is a resolved folder: its id is stable, its path is as configured
// (or, for subfolders, the import path plus display names).
type folder struct {
	id   string
	path string
}

// folderCache remembers resolved folders by path, and the well-known
// folders by name. Folder ids are stable; an entry is dropped when a
// request says the folder is gone.
type folderCache struct {
	mu     sync.Mutex
	byPath map[string]folder
	known  map[string]folderJSON
}

func newFolderCache() *folderCache {
	return &folderCache{byPath: map[string]folder{}, known: map[string]folderJSON{}}
}

func (c *folderCache) get(path string) (folder, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	f, ok := c.byPath[path]
	return f, ok
}

func (c *folderCache) put(f folder) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.byPath[f.path] = f
}

// forget drops every entry (a folder was deleted or recreated).
func (c *folderCache) forget() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.byPath = map[string]folder{}
	c.known = map[string]folderJSON{}
}

// splitPath normalizes a "/"-separated path: segments trimmed, empty ones
// dropped.
func splitPath(p string) (string, []string) {
	var parts []string
	for _, seg := range strings.Split(p, "/") {
		if seg = strings.TrimSpace(seg); seg != "" {
			parts = append(parts, seg)
		}
	}
	return strings.Join(parts, "/"), parts
}

// odataQuote quotes s as an OData string literal.
func odataQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", "''") + "'" }

// resolve finds the folder at path (a configured path or a subfolder path
// built by the walk): its first segment is a well-known folder (also as
// its localized display name) or a top-level folder, each further segment
// a child folder by display name. A missing folder is a NotFound error
// naming what exists at that level.
func (s *Source) resolve(ctx context.Context, key, path string) (folder, error) {
	norm, parts := splitPath(path)
	if len(parts) == 0 {
		return folder{}, s.errorf(mailbox.Permanent, "resolve "+key, path, "empty folder path")
	}
	if f, ok := s.folders.get(norm); ok {
		return f, nil
	}
	cur, err := s.top(ctx, key, path, parts[0])
	if err != nil {
		return folder{}, err
	}
	s.folders.put(folder{id: cur.ID, path: parts[0]})
	for i := 1; i < len(parts); i++ {
		sub := strings.Join(parts[:i+1], "/")
		if f, ok := s.folders.get(sub); ok {
			cur = folderJSON{ID: f.id}
			continue
		}
		child, ok, err := s.childByName(ctx, cur.ID, parts[i])
		if err != nil {
			return folder{}, s.classify("resolve "+key, path, err)
		}
		if !ok {
			return folder{}, s.missing(ctx, key, path, cur.ID, parts[:i], parts[i])
		}
		cur = child
		s.folders.put(folder{id: cur.ID, path: sub})
	}
	return folder{id: cur.ID, path: norm}, nil
}

// top resolves the first segment of a path.
func (s *Source) top(ctx context.Context, key, path, seg string) (folderJSON, error) {
	op := "resolve " + key
	lower := strings.ToLower(seg)
	if wk, ok := wellKnown[strings.ReplaceAll(lower, " ", "")]; ok {
		f, err := s.wellKnownFolder(ctx, wk)
		if err != nil {
			if isItemNotFound(err) {
				return folderJSON{}, s.errorf(mailbox.NotFound, op, path, "the mailbox has no %s folder", wk)
			}
			return folderJSON{}, s.classify(op, path, err)
		}
		return f, nil
	}
	// The inbox under its localized name ("Postvak IN", "Posteingang").
	inbox, err := s.wellKnownFolder(ctx, "inbox")
	if err != nil {
		return folderJSON{}, s.classify(op, path, err)
	}
	if strings.EqualFold(inbox.DisplayName, seg) {
		return inbox, nil
	}
	child, ok, err := s.childByName(ctx, "msgfolderroot", seg)
	if err != nil {
		return folderJSON{}, s.classify(op, path, err)
	}
	if ok {
		return child, nil
	}
	if inboxNames[lower] {
		// An inbox name in another language than the mailbox's.
		return inbox, nil
	}
	return folderJSON{}, s.missing(ctx, key, path, "msgfolderroot", nil, seg)
}

func (s *Source) wellKnownFolder(ctx context.Context, name string) (folderJSON, error) {
	s.folders.mu.Lock()
	f, ok := s.folders.known[name]
	s.folders.mu.Unlock()
	if ok {
		return f, nil
	}
	resp, err := s.c.do(ctx, call{
		op: "folder", method: http.MethodGet, retry5xx: true,
		tmpl:   "/users/{user}/mailFolders/{folder}{?%24select}",
		params: map[string]string{"user": s.user, "folder": name},
		query:  map[string]string{"%24select": folderSelect},
	})
	if err != nil {
		return folderJSON{}, err
	}
	if err := decode(resp, &f); err != nil {
		return folderJSON{}, err
	}
	s.folders.mu.Lock()
	s.folders.known[name] = f
	s.folders.mu.Unlock()
	return f, nil
}

// childByName finds the child of parent named name (display names are
// unique among siblings, compared without regard to case).
func (s *Source) childByName(ctx context.Context, parent, name string) (folderJSON, bool, error) {
	c := call{
		op: "folder", method: http.MethodGet, retry5xx: true,
		tmpl:   "/users/{user}/mailFolders/{folder}/childFolders{?%24filter,%24select}",
		params: map[string]string{"user": s.user, "folder": parent},
		query:  map[string]string{"%24filter": "displayName eq " + odataQuote(name), "%24select": folderSelect},
	}
	var fold *folderJSON
	for {
		resp, err := s.c.do(ctx, c)
		if err != nil {
			return folderJSON{}, false, err
		}
		var page folderPage
		if err := decode(resp, &page); err != nil {
			return folderJSON{}, false, err
		}
		for i, f := range page.Value {
			if f.DisplayName == name {
				return f, true, nil
			}
			if fold == nil && strings.EqualFold(f.DisplayName, name) {
				fold = &page.Value[i]
			}
		}
		if page.NextLink == "" {
			break
		}
		c = call{op: "folder", method: http.MethodGet, retry5xx: true, url: page.NextLink}
	}
	if fold != nil {
		return *fold, true, nil
	}
	return folderJSON{}, false, nil
}

// children lists the child folders of parent, following every page.
func (s *Source) children(ctx context.Context, parent string) ([]folderJSON, error) {
	c := call{
		op: "folder", method: http.MethodGet, retry5xx: true,
		tmpl:   "/users/{user}/mailFolders/{folder}/childFolders{?%24select,%24top}",
		params: map[string]string{"user": s.user, "folder": parent},
		query:  map[string]string{"%24select": folderSelect, "%24top": itoa(s.pageSize)},
	}
	var out []folderJSON
	for {
		resp, err := s.c.do(ctx, c)
		if err != nil {
			return nil, err
		}
		var page folderPage
		if err := decode(resp, &page); err != nil {
			return nil, err
		}
		out = append(out, page.Value...)
		if page.NextLink == "" {
			return out, nil
		}
		c = call{op: "folder", method: http.MethodGet, retry5xx: true, url: page.NextLink}
	}
}

// missing builds the NotFound error for segment seg under parent (whose
// path is parentParts), naming the folders that exist there.
func (s *Source) missing(ctx context.Context, key, path, parent string, parentParts []string, seg string) error {
	where := "at the top of the mailbox"
	if len(parentParts) > 0 {
		where = "in " + strings.Join(parentParts, "/")
	}
	detail := ""
	if kids, err := s.children(ctx, parent); err == nil {
		var names []string
		for _, k := range kids {
			names = append(names, k.DisplayName)
		}
		sort.Strings(names)
		switch {
		case len(names) == 0:
			detail = "; there are no folders there"
		case len(names) > 25:
			detail = "; there are " + itoa(len(names)) + " folders there, e.g. " + strings.Join(names[:25], ", ")
		default:
			detail = "; the folders there are: " + strings.Join(names, ", ")
		}
	}
	return s.errorf(mailbox.NotFound, "resolve "+key, path,
		"no folder %q %s of %s%s (paths are \"/\"-separated display names; the first one may be a well-known folder such as Inbox; `importer check --create-folders` creates processed and error folders)",
		seg, where, s.user, detail)
}

// importFolders returns the import folder and, with include_subfolders,
// all its descendants (parents before children, siblings by name), except
// the processed and error folders. Subfolders are walked again on every
// call, so new ones are found.
func (s *Source) importFolders(ctx context.Context) ([]folder, error) {
	root, err := s.resolve(ctx, "folders.import", s.cfg.Folders.Import)
	if err != nil {
		return nil, err
	}
	out := []folder{root}
	if !s.cfg.Folders.IncludeSubfolders {
		return out, nil
	}
	skip := map[string]bool{}
	for _, p := range []struct{ key, path string }{{"folders.processed", s.cfg.Folders.Processed}, {"folders.error", s.cfg.Folders.Error}} {
		if p.path == "" {
			continue
		}
		if f, err := s.resolve(ctx, p.key, p.path); err == nil {
			skip[f.id] = true
		} else if mailbox.KindOf(err) != mailbox.NotFound {
			return nil, err
		}
	}
	queue := []folder{root}
	for len(queue) > 0 {
		parent := queue[0]
		queue = queue[1:]
		kids, err := s.children(ctx, parent.id)
		if err != nil {
			return nil, s.classify("list subfolders", parent.path, err)
		}
		sort.Slice(kids, func(i, j int) bool { return kids[i].DisplayName < kids[j].DisplayName })
		for _, k := range kids {
			if skip[k.ID] {
				continue
			}
			f := folder{id: k.ID, path: parent.path + "/" + k.DisplayName}
			s.folders.put(f)
			out = append(out, f)
			if k.ChildFolderCount > 0 {
				queue = append(queue, f)
			}
		}
	}
	return out, nil
}

// folderOf maps a ref's folder path to its folder (resolving it when this
// Source has not seen it yet).
func (s *Source) folderOf(ctx context.Context, path string) (folder, error) {
	norm, _ := splitPath(path)
	if f, ok := s.folders.get(norm); ok {
		return f, nil
	}
	return s.resolve(ctx, "folder", path)
}

// destFolder resolves the processed or error folder.
func (s *Source) destFolder(ctx context.Context, dest mailbox.Dest) (folder, string, error) {
	key, path := "folders.processed", s.cfg.Folders.Processed
	if dest == mailbox.ToError {
		key, path = "folders.error", s.cfg.Folders.Error
	}
	f, err := s.resolve(ctx, key, path)
	return f, path, err
}

// Check reports the configured folders (import, processed, error, then the
// import folder's subfolders when included) with their item counts; with
// create, missing processed and error folders (and their parents) are
// created. When nothing in the mailbox can be read (no permission, or no
// such mailbox) it returns no folders and the error, as a failed login does
// over IMAP.
func (s *Source) Check(ctx context.Context, create bool) ([]mailbox.FolderStatus, error) {
	var out []mailbox.FolderStatus
	var problems []error
	items := []struct {
		key, path string
		creatable bool
	}{
		{"folders.import", s.cfg.Folders.Import, false},
		{"folders.processed", s.cfg.Folders.Processed, true},
		{"folders.error", s.cfg.Folders.Error, true},
	}
	// Counts must be fresh and folders may have been created or deleted
	// since they were resolved.
	s.folders.forget()
	for _, it := range items {
		f, err := s.resolve(ctx, it.key, it.path)
		if err != nil && create && it.creatable && mailbox.KindOf(err) == mailbox.NotFound {
			f, err = s.createPath(ctx, it.key, it.path)
		}
		if err != nil {
			if mailbox.KindOf(err) == mailbox.Auth || isMailboxError(err) {
				if len(out) == 0 {
					// Nothing in the mailbox could be read (no
					// permission, or no such mailbox): there is no
					// folder to report, only why.
					return nil, err
				}
				return append(out, mailbox.FolderStatus{Path: it.path}), errors.Join(append(problems, err)...)
			}
			problems = append(problems, err)
			out = append(out, mailbox.FolderStatus{Path: it.path})
			continue
		}
		st, err := s.folderStatus(ctx, f)
		if err != nil {
			problems = append(problems, err)
		}
		out = append(out, st)
	}
	if s.cfg.Folders.IncludeSubfolders && len(out) > 0 && out[0].Exists {
		fs, err := s.importFolders(ctx)
		if err != nil {
			problems = append(problems, err)
		}
		for i := 1; i < len(fs); i++ {
			st, err := s.folderStatus(ctx, fs[i])
			if err != nil {
				problems = append(problems, err)
			}
			out = append(out, st)
		}
	}
	return out, errors.Join(problems...)
}

func (s *Source) folderStatus(ctx context.Context, f folder) (mailbox.FolderStatus, error) {
	st := mailbox.FolderStatus{Path: f.path, Exists: true, Messages: -1, Unseen: -1}
	resp, err := s.c.do(ctx, call{
		op: "folder", method: http.MethodGet, retry5xx: true,
		tmpl:   "/users/{user}/mailFolders/{folder}{?%24select}",
		params: map[string]string{"user": s.user, "folder": f.id},
		query:  map[string]string{"%24select": folderSelect},
	})
	if err != nil {
		return st, s.classify("folder status", f.path, err)
	}
	var fj folderJSON
	if err := decode(resp, &fj); err != nil {
		return st, s.classify("folder status", f.path, err)
	}
	st.Messages, st.Unseen = fj.TotalItemCount, fj.UnreadItemCount
	return st, nil
}

// createPath creates each missing level of path and returns the folder.
func (s *Source) createPath(ctx context.Context, key, path string) (folder, error) {
	norm, parts := splitPath(path)
	if len(parts) == 0 {
		return folder{}, s.errorf(mailbox.Permanent, "create "+key, path, "empty folder path")
	}
	op := "create " + key
	cur, err := s.top(ctx, key, path, parts[0])
	if mailbox.KindOf(err) == mailbox.NotFound && err != nil {
		cur, err = s.createFolder(ctx, "", parts[0])
		if err == nil {
			s.log.Info("created folder", zap.String("folder", parts[0]))
		}
	}
	if err != nil {
		return folder{}, s.classify(op, path, err)
	}
	for i := 1; i < len(parts); i++ {
		child, ok, err := s.childByName(ctx, cur.ID, parts[i])
		if err != nil {
			return folder{}, s.classify(op, path, err)
		}
		if !ok {
			child, err = s.createFolder(ctx, cur.ID, parts[i])
			if err != nil {
				return folder{}, s.classify(op, path, err)
			}
			s.log.Info("created folder", zap.String("folder", strings.Join(parts[:i+1], "/")))
		}
		cur = child
	}
	f := folder{id: cur.ID, path: norm}
	s.folders.put(f)
	return f, nil
}

// createFolder creates a folder named name under parent ("" for the top of
// the mailbox). A folder that exists by then (created by another worker)
// is returned.
func (s *Source) createFolder(ctx context.Context, parent, name string) (folderJSON, error) {
	c := call{op: "create", method: http.MethodPost, body: map[string]any{"displayName": name},
		tmpl: "/users/{user}/mailFolders", params: map[string]string{"user": s.user}}
	if parent != "" {
		c.tmpl = "/users/{user}/mailFolders/{folder}/childFolders"
		c.params["folder"] = parent
	}
	resp, err := s.c.do(ctx, c)
	if err != nil {
		var ae *apiError
		if errors.As(err, &ae) && (ae.Status == http.StatusConflict || strings.EqualFold(ae.Code, "ErrorFolderExists")) {
			if parent == "" {
				parent = "msgfolderroot"
			}
			f, ok, lerr := s.childByName(ctx, parent, name)
			if lerr == nil && ok {
				return f, nil
			}
		}
		return folderJSON{}, err
	}
	var f folderJSON
	if err := decode(resp, &f); err != nil {
		return folderJSON{}, err
	}
	if f.ID == "" {
		return folderJSON{}, fmt.Errorf("create folder %q: answer without an id", name)
	}
	return f, nil
}
