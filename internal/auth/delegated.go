package auth

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/AzureAD/microsoft-authentication-library-for-go/apps/public"
	"go.uber.org/zap"

	"github.com/mailpipe/mailpipe/internal/config"
)

// DefaultRotationWait is how long a Delegated waits, after Entra ID
// rejected a refresh token, for another replica to store the refresh token
// that replaced it (see WithRotationWait).
const DefaultRotationWait = 5 * time.Second

// WithSignInCommand sets the command that operators run to sign a
// delegated identity in, quoted in errors and Status warnings (default:
// "importer auth login --config FILE --mailbox <a mailbox using identity NAME>").
func WithSignInCommand(cmd string) Option {
	return func(o *options) {
		if cmd = strings.TrimSpace(cmd); cmd != "" {
			o.signInCmd = cmd
		}
	}
}

// WithRotationWait sets how long a Delegated waits for another replica to
// store a rotated refresh token after Entra ID rejected the one this
// replica used (default DefaultRotationWait).
func WithRotationWait(d time.Duration) Option {
	return func(o *options) {
		if d > 0 {
			o.rotationWait = d
		}
	}
}

// Delegated is a delegated identity: a service account (the identity's
// username) signed in once with the device code flow (Login) to a public
// client app registration ("Allow public client flows": yes; delegated
// permissions such as Office 365 Exchange Online IMAP.AccessAsUser.All or
// Microsoft Graph Mail.ReadWrite.Shared, plus offline_access). Its sources
// redeem the sign-in's refresh token for access tokens.
//
// The MSAL token cache (refresh token, access tokens, account) lives in a
// CacheStore shared by all replicas, encrypted at rest. Every MSAL
// operation loads it first, and every token response is written back with
// compare-and-set, merged with whatever another replica stored meanwhile:
// the rotated refresh token each refresh returns is persisted at once, a
// refresh by one replica never invalidates the others (they load the new
// refresh token, and use an access token another replica got instead of
// asking for one), and a restart needs no new sign-in.
//
// If Entra ID rejects the refresh token as invalid (as an identity
// provider with one-time refresh tokens does when two replicas redeemed
// the same one), the Delegated waits briefly for the stored cache to get
// another refresh token and retries once with it.
type Delegated struct {
	ident
	client       public.Client
	cache        *cacheAdapter
	rotationWait time.Duration
	// sem serializes MSAL calls: the cache adapter's Replace and Export
	// pair up per call.
	sem chan struct{}

	mu      sync.Mutex
	sources map[string]*source
}

// NewDelegated makes the MSAL public client for the delegated identity
// called name, keeping its token cache in store (see NewKVCacheStore).
// NewDelegated does no I/O.
func NewDelegated(name string, id config.Identity, store CacheStore, opts ...Option) (*Delegated, error) {
	o := newOptions(opts)
	key := "identities." + name
	tenant, clientID, host, err := commonSettings(key, id)
	if err != nil {
		return nil, err
	}
	username := strings.TrimSpace(id.Username)
	if username == "" {
		return nil, fmt.Errorf("%s.username: missing (the service account's user principal name, e.g. svc-mailpipe@contoso.onmicrosoft.com)", key)
	}
	if store == nil {
		return nil, fmt.Errorf("%s: no token cache store", key)
	}
	hc, err := o.client(key, id)
	if err != nil {
		return nil, err
	}
	signIn := o.signInCmd
	if signIn == "" {
		signIn = "importer auth login --config FILE --mailbox <a mailbox using identity " + name + ">"
	}
	wait := o.rotationWait
	if wait <= 0 {
		wait = DefaultRotationWait
	}
	log := o.log.With(zap.String("identity", name), zap.String("tenant_id", tenant), zap.String("client_id", clientID),
		zap.String("username", username))
	adapter := &cacheAdapter{name: name, store: store, log: log, now: o.now}
	authority := "https://" + host + "/" + tenant
	popts := []public.Option{
		public.WithAuthority(authority),
		public.WithCache(adapter),
		public.WithHTTPClient(hc),
	}
	if !microsoftHosts[strings.ToLower(hostOnly(host))] {
		popts = append(popts, public.WithInstanceDiscovery(false))
	}
	if len(o.capabilities) > 0 {
		popts = append(popts, public.WithClientCapabilities(o.capabilities))
	}
	client, err := public.New(clientID, popts...)
	if err != nil {
		return nil, fmt.Errorf("%s: authority %s: %w", key, authority, err)
	}
	return &Delegated{
		ident: ident{
			name:      name,
			tenant:    tenant,
			clientID:  clientID,
			authority: authority,
			delegated: true,
			username:  username,
			signInCmd: signIn,
			log:       log,
			now:       o.now,
			timeout:   o.timeout,
		},
		client:       client,
		cache:        adapter,
		rotationWait: wait,
		sem:          make(chan struct{}, 1),
		sources:      make(map[string]*source),
	}, nil
}

