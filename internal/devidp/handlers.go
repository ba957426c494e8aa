package devidp

import (
	"crypto/rsa"
	"crypto/sha1" // #nosec G505 -- x5t is defined as a SHA-1 thumbprint
	"crypto/sha256"
	"crypto/subtle"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

const (
	grantClientCredentials = "client_credentials"
	grantDeviceCode        = "urn:ietf:params:oauth:grant-type:device_code"
	// grantDeviceCodeShort is what MSAL libraries send; Entra ID accepts
	// both names.
	grantDeviceCodeShort = "device_code"
	grantRefreshToken    = "refresh_token"
	assertionTypeJWT     = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
)

func (s *Server) routes() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{tenant}/v2.0/.well-known/openid-configuration", s.handleOpenIDConfig)
	mux.HandleFunc("GET /{tenant}/discovery/v2.0/keys", s.handleKeys)
	mux.HandleFunc("POST /{tenant}/oauth2/v2.0/token", s.handleToken)
	mux.HandleFunc("POST /{tenant}/oauth2/v2.0/devicecode", s.handleDeviceCode)
	mux.HandleFunc("GET /common/discovery/instance", s.handleInstanceDiscovery)
	return mux
}

// base is the scheme and host the client used (so a client that calls the
// server "localhost" gets endpoints it can reach and an issuer MSAL accepts).
func (s *Server) base(r *http.Request) string {
	host := r.Host
	if host == "" {
		host = s.host
	}
	return "https://" + host
}

func (s *Server) handleOpenIDConfig(w http.ResponseWriter, r *http.Request) {
	tenant := r.PathValue("tenant")
	if !s.knownTenant(tenant) {
		e := errTenantNotFound(tenant)
		e.err = "invalid_tenant"
		s.writeError(w, r, e)
		return
	}
	b := s.base(r) + "/" + s.tenantID
	writeJSON(w, http.StatusOK, map[string]any{
		"token_endpoint":                        b + "/oauth2/v2.0/token",
		"token_endpoint_auth_methods_supported": []string{"client_secret_post", "private_key_jwt", "client_secret_basic"},
		"jwks_uri":                              b + "/discovery/v2.0/keys",
		"response_modes_supported":              []string{"query", "fragment", "form_post"},
		"subject_types_supported":               []string{"pairwise"},
		"id_token_signing_alg_values_supported": []string{"RS256"},
		"response_types_supported":              []string{"code", "id_token", "code id_token", "id_token token"},
		"scopes_supported":                      []string{"openid", "profile", "email", "offline_access"},
		"issuer":                                b + "/v2.0",
		"request_uri_parameter_supported":       false,
		"authorization_endpoint":                b + "/oauth2/v2.0/authorize",
		"device_authorization_endpoint":         b + "/oauth2/v2.0/devicecode",
		"end_session_endpoint":                  b + "/oauth2/v2.0/logout",
		"http_logout_supported":                 true,
		"frontchannel_logout_supported":         true,
		"tenant_region_scope":                   "EU",
		"cloud_instance_name":                   "microsoftonline.com",
		"cloud_graph_host_name":                 "graph.windows.net",
		"msgraph_host":                          "graph.microsoft.com",
	})
}

// handleKeys serves an empty key set: access tokens are HS256 (shared key),
// which has no public form.
func (s *Server) handleKeys(w http.ResponseWriter, r *http.Request) {
	if tenant := r.PathValue("tenant"); !s.knownTenant(tenant) {
		s.writeError(w, r, errTenantNotFound(tenant))
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"keys": []any{}})
}

// handleInstanceDiscovery answers MSAL's instance discovery, which it only
// uses when instance discovery is on.
func (s *Server) handleInstanceDiscovery(w http.ResponseWriter, r *http.Request) {
	host := strings.TrimPrefix(s.base(r), "https://")
	writeJSON(w, http.StatusOK, map[string]any{
		"tenant_discovery_endpoint": s.base(r) + "/" + s.tenantID + "/v2.0/.well-known/openid-configuration",
		"api-version":               "1.1",
		"metadata": []map[string]any{{
			"preferred_network": host,
			"preferred_cache":   host,
			"aliases":           []string{host},
		}},
	})
}

// tokenResponse is a successful token answer.
type tokenResponse struct {
	TokenType    string `json:"token_type"`
	ExpiresIn    int64  `json:"expires_in"`
	ExtExpiresIn int64  `json:"ext_expires_in"`
	AccessToken  string `json:"access_token"`
}

