package devidp

import (
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"sort"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// Delegated (user) sign-in: the device code flow and the refresh token
// grant with rotation, as a public client ("Allow public client flows")
// uses them.

// VerificationURI is where Entra ID sends users to enter a device code.
const VerificationURI = "https://microsoft.com/devicelogin"

// Defaults of the delegated flows.
const (
	// DefaultDeviceCodeTTL is how long a device code can be approved
	// (Entra ID: 15 minutes).
	DefaultDeviceCodeTTL = 15 * time.Minute
	// DefaultDeviceCodeInterval is the polling interval devidp announces
	// (Entra ID: 5 seconds; MSAL Go polls on its own schedule).
	DefaultDeviceCodeInterval = 5
	// DefaultRefreshTokenGrace is how long a refresh token stays usable
	// after it was redeemed (and so replaced by a new one) unless
	// Options.StrictRotation is set.
	DefaultRefreshTokenGrace = 2 * time.Minute
	// IDTokenTTL is the lifetime of id tokens.
	IDTokenTTL = time.Hour
)

// Well-known delegated resources.
const (
	// ResourceOutlookUser is the audience of delegated Exchange Online
	// tokens for scope https://outlook.office.com/IMAP.AccessAsUser.All.
	ResourceOutlookUser = "https://outlook.office.com"
)

// UserOptions describe a user added with AddUser.
type UserOptions struct {
	// DisplayName goes into the name claim (default: the part of the UPN
	// before the @).
	DisplayName string
	// Email goes into the email claim (default: the UPN).
	Email string
	// Scopes are the delegated permissions consented for this user (or by
	// an administrator for all users), as full scopes such as
	// "https://outlook.office.com/IMAP.AccessAsUser.All" or Graph short
	// names such as "Mail.ReadWrite.Shared". A token request for a scope
	// outside this list fails with AADSTS65001. Empty means every scope
	// asked for is consented.
	Scopes []string
}

// user is a directory user.
type user struct {
	upn   string
	name  string
	email string
	oid   string
	// consent maps lower-case resource → lower-case permission → the
	// permission as configured; nil means "everything asked for".
	consent map[string]map[string]string
	// revokedAt: refresh tokens issued before it fail with AADSTS50173.
	revokedAt time.Time
	// expiredAt: refresh tokens issued before it fail with AADSTS700082.
	expiredAt time.Time
}

// deviceCode is one device authorization request.
type deviceCode struct {
	code      string
	userCode  string
	clientID  string
	req       scopeRequest
	expires   time.Time
	approver  string // upn once approved
	declined  bool
	redeemed  bool
	createdAt time.Time
}

// refreshToken is the server side of an issued refresh token.
type refreshToken struct {
	upn      string
	clientID string
	issued   time.Time
	// replaced is when the token was redeemed (and a new one issued
	// instead); zero while unused.
	replaced time.Time
}

// scopeRequest is a parsed scope parameter of a delegated request: the
// scopes of exactly one resource, plus OpenID scopes.
type scopeRequest struct {
	resource string   // e.g. https://outlook.office.com
	perms    []string // permissions as requested, e.g. IMAP.AccessAsUser.All
	raw      []string // resource scopes as sent, e.g. https://outlook.office.com/IMAP.AccessAsUser.All
	short    bool     // Graph scopes sent without the resource prefix
	oidc     []string // openid, profile, offline_access, email
}

func (r scopeRequest) offlineAccess() bool {
	for _, s := range r.oidc {
		if strings.EqualFold(s, "offline_access") {
			return true
		}
	}
	return false
}

// wellKnownDelegated are the permissions a "/.default" request yields for
// a user without an explicit consent list.
var wellKnownDelegated = map[string][]string{
	strings.ToLower(ResourceOutlookUser): {"IMAP.AccessAsUser.All"},
	strings.ToLower(ResourceOutlook):     {"IMAP.AccessAsUser.All"},
	strings.ToLower(ResourceGraph):       {"Mail.ReadWrite.Shared", "Mail.Send.Shared"},
}

// splitScope splits a delegated scope into resource and permission:
// "https://outlook.office.com/IMAP.AccessAsUser.All" gives
// ("https://outlook.office.com", "IMAP.AccessAsUser.All", false);
// "Mail.Send.Shared" is a Graph permission ("https://graph.microsoft.com",
// "Mail.Send.Shared", true).
func splitScope(s string) (resource, perm string, short bool) {
	if strings.Contains(s, "://") {
		i := strings.LastIndexByte(s, '/')
		if i > strings.Index(s, "://")+2 {
			return strings.TrimSuffix(s[:i], "/"), s[i+1:], false
		}
		return strings.TrimSuffix(s, "/"), "", false
	}
	return ResourceGraph, s, true
}

// parseDelegatedScope checks a delegated scope parameter: OpenID scopes
// plus scopes of exactly one resource (AADSTS28000 for several, AADSTS70011
// for none).
func parseDelegatedScope(scope string) (scopeRequest, *aadError) {
	var r scopeRequest
	for _, f := range strings.Fields(scope) {
		if oidcScopes[strings.ToLower(f)] {
			r.oidc = append(r.oidc, strings.ToLower(f))
			continue
		}
		res, perm, short := splitScope(f)
		if perm == "" {
			e := errInvalidScope(f)
			return r, &e
		}
		if r.resource != "" && !strings.EqualFold(r.resource, res) {
			e := errMultipleResources(scope)
			return r, &e
		}
		if r.resource == "" {
			r.resource, r.short = res, short
		}
		r.perms = append(r.perms, perm)
		r.raw = append(r.raw, f)
	}
	if r.resource == "" {
		e := errInvalidScope(scope)
		return r, &e
	}
	return r, nil
}

// AddUser adds (or replaces) a directory user that can approve device codes.
func (s *Server) AddUser(upn string, opts UserOptions) error {
	upn = strings.TrimSpace(upn)
	if !strings.Contains(upn, "@") {
		return fmt.Errorf("devidp: user %q is not a user principal name (name@domain)", upn)
	}
	u := &user{
		upn:   upn,
		name:  opts.DisplayName,
		email: opts.Email,
		oid:   derivedGUID("user:" + s.tenantID + ":" + strings.ToLower(upn)),
	}
	if u.name == "" {
		u.name = upn[:strings.IndexByte(upn, '@')]
	}
	if u.email == "" {
		u.email = upn
	}
	if len(opts.Scopes) > 0 {
		u.consent = map[string]map[string]string{}
		for _, sc := range opts.Scopes {
			res, perm, _ := splitScope(strings.TrimSpace(sc))
			if perm == "" {
				return fmt.Errorf("devidp: user %s: scope %q names no permission", upn, sc)
			}
			k := strings.ToLower(res)
			if u.consent[k] == nil {
				u.consent[k] = map[string]string{}
			}
			u.consent[k][strings.ToLower(perm)] = perm
		}
	}
	s.mu.Lock()
	s.users[strings.ToLower(upn)] = u
	s.mu.Unlock()
	return nil
}

// UserObjectID is the object id (oid claim) of a user added with AddUser.
func (s *Server) UserObjectID(upn string) (string, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	u, ok := s.users[strings.ToLower(strings.TrimSpace(upn))]
	if !ok {
		return "", false
	}
	return u.oid, true
}

// ApproveDeviceCode signs username in on the device login page with
// userCode, as a person with a browser would: the next poll of the device
// gets its tokens.
func (s *Server) ApproveDeviceCode(userCode, username string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	dc, err := s.pendingCode(userCode)
	if err != nil {
		return err
	}
	u, ok := s.users[strings.ToLower(strings.TrimSpace(username))]
	if !ok {
		return fmt.Errorf("devidp: no user %q", username)
	}
	dc.approver = u.upn
	return nil
}

// DeclineDeviceCode makes the user cancel the sign-in for userCode: the
// device's next poll gets authorization_declined.
func (s *Server) DeclineDeviceCode(userCode string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	dc, err := s.pendingCode(userCode)
	if err != nil {
		return err
	}
	dc.declined = true
	return nil
}

// ExpireDeviceCode lets the device code for userCode expire now: the next
// poll gets expired_token.
func (s *Server) ExpireDeviceCode(userCode string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	dc, err := s.pendingCode(userCode)
	if err != nil {
		return err
	}
	dc.expires = time.Now().Add(-time.Second)
	return nil
}

// pendingCode finds an unused device code by user code; s.mu must be held.
func (s *Server) pendingCode(userCode string) (*deviceCode, error) {
	dc, ok := s.userCodes[strings.ToUpper(strings.TrimSpace(userCode))]
	switch {
	case !ok:
		return nil, fmt.Errorf("devidp: unknown user code %q", userCode)
	case !time.Now().Before(dc.expires):
		return nil, fmt.Errorf("devidp: user code %q has expired", userCode)
	case dc.approver != "" || dc.declined || dc.redeemed:
		return nil, fmt.Errorf("devidp: user code %q was already used", userCode)
	}
	return dc, nil
}

// RevokeRefreshTokens revokes the user's sessions (as "Revoke sessions" in
// the portal or a password reset does): every refresh token issued so far
// fails with invalid_grant AADSTS50173. A new sign-in works again.
func (s *Server) RevokeRefreshTokens(username string) error {
	return s.updateUser(username, func(u *user) { u.revokedAt = time.Now() })
}

// ExpireRefreshTokens makes the user's refresh tokens issued so far fail
// as if unused for 90 days (invalid_grant AADSTS700082).
func (s *Server) ExpireRefreshTokens(username string) error {
	return s.updateUser(username, func(u *user) { u.expiredAt = time.Now() })
}

func (s *Server) updateUser(username string, f func(*user)) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	u, ok := s.users[strings.ToLower(strings.TrimSpace(username))]
	if !ok {
		return fmt.Errorf("devidp: no user %q", username)
	}
	f(u)
	return nil
}

