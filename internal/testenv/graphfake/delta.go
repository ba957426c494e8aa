package graphfake

import (
	"encoding/base64"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
)

// Delta state. A sync state is what the client has seen of a folder (per
// message: its ids and version); a round is the list of changes one
// delta sequence (nextLinks until the deltaLink) hands out.

type seenEntry struct {
	restID, immID string
	version       int
}

type syncState struct {
	id       string
	mbID     string
	folderID string
	sel      []string
	change   string // changeType
	seen     map[uint64]seenEntry
	gen      int
}

type deltaEntry struct {
	key           uint64
	removed       bool
	restID, immID string
}

type deltaRound struct {
	id       string
	mbID     string
	folderID string
	sel      []string
	pageSize int
	entries  []deltaEntry
	next     *syncState
	gen      int
}

// ExpireDeltaTokens makes every delta and skip token handed out so far
// invalid: their links answer 410 Gone with SyncStateNotFound (a full
// resync is needed), as after Exchange drops a sync state.
func (s *Server) ExpireDeltaTokens() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.deltaGen++
	s.deltaMin = s.deltaGen
	s.syncStates = map[string]*syncState{}
	s.rounds = map[string]*deltaRound{}
}

func errSyncState() *gErr {
	return newErr(http.StatusGone, "SyncStateNotFound", "The sync state could not be found. It may have expired: synchronize the folder again from the start.")
}

// snapshot records what a folder holds now.
func snapshot(f *folder) map[uint64]seenEntry {
	seen := make(map[uint64]seenEntry, len(f.msgs))
	for k, m := range f.msgs {
		seen[k] = seenEntry{restID: m.restID, immID: m.immID, version: m.version}
	}
	return seen
}

func handleDelta(c *call) {
	s := c.s
	q := c.q
	skip := q.Get("$skiptoken")
	dtok := q.Get("$deltatoken")
	s.mu.Lock()
	f, e := c.folderArg(c.path[1])
	if e != nil {
		s.mu.Unlock()
		c.fail(e)
		return
	}
	var round *deltaRound
	pos := 0
	switch {
	case skip != "":
		id, p, ok := decodeSkip(skip)
		round = s.rounds[id]
		if !ok || round == nil || round.gen < s.deltaMin || round.mbID != c.mb.id || round.folderID != f.id {
			s.mu.Unlock()
			c.fail(errSyncState())
			return
		}
		pos = p
	default:
		var prev *syncState
		var sel []string
		change := ""
		if dtok != "" {
			prev = s.syncStates[dtok]
			if prev == nil || prev.gen < s.deltaMin || prev.mbID != c.mb.id || prev.folderID != f.id {
				s.mu.Unlock()
				c.fail(errSyncState())
				return
			}
			sel, change = prev.sel, prev.change
		} else {
			var e *gErr
			if sel, e = parseSelect(q.Get("$select"), messageProps, "message"); e != nil {
				s.mu.Unlock()
				c.fail(e)
				return
			}
			change = strings.ToLower(q.Get("changeType"))
			switch change {
			case "", "created", "updated", "deleted":
			default:
				s.mu.Unlock()
				c.fail(errBadRequest("The changeType query option must be 'created', 'updated' or 'deleted'."))
				return
			}
		}
		size := 0
		if t := q.Get("$top"); t != "" {
			n, e := parseTop(t, 10, 1000)
			if e != nil {
				s.mu.Unlock()
				c.fail(e)
				return
			}
			size = n
		}
		round = s.newRound(c, f, prev, sel, change, size)
	}
	size := round.pageSize
	var applied []string
	if c.prefs.maxPageSize > 0 {
		size = c.prefs.maxPageSize
		applied = append(applied, "odata.maxpagesize="+strconv.Itoa(size))
	}
	if size <= 0 {
		size = 10
	}
	page := []map[string]any{}
	end := min(pos+size, len(round.entries))
	ro := renderOpts{sel: round.sel, bodyText: c.prefs.bodyText}
	for _, en := range round.entries[pos:end] {
		m := c.mb.byImm[en.immID]
		if en.removed || m == nil {
			id := en.restID
			if c.immutable {
				id = en.immID
			}
			page = append(page, map[string]any{
				"@odata.type": "#microsoft.graph.message",
				"id":          id,
				"@removed":    map[string]any{"reason": "deleted"},
			})
			continue
		}
		v := c.messageJSON(m, ro)
		v["@odata.type"] = "#microsoft.graph.message"
		page = append(page, v)
	}
	link := "https://" + c.host + "/v1.0/" + c.userSeg + "/mailFolders('" + f.id + "')/messages/delta?"
	v := map[string]any{
		"@odata.context": "https://" + c.host + "/v1.0/$metadata#Collection(message)",
		"value":          page,
	}
	if end < len(round.entries) {
		v["@odata.nextLink"] = link + "%24skiptoken=" + encodeSkip(round.id, end)
	} else {
		v["@odata.deltaLink"] = link + "%24deltatoken=" + url.QueryEscape(round.next.id)
	}
	s.mu.Unlock()
	c.page(v, applied...)
}

// newRound computes the changes since prev (or everything, without prev);
// the caller holds s.mu.
func (s *Server) newRound(c *call, f *folder, prev *syncState, sel []string, change string, size int) *deltaRound {
	next := &syncState{id: randomToken(), mbID: c.mb.id, folderID: f.id, sel: sel, change: change, seen: snapshot(f), gen: s.deltaGen}
	r := &deltaRound{id: randomToken(), mbID: c.mb.id, folderID: f.id, sel: sel, pageSize: size, next: next, gen: s.deltaGen}
	var removed []deltaEntry
	for _, m := range f.sorted(false) {
		add := deltaEntry{key: m.key, restID: m.restID, immID: m.immID}
		if prev == nil {
			r.entries = append(r.entries, add)
			continue
		}
		old, ok := prev.seen[m.key]
		switch {
		case !ok:
			if change == "" || change == "created" {
				r.entries = append(r.entries, add)
			}
		case old.restID != m.restID && !c.immutable:
			// Moved out and back: with REST ids it is a new item.
			if change == "" || change == "deleted" {
				removed = append(removed, deltaEntry{key: m.key, removed: true, restID: old.restID, immID: old.immID})
			}
			if change == "" || change == "created" {
				r.entries = append(r.entries, add)
			}
		case old.version != m.version:
			if change == "" || change == "updated" {
				r.entries = append(r.entries, add)
			}
		}
	}
	if prev != nil && (change == "" || change == "deleted") {
		for k, old := range prev.seen {
			if _, ok := f.msgs[k]; !ok {
				removed = append(removed, deltaEntry{key: k, removed: true, restID: old.restID, immID: old.immID})
			}
		}
	}
	slices.SortFunc(removed, func(a, b deltaEntry) int { return cmpU64(a.key, b.key) })
	r.entries = append(r.entries, removed...)
	s.syncStates[next.id] = next
	s.rounds[r.id] = r
	return r
}

func encodeSkip(id string, pos int) string {
	return base64.RawURLEncoding.EncodeToString([]byte(id + ":" + strconv.Itoa(pos)))
}

func decodeSkip(tok string) (string, int, bool) {
	b, err := base64.RawURLEncoding.DecodeString(tok)
	if err != nil {
		return "", 0, false
	}
	id, p, ok := strings.Cut(string(b), ":")
	n, err := strconv.Atoi(p)
	if !ok || err != nil || n < 0 {
		return "", 0, false
	}
	return id, n, true
}
