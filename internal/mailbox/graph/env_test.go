package graph_test

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mailpipe/mailpipe/internal/auth"
	"github.com/mailpipe/mailpipe/internal/config"
	"github.com/mailpipe/mailpipe/internal/mailbox"
	"github.com/mailpipe/mailpipe/internal/mailbox/graph"
	"github.com/mailpipe/mailpipe/internal/testenv/graphfake"
	"github.com/mailpipe/mailpipe/internal/throttle"
)

// hang bounds waits that only fail when something deadlocks.
const hang = 2 * time.Minute

const appID = "7f1a8c2e-3b4d-4e5f-8a9b-0c1d2e3f4a5b"

// Tokens the fake accepts (JWT-shaped: the fake checks for two dots).
const (
	tokApp       = "h.app-readwrite.s"
	tokReadOnly  = "h.app-read.s"
	tokNoRoles   = "h.app-none.s"
	tokOutlook   = "h.app-outlook-audience.s"
	tokDelegated = "h.user-shared.s"
	svcUser      = "svc-import@contoso.test"
)

func claims() map[string]graphfake.Claims {
	return map[string]graphfake.Claims{
		tokApp:       {Audience: graphfake.ResourceGraph, AppID: appID, Roles: []string{"Mail.ReadWrite"}},
		tokReadOnly:  {Audience: graphfake.ResourceGraph, AppID: appID, Roles: []string{"Mail.Read"}},
		tokNoRoles:   {Audience: graphfake.ResourceGraph, AppID: appID},
		tokOutlook:   {Audience: "https://outlook.office365.com", AppID: appID, Roles: []string{"IMAP.AccessAsApp"}},
		tokDelegated: {Audience: graphfake.ResourceGraph, AppID: appID, UPN: svcUser, Scopes: []string{"Mail.ReadWrite.Shared"}},
	}
}

// staticTokens hands out one token.
type staticTokens struct{ tok string }

func (s staticTokens) Token(context.Context) (auth.Token, error) {
	return auth.Token{Value: s.tok, ExpiresOn: time.Now().Add(time.Hour)}, nil
}
func (staticTokens) Invalidate() {}

func startFake(t testing.TB) *graphfake.Server {
	t.Helper()
	g, err := graphfake.Start(graphfake.Options{ValidateToken: graphfake.StaticTokens(claims())})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(g.Close)
	return g
}

// memState is an in-memory StateStore (the NATS KV bucket in production).
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

// box is one mailbox on the fake with the settings of its Sources.
type box struct {
	t       testing.TB
	g       *graphfake.Server
	addr    string
	folders config.Folders
	graph   config.Graph
	tokens  auth.TokenSource
	app     *throttle.App
	state   *memState
	seq     int
	// delegated marks delegated tokens (for the 403 hint).
	delegated bool
}

var boxes atomic.Int64

func newBox(t testing.TB, g *graphfake.Server, opts graphfake.MailboxOptions) *box {
	t.Helper()
	addr := fmt.Sprintf("box%d@contoso.test", boxes.Add(1))
	g.AddMailbox(addr, opts)
	b := &box{
		t: t, g: g, addr: addr,
		folders: config.Folders{Import: "Inbox/Import", Processed: "Inbox/Processed", Error: "Inbox/Error"},
		graph:   config.Graph{BaseURL: g.BaseURL(), PageSize: 50, Timeout: 30 * time.Second},
		tokens:  staticTokens{tokApp}, app: throttle.NewApp(throttle.AppOptions{Name: "test"}), state: newMemState(),
	}
	return b
}

func (b *box) config() config.Mailbox {
	return config.Mailbox{Name: "invoices", Address: b.addr, Source: "graph", Folders: b.folders, Graph: b.graph}
}

// source returns a new Source (another worker, or a restarted one): same
// throttle App and state store.
func (b *box) source() *graph.Source {
	b.t.Helper()
	src, err := graph.New(graph.Options{Mailbox: b.config(), Tokens: b.tokens, App: b.app, HTTPClient: b.g.HTTPClient(),
		State: b.state, Delegated: b.delegated})
	if err != nil {
		b.t.Fatal(err)
	}
	b.t.Cleanup(func() { src.Close() })
	return src
}

