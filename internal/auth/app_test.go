package auth_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/mailpipe/mailpipe/internal/auth"
	"github.com/mailpipe/mailpipe/internal/config"
	"github.com/mailpipe/mailpipe/internal/devidp"
)

const (
	tenantID = "7d3c2a1b-0f9e-4d8c-b7a6-5e4f3d2c1b0a"
	clientID = "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d"
	secret   = "Qx8~tH2.vN5_secret-VALUE-kR9zW"
	mailbox  = "import@contoso.example"
)

type fixture struct {
	idp    *devidp.Server
	logs   *observer.ObservedLogs
	logger *zap.Logger
}

func newFixture(t *testing.T, opts devidp.Options) *fixture {
	t.Helper()
	if opts.Tenant == "" {
		opts.Tenant = tenantID
	}
	if opts.Clients == nil {
		opts.Clients = []devidp.Client{{ID: clientID, Secret: secret, Email: mailbox}}
	}
	idp, err := devidp.Start(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(idp.Close)
	core, logs := observer.New(zapcore.DebugLevel)
	f := &fixture{idp: idp, logs: logs}
	t.Cleanup(func() { f.checkLogs(t) })
	f.logger = zap.New(core)
	return f
}

func (f *fixture) identity() config.Identity {
	return config.Identity{
		TenantID:      tenantID,
		ClientID:      clientID,
		ClientSecret:  config.Secret(secret),
		AuthorityHost: f.idp.AuthorityHost(),
	}
}

func (f *fixture) app(t *testing.T, id config.Identity, opts ...auth.Option) *auth.App {
	t.Helper()
	opts = append([]auth.Option{auth.WithHTTPClient(f.idp.HTTPClient()), auth.WithLogger(f.logger)}, opts...)
	app, err := auth.NewApp("main", id, opts...)
	if err != nil {
		t.Fatal(err)
	}
	return app
}

// checkLogs fails if any log entry carries the secret or a token.
func (f *fixture) checkLogs(t *testing.T) {
	for _, e := range f.logs.All() {
		line := e.Message + fmt.Sprint(e.ContextMap())
		if strings.Contains(line, secret) || strings.Contains(line, "eyJ") {
			t.Errorf("log entry leaks a secret or token: %s", line)
		}
	}
}

func tokenErr(t *testing.T, err error) *auth.Error {
	t.Helper()
	if err == nil {
		t.Fatal("Token: no error")
	}
	var ae *auth.Error
	if !errors.As(err, &ae) {
		t.Fatalf("Token: error %T %v is not *auth.Error", err, err)
	}
	msg := err.Error()
	if strings.Contains(msg, secret) {
		t.Errorf("error text contains the secret: %s", msg)
	}
	if !strings.Contains(msg, tenantID) || !strings.Contains(msg, clientID) || !strings.Contains(msg, `"main"`) {
		t.Errorf("error text lacks identity, tenant or client: %s", msg)
	}
	return ae
}

func TestSecretCredentialWithCAFile(t *testing.T) {
	f := newFixture(t, devidp.Options{})
	id := f.identity()
	ca, err := f.idp.WriteCAFile(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	id.CAFile = ca
	app, err := auth.NewApp("main", id, auth.WithLogger(f.logger)) // CA from ca_file, no test HTTP client
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for _, tc := range []struct{ scope, aud, role string }{
		{auth.ScopeIMAPApp, "https://outlook.office365.com", "IMAP.AccessAsApp"},
		{auth.ScopeGraphApp, "https://graph.microsoft.com", "Mail.ReadWrite"},
	} {
		tok, err := app.Source(tc.scope).Token(ctx)
		if err != nil {
			t.Fatalf("%s: %v", tc.scope, err)
		}
		if d := time.Until(tok.ExpiresOn); d < 55*time.Minute || d > 61*time.Minute {
			t.Errorf("%s: ExpiresOn in %v, want about 1h", tc.scope, d)
		}
		c, err := f.idp.Validate(tok.Value, tc.aud)
		if err != nil {
			t.Fatalf("%s: token does not validate for %s: %v", tc.scope, tc.aud, err)
		}
		if c.Audience != tc.aud || c.AppID != clientID || c.Email != mailbox || c.TenantID != f.idp.TenantID() || !c.HasRole(tc.role) || c.AppIDACR != "1" {
			t.Errorf("%s: claims %+v", tc.scope, c)
		}
	}
	if n := f.idp.TokenRequests(); n != 2 {
		t.Errorf("token requests = %d, want 2 (one per scope)", n)
	}
}

func TestSecretCredentialUntrustedCA(t *testing.T) {
	f := newFixture(t, devidp.Options{})
	// No ca_file and no test HTTP client: the system roots do not trust
	// devidp's CA.
	app, err := auth.NewApp("main", f.identity(), auth.WithLogger(f.logger))
	if err != nil {
		t.Fatal(err)
	}
	_, err = app.Source(auth.ScopeIMAPApp).Token(context.Background())
	e := tokenErr(t, err)
	if e.Permanent || e.Code != "" || e.Err == nil || !strings.Contains(e.Hint, "ca_file") {
		t.Errorf("error = %+v, want transient TLS error with a ca_file hint", e)
	}
}

func TestWrongSecret(t *testing.T) {
	f := newFixture(t, devidp.Options{})
	id := f.identity()
	id.ClientSecret = "an0ther~wrong.Secret_VALUE"
	app := f.app(t, id)
	_, err := app.Source(auth.ScopeIMAPApp).Token(context.Background())
	e := tokenErr(t, err)
	if e.Code != "AADSTS7000215" || e.HTTPStatus != 401 || !e.Permanent || !auth.IsPermanent(err) {
		t.Errorf("error = %+v", e)
	}
	if strings.Contains(err.Error(), "an0ther~wrong.Secret_VALUE") {
		t.Errorf("error text contains the secret: %v", err)
	}
	if !strings.Contains(e.Hint, "Value") || !strings.Contains(e.Hint, "Secret ID") {
		t.Errorf("hint = %q", e.Hint)
	}
	if strings.Contains(e.Description, "Trace ID") || strings.HasPrefix(e.Description, "AADSTS") {
		t.Errorf("description not cleaned: %q", e.Description)
	}
	if e.Identity != "main" || e.Tenant != tenantID || e.Client != clientID || e.Scope != auth.ScopeIMAPApp {
		t.Errorf("error fields = %+v", e)
	}
	for _, l := range f.logs.All() {
		if strings.Contains(l.Message+fmt.Sprint(l.ContextMap()), "an0ther~wrong.Secret_VALUE") {
			t.Errorf("log leaks the secret: %v", l.Message)
		}
	}
	if f.idp.TokenRequests() != 0 {
		t.Errorf("token requests = %d", f.idp.TokenRequests())
	}
}

func TestExpiredSecret(t *testing.T) {
	f := newFixture(t, devidp.Options{Clients: []devidp.Client{{ID: clientID, Secret: secret, SecretExpired: true}}})
	_, err := f.app(t, f.identity()).Source(auth.ScopeIMAPApp).Token(context.Background())
	e := tokenErr(t, err)
	if e.Code != "AADSTS7000222" || !e.Permanent || !strings.Contains(e.Hint, "expired") {
		t.Errorf("error = %+v", e)
	}
}

func TestUnknownClient(t *testing.T) {
	f := newFixture(t, devidp.Options{Clients: []devidp.Client{}})
	_, err := f.app(t, f.identity()).Source(auth.ScopeIMAPApp).Token(context.Background())
	e := tokenErr(t, err)
	if e.Code != "AADSTS700016" || !e.Permanent || !strings.Contains(e.Hint, "client_id") || !strings.Contains(e.Hint, "consent") {
		t.Errorf("error = %+v", e)
	}
}

func TestUnknownTenant(t *testing.T) {
	f := newFixture(t, devidp.Options{Tenant: "11111111-2222-4333-8444-555555555555"})
	_, err := f.app(t, f.identity()).Source(auth.ScopeIMAPApp).Token(context.Background())
	e := tokenErr(t, err)
	if e.Code != "AADSTS90002" || !e.Permanent || !strings.Contains(e.Hint, "tenant_id") {
		t.Errorf("error = %+v", e)
	}
}

func TestInvalidScope(t *testing.T) {
	f := newFixture(t, devidp.Options{Clients: []devidp.Client{{ID: clientID, Secret: secret, Scopes: []string{"https://outlook.office365.com"}}}})
	app := f.app(t, f.identity())
	for _, scope := range []string{"https://outlook.office365.com", auth.ScopeGraphApp} {
		_, err := app.Source(scope).Token(context.Background())
		e := tokenErr(t, err)
		if e.Code != "AADSTS70011" || !e.Permanent || !strings.Contains(e.Hint, "/.default") || e.Scope != scope {
			t.Errorf("%s: error = %+v", scope, e)
		}
	}
	if _, err := app.Source(auth.ScopeIMAPApp).Token(context.Background()); err != nil {
		t.Errorf("allowed scope: %v", err)
	}
}

func TestUnreachableTokenEndpoint(t *testing.T) {
	f := newFixture(t, devidp.Options{})
	app := f.app(t, f.identity(), auth.WithRequestTimeout(5*time.Second))
	f.idp.Close()
	_, err := app.Source(auth.ScopeIMAPApp).Token(context.Background())
	e := tokenErr(t, err)
	if e.Permanent || e.Code != "" || e.Err == nil || !strings.Contains(e.Hint, f.idp.AuthorityHost()) {
		t.Errorf("error = %+v, want transient network error", e)
	}
}

func TestCaching(t *testing.T) {
	f := newFixture(t, devidp.Options{})
	app := f.app(t, f.identity())
	ctx := context.Background()
	a, err := app.Source(auth.ScopeIMAPApp).Token(ctx)
	if err != nil {
		t.Fatal(err)
	}
	b, err := app.Source(auth.ScopeIMAPApp).Token(ctx) // same source through a new Source call
	if err != nil {
		t.Fatal(err)
	}
	if a != b {
		t.Error("second Token returned another token")
	}
	if n := f.idp.TokenRequests(); n != 1 {
		t.Errorf("token requests = %d, want 1", n)
	}
}

// clock is a settable clock for WithClock.
type clock struct {
	mu  sync.Mutex
	off time.Duration
}

func (c *clock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return time.Now().Add(c.off)
}

func (c *clock) advance(d time.Duration) {
	c.mu.Lock()
	c.off += d
	c.mu.Unlock()
}

func TestRenewalBeforeExpiry(t *testing.T) {
	f := newFixture(t, devidp.Options{}) // 1h tokens: renewed in the last 6 minutes (10%)
	clk := &clock{}
	src := f.app(t, f.identity(), auth.WithClock(clk.now)).Source(auth.ScopeIMAPApp)
	ctx := context.Background()
	first, err := src.Token(ctx)
	if err != nil {
		t.Fatal(err)
	}
	clk.advance(53 * time.Minute)
	if tok, err := src.Token(ctx); err != nil || tok != first || f.idp.TokenRequests() != 1 {
		t.Fatalf("at +53m: err %v, same token %v, requests %d; want cached", err, tok == first, f.idp.TokenRequests())
	}
	clk.advance(2 * time.Minute)
	tok, err := src.Token(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if tok == first || f.idp.TokenRequests() != 2 {
		t.Errorf("at +55m: same token %v, requests %d; want renewed", tok == first, f.idp.TokenRequests())
	}
}

func TestShortLivedTokenRenewedOnEveryCall(t *testing.T) {
	f := newFixture(t, devidp.Options{TokenTTL: 4 * time.Minute}) // below the 5-minute margin
	src := f.app(t, f.identity()).Source(auth.ScopeIMAPApp)
	for i := 0; i < 3; i++ {
		tok, err := src.Token(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if d := time.Until(tok.ExpiresOn); d < 3*time.Minute || d > 4*time.Minute+time.Second {
			t.Errorf("ExpiresOn in %v", d)
		}
	}
	if n := f.idp.TokenRequests(); n != 3 {
		t.Errorf("token requests = %d, want 3", n)
	}
}

func TestInvalidate(t *testing.T) {
	f := newFixture(t, devidp.Options{})
	src := f.app(t, f.identity()).Source(auth.ScopeIMAPApp)
	ctx := context.Background()
	a, err := src.Token(ctx)
	if err != nil {
		t.Fatal(err)
	}
	src.Invalidate()
	b, err := src.Token(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if a.Value == b.Value {
		t.Error("Invalidate: got the same token again")
	}
	if n := f.idp.TokenRequests(); n != 2 {
		t.Errorf("token requests = %d, want 2", n)
	}
	if _, err := src.Token(ctx); err != nil || f.idp.TokenRequests() != 2 {
		t.Errorf("after renewal: err %v, requests %d; want cached", err, f.idp.TokenRequests())
	}
}

func TestConcurrentCallsShareOneRequest(t *testing.T) {
	f := newFixture(t, devidp.Options{})
	f.idp.SetTokenDelay(300 * time.Millisecond)
	src := f.app(t, f.identity()).Source(auth.ScopeIMAPApp)
	const n = 16
	var wg sync.WaitGroup
	var failures atomic.Int32
	toks := make([]auth.Token, n)
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			tok, err := src.Token(context.Background())
			if err != nil {
				failures.Add(1)
			}
			toks[i] = tok
		}(i)
	}
	wg.Wait()
	if failures.Load() != 0 {
		t.Fatalf("%d calls failed", failures.Load())
	}
	for _, tok := range toks[1:] {
		if tok != toks[0] {
			t.Fatal("callers got different tokens")
		}
	}
	if r := f.idp.TokenRequests(); r != 1 {
		t.Errorf("token requests = %d, want 1", r)
	}
}

func TestCallerDeadlineDoesNotCancelSharedRequest(t *testing.T) {
	f := newFixture(t, devidp.Options{})
	f.idp.SetTokenDelay(400 * time.Millisecond)
	src := f.app(t, f.identity()).Source(auth.ScopeIMAPApp)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	_, err := src.Token(ctx)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want deadline exceeded", err)
	}
	e := tokenErr(t, err)
	if e.Permanent {
		t.Error("deadline error marked permanent")
	}
	if _, err := src.Token(context.Background()); err != nil {
		t.Fatal(err)
	}
	if r := f.idp.TokenRequests(); r != 1 {
		t.Errorf("token requests = %d, want 1 (the first request went on)", r)
	}
}

func TestFailedRenewalKeepsUsableToken(t *testing.T) {
	f := newFixture(t, devidp.Options{})
	clk := &clock{}
	src := f.app(t, f.identity(), auth.WithClock(clk.now)).Source(auth.ScopeIMAPApp)
	ctx := context.Background()
	first, err := src.Token(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.idp.SetSecretExpired(clientID, true); err != nil {
		t.Fatal(err)
	}
	clk.advance(56 * time.Minute) // renewal due, 4 minutes left
	tok, err := src.Token(ctx)
	if err != nil || tok != first {
		t.Fatalf("renewal failure with a usable token: err %v, same %v", err, tok == first)
	}
	clk.advance(3*time.Minute + 30*time.Second) // 30s left: not usable
	_, err = src.Token(ctx)
	if e := tokenErr(t, err); e.Code != "AADSTS7000222" {
		t.Errorf("error = %+v", e)
	}
	src.Invalidate()
	if _, err := src.Token(ctx); err == nil {
		t.Error("after Invalidate: no error, want AADSTS7000222")
	}
}

// --- certificates ---

func writePEM(t *testing.T, path string, blocks ...*pem.Block) {
	t.Helper()
	var b []byte
	for _, blk := range blocks {
		b = append(b, pem.EncodeToMemory(blk)...)
	}
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

func selfSigned(t *testing.T, key any, pub any, notAfter time.Time) *x509.Certificate {
	t.Helper()
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		Subject:      pkix.Name{CommonName: "mailpipe test app"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     notAfter,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, pub, key)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

var (
	rsaOnce sync.Once
	rsaKeys [2]*rsa.PrivateKey
)

func rsaKey(t *testing.T, i int) *rsa.PrivateKey {
	t.Helper()
	rsaOnce.Do(func() {
		for j := range rsaKeys {
			k, err := rsa.GenerateKey(rand.Reader, 2048)
			if err != nil {
				panic(err)
			}
			rsaKeys[j] = k
		}
	})
	return rsaKeys[i]
}

func certIdentity(f *fixture, certFile, keyFile string) config.Identity {
	return config.Identity{
		TenantID:        tenantID,
		ClientID:        clientID,
		CertificateFile: certFile,
		PrivateKeyFile:  keyFile,
		AuthorityHost:   f.idp.AuthorityHost(),
	}
}

func TestCertificateCredential(t *testing.T) {
	key := rsaKey(t, 0)
	notAfter := time.Now().Add(90 * 24 * time.Hour).Truncate(time.Second)
	cert := selfSigned(t, key, &key.PublicKey, notAfter)
	f := newFixture(t, devidp.Options{Clients: []devidp.Client{{ID: clientID, Certificate: cert, Email: mailbox}}})
	dir := t.TempDir()

	pkcs8, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	combined := filepath.Join(dir, "app.pem")
	writePEM(t, combined, &pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw}, &pem.Block{Type: "PRIVATE KEY", Bytes: pkcs8})
	certOnly := filepath.Join(dir, "app.crt")
	writePEM(t, certOnly, &pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw})
	pkcs1 := filepath.Join(dir, "app.key")
	writePEM(t, pkcs1, &pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(key)})

	for _, id := range []config.Identity{certIdentity(f, combined, ""), certIdentity(f, certOnly, pkcs1)} {
		src := f.app(t, id).Source(auth.ScopeIMAPApp)
		tok, err := src.Token(context.Background())
		if err != nil {
			t.Fatalf("%s/%s: %v", filepath.Base(id.CertificateFile), filepath.Base(id.PrivateKeyFile), err)
		}
		c, err := f.idp.Validate(tok.Value, auth.ScopeIMAPApp)
		if err != nil {
			t.Fatal(err)
		}
		if c.AppIDACR != "2" || c.Email != mailbox {
			t.Errorf("claims = %+v", c)
		}
		got, ok, err := auth.CertificateExpiry(id)
		if err != nil || !ok || !got.Equal(notAfter) {
			t.Errorf("CertificateExpiry = %v, %v, %v; want %v", got, ok, err, notAfter)
		}
	}
}

func TestCertificateNotRegistered(t *testing.T) {
	registered := selfSigned(t, rsaKey(t, 0), &rsaKey(t, 0).PublicKey, time.Now().Add(time.Hour))
	f := newFixture(t, devidp.Options{Clients: []devidp.Client{{ID: clientID, Certificate: registered}}})
	other := rsaKey(t, 1)
	cert := selfSigned(t, other, &other.PublicKey, time.Now().Add(time.Hour))
	p := filepath.Join(t.TempDir(), "other.pem")
	writePEM(t, p, &pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw}, &pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(other)})
	_, err := f.app(t, certIdentity(f, p, "")).Source(auth.ScopeIMAPApp).Token(context.Background())
	e := tokenErr(t, err)
	if e.Code != "AADSTS700027" || !e.Permanent || !strings.Contains(e.Hint, "identities.main.certificate_file") {
		t.Errorf("error = %+v", e)
	}
}