// SetStrictRotation turns strict refresh token rotation on (a redeemed
// refresh token fails at once) or off (it stays usable for the grace
// period, see Options.RefreshTokenGrace).
func (s *Server) SetStrictRotation(strict bool) {
	s.mu.Lock()
	s.strictRotation = strict
	s.mu.Unlock()
}

// DeviceCodeRequests counts the device authorization requests answered
// with a code.
func (s *Server) DeviceCodeRequests() int { return int(s.deviceCodeCount.Load()) }

// RefreshRequests counts the refresh token grants that got tokens.
func (s *Server) RefreshRequests() int { return int(s.refreshCount.Load()) }

// ClaimsRequests returns the claims parameters of the token requests so
// far (claims challenges and client capabilities), oldest first.
func (s *Server) ClaimsRequests() []string {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return append([]string(nil), s.claimsSeen...)
}

func (s *Server) recordClaims(r *http.Request) {
	if c := r.PostForm.Get("claims"); c != "" {
		s.mu.Lock()
		s.claimsSeen = append(s.claimsSeen, c)
		s.mu.Unlock()
	}
}

// handleDeviceCode is the device authorization endpoint.
func (s *Server) handleDeviceCode(w http.ResponseWriter, r *http.Request) {
	tenant := r.PathValue("tenant")
	if !s.knownTenant(tenant) {
		s.writeError(w, r, errTenantNotFound(tenant))
		return
	}
	if err := r.ParseForm(); err != nil {
		s.writeError(w, r, errMissingParam("client_id"))
		return
	}
	clientID := r.PostForm.Get("client_id")
	if clientID == "" {
		s.writeError(w, r, errMissingParam("client_id"))
		return
	}
	c, ok := s.client(clientID)
	if !ok {
		s.writeError(w, r, errClientNotFound(clientID, s.tenant))
		return
	}
	if r.PostForm.Get("scope") == "" {
		s.writeError(w, r, errMissingParam("scope"))
		return
	}
	req, e := parseDelegatedScope(r.PostForm.Get("scope"))
	if e != nil {
		s.writeError(w, r, *e)
		return
	}
	s.recordClaims(r)
	now := time.Now()
	dc := &deviceCode{
		code:      "DAQABIQEAAAB" + randomID() + randomID() + randomID(),
		clientID:  c.ID,
		req:       req,
		createdAt: now,
	}
	s.mu.Lock()
	ttl := s.deviceCodeTTL
	dc.expires = now.Add(ttl)
	for {
		dc.userCode = randomUserCode()
		if _, dup := s.userCodes[dc.userCode]; !dup {
			break
		}
	}
	s.deviceCodes[dc.code] = dc
	s.userCodes[dc.userCode] = dc
	s.mu.Unlock()
	s.deviceCodeCount.Add(1)
	writeJSON(w, http.StatusOK, map[string]any{
		"user_code":        dc.userCode,
		"device_code":      dc.code,
		"verification_uri": VerificationURI,
		"expires_in":       int64(ttl / time.Second),
		"interval":         DefaultDeviceCodeInterval,
		"message": "To sign in, use a web browser to open the page " + VerificationURI +
			" and enter the code " + dc.userCode + " to authenticate.",
	})
}

