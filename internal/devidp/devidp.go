// Package devidp is a loopback fake of the Microsoft identity platform (Entra
// ID v2 endpoints) for tests and the demo. It serves what MSAL Go needs when
// instance discovery is off: the tenant's OpenID configuration, the token
// endpoint and the device authorization endpoint, over HTTPS with a CA made
// at start. It implements the client credentials grant (app-only), and for
// delegated sign-in of directory users (AddUser) the device code flow
// (ApproveDeviceCode plays the user at https://microsoft.com/devicelogin)
// and the refresh token grant with rotation. Its errors have the shape and
// AADSTS codes Entra ID uses, and its access tokens are HS256 JWTs that a
// dev IMAP server (Validate) or Dovecot's oauth2 passdb (local validation,
// see WriteDovecotKey) can check offline.
//
// Refresh token rotation: every redemption returns a new refresh token. The
// redeemed one stays usable for Options.RefreshTokenGrace (so replicas that
// share a token cache and refresh at the same moment do not lock each other
// out), or fails at once with Options.StrictRotation. Entra ID itself keeps
// replaced refresh tokens valid until they expire (90 days of inactivity) or
// are revoked; the stricter modes check that a client persists the rotated
// token and copes with identity providers that enforce one-time use.
//
// It is not a security component: never expose it beyond loopback.
package devidp

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mailpipe/mailpipe/internal/devcert"
)

// Well-known resources and the app roles devidp puts into their tokens.
const (
	ResourceOutlook = "https://outlook.office365.com"
	ResourceGraph   = "https://graph.microsoft.com"
)

// DefaultTokenTTL is the access token lifetime when Options.TokenTTL is zero.
const DefaultTokenTTL = time.Hour

// DovecotKeyPath is where Dovecot's oauth2 local validation looks up the key
// for devidp's tokens, relative to local_validation_key_dict's fs prefix: the
// lookup key is <azp or "default">/<alg>/<kid or "default">, and devidp's
// tokens carry neither azp nor kid.
const DovecotKeyPath = "default/HS256/default"

// Options configure Start.
type Options struct {
	// Tenant is the tenant id (a GUID) or a domain such as
	// contoso.onmicrosoft.com. For a domain the tenant id (tid claim) is
	// derived from it, stable across restarts; both are accepted in URLs.
	// Empty means a random tenant id.
	Tenant string
	// Clients are the registered applications.
	Clients []Client
	// TokenTTL is the access token lifetime (default 1h).
	TokenTTL time.Duration
	// Addr is the listen address; default 127.0.0.1 on a random port.
	Addr string

	// DeviceCodeTTL is how long a device code can be approved (default
	// 15 minutes).
	DeviceCodeTTL time.Duration
	// RefreshTokenGrace is how long a redeemed refresh token stays usable
	// (default DefaultRefreshTokenGrace); ignored with StrictRotation.
	RefreshTokenGrace time.Duration
	// StrictRotation makes a redeemed refresh token fail at once
	// (invalid_grant AADSTS70000), as one-time-use rotation does.
	StrictRotation bool
}

// Client is an app registration.
type Client struct {
	ID     string
	Secret string
	// SecretExpired makes the right secret fail with AADSTS7000222.
	SecretExpired bool
	// Certificate, when set, lets the app authenticate with a client
	// assertion signed by its key (RS256 with x5t, or PS256 with x5t#S256 as
	// MSAL Go sends).
	Certificate *x509.Certificate
	// Email is the mailbox the app acts for: it goes into the tokens as the
	// "email" and "upn" claims, which the dev IMAP servers use as login name.
	Email string
	// Scopes are the resources the app may get tokens for, as
	// "https://outlook.office365.com" or ".../.default"; empty means any.
	Scopes []string
	// PublicClient is the app registration's "Allow public client flows":
	// without it the device code and refresh token grants of a client
	// that sends no credential fail with AADSTS7000218, as in Entra ID.
	PublicClient bool
}

// Server is a running fake identity platform.
type Server struct {
	tenant     string // as configured (GUID or domain)
	tenantID   string // GUID
	domain     string // lower-case domain when Tenant was one
	hsKey      []byte
	caPEM      []byte
	caPool     *x509.CertPool
	ln         net.Listener
	srv        *http.Server
	host       string // 127.0.0.1:port
	mintAppID  string
	closeOnce  sync.Once
	tokenCount atomic.Int64

	deviceCodeCount atomic.Int64
	refreshCount    atomic.Int64

	mu         sync.RWMutex
	clients    map[string]Client
	ttl        time.Duration
	tokenDelay time.Duration

	// delegated flows (delegated.go)
	users          map[string]*user // by lower-case UPN
	deviceCodes    map[string]*deviceCode
	userCodes      map[string]*deviceCode
	refreshTokens  map[string]*refreshToken
	deviceCodeTTL  time.Duration
	refreshGrace   time.Duration
	strictRotation bool
	claimsSeen     []string
}