func TestECDSACertificateRejected(t *testing.T) {
	f := newFixture(t, devidp.Options{})
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	cert := selfSigned(t, key, &key.PublicKey, time.Now().Add(time.Hour))
	pkcs8, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	sec1, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	for _, blk := range []*pem.Block{{Type: "PRIVATE KEY", Bytes: pkcs8}, {Type: "EC PRIVATE KEY", Bytes: sec1}} {
		p := filepath.Join(dir, "ec.pem")
		writePEM(t, p, &pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw}, blk)
		_, err := auth.NewApp("main", certIdentity(f, p, ""))
		if err == nil {
			t.Fatalf("%s: NewApp accepted an ECDSA key", blk.Type)
		}
		if msg := err.Error(); !strings.Contains(msg, "identities.main.certificate_file") || !strings.Contains(msg, "ECDSA") || !strings.Contains(msg, "RSA") {
			t.Errorf("%s: error %q should name identities.main.certificate_file and say RSA is needed", blk.Type, msg)
		}
	}
	// CertificateExpiry still reads it.
	p := filepath.Join(dir, "ec.pem")
	if na, ok, err := auth.CertificateExpiry(certIdentity(f, p, "")); err != nil || !ok || !na.Equal(cert.NotAfter) {
		t.Errorf("CertificateExpiry = %v, %v, %v", na, ok, err)
	}
}