// userCodeAlphabet avoids characters that are easily confused.
const userCodeAlphabet = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"

func randomUserCode() string {
	b := make([]byte, 9)
	if _, err := rand.Read(b); err != nil {
		panic("devidp: crypto/rand: " + err.Error())
	}
	for i := range b {
		b[i] = userCodeAlphabet[int(b[i])%len(userCodeAlphabet)]
	}
	return string(b)
}

// publicClient authenticates the client of a delegated grant: a public
// client (no credential; the app must allow public client flows) or a
// confidential one with its secret or certificate.
func (s *Server) publicClient(r *http.Request) (Client, *aadError) {
	form := r.PostForm
	clientID := form.Get("client_id")
	basicID, _, hasBasic := r.BasicAuth()
	if clientID == "" && hasBasic {
		clientID = basicID
	}
	if clientID == "" {
		e := errMissingParam("client_id")
		return Client{}, &e
	}
	c, ok := s.client(clientID)
	if !ok {
		e := errClientNotFound(clientID, s.tenant)
		return Client{}, &e
	}
	if form.Get("client_assertion") != "" || form.Get("client_secret") != "" || hasBasic {
		if _, e := s.authenticateClient(r, c); e != nil {
			return Client{}, e
		}
		return c, nil
	}
	if !c.PublicClient {
		e := errNoCredential()
		return Client{}, &e
	}
	return c, nil
}