// Name is the identity's name.
func (d *Delegated) Name() string { return d.name }

// Username is the service account.
func (d *Delegated) Username() string { return d.username }

// Authority is the authority URL (https://<host>/<tenant>).
func (d *Delegated) Authority() string { return d.authority }

// SignInCommand is the command quoted in hints to sign the identity in.
func (d *Delegated) SignInCommand() string { return d.signInCmd }

// Source returns the token source for scopes of one resource, such as
// ScopeIMAPDelegated, or ScopeGraphMailReadWriteShared and
// ScopeGraphMailSendShared together. openid, profile and offline_access
// are ignored (MSAL adds them). Calls with the same scopes share one
// source. The source has the semantics of App sources (caching, renewal
// before expiry, one request for concurrent callers, Invalidate) and
// implements ClaimsTokenSource.
func (d *Delegated) Source(scopes ...string) TokenSource {
	key := strings.Join(resourceScopes(scopes), " ")
	d.mu.Lock()
	defer d.mu.Unlock()
	s, ok := d.sources[key]
	if !ok {
		s = &source{b: d, scope: key}
		d.sources[key] = s
	}
	return s
}

// resourceScopes drops empty, duplicate and OpenID scopes.
func resourceScopes(scopes []string) []string {
	var out []string
	seen := map[string]bool{}
	for _, s := range scopes {
		for _, f := range strings.Fields(s) {
			l := strings.ToLower(f)
			if l == "openid" || l == "profile" || l == ScopeOfflineAccess || seen[l] {
				continue
			}
			seen[l] = true
			out = append(out, f)
		}
	}
	return out
}

// resourceOf is the resource of a delegated scope: the part before the
// last "/" of a URI, Graph for a short name such as Mail.Send.
func resourceOf(scope string) string {
	if i := strings.Index(scope, "://"); i >= 0 {
		if j := strings.LastIndexByte(scope, '/'); j > i+2 {
			return strings.ToLower(scope[:j])
		}
		return strings.ToLower(scope)
	}
	return "https://graph.microsoft.com"
}

