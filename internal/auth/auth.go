// Package auth obtains OAuth2 access tokens from Microsoft Entra ID (MSAL)
// for one resource at a time: IMAP needs https://outlook.office365.com/.default,
// Graph needs https://graph.microsoft.com/.default; a token for one fails on
// the other.
package auth

import (
	"context"
	"time"
)

// Well-known resource scopes.
const (
	ScopeIMAPApp  = "https://outlook.office365.com/.default"
	ScopeGraphApp = "https://graph.microsoft.com/.default"
)

// Token is an access token and its expiry.
type Token struct {
	Value     string
	ExpiresOn time.Time
}

// TokenSource yields a valid access token for one resource. Implementations
// are safe for concurrent use, cache the token and renew it before it
// expires. Invalidate forces the next Token call to fetch a new one (e.g.
// after a server said AccessTokenExpired).
type TokenSource interface {
	Token(ctx context.Context) (Token, error)
	Invalidate()
}
