package devidp_test

import (
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha1"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"math/big"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/mailpipe/mailpipe/internal/devidp"
)

const (
	tenant   = "contoso.onmicrosoft.com"
	clientID = "6f1e2d3c-4b5a-4968-8776-a5b4c3d2e1f0"
	secret   = "dev~Secret.Value_123"
	mailbox  = "shared@contoso.example"
)

func start(t *testing.T, clients ...devidp.Client) *devidp.Server {
	t.Helper()
	if clients == nil {
		clients = []devidp.Client{{ID: clientID, Secret: secret, Email: mailbox}}
	}
	s, err := devidp.Start(devidp.Options{Tenant: tenant, Clients: clients})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	return s
}

type tokenAnswer struct {
	status int
	ok     struct {
		TokenType    string `json:"token_type"`
		ExpiresIn    int    `json:"expires_in"`
		ExtExpiresIn int    `json:"ext_expires_in"`
		AccessToken  string `json:"access_token"`
	}
	err devidp.ErrorResponse
}

func postToken(t *testing.T, s *devidp.Server, tenantPath string, form url.Values, header http.Header) tokenAnswer {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, "https://"+s.AuthorityHost()+"/"+tenantPath+"/oauth2/v2.0/token", strings.NewReader(form.Encode()))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	for k, v := range header {
		req.Header[k] = v
	}
	resp, err := s.HTTPClient().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	a := tokenAnswer{status: resp.StatusCode}
	if resp.StatusCode == http.StatusOK {
		err = json.Unmarshal(body, &a.ok)
	} else {
		err = json.Unmarshal(body, &a.err)
	}
	if err != nil {
		t.Fatalf("answer %d is not JSON: %s", resp.StatusCode, body)
	}
	return a
}

func creds(extra ...string) url.Values {
	v := url.Values{
		"grant_type":    {"client_credentials"},
		"client_id":     {clientID},
		"client_secret": {secret},
		"scope":         {"https://outlook.office365.com/.default openid offline_access profile"},
	}
	for i := 0; i+1 < len(extra); i += 2 {
		if extra[i+1] == "" {
			v.Del(extra[i])
		} else {
			v.Set(extra[i], extra[i+1])
		}
	}
	return v
}

