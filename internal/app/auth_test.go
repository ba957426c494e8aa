package app

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/mailpipe/mailpipe/internal/auth"
	"github.com/mailpipe/mailpipe/internal/bus"
	"github.com/mailpipe/mailpipe/internal/config"
	"github.com/mailpipe/mailpipe/internal/devidp"
)

const (
	authTenant  = "5a4b3c2d-1e0f-4a9b-8c7d-6e5f4a3b2c1d"
	authPublic  = "1b2c3d4e-5f6a-4b7c-8d9e-0f1a2b3c4d5e"
	authApp     = "2c3d4e5f-6a7b-4c8d-9e0f-1a2b3c4d5e6f"
	authSecret  = "app~Secret.Value_42"
	authService = "svc-import@contoso.example"
)

// codeApprover is the operator: it reads the code AuthLogin prints and
// signs in with it at the fake device login page.
type codeApprover struct {
	t   *testing.T
	idp *devidp.Server
	as  string

	mu   sync.Mutex
	buf  bytes.Buffer
	done bool
}

var codeRe = regexp.MustCompile(`enter the code ([A-Z0-9]+)`)

func (w *codeApprover) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf.Write(p)
	if m := codeRe.FindStringSubmatch(w.buf.String()); m != nil && !w.done {
		w.done = true
		if err := w.idp.ApproveDeviceCode(m[1], w.as); err != nil {
			w.t.Error(err)
		}
	}
	return len(p), nil
}

func (w *codeApprover) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.String()
}

type authEnv struct {
	idp  *devidp.Server
	cfg  *config.Importer
	deps Deps
}

