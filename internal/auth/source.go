package auth

import (
	"context"
	"sync"
	"time"
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

// source is the TokenSource of one App and scope.
type source struct {
	app   *App
	scope string

	mu       sync.Mutex
	tok      Token
	has      bool
	obtained time.Time // app clock when the request for tok started
	retryAt  time.Time // after a failed renewal: not before this
	inflight *call
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
	if err := ctx.Err(); err != nil {
		return Token{}, s.app.contextError(s.scope, err)
	}
	s.mu.Lock()
	now := s.app.now()
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
		return Token{}, s.app.contextError(s.scope, ctx.Err())
	}
	if c.err == nil {
		return c.tok, nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.has && s.usable(s.app.now()) {
		return s.tok, nil
	}
	return Token{}, c.err
}

// Invalidate drops the cached token: the next Token call requests a new one
// from the token endpoint (MSAL's cache is not consulted, see noCache).
func (s *source) Invalidate() {
	s.mu.Lock()
	s.has = false
	s.tok = Token{}
	s.retryAt = time.Time{}
	s.mu.Unlock()
	s.app.log.Debug("access token invalidated")
}

// needsRenew reports whether the cached token is within max(5 minutes, 10%
// of its lifetime) of expiry.
func (s *source) needsRenew(now time.Time) bool {
	margin := s.tok.ExpiresOn.Sub(s.obtained) / 10
	if margin < renewBefore {
		margin = renewBefore
	}
	return !now.Before(s.tok.ExpiresOn.Add(-margin))
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
	started := s.app.now()
	go func() {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.app.timeout)
		tok, err := s.app.acquire(rctx, s.scope)
		cancel()

		s.mu.Lock()
		if err == nil {
			s.tok, s.has, s.obtained, s.retryAt = tok, true, started, time.Time{}
		} else if s.has {
			s.retryAt = s.app.now().Add(retryAfterFailure)
		}
		s.inflight = nil
		c.tok, c.err = tok, err
		s.mu.Unlock()
		close(c.done)
	}()
	return c
}
