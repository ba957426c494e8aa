package graph

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mailpipe/mailpipe/internal/auth"
	"github.com/mailpipe/mailpipe/internal/mailbox"
)

func listRefs(t *testing.T, src *Source, limit int) []mailbox.Ref {
	t.Helper()
	l, err := src.List(ctxT(t), limit)
	if err != nil {
		t.Fatalf("List: %v", err)
	}
	return l.Refs
}

type got struct {
	ref  mailbox.Ref
	size int64
	body []byte
}

func fetchAll(t *testing.T, src *Source, refs []mailbox.Ref) ([]got, error) {
	t.Helper()
	var out []got
	err := src.Fetch(ctxT(t), refs, func(m *mailbox.Message) error {
		b, err := io.ReadAll(m.Body)
		if err != nil {
			return err
		}
		out = append(out, got{m.Ref, m.Size, b})
		return nil
	})
	return out, err
}

func ids(refs []mailbox.Ref) []string {
	var out []string
	for _, r := range refs {
		out = append(out, r.ID)
	}
	return out
}

// The one classification table, walked: every rule gives its kind, and the
// answers Graph gives for throttling, permissions and missing mailboxes give
// the documented kinds and hints.
func TestErrorTable(t *testing.T) {
	s := newStub(t)
	src := s.source(t, nil)
	for _, r := range rules {
		status := r.status
		if status == 0 {
			status = 400
			if r.kind == mailbox.NotFound {
				status = 404
			}
		}
		err := src.classify("op", "f", &apiError{Status: status, Code: r.code})
		if k := mailbox.KindOf(err); k != r.kind {
			t.Errorf("rule %d %q: kind %v, want %v", r.status, r.code, k, r.kind)
		}
	}
	cases := []struct {
		status int
		code   string
		ra     time.Duration
		kind   mailbox.Kind
		hint   string
	}{
		{429, "ApplicationThrottled", 2128 * time.Millisecond, mailbox.Throttled, ""},
		{429, "", 0, mailbox.Throttled, ""},
		{503, "", 0, mailbox.Transient, ""},
		{504, "", 0, mailbox.Transient, ""},
		{500, "UnknownError", 0, mailbox.Transient, ""},
		{401, "InvalidAuthenticationToken", 0, mailbox.Auth, "https://127.0.0.1/.default"},
		{403, "ErrorAccessDenied", 0, mailbox.Auth, "Mail.ReadWrite with admin consent"},
		{403, "Authorization_RequestDenied", 0, mailbox.Auth, "Mail.ReadWrite"},
		{404, "ErrorItemNotFound", 0, mailbox.NotFound, ""},
		{404, "ErrorInvalidUser", 0, mailbox.NotFound, stubUser},
		{404, "MailboxNotEnabledForRESTAPI", 0, mailbox.NotFound, stubUser},
		{404, "ErrorToFolderNotFound", 0, mailbox.NotFound, "--create-folders"},
		{410, "SyncStateNotFound", 0, mailbox.Transient, ""},
		{400, "ErrorInvalidIdMalformed", 0, mailbox.Permanent, ""},
		{413, "", 0, mailbox.Permanent, ""},
	}
	for _, c := range cases {
		err := src.classify("op", "f", &apiError{Status: c.status, Code: c.code, RetryAfter: c.ra})
		var me *mailbox.Error
		if !errors.As(err, &me) {
			t.Fatalf("%d %s: not a *mailbox.Error: %v", c.status, c.code, err)
		}
		if me.Kind != c.kind {
			t.Errorf("%d %s: kind %v, want %v", c.status, c.code, me.Kind, c.kind)
		}
		if want := c.ra; c.kind == mailbox.Throttled && me.RetryAfter != want && !(want == 0 && me.RetryAfter == time.Second) {
			t.Errorf("%d %s: RetryAfter %v", c.status, c.code, me.RetryAfter)
		}
		if c.hint != "" && !strings.Contains(err.Error(), c.hint) {
			t.Errorf("%d %s: %q lacks %q", c.status, c.code, err, c.hint)
		}
	}
	// Delegated identities get the delegated hint.
	del := s.source(t, func(o *Options) { o.Delegated = true })
	err := del.classify("op", "", &apiError{Status: 403, Code: "ErrorAccessDenied"})
	if !strings.Contains(err.Error(), "Mail.ReadWrite.Shared") || !strings.Contains(err.Error(), "Full Access") {
		t.Errorf("delegated 403 hint: %v", err)
	}
	// Token endpoint errors: permanent ones need an operator.
	if k := mailbox.KindOf(src.classify("op", "", &auth.Error{Permanent: true})); k != mailbox.Auth {
		t.Errorf("permanent token error: %v", k)
	}
	if k := mailbox.KindOf(src.classify("op", "", &auth.Error{})); k != mailbox.Transient {
		t.Errorf("transient token error: %v", k)
	}
	if k := mailbox.KindOf(src.classify("op", "", errors.New("connection reset"))); k != mailbox.Transient {
		t.Errorf("network error: %v", k)
	}
}