func (s *Server) handleToken(w http.ResponseWriter, r *http.Request) {
	ttl, delay := s.settings()
	if delay > 0 {
		t := time.NewTimer(delay)
		select {
		case <-t.C:
		case <-r.Context().Done():
			t.Stop()
			return
		}
	}
	tenant := r.PathValue("tenant")
	if !s.knownTenant(tenant) {
		s.writeError(w, r, errTenantNotFound(tenant))
		return
	}
	if err := r.ParseForm(); err != nil {
		s.writeError(w, r, errMissingParam("grant_type"))
		return
	}
	grant := r.PostForm.Get("grant_type")
	switch grant {
	case grantClientCredentials:
		s.clientCredentials(w, r, ttl)
	case grantDeviceCode, grantDeviceCodeShort:
		s.deviceCodeGrant(w, r, ttl)
	case grantRefreshToken:
		s.refreshTokenGrant(w, r, ttl)
	case "":
		s.writeError(w, r, errMissingParam("grant_type"))
	default:
		s.writeError(w, r, errUnsupportedGrant(grant))
	}
}

func (s *Server) clientCredentials(w http.ResponseWriter, r *http.Request, ttl time.Duration) {
	form := r.PostForm
	clientID := form.Get("client_id")
	basicID, _, hasBasic := r.BasicAuth()
	if clientID == "" && hasBasic {
		clientID = basicID
	}
	if clientID == "" {
		s.writeError(w, r, errMissingParam("client_id"))
		return
	}
	c, ok := s.client(clientID)
	if !ok {
		s.writeError(w, r, errClientNotFound(clientID, s.tenant))
		return
	}
	acr, e := s.authenticateClient(r, c)
	if e != nil {
		s.writeError(w, r, *e)
		return
	}

	aud, e := resourceFromScope(form.Get("scope"), c.Scopes)
	if e != nil {
		s.writeError(w, r, *e)
		return
	}
	s.recordClaims(r)
	tok, err := s.mint(c.ID, acr, c.Email, aud, ttl)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	s.tokenCount.Add(1)
	secs := int64(ttl / time.Second)
	writeJSON(w, http.StatusOK, tokenResponse{
		TokenType:    "Bearer",
		ExpiresIn:    secs,
		ExtExpiresIn: secs,
		AccessToken:  tok,
	})
}

// authenticateClient checks a confidential client's credential: a client
// assertion signed with its certificate, or its secret (in the form or as
// HTTP basic authentication). It returns the appidacr claim: "1" for a
// secret, "2" for a certificate.
func (s *Server) authenticateClient(r *http.Request, c Client) (string, *aadError) {
	form := r.PostForm
	_, basicSecret, hasBasic := r.BasicAuth()
	switch {
	case form.Get("client_assertion") != "":
		if form.Get("client_assertion_type") != assertionTypeJWT {
			return "", ptr(errAssertionType())
		}
		if e := s.checkAssertion(r, c, form.Get("client_assertion")); e != nil {
			return "", e
		}
		return "2", nil
	case form.Get("client_secret") != "" || (hasBasic && basicSecret != ""):
		secret := form.Get("client_secret")
		if secret == "" {
			secret = basicSecret
		}
		if c.Secret == "" || subtle.ConstantTimeCompare([]byte(secret), []byte(c.Secret)) != 1 {
			return "", ptr(errInvalidSecret(c.ID))
		}
		if c.SecretExpired {
			return "", ptr(errSecretExpired(c.ID))
		}
		return "1", nil
	}
	return "", ptr(errNoCredential())
}

// oidcScopes are added by MSAL to every request and ignored for app tokens.
var oidcScopes = map[string]bool{"openid": true, "offline_access": true, "profile": true, "email": true}

// resourceFromScope checks the scope parameter of a client credentials
// request: exactly one "<resource>/.default", allowed for the app.
func resourceFromScope(scope string, allowed []string) (string, *aadError) {
	var res []string
	for _, f := range strings.Fields(scope) {
		if !oidcScopes[strings.ToLower(f)] {
			res = append(res, f)
		}
	}
	if len(res) != 1 || !strings.HasSuffix(res[0], "/.default") || len(res[0]) == len("/.default") {
		e := errInvalidScope(scope)
		return "", &e
	}
	aud := Audience(res[0])
	if len(allowed) == 0 {
		return aud, nil
	}
	for _, a := range allowed {
		if strings.EqualFold(strings.TrimSuffix(Audience(a), "/"), strings.TrimSuffix(aud, "/")) {
			return aud, nil
		}
	}
	e := errInvalidScope(res[0])
	return "", &e
}

var errKeyNotFound = errors.New("key not found")

