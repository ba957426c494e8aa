package devidp

import (
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// Errors of Validate; the returned error wraps one of them.
var (
	ErrInvalidToken = errors.New("devidp: invalid access token")
	ErrTokenExpired = errors.New("devidp: access token expired")
)

// Claims are the claims of a devidp access token.
type Claims struct {
	Issuer   string
	Audience string
	Subject  string
	ObjectID string
	TenantID string
	AppID    string
	// AppIDACR is "1" for a secret, "2" for a certificate.
	AppIDACR string
	Email    string
	UPN      string
	Roles    []string
	// Name is the user's display name (delegated tokens).
	Name string
	// Scopes are the delegated permissions (scp claim, space-separated in
	// the token), e.g. IMAP.AccessAsUser.All; empty in app-only tokens.
	Scopes []string
	// ACRS are the authentication contexts satisfied (acrs claim), present
	// when the token request carried a claims challenge asking for them.
	ACRS      []string
	TokenID   string // uti
	IssuedAt  time.Time
	NotBefore time.Time
	ExpiresAt time.Time
}

// HasRole reports whether the token carries an app role.
func (c Claims) HasRole(role string) bool {
	for _, r := range c.Roles {
		if strings.EqualFold(r, role) {
			return true
		}
	}
	return false
}

// HasScope reports whether a delegated token carries a permission.
func (c Claims) HasScope(scope string) bool {
	for _, s := range c.Scopes {
		if strings.EqualFold(s, scope) {
			return true
		}
	}
	return false
}

// backdate is how far iat and nbf lie before the issue time, as in Entra ID
// tokens (it absorbs clock skew).
const backdate = 5 * time.Minute

// Audience turns a scope such as "https://outlook.office365.com/.default"
// into the token audience "https://outlook.office365.com". Other strings are
// returned unchanged.
func Audience(scope string) string {
	return strings.TrimSuffix(strings.TrimSpace(scope), "/.default")
}

// rolesFor gives the app roles an app-only token for a resource carries.
func rolesFor(audience string) []string {
	switch strings.ToLower(strings.TrimSuffix(audience, "/")) {
	case ResourceOutlook, "https://outlook.office.com", "https://ps.outlook.com":
		return []string{"IMAP.AccessAsApp"}
	case ResourceGraph:
		return []string{"Mail.ReadWrite"}
	}
	return nil
}

// mint signs an app-only access token shaped like Entra ID's v1.0 tokens for
// Exchange Online and Graph: no azp and no kid, so Dovecot looks its key up
// at DovecotKeyPath.
func (s *Server) mint(appID, appIDACR, email, audience string, ttl time.Duration) (string, error) {
	now := time.Now()
	oid := derivedGUID("sp:" + s.tenantID + ":" + strings.ToLower(appID))
	claims := jwt.MapClaims{
		"aud":      audience,
		"iss":      s.Issuer(),
		"iat":      now.Add(-backdate).Unix(),
		"nbf":      now.Add(-backdate).Unix(),
		"exp":      now.Add(ttl).Unix(),
		"appid":    appID,
		"appidacr": appIDACR,
		"idp":      s.Issuer(),
		"idtyp":    "app",
		"oid":      oid,
		"sub":      oid,
		"tid":      s.tenantID,
		"uti":      randomID(),
		"ver":      "1.0",
	}
	if roles := rolesFor(audience); len(roles) > 0 {
		claims["roles"] = roles
	}
	if email != "" {
		claims["email"] = email
		claims["upn"] = email
	}
	tok := jwt.NewWithClaims(jwt.SigningMethodHS256, claims)
	return tok.SignedString(s.hsKey)
}

// Mint issues an access token for email and audience (a resource such as
// "https://outlook.office365.com", or its "/.default" scope) that lives ttl
// (default: the server's token TTL; negative gives an expired token). It is
// not counted by TokenRequests.
func (s *Server) Mint(email, audience string, ttl time.Duration) (string, error) {
	if ttl == 0 {
		ttl, _ = s.settings()
	}
	return s.mint(s.mintAppID, "1", email, Audience(audience), ttl)
}

// Validate checks an access token as a resource server would: HS256
// signature with HS256Key, exp, nbf, iss == Issuer() and, unless audience is
// empty, aud == audience (a resource, or its "/.default" scope). An expired
// token gives an error wrapping ErrTokenExpired, others ErrInvalidToken.
func (s *Server) Validate(token, audience string) (Claims, error) {
	opts := []jwt.ParserOption{
		jwt.WithValidMethods([]string{jwt.SigningMethodHS256.Alg()}),
		jwt.WithIssuer(s.Issuer()),
		jwt.WithExpirationRequired(),
		jwt.WithIssuedAt(),
	}
	if aud := Audience(audience); aud != "" {
		opts = append(opts, jwt.WithAudience(aud))
	}
	mc := jwt.MapClaims{}
	_, err := jwt.ParseWithClaims(token, mc, func(*jwt.Token) (any, error) { return s.hsKey, nil }, opts...)
	if err != nil {
		if errors.Is(err, jwt.ErrTokenExpired) {
			return Claims{}, fmt.Errorf("%w: %v", ErrTokenExpired, err)
		}
		return Claims{}, fmt.Errorf("%w: %v", ErrInvalidToken, err)
	}
	c := Claims{
		Issuer:   str(mc["iss"]),
		Subject:  str(mc["sub"]),
		ObjectID: str(mc["oid"]),
		TenantID: str(mc["tid"]),
		AppID:    str(mc["appid"]),
		AppIDACR: str(mc["appidacr"]),
		Email:    str(mc["email"]),
		UPN:      str(mc["upn"]),
		Name:     str(mc["name"]),
		Scopes:   strings.Fields(str(mc["scp"])),
		TokenID:  str(mc["uti"]),
	}
	if acrs, ok := mc["acrs"].([]any); ok {
		for _, a := range acrs {
			c.ACRS = append(c.ACRS, str(a))
		}
	}
	if aud, err := mc.GetAudience(); err == nil && len(aud) > 0 {
		c.Audience = aud[0]
	}
	if roles, ok := mc["roles"].([]any); ok {
		for _, r := range roles {
			c.Roles = append(c.Roles, str(r))
		}
	}
	if t, err := mc.GetIssuedAt(); err == nil && t != nil {
		c.IssuedAt = t.Time
	}
	if t, err := mc.GetNotBefore(); err == nil && t != nil {
		c.NotBefore = t.Time
	}
	if t, err := mc.GetExpirationTime(); err == nil && t != nil {
		c.ExpiresAt = t.Time
	}
	if c.TenantID != s.tenantID {
		return Claims{}, fmt.Errorf("%w: token is for tenant %q", ErrInvalidToken, c.TenantID)
	}
	return c, nil
}

func str(v any) string {
	s, _ := v.(string)
	return s
}

func randomID() string {
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		panic("devidp: crypto/rand: " + err.Error())
	}
	return base64.RawURLEncoding.EncodeToString(b)
}