func TestNewValidates(t *testing.T) {
	s := newStub(t)
	cfg := s.config()
	if _, err := New(Options{Mailbox: cfg}); err == nil {
		t.Error("New without tokens succeeded")
	}
	bad := cfg
	bad.Graph.BaseURL = "http://graph.example.com/v1.0"
	if _, err := New(Options{Mailbox: bad, Tokens: &testTokens{}}); err == nil {
		t.Error("New with a plain-http remote base URL succeeded")
	}
	noAddr := cfg
	noAddr.Address = ""
	if _, err := New(Options{Mailbox: noAddr, Tokens: &testTokens{}}); err == nil {
		t.Error("New without an address succeeded")
	}
	ca := cfg
	ca.Graph.CAFile = "/nonexistent/ca.pem"
	if _, err := New(Options{Mailbox: ca, Tokens: &testTokens{}}); err == nil || !strings.Contains(err.Error(), "ca_file") {
		t.Errorf("missing ca_file: %v", err)
	}
}

// Every request asks for immutable ids and carries the token, $batch items
// included; listing, fetching and moving work end to end with the ids the
// server gives for ImmutableId.
func TestImmutableIDsAndTokenOnEveryRequest(t *testing.T) {
	s := stubWithFolders(t)
	var want []string
	for i := range 5 {
		s.addMsg("IMPORT", fmt.Sprintf("Subject: m%d\r\n\r\nbody %d\r\n", i, i))
		want = append(want, fmt.Sprintf("Subject: m%d\r\n\r\nbody %d\r\n", i, i))
	}
	for _, discovery := range []string{"delta", "list"} {
		t.Run(discovery, func(t *testing.T) {
			src := s.source(t, func(o *Options) { o.Mailbox.Graph.Discovery = discovery })
			refs := listRefs(t, src, 0)
			if len(refs) != 5 {
				t.Fatalf("listed %d", len(refs))
			}
			for i, r := range refs {
				if !strings.HasPrefix(r.ID, "AAMkMSG-") || r.Folder != "Inbox/Import" || r.Mailbox != "shared" ||
					r.Size != int64(len(want[i])) || r.Received.IsZero() {
					t.Errorf("ref %d: %+v", i, r)
				}
			}
			msgs, err := fetchAll(t, src, refs)
			if err != nil {
				t.Fatal(err)
			}
			for i, m := range msgs {
				if string(m.body) != want[i] || m.size != int64(len(want[i])) {
					t.Errorf("message %d: %q (size %d)", i, m.body, m.size)
				}
			}
		})
	}
	src := s.source(t, nil)
	refs := listRefs(t, src, 0)
	if err := src.Move(ctxT(t), refs, mailbox.ToProcessed); err != nil {
		t.Fatal(err)
	}
	if n := s.count("PROCESSED"); n != 5 {
		t.Fatalf("processed holds %d", n)
	}
	var batches int
	for _, r := range s.requests() {
		if !strings.Contains(r.Header.Get("Prefer"), `IdType="ImmutableId"`) {
			t.Errorf("%s %s without Prefer IdType", r.Method, r.URI)
		}
		if !strings.HasPrefix(r.Header.Get("Authorization"), "Bearer hdr.tok-") {
			t.Errorf("%s %s without the token", r.Method, r.URI)
		}
		if strings.HasSuffix(r.URI, "/$batch") {
			batches++
			var b struct {
				Requests []batchRequest `json:"requests"`
			}
			if err := json.Unmarshal(r.Body, &b); err != nil {
				t.Fatal(err)
			}
			for _, it := range b.Requests {
				if it.Headers["Prefer"] != preferImmutable {
					t.Errorf("batch item %s without Prefer IdType: %v", it.URL, it.Headers)
				}
			}
		}
	}
	if batches != 1 {
		t.Errorf("%d $batch requests for 5 moves, want 1", batches)
	}
}

