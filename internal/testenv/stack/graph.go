package stack

import (
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/mailpipe/mailpipe/internal/config"
	"github.com/mailpipe/mailpipe/internal/devidp"
	"github.com/mailpipe/mailpipe/internal/testenv/graphfake"
)

// Fixed identities and folders of the Graph stack. The app registration
// (ClientID, Secret, Tenant) is the one of the IMAP stack; its Graph tokens
// carry the application permission Mail.ReadWrite.
const (
	// GraphIdentityID is the app-only identity of GraphStack.Config.
	GraphIdentityID = "contoso-graph"
	// GraphDelegatedID is the delegated identity of GraphStack.DelegatedConfig.
	GraphDelegatedID = "contoso-svc"
	// GraphPublicClientID is the public client ("Allow public client
	// flows") the delegated service account signs in with.
	GraphPublicClientID = "4d3c2b1a-0f9e-4d8c-b7a6-5f4e3d2c1b0a"
	// GraphServiceUser is the delegated service account; with
	// GraphOptions.Delegated it has Full Access to every mailbox.
	GraphServiceUser = "svc-mailpipe@example.test"

	// The folders of a Dutch mailbox (the inbox is "Postvak IN").
	GraphImport    = "Postvak IN/Algemeen/Import"
	GraphProcessed = "Postvak IN/Algemeen/Verwerkt"
	GraphError     = "Postvak IN/Algemeen/Fout"
)

// GraphOptions tune StartGraph.
type GraphOptions struct {
	// Mailboxes is the number of mailboxes (default 1); see GraphName and
	// GraphAddress.
	Mailboxes int
	// Delegated adds the service account GraphServiceUser to the identity
	// platform (consent for every scope asked for) and gives it Full
	// Access to every mailbox, for DelegatedConfig.
	Delegated bool
	// Limits are the fake's Exchange limits (zero fields: Microsoft's).
	// Config sets each mailbox's graph.request_budget and budget_window
	// to the fake's.
	Limits graphfake.Limits
	// Latency the fake adds to every request and every $batch item.
	Latency time.Duration
	// NoDestFolders leaves the processed and error folders out (for
	// `check --create-folders`); the import folder is always created.
	NoDestFolders bool
}

// GraphStack is a running Graph stack: a fake Entra ID, a fake Microsoft
// Graph that trusts its tokens, and a NATS server with JetStream.
type GraphStack struct {
	t     testing.TB
	IdP   *devidp.Server
	Graph *graphfake.Server
	NATS  *server.Server
	opts  GraphOptions

	idpCA, graphCA string
	cacheKey       string

	mu       sync.Mutex
	roles    []string // with rolesSet: the app roles tokens are taken to carry
	rolesSet bool
	seq      map[int]int
}

// GraphName is the configured name of mailbox i: "facturen", then
// "facturen-01", "facturen-02", ...
func GraphName(i int) string {
	if i == 0 {
		return "facturen"
	}
	return fmt.Sprintf("facturen-%02d", i)
}

// GraphAddress is the address of mailbox i.
func GraphAddress(i int) string { return GraphName(i) + "@example.test" }

// StartGraph starts the servers; they stop at test cleanup. Every mailbox is
// a Dutch one (the inbox is "Postvak IN") holding the folders GraphImport,
// GraphProcessed and GraphError. Any failure fails the test.
func StartGraph(t testing.TB, opts GraphOptions) *GraphStack {
	t.Helper()
	if opts.Mailboxes <= 0 {
		opts.Mailboxes = 1
	}
	idp, err := devidp.Start(devidp.Options{Tenant: Tenant, Clients: []devidp.Client{
		{ID: ClientID, Secret: Secret, Email: GraphAddress(0)},
		{ID: GraphPublicClientID, PublicClient: true},
	}})
	if err != nil {
		t.Fatalf("start identity provider: %v", err)
	}
	t.Cleanup(idp.Close)
	if opts.Delegated {
		if err := idp.AddUser(GraphServiceUser, devidp.UserOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	s := &GraphStack{t: t, IdP: idp, opts: opts, seq: map[int]int{}}
	g, err := graphfake.Start(graphfake.Options{ValidateToken: s.validate, Limits: opts.Limits, Latency: opts.Latency})
	if err != nil {
		t.Fatalf("start graph fake: %v", err)
	}
	t.Cleanup(g.Close)
	s.Graph = g
	dir := t.TempDir()
	if s.idpCA, err = idp.WriteCAFile(dir); err != nil {
		t.Fatal(err)
	}
	if s.graphCA, err = g.WriteCAFile(dir); err != nil {
		t.Fatal(err)
	}
	key := make([]byte, config.TokenCacheKeySize)
	if _, err := rand.Read(key); err != nil {
		t.Fatal(err)
	}
	s.cacheKey = base64.StdEncoding.EncodeToString(key)
	for i := range opts.Mailboxes {
		addr := GraphAddress(i)
		g.AddMailbox(addr, graphfake.MailboxOptions{DisplayName: "Facturen " + fmt.Sprint(i), FolderNames: graphfake.DutchFolderNames})
		folders := []string{GraphImport, GraphProcessed, GraphError}
		if opts.NoDestFolders {
			folders = folders[:1]
		}
		for _, f := range folders {
			g.CreateFolderPath(addr, f)
		}
		if opts.Delegated {
			g.GrantFullAccess(GraphServiceUser, addr)
		}
	}
	ns, err := server.NewServer(&server.Options{
		Host: "127.0.0.1", Port: -1, JetStream: true, StoreDir: t.TempDir(), NoLog: true, NoSigs: true,
		MaxPayload: 8 << 20,
	})
	if err != nil {
		t.Fatalf("start nats: %v", err)
	}
	ns.Start()
	if !ns.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats server not ready")
	}
	t.Cleanup(ns.Shutdown)
	s.NATS = ns
	return s
}

// validate maps devidp's tokens onto the fake's claims.
func (s *GraphStack) validate(tok string) (graphfake.Claims, error) {
	c, err := s.IdP.Validate(tok, "")
	if errors.Is(err, devidp.ErrTokenExpired) {
		return graphfake.Claims{}, fmt.Errorf("%w: %v", graphfake.ErrTokenExpired, err)
	}
	if err != nil {
		return graphfake.Claims{}, err
	}
	roles := c.Roles
	s.mu.Lock()
	if s.rolesSet && len(c.Scopes) == 0 {
		roles = append([]string(nil), s.roles...)
	}
	s.mu.Unlock()
	return graphfake.Claims{Audience: c.Audience, AppID: c.AppID, TenantID: c.TenantID, UPN: c.UPN,
		Roles: roles, Scopes: c.Scopes, ExpiresAt: c.ExpiresAt}, nil
}

// SetAppRoles makes the fake read app-only tokens as carrying exactly roles
// (none: an app registration without admin consent for Mail.ReadWrite).
func (s *GraphStack) SetAppRoles(roles ...string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.roles, s.rolesSet = append([]string(nil), roles...), true
}

// ResetAppRoles undoes SetAppRoles.
func (s *GraphStack) ResetAppRoles() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.roles, s.rolesSet = nil, false
}

