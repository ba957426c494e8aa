package graph

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mailpipe/mailpipe/internal/auth"
	"github.com/mailpipe/mailpipe/internal/config"
)

// hang bounds waits that only fail when something deadlocks.
const hang = 60 * time.Second

const stubUser = "shared@example.com"

// testTokens is a TokenSource handing out "tok-<n>", a new n after each
// Invalidate; with claims support it records the claims it was given.
type testTokens struct {
	mu          sync.Mutex
	gen         int
	calls       int
	invalidated int
	claims      []string
	err         error
}

func (t *testTokens) Token(context.Context) (auth.Token, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.calls++
	if t.err != nil {
		return auth.Token{}, t.err
	}
	return auth.Token{Value: fmt.Sprintf("hdr.tok-%d.sig", t.gen), ExpiresOn: time.Now().Add(time.Hour)}, nil
}

func (t *testTokens) Invalidate() {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.invalidated++
	t.gen++
}

// claimsTokens also implements auth.ClaimsTokenSource.
type claimsTokens struct{ testTokens }

func (t *claimsTokens) TokenWithClaims(_ context.Context, claims string) (auth.Token, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.claims = append(t.claims, claims)
	t.gen++
	return auth.Token{Value: fmt.Sprintf("hdr.tok-%d.sig", t.gen), ExpiresOn: time.Now().Add(time.Hour)}, nil
}

var _ auth.ClaimsTokenSource = (*claimsTokens)(nil)

// recorded is one request the stub received.
type recorded struct {
	Method string
	URI    string // RequestURI: path and query as sent
	Host   string
	Header http.Header
	Body   []byte
}

// stub is a small in-memory Graph mailbox over loopback TLS: folders with
// well-known aliases, messages, $value, move, $batch, delta, and a hook to
// answer any request differently. It records every request.
type stub struct {
	t   *testing.T
	srv *httptest.Server

	mu      sync.Mutex
	reqs    []recorded
	folders map[string]*stubFolder
	alias   map[string]string // well-known name -> id
	msgs    map[string]*stubMsg
	seq     int
	changes []stubChange
	// hook answers a request itself when it returns true. It runs without
	// the stub's lock held.
	hook func(w http.ResponseWriter, r *http.Request, body []byte) bool
	// inFlight and peak count concurrent requests.
	inFlight, peak int
	// valueDelay is added to each $value answer.
	valueDelay time.Duration
	// noLength serves $value without Content-Length.
	noLength bool
}

type stubFolder struct {
	id, name, parent string
}

type stubMsg struct {
	id, folder string
	raw        []byte
	received   time.Time
}

type stubChange struct {
	seq        int
	id, folder string // the folder the message left or entered
}

func newStub(t *testing.T) *stub {
	s := &stub{t: t, folders: map[string]*stubFolder{}, alias: map[string]string{}, msgs: map[string]*stubMsg{}}
	s.addFolder("ROOT", "Top of Information Store", "", "msgfolderroot")
	s.addFolder("INBOX", "Inbox", "ROOT", "inbox")
	s.addFolder("SENT", "Sent Items", "ROOT", "sentitems")
	s.srv = httptest.NewUnstartedServer(http.HandlerFunc(s.serve))
	// Connections closed by the client before their handshake are normal
	// here (idle connections closed with the Source).
	s.srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	s.srv.StartTLS()
	t.Cleanup(s.srv.Close)
	return s
}

func (s *stub) addFolder(id, name, parent, alias string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.folders[id] = &stubFolder{id: id, name: name, parent: parent}
	if alias != "" {
		s.alias[alias] = id
	}
}

// addMsg adds a message to folder id and returns its id.
func (s *stub) addMsg(folder string, raw string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.seq++
	id := fmt.Sprintf("AAMkMSG-%03d=", s.seq)
	s.msgs[id] = &stubMsg{id: id, folder: folder, raw: []byte(raw), received: time.Date(2025, 1, 1, 0, 0, s.seq, 0, time.UTC)}
	s.changes = append(s.changes, stubChange{seq: s.seq, id: id, folder: folder})
	return id
}

func (s *stub) moveMsg(id, folder string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.moveLocked(s.msgs[id], folder)
}

func (s *stub) moveLocked(m *stubMsg, folder string) {
	s.seq++
	s.changes = append(s.changes, stubChange{seq: s.seq, id: m.id, folder: m.folder})
	m.folder = folder
	s.changes = append(s.changes, stubChange{seq: s.seq, id: m.id, folder: folder})
}

func (s *stub) count(folder string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, m := range s.msgs {
		if m.folder == folder {
			n++
		}
	}
	return n
}

func (s *stub) requests() []recorded {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]recorded(nil), s.reqs...)
}