// @odata.nextLink is followed exactly as given (no re-encoding, no decoding
// of %24), and tokens go only to the configured host: a link to another
// host name gets no Authorization header.
func TestNextLinkVerbatimAndAllowedHost(t *testing.T) {
	s := stubWithFolders(t)
	u, _ := url.Parse(s.srv.URL)
	odd := "/v1.0/users/" + stubUser + "/mailFolders/IMPORT/messages?%24skiptoken=a%2Fb%3D%3D&%24top=2&x=%27q%27"
	var page2 atomic.Int32
	s.hook = func(w http.ResponseWriter, r *http.Request, _ []byte) bool {
		switch {
		case strings.Contains(r.URL.Path, "/mailFolders/IMPORT/messages") && r.URL.Query().Get("$skiptoken") == "":
			writeJSON(w, 200, map[string]any{"value": []any{}, "@odata.nextLink": s.srv.URL + odd})
			return true
		case r.URL.Query().Get("$skiptoken") != "":
			page2.Add(1)
			if r.RequestURI != odd {
				t.Errorf("nextLink sent as %q, want %q", r.RequestURI, odd)
			}
			next := ""
			if r.Host == u.Host { // then try another host name for the same server
				next = "https://localhost:" + u.Port() + odd
			} else if r.Header.Get("Authorization") != "" {
				t.Errorf("token sent to %s, which is not the configured host", r.Host)
			}
			v := map[string]any{"value": []any{}}
			if next != "" {
				v["@odata.nextLink"] = next
			}
			writeJSON(w, 200, v)
			return true
		}
		return false
	}
	// Trust the test certificate for "localhost" too.
	hc := s.srv.Client()
	tr := hc.Transport.(*http.Transport).Clone()
	tr.TLSClientConfig.ServerName = "example.com"
	src := s.source(t, func(o *Options) {
		o.Mailbox.Graph.Discovery = "list"
		o.HTTPClient = &http.Client{Transport: tr}
	})
	if _, err := src.List(ctxT(t), 0); err != nil {
		t.Fatal(err)
	}
	if page2.Load() != 2 {
		t.Fatalf("followed %d nextLinks, want 2", page2.Load())
	}
}

// A 401 with a claims challenge gets a token for the claims (through
// TokenWithClaims) and the request is sent again; a plain 401 invalidates
// the token once and then is an Auth error with a hint.
func TestUnauthorized(t *testing.T) {
	s := stubWithFolders(t)
	var challenged atomic.Int32
	s.hook = func(w http.ResponseWriter, r *http.Request, _ []byte) bool {
		if r.Header.Get("Authorization") == "Bearer hdr.tok-0.sig" && challenged.Add(1) == 1 {
			w.Header().Set("WWW-Authenticate", `Bearer realm="", error="insufficient_claims", claims="eyJhY2Nlc3NfdG9rZW4iOnsibmJmIjp7ImVzc2VudGlhbCI6dHJ1ZX19fQ=="`)
			writeErr(w, 401, "InvalidAuthenticationToken", "claims challenge")
			return true
		}
		return false
	}
	toks := &claimsTokens{}
	src := s.source(t, func(o *Options) { o.Tokens = toks })
	if _, err := src.List(ctxT(t), 0); err != nil {
		t.Fatalf("List after a claims challenge: %v", err)
	}
	if len(toks.claims) != 1 || !strings.Contains(toks.claims[0], `"nbf"`) {
		t.Fatalf("claims passed: %q", toks.claims)
	}

	s2 := stubWithFolders(t)
	s2.hook = func(w http.ResponseWriter, r *http.Request, _ []byte) bool {
		writeErr(w, 401, "InvalidAuthenticationToken", "Access token validation failure. Invalid audience.")
		return true
	}
	plain := &testTokens{}
	src2 := s2.source(t, func(o *Options) { o.Tokens = plain })
	_, err := src2.List(ctxT(t), 0)
	var me *mailbox.Error
	if !errors.As(err, &me) || me.Kind != mailbox.Auth || !strings.Contains(err.Error(), "not one for outlook.office365.com") {
		t.Fatalf("List with a rejected token: %v", err)
	}
	if plain.invalidated != 1 || len(s2.requests()) != 2 {
		t.Fatalf("invalidated %d times, %d requests; want 1 and 2", plain.invalidated, len(s2.requests()))
	}
}