// add delivers raw into folder as the newest message.
func (b *box) add(folder string, raw []byte) {
	b.seq++
	b.g.AddMessage(b.addr, folder, raw, time.Date(2025, 3, 1, 8, 0, 0, 0, time.UTC).Add(time.Duration(b.seq)*time.Second))
}

func (b *box) seed(n int) [][]byte {
	var out [][]byte
	for i := range n {
		raw := message(fmt.Sprintf("seed-%d", b.seq), i)
		b.add(b.folders.Import, raw)
		out = append(out, raw)
	}
	return out
}

func message(tag string, i int) []byte {
	return fmt.Appendf(nil, "From: sender@example.test\r\nTo: invoices@contoso.test\r\nSubject: %s %d\r\nMessage-ID: <%s-%d@example.test>\r\n\r\nInvoice %s %d\r\n", tag, i, tag, i, tag, i)
}

func ctxOf(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), hang)
	t.Cleanup(cancel)
	return ctx
}

// published is a stand-in for the bus: it deduplicates by DedupID, as
// JetStream's duplicate window does.
type published struct {
	mu     sync.Mutex
	byID   map[string][32]byte
	dups   int
	bodies int
}

func newPublished() *published { return &published{byID: map[string][32]byte{}} }

func (p *published) add(r mailbox.Ref, body []byte) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.bodies++
	if _, ok := p.byID[r.DedupID()]; ok {
		p.dups++
		return false
	}
	p.byID[r.DedupID()] = sha256.Sum256(body)
	return true
}

// importAll runs the importer's loop until the import folder is empty:
// List, then per batch Fetch (publishing each body), then Move what was
// published. Errors are retried after the wait the source suggests, as the
// importer does; it gives up after many.
func importAll(t testing.TB, src, mover mailbox.Source, pub *published, batch int) {
	t.Helper()
	ctx := ctxOf(t)
	// Without a mover, moves run in line (a Source is used by one
	// goroutine at a time); with one, a batch's moves overlap the next
	// batch's fetch, as in the importer.
	inline := mover == nil
	if inline {
		mover = src
	}
	failures := 0
	retry := func(err error) {
		t.Helper()
		failures++
		t.Logf("import pass failed (retrying): %v", err)
		if failures > 50 {
			t.Fatalf("import keeps failing: %v", err)
		}
		wait := mailbox.RetryAfterOf(err)
		if wait == 0 {
			wait = 50 * time.Millisecond
		}
		select {
		case <-time.After(wait):
		case <-ctx.Done():
			t.Fatal("import did not finish")
		}
	}
	for {
		l, err := src.List(ctx, 10*batch)
		if err != nil {
			retry(err)
			continue
		}
		if len(l.Refs) == 0 {
			return
		}
		var moving chan error
		for i := 0; i < len(l.Refs); i += batch {
			refs := l.Refs[i:min(i+batch, len(l.Refs))]
			var done []mailbox.Ref
			err := src.Fetch(ctx, refs, func(m *mailbox.Message) error {
				b, err := io.ReadAll(m.Body)
				if err != nil {
					return err
				}
				if int64(len(b)) != m.Size {
					t.Errorf("%s: %d bytes, Size %d", m.Ref, len(b), m.Size)
				}
				pub.add(m.Ref, b)
				done = append(done, m.Ref)
				return nil
			})
			if moving != nil {
				if merr := <-moving; merr != nil {
					err = errors.Join(err, merr)
				}
			}
			moving = make(chan error, 1)
			if inline {
				moving <- mover.Move(ctx, done, mailbox.ToProcessed)
			} else {
				go func(refs []mailbox.Ref) { moving <- mover.Move(ctx, refs, mailbox.ToProcessed) }(done)
			}
			if err != nil {
				if merr := <-moving; merr != nil {
					err = errors.Join(err, merr)
				}
				moving = nil
				retry(err)
				break
			}
		}
		if moving != nil {
			if err := <-moving; err != nil {
				retry(err)
			}
		}
	}
}
