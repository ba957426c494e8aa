package auth

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/AzureAD/microsoft-authentication-library-for-go/apps/cache"
	"github.com/AzureAD/microsoft-authentication-library-for-go/apps/confidential"
	"go.uber.org/zap"

	"github.com/mailpipe/mailpipe/internal/config"
)

// DefaultAuthorityHost is the Microsoft Entra ID login host of the global
// cloud, used when an identity has no authority_host.
const DefaultAuthorityHost = "login.microsoftonline.com"

// DefaultRequestTimeout bounds one token request (discovery included).
const DefaultRequestTimeout = 30 * time.Second

// microsoftHosts are Microsoft's own login hosts (public and national clouds)
// that MSAL knows. For any other host MSAL's instance discovery, which asks
// login.microsoftonline.com about the host, is turned off.
var microsoftHosts = map[string]bool{
	"login.microsoftonline.com":        true,
	"login.microsoft.com":              true,
	"login.windows.net":                true,
	"sts.windows.net":                  true,
	"login.microsoftonline.us":         true,
	"login-us.microsoftonline.com":     true,
	"login.usgovcloudapi.net":          true,
	"login.chinacloudapi.cn":           true,
	"login.partner.microsoftonline.cn": true,
	"login.microsoftonline.de":         true,
}

// Option configures NewApp.
type Option func(*options)

type options struct {
	log          *zap.Logger
	httpClient   *http.Client
	now          func() time.Time
	timeout      time.Duration
	capabilities []string
	signInCmd    string
	rotationWait time.Duration
}

// WithLogger sets the logger (default: none). Tokens and secrets are never
// logged.
func WithLogger(l *zap.Logger) Option {
	return func(o *options) {
		if l != nil {
			o.log = l
		}
	}
}

// WithHTTPClient sets the HTTP client for the token endpoint. It replaces
// the client NewApp would build, so the identity's ca_file is then not used.
func WithHTTPClient(c *http.Client) Option {
	return func(o *options) {
		if c != nil {
			o.httpClient = c
		}
	}
}

// WithClock sets the clock used to decide when a cached token must be
// renewed (tests).
func WithClock(now func() time.Time) Option {
	return func(o *options) {
		if now != nil {
			o.now = now
		}
	}
}

// WithRequestTimeout bounds one token acquisition (default 30s). It applies
// even when the caller's context has no deadline; a caller whose context
// ends earlier stops waiting, while the request goes on for other callers.
func WithRequestTimeout(d time.Duration) Option {
	return func(o *options) {
		if d > 0 {
			o.timeout = d
		}
	}
}

// WithClientCapabilities declares client capabilities to Entra ID, e.g.
// "cp1" for Continuous Access Evaluation: Entra ID may then issue
// longer-lived tokens that resources revoke on critical events, answering
// with a claims challenge (see ClaimsTokenSource). Declare it only when
// every user of the tokens handles claims challenges. Default: none.
func WithClientCapabilities(caps ...string) Option {
	return func(o *options) {
		o.capabilities = append([]string(nil), caps...)
	}
}

// ident is what App and Delegated share: the identity's names for error
// texts and logs, the clock and the request timeout.
type ident struct {
	name      string
	tenant    string
	clientID  string
	authority string
	secret    string // only to redact it from error texts
	// delegated identities: the service account and the command that
	// signs it in (for hints).
	delegated bool
	username  string
	signInCmd string
	log       *zap.Logger
	now       func() time.Time
	timeout   time.Duration
}

func (id *ident) base() *ident { return id }

// App is one Entra ID app registration (a confidential client) used with
// the client credentials grant. It hands out one TokenSource per scope.
//
// Each source caches its token and renews it when less than max(5 minutes,
// 10% of its lifetime) remains; concurrent callers share one request.
// MSAL's own token cache is kept empty (noCache), so every renewal and every
// request after Invalidate goes to the token endpoint and yields a new
// token: MSAL would otherwise hand back its cached token until 5 minutes
// before expiry, even one a server has just rejected.
type App struct {
	ident
	client confidential.Client

	mu      sync.Mutex
	sources map[string]*source
}

