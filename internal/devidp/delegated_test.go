package devidp_test

import (
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mailpipe/mailpipe/internal/devidp"
)

const (
	publicID    = "9c8b7a65-4321-4fed-8cba-9876543210fe"
	serviceUser = "svc-mailpipe@contoso.example"
	imapScope   = "https://outlook.office.com/IMAP.AccessAsUser.All"
	graphRW     = "https://graph.microsoft.com/Mail.ReadWrite.Shared"
	graphSend   = "https://graph.microsoft.com/Mail.Send.Shared"
)

func startDelegated(t *testing.T, opts devidp.Options) *devidp.Server {
	t.Helper()
	opts.Tenant = tenant
	opts.Clients = append(opts.Clients,
		devidp.Client{ID: publicID, PublicClient: true},
		devidp.Client{ID: clientID, Secret: secret, Email: mailbox}, // no public client flows
	)
	s, err := devidp.Start(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	if err := s.AddUser(serviceUser, devidp.UserOptions{DisplayName: "Mailpipe Service"}); err != nil {
		t.Fatal(err)
	}
	return s
}

type answer struct {
	status int
	body   map[string]any
	err    devidp.ErrorResponse
}

func (a answer) str(k string) string { s, _ := a.body[k].(string); return s }

func post(t *testing.T, s *devidp.Server, endpoint string, form url.Values) answer {
	t.Helper()
	resp, err := s.HTTPClient().PostForm("https://"+s.AuthorityHost()+"/"+tenant+"/oauth2/v2.0/"+endpoint, form)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	a := answer{status: resp.StatusCode}
	if resp.StatusCode == http.StatusOK {
		err = json.Unmarshal(raw, &a.body)
	} else {
		err = json.Unmarshal(raw, &a.err)
	}
	if err != nil {
		t.Fatalf("%s: answer %d is not JSON: %s", endpoint, resp.StatusCode, raw)
	}
	return a
}

func expectError(t *testing.T, a answer, status int, oauthErr string, code int) {
	t.Helper()
	checkError(t, tokenAnswer{status: a.status, err: a.err}, status, oauthErr, code)
}

func deviceCodeRequest(t *testing.T, s *devidp.Server, client, scope string) answer {
	t.Helper()
	return post(t, s, "devicecode", url.Values{"client_id": {client}, "scope": {scope}})
}

func pollDeviceCode(t *testing.T, s *devidp.Server, client, code, scope string) answer {
	t.Helper()
	return post(t, s, "token", url.Values{
		"grant_type":  {"urn:ietf:params:oauth:grant-type:device_code"},
		"client_id":   {client},
		"device_code": {code},
		"client_info": {"1"},
		"scope":       {scope},
	})
}

func refresh(t *testing.T, s *devidp.Server, rt, scope string) answer {
	t.Helper()
	return post(t, s, "token", url.Values{
		"grant_type":    {"refresh_token"},
		"client_id":     {publicID},
		"refresh_token": {rt},
		"client_info":   {"1"},
		"scope":         {scope},
	})
}

func jwtClaims(t *testing.T, tok string) map[string]any {
	t.Helper()
	parts := strings.Split(tok, ".")
	if len(parts) != 3 {
		t.Fatalf("not a JWT")
	}
	b, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	return m
}

// signIn runs the device code flow for serviceUser and returns the answer.
func signIn(t *testing.T, s *devidp.Server, scope string) answer {
	t.Helper()
	dc := deviceCodeRequest(t, s, publicID, scope)
	if dc.status != 200 {
		t.Fatalf("devicecode: %+v", dc.err)
	}
	if err := s.ApproveDeviceCode(dc.str("user_code"), serviceUser); err != nil {
		t.Fatal(err)
	}
	a := pollDeviceCode(t, s, publicID, dc.str("device_code"), scope)
	if a.status != 200 {
		t.Fatalf("token: %+v", a.err)
	}
	return a
}

var userCodeRe = regexp.MustCompile(`^[A-Z2-9]{9}$`)

func TestDeviceCodeFlow(t *testing.T) {
	s := startDelegated(t, devidp.Options{})
	scope := imapScope + " openid profile offline_access"
	dc := deviceCodeRequest(t, s, publicID, scope)
	if dc.status != 200 {
		t.Fatalf("devicecode: %+v", dc.err)
	}
	uc := dc.str("user_code")
	if !userCodeRe.MatchString(uc) || dc.str("device_code") == "" || dc.str("verification_uri") != "https://microsoft.com/devicelogin" ||
		dc.body["expires_in"] != float64(900) || dc.body["interval"] != float64(5) ||
		!strings.Contains(dc.str("message"), uc) || !strings.Contains(dc.str("message"), "https://microsoft.com/devicelogin") {
		t.Fatalf("device code answer %v", dc.body)
	}
	if s.DeviceCodeRequests() != 1 {
		t.Errorf("DeviceCodeRequests = %d", s.DeviceCodeRequests())
	}

	// Pending until the user approves.
	expectError(t, pollDeviceCode(t, s, publicID, dc.str("device_code"), scope), 400, "authorization_pending", 70016)
	if err := s.ApproveDeviceCode("nope", serviceUser); err == nil {
		t.Error("ApproveDeviceCode accepted an unknown code")
	}
	if err := s.ApproveDeviceCode(uc, "nobody@contoso.example"); err == nil {
		t.Error("ApproveDeviceCode accepted an unknown user")
	}
	if err := s.ApproveDeviceCode(strings.ToLower(uc), serviceUser); err != nil {
		t.Fatal(err)
	}
	a := pollDeviceCode(t, s, publicID, dc.str("device_code"), scope)
	if a.status != 200 {
		t.Fatalf("token: %+v", a.err)
	}
	if a.str("token_type") != "Bearer" || a.str("refresh_token") == "" || a.str("id_token") == "" || a.str("scope") != imapScope {
		t.Errorf("answer fields: token_type %q scope %q rt %v id %v", a.str("token_type"), a.str("scope"), a.str("refresh_token") != "", a.str("id_token") != "")
	}

	// Access token: delegated, for Exchange Online.
	c, err := s.Validate(a.str("access_token"), devidp.ResourceOutlookUser)
	if err != nil {
		t.Fatal(err)
	}
	oid, _ := s.UserObjectID(serviceUser)
	if c.UPN != serviceUser || c.Email != serviceUser || c.Name != "Mailpipe Service" || c.ObjectID != oid || c.Subject == "" ||
		c.AppID != publicID || c.AppIDACR != "0" || len(c.Roles) != 0 || !c.HasScope("IMAP.AccessAsUser.All") || len(c.Scopes) != 1 {
		t.Errorf("claims %+v", c)
	}
	if raw := jwtClaims(t, a.str("access_token")); raw["roles"] != nil || raw["scp"] != "IMAP.AccessAsUser.All" || raw["aud"] != "https://outlook.office.com" {
		t.Errorf("raw claims %v", raw)
	}

	// What MSAL reads: client_info (base64url JSON uid/utid) and the id token.
	ciRaw, err := base64.RawURLEncoding.DecodeString(a.str("client_info"))
	if err != nil {
		t.Fatalf("client_info: %v", err)
	}
	var ci map[string]string
	if err := json.Unmarshal(ciRaw, &ci); err != nil || ci["uid"] != oid || ci["utid"] != s.TenantID() {
		t.Errorf("client_info %s", ciRaw)
	}
	idt := jwtClaims(t, a.str("id_token"))
	if idt["preferred_username"] != serviceUser || idt["oid"] != oid || idt["tid"] != s.TenantID() || idt["aud"] != publicID ||
		idt["iss"] != s.Issuer() || idt["name"] != "Mailpipe Service" || idt["ver"] != "2.0" {
		t.Errorf("id token claims %v", idt)
	}

	// A device code is redeemed once.
	expectError(t, pollDeviceCode(t, s, publicID, dc.str("device_code"), scope), 400, "invalid_grant", 70000)
	expectError(t, pollDeviceCode(t, s, publicID, "bogus", scope), 400, "bad_verification_code", 70018)
}

func TestDeviceCodeDeclinedExpiredAndErrors(t *testing.T) {
	s := startDelegated(t, devidp.Options{})
	scope := imapScope + " offline_access"

	dc := deviceCodeRequest(t, s, publicID, scope)
	if err := s.DeclineDeviceCode(dc.str("user_code")); err != nil {
		t.Fatal(err)
	}
	expectError(t, pollDeviceCode(t, s, publicID, dc.str("device_code"), scope), 400, "authorization_declined", 70000)

	dc = deviceCodeRequest(t, s, publicID, scope)
	if err := s.ExpireDeviceCode(dc.str("user_code")); err != nil {
		t.Fatal(err)
	}
	expectError(t, pollDeviceCode(t, s, publicID, dc.str("device_code"), scope), 400, "expired_token", 70019)
	if err := s.ApproveDeviceCode(dc.str("user_code"), serviceUser); err == nil {
		t.Error("approved an expired code")
	}

	// Several resources at once; no resource; unknown client.
	expectError(t, deviceCodeRequest(t, s, publicID, imapScope+" "+graphRW+" offline_access"), 400, "invalid_scope", 28000)
	expectError(t, deviceCodeRequest(t, s, publicID, "openid offline_access"), 400, "invalid_scope", 70011)
	expectError(t, deviceCodeRequest(t, s, "00000000-1111-4222-8333-444444444444", scope), 400, "unauthorized_client", 700016)

	// An app without "Allow public client flows": the code is issued, the
	// token request without a credential fails as in Entra ID.
	dc = deviceCodeRequest(t, s, clientID, scope)
	if dc.status != 200 {
		t.Fatalf("devicecode for a confidential app: %+v", dc.err)
	}
	if err := s.ApproveDeviceCode(dc.str("user_code"), serviceUser); err != nil {
		t.Fatal(err)
	}
	expectError(t, pollDeviceCode(t, s, clientID, dc.str("device_code"), scope), 401, "invalid_client", 7000218)
}

func TestDelegatedRefreshRotation(t *testing.T) {
	s := startDelegated(t, devidp.Options{})
	scope := imapScope + " openid profile offline_access"
	rt0 := signIn(t, s, scope).str("refresh_token")

	a := refresh(t, s, rt0, scope)
	if a.status != 200 {
		t.Fatalf("refresh: %+v", a.err)
	}
	rt1 := a.str("refresh_token")
	if rt1 == "" || rt1 == rt0 {
		t.Fatal("refresh did not rotate the refresh token")
	}
	// Grace: the replaced token still works for a short while (a second
	// replica refreshing at the same moment).
	b := refresh(t, s, rt0, scope)
	if b.status != 200 || b.str("refresh_token") == rt1 {
		t.Fatalf("replaced token within the grace period: %+v", b.err)
	}
	// One refresh token serves every consented resource.
	g := refresh(t, s, rt1, graphRW+" "+graphSend+" offline_access")
	if g.status != 200 {
		t.Fatalf("graph refresh: %+v", g.err)
	}
	c, err := s.Validate(g.str("access_token"), devidp.ResourceGraph)
	if err != nil || !c.HasScope("Mail.ReadWrite.Shared") || !c.HasScope("Mail.Send.Shared") || c.UPN != serviceUser {
		t.Errorf("graph token %+v %v", c, err)
	}
	if g.str("scope") != graphRW+" "+graphSend {
		t.Errorf("graph answer scope %q", g.str("scope"))
	}
	if s.RefreshRequests() != 3 {
		t.Errorf("RefreshRequests = %d", s.RefreshRequests())
	}
	expectError(t, refresh(t, s, "0.Anot-a-token", scope), 400, "invalid_grant", 9002313)
	expectError(t, refresh(t, s, g.str("refresh_token"), imapScope+" "+graphRW), 400, "invalid_scope", 28000)

	// Strict rotation: a redeemed token fails at once.
	s.SetStrictRotation(true)
	rt := g.str("refresh_token")
	if a := refresh(t, s, rt, scope); a.status != 200 {
		t.Fatalf("strict, first use: %+v", a.err)
	}
	expectError(t, refresh(t, s, rt, scope), 400, "invalid_grant", 70000)
}

func TestDelegatedConcurrentStrictRefresh(t *testing.T) {
	s := startDelegated(t, devidp.Options{StrictRotation: true})
	scope := imapScope + " offline_access"
	rt := signIn(t, s, scope).str("refresh_token")
	var wg sync.WaitGroup
	res := make([]answer, 2)
	for i := range res {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			res[i] = refresh(t, s, rt, scope)
		}(i)
	}
	wg.Wait()
	if ok := (res[0].status == 200) != (res[1].status == 200); !ok {
		t.Fatalf("statuses %d %d: want exactly one success under strict rotation", res[0].status, res[1].status)
	}
}

