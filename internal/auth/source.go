package auth

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"
)

const (
	// renewBefore is the least time before expiry at which a cached token is
	// renewed; tokens are also renewed in the last 10% of their lifetime,
	// whichever comes first. A token living shorter than this is renewed on
	// every call.
	renewBefore = 5 * time.Minute
	// minUsable is the least remaining lifetime for which a cached token is
	// still handed out when its renewal failed.
	minUsable = time.Minute
	// retryAfterFailure is how long a failed renewal is not retried while
	// the cached token is still usable.
	retryAfterFailure = 10 * time.Second
)

// backend gets tokens for the sources: App (client credentials) or
// Delegated (a signed-in user's refresh token).
type backend interface {
	base() *ident
	// acquire gets a new token for scope (for Delegated: a space-separated
	// list of scopes of one resource) from the token endpoint, or from a
	// shared cache when that token is newer than the caller's; claims is a
	// claims challenge or "".
	acquire(ctx context.Context, scope, claims string) (Token, error)
	// forget is told that tok was invalidated, so that acquire does not
	// hand it out again.
	forget(scope string, tok Token)
}

// source is the TokenSource of one App or Delegated and scope.
type source struct {
	b     backend
	scope string

	mu       sync.Mutex
	tok      Token
	has      bool
	obtained time.Time // app clock when the request for tok started
	retryAt  time.Time // after a failed renewal: not before this
	inflight *call
	// claimsCalls are the claims requests in flight, by claims.
	claimsCalls map[string]*call
}

// call is one token request that concurrent callers share.
type call struct {
	done chan struct{}
	tok  Token
	err  error
}

// Token returns the cached token, or a new one when there is none, it was
// invalidated, or it is about to expire. Concurrent callers share one
// request. If a renewal fails while the cached token is still usable for at
// least a minute, the cached token is returned (and renewal retried after a
// short pause); otherwise the error, an *Error, is returned.
func (s *source) Token(ctx context.Context) (Token, error) {
	id := s.b.base()
	if err := ctx.Err(); err != nil {
		return Token{}, id.contextError(s.scope, err)
	}
	s.mu.Lock()
	now := id.now()
	if s.has && (!s.needsRenew(now) || (now.Before(s.retryAt) && s.usable(now))) {
		t := s.tok
		s.mu.Unlock()
		return t, nil
	}
	c := s.inflight
	if c == nil {
		c = s.start(ctx)
	}
	s.mu.Unlock()

	select {
	case <-c.done:
	case <-ctx.Done():
		return Token{}, id.contextError(s.scope, ctx.Err())
	}
	if c.err == nil {
		return c.tok, nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.has && s.usable(id.now()) {
		return s.tok, nil
	}
	return Token{}, c.err
}

// TokenWithClaims implements ClaimsTokenSource: it requests a new token
// with the claims challenge, whatever is cached, and caches the result for
// later Token calls. Concurrent calls with the same claims share one
// request. claims may be the challenge's JSON or its base64 form as it
// appears in WWW-Authenticate; empty claims just force a new token.
func (s *source) TokenWithClaims(ctx context.Context, claims string) (Token, error) {
	id := s.b.base()
	if err := ctx.Err(); err != nil {
		return Token{}, id.contextError(s.scope, err)
	}
	claims, err := normalizeClaims(claims)
	if err != nil {
		return Token{}, &Error{Identity: id.name, Tenant: id.tenant, Client: id.clientID, Scope: s.scope,
			Description: err.Error(), Hint: "pass the claims parameter of the WWW-Authenticate challenge", Permanent: true}
	}
	s.mu.Lock()
	if s.claimsCalls == nil {
		s.claimsCalls = map[string]*call{}
	}
	c := s.claimsCalls[claims]
	if c == nil {
		c = &call{done: make(chan struct{})}
		s.claimsCalls[claims] = c
		old, had := s.tok, s.has
		started := id.now()
		go func() {
			if had {
				// The token the resource rejected must not come back from
				// a cache.
				s.b.forget(s.scope, old)
			}
			rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), id.timeout)
			tok, err := s.b.acquire(rctx, s.scope, claims)
			cancel()
			s.mu.Lock()
			if err == nil {
				s.tok, s.has, s.obtained, s.retryAt = tok, true, started, time.Time{}
			}
			delete(s.claimsCalls, claims)
			c.tok, c.err = tok, err
			s.mu.Unlock()
			close(c.done)
		}()
	}
	s.mu.Unlock()
	select {
	case <-c.done:
		return c.tok, c.err
	case <-ctx.Done():
		return Token{}, id.contextError(s.scope, ctx.Err())
	}
}