// deviceCodeGrant redeems a device code.
func (s *Server) deviceCodeGrant(w http.ResponseWriter, r *http.Request, ttl time.Duration) {
	c, e := s.publicClient(r)
	if e != nil {
		s.writeError(w, r, *e)
		return
	}
	code := r.PostForm.Get("device_code")
	if code == "" {
		s.writeError(w, r, errMissingParam("device_code"))
		return
	}
	s.recordClaims(r)
	s.mu.Lock()
	dc, ok := s.deviceCodes[code]
	var ae *aadError
	var u *user
	switch {
	case !ok || !strings.EqualFold(dc.clientID, c.ID):
		ae = ptr(errBadVerificationCode())
	case dc.redeemed:
		ae = ptr(errDeviceCodeRedeemed())
	case dc.declined:
		ae = ptr(errAuthorizationDeclined())
	case dc.approver == "" && !time.Now().Before(dc.expires):
		ae = ptr(errDeviceCodeExpired())
	case dc.approver == "":
		ae = ptr(errAuthorizationPending())
	default:
		u = s.users[strings.ToLower(dc.approver)]
		if u == nil {
			ae = ptr(errUserNotFound(dc.approver))
			break
		}
		dc.redeemed = true
	}
	s.mu.Unlock()
	if ae != nil {
		s.writeError(w, r, *ae)
		return
	}
	// The scope of the token request decides the resource, as in Entra
	// ID; it is the device code request's unless the client changed it.
	req := dc.req
	if sc := r.PostForm.Get("scope"); sc != "" {
		if req, e = parseDelegatedScope(sc); e != nil {
			s.writeError(w, r, *e)
			return
		}
	}
	s.issueUserTokens(w, r, c, u, req, ttl)
}

