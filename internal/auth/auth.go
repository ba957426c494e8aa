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

// Delegated scopes: what a signed-in service account (Delegated) asks for.
// One access token serves one resource, so IMAP and Graph get separate
// sources; the one refresh token of the sign-in serves both.
const (
	// ScopeIMAPDelegated is IMAP access to the mailboxes the service
	// account may open (its own, and shared mailboxes it has Full Access
	// to); the token's audience is https://outlook.office.com.
	ScopeIMAPDelegated = "https://outlook.office.com/IMAP.AccessAsUser.All"
	// ScopeGraphMailReadWriteShared reads and moves mail in mailboxes the
	// service account can access, shared mailboxes included.
	ScopeGraphMailReadWriteShared = "https://graph.microsoft.com/Mail.ReadWrite.Shared"
	// ScopeGraphMailSendShared sends as or on behalf of mailboxes the
	// service account has Send As / Send on Behalf rights on.
	ScopeGraphMailSendShared = "https://graph.microsoft.com/Mail.Send.Shared"
	// ScopeOfflineAccess asks for a refresh token. MSAL adds it (with
	// openid and profile) to every delegated request on its own.
	ScopeOfflineAccess = "offline_access"
)

// ClaimsTokenSource is implemented by the token sources of App and
// Delegated. When a resource rejects a token with a claims challenge
// (Continuous Access Evaluation, or a Conditional Access authentication
// context: HTTP 401 with `WWW-Authenticate: Bearer ... error="insufficient_claims",
// claims="<base64 JSON>"`), TokenWithClaims gets a new token that satisfies
// it: it bypasses every cache, passes the claims to Entra ID (MSAL
// WithClaims) and caches the new token for later Token calls. claims may be
// the JSON or its base64 form from the header. Retry the rejected request
// once with the new token; a second challenge means Entra ID cannot issue a
// satisfying token without user interaction.
type ClaimsTokenSource interface {
	TokenSource
	TokenWithClaims(ctx context.Context, claims string) (Token, error)
}
