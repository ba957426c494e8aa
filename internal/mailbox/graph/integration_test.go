package graph_test

import (
	"bytes"
	"errors"
	"io"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/mailpipe/mailpipe/internal/auth"
	"github.com/mailpipe/mailpipe/internal/config"
	"github.com/mailpipe/mailpipe/internal/devidp"
	"github.com/mailpipe/mailpipe/internal/mailbox"
	"github.com/mailpipe/mailpipe/internal/mailbox/graph"
	"github.com/mailpipe/mailpipe/internal/testenv/graphfake"
)

func keys(refs []mailbox.Ref) []string {
	var out []string
	for _, r := range refs {
		out = append(out, r.Key())
	}
	return out
}

func list(t *testing.T, src mailbox.Source) []mailbox.Ref {
	t.Helper()
	l, err := src.List(ctxOf(t), 0)
	if err != nil {
		t.Fatalf("List: %v", err)
	}
	return l.Refs
}

func wantKind(t *testing.T, what string, err error, k mailbox.Kind, texts ...string) {
	t.Helper()
	var me *mailbox.Error
	if !errors.As(err, &me) {
		t.Fatalf("%s: %v (%T), want a *mailbox.Error of kind %v", what, err, err, k)
	}
	if me.Kind != k {
		t.Errorf("%s: kind %v, want %v: %v", what, me.Kind, k, err)
	}
	for _, s := range texts {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("%s: %q does not mention %q", what, err, s)
		}
	}
}

// A whole import over Graph costs about two requests per message, as
// Exchange counts them: one $value and one move ($batch items count one
// each); listings and delta rounds are amortized.
func TestRequestsPerMessage(t *testing.T) {
	for _, c := range []struct {
		name      string
		discovery string
		batch     bool
	}{{"DeltaBatch", "delta", true}, {"ListBatch", "list", true}, {"DeltaNoBatch", "delta", false}} {
		t.Run(c.name, func(t *testing.T) {
			g := startFake(t)
			b := newBox(t, g, graphfake.MailboxOptions{})
			b.graph.Discovery = c.discovery
			b.graph.DisableBatch = !c.batch
			b.graph.PageSize = 200
			g.CreateFolderPath(b.addr, b.folders.Processed)
			const n = 300
			b.seed(n)
			g.ResetStats()
			src := b.source()
			pub := newPublished()
			importAll(t, src, b.source(), pub, 100)
			if len(pub.byID) != n || pub.dups != 0 {
				t.Fatalf("published %d distinct, %d duplicates; want %d, 0", len(pub.byID), pub.dups, n)
			}
			if got := g.Count(b.addr, b.folders.Processed); got != n {
				t.Fatalf("processed folder holds %d", got)
			}
			st := g.Stats()
			perMsg := float64(st.Requests) / n
			t.Logf("%d messages: %d requests (%.3f per message), %d HTTP round trips (%.3f per message), by kind %v",
				n, st.Requests, perMsg, st.HTTPRequests, float64(st.HTTPRequests)/n, st.ByKind)
			if perMsg > 2.1 {
				t.Errorf("%.3f requests per message, want about 2", perMsg)
			}
			if st.ByKind["messages.value"] != n || st.ByKind["messages.move"] != n {
				t.Errorf("$value %d, moves %d; want %d each", st.ByKind["messages.value"], st.ByKind["messages.move"], n)
			}
			if st.Throttled != 0 || st.ConcurrencyThrottled != 0 {
				t.Errorf("throttled %d (concurrency %d) without a storm", st.Throttled, st.ConcurrencyThrottled)
			}
		})
	}
}

// Two Sources of one mailbox (the importer's fetcher and mover) share its
// limits through the App: the server never sees more than 4 requests in
// flight, so it never answers MailboxConcurrency 429s.
func TestMailboxConcurrencySharedBySources(t *testing.T) {
	g := startFake(t)
	g.SetLatency(15 * time.Millisecond)
	b := newBox(t, g, graphfake.MailboxOptions{})
	g.CreateFolderPath(b.addr, b.folders.Processed)
	const n = 120
	b.seed(n)
	pub := newPublished()
	importAll(t, b.source(), b.source(), pub, 20)
	st := g.Stats()
	if len(pub.byID) != n || g.Count(b.addr, b.folders.Processed) != n {
		t.Fatalf("published %d, processed %d; want %d", len(pub.byID), g.Count(b.addr, b.folders.Processed), n)
	}
	if st.ConcurrencyThrottled != 0 || st.MaxInFlight > 4 {
		t.Fatalf("server saw %d requests in flight and answered %d MailboxConcurrency 429s", st.MaxInFlight, st.ConcurrencyThrottled)
	}
}