// refreshTokenGrant redeems a refresh token and rotates it.
func (s *Server) refreshTokenGrant(w http.ResponseWriter, r *http.Request, ttl time.Duration) {
	c, e := s.publicClient(r)
	if e != nil {
		s.writeError(w, r, *e)
		return
	}
	rt := r.PostForm.Get("refresh_token")
	if rt == "" {
		s.writeError(w, r, errMissingParam("refresh_token"))
		return
	}
	if r.PostForm.Get("scope") == "" {
		s.writeError(w, r, errMissingParam("scope"))
		return
	}
	req, e := parseDelegatedScope(r.PostForm.Get("scope"))
	if e != nil {
		s.writeError(w, r, *e)
		return
	}
	s.recordClaims(r)
	now := time.Now()
	s.mu.Lock()
	rec, ok := s.refreshTokens[rt]
	var u *user
	var ae *aadError
	switch {
	case !ok:
		ae = ptr(errMalformedGrant())
	case !strings.EqualFold(rec.clientID, c.ID):
		ae = ptr(errRefreshTokenOtherClient(c.ID))
	default:
		u = s.users[strings.ToLower(rec.upn)]
		switch {
		case u == nil:
			ae = ptr(errUserNotFound(rec.upn))
		case !rec.issued.After(u.revokedAt):
			ae = ptr(errRefreshTokenRevoked())
		case !rec.issued.After(u.expiredAt):
			ae = ptr(errRefreshTokenInactive(rec.issued))
		case !rec.replaced.IsZero() && (s.strictRotation || now.Sub(rec.replaced) > s.refreshGrace):
			ae = ptr(errRefreshTokenReplaced())
		case rec.replaced.IsZero():
			rec.replaced = now
		}
	}
	s.mu.Unlock()
	if ae != nil {
		s.writeError(w, r, *ae)
		return
	}
	if s.issueUserTokens(w, r, c, u, req, ttl) {
		s.refreshCount.Add(1)
	}
}

// issueUserTokens answers a delegated grant with an access token for the
// request's resource, a new refresh token (with offline_access), an id
// token and client_info. It reports whether tokens were issued.
func (s *Server) issueUserTokens(w http.ResponseWriter, r *http.Request, c Client, u *user, req scopeRequest, ttl time.Duration) bool {
	granted, e := s.grantedPerms(c, u, req)
	if e != nil {
		s.writeError(w, r, *e)
		return false
	}
	now := time.Now()
	at, err := s.mintUser(c.ID, u, req.resource, granted, acrsFromClaims(r.PostForm.Get("claims")), ttl, now)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return false
	}
	idt, err := s.mintIDToken(c.ID, u, now)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return false
	}
	ci, _ := json.Marshal(map[string]string{"uid": u.oid, "utid": s.tenantID})
	secs := int64(ttl / time.Second)
	resp := map[string]any{
		"token_type":     "Bearer",
		"scope":          strings.Join(responseScopes(req, granted), " "),
		"expires_in":     secs,
		"ext_expires_in": secs,
		"access_token":   at,
		"id_token":       idt,
	}
	if r.PostForm.Get("client_info") == "1" {
		resp["client_info"] = base64.RawURLEncoding.EncodeToString(ci)
	}
	if req.offlineAccess() {
		rt := "0.A" + randomID() + randomID() + randomID()
		s.mu.Lock()
		s.refreshTokens[rt] = &refreshToken{upn: u.upn, clientID: c.ID, issued: now}
		s.mu.Unlock()
		resp["refresh_token"] = rt
	}
	s.tokenCount.Add(1)
	writeJSON(w, http.StatusOK, resp)
	return true
}

// grantedPerms are the permissions the access token carries: all consented
// ones of the resource (as in Entra ID), or those asked for when the user
// has no consent list. A permission asked for but not consented gives
// AADSTS65001; one the app may not use (Client.Scopes) AADSTS70011.
func (s *Server) grantedPerms(c Client, u *user, req scopeRequest) ([]string, *aadError) {
	if len(c.Scopes) > 0 {
		ok := false
		for _, a := range c.Scopes {
			res, _, _ := splitScope(strings.TrimSuffix(a, "/.default"))
			if strings.EqualFold(strings.TrimSuffix(Audience(a), "/"), req.resource) || strings.EqualFold(res, req.resource) {
				ok = true
			}
		}
		if !ok {
			return nil, ptr(errInvalidScope(strings.Join(req.raw, " ")))
		}
	}
	resKey := strings.ToLower(req.resource)
	if u.consent == nil {
		var out []string
		for _, p := range req.perms {
			if p == ".default" {
				out = append(out, wellKnownDelegated[resKey]...)
				continue
			}
			out = append(out, p)
		}
		return dedupe(out), nil
	}
	consented := u.consent[resKey]
	for _, p := range req.perms {
		if p == ".default" {
			continue
		}
		if _, ok := consented[strings.ToLower(p)]; !ok {
			return nil, ptr(errConsentRequired(c.ID, req.resource+"/"+p))
		}
	}
	out := make([]string, 0, len(consented))
	for _, p := range consented {
		out = append(out, p)
	}
	sort.Strings(out)
	return out, nil
}