func newAuthEnv(t *testing.T) *authEnv {
	t.Helper()
	idp, err := devidp.Start(devidp.Options{
		Tenant: authTenant,
		Clients: []devidp.Client{
			{ID: authPublic, PublicClient: true},
			{ID: authApp, Secret: authSecret},
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(idp.Close)
	if err := idp.AddUser(authService, devidp.UserOptions{}); err != nil {
		t.Fatal(err)
	}
	conn, err := bus.Connect(context.Background(), config.NATS{Embedded: config.Embedded{StoreDir: t.TempDir()}}, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(conn.Close)
	key := make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		t.Fatal(err)
	}
	cfg := &config.Importer{
		Bus: config.Bus{TokenBucket: "mailpipe-tokens", Stream: config.Stream{Replicas: 1}},
		Identities: map[string]config.Identity{
			"svc": {
				Kind: "delegated", TenantID: authTenant, ClientID: authPublic, AuthorityHost: idp.AuthorityHost(),
				Username: authService, TokenCacheKey: config.Secret(base64.StdEncoding.EncodeToString(key)),
			},
			"main": {
				Kind: "app", TenantID: authTenant, ClientID: authApp, AuthorityHost: idp.AuthorityHost(),
				ClientSecret: authSecret, SecretExpires: time.Now().Add(10 * 24 * time.Hour).UTC().Format(time.DateOnly),
				ExpiryWarning: 30 * 24 * time.Hour,
			},
		},
		Mailboxes: []config.Mailbox{
			{Name: "support", Address: "support@contoso.example", Source: "imap", Identity: "svc"},
			{Name: "billing", Address: "billing@contoso.example", Source: "graph", Identity: "svc"},
			{Name: "legacy", Address: "legacy@contoso.example", Source: "imap", Identity: "main"},
			{Name: "plain", Address: "plain@contoso.example", Source: "imap", IMAP: config.IMAP{Auth: "password"}},
		},
	}
	return &authEnv{idp: idp, cfg: cfg, deps: Deps{
		Logger:      zaptest.NewLogger(t, zaptest.Level(zap.WarnLevel)),
		AuthOptions: []auth.Option{auth.WithHTTPClient(idp.HTTPClient())},
		Conn:        conn,
	}}
}

func TestAuthLoginAndStatus(t *testing.T) {
	env := newAuthEnv(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	// Before any sign-in.
	var out bytes.Buffer
	err := AuthStatus(ctx, env.cfg, &out, env.deps)
	if !errors.Is(err, ErrAuthAttention) {
		t.Fatalf("AuthStatus before login: %v", err)
	}
	s := out.String()
	for _, want := range []string{
		`mailbox "support" (imap, support@contoso.example)`,
		`identity "svc": kind delegated`,
		"not signed in: run `importer auth login --config FILE --mailbox support`",
		`identity "main": kind app`,
		"client secret expires on",
		"identity: none (IMAP password login)",
	} {
		if !strings.Contains(s, want) {
			t.Errorf("status before login lacks %q:\n%s", want, s)
		}
	}

	// Sign in for the IMAP mailbox.
	w := &codeApprover{t: t, idp: env.idp, as: authService}
	if err := AuthLogin(ctx, env.cfg, "support", w, env.deps); err != nil {
		t.Fatalf("AuthLogin: %v\n%s", err, w)
	}
	s = w.String()
	for _, want := range []string{"https://microsoft.com/devicelogin", "Sign in as " + authService, "Signed in as " + authService,
		auth.ScopeIMAPDelegated, `bucket "mailpipe-tokens"`} {
		if !strings.Contains(s, want) {
			t.Errorf("login output lacks %q:\n%s", want, s)
		}
	}
	if strings.Contains(s, "eyJ") {
		t.Error("login output contains a token")
	}
	// And for the Graph mailbox of the same identity (another resource).
	w = &codeApprover{t: t, idp: env.idp, as: authService}
	if err := AuthLogin(ctx, env.cfg, "billing", w, env.deps); err != nil {
		t.Fatalf("AuthLogin graph: %v\n%s", err, w)
	}

	out.Reset()
	err = AuthStatus(ctx, env.cfg, &out, env.deps)
	s = out.String()
	if !errors.Is(err, ErrAuthAttention) { // the app secret still expires soon
		t.Errorf("AuthStatus: %v", err)
	}
	for _, want := range []string{
		"signed in as " + authService + " on ",
		"refresh token renewed ",
		"access token (" + auth.ScopeIMAPDelegated + ") valid until ",
		"access token (" + auth.ScopeGraphMailReadWriteShared,
	} {
		if !strings.Contains(s, want) {
			t.Errorf("status after login lacks %q:\n%s", want, s)
		}
	}
	if strings.Contains(s, "not signed in") || strings.Contains(s, "eyJ") {
		t.Errorf("status after login:\n%s", s)
	}

	// The importer's side: the identity opened over the same bucket gets
	// tokens without a sign-in.
	conn := env.deps.Conn
	ids, err := openDelegatedIdentities(ctx, env.cfg, conn, env.deps)
	if err != nil || ids["svc"] == nil || len(ids) != 1 {
		t.Fatalf("openDelegatedIdentities: %v %v", ids, err)
	}
	tok, err := ids["svc"].Source(auth.ScopeIMAPDelegated).Token(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if c, err := env.idp.Validate(tok.Value, "https://outlook.office.com"); err != nil || c.UPN != authService {
		t.Errorf("IMAP token: %+v %v", c, err)
	}
	if env.idp.DeviceCodeRequests() != 2 {
		t.Errorf("device code requests = %d", env.idp.DeviceCodeRequests())
	}
}

func TestAuthLoginRefusals(t *testing.T) {
	env := newAuthEnv(t)
	ctx := context.Background()
	var out bytes.Buffer
	for _, tc := range []struct{ mailbox, want string }{
		{"legacy", `kind "app"`},
		{"plain", "password"},
		{"nope", "configured: support, billing, legacy, plain"},
	} {
		err := AuthLogin(ctx, env.cfg, tc.mailbox, &out, env.deps)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: err = %v, want mention of %q", tc.mailbox, err, tc.want)
		}
	}
	// A missing token cache key is named.
	id := env.cfg.Identities["svc"]
	id.TokenCacheKey = ""
	env.cfg.Identities["svc"] = id
	err := AuthLogin(ctx, env.cfg, "support", &out, env.deps)
	if err == nil || !strings.Contains(err.Error(), "identities.svc.token_cache_key") {
		t.Errorf("no key: %v", err)
	}
	if env.idp.DeviceCodeRequests() != 0 {
		t.Errorf("device code requests = %d", env.idp.DeviceCodeRequests())
	}
}

func TestAuthStatusAllFine(t *testing.T) {
	env := newAuthEnv(t)
	env.cfg.Mailboxes = env.cfg.Mailboxes[2:] // app identity and password only
	id := env.cfg.Identities["main"]
	id.SecretExpires = time.Now().Add(300 * 24 * time.Hour).UTC().Format(time.DateOnly)
	env.cfg.Identities["main"] = id
	var out bytes.Buffer
	if err := AuthStatus(context.Background(), env.cfg, &out, env.deps); err != nil {
		t.Fatalf("AuthStatus: %v\n%s", err, out.String())
	}
	if !strings.Contains(out.String(), "credential: client secret, expires ") {
		t.Errorf("status:\n%s", out.String())
	}
}