// Under a storm of 429s (fractional Retry-After) the source slows down (it
// waits each Retry-After instead of hammering), loses nothing, publishes
// nothing twice, and recovers when the storm ends.
func TestThrottleStorm(t *testing.T) {
	g := startFake(t)
	g.SetLatency(2 * time.Millisecond)
	b := newBox(t, g, graphfake.MailboxOptions{})
	g.CreateFolderPath(b.addr, b.folders.Processed)
	g.CreateFolderPath(b.addr, b.folders.Error)
	const n = 80
	msgs := b.seed(n)
	src := b.source()
	// Resolve folders and list before the storm, then let it break loose.
	if _, err := src.Check(ctxOf(t), false); err != nil {
		t.Fatal(err)
	}
	g.ResetStats()
	const storm, retry = 1500 * time.Millisecond, 250 * time.Millisecond
	g.ThrottleStorm(storm, retry)
	start := time.Now()
	pub := newPublished()
	importAll(t, src, b.source(), pub, 20)
	elapsed := time.Since(start)
	if len(pub.byID) != n || pub.dups != 0 {
		t.Fatalf("published %d distinct (%d duplicates), want %d and 0", len(pub.byID), pub.dups, n)
	}
	if got := g.Count(b.addr, b.folders.Processed); got != n || g.Count(b.addr, b.folders.Import) != 0 {
		t.Fatalf("processed %d, import %d", got, g.Count(b.addr, b.folders.Import))
	}
	got := g.Bodies(b.addr, b.folders.Processed)
	for i := range msgs {
		if !bytes.Equal(got[i], msgs[i]) {
			t.Fatalf("message %d changed", i)
		}
	}
	st := g.Stats()
	t.Logf("storm of %s with Retry-After %s: done in %s, %d throttled answers, %d requests for %d messages",
		storm, retry, elapsed.Round(time.Millisecond), st.Throttled, st.Requests, n)
	if st.Throttled == 0 || src.Stats().Throttled == 0 {
		t.Fatalf("no 429 seen: the storm did not hit")
	}
	if elapsed < storm {
		t.Errorf("finished in %s, before the %s storm ended", elapsed, storm)
	}
	// Waiting Retry-After between attempts bounds the 429s: about 4 (one
	// per request slot) per pause during the storm. Hammering would give
	// hundreds.
	if bound := int64(storm/retry+2) * 4 * 2; st.Throttled > bound {
		t.Errorf("%d throttled answers during a %s storm with Retry-After %s, want at most %d", st.Throttled, storm, retry, bound)
	}
}