// A 429 with a fractional Retry-After pauses the mailbox for at least that
// long, and the request is sent again (not returned as an error).
func TestThrottledRequestWaitsRetryAfter(t *testing.T) {
	s := stubWithFolders(t)
	s.addMsg("IMPORT", "Subject: x\r\n\r\nx")
	var n atomic.Int32
	s.hook = func(w http.ResponseWriter, r *http.Request, _ []byte) bool {
		if strings.HasSuffix(r.URL.Path, "/delta") && n.Add(1) <= 2 {
			w.Header().Set("Retry-After", "0.35")
			writeErr(w, 429, "ApplicationThrottled", "Application is over its MailboxConcurrency limit.")
			return true
		}
		return false
	}
	src := s.source(t, nil)
	start := time.Now()
	refs := listRefs(t, src, 0)
	if len(refs) != 1 {
		t.Fatalf("listed %d", len(refs))
	}
	if el := time.Since(start); el < 700*time.Millisecond {
		t.Fatalf("two 429s with Retry-After 0.35 passed in %s", el)
	}
	st := src.Stats()
	lst := src.Limiter().Stats()
	if st.Throttled != 2 || lst.Throttled != 2 || lst.Waited < 700*time.Millisecond {
		t.Fatalf("source %+v, limiter %+v", st, lst)
	}
}

// Items throttled inside a 200 $batch are sent again, alone, after their
// Retry-After; every item counts against the budget.
func TestBatchResendsThrottledItems(t *testing.T) {
	s := stubWithFolders(t)
	for i := range 3 {
		s.addMsg("IMPORT", fmt.Sprintf("Subject: %d\r\n\r\n", i))
	}
	var batches [][]batchRequest
	s.hook = func(w http.ResponseWriter, r *http.Request, body []byte) bool {
		if !strings.HasSuffix(r.URL.Path, "/$batch") {
			return false
		}
		var in struct {
			Requests []batchRequest `json:"requests"`
		}
		_ = json.Unmarshal(body, &in)
		batches = append(batches, in.Requests)
		if len(batches) > 1 {
			return false
		}
		// First batch: the middle item is throttled, the others move.
		var out []map[string]any
		for k, it := range in.Requests {
			if k == 1 {
				out = append(out, map[string]any{"id": it.ID, "status": 429,
					"headers": map[string]string{"Retry-After": "0.3"},
					"body":    errBody("ApplicationThrottled", "MailboxConcurrency")})
				continue
			}
			u, _ := url.Parse(it.URL)
			b, _ := json.Marshal(it.Body)
			h := http.Header{"Prefer": {it.Headers["Prefer"]}}
			status, v, _ := s.route(it.Method, u.Path, u.Query(), b, h)
			out = append(out, map[string]any{"id": it.ID, "status": status, "body": v})
		}
		writeJSON(w, 200, map[string]any{"responses": out})
		return true
	}
	src := s.source(t, nil)
	refs := listRefs(t, src, 0)
	before := src.Stats()
	start := time.Now()
	if err := src.Move(ctxT(t), refs, mailbox.ToError); err != nil {
		t.Fatal(err)
	}
	if el := time.Since(start); el < 300*time.Millisecond {
		t.Errorf("re-sent before Retry-After: %s", el)
	}
	if s.count("ERROR") != 3 || s.count("IMPORT") != 0 {
		t.Fatalf("error folder %d, import %d", s.count("ERROR"), s.count("IMPORT"))
	}
	if len(batches) != 2 || len(batches[0]) != 3 || len(batches[1]) != 1 || batches[1][0].URL != batches[0][1].URL {
		t.Fatalf("batches: %+v", batches)
	}
	after := src.Stats()
	if after.Moved != 3 || after.Throttled-before.Throttled != 1 {
		t.Errorf("stats %+v", after)
	}
	// Units: the destination folder's lookup, 1 delta round (which
	// messages are still there), then 3 + 1 batch items.
	if u := after.Units - before.Units; u != 6 {
		t.Errorf("units %d for the move, want 6", u)
	}
}