// checkAssertion validates a client assertion: a JWT signed with the key of
// the app's registered certificate, identified by x5t (SHA-1, RS256) or
// x5t#S256 (SHA-256, PS256 as MSAL Go sends), iss = sub = client id, aud =
// this tenant's token endpoint, within exp/nbf.
func (s *Server) checkAssertion(r *http.Request, c Client, assertion string) *aadError {
	var thumb string
	keyFunc := func(t *jwt.Token) (any, error) {
		var want []byte
		switch {
		case t.Header["x5t#S256"] != nil:
			thumb, _ = t.Header["x5t#S256"].(string)
			if c.Certificate != nil {
				sum := sha256.Sum256(c.Certificate.Raw)
				want = sum[:]
			}
		case t.Header["x5t"] != nil:
			thumb, _ = t.Header["x5t"].(string)
			if c.Certificate != nil {
				sum := sha1.Sum(c.Certificate.Raw) // #nosec G401 -- thumbprint, not security
				want = sum[:]
			}
		default:
			return nil, errKeyNotFound
		}
		got, ok := decodeB64(thumb)
		if want == nil || !ok || subtle.ConstantTimeCompare(got, want) != 1 {
			return nil, errKeyNotFound
		}
		pub, ok := c.Certificate.PublicKey.(*rsa.PublicKey)
		if !ok {
			return nil, errKeyNotFound
		}
		return pub, nil
	}
	mc := jwt.MapClaims{}
	_, err := jwt.ParseWithClaims(assertion, mc, keyFunc,
		jwt.WithValidMethods([]string{"RS256", "PS256"}),
		jwt.WithExpirationRequired(),
		jwt.WithLeeway(5*time.Minute))
	switch {
	case err == nil:
	case errors.Is(err, errKeyNotFound):
		e := errAssertionKeyNotFound(c.ID, thumbprintHex(thumb))
		return &e
	case errors.Is(err, jwt.ErrTokenMalformed):
		e := errAssertionMalformed()
		return &e
	case errors.Is(err, jwt.ErrTokenExpired), errors.Is(err, jwt.ErrTokenNotValidYet):
		e := errAssertionTime()
		return &e
	case errors.Is(err, jwt.ErrTokenSignatureInvalid):
		e := errAssertionInvalid(c.ID, "The signature is invalid.")
		return &e
	default:
		e := errAssertionInvalid(c.ID, err.Error())
		return &e
	}
	if iss, _ := mc["iss"].(string); !strings.EqualFold(iss, c.ID) {
		e := errAssertionInvalid(c.ID, fmt.Sprintf("The issuer '%s' does not match the client id.", iss))
		return &e
	}
	if sub, _ := mc["sub"].(string); !strings.EqualFold(sub, c.ID) {
		e := errAssertionInvalid(c.ID, fmt.Sprintf("The subject '%s' does not match the client id.", sub))
		return &e
	}
	auds, _ := mc.GetAudience()
	for _, a := range auds {
		if s.isTokenEndpoint(r, a) {
			return nil
		}
	}
	e := errAssertionInvalid(c.ID, fmt.Sprintf("The audience '%s' is not the token endpoint.", strings.Join(auds, ",")))
	return &e
}

// isTokenEndpoint reports whether u is this tenant's token endpoint, by
// tenant id or domain, at the host the client used or AuthorityHost.
func (s *Server) isTokenEndpoint(r *http.Request, u string) bool {
	tenants := []string{s.tenantID}
	if s.domain != "" {
		tenants = append(tenants, s.domain)
	}
	for _, b := range []string{s.base(r), "https://" + s.host} {
		for _, t := range tenants {
			if strings.EqualFold(u, b+"/"+t+"/oauth2/v2.0/token") {
				return true
			}
		}
	}
	return false
}

func decodeB64(s string) ([]byte, bool) {
	for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.RawStdEncoding, base64.URLEncoding, base64.RawURLEncoding} {
		if b, err := enc.DecodeString(s); err == nil {
			return b, true
		}
	}
	return nil, false
}

func thumbprintHex(b64 string) string {
	b, ok := decodeB64(b64)
	if !ok {
		return b64
	}
	return strings.ToUpper(hex.EncodeToString(b))
}

// CertificateThumbprint is the SHA-1 thumbprint (hex, upper case) that the
// Entra portal shows for a certificate.
func CertificateThumbprint(cert *x509.Certificate) string {
	sum := sha1.Sum(cert.Raw) // #nosec G401 -- thumbprint, not security
	return strings.ToUpper(hex.EncodeToString(sum[:]))
}