// Start starts the server. Close it when done.
func Start(opts Options) (*Server, error) {
	s := &Server{
		clients:        make(map[string]Client),
		ttl:            opts.TokenTTL,
		users:          make(map[string]*user),
		deviceCodes:    make(map[string]*deviceCode),
		userCodes:      make(map[string]*deviceCode),
		refreshTokens:  make(map[string]*refreshToken),
		deviceCodeTTL:  opts.DeviceCodeTTL,
		refreshGrace:   opts.RefreshTokenGrace,
		strictRotation: opts.StrictRotation,
	}
	if s.ttl <= 0 {
		s.ttl = DefaultTokenTTL
	}
	if s.deviceCodeTTL <= 0 {
		s.deviceCodeTTL = DefaultDeviceCodeTTL
	}
	if s.refreshGrace <= 0 {
		s.refreshGrace = DefaultRefreshTokenGrace
	}
	switch t := strings.TrimSpace(opts.Tenant); {
	case t == "":
		s.tenantID = randomGUID()
		s.tenant = s.tenantID
	case isGUID(t):
		s.tenantID = strings.ToLower(t)
		s.tenant = s.tenantID
	default:
		s.domain = strings.ToLower(t)
		s.tenant = s.domain
		s.tenantID = derivedGUID("tenant:" + s.domain)
	}
	s.mintAppID = derivedGUID("mint:" + s.tenantID)
	for _, c := range opts.Clients {
		if err := s.AddClient(c); err != nil {
			return nil, err
		}
	}
	s.hsKey = make([]byte, 32)
	if _, err := rand.Read(s.hsKey); err != nil {
		return nil, fmt.Errorf("devidp: %w", err)
	}

	addr := opts.Addr
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	listenHost, _, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("devidp: listen address %q: %w", addr, err)
	}
	ca, err := devcert.New("devidp", listenHost)
	if err != nil {
		return nil, err
	}
	s.caPEM = ca.PEM
	s.caPool = x509.NewCertPool()
	s.caPool.AddCert(ca.Cert)

	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("devidp: %w", err)
	}
	s.ln = ln
	s.host = ln.Addr().String()
	s.srv = &http.Server{
		Handler:           s.routes(),
		ReadHeaderTimeout: 10 * time.Second,
		TLSConfig: &tls.Config{
			MinVersion:   tls.VersionTLS12,
			Certificates: []tls.Certificate{ca.Server},
		},
		// TLS handshake failures of clients that do not trust the CA are
		// expected in tests; keep them off stderr.
		ErrorLog: log.New(io.Discard, "", 0),
	}
	go func() { _ = s.srv.ServeTLS(ln, "", "") }()
	return s, nil
}

// Close stops the server.
func (s *Server) Close() {
	s.closeOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		if err := s.srv.Shutdown(ctx); err != nil {
			_ = s.srv.Close()
		}
	})
}

// AuthorityHost is the host:port to use as an identity's authority_host.
func (s *Server) AuthorityHost() string { return s.host }

// Authority is the MSAL authority URL: https://<AuthorityHost>/<tenant id>.
func (s *Server) Authority() string { return "https://" + s.host + "/" + s.tenantID }

// TenantID is the tenant's GUID (the tid claim).
func (s *Server) TenantID() string { return s.tenantID }

// Tenant is the tenant as configured (GUID or domain).
func (s *Server) Tenant() string { return s.tenant }

// Issuer is the iss claim of the access tokens and the issuer in the
// tenant's OpenID configuration: https://<AuthorityHost>/<tenant id>/v2.0.
func (s *Server) Issuer() string { return "https://" + s.host + "/" + s.tenantID + "/v2.0" }

// TokenEndpoint is the tenant's token endpoint URL.
func (s *Server) TokenEndpoint() string {
	return "https://" + s.host + "/" + s.tenantID + "/oauth2/v2.0/token"
}

// HS256Key is the key the access tokens are signed with.
func (s *Server) HS256Key() []byte { return append([]byte(nil), s.hsKey...) }

// CACertPEM is the PEM of the CA that signed the server certificate.
func (s *Server) CACertPEM() []byte { return append([]byte(nil), s.caPEM...) }

// CertPool is a pool holding only devidp's CA.
func (s *Server) CertPool() *x509.CertPool { return s.caPool.Clone() }

// WriteCAFile writes the CA certificate to dir/devidp-ca.pem and returns the
// path (for an identity's ca_file).
func (s *Server) WriteCAFile(dir string) (string, error) {
	p := filepath.Join(dir, "devidp-ca.pem")
	if err := os.WriteFile(p, s.caPEM, 0o644); err != nil {
		return "", fmt.Errorf("devidp: %w", err)
	}
	return p, nil
}