// Invalidate drops the cached token: the next Token call requests a new one
// from the token endpoint (an App's MSAL cache is always empty, see
// noCache; a Delegated skips the dropped token in its shared cache).
func (s *source) Invalidate() {
	s.mu.Lock()
	old, had := s.tok, s.has
	s.has = false
	s.tok = Token{}
	s.retryAt = time.Time{}
	s.mu.Unlock()
	if had {
		s.b.forget(s.scope, old)
	}
	s.b.base().log.Debug("access token invalidated", zap.String("scope", s.scope))
}

// needsRenew reports whether the cached token is within max(5 minutes, 10%
// of its lifetime) of expiry.
func (s *source) needsRenew(now time.Time) bool {
	return renewDue(now, s.obtained, s.tok.ExpiresOn)
}

// renewDue reports whether a token obtained at obtained and expiring at
// expires is within max(5 minutes, 10% of its lifetime) of expiry.
func renewDue(now, obtained, expires time.Time) bool {
	margin := expires.Sub(obtained) / 10
	if margin < renewBefore {
		margin = renewBefore
	}
	return !now.Before(expires.Add(-margin))
}

func (s *source) usable(now time.Time) bool {
	return now.Before(s.tok.ExpiresOn.Add(-minUsable))
}

// start begins a token request; s.mu must be held. The request does not end
// with the context of the caller that happened to start it (other callers
// may be waiting for it); it is bounded by the app's request timeout.
func (s *source) start(ctx context.Context) *call {
	c := &call{done: make(chan struct{})}
	s.inflight = c
	id := s.b.base()
	started := id.now()
	go func() {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), id.timeout)
		tok, err := s.b.acquire(rctx, s.scope, "")
		cancel()

		s.mu.Lock()
		if err == nil {
			s.tok, s.has, s.obtained, s.retryAt = tok, true, started, time.Time{}
		} else if s.has {
			s.retryAt = id.now().Add(retryAfterFailure)
		}
		s.inflight = nil
		c.tok, c.err = tok, err
		s.mu.Unlock()
		close(c.done)
	}()
	return c
}

// String describes the token without its value, so that printing a Token
// (in logs, errors or test failures) never leaks it.
func (t Token) String() string {
	if t.Value == "" {
		return "auth.Token{}"
	}
	return "auth.Token{Value: [redacted], ExpiresOn: " + t.ExpiresOn.UTC().Format(time.RFC3339) + "}"
}

// GoString redacts the value for %#v too.
func (t Token) GoString() string { return t.String() }

// normalizeClaims returns the JSON of a claims challenge given as JSON or
// base64 (standard or URL alphabet, padded or not).
func normalizeClaims(c string) (string, error) {
	c = strings.TrimSpace(c)
	if c == "" || strings.HasPrefix(c, "{") {
		if c != "" && !json.Valid([]byte(c)) {
			return "", errors.New("the claims challenge is not valid JSON")
		}
		return c, nil
	}
	for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.RawStdEncoding, base64.URLEncoding, base64.RawURLEncoding} {
		if b, err := enc.DecodeString(c); err == nil && json.Valid(b) {
			return string(b), nil
		}
	}
	return "", errors.New("the claims challenge is neither JSON nor base64-encoded JSON")
}