// responseScopes is the scope field of the answer: the resource scopes as
// asked for, then the other granted permissions in the same form.
func responseScopes(req scopeRequest, granted []string) []string {
	out := make([]string, 0, len(granted)+len(req.raw))
	seen := map[string]bool{}
	add := func(s string) {
		if !seen[strings.ToLower(s)] {
			seen[strings.ToLower(s)] = true
			out = append(out, s)
		}
	}
	for _, s := range req.raw {
		if !strings.HasSuffix(s, "/.default") && s != ".default" {
			add(s)
		}
	}
	for _, p := range granted {
		if req.short {
			add(p)
		} else {
			add(req.resource + "/" + p)
		}
	}
	return out
}

func dedupe(in []string) []string {
	seen := map[string]bool{}
	out := in[:0:0]
	for _, s := range in {
		if !seen[strings.ToLower(s)] {
			seen[strings.ToLower(s)] = true
			out = append(out, s)
		}
	}
	return out
}

// mintUser signs a delegated access token shaped like Entra ID's v1.0
// tokens for Exchange Online and Graph: scp instead of roles, the user's
// upn, email, name, oid and a per-app subject.
func (s *Server) mintUser(appID string, u *user, audience string, scopes, acrs []string, ttl time.Duration, now time.Time) (string, error) {
	claims := jwt.MapClaims{
		"aud":         audience,
		"iss":         s.Issuer(),
		"iat":         now.Add(-backdate).Unix(),
		"nbf":         now.Add(-backdate).Unix(),
		"exp":         now.Add(ttl).Unix(),
		"appid":       appID,
		"appidacr":    "0",
		"amr":         []string{"pwd", "mfa"},
		"idp":         s.Issuer(),
		"idtyp":       "user",
		"name":        u.name,
		"oid":         u.oid,
		"sub":         derivedGUID("sub:" + u.oid + ":" + strings.ToLower(appID)),
		"scp":         strings.Join(scopes, " "),
		"tid":         s.tenantID,
		"unique_name": u.upn,
		"upn":         u.upn,
		"email":       u.email,
		"uti":         randomID(),
		"ver":         "1.0",
	}
	if len(acrs) > 0 {
		claims["acrs"] = acrs
	}
	return jwt.NewWithClaims(jwt.SigningMethodHS256, claims).SignedString(s.hsKey)
}

// mintIDToken signs the id token MSAL reads the account from
// (preferred_username, oid, tid, name, sub).
func (s *Server) mintIDToken(appID string, u *user, now time.Time) (string, error) {
	claims := jwt.MapClaims{
		"aud":                appID,
		"iss":                s.Issuer(),
		"iat":                now.Add(-backdate).Unix(),
		"nbf":                now.Add(-backdate).Unix(),
		"exp":                now.Add(IDTokenTTL).Unix(),
		"name":               u.name,
		"oid":                u.oid,
		"preferred_username": u.upn,
		"sub":                derivedGUID("idsub:" + u.oid + ":" + strings.ToLower(appID)),
		"tid":                s.tenantID,
		"uti":                randomID(),
		"ver":                "2.0",
	}
	return jwt.NewWithClaims(jwt.SigningMethodHS256, claims).SignedString(s.hsKey)
}

// acrsFromClaims reads the authentication context class references a
// claims challenge asks for: {"access_token":{"acrs":{"essential":true,
// "value":"c1"}}} (or "values").
func acrsFromClaims(claims string) []string {
	if claims == "" {
		return nil
	}
	var c struct {
		AccessToken struct {
			ACRS *struct {
				Value  string   `json:"value"`
				Values []string `json:"values"`
			} `json:"acrs"`
		} `json:"access_token"`
	}
	if json.Unmarshal([]byte(claims), &c) != nil || c.AccessToken.ACRS == nil {
		return nil
	}
	out := append([]string(nil), c.AccessToken.ACRS.Values...)
	if c.AccessToken.ACRS.Value != "" {
		out = append(out, c.AccessToken.ACRS.Value)
	}
	return out
}

func ptr(e aadError) *aadError { return &e }
