package app

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"strings"

	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/mailpipe/mailpipe/internal/auth"
	"github.com/mailpipe/mailpipe/internal/bus"
	"github.com/mailpipe/mailpipe/internal/config"
	"github.com/mailpipe/mailpipe/internal/importer"
	"github.com/mailpipe/mailpipe/internal/mailbox"
	"github.com/mailpipe/mailpipe/internal/mailbox/graph"
	"github.com/mailpipe/mailpipe/internal/mailbox/imap"
	"github.com/mailpipe/mailpipe/internal/throttle"
)

// sources builds mailbox sources: one token client per identity, one
// Graph throttle per identity (shared by all its mailboxes and by the
// fetching and moving connections of one mailbox), delta links in the
// state bucket.
type sources struct {
	cfg       *config.Importer
	apps      map[string]*auth.App
	delegated map[string]*auth.Delegated
	throttles map[string]*throttle.App
	state     graph.StateStore
	stats     *importer.Stats
	log       *zap.Logger
}

// newSources prepares the identities used by cfg's mailboxes. conn may be
// nil (then delegated identities, whose token cache lives in NATS, are
// unavailable and their mailboxes fail with a clear error); b may be nil
// (Graph delta links are then kept in memory only).
func newSources(ctx context.Context, cfg *config.Importer, conn *bus.Conn, b *bus.Bus, stats *importer.Stats, d Deps) (*sources, error) {
	s := &sources{cfg: cfg, apps: map[string]*auth.App{}, delegated: map[string]*auth.Delegated{},
		throttles: map[string]*throttle.App{}, stats: stats, log: d.logger()}
	for _, m := range cfg.Mailboxes {
		if m.Identity == "" {
			continue
		}
		id, ok := cfg.Identities[m.Identity]
		if !ok {
			return nil, fmt.Errorf("mailboxes[%s].identity: unknown identity %q", m.Name, m.Identity)
		}
		if s.throttles[m.Identity] == nil {
			s.throttles[m.Identity] = throttle.NewApp(throttle.AppOptions{Name: m.Identity, MaxConcurrency: id.GraphMaxConcurrency})
		}
		if isDelegated(id) || s.apps[m.Identity] != nil {
			continue
		}
		opts := append([]auth.Option{auth.WithLogger(d.logger())}, d.AuthOptions...)
		a, err := auth.NewApp(m.Identity, id, opts...)
		if err != nil {
			return nil, err
		}
		s.apps[m.Identity] = a
	}
	if conn != nil && len(delegatedIdentityNames(cfg)) > 0 {
		dl, err := openDelegatedIdentities(ctx, cfg, conn, d)
		if err != nil {
			return nil, err
		}
		s.delegated = dl
	}
	if b != nil {
		s.state = kvState{kv: b.KeyValue()}
	}
	return s, nil
}

// tokens returns the token source for m and resource scope sc (a
// "<resource>/.default" app-only scope, or a delegated scope).
func (s *sources) tokens(m config.Mailbox, appScope, delegatedScope string) (auth.TokenSource, bool, error) {
	id := s.cfg.Identities[m.Identity]
	if isDelegated(id) {
		dl := s.delegated[m.Identity]
		if dl == nil {
			return nil, true, fmt.Errorf("mailboxes[%s]: delegated identity %q needs NATS for its token cache, which is not reachable", m.Name, m.Identity)
		}
		return dl.Source(delegatedScope), true, nil
	}
	return s.apps[m.Identity].Source(appScope), false, nil
}

// New builds the source for m.
func (s *sources) New(m config.Mailbox) (mailbox.Source, error) {
	switch m.Source {
	case "imap", "":
		var ts auth.TokenSource
		if m.IMAP.Auth != "password" {
			id := s.cfg.Identities[m.Identity]
			var err error
			ts, _, err = s.tokens(m, imapScope(id.AuthorityHost), imapDelegatedScope(id.AuthorityHost))
			if err != nil {
				return nil, err
			}
		}
		return imap.New(imap.Options{Mailbox: m, Tokens: ts, Logger: s.log})
	case "graph":
		resource := graphResource(m.Graph.BaseURL)
		ts, delegated, err := s.tokens(m, resource+"/.default", resource+"/Mail.ReadWrite.Shared")
		if err != nil {
			return nil, err
		}
		var metrics graph.Metrics
		if s.stats != nil {
			metrics.Request = s.stats.GraphRequest
		}
		return graph.New(graph.Options{Mailbox: m, Tokens: ts, Delegated: delegated, App: s.throttles[m.Identity],
			State: s.state, Logger: s.log, Metrics: metrics})
	default:
		return nil, fmt.Errorf("mailboxes[%s].source: %q is not imap or graph", m.Name, m.Source)
	}
}

// batchSize is how many messages one import batch covers.
func batchSize(m config.Mailbox) int {
	if m.Source == "graph" {
		return max(m.Graph.PageSize, 1)
	}
	return max(m.IMAP.FetchBatch, 1)
}

// imapScope is the app-only IMAP resource of the cloud whose token
// endpoint is authorityHost.
func imapScope(authorityHost string) string {
	switch strings.ToLower(authorityHost) {
	case "login.microsoftonline.us":
		return "https://outlook.office365.us/.default"
	case "login.chinacloudapi.cn", "login.partner.microsoftonline.cn":
		return "https://partner.outlook.cn/.default"
	}
	return auth.ScopeIMAPApp
}

// imapDelegatedScope is the delegated IMAP permission of the cloud whose
// token endpoint is authorityHost.
func imapDelegatedScope(authorityHost string) string {
	switch strings.ToLower(authorityHost) {
	case "login.microsoftonline.us":
		return "https://outlook.office365.us/IMAP.AccessAsUser.All"
	case "login.chinacloudapi.cn", "login.partner.microsoftonline.cn":
		return "https://partner.outlook.cn/IMAP.AccessAsUser.All"
	}
	return auth.ScopeIMAPDelegated
}

// graphResource is the token audience for a Graph base URL: the national
// cloud's Graph host, else (public cloud, or a test server standing in for
// it) https://graph.microsoft.com.
func graphResource(baseURL string) string {
	u, err := url.Parse(baseURL)
	if err == nil {
		switch h := strings.ToLower(u.Hostname()); h {
		case "graph.microsoft.us", "dod-graph.microsoft.us", "microsoftgraph.chinacloudapi.cn":
			return "https://" + h
		}
	}
	return "https://graph.microsoft.com"
}

// kvState keeps Graph delta links in the state bucket.
type kvState struct{ kv jetstream.KeyValue }

func (k kvState) Get(ctx context.Context, key string) (string, bool, error) {
	e, err := k.kv.Get(ctx, key)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return "", false, nil
	}
	if err != nil {
		return "", false, err
	}
	return string(e.Value()), true, nil
}

func (k kvState) Put(ctx context.Context, key, value string) error {
	_, err := k.kv.Put(ctx, key, []byte(value))
	return err
}

func (k kvState) Delete(ctx context.Context, key string) error {
	err := k.kv.Delete(ctx, key)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil
	}
	return err
}