func (s *stub) base() string { return s.srv.URL + "/v1.0" }

func (s *stub) config() config.Mailbox {
	return config.Mailbox{
		Name: "shared", Address: stubUser, Source: "graph",
		Folders: config.Folders{Import: "Inbox/Import", Processed: "Inbox/Processed", Error: "Inbox/Error"},
		Graph:   config.Graph{BaseURL: s.base(), PageSize: 2, Timeout: 20 * time.Second},
	}
}

// source returns a Source for the stub's mailbox; mod may change options.
func (s *stub) source(t *testing.T, mod func(*Options)) *Source {
	t.Helper()
	opts := Options{Mailbox: s.config(), Tokens: &testTokens{}, HTTPClient: s.srv.Client(), State: newMemState()}
	if mod != nil {
		mod(&opts)
	}
	src, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { src.Close() })
	return src
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func writeErr(w http.ResponseWriter, status int, code, msg string) {
	writeJSON(w, status, map[string]any{"error": map[string]any{"code": code, "message": msg}})
}

func (s *stub) serve(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	s.mu.Lock()
	s.reqs = append(s.reqs, recorded{Method: r.Method, URI: r.RequestURI, Host: r.Host, Header: r.Header.Clone(), Body: body})
	s.inFlight++
	s.peak = max(s.peak, s.inFlight)
	hook := s.hook
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		s.inFlight--
		s.mu.Unlock()
	}()
	if hook != nil && hook(w, r, body) {
		return
	}
	if r.Header.Get("Authorization") == "" {
		writeErr(w, 401, "InvalidAuthenticationToken", "Access token is empty.")
		return
	}
	p, ok := strings.CutPrefix(r.URL.Path, "/v1.0")
	if !ok {
		writeErr(w, 400, "BadRequest", "Invalid version.")
		return
	}
	if p == "/$batch" {
		s.serveBatch(w, r, body)
		return
	}
	status, v, raw := s.route(r.Method, p, r.URL.Query(), body, r.Header)
	if raw != nil {
		if s.valueDelay > 0 {
			time.Sleep(s.valueDelay)
		}
		if !s.noLength {
			w.Header().Set("Content-Length", strconv.Itoa(len(raw)))
		}
		w.WriteHeader(200)
		_, _ = w.Write(raw)
		return
	}
	writeJSON(w, status, v)
}

func errBody(code, msg string) map[string]any {
	return map[string]any{"error": map[string]any{"code": code, "message": msg}}
}