var (
	guidRe = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$`)
	tsRe   = regexp.MustCompile(`^\d{4}-\d\d-\d\d \d\d:\d\d:\d\dZ$`)
)

func checkError(t *testing.T, a tokenAnswer, status int, oauthErr string, code int) {
	t.Helper()
	e := a.err
	if a.status != status || e.Error != oauthErr || len(e.ErrorCodes) != 1 || e.ErrorCodes[0] != code {
		t.Fatalf("got %d %s %v, want %d %s [%d]", a.status, e.Error, e.ErrorCodes, status, oauthErr, code)
	}
	prefix := "AADSTS" + itoa(code) + ": "
	if !strings.HasPrefix(e.ErrorDescription, prefix) {
		t.Errorf("error_description %q does not start with %q", e.ErrorDescription, prefix)
	}
	if !strings.Contains(e.ErrorDescription, "\r\nTrace ID: "+e.TraceID+"\r\nCorrelation ID: "+e.CorrelationID+"\r\nTimestamp: "+e.Timestamp) {
		t.Errorf("error_description lacks the trace lines: %q", e.ErrorDescription)
	}
	if !guidRe.MatchString(e.TraceID) || !guidRe.MatchString(e.CorrelationID) || !tsRe.MatchString(e.Timestamp) {
		t.Errorf("trace_id %q correlation_id %q timestamp %q", e.TraceID, e.CorrelationID, e.Timestamp)
	}
}

func itoa(n int) string {
	b, _ := json.Marshal(n)
	return string(b)
}

func TestOpenIDConfiguration(t *testing.T) {
	s := start(t)
	for _, tp := range []string{tenant, s.TenantID(), strings.ToUpper(tenant)} {
		resp, err := s.HTTPClient().Get("https://" + s.AuthorityHost() + "/" + tp + "/v2.0/.well-known/openid-configuration")
		if err != nil {
			t.Fatal(err)
		}
		var cfg map[string]any
		err = json.NewDecoder(resp.Body).Decode(&cfg)
		resp.Body.Close()
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("%s: %d %v", tp, resp.StatusCode, err)
		}
		base := "https://" + s.AuthorityHost() + "/" + s.TenantID()
		want := map[string]string{
			"issuer":                        s.Issuer(),
			"token_endpoint":                s.TokenEndpoint(),
			"authorization_endpoint":        base + "/oauth2/v2.0/authorize",
			"device_authorization_endpoint": base + "/oauth2/v2.0/devicecode",
		}
		for k, v := range want {
			if cfg[k] != v {
				t.Errorf("%s: %s = %v, want %s", tp, k, cfg[k], v)
			}
		}
	}
	if s.Issuer() != "https://"+s.AuthorityHost()+"/"+s.TenantID()+"/v2.0" || !guidRe.MatchString(s.TenantID()) {
		t.Errorf("Issuer %s, TenantID %s", s.Issuer(), s.TenantID())
	}

	resp, err := s.HTTPClient().Get("https://" + s.AuthorityHost() + "/fabrikam.example/v2.0/.well-known/openid-configuration")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var e devidp.ErrorResponse
	if err := json.NewDecoder(resp.Body).Decode(&e); err != nil {
		t.Fatal(err)
	}
	checkError(t, tokenAnswer{status: resp.StatusCode, err: e}, 400, "invalid_tenant", 90002)
}

func TestTenantDomainIsStable(t *testing.T) {
	a := start(t)
	b := start(t)
	if a.TenantID() != b.TenantID() || a.Tenant() != tenant {
		t.Errorf("tenant ids %s %s", a.TenantID(), b.TenantID())
	}
}

func TestClientCredentialsSecret(t *testing.T) {
	s := start(t)
	a := postToken(t, s, tenant, creds(), nil)
	if a.status != 200 || a.ok.TokenType != "Bearer" || a.ok.ExpiresIn != 3600 || a.ok.ExtExpiresIn != 3600 {
		t.Fatalf("answer %+v", a)
	}
	if s.TokenRequests() != 1 {
		t.Errorf("TokenRequests = %d", s.TokenRequests())
	}
	c, err := s.Validate(a.ok.AccessToken, "https://outlook.office365.com/.default")
	if err != nil {
		t.Fatal(err)
	}
	if c.Audience != devidp.ResourceOutlook || c.Email != mailbox || c.UPN != mailbox || c.AppID != clientID ||
		!c.HasRole("IMAP.AccessAsApp") || c.Subject == "" || c.TenantID != s.TenantID() || c.Issuer != s.Issuer() {
		t.Errorf("claims %+v", c)
	}
	if d := time.Until(c.ExpiresAt); d < 59*time.Minute || d > time.Hour+time.Second {
		t.Errorf("exp in %v", d)
	}
	if !c.NotBefore.Before(time.Now()) || !c.IssuedAt.Before(time.Now()) {
		t.Errorf("nbf %v iat %v not in the past", c.NotBefore, c.IssuedAt)
	}

	// Shape that Dovecot's local validation needs: HS256, no kid, no azp,
	// sub and email present.
	parts := strings.Split(a.ok.AccessToken, ".")
	hdr, _ := base64.RawURLEncoding.DecodeString(parts[0])
	body, _ := base64.RawURLEncoding.DecodeString(parts[1])
	var h, b map[string]any
	if json.Unmarshal(hdr, &h) != nil || json.Unmarshal(body, &b) != nil {
		t.Fatal("token is not a JWT")
	}
	if h["alg"] != "HS256" || h["kid"] != nil || b["azp"] != nil || b["sub"] == nil || b["email"] != mailbox || b["aud"] != devidp.ResourceOutlook {
		t.Errorf("header %v body %v", h, b)
	}

	// Graph, and client_secret_basic.
	form := creds("client_secret", "", "client_id", "", "scope", "https://graph.microsoft.com/.default")
	hdrs := http.Header{"Authorization": {"Basic " + base64.StdEncoding.EncodeToString([]byte(clientID+":"+secret))}}
	a = postToken(t, s, s.TenantID(), form, hdrs)
	if a.status != 200 {
		t.Fatalf("basic auth: %+v", a.err)
	}
	if c, err := s.Validate(a.ok.AccessToken, devidp.ResourceGraph); err != nil || !c.HasRole("Mail.ReadWrite") {
		t.Errorf("graph token: %+v %v", c, err)
	}
	if _, err := s.Validate(a.ok.AccessToken, devidp.ResourceOutlook); !errors.Is(err, devidp.ErrInvalidToken) {
		t.Errorf("graph token accepted for outlook: %v", err)
	}
}

func TestTokenErrors(t *testing.T) {
	s := start(t,
		devidp.Client{ID: clientID, Secret: secret},
		devidp.Client{ID: "expired-app", Secret: secret, SecretExpired: true},
		devidp.Client{ID: "imap-only", Secret: secret, Scopes: []string{"https://outlook.office365.com/.default"}},
	)
	corr := "0f0e0d0c-0b0a-4909-8807-060504030201"
	cases := []struct {
		name     string
		tenant   string
		form     url.Values
		status   int
		oauthErr string
		code     int
	}{
		{"unknown tenant", "fabrikam.example", creds(), 400, "invalid_request", 90002},
		{"unknown client", tenant, creds("client_id", "00000000-1111-4222-8333-444444444444"), 400, "unauthorized_client", 700016},
		{"wrong secret", tenant, creds("client_secret", "nope"), 401, "invalid_client", 7000215},
		{"expired secret", tenant, creds("client_id", "expired-app"), 401, "invalid_client", 7000222},
		{"no credential", tenant, creds("client_secret", ""), 401, "invalid_client", 7000218},
		{"scope without .default", tenant, creds("scope", "https://outlook.office365.com openid"), 400, "invalid_scope", 70011},
		{"two resources", tenant, creds("scope", "https://outlook.office365.com/.default https://graph.microsoft.com/.default"), 400, "invalid_scope", 70011},
		{"scope not allowed", tenant, creds("client_id", "imap-only", "scope", "https://graph.microsoft.com/.default"), 400, "invalid_scope", 70011},
		{"refresh token grant without token", tenant, creds("grant_type", "refresh_token"), 400, "invalid_request", 900144},
		{"unknown grant", tenant, creds("grant_type", "password"), 400, "unsupported_grant_type", 70003},
		{"no client id", tenant, creds("client_id", ""), 400, "invalid_request", 900144},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			a := postToken(t, s, tc.tenant, tc.form, http.Header{"Client-Request-Id": {corr}})
			checkError(t, a, tc.status, tc.oauthErr, tc.code)
			if a.err.CorrelationID != corr {
				t.Errorf("correlation_id %s, want the client-request-id %s", a.err.CorrelationID, corr)
			}
		})
	}
	if s.TokenRequests() != 0 {
		t.Errorf("TokenRequests = %d after failures only", s.TokenRequests())
	}
	a := postToken(t, s, tenant, creds("client_id", "imap-only"), nil)
	if a.status != 200 {
		t.Errorf("imap-only client, outlook scope: %+v", a.err)
	}
}

func TestSecretChanges(t *testing.T) {
	s := start(t)
	if err := s.SetSecretExpired(clientID, true); err != nil {
		t.Fatal(err)
	}
	checkError(t, postToken(t, s, tenant, creds(), nil), 401, "invalid_client", 7000222)
	if err := s.SetSecretExpired(clientID, false); err != nil {
		t.Fatal(err)
	}
	if err := s.SetSecret(clientID, "rotated"); err != nil {
		t.Fatal(err)
	}
	checkError(t, postToken(t, s, tenant, creds(), nil), 401, "invalid_client", 7000215)
	if a := postToken(t, s, tenant, creds("client_secret", "rotated"), nil); a.status != 200 {
		t.Errorf("rotated secret: %+v", a.err)
	}
	s.RemoveClient(clientID)
	checkError(t, postToken(t, s, tenant, creds(), nil), 400, "unauthorized_client", 700016)
	if err := s.SetSecretExpired("nobody", true); err == nil {
		t.Error("SetSecretExpired of an unknown client: no error")
	}
}

func rsaCert(t *testing.T) (*rsa.PrivateKey, *x509.Certificate) {
	t.Helper()
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "app"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	return key, cert
}

func assertion(t *testing.T, key *rsa.PrivateKey, cert *x509.Certificate, aud string, exp time.Time) string {
	t.Helper()
	sum := sha1.Sum(cert.Raw)
	tok := jwt.NewWithClaims(jwt.SigningMethodRS256, jwt.MapClaims{
		"aud": aud, "iss": clientID, "sub": clientID, "jti": "x",
		"nbf": time.Now().Add(-time.Minute).Unix(), "exp": exp.Unix(),
	})
	tok.Header["x5t"] = base64.RawURLEncoding.EncodeToString(sum[:])
	s, err := tok.SignedString(key)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestClientAssertion(t *testing.T) {
	key, cert := rsaCert(t)
	s := start(t, devidp.Client{ID: clientID, Certificate: cert, Email: mailbox})
	form := func(a string) url.Values {
		return creds("client_secret", "", "client_assertion", a,
			"client_assertion_type", "urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
	}
	soon := time.Now().Add(10 * time.Minute)

	a := postToken(t, s, tenant, form(assertion(t, key, cert, s.TokenEndpoint(), soon)), nil)
	if a.status != 200 {
		t.Fatalf("RS256/x5t assertion: %+v", a.err)
	}
	if c, err := s.Validate(a.ok.AccessToken, devidp.ResourceOutlook); err != nil || c.AppIDACR != "2" {
		t.Errorf("claims %+v %v", c, err)
	}
	// aud naming the tenant by domain is fine too.
	if a := postToken(t, s, tenant, form(assertion(t, key, cert, "https://"+s.AuthorityHost()+"/"+tenant+"/oauth2/v2.0/token", soon)), nil); a.status != 200 {
		t.Errorf("aud with domain: %+v", a.err)
	}

	otherKey, otherCert := rsaCert(t)
	checkError(t, postToken(t, s, tenant, form(assertion(t, otherKey, otherCert, s.TokenEndpoint(), soon)), nil), 401, "invalid_client", 700027)
	// Right thumbprint, wrong key.
	checkError(t, postToken(t, s, tenant, form(assertion(t, otherKey, cert, s.TokenEndpoint(), soon)), nil), 401, "invalid_client", 700027)
	checkError(t, postToken(t, s, tenant, form(assertion(t, key, cert, "https://elsewhere.example/token", soon)), nil), 401, "invalid_client", 700027)
	checkError(t, postToken(t, s, tenant, form(assertion(t, key, cert, s.TokenEndpoint(), time.Now().Add(-time.Hour))), nil), 401, "invalid_client", 700024)
	checkError(t, postToken(t, s, tenant, form("not-a-jwt"), nil), 400, "invalid_request", 50027)
	if s.TokenRequests() != 2 {
		t.Errorf("TokenRequests = %d, want 2", s.TokenRequests())
	}
}

func TestValidateAndMint(t *testing.T) {
	s := start(t)
	tok, err := s.Mint(mailbox, "https://outlook.office365.com/.default", 0)
	if err != nil {
		t.Fatal(err)
	}
	if c, err := s.Validate(tok, devidp.ResourceOutlook); err != nil || c.Email != mailbox || !c.HasRole("IMAP.AccessAsApp") {
		t.Errorf("minted token: %+v %v", c, err)
	}
	if _, err := s.Validate(tok, ""); err != nil {
		t.Errorf("no audience check: %v", err)
	}
	if _, err := s.Validate(tok, devidp.ResourceGraph); !errors.Is(err, devidp.ErrInvalidToken) {
		t.Errorf("wrong audience: %v", err)
	}
	expired, err := s.Mint(mailbox, devidp.ResourceOutlook, -time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Validate(expired, devidp.ResourceOutlook); !errors.Is(err, devidp.ErrTokenExpired) {
		t.Errorf("expired token: %v", err)
	}
	tampered := tok[:len(tok)-4] + "AAAA"
	if _, err := s.Validate(tampered, devidp.ResourceOutlook); !errors.Is(err, devidp.ErrInvalidToken) {
		t.Errorf("tampered token: %v", err)
	}
	other := start(t)
	foreign, _ := other.Mint(mailbox, devidp.ResourceOutlook, time.Minute)
	if _, err := s.Validate(foreign, devidp.ResourceOutlook); !errors.Is(err, devidp.ErrInvalidToken) {
		t.Errorf("token of another server: %v", err)
	}
	if s.TokenRequests() != 0 {
		t.Error("Mint counted as a token request")
	}
	// Same check with the exported key, as an external resource server would.
	if _, err := jwt.Parse(tok, func(*jwt.Token) (any, error) { return s.HS256Key(), nil }, jwt.WithValidMethods([]string{"HS256"})); err != nil {
		t.Errorf("HS256Key does not verify the token: %v", err)
	}
}

func TestFiles(t *testing.T) {
	s := start(t)
	dir := t.TempDir()
	p, err := s.WriteDovecotKey(dir)
	if err != nil {
		t.Fatal(err)
	}
	if p != filepath.Join(dir, "default", "HS256", "default") {
		t.Errorf("dovecot key at %s", p)
	}
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	if k, err := base64.StdEncoding.DecodeString(string(b)); err != nil || string(k) != string(s.HS256Key()) {
		t.Errorf("dovecot key file %q does not hold the base64 key", b)
	}

	ca, err := s.WriteCAFile(dir)
	if err != nil {
		t.Fatal(err)
	}
	pemBytes, _ := os.ReadFile(ca)
	pool := x509.NewCertPool()
	if string(pemBytes) != string(s.CACertPEM()) || !pool.AppendCertsFromPEM(pemBytes) {
		t.Error("CA file differs from CACertPEM or holds no certificate")
	}
}

func TestTLS(t *testing.T) {
	s := start(t)
	// A client without the CA must fail; with HTTPClient it works, also
	// under the name localhost.
	if _, err := (&http.Client{Timeout: 5 * time.Second}).Get("https://" + s.AuthorityHost() + "/" + tenant + "/v2.0/.well-known/openid-configuration"); err == nil {
		t.Error("default client trusted devidp's CA")
	}
	port := s.AuthorityHost()[strings.LastIndexByte(s.AuthorityHost(), ':'):]
	resp, err := s.HTTPClient().Get("https://localhost" + port + "/" + tenant + "/v2.0/.well-known/openid-configuration")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var cfg map[string]any
	_ = json.NewDecoder(resp.Body).Decode(&cfg)
	if cfg["issuer"] != "https://localhost"+port+"/"+s.TenantID()+"/v2.0" {
		t.Errorf("issuer for localhost = %v", cfg["issuer"])
	}
}