func (d *Delegated) lock(ctx context.Context) error {
	select {
	case d.sem <- struct{}{}:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (d *Delegated) unlock() { <-d.sem }

// DeviceCodeMessage is what the operator needs to sign in: open
// VerificationURL in a browser (on any device) and enter UserCode before
// ExpiresOn.
type DeviceCodeMessage struct {
	UserCode        string
	VerificationURL string
	ExpiresOn       time.Time
	// Message is Entra ID's instruction text, in the tenant's language.
	Message string
}

// Login signs the service account in with the device code flow: it asks
// Entra ID for a code, calls prompt with it, and waits until someone signs
// in as the service account at the verification URL (or ctx ends, or the
// code expires after 15 minutes). The tokens go into the shared cache,
// replacing an earlier sign-in (also one that cannot be decrypted any
// more). scopes must belong to one resource (e.g. ScopeIMAPDelegated, or
// the Graph scopes); offline_access, openid and profile are always asked
// for. Signing in as another account than the configured username fails
// and leaves no tokens of it. Token renewal of this Delegated waits while
// Login runs.
func (d *Delegated) Login(ctx context.Context, scopes []string, prompt func(DeviceCodeMessage)) error {
	req := resourceScopes(scopes)
	scope := strings.Join(req, " ")
	if len(req) == 0 {
		return d.loginError(scope, "no scope to sign in for", "ask for the scopes of the mailbox's source, e.g. "+ScopeIMAPDelegated)
	}
	for _, s := range req[1:] {
		if resourceOf(s) != resourceOf(req[0]) {
			return d.loginError(scope, "the scopes belong to several resources; one sign-in asks for the scopes of one resource",
				"sign in once per resource (IMAP: "+ScopeIMAPDelegated+"; Graph: "+ScopeGraphMailReadWriteShared+" "+ScopeGraphMailSendShared+")")
		}
	}
	if err := d.lock(ctx); err != nil {
		return d.contextError(scope, err)
	}
	defer d.unlock()
	d.cache.setLogin(d.username)
	defer d.cache.clearLogin()

	dc, err := d.client.AcquireTokenByDeviceCode(ctx, req)
	if err != nil {
		return d.classify(scope, err)
	}
	d.log.Info("device code issued; waiting for the sign-in",
		zap.String("verification_url", dc.Result.VerificationURL), zap.Time("expires_on", dc.Result.ExpiresOn))
	if prompt != nil {
		prompt(DeviceCodeMessage{
			UserCode:        dc.Result.UserCode,
			VerificationURL: dc.Result.VerificationURL,
			ExpiresOn:       dc.Result.ExpiresOn,
			Message:         dc.Result.Message,
		})
	}
	res, err := dc.AuthenticationResult(ctx)
	if err != nil {
		return d.classify(scope, err)
	}
	if got := res.Account.PreferredUsername; !strings.EqualFold(got, d.username) {
		if rerr := d.client.RemoveAccount(ctx, res.Account); rerr != nil {
			d.log.Warn("could not remove the tokens of the wrong account from the token cache", zap.Error(rerr))
		}
		return d.loginError(scope, fmt.Sprintf("signed in as %s, but identities.%s.username is %s", got, d.name, d.username),
			"run the sign-in again and sign in as "+d.username+" (use a private browser window if the browser signs in another account automatically)")
	}
	d.log.Info("signed in", zap.String("scopes", scope), zap.Time("access_token_expires_on", res.ExpiresOn))
	return nil
}

func (d *Delegated) loginError(scope, desc, hint string) *Error {
	return &Error{Identity: d.name, Tenant: d.tenant, Client: d.clientID, Scope: scope, Description: desc, Hint: hint, Permanent: true}
}

// account finds the service account in the token cache.
func (d *Delegated) account(ctx context.Context) (public.Account, bool, error) {
	accounts, err := d.client.Accounts(ctx)
	if err != nil {
		return public.Account{}, false, err
	}
	for _, a := range accounts {
		if strings.EqualFold(a.PreferredUsername, d.username) {
			return a, true, nil
		}
	}
	return public.Account{}, false, nil
}

// maxAcquireAttempts bounds the retries after a rejected refresh token
// that another replica replaced.
const maxAcquireAttempts = 3

// acquire gets an access token for scope (space-separated scopes of one
// resource) with the cached refresh token, or a newer access token another
// replica stored.
func (d *Delegated) acquire(ctx context.Context, scope, claims string) (Token, error) {
	scopes := strings.Fields(scope)
	if len(scopes) == 0 {
		return Token{}, d.loginError(scope, "no scope", "ask for a delegated scope such as "+ScopeIMAPDelegated)
	}
	if err := d.lock(ctx); err != nil {
		return Token{}, d.contextError(scope, err)
	}
	defer d.unlock()
	start := time.Now()
	for attempt := 1; ; attempt++ {
		acct, ok, err := d.account(ctx)
		if err != nil {
			return Token{}, d.failed(ctx, scope, d.classify(scope, err), start)
		}
		if !ok {
			return Token{}, d.failed(ctx, scope, d.notSignedIn(scope), start)
		}
		opts := []public.AcquireSilentOption{public.WithSilentAccount(acct)}
		if claims != "" {
			opts = append(opts, public.WithClaims(claims))
		}
		res, err := d.client.AcquireTokenSilent(ctx, scopes, opts...)
		if err == nil {
			d.log.Debug("access token acquired",
				zap.String("scope", scope),
				zap.Bool("claims_challenge", claims != ""),
				zap.Time("expires_on", res.ExpiresOn),
				zap.Duration("took", time.Since(start)))
			return Token{Value: res.AccessToken, ExpiresOn: res.ExpiresOn}, nil
		}
		if err.Error() == "no token found" {
			return Token{}, d.failed(ctx, scope, d.notSignedIn(scope), start)
		}
		e := d.classify(scope, err)
		if e.OAuthError == "invalid_grant" && attempt < maxAcquireAttempts {
			// Another replica may have redeemed the same refresh token and
			// be storing its replacement: use that one.
			wait := d.rotationWait
			if userLevelGrantCodes[e.Code] {
				wait = 0 // revoked or expired for every replica: look once
			}
			if d.cache.storedRTChanged(ctx, d.cache.lastRTPrint(), wait) {
				d.log.Info("the refresh token was rejected, and another replica has stored a newer one: retrying with it",
					zap.String("scope", scope), zap.String("code", e.Code))
				continue
			}
		}
		return Token{}, d.failed(ctx, scope, e, start)
	}
}

// userLevelGrantCodes are invalid_grant codes that concern the user's
// sign-in as a whole, not one refresh token.
var userLevelGrantCodes = map[string]bool{
	"AADSTS50173": true, "AADSTS700082": true, "AADSTS70008": true, "AADSTS70043": true, "AADSTS50133": true,
	"AADSTS50076": true, "AADSTS50079": true, "AADSTS50158": true, "AADSTS65001": true, "AADSTS50034": true,
	"AADSTS50057": true, "AADSTS50053": true, "AADSTS53003": true,
}

// failed logs a failed acquisition and records a permanent failure in the
// shared metadata, so that Status on every replica shows it.
func (d *Delegated) failed(ctx context.Context, scope string, e *Error, start time.Time) *Error {
	d.log.Warn("access token request failed",
		zap.String("scope", scope),
		zap.String("code", e.Code),
		zap.Bool("permanent", e.Permanent),
		zap.String("description", e.Description),
		zap.String("hint", e.Hint),
		zap.Duration("took", time.Since(start)))
	var ce *cacheError
	if e.Permanent && e.Code != "" && !errors.As(e.Err, &ce) {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		err := d.cache.recordFailure(rctx, cacheFailure{
			At: d.now(), Code: e.Code, OAuthError: e.OAuthError, Description: e.Description, SignIn: e.SignInRequired(),
		})
		if err != nil {
			d.log.Warn("could not record the failure in the token cache", zap.Error(err))
		}
	}
	return e
}

func (d *Delegated) notSignedIn(scope string) *Error {
	return &Error{
		Identity: d.name, Tenant: d.tenant, Client: d.clientID, Scope: scope,
		Description: d.username + " is not signed in (no token in the token cache)",
		Hint:        "run `" + d.signInCmd + "`",
		Permanent:   true,
	}
}

// forget makes the shared cache skip an invalidated access token.
func (d *Delegated) forget(_ string, tok Token) { d.cache.reject(tok) }

// SignInRequired reports whether the error means the delegated sign-in is
// no longer valid (refresh token revoked, expired or rejected, or Entra ID
// wants an interactive step): only a new sign-in fixes it.
func (e *Error) SignInRequired() bool {
	if e == nil {
		return false
	}
	if e.OAuthError == "interaction_required" {
		return true
	}
	switch e.Code {
	case "AADSTS50173", "AADSTS700082", "AADSTS70008", "AADSTS70043", "AADSTS50133",
		"AADSTS50076", "AADSTS50079", "AADSTS50158", "AADSTS9002313":
		return true
	case "AADSTS70000":
		return e.OAuthError == "invalid_grant"
	}
	return false
}

// Refresh tokens of Entra ID expire after 90 days without use; Status
// warns from RefreshTokenIdleWarning on.
const (
	RefreshTokenMaxIdle     = 90 * 24 * time.Hour
	RefreshTokenIdleWarning = 80 * 24 * time.Hour
)

// DelegatedStatus describes a delegated identity's sign-in, from the
// shared token cache (no request to Entra ID).
type DelegatedStatus struct {
	Identity string
	// Username is the configured service account.
	Username string
	// SignedIn: the cache holds a refresh token of Username.
	SignedIn bool
	// SignedInAs is the account in the cache ("" when none).
	SignedInAs string
	// SignedInAt is when Login last succeeded (zero when unknown).
	SignedInAt time.Time
	// RefreshedAt is when the refresh token was last renewed (every token
	// response brings a new one).
	RefreshedAt time.Time
	// AccessTokens are the cached access tokens of the account.
	AccessTokens []AccessTokenStatus
	// LastError is the last permanent token failure since the last
	// renewal ("" when none), at LastErrorAt.
	LastError   string
	LastErrorAt time.Time
	// Warnings say what needs doing.
	Warnings []string
}

// AccessTokenStatus is one cached access token.
type AccessTokenStatus struct {
	Scopes    string
	ExpiresOn time.Time
}

// Status reads the shared token cache and reports the sign-in: as whom and
// when, when the refresh token was last renewed, the cached access tokens,
// and warnings (not signed in; refresh token unused for more than 80 days;
// the last refresh failed and a new sign-in is needed). A cache that cannot
// be read or decrypted is an error.
func (d *Delegated) Status(ctx context.Context) (DelegatedStatus, error) {
	st := DelegatedStatus{Identity: d.name, Username: d.username}
	data, rev, err := d.cache.store.Load(ctx)
	if err != nil {
		e := &Error{Identity: d.name, Tenant: d.tenant, Client: d.clientID, Description: (&cacheError{op: "load", err: err}).Error(), Err: err}
		e.Hint = d.cacheHint(err)
		e.Permanent = errors.Is(err, ErrCacheUndecryptable)
		return st, e
	}
	env, err := decodeEnvelope(data)
	if err != nil {
		return st, &Error{Identity: d.name, Tenant: d.tenant, Client: d.clientID, Description: err.Error(), Err: err, Hint: d.cacheHint(err), Permanent: true}
	}
	signInHint := "run `" + d.signInCmd + "`"
	acc, found := findAccount(env.MSAL, d.username)
	switch {
	case rev == 0 || len(env.MSAL) == 0:
		st.Warnings = append(st.Warnings, "not signed in: "+signInHint)
		return st, nil
	case !found:
		msg := "not signed in as " + d.username
		if others := accountNames(env.MSAL); len(others) > 0 {
			msg += " (the token cache holds a sign-in of " + strings.Join(others, ", ") + ")"
		}
		st.Warnings = append(st.Warnings, msg+": "+signInHint+" and sign in as "+d.username)
		return st, nil
	}
	st.SignedInAs = acc.Username
	st.SignedIn = hasRefreshToken(env.MSAL, acc.HomeAccountID)
	st.SignedInAt, st.RefreshedAt = env.Meta.SignedInAt, env.Meta.RefreshedAt
	for _, at := range accessTokens(env.MSAL, acc.HomeAccountID) {
		st.AccessTokens = append(st.AccessTokens, AccessTokenStatus{Scopes: at.Target, ExpiresOn: unixField(at.ExpiresOn)})
	}
	if !st.SignedIn {
		st.Warnings = append(st.Warnings, "no refresh token for "+d.username+" in the token cache: "+signInHint)
	}
	now := d.now()
	renewed := st.RefreshedAt
	if renewed.IsZero() {
		renewed = st.SignedInAt
	}
	if st.SignedIn && !renewed.IsZero() && now.Sub(renewed) > RefreshTokenIdleWarning {
		days := int(now.Sub(renewed).Hours() / 24)
		left := int((RefreshTokenMaxIdle - now.Sub(renewed)).Hours() / 24)
		msg := fmt.Sprintf("the refresh token has not been used for %d days (last renewed %s); Entra ID lets it expire after 90 days without use", days, renewed.UTC().Format(time.DateOnly))
		if left > 0 {
			msg += fmt.Sprintf(" (in about %d days)", left)
		} else {
			msg += " (it has probably expired)"
		}
		st.Warnings = append(st.Warnings, msg+": run the importer, which renews it while it runs, or "+signInHint)
	}
	if f := env.Meta.LastFailure; f != nil {
		st.LastErrorAt = f.At
		st.LastError = strings.TrimSpace(f.Code + ": " + f.Description)
		if f.SignIn {
			st.Warnings = append(st.Warnings, fmt.Sprintf("the refresh token was rejected at %s (%s): sign in again: %s",
				f.At.UTC().Format(time.RFC3339), st.LastError, signInHint))
		} else {
			st.Warnings = append(st.Warnings, fmt.Sprintf("the last token request failed at %s (%s)", f.At.UTC().Format(time.RFC3339), st.LastError))
		}
	}
	return st, nil
}

// cacheHint is the hint for an error of the token cache.
func (a *ident) cacheHint(err error) string {
	if errors.Is(err, ErrCacheUndecryptable) {
		return "identities." + a.name + ".token_cache_key is not the key the token cache was written with: " +
			"set the key used before, or run `" + a.signInCmd + "` to replace the cache with a new sign-in"
	}
	return "check the connection to NATS and the token bucket (bus.token_bucket)"
}