// route answers one call (also one $batch item): status and JSON, or raw
// MIME.
func (s *stub) route(method, p string, q url.Values, body []byte, h http.Header) (int, any, []byte) {
	segs := strings.Split(strings.Trim(p, "/"), "/")
	if len(segs) < 2 || segs[0] != "users" {
		return 400, errBody("BadRequest", "bad path "+p), nil
	}
	if !strings.EqualFold(segs[1], stubUser) {
		return 404, errBody("ErrorInvalidUser", "The requested user '"+segs[1]+"' is invalid."), nil
	}
	segs = segs[2:]
	immutable := strings.Contains(h.Get("Prefer"), `IdType="ImmutableId"`)
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case len(segs) == 2 && segs[0] == "mailFolders" && method == http.MethodGet:
		f := s.folderLocked(segs[1])
		if f == nil {
			return 404, errBody("ErrorItemNotFound", "The specified object was not found in the store."), nil
		}
		return 200, s.folderJSON(f), nil
	case len(segs) == 1 && segs[0] == "mailFolders" && method == http.MethodPost:
		return s.createLocked("ROOT", body)
	case len(segs) == 3 && segs[0] == "mailFolders" && segs[2] == "childFolders":
		f := s.folderLocked(segs[1])
		if f == nil {
			return 404, errBody("ErrorItemNotFound", "not found"), nil
		}
		if method == http.MethodPost {
			return s.createLocked(f.id, body)
		}
		var out []any
		filter := q.Get("$filter")
		var kids []*stubFolder
		for _, c := range s.folders {
			if c.parent == f.id {
				kids = append(kids, c)
			}
		}
		sort.Slice(kids, func(i, j int) bool { return kids[i].name < kids[j].name })
		for _, c := range kids {
			if filter != "" {
				want := strings.TrimPrefix(filter, "displayName eq ")
				want = strings.ReplaceAll(strings.Trim(want, "'"), "''", "'")
				if !strings.EqualFold(c.name, want) {
					continue
				}
			}
			out = append(out, s.folderJSON(c))
		}
		return 200, map[string]any{"value": out}, nil
	case len(segs) == 3 && segs[0] == "mailFolders" && segs[2] == "messages":
		f := s.folderLocked(segs[1])
		if f == nil {
			return 404, errBody("ErrorItemNotFound", "not found"), nil
		}
		var ms []*stubMsg
		for _, m := range s.msgs {
			if m.folder == f.id {
				ms = append(ms, m)
			}
		}
		sort.Slice(ms, func(i, j int) bool { return ms[i].received.Before(ms[j].received) })
		skip, _ := strconv.Atoi(q.Get("$skip"))
		top, _ := strconv.Atoi(q.Get("$top"))
		if top <= 0 {
			top = 10
		}
		var out []any
		for i := skip; i < len(ms) && i < skip+top; i++ {
			out = append(out, s.msgJSON(ms[i], immutable))
		}
		v := map[string]any{"value": out}
		if skip+top < len(ms) {
			nq := url.Values{}
			for k, vs := range q {
				nq[k] = vs
			}
			nq.Set("$skip", strconv.Itoa(skip+top))
			v["@odata.nextLink"] = s.base() + "/users/" + stubUser + "/mailFolders/" + f.id + "/messages?" + nq.Encode()
		}
		return 200, v, nil
	case len(segs) == 4 && segs[0] == "mailFolders" && segs[2] == "messages" && segs[3] == "delta":
		return s.deltaLocked(segs[1], q, h)
	case len(segs) == 3 && segs[0] == "messages" && segs[2] == "$value":
		m := s.msgs[segs[1]]
		if m == nil {
			return 404, errBody("ErrorItemNotFound", "The specified object was not found in the store."), nil
		}
		return 200, nil, m.raw
	case len(segs) == 2 && segs[0] == "messages" && method == http.MethodGet:
		m := s.msgs[segs[1]]
		if m == nil {
			return 404, errBody("ErrorItemNotFound", "The specified object was not found in the store."), nil
		}
		return 200, s.msgJSON(m, immutable), nil
	case len(segs) == 3 && segs[0] == "messages" && segs[2] == "move" && method == http.MethodPost:
		m := s.msgs[segs[1]]
		if m == nil {
			return 404, errBody("ErrorItemNotFound", "The specified object was not found in the store."), nil
		}
		var in struct {
			DestinationID string `json:"destinationId"`
		}
		_ = json.Unmarshal(body, &in)
		dst := s.folderLocked(in.DestinationID)
		if dst == nil {
			return 404, errBody("ErrorToFolderNotFound", "The destination folder could not be found."), nil
		}
		if m.folder != dst.id {
			s.moveLocked(m, dst.id)
		}
		return 201, s.msgJSON(m, immutable), nil
	}
	return 400, errBody("BadRequest", "unsupported "+method+" "+p), nil
}

func (s *stub) folderLocked(key string) *stubFolder {
	if id, ok := s.alias[strings.ToLower(key)]; ok {
		key = id
	}
	return s.folders[key]
}

func (s *stub) folderJSON(f *stubFolder) map[string]any {
	kids, total := 0, 0
	for _, c := range s.folders {
		if c.parent == f.id {
			kids++
		}
	}
	for _, m := range s.msgs {
		if m.folder == f.id {
			total++
		}
	}
	return map[string]any{"id": f.id, "displayName": f.name, "parentFolderId": f.parent,
		"childFolderCount": kids, "totalItemCount": total, "unreadItemCount": total}
}

func (s *stub) createLocked(parent string, body []byte) (int, any, []byte) {
	var in struct {
		DisplayName string `json:"displayName"`
	}
	_ = json.Unmarshal(body, &in)
	for _, c := range s.folders {
		if c.parent == parent && strings.EqualFold(c.name, in.DisplayName) {
			return 409, errBody("ErrorFolderExists", "A folder with the specified name already exists."), nil
		}
	}
	s.seq++
	f := &stubFolder{id: fmt.Sprintf("FOLDER-%d", s.seq), name: in.DisplayName, parent: parent}
	s.folders[f.id] = f
	return 201, s.folderJSON(f), nil
}

func (s *stub) msgJSON(m *stubMsg, immutable bool) map[string]any {
	id := m.id
	if !immutable {
		id = "REST-" + m.folder + "-" + m.id // REST ids change with the folder
	}
	return map[string]any{
		"id": id, "receivedDateTime": m.received.Format(time.RFC3339), "parentFolderId": m.folder,
		"singleValueExtendedProperties": []map[string]string{{"id": "Integer 0xe08", "value": strconv.Itoa(len(m.raw))}},
	}
}