// A 404 to a move is settled by looking the message up by immutable id.
func TestMove404Lookup(t *testing.T) {
	for _, batch := range []bool{true, false} {
		t.Run(fmt.Sprintf("batch=%v", batch), func(t *testing.T) {
			s := stubWithFolders(t)
			a := s.addMsg("IMPORT", "Subject: a\r\n\r\n")
			b := s.addMsg("IMPORT", "Subject: b\r\n\r\n")
			c := s.addMsg("IMPORT", "Subject: c\r\n\r\n")
			s.addMsg("IMPORT", "Subject: d\r\n\r\n")
			var lookups atomic.Int32
			s.hook = func(w http.ResponseWriter, r *http.Request, body []byte) bool {
				if r.Method == http.MethodGet && strings.Contains(r.URL.Path, "/users/"+stubUser+"/messages/") && !strings.HasSuffix(r.URL.Path, "$value") {
					lookups.Add(1)
					if r.URL.Query().Get("$select") != "id,parentFolderId" {
						t.Errorf("lookup %s", r.RequestURI)
					}
				}
				if r.Method != http.MethodPost {
					return false
				}
				// The moves "time out" after happening (a: moved to the
				// destination), b was moved elsewhere by someone else, c
				// deleted, d really not moved: all answer 404.
				s.mu.Lock()
				if m := s.msgs[a]; m.folder == "IMPORT" {
					s.moveLocked(m, "ERROR")
					s.moveLocked(s.msgs[b], "SENT")
					delete(s.msgs, c)
				}
				s.mu.Unlock()
				if strings.HasSuffix(r.URL.Path, "/$batch") {
					var in struct {
						Requests []batchRequest `json:"requests"`
					}
					_ = json.Unmarshal(body, &in)
					var out []map[string]any
					for _, it := range in.Requests {
						out = append(out, map[string]any{"id": it.ID, "status": 404, "body": errBody("ErrorItemNotFound", "not found")})
					}
					writeJSON(w, 200, map[string]any{"responses": out})
					return true
				}
				writeErr(w, 404, "ErrorItemNotFound", "not found")
				return true
			}
			src := s.source(t, func(o *Options) { o.Mailbox.Graph.DisableBatch = !batch })
			refs := listRefs(t, src, 0)
			if len(refs) != 4 {
				t.Fatalf("listed %d", len(refs))
			}
			// Moved between the listing and the move: delta does not
			// know yet, the move answers 404.
			if err := src.Move(ctxT(t), refs[:3], mailbox.ToError); err != nil {
				t.Fatalf("Move of a (done), b (elsewhere), c (gone): %v", err)
			}
			err := src.Move(ctxT(t), refs[3:], mailbox.ToError)
			var me *mailbox.Error
			if !errors.As(err, &me) || me.Kind != mailbox.NotFound || !strings.Contains(err.Error(), "still in its folder") {
				t.Fatalf("Move of d (still there): %v", err)
			}
			if lookups.Load() != 4 {
				t.Errorf("%d lookups, want 4", lookups.Load())
			}
			if st := src.Stats(); st.Moved != 1 {
				t.Errorf("moved %d, want 1 (a)", st.Moved)
			}
		})
	}
}

