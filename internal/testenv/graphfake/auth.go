package graphfake

import (
	"errors"
	"net/http"
	"strings"
	"time"
)

// Graph's resource identifiers: a token's aud must be one of them.
const (
	ResourceGraph      = "https://graph.microsoft.com"
	ResourceGraphAppID = "00000003-0000-0000-c000-000000000000"
)

// ErrTokenExpired: ValidateToken returns an error wrapping it for an expired
// token, so the 401 says so as Graph does.
var ErrTokenExpired = errors.New("graphfake: access token expired")

// Claims are what the fake needs from a validated access token.
//
// A token with Scopes (the "scp" claim, space separated in the JWT) is a
// delegated token for the signed-in user UPN; a token without Scopes is
// app-only and its permissions are Roles. devidp's app-only tokens carry a
// upn too (the mailbox the app acts for): that does not make them delegated.
type Claims struct {
	Audience  string
	AppID     string
	TenantID  string
	UPN       string
	Roles     []string
	Scopes    []string
	ExpiresAt time.Time
}

// Delegated reports whether the token is a delegated (user) token.
func (c Claims) Delegated() bool { return len(c.Scopes) > 0 }

func (c Claims) hasRole(names ...string) bool {
	for _, r := range c.Roles {
		for _, n := range names {
			if strings.EqualFold(r, n) {
				return true
			}
		}
	}
	return false
}

func (c Claims) hasScope(names ...string) bool {
	for _, r := range c.Scopes {
		for _, n := range names {
			if strings.EqualFold(r, n) {
				return true
			}
		}
	}
	return false
}

// StaticTokens returns a ValidateToken that accepts exactly the given tokens
// (handy for benchmarks that need no identity provider).
func StaticTokens(tokens map[string]Claims) func(string) (Claims, error) {
	return func(tok string) (Claims, error) {
		c, ok := tokens[tok]
		if !ok {
			return Claims{}, errors.New("graphfake: unknown token")
		}
		return c, nil
	}
}

func errUnauthenticated(msg string) *gErr {
	e := newErr(http.StatusUnauthorized, "InvalidAuthenticationToken", msg)
	e.header = http.Header{"Www-Authenticate": {`Bearer realm="", authorization_uri="https://login.microsoftonline.com/common/oauth2/authorize", client_id="` + ResourceGraphAppID + `"`}}
	return e
}

// authenticate checks the bearer token of r.
func (s *Server) authenticate(r *http.Request) (Claims, *gErr) {
	h := r.Header.Get("Authorization")
	if h == "" {
		return Claims{}, errUnauthenticated("Access token is empty.")
	}
	scheme, tok, ok := strings.Cut(h, " ")
	tok = strings.TrimSpace(tok)
	if !ok || !strings.EqualFold(scheme, "Bearer") || tok == "" {
		return Claims{}, errUnauthenticated("Access token is empty.")
	}
	if strings.Count(tok, ".") != 2 {
		return Claims{}, errUnauthenticated("IDX14100: JWT is not well formed, there are no dots (.).")
	}
	c, err := s.opts.ValidateToken(tok)
	if err != nil {
		if errors.Is(err, ErrTokenExpired) {
			return Claims{}, errUnauthenticated("Lifetime validation failed, the token is expired.")
		}
		return Claims{}, errUnauthenticated("Access token validation failure.")
	}
	if !c.ExpiresAt.IsZero() && time.Now().After(c.ExpiresAt) {
		return Claims{}, errUnauthenticated("Lifetime validation failed, the token is expired.")
	}
	aud := strings.TrimSuffix(strings.ToLower(strings.TrimSpace(c.Audience)), "/")
	if aud != ResourceGraph && aud != ResourceGraphAppID {
		return Claims{}, errUnauthenticated("Access token validation failure. Invalid audience.")
	}
	return c, nil
}

// perm is what an operation needs.
type perm int

const (
	permNone  perm = iota
	permRead       // read folders and messages
	permWrite      // create, move, delete
	permSend       // sendMail, send a draft
	permUser       // read the user object
)

// authorize checks that the token may do need on mb.
func (s *Server) authorize(c *call, need perm) *gErr {
	cl := c.claims
	mb := c.mb
	if need == permNone {
		return nil
	}
	if !cl.Delegated() {
		var ok bool
		switch need {
		case permRead:
			ok = cl.hasRole("Mail.Read", "Mail.ReadWrite")
		case permWrite:
			ok = cl.hasRole("Mail.ReadWrite")
		case permSend:
			ok = cl.hasRole("Mail.Send")
		case permUser:
			if !cl.hasRole("User.Read.All", "User.ReadBasic.All", "User.ReadWrite.All", "Directory.Read.All", "Directory.ReadWrite.All") {
				return newErr(http.StatusForbidden, "Authorization_RequestDenied", "Insufficient privileges to complete the operation.")
			}
			return nil
		}
		if !ok {
			return errAccessDenied()
		}
		if !s.appMayAccess(cl.AppID, mb) {
			return errAccessDenied().withMsg(msgRAOP)
		}
		return nil
	}
	own := strings.EqualFold(cl.UPN, mb.address)
	if need == permUser {
		if own && cl.hasScope("User.Read", "User.ReadBasic.All", "User.Read.All", "User.ReadWrite", "Directory.Read.All") {
			return nil
		}
		if !own && cl.hasScope("User.ReadBasic.All", "User.Read.All", "Directory.Read.All") {
			return nil
		}
		return newErr(http.StatusForbidden, "Authorization_RequestDenied", "Insufficient privileges to complete the operation.")
	}
	var ok bool
	switch {
	case own && need == permRead:
		ok = cl.hasScope("Mail.Read", "Mail.ReadWrite", "Mail.Read.Shared", "Mail.ReadWrite.Shared")
	case own && need == permWrite:
		ok = cl.hasScope("Mail.ReadWrite", "Mail.ReadWrite.Shared")
	case own && need == permSend:
		ok = cl.hasScope("Mail.Send", "Mail.Send.Shared")
	case need == permRead:
		ok = cl.hasScope("Mail.Read.Shared", "Mail.ReadWrite.Shared") && s.hasFullAccess(cl.UPN, mb)
	case need == permWrite:
		ok = cl.hasScope("Mail.ReadWrite.Shared") && s.hasFullAccess(cl.UPN, mb)
	case need == permSend:
		ok = cl.hasScope("Mail.Send.Shared") && s.hasFullAccess(cl.UPN, mb)
	}
	if !ok {
		return errAccessDenied()
	}
	return nil
}

func (e *gErr) withMsg(m string) *gErr { e.msg = m; return e }