func TestDelegatedRevokeAndExpire(t *testing.T) {
	s := startDelegated(t, devidp.Options{})
	scope := imapScope + " offline_access"
	rt := signIn(t, s, scope).str("refresh_token")
	time.Sleep(2 * time.Millisecond)
	if err := s.RevokeRefreshTokens(serviceUser); err != nil {
		t.Fatal(err)
	}
	expectError(t, refresh(t, s, rt, scope), 400, "invalid_grant", 50173)
	// A new sign-in works again.
	time.Sleep(2 * time.Millisecond)
	rt = signIn(t, s, scope).str("refresh_token")
	if a := refresh(t, s, rt, scope); a.status != 200 {
		t.Fatalf("after new sign-in: %+v", a.err)
	}
	time.Sleep(2 * time.Millisecond)
	if err := s.ExpireRefreshTokens(serviceUser); err != nil {
		t.Fatal(err)
	}
	a := refresh(t, s, rt, scope)
	expectError(t, a, 400, "invalid_grant", 700082)
	if !strings.Contains(a.err.ErrorDescription, "inactivity") {
		t.Errorf("description %q", a.err.ErrorDescription)
	}
	if err := s.RevokeRefreshTokens("nobody@contoso.example"); err == nil {
		t.Error("RevokeRefreshTokens of an unknown user: no error")
	}
}