// A 504 on the $value of a large message (Exchange times out on them) is a
// Transient error for that message; the others are delivered, the 504 is
// not re-sent at once, and the message comes through once the server
// copes.
func TestGatewayTimeoutOnLargeValue(t *testing.T) {
	g := startFake(t)
	b := newBox(t, g, graphfake.MailboxOptions{})
	// (The listing reports sizes; the fake's delta ignores $expand.)
	b.graph.Discovery = "list"
	small1, small2 := message("small", 1), message("small", 2)
	big := append(message("big", 0), bytes.Repeat([]byte("A"), 3<<20)...)
	b.add(b.folders.Import, small1)
	b.add(b.folders.Import, big)
	b.add(b.folders.Import, small2)
	g.SetLimits(graphfake.Limits{ValueTimeoutBytes: 2 << 20, ValueTimeoutAfter: 300 * time.Millisecond})
	src := b.source()
	refs := list(t, src)
	if len(refs) != 3 || refs[1].Size != int64(len(big)) {
		t.Fatalf("listed %d, big size %d", len(refs), refs[1].Size)
	}
	g.ResetStats()
	var got [][]byte
	err := src.Fetch(ctxOf(t), refs, func(m *mailbox.Message) error {
		body, err := io.ReadAll(m.Body)
		got = append(got, body)
		return err
	})
	wantKind(t, "Fetch with a 504 on the large message", err, mailbox.Transient, "504")
	if len(got) != 2 || !bytes.Equal(got[0], small1) || !bytes.Equal(got[1], small2) {
		t.Fatalf("delivered %d messages", len(got))
	}
	if v := g.Stats().ByKind["messages.value"]; v != 3 {
		t.Errorf("%d $value requests, want 3 (the 504 not repeated at once)", v)
	}
	g.SetLimits(graphfake.Limits{})
	got = nil
	if err := src.Fetch(ctxOf(t), refs[1:2], func(m *mailbox.Message) error {
		body, err := io.ReadAll(m.Body)
		if m.Size != int64(len(big)) {
			t.Errorf("Size %d, want %d", m.Size, len(big))
		}
		got = append(got, body)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || !bytes.Equal(got[0], big) {
		t.Fatal("large message not delivered intact")
	}
}

// A crash between publishing and moving: the restarted worker lists the
// same identities (immutable ids), so what it publishes again is dropped
// as a duplicate, and the move completes. With delta discovery the link
// stored before the crash (if any) only covers handled mail.
func TestCrashBetweenPublishAndMove(t *testing.T) {
	for _, discovery := range []string{"delta", "list"} {
		t.Run(discovery, func(t *testing.T) {
			g := startFake(t)
			b := newBox(t, g, graphfake.MailboxOptions{})
			b.graph.Discovery = discovery
			g.CreateFolderPath(b.addr, b.folders.Processed)
			b.seed(6)
			pub := newPublished()

			// First life: everything published, two moved, then the crash.
			first := b.source()
			refs := list(t, first)
			if err := first.Fetch(ctxOf(t), refs, func(m *mailbox.Message) error {
				body, _ := io.ReadAll(m.Body)
				pub.add(m.Ref, body)
				return nil
			}); err != nil {
				t.Fatal(err)
			}
			if err := first.Move(ctxOf(t), refs[:2], mailbox.ToProcessed); err != nil {
				t.Fatal(err)
			}
			// (No Close: the process died.)

			second := b.source()
			again := list(t, second)
			if !slices.Equal(keys(again), keys(refs[2:])) {
				t.Fatalf("after restart listed %q, want %q", keys(again), keys(refs[2:]))
			}
			importAll(t, second, nil, pub, 10)
			if len(pub.byID) != 6 || pub.dups != 4 {
				t.Errorf("published %d distinct with %d duplicates, want 6 and 4", len(pub.byID), pub.dups)
			}
			if g.Count(b.addr, b.folders.Processed) != 6 || g.Count(b.addr, b.folders.Import) != 0 {
				t.Errorf("processed %d, import %d", g.Count(b.addr, b.folders.Processed), g.Count(b.addr, b.folders.Import))
			}
		})
	}
}

// An expired delta state (410 SyncStateNotFound) makes the source
// synchronize the folder in full: nothing is lost, including mail moved
// into the folder meanwhile with an old arrival time.
func TestDeltaStateExpired(t *testing.T) {
	g := startFake(t)
	b := newBox(t, g, graphfake.MailboxOptions{})
	g.CreateFolderPath(b.addr, b.folders.Processed)
	b.seed(3)
	src := b.source()
	pub := newPublished()
	importAll(t, src, nil, pub, 10)
	if len(b.state.m) != 1 {
		t.Fatalf("stored delta links: %v", b.state.m)
	}
	// Old mail moved into the import folder by a user, new mail arriving,
	// and the server forgetting the sync state.
	old := g.AddMessage(b.addr, "Inbox/Elsewhere", message("old", 0), time.Date(2019, 1, 1, 0, 0, 0, 0, time.UTC))
	if _, ok := g.MoveMessage(b.addr, old, b.folders.Import); !ok {
		t.Fatal("move")
	}
	b.seed(2)
	g.ExpireDeltaTokens()
	for _, s := range []mailbox.Source{src, b.source()} {
		if refs := list(t, s); len(refs) != 3 {
			t.Fatalf("after 410: listed %d, want 3", len(refs))
		}
	}
	importAll(t, src, nil, pub, 10)
	if len(pub.byID) != 6 || g.Count(b.addr, b.folders.Processed) != 6 {
		t.Fatalf("published %d, processed %d", len(pub.byID), g.Count(b.addr, b.folders.Processed))
	}
}

// Missing permissions are Auth errors whose text names the permission.
func TestWrongPermission(t *testing.T) {
	g := startFake(t)
	b := newBox(t, g, graphfake.MailboxOptions{})
	g.CreateFolderPath(b.addr, b.folders.Processed)
	b.seed(2)

	b.tokens = staticTokens{tokReadOnly} // Mail.Read: reads, cannot move
	ro := b.source()
	refs := list(t, ro)
	err := ro.Move(ctxOf(t), refs, mailbox.ToProcessed)
	wantKind(t, "Move with Mail.Read", err, mailbox.Auth, "Mail.ReadWrite", "admin consent")
	if g.Count(b.addr, b.folders.Import) != 2 {
		t.Fatal("messages moved without permission")
	}

	b.tokens = staticTokens{tokNoRoles}
	_, err = b.source().List(ctxOf(t), 0)
	wantKind(t, "List without roles", err, mailbox.Auth, "Mail.ReadWrite")

	// An application access policy that leaves this mailbox out.
	b.tokens = staticTokens{tokApp}
	g.AddMailbox("other@contoso.test", graphfake.MailboxOptions{})
	g.RestrictApp(appID, "other@contoso.test")
	_, err = b.source().List(ctxOf(t), 0)
	wantKind(t, "List outside the access policy", err, mailbox.Auth, "application access policy")
	g.RestrictApp(appID)

	// Delegated: the service account has no Full Access to the mailbox.
	b.tokens = staticTokens{tokDelegated}
	b.delegated = true
	_, err = b.source().List(ctxOf(t), 0)
	wantKind(t, "delegated List without Full Access", err, mailbox.Auth, "Mail.ReadWrite.Shared", "Full Access")
	g.GrantFullAccess(svcUser, b.addr)
	if refs := list(t, b.source()); len(refs) != 2 {
		t.Fatalf("delegated with Full Access listed %d", len(refs))
	}

	// A token for another resource.
	b.tokens = staticTokens{tokOutlook}
	_, err = b.source().List(ctxOf(t), 0)
	wantKind(t, "List with an Outlook token", err, mailbox.Auth, "Microsoft Graph token")
}

// A missing mailbox or folder is a NotFound error naming it.
func TestNotFound(t *testing.T) {
	g := startFake(t)
	b := newBox(t, g, graphfake.MailboxOptions{})
	g.CreateFolderPath(b.addr, "Inbox/Facturen")
	g.CreateFolderPath(b.addr, "Inbox/Import/Sub")

	b.folders.Import = "Inbox/Imprt"
	_, err := b.source().List(ctxOf(t), 0)
	wantKind(t, "missing folder", err, mailbox.NotFound, `"Imprt"`, "in Inbox", "Facturen, Import")

	b.folders.Import = "Inbox/Import"
	src := b.source()
	b.seed(1)
	refs := list(t, src)
	err = src.Move(ctxOf(t), refs, mailbox.ToProcessed)
	wantKind(t, "move to a missing folder", err, mailbox.NotFound, "Inbox/Processed")

	g.AddMailbox("gone@contoso.test", graphfake.MailboxOptions{Inactive: true})
	for _, addr := range []string{"nobody@contoso.test", "gone@contoso.test"} {
		nb := *b
		nb.addr = addr
		_, err := nb.source().List(ctxOf(t), 0)
		wantKind(t, "mailbox "+addr, err, mailbox.NotFound, addr, "mailboxes[invoices].address")
	}
}

// Subfolders: a Dutch mailbox configured with "Inbox/..." and localized
// names, paths below the import folder, paging through many child folders.
func TestLocalizedAndManySubfolders(t *testing.T) {
	g := startFake(t)
	b := newBox(t, g, graphfake.MailboxOptions{FolderNames: graphfake.GermanFolderNames})
	b.folders = config.Folders{Import: "Posteingang/Rechnungen", Processed: "Posteingang/Erledigt", Error: "Posteingang/Fehler",
		IncludeSubfolders: true}
	b.graph.PageSize = 4
	g.CreateFolderPath(b.addr, b.folders.Processed)
	for i := range 11 {
		sub := b.folders.Import + "/Lieferant " + string(rune('A'+i))
		b.add(sub, message("sub", i))
	}
	b.add(b.folders.Import, message("root", 0))
	src := b.source()
	refs := list(t, src)
	if len(refs) != 12 || refs[0].Folder != b.folders.Import || refs[1].Folder != b.folders.Import+"/Lieferant A" {
		t.Fatalf("listed %d: %v", len(refs), keys(refs))
	}
	// "Inbox/..." means the same folder on a German mailbox.
	b2 := *b
	b2.folders.Import = "Inbox/Rechnungen"
	b2.folders.IncludeSubfolders = false
	if refs := list(t, b2.source()); len(refs) != 1 {
		t.Fatalf("Inbox/Rechnungen on a German mailbox listed %d", len(refs))
	}
	pub := newPublished()
	importAll(t, src, nil, pub, 5)
	if len(pub.byID) != 12 || g.Count(b.addr, b.folders.Processed) != 12 {
		t.Fatalf("published %d, processed %d", len(pub.byID), g.Count(b.addr, b.folders.Processed))
	}
}

// End to end with real credentials: MSAL client credentials against the
// dev identity platform, a Graph token for the fake.
func TestWithIdentityPlatform(t *testing.T) {
	const clientID, secret = "2c1f6a7e-0d4b-4a8e-9f3c-5b6d7e8f9a0b", "dev-secret-value"
	idp, err := devidp.Start(devidp.Options{Tenant: "contoso.onmicrosoft.com",
		Clients: []devidp.Client{{ID: clientID, Secret: secret}}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(idp.Close)
	g, err := graphfake.Start(graphfake.Options{ValidateToken: func(tok string) (graphfake.Claims, error) {
		c, err := idp.Validate(tok, "")
		if errors.Is(err, devidp.ErrTokenExpired) {
			return graphfake.Claims{}, graphfake.ErrTokenExpired
		}
		if err != nil {
			return graphfake.Claims{}, err
		}
		return graphfake.Claims{Audience: c.Audience, AppID: c.AppID, TenantID: c.TenantID, Roles: c.Roles, ExpiresAt: c.ExpiresAt}, nil
	}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(g.Close)
	app, err := auth.NewApp("graph-app", config.Identity{TenantID: "contoso.onmicrosoft.com", ClientID: clientID,
		ClientSecret: config.Secret(secret), AuthorityHost: idp.AuthorityHost()}, auth.WithHTTPClient(idp.HTTPClient()))
	if err != nil {
		t.Fatal(err)
	}
	b := newBox(t, g, graphfake.MailboxOptions{})
	b.tokens = app.Source(auth.ScopeGraphApp)
	g.CreateFolderPath(b.addr, b.folders.Processed)
	b.seed(5)
	pub := newPublished()
	importAll(t, b.source(), nil, pub, 2)
	if len(pub.byID) != 5 || g.Count(b.addr, b.folders.Processed) != 5 {
		t.Fatalf("published %d, processed %d", len(pub.byID), g.Count(b.addr, b.folders.Processed))
	}
	// The Graph token does not work for IMAP's resource and vice versa;
	// an IMAP token is refused by Graph as an Auth error.
	b.tokens = app.Source(auth.ScopeIMAPApp)
	_, err = b.source().List(ctxOf(t), 0)
	wantKind(t, "List with an Outlook token", err, mailbox.Auth)
}

// The ca_file setting: a transport built by the source that trusts the
// fake's CA (and the token still goes to the configured host only).
func TestCAFile(t *testing.T) {
	g := startFake(t)
	b := newBox(t, g, graphfake.MailboxOptions{})
	ca, err := g.WriteCAFile(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	cfg := b.config()
	cfg.Graph.CAFile = ca
	b.seed(1)
	src, err := graph.New(graph.Options{Mailbox: cfg, Tokens: b.tokens, App: b.app, State: b.state})
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	refs := list(t, src)
	if len(refs) != 1 {
		t.Fatalf("listed %d", len(refs))
	}
	// Over the source's own transport (HTTP/2), POSTs too.
	b.g.CreateFolderPath(b.addr, b.folders.Processed)
	if _, err := src.Check(ctxOf(t), true); err != nil {
		t.Fatal(err)
	}
	if err := src.Move(ctxOf(t), refs, mailbox.ToProcessed); err != nil {
		t.Fatal(err)
	}
	if b.g.Count(b.addr, b.folders.Processed) != 1 {
		t.Fatal("not moved")
	}
	cfg.Graph.CAFile = ""
	bare, err := graph.New(graph.Options{Mailbox: cfg, Tokens: b.tokens, App: b.app})
	if err != nil {
		t.Fatal(err)
	}
	defer bare.Close()
	_, err = bare.List(ctxOf(t), 0)
	if err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Fatalf("List without the CA: %v", err)
	}
}