func TestCertificateExpiryWithoutCertificate(t *testing.T) {
	if _, ok, err := auth.CertificateExpiry(config.Identity{ClientSecret: "x"}); ok || err != nil {
		t.Errorf("ok %v err %v, want false, nil", ok, err)
	}
	if _, ok, err := auth.CertificateExpiry(config.Identity{CertificateFile: filepath.Join(t.TempDir(), "missing.pem")}); !ok || err == nil {
		t.Errorf("missing file: ok %v err %v, want true and an error", ok, err)
	}
}

func TestNewAppConfigErrors(t *testing.T) {
	good := config.Identity{TenantID: tenantID, ClientID: clientID, ClientSecret: secret}
	certFile := filepath.Join(t.TempDir(), "c.pem")
	cases := []struct {
		name string
		edit func(*config.Identity)
		want string
	}{
		{"no tenant", func(id *config.Identity) { id.TenantID = "" }, "identities.main.tenant_id"},
		{"no client", func(id *config.Identity) { id.ClientID = " " }, "identities.main.client_id"},
		{"no credential", func(id *config.Identity) { id.ClientSecret = "" }, "client_secret_file"},
		{"secret and certificate", func(id *config.Identity) { id.CertificateFile = certFile }, "both"},
		{"http authority", func(id *config.Identity) { id.AuthorityHost = "http://login.example" }, "identities.main.authority_host"},
		{"authority with path", func(id *config.Identity) { id.AuthorityHost = "login.example/tenant" }, "identities.main.authority_host"},
		{"missing certificate", func(id *config.Identity) { id.ClientSecret = ""; id.CertificateFile = certFile }, "identities.main.certificate_file"},
		{"missing ca file", func(id *config.Identity) { id.CAFile = certFile }, "identities.main.ca_file"},
	}
	for _, tc := range cases {
		id := good
		tc.edit(&id)
		_, err := auth.NewApp("main", id)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: err = %v, want mention of %q", tc.name, err, tc.want)
		}
		if err != nil && strings.Contains(err.Error(), secret) {
			t.Errorf("%s: error contains the secret", tc.name)
		}
	}
	if app, err := auth.NewApp("main", good); err != nil || app.Authority() != "https://login.microsoftonline.com/"+tenantID {
		t.Errorf("default authority: %v", err)
	}
	id := good
	id.AuthorityHost = "https://login.microsoftonline.us/"
	if app, err := auth.NewApp("gov", id); err != nil || app.Authority() != "https://login.microsoftonline.us/"+tenantID || app.Name() != "gov" {
		t.Errorf("national cloud authority: %v", err)
	}
}