// A move refused with another error (a repeated move after a lost answer)
// is settled by a look-up too: in the destination it is done; still in its
// folder the refusal is the error.
func TestMoveRefusedButDone(t *testing.T) {
	s := stubWithFolders(t)
	a := s.addMsg("IMPORT", "Subject: a\r\n\r\n")
	s.addMsg("IMPORT", "Subject: b\r\n\r\n")
	s.hook = func(w http.ResponseWriter, r *http.Request, body []byte) bool {
		if !strings.HasSuffix(r.URL.Path, "/$batch") {
			return false
		}
		s.moveMsg(a, "PROCESSED") // the first attempt went through
		var in struct {
			Requests []batchRequest `json:"requests"`
		}
		_ = json.Unmarshal(body, &in)
		var out []map[string]any
		for _, it := range in.Requests {
			out = append(out, map[string]any{"id": it.ID, "status": 400, "body": errBody("ErrorMoveCopyFailed", "The move or copy operation failed.")})
		}
		writeJSON(w, 200, map[string]any{"responses": out})
		return true
	}
	src := s.source(t, nil)
	refs := listRefs(t, src, 0)
	if err := src.Move(ctxT(t), refs[:1], mailbox.ToProcessed); err != nil {
		t.Fatalf("refused move of a message already in the destination: %v", err)
	}
	err := src.Move(ctxT(t), refs[1:], mailbox.ToProcessed)
	var me *mailbox.Error
	if !errors.As(err, &me) || me.Kind != mailbox.Permanent || !strings.Contains(err.Error(), "ErrorMoveCopyFailed") {
		t.Fatalf("refused move of a message still there: %v", err)
	}
}