// NATSURL is the client URL of the NATS server.
func (s *GraphStack) NATSURL() string { return s.NATS.ClientURL() }

// Mailboxes is the number of mailboxes.
func (s *GraphStack) Mailboxes() int { return s.opts.Mailboxes }

// Config returns a validated importer configuration for every mailbox over
// Graph with the app-only identity GraphIdentityID (client secret), with
// defaults applied. Tests adjust it and call Validate again if they change
// it.
func (s *GraphStack) Config() *config.Importer {
	s.t.Helper()
	return s.config(GraphIdentityID, config.Identity{
		TenantID: Tenant, ClientID: ClientID, ClientSecret: Secret,
		AuthorityHost: s.IdP.AuthorityHost(), CAFile: s.idpCA,
	})
}

// DelegatedConfig is Config with the delegated identity GraphDelegatedID
// (GraphServiceUser, signed in with `importer auth login`; needs
// GraphOptions.Delegated).
func (s *GraphStack) DelegatedConfig() *config.Importer {
	s.t.Helper()
	if !s.opts.Delegated {
		s.t.Fatal("stack: DelegatedConfig needs GraphOptions.Delegated")
	}
	return s.config(GraphDelegatedID, config.Identity{
		Kind: "delegated", TenantID: Tenant, ClientID: GraphPublicClientID, Username: GraphServiceUser,
		TokenCacheKey: config.Secret(s.cacheKey), AuthorityHost: s.IdP.AuthorityHost(), CAFile: s.idpCA,
	})
}

func (s *GraphStack) config(idName string, id config.Identity) *config.Importer {
	s.t.Helper()
	lim := s.Graph.Limits()
	cfg := &config.Importer{
		Log:        config.Log{Level: "info", Format: "json"},
		NATS:       config.NATS{URL: s.NATSURL()},
		Identities: map[string]config.Identity{idName: id},
	}
	for i := range s.opts.Mailboxes {
		g := config.Graph{BaseURL: s.Graph.BaseURL(), CAFile: s.graphCA, Timeout: 30 * time.Second}
		if lim.RequestBudget > 0 {
			g.RequestBudget, g.BudgetWindow = lim.RequestBudget, lim.BudgetWindow
		}
		cfg.Mailboxes = append(cfg.Mailboxes, config.Mailbox{
			Name: GraphName(i), Address: GraphAddress(i), Source: "graph", Identity: idName,
			Graph:   g,
			Folders: config.Folders{Import: GraphImport, Processed: GraphProcessed, Error: GraphError},
			// Tests poll fast.
			PollInterval: time.Second,
		})
	}
	cfg.ApplyDefaults()
	if err := cfg.Validate(); err != nil {
		s.t.Fatalf("graph stack config invalid: %v", err)
	}
	return cfg
}

// Seed delivers n messages made by msg into the import folder of mailbox i,
// each one second newer than the one before (also across calls).
func (s *GraphStack) Seed(i, n int, msg func(k int) []byte) {
	s.t.Helper()
	base := time.Date(2026, 11, 2, 9, 0, 0, 0, time.UTC)
	for k := range n {
		s.mu.Lock()
		s.seq[i]++
		at := base.Add(time.Duration(s.seq[i]) * time.Second)
		s.mu.Unlock()
		s.Graph.AddMessage(GraphAddress(i), GraphImport, msg(k), at)
	}
}

// Count is the number of messages in folder (a path such as GraphImport)
// of mailbox i.
func (s *GraphStack) Count(i int, folder string) int { return s.Graph.Count(GraphAddress(i), folder) }

// Stream reads every message of stream (headers only) and counts them.
func (s *GraphStack) Stream(name string) StreamStats {
	s.t.Helper()
	return (&Stack{t: s.t, NATS: s.NATS}).Stream(name)
}