// NewApp makes the MSAL confidential client for the identity called name
// (the key under identities in the configuration). The credential is the
// client secret (ClientSecret, which the config loader fills from
// client_secret_file too) or the certificate (CertificateFile, with the key
// in it or in PrivateKeyFile; RSA only). Errors name the configuration key
// at fault. NewApp does no network I/O.
func NewApp(name string, id config.Identity, opts ...Option) (*App, error) {
	o := newOptions(opts)
	key := "identities." + name
	tenant, clientID, host, err := commonSettings(key, id)
	if err != nil {
		return nil, err
	}

	secret := strings.TrimSpace(id.ClientSecret.Value())
	var cred confidential.Credential
	switch {
	case secret != "" && id.CertificateFile != "":
		return nil, fmt.Errorf("%s: both a client secret and certificate_file are set; keep one", key)
	case secret != "":
		cred, err = confidential.NewCredFromSecret(secret)
		if err != nil {
			return nil, fmt.Errorf("%s.client_secret: %w", key, err)
		}
	case id.CertificateFile != "":
		var leaf *x509.Certificate
		cred, leaf, err = certCredential(key, id)
		if err != nil {
			return nil, err
		}
		if time.Now().After(leaf.NotAfter) {
			o.log.Warn("client certificate has expired",
				zap.String("identity", name), zap.Time("not_after", leaf.NotAfter))
		}
	default:
		return nil, fmt.Errorf("%s: no credential: set client_secret, client_secret_file or certificate_file", key)
	}

	hc, err := o.client(key, id)
	if err != nil {
		return nil, err
	}

	authority := "https://" + host + "/" + tenant
	copts := []confidential.Option{
		confidential.WithHTTPClient(hc),
		// MSAL's own token cache is replaced by an always-empty one: the
		// per-scope sources are the only cache, so a renewal or Invalidate
		// always reaches the token endpoint instead of getting the cached
		// (possibly revoked) token back. See noCache.
		confidential.WithCache(noCache{}),
	}
	if !microsoftHosts[strings.ToLower(hostOnly(host))] {
		copts = append(copts, confidential.WithInstanceDiscovery(false))
	}
	if len(o.capabilities) > 0 {
		copts = append(copts, confidential.WithClientCapabilities(o.capabilities))
	}
	client, err := confidential.New(authority, clientID, cred, copts...)
	if err != nil {
		return nil, fmt.Errorf("%s: authority %s: %w", key, authority, err)
	}
	return &App{
		ident: ident{
			name:      name,
			tenant:    tenant,
			clientID:  clientID,
			authority: authority,
			secret:    secret,
			log:       o.log.With(zap.String("identity", name), zap.String("tenant_id", tenant), zap.String("client_id", clientID)),
			now:       o.now,
			timeout:   o.timeout,
		},
		client:  client,
		sources: make(map[string]*source),
	}, nil
}

// newOptions applies opts over the defaults.
func newOptions(opts []Option) options {
	o := options{now: time.Now, timeout: DefaultRequestTimeout}
	for _, opt := range opts {
		opt(&o)
	}
	if o.log == nil {
		o.log = zap.NewNop()
	}
	return o
}

// client is the HTTP client: the one given with WithHTTPClient, or one
// trusting the system roots plus the identity's ca_file.
func (o options) client(key string, id config.Identity) (*http.Client, error) {
	if o.httpClient != nil {
		return o.httpClient, nil
	}
	hc, err := newHTTPClient(id.CAFile)
	if err != nil {
		return nil, fmt.Errorf("%s.ca_file: %w", key, err)
	}
	return hc, nil
}

// commonSettings checks tenant_id, client_id and authority_host of the
// identity at configuration key key.
func commonSettings(key string, id config.Identity) (tenant, clientID, host string, err error) {
	tenant = strings.TrimSpace(id.TenantID)
	clientID = strings.TrimSpace(id.ClientID)
	if tenant == "" {
		return "", "", "", fmt.Errorf("%s.tenant_id: missing (the Directory (tenant) ID or a verified domain of the tenant)", key)
	}
	if strings.ContainsAny(tenant, "/?#% ") {
		return "", "", "", fmt.Errorf("%s.tenant_id: %q is not a tenant ID or domain", key, tenant)
	}
	if clientID == "" {
		return "", "", "", fmt.Errorf("%s.client_id: missing (the Application (client) ID of the app registration)", key)
	}
	host, err = authorityHost(id.AuthorityHost)
	if err != nil {
		return "", "", "", fmt.Errorf("%s.authority_host: %w", key, err)
	}
	return tenant, clientID, host, nil
}