// Fetch streams up to 4 bodies at once but calls fn in order, one at a
// time; sizes are exact without Content-Length; large bodies are spooled.
func TestFetchOrderWindowAndSpool(t *testing.T) {
	s := stubWithFolders(t)
	s.noLength = true
	s.valueDelay = 20 * time.Millisecond
	var want [][]byte
	for i := range 12 {
		raw := fmt.Sprintf("Subject: %d\r\n\r\n%s", i, strings.Repeat("x", i*1000))
		if i == 5 {
			raw = "Subject: big\r\n\r\n" + strings.Repeat("0123456789abcdef", (3<<20)/16)
		}
		s.addMsg("IMPORT", raw)
		want = append(want, []byte(raw))
	}
	src := s.source(t, nil)
	refs := listRefs(t, src, 0)
	var inFn atomic.Int32
	var order []string
	err := src.Fetch(ctxT(t), refs, func(m *mailbox.Message) error {
		if inFn.Add(1) != 1 {
			t.Error("fn called concurrently")
		}
		defer inFn.Add(-1)
		b, err := io.ReadAll(m.Body)
		if err != nil {
			return err
		}
		i := len(order)
		order = append(order, m.Ref.ID)
		if !bytes.Equal(b, want[i]) || m.Size != int64(len(want[i])) {
			t.Errorf("message %d: %d bytes (Size %d), want %d", i, len(b), m.Size, len(want[i]))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(order, ids(refs)) {
		t.Fatalf("order %v, want %v", order, ids(refs))
	}
	s.mu.Lock()
	peak := s.peak
	s.mu.Unlock()
	if peak > 4 {
		t.Errorf("%d requests in flight, want at most 4", peak)
	}
}

// A 504 on one $value does not stop the others; it is not re-sent at once
// (it would time out again) and comes back as a Transient error. A message
// deleted meanwhile (404) is skipped.
func TestFetch504AndGone(t *testing.T) {
	s := stubWithFolders(t)
	var idsIn []string
	for i := range 4 {
		idsIn = append(idsIn, s.addMsg("IMPORT", fmt.Sprintf("Subject: %d\r\n\r\n", i)))
	}
	var valueCalls atomic.Int32
	s.hook = func(w http.ResponseWriter, r *http.Request, _ []byte) bool {
		if strings.HasSuffix(r.URL.Path, "/$value") {
			valueCalls.Add(1)
			if strings.Contains(r.URL.Path, idsIn[1]) {
				writeErr(w, 504, "UnknownError", "")
				return true
			}
			if strings.Contains(r.URL.Path, idsIn[2]) {
				writeErr(w, 404, "ErrorItemNotFound", "The specified object was not found in the store.")
				return true
			}
		}
		return false
	}
	src := s.source(t, nil)
	refs := listRefs(t, src, 0)
	msgs, err := fetchAll(t, src, refs)
	if len(msgs) != 2 || msgs[0].ref.ID != idsIn[0] || msgs[1].ref.ID != idsIn[3] {
		t.Fatalf("delivered %d messages: %+v", len(msgs), msgs)
	}
	var me *mailbox.Error
	if !errors.As(err, &me) || me.Kind != mailbox.Transient || !strings.Contains(err.Error(), "504") {
		t.Fatalf("error %v", err)
	}
	if valueCalls.Load() != 4 {
		t.Errorf("%d $value requests, want 4 (no immediate retry of the 504)", valueCalls.Load())
	}
	// The 404 one is no longer listed.
	if left := listRefs(t, src, 0); len(left) != 3 || slices.Contains(ids(left), idsIn[2]) {
		t.Errorf("listed after the 404: %v", ids(left))
	}
}

// Fetch and Move skip messages no longer in their folder, also when another
// client moved them: a delta round (one request) tells.
func TestSkipsMessagesMovedAway(t *testing.T) {
	s := stubWithFolders(t)
	for i := range 4 {
		s.addMsg("IMPORT", fmt.Sprintf("Subject: %d\r\n\r\n", i))
	}
	src := s.source(t, nil)
	refs := listRefs(t, src, 0)
	s.moveMsg(refs[1].ID, "PROCESSED") // another worker
	if err := src.Move(ctxT(t), refs[3:], mailbox.ToError); err != nil {
		t.Fatal(err)
	}
	msgs, err := fetchAll(t, src, refs)
	if err != nil {
		t.Fatal(err)
	}
	if len(msgs) != 2 || msgs[0].ref.ID != refs[0].ID || msgs[1].ref.ID != refs[2].ID {
		t.Fatalf("fetched %d", len(msgs))
	}
	// Moving the moved ones elsewhere is a no-op.
	if err := src.Move(ctxT(t), refs[1:2], mailbox.ToError); err != nil {
		t.Fatal(err)
	}
	if s.count("PROCESSED") != 1 || s.count("ERROR") != 1 {
		t.Fatalf("processed %d error %d", s.count("PROCESSED"), s.count("ERROR"))
	}
}

// The delta link is stored only once every message seen before it has been
// moved away; a restart resumes from it; an expired link (410) gives a full
// resynchronization.
func TestDeltaLinkStoredOnlyWhenSafe(t *testing.T) {
	s := stubWithFolders(t)
	for i := range 3 {
		s.addMsg("IMPORT", fmt.Sprintf("Subject: %d\r\n\r\n", i))
	}
	state := newMemState()
	src := s.source(t, func(o *Options) { o.State = state })
	refs := listRefs(t, src, 0)
	if len(refs) != 3 {
		t.Fatalf("listed %d", len(refs))
	}
	if len(state.snapshot()) != 0 {
		t.Fatalf("stored a delta link while 3 messages were pending: %v", state.snapshot())
	}
	if err := src.Move(ctxT(t), refs[:2], mailbox.ToProcessed); err != nil {
		t.Fatal(err)
	}
	if len(state.snapshot()) != 0 {
		t.Fatalf("stored a delta link while 1 message was pending")
	}
	if err := src.Move(ctxT(t), refs[2:], mailbox.ToProcessed); err != nil {
		t.Fatal(err)
	}
	st := state.snapshot()
	if len(st) != 1 {
		t.Fatalf("no delta link stored after everything was moved: %v", st)
	}
	var link string
	for k, v := range st {
		link = v
		if strings.Trim(k, "abcdefghijklmnopqrstuvwxyz0123456789._-") != "" {
			t.Errorf("state key %q has other characters", k)
		}
	}
	// A restart resumes from the link: no full synchronization.
	late := s.addMsg("IMPORT", "Subject: late\r\n\r\n")
	n0 := len(s.requests())
	next := s.source(t, func(o *Options) { o.State = state })
	got := listRefs(t, next, 0)
	if len(got) != 1 || got[0].ID != late {
		t.Fatalf("after restart: %v", ids(got))
	}
	for _, r := range s.requests()[n0:] {
		if strings.Contains(r.URI, "/delta") && !strings.Contains(r.URI, "deltatoken") {
			t.Errorf("full synchronization after restart: %s", r.URI)
		}
	}
	// An expired link: 410, then a full synchronization.
	_ = state.Put(context.Background(), keyOf(state), strings.Replace(link, "deltatoken=", "deltatoken=x", 1))
	again := s.source(t, func(o *Options) { o.State = state })
	got = listRefs(t, again, 0)
	if len(got) != 1 || got[0].ID != late {
		t.Fatalf("after 410: %v", ids(got))
	}
}

func keyOf(m *memState) string {
	for k := range m.snapshot() {
		return k
	}
	return ""
}

// Folder paths: the inbox under its localized name, quotes in names, paging
// of child folders, and a missing folder named with what exists there.
func TestFolderResolution(t *testing.T) {
	s := newStub(t)
	s.mu.Lock()
	s.folders["INBOX"].name = "Postvak IN"
	s.mu.Unlock()
	s.addFolder("OB", "O'Brien", "INBOX", "")
	s.addFolder("OBSUB", "Facturen 2025", "OB", "")
	s.addFolder("TOP", "Projects", "ROOT", "")
	s.addMsg("OBSUB", "Subject: a\r\n\r\n")
	for _, path := range []string{"Postvak IN/O'Brien/Facturen 2025", "Inbox/O'Brien/Facturen 2025", " inbox / O'Brien /Facturen 2025/"} {
		src := s.source(t, func(o *Options) { o.Mailbox.Folders.Import = path })
		refs := listRefs(t, src, 0)
		if len(refs) != 1 {
			t.Errorf("%q: listed %d", path, len(refs))
		}
	}
	var sawQuote bool
	for _, r := range s.requests() {
		if u, _ := url.Parse(r.URI); u != nil && u.Query().Get("$filter") == "displayName eq 'O''Brien'" {
			sawQuote = true
		}
	}
	if !sawQuote {
		t.Error("no childFolders $filter with the quote doubled")
	}
	src := s.source(t, func(o *Options) { o.Mailbox.Folders.Import = "Projects/Missing" })
	_, err := src.List(ctxT(t), 0)
	var me *mailbox.Error
	if !errors.As(err, &me) || me.Kind != mailbox.NotFound || !strings.Contains(err.Error(), `"Missing"`) ||
		!strings.Contains(err.Error(), "in Projects") || !strings.Contains(err.Error(), "no folders there") {
		t.Fatalf("missing folder: %v", err)
	}
	src = s.source(t, func(o *Options) { o.Mailbox.Folders.Import = "Nope" })
	_, err = src.List(ctxT(t), 0)
	if !errors.As(err, &me) || me.Kind != mailbox.NotFound || !strings.Contains(err.Error(), "Postvak IN, Projects, Sent Items") {
		t.Fatalf("missing top folder: %v", err)
	}
}

// Check reports counts and creates missing processed and error folders
// (parents too).
func TestCheckCreates(t *testing.T) {
	s := newStub(t)
	s.addFolder("IMPORT", "Import", "INBOX", "")
	s.addMsg("IMPORT", "Subject: a\r\n\r\n")
	src := s.source(t, func(o *Options) {
		o.Mailbox.Folders.Processed = "Archive 2025/Processed"
		o.Mailbox.Folders.Error = "Inbox/Import/Error"
	})
	st, err := src.Check(ctxT(t), false)
	if mailbox.KindOf(err) != mailbox.NotFound || len(st) != 3 || !st[0].Exists || st[0].Messages != 1 || st[1].Exists || st[2].Exists {
		t.Fatalf("Check: %+v, %v", st, err)
	}
	st, err = src.Check(ctxT(t), true)
	if err != nil || len(st) != 3 || !st[1].Exists || !st[2].Exists {
		t.Fatalf("Check create: %+v, %v", st, err)
	}
	if _, err := src.Check(ctxT(t), true); err != nil {
		t.Fatalf("second Check: %v", err)
	}
	refs := listRefs(t, src, 0)
	if err := src.Move(ctxT(t), refs, mailbox.ToProcessed); err != nil {
		t.Fatal(err)
	}
}

func TestSizeProperty(t *testing.T) {
	for _, c := range []struct {
		id   string
		want bool
	}{{"Integer 0xe08", true}, {"Integer 0x0E08", true}, {"integer 0x0e08", true}, {"Long 0x0E08", false}, {"Integer 0x0E09", false}, {"Integer", false}} {
		if got := isSizeProperty(c.id); got != c.want {
			t.Errorf("isSizeProperty(%q) = %v", c.id, got)
		}
	}
}