// WriteDovecotKey writes the HS256 key, base64-encoded and without a
// newline, to dir/default/HS256/default (DovecotKeyPath) and returns that
// path. Point Dovecot at it with
//
//	introspection_mode = local
//	local_validation_key_dict = fs:posix:prefix=<dir>/
//	username_attribute = email
//
// and optionally issuers = <Issuer()>.
func (s *Server) WriteDovecotKey(dir string) (string, error) {
	p := filepath.Join(dir, filepath.FromSlash(DovecotKeyPath))
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return "", fmt.Errorf("devidp: %w", err)
	}
	if err := os.WriteFile(p, []byte(base64.StdEncoding.EncodeToString(s.hsKey)), 0o644); err != nil {
		return "", fmt.Errorf("devidp: %w", err)
	}
	return p, nil
}

// HTTPClient returns a client that trusts devidp's CA (and nothing else).
func (s *Server) HTTPClient() *http.Client {
	return &http.Client{
		Timeout: 30 * time.Second,
		Transport: &http.Transport{
			Proxy:               nil,
			TLSClientConfig:     &tls.Config{RootCAs: s.caPool.Clone(), MinVersion: tls.VersionTLS12},
			TLSHandshakeTimeout: 10 * time.Second,
			MaxIdleConnsPerHost: 16,
			IdleConnTimeout:     30 * time.Second,
		},
	}
}

// TokenRequests counts the token requests that got an access token.
func (s *Server) TokenRequests() int { return int(s.tokenCount.Load()) }

// AddClient registers an app, replacing one with the same ID.
func (s *Server) AddClient(c Client) error {
	if strings.TrimSpace(c.ID) == "" {
		return errors.New("devidp: client without ID")
	}
	c.Scopes = append([]string(nil), c.Scopes...)
	s.mu.Lock()
	s.clients[strings.ToLower(c.ID)] = c
	s.mu.Unlock()
	return nil
}

// RemoveClient unregisters an app.
func (s *Server) RemoveClient(id string) {
	s.mu.Lock()
	delete(s.clients, strings.ToLower(id))
	s.mu.Unlock()
}

// SetSecret changes an app's secret.
func (s *Server) SetSecret(id, secret string) error {
	return s.updateClient(id, func(c *Client) { c.Secret = secret })
}

// SetSecretExpired marks an app's secret as expired (AADSTS7000222) or not.
func (s *Server) SetSecretExpired(id string, expired bool) error {
	return s.updateClient(id, func(c *Client) { c.SecretExpired = expired })
}

// SetCertificate registers (or with nil removes) an app's certificate.
func (s *Server) SetCertificate(id string, cert *x509.Certificate) error {
	return s.updateClient(id, func(c *Client) { c.Certificate = cert })
}

// SetTokenTTL changes the lifetime of tokens issued from now on.
func (s *Server) SetTokenTTL(d time.Duration) {
	if d <= 0 {
		d = DefaultTokenTTL
	}
	s.mu.Lock()
	s.ttl = d
	s.mu.Unlock()
}

// SetTokenDelay makes every token request wait d before it is answered, so
// tests can make concurrent requests overlap.
func (s *Server) SetTokenDelay(d time.Duration) {
	s.mu.Lock()
	s.tokenDelay = d
	s.mu.Unlock()
}

func (s *Server) updateClient(id string, f func(*Client)) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	c, ok := s.clients[strings.ToLower(id)]
	if !ok {
		return fmt.Errorf("devidp: no client %q", id)
	}
	f(&c)
	s.clients[strings.ToLower(id)] = c
	return nil
}

func (s *Server) client(id string) (Client, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	c, ok := s.clients[strings.ToLower(id)]
	return c, ok
}

func (s *Server) settings() (ttl, delay time.Duration) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.ttl, s.tokenDelay
}

// knownTenant reports whether a tenant path segment names this tenant.
func (s *Server) knownTenant(t string) bool {
	t = strings.ToLower(t)
	return t == s.tenantID || (s.domain != "" && t == s.domain)
}

func isGUID(s string) bool {
	if len(s) != 36 {
		return false
	}
	for i, r := range s {
		switch i {
		case 8, 13, 18, 23:
			if r != '-' {
				return false
			}
		default:
			if !strings.ContainsRune("0123456789abcdefABCDEF", r) {
				return false
			}
		}
	}
	return true
}

func formatGUID(b []byte) string {
	b[6] = (b[6] & 0x0f) | 0x40
	b[8] = (b[8] & 0x3f) | 0x80
	h := hex.EncodeToString(b[:16])
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:32]
}

func randomGUID() string {
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		panic("devidp: crypto/rand: " + err.Error())
	}
	return formatGUID(b)
}

// derivedGUID is a stable GUID for a name (tenant domains, service
// principal object ids).
func derivedGUID(name string) string {
	sum := sha256.Sum256([]byte("devidp/" + name))
	return formatGUID(sum[:16])
}