func TestErrorTextWithoutCode(t *testing.T) {
	e := &auth.Error{Identity: "main", Tenant: "t", Client: "c", Scope: "s", Description: "the token request timed out", Hint: "check"}
	if got, want := e.Error(), `auth: identity "main" (tenant t, client c): token for s: the token request timed out (hint: check)`; got != want {
		t.Errorf("Error() = %q, want %q", got, want)
	}
}

// failingTransport answers token requests itself and passes the rest on.
type failingTransport struct {
	next   http.RoundTripper
	status int
	body   string
}

func (f failingTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	if !strings.HasSuffix(r.URL.Path, "/oauth2/v2.0/token") {
		return f.next.RoundTrip(r)
	}
	return &http.Response{
		StatusCode: f.status,
		Header:     http.Header{"Content-Type": {"application/json"}},
		Body:       io.NopCloser(strings.NewReader(f.body)),
		Request:    r,
	}, nil
}

func TestTransientServerErrors(t *testing.T) {
	f := newFixture(t, devidp.Options{})
	cases := []struct {
		status int
		body   string
		code   string
	}{
		{503, "", ""},
		{429, "", ""},
		{500, `{"error":"server_error","error_description":"AADSTS50000: There was an error issuing a token.\r\nTrace ID: x","error_codes":[50000]}`, "AADSTS50000"},
		{400, `{"error":"temporarily_unavailable","error_description":"AADSTS90033: A transient error has occurred. Please try again.","error_codes":[90033]}`, "AADSTS90033"},
		{400, `{"error":"invalid_request","error_description":"AADSTS900023: Specified tenant identifier is neither a valid DirectoryName nor a valid ObjectId."}`, "AADSTS900023"},
	}
	for _, tc := range cases {
		hc := f.idp.HTTPClient()
		hc.Transport = failingTransport{next: hc.Transport, status: tc.status, body: tc.body}
		_, err := f.app(t, f.identity(), auth.WithHTTPClient(hc)).Source(auth.ScopeIMAPApp).Token(context.Background())
		e := tokenErr(t, err)
		wantPermanent := tc.code == "AADSTS900023"
		if e.HTTPStatus != tc.status || e.Code != tc.code || e.Permanent != wantPermanent || e.Description == "" {
			t.Errorf("%d %s: error = %+v", tc.status, tc.code, e)
		}
		if strings.Contains(e.Description, "Trace ID") {
			t.Errorf("description not cleaned: %q", e.Description)
		}
	}
}