// Name is the identity's name.
func (a *App) Name() string { return a.name }

// Authority is the authority URL (https://<host>/<tenant>).
func (a *App) Authority() string { return a.authority }

// Source returns the token source for one scope, such as ScopeIMAPApp. All
// calls with the same scope share one source and so one cached token.
func (a *App) Source(scope string) TokenSource {
	scope = strings.TrimSpace(scope)
	a.mu.Lock()
	defer a.mu.Unlock()
	s, ok := a.sources[scope]
	if !ok {
		s = &source{b: a, scope: scope}
		a.sources[scope] = s
	}
	return s
}

// acquire asks the token endpoint for a token (MSAL's cache is always
// empty, see noCache), with a claims challenge when claims is set.
func (a *App) acquire(ctx context.Context, scope, claims string) (Token, error) {
	start := time.Now()
	var opts []confidential.AcquireByCredentialOption
	if claims != "" {
		opts = append(opts, confidential.WithClaims(claims))
	}
	res, err := a.client.AcquireTokenByCredential(ctx, []string{scope}, opts...)
	if err != nil {
		e := a.classify(scope, err)
		a.log.Warn("access token request failed",
			zap.String("scope", scope),
			zap.String("code", e.Code),
			zap.Bool("permanent", e.Permanent),
			zap.String("description", e.Description),
			zap.String("hint", e.Hint),
			zap.Duration("took", time.Since(start)))
		return Token{}, e
	}
	a.log.Debug("access token acquired",
		zap.String("scope", scope),
		zap.Bool("claims_challenge", claims != ""),
		zap.Time("expires_on", res.ExpiresOn),
		zap.Duration("took", time.Since(start)))
	return Token{Value: res.AccessToken, ExpiresOn: res.ExpiresOn}, nil
}

// noCache is an MSAL cache accessor that empties MSAL's in-memory token
// cache before every read, so AcquireTokenByCredential always requests a new
// token. MSAL offers no call to drop one cached token: WithClaims bypasses
// the cache but sends a claims challenge to Entra ID, and a new client per
// renewal would repeat the OpenID discovery. Caching, renewal and Invalidate
// live in source instead.
type noCache struct{}

func (noCache) Replace(_ context.Context, c cache.Unmarshaler, _ cache.ReplaceHints) error {
	return c.Unmarshal([]byte("{}"))
}

func (noCache) Export(context.Context, cache.Marshaler, cache.ExportHints) error { return nil }

// forget is the Invalidate hook of the sources: nothing to do, MSAL's
// cache is always empty.
func (a *App) forget(string, Token) {}

// authorityHost normalises authority_host: default, no scheme, no path.
func authorityHost(h string) (string, error) {
	h = strings.TrimSpace(h)
	if h == "" {
		return DefaultAuthorityHost, nil
	}
	if strings.HasPrefix(strings.ToLower(h), "http://") {
		return "", fmt.Errorf("%q: the authority must use https", h)
	}
	if len(h) > 8 && strings.EqualFold(h[:8], "https://") {
		h = h[8:]
	}
	h = strings.TrimSuffix(h, "/")
	if h == "" || strings.ContainsAny(h, "/?#@ ") {
		return "", fmt.Errorf("%q: want a host name such as %s (or host:port)", h, DefaultAuthorityHost)
	}
	return h, nil
}

func hostOnly(hostport string) string {
	if i := strings.LastIndexByte(hostport, ':'); i >= 0 && !strings.Contains(hostport[i:], "]") {
		return hostport[:i]
	}
	return hostport
}

// newHTTPClient is the default client: the system roots plus caFile's.
func newHTTPClient(caFile string) (*http.Client, error) {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	if caFile != "" {
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return nil, err
		}
		pool, err := x509.SystemCertPool()
		if err != nil || pool == nil {
			pool = x509.NewCertPool()
		}
		if !pool.AppendCertsFromPEM(pem) {
			return nil, errors.New("no PEM certificate found in " + caFile)
		}
		tr.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	}
	return &http.Client{Transport: tr, Timeout: DefaultRequestTimeout}, nil
}