// deltaLocked: the delta token is the change sequence number the round
// started from; a round returns, page by page, every message of the folder
// that changed since (present: the message; gone: @removed).
func (s *stub) deltaLocked(folder string, q url.Values, h http.Header) (int, any, []byte) {
	f := s.folderLocked(folder)
	if f == nil {
		return 404, errBody("ErrorItemNotFound", "not found"), nil
	}
	since := -1
	if tok := q.Get("$deltatoken"); tok != "" {
		n, err := strconv.Atoi(tok)
		if err != nil || n < 0 {
			return 410, errBody("SyncStateNotFound", "The sync state generation is not found."), nil
		}
		since = n
	}
	upto := s.seq
	if tok := q.Get("$skiptoken"); tok != "" {
		a, b, _ := strings.Cut(tok, ".")
		since, _ = strconv.Atoi(a)
		upto, _ = strconv.Atoi(b)
	}
	offset, _ := strconv.Atoi(q.Get("offset"))
	seen := map[string]bool{}
	var ids []string
	for _, c := range s.changes {
		if c.seq > since && c.seq <= upto && c.folder == f.id && !seen[c.id] {
			seen[c.id] = true
			ids = append(ids, c.id)
		}
	}
	if since < 0 {
		ids = nil
		var ms []*stubMsg
		for _, m := range s.msgs {
			if m.folder == f.id {
				ms = append(ms, m)
			}
		}
		sort.Slice(ms, func(i, j int) bool { return ms[i].id < ms[j].id })
		for _, m := range ms {
			ids = append(ids, m.id)
		}
	}
	size := len(ids)
	if p := h.Get("Prefer"); strings.Contains(p, "odata.maxpagesize=") {
		_, v, _ := strings.Cut(p, "odata.maxpagesize=")
		v, _, _ = strings.Cut(v, ",")
		if n, err := strconv.Atoi(strings.TrimSpace(v)); err == nil && n > 0 {
			size = n
		}
	}
	immutable := strings.Contains(h.Get("Prefer"), `IdType="ImmutableId"`)
	var out []any
	end := min(offset+size, len(ids))
	for _, id := range ids[offset:end] {
		m := s.msgs[id]
		if m == nil || m.folder != f.id {
			out = append(out, map[string]any{"id": id, "@removed": map[string]string{"reason": "deleted"}})
			continue
		}
		out = append(out, s.msgJSON(m, immutable))
	}
	link := s.base() + "/users/" + stubUser + "/mailFolders/" + f.id + "/messages/delta?"
	v := map[string]any{"value": out}
	if end < len(ids) {
		v["@odata.nextLink"] = link + "$skiptoken=" + strconv.Itoa(since) + "." + strconv.Itoa(upto) + "&offset=" + strconv.Itoa(end)
	} else {
		v["@odata.deltaLink"] = link + "$deltatoken=" + strconv.Itoa(upto)
	}
	return 200, v, nil
}

func (s *stub) serveBatch(w http.ResponseWriter, r *http.Request, body []byte) {
	var in struct {
		Requests []struct {
			ID      string            `json:"id"`
			Method  string            `json:"method"`
			URL     string            `json:"url"`
			Headers map[string]string `json:"headers"`
			Body    json.RawMessage   `json:"body"`
		} `json:"requests"`
	}
	if err := json.Unmarshal(body, &in); err != nil || len(in.Requests) > 20 {
		writeErr(w, 400, "BadRequest", "bad batch")
		return
	}
	var out []map[string]any
	for _, it := range in.Requests {
		u, _ := url.Parse(it.URL)
		h := http.Header{}
		for k, v := range it.Headers {
			h.Set(k, v)
		}
		status, v, _ := s.route(it.Method, u.Path, u.Query(), it.Body, h)
		out = append(out, map[string]any{"id": it.ID, "status": status, "headers": map[string]string{"Content-Type": "application/json"}, "body": v})
	}
	writeJSON(w, 200, map[string]any{"responses": out})
}

// memState is an in-memory StateStore.
type memState struct {
	mu sync.Mutex
	m  map[string]string
}

func newMemState() *memState { return &memState{m: map[string]string{}} }

func (s *memState) Get(_ context.Context, k string) (string, bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	v, ok := s.m[k]
	return v, ok, nil
}

func (s *memState) Put(_ context.Context, k, v string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.m[k] = v
	return nil
}

func (s *memState) Delete(_ context.Context, k string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.m, k)
	return nil
}

func (s *memState) snapshot() map[string]string {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := map[string]string{}
	for k, v := range s.m {
		out[k] = v
	}
	return out
}

// stubWithFolders is a stub with Inbox/Import, Inbox/Processed and
// Inbox/Error.
func stubWithFolders(t *testing.T) *stub {
	s := newStub(t)
	s.addFolder("IMPORT", "Import", "INBOX", "")
	s.addFolder("PROCESSED", "Processed", "INBOX", "")
	s.addFolder("ERROR", "Error", "INBOX", "")
	return s
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), hang)
	t.Cleanup(cancel)
	return ctx
}