func TestDelegatedConsentAndClaims(t *testing.T) {
	s := startDelegated(t, devidp.Options{})
	if err := s.AddUser("limited@contoso.example", devidp.UserOptions{Scopes: []string{imapScope}}); err != nil {
		t.Fatal(err)
	}
	scope := imapScope + " offline_access"
	dc := deviceCodeRequest(t, s, publicID, scope)
	if err := s.ApproveDeviceCode(dc.str("user_code"), "limited@contoso.example"); err != nil {
		t.Fatal(err)
	}
	a := pollDeviceCode(t, s, publicID, dc.str("device_code"), scope)
	if a.status != 200 {
		t.Fatalf("token: %+v", a.err)
	}
	// Graph was not consented for this user.
	expectError(t, refresh(t, s, a.str("refresh_token"), graphRW+" offline_access"), 400, "invalid_grant", 65001)

	// A claims challenge reaches the server and its acrs show in the token.
	claims := `{"access_token":{"acrs":{"essential":true,"value":"c1"}}}`
	form := url.Values{
		"grant_type":    {"refresh_token"},
		"client_id":     {publicID},
		"refresh_token": {a.str("refresh_token")},
		"scope":         {scope},
		"claims":        {claims},
	}
	b := post(t, s, "token", form)
	if b.status != 200 {
		t.Fatalf("claims refresh: %+v", b.err)
	}
	c, err := s.Validate(b.str("access_token"), devidp.ResourceOutlookUser)
	if err != nil || len(c.ACRS) != 1 || c.ACRS[0] != "c1" {
		t.Errorf("acrs %v %v", c.ACRS, err)
	}
	if got := s.ClaimsRequests(); len(got) != 1 || got[0] != claims {
		t.Errorf("ClaimsRequests = %q", got)
	}
	if b.body["client_info"] != nil {
		t.Error("client_info sent without client_info=1")
	}
}
