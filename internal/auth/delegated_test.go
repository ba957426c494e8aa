package auth_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/mailpipe/mailpipe/internal/auth"
	"github.com/mailpipe/mailpipe/internal/bus"
	"github.com/mailpipe/mailpipe/internal/config"
	"github.com/mailpipe/mailpipe/internal/devidp"
)

const (
	publicClientID = "3f2e1d0c-9b8a-4765-b432-10fedcba9876"
	serviceUser    = "svc-mailpipe@contoso.example"
	tokenBucket    = "mailpipe-tokens"
	signInCmd      = "importer auth login --config FILE --mailbox support"
)

var graphScopes = []string{auth.ScopeGraphMailReadWriteShared, auth.ScopeGraphMailSendShared}

// dfix is a delegated test fixture: devidp with a public client and the
// service account, an embedded NATS server with the token bucket, and
// logs that are checked for leaked tokens.
type dfix struct {
	t      *testing.T
	idp    *devidp.Server
	conn   *bus.Conn
	kv     jetstream.KeyValue
	encKey []byte
	logs   *observer.ObservedLogs
	logger *zap.Logger
}

func newDelegatedFixture(t *testing.T, opts devidp.Options) *dfix {
	t.Helper()
	opts.Tenant = tenantID
	opts.Clients = append(opts.Clients, devidp.Client{ID: publicClientID, PublicClient: true})
	idp, err := devidp.Start(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(idp.Close)
	if err := idp.AddUser(serviceUser, devidp.UserOptions{DisplayName: "Mailpipe Service"}); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	conn, err := bus.Connect(ctx, config.NATS{Embedded: config.Embedded{StoreDir: t.TempDir()}}, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(conn.Close)
	kv, err := auth.OpenTokenBucket(ctx, conn.JetStream(), tokenBucket, 1)
	if err != nil {
		t.Fatal(err)
	}
	core, logs := observer.New(zapcore.DebugLevel)
	f := &dfix{t: t, idp: idp, conn: conn, kv: kv, encKey: randomKey(t), logs: logs, logger: zap.New(core)}
	t.Cleanup(f.checkLogs)
	return f
}

func randomKey(t *testing.T) []byte {
	t.Helper()
	k := make([]byte, 32)
	if _, err := rand.Read(k); err != nil {
		t.Fatal(err)
	}
	return k
}

func (f *dfix) identity() config.Identity {
	return config.Identity{
		Kind:          "delegated",
		TenantID:      tenantID,
		ClientID:      publicClientID,
		AuthorityHost: f.idp.AuthorityHost(),
		Username:      serviceUser,
		TokenCacheKey: config.Secret(base64.StdEncoding.EncodeToString(f.encKey)),
	}
}

// replica opens the token bucket over a connection of its own, as another
// importer process would.
func (f *dfix) replicaKV() jetstream.KeyValue {
	f.t.Helper()
	nc, err := nats.Connect("", f.conn.InProcessOption())
	if err != nil {
		f.t.Fatal(err)
	}
	f.t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		f.t.Fatal(err)
	}
	kv, err := auth.OpenTokenBucket(context.Background(), js, tokenBucket, 1)
	if err != nil {
		f.t.Fatal(err)
	}
	return kv
}

func (f *dfix) delegated(kv jetstream.KeyValue, key []byte, opts ...auth.Option) *auth.Delegated {
	f.t.Helper()
	store, err := auth.NewKVCacheStore(kv, "svc", key)
	if err != nil {
		f.t.Fatal(err)
	}
	return f.delegatedWith(store, opts...)
}

func (f *dfix) delegatedWith(store auth.CacheStore, opts ...auth.Option) *auth.Delegated {
	f.t.Helper()
	opts = append([]auth.Option{
		auth.WithHTTPClient(f.idp.HTTPClient()),
		auth.WithLogger(f.logger),
		auth.WithSignInCommand(signInCmd),
	}, opts...)
	d, err := auth.NewDelegated("svc", f.identity(), store, opts...)
	if err != nil {
		f.t.Fatal(err)
	}
	return d
}

// login signs in with the device code flow, playing the user who enters
// the code in a browser.
func (f *dfix) login(d *auth.Delegated, as string, scopes ...string) error {
	f.t.Helper()
	if len(scopes) == 0 {
		scopes = []string{auth.ScopeIMAPDelegated, auth.ScopeOfflineAccess}
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	return d.Login(ctx, scopes, func(m auth.DeviceCodeMessage) {
		if m.UserCode == "" || m.VerificationURL != devidp.VerificationURI || !strings.Contains(m.Message, m.UserCode) ||
			time.Until(m.ExpiresOn) < 10*time.Minute {
			f.t.Errorf("device code message: code %q url %q message %q expires %v", m.UserCode, m.VerificationURL, m.Message, m.ExpiresOn)
		}
		if err := f.idp.ApproveDeviceCode(m.UserCode, as); err != nil {
			f.t.Error(err)
		}
	})
}

// storedCache is the decrypted entry of the token bucket.
func (f *dfix) storedCache() map[string]any {
	f.t.Helper()
	store, err := auth.NewKVCacheStore(f.kv, "svc", f.encKey)
	if err != nil {
		f.t.Fatal(err)
	}
	data, _, err := store.Load(context.Background())
	if err != nil {
		f.t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(data, &m); err != nil {
		f.t.Fatal(err)
	}
	return m
}

// refreshTokens are the refresh tokens in the stored cache.
func (f *dfix) refreshTokens() []string {
	f.t.Helper()
	msal, _ := f.storedCache()["msal"].(map[string]any)
	rts, _ := msal["RefreshToken"].(map[string]any)
	var out []string
	for _, v := range rts {
		if e, ok := v.(map[string]any); ok {
			out = append(out, fmt.Sprint(e["secret"]))
		}
	}
	return out
}

// checkLogs fails if a log entry carries an access, id or refresh token.
func (f *dfix) checkLogs() {
	rts := f.refreshTokensQuiet()
	for _, e := range f.logs.All() {
		line := e.Message + fmt.Sprint(e.ContextMap())
		if strings.Contains(line, "eyJ") {
			f.t.Errorf("log entry leaks a token: %s", e.Message)
		}
		for _, rt := range rts {
			if rt != "" && strings.Contains(line, rt) {
				f.t.Errorf("log entry leaks the refresh token: %s", e.Message)
			}
		}
	}
}

func (f *dfix) refreshTokensQuiet() []string {
	store, err := auth.NewKVCacheStore(f.kv, "svc", f.encKey)
	if err != nil {
		return nil
	}
	data, _, err := store.Load(context.Background())
	if err != nil || data == nil {
		return nil
	}
	var env struct {
		MSAL struct {
			RefreshToken map[string]struct {
				Secret string `json:"secret"`
			} `json:"RefreshToken"`
		} `json:"msal"`
	}
	_ = json.Unmarshal(data, &env)
	var out []string
	for _, rt := range env.MSAL.RefreshToken {
		out = append(out, rt.Secret)
	}
	return out
}

func delegatedErr(t *testing.T, err error) *auth.Error {
	t.Helper()
	if err == nil {
		t.Fatal("no error")
	}
	var e *auth.Error
	if !errors.As(err, &e) {
		t.Fatalf("error %T %v is not *auth.Error", err, err)
	}
	if strings.Contains(err.Error(), "eyJ") {
		t.Errorf("error text contains a token")
	}
	return e
}

func hasWarning(st auth.DelegatedStatus, parts ...string) bool {
	for _, w := range st.Warnings {
		ok := true
		for _, p := range parts {
			ok = ok && strings.Contains(w, p)
		}
		if ok {
			return true
		}
	}
	return false
}

func TestDelegatedDeviceCodeLogin(t *testing.T) {
	f := newDelegatedFixture(t, devidp.Options{})
	d := f.delegated(f.kv, f.encKey)
	ctx := context.Background()

	// Before the sign-in: a clear error and a Status that says what to do.
	_, err := d.Source(auth.ScopeIMAPDelegated).Token(ctx)
	e := delegatedErr(t, err)
	if !e.Permanent || !strings.Contains(e.Description, "not signed in") || !strings.Contains(e.Hint, signInCmd) {
		t.Errorf("before login: %+v", e)
	}
	st, err := d.Status(ctx)
	if err != nil || st.SignedIn || !hasWarning(st, "not signed in", signInCmd) {
		t.Errorf("status before login: %+v %v", st, err)
	}

	if err := f.login(d, serviceUser); err != nil {
		t.Fatalf("login: %v", err)
	}
	if f.idp.DeviceCodeRequests() != 1 || f.idp.TokenRequests() != 1 {
		t.Errorf("device codes %d, token requests %d", f.idp.DeviceCodeRequests(), f.idp.TokenRequests())
	}

	// IMAP: the access token of the sign-in, from the shared cache.
	imap := d.Source(auth.ScopeIMAPDelegated, auth.ScopeOfflineAccess)
	tok, err := imap.Token(ctx)
	if err != nil {
		t.Fatal(err)
	}
	c, err := f.idp.Validate(tok.Value, "https://outlook.office.com")
	if err != nil {
		t.Fatal(err)
	}
	if c.UPN != serviceUser || c.Email != serviceUser || !c.HasScope("IMAP.AccessAsUser.All") || len(c.Roles) != 0 || c.AppID != publicClientID {
		t.Errorf("IMAP token claims %+v", c)
	}
	if f.idp.RefreshRequests() != 0 {
		t.Errorf("refresh requests = %d, want 0 (token from the sign-in)", f.idp.RefreshRequests())
	}
	if strings.Contains(fmt.Sprint(tok), tok.Value) || strings.Contains(fmt.Sprintf("%#v", tok), tok.Value) {
		t.Error("printing a Token shows its value")
	}

	// Graph: the same sign-in's refresh token, another resource.
	graph := d.Source(graphScopes...)
	gt, err := graph.Token(ctx)
	if err != nil {
		t.Fatal(err)
	}
	gc, err := f.idp.Validate(gt.Value, devidp.ResourceGraph)
	if err != nil || !gc.HasScope("Mail.ReadWrite.Shared") || !gc.HasScope("Mail.Send.Shared") || gc.UPN != serviceUser {
		t.Errorf("graph token %+v %v", gc, err)
	}
	if _, err := f.idp.Validate(gt.Value, "https://outlook.office.com"); err == nil {
		t.Error("graph token valid for outlook")
	}
	if f.idp.RefreshRequests() != 1 {
		t.Errorf("refresh requests = %d, want 1", f.idp.RefreshRequests())
	}
	// Cached per source.
	if again, err := graph.Token(ctx); err != nil || again != gt || f.idp.RefreshRequests() != 1 {
		t.Errorf("second graph Token: err %v, same %v, refreshes %d", err, again == gt, f.idp.RefreshRequests())
	}

	st, err = d.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !st.SignedIn || st.SignedInAs != serviceUser || time.Since(st.SignedInAt) > time.Minute || st.RefreshedAt.Before(st.SignedInAt) ||
		len(st.Warnings) != 0 || len(st.AccessTokens) != 2 || st.LastError != "" {
		t.Errorf("status %+v", st)
	}
	for _, at := range st.AccessTokens {
		if d := time.Until(at.ExpiresOn); d < 50*time.Minute || d > 61*time.Minute {
			t.Errorf("access token %s expires in %v", at.Scopes, d)
		}
	}
}

func TestDelegatedRestartNeedsNoLogin(t *testing.T) {
	f := newDelegatedFixture(t, devidp.Options{})
	if err := f.login(f.delegated(f.kv, f.encKey), serviceUser); err != nil {
		t.Fatal(err)
	}
	// A new process: new connection, new MSAL client, same bucket.
	d := f.delegated(f.replicaKV(), f.encKey)
	ctx := context.Background()
	tok, err := d.Source(auth.ScopeIMAPDelegated).Token(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.idp.Validate(tok.Value, "https://outlook.office.com"); err != nil {
		t.Fatal(err)
	}
	if f.idp.DeviceCodeRequests() != 1 || f.idp.RefreshRequests() != 0 {
		t.Errorf("device codes %d refreshes %d: want the cached sign-in and token", f.idp.DeviceCodeRequests(), f.idp.RefreshRequests())
	}
	// Renewal after the restart rotates the refresh token and stores it.
	before := f.refreshTokens()
	src := d.Source(auth.ScopeIMAPDelegated)
	src.Invalidate()
	tok2, err := src.Token(ctx)
	if err != nil || tok2.Value == tok.Value {
		t.Fatalf("after Invalidate: err %v, same token %v", err, tok2.Value == tok.Value)
	}
	after := f.refreshTokens()
	if f.idp.RefreshRequests() != 1 || len(after) != 1 || len(before) != 1 || after[0] == before[0] {
		t.Errorf("refreshes %d; stored refresh token rotated: %v", f.idp.RefreshRequests(), len(after) == 1 && len(before) == 1 && after[0] != before[0])
	}
}

func TestDelegatedReplicasStrictRotation(t *testing.T) {
	// Tokens living 4 minutes are renewed on every call, so every round
	// makes both replicas redeem the refresh token at the same moment; the
	// delay makes their requests overlap. With strict rotation the second
	// redemption of a refresh token fails: the replica must pick up the
	// refresh token the other one stored, not give up.
	f := newDelegatedFixture(t, devidp.Options{TokenTTL: 4 * time.Minute, StrictRotation: true})
	if err := f.login(f.delegated(f.kv, f.encKey), serviceUser); err != nil {
		t.Fatal(err)
	}
	f.idp.SetTokenDelay(150 * time.Millisecond)
	a := f.delegated(f.replicaKV(), f.encKey).Source(auth.ScopeIMAPDelegated)
	b := f.delegated(f.replicaKV(), f.encKey).Source(auth.ScopeIMAPDelegated)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	const rounds = 4
	for round := 0; round < rounds; round++ {
		var wg sync.WaitGroup
		errs := make([]error, 2)
		for i, src := range []auth.TokenSource{a, b} {
			wg.Add(1)
			go func() {
				defer wg.Done()
				tok, err := src.Token(ctx)
				if err == nil {
					_, err = f.idp.Validate(tok.Value, "https://outlook.office.com")
				}
				errs[i] = err
			}()
		}
		wg.Wait()
		for i, err := range errs {
			if err != nil {
				t.Fatalf("round %d, replica %d: %v", round, i, err)
			}
		}
	}
	if n := f.idp.RefreshRequests(); n < 2*rounds {
		t.Errorf("refreshes = %d, want at least %d", n, 2*rounds)
	}
	if n := f.logs.FilterMessageSnippet("another replica has stored a newer one").Len(); n < rounds {
		t.Errorf("%d retries with another replica's refresh token in %d rounds; want one per round", n, rounds)
	}
	// The stored refresh token is the newest, unused one: a third replica
	// can still refresh under strict rotation.
	f.idp.SetTokenDelay(0)
	c := f.delegated(f.replicaKV(), f.encKey)
	if _, err := c.Source(graphScopes...).Token(ctx); err != nil {
		t.Fatalf("third replica after the concurrent rounds: %v", err)
	}
	if rts := f.refreshTokens(); len(rts) != 1 {
		t.Errorf("%d refresh tokens stored, want 1", len(rts))
	}
}

// hookStore runs a hook before its first Save: another replica writing
// between this replica's Replace and Export.
type hookStore struct {
	auth.CacheStore
	once  sync.Once
	hook  func()
	saves int
	mu    sync.Mutex
}

func (h *hookStore) Save(ctx context.Context, data []byte, rev uint64) (uint64, error) {
	h.once.Do(h.hook)
	h.mu.Lock()
	h.saves++
	h.mu.Unlock()
	return h.CacheStore.Save(ctx, data, rev)
}

func TestDelegatedCASConflictMerges(t *testing.T) {
	f := newDelegatedFixture(t, devidp.Options{})
	if err := f.login(f.delegated(f.kv, f.encKey), serviceUser); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	b := f.delegated(f.replicaKV(), f.encKey)
	var bTok auth.Token
	var bErr error
	inner, err := auth.NewKVCacheStore(f.replicaKV(), "svc", f.encKey)
	if err != nil {
		t.Fatal(err)
	}
	hs := &hookStore{CacheStore: inner}
	hs.hook = func() {
		// Replica B gets a Graph token (and a new refresh token) while A
		// is about to store its own refresh.
		bTok, bErr = b.Source(graphScopes...).Token(ctx)
	}
	a := f.delegatedWith(hs)
	src := a.Source(auth.ScopeIMAPDelegated)
	src.Invalidate() // nothing cached yet: a no-op
	old, err := src.Token(ctx)
	if err != nil {
		t.Fatal(err)
	}
	src.Invalidate()
	aTok, err := src.Token(ctx) // refresh; B writes before A's Save: conflict, merge
	if err != nil {
		t.Fatal(err)
	}
	if bErr != nil {
		t.Fatal(bErr)
	}
	if aTok.Value == old.Value || hs.saves < 2 {
		t.Fatalf("new token %v, saves %d: want a refresh and a retried save", aTok.Value != old.Value, hs.saves)
	}
	if f.logs.FilterMessageSnippet("merged this replica's new tokens").Len() != 1 {
		t.Error("no merge after the conflicting save")
	}
	st, err := a.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// Both replicas' access tokens survived the merge.
	var scopes []string
	for _, at := range st.AccessTokens {
		scopes = append(scopes, at.Scopes)
	}
	if len(scopes) != 2 || !strings.Contains(strings.Join(scopes, "|"), "Mail.Send.Shared") || !strings.Contains(strings.Join(scopes, "|"), "IMAP") {
		t.Errorf("stored access tokens after merge: %v", scopes)
	}
	// A fresh replica gets B's Graph token from the cache, and A's IMAP
	// token: no request.
	n := f.idp.RefreshRequests()
	c := f.delegated(f.replicaKV(), f.encKey)
	if got, err := c.Source(graphScopes...).Token(ctx); err != nil || got.Value != bTok.Value {
		t.Errorf("graph token from the merged cache: err %v, B's token %v", err, got.Value == bTok.Value)
	}
	if got, err := c.Source(auth.ScopeIMAPDelegated).Token(ctx); err != nil || got.Value != aTok.Value {
		t.Errorf("IMAP token from the merged cache: err %v, A's token %v", err, got.Value == aTok.Value)
	}
	if f.idp.RefreshRequests() != n {
		t.Errorf("refreshes went from %d to %d; want tokens from the cache", n, f.idp.RefreshRequests())
	}
	// The stored refresh token (A's, the merge winner) works even with
	// strict rotation.
	f.idp.SetStrictRotation(true)
	src2 := c.Source(auth.ScopeIMAPDelegated)
	src2.Invalidate()
	if _, err := src2.Token(ctx); err != nil {
		t.Fatalf("refresh with the merged cache's refresh token: %v", err)
	}
}

func TestDelegatedRevokedRefreshToken(t *testing.T) {
	f := newDelegatedFixture(t, devidp.Options{})
	d := f.delegated(f.kv, f.encKey)
	if err := f.login(d, serviceUser); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	src := d.Source(auth.ScopeIMAPDelegated)
	if _, err := src.Token(ctx); err != nil {
		t.Fatal(err)
	}
	time.Sleep(5 * time.Millisecond)
	if err := f.idp.RevokeRefreshTokens(serviceUser); err != nil {
		t.Fatal(err)
	}
	src.Invalidate()
	start := time.Now()
	_, err := src.Token(ctx)
	e := delegatedErr(t, err)
	if e.Code != "AADSTS50173" || e.OAuthError != "invalid_grant" || !e.Permanent || !e.SignInRequired() || !auth.IsPermanent(err) ||
		!strings.Contains(e.Hint, "sign in again") || !strings.Contains(e.Hint, signInCmd) || strings.Contains(e.Description, "Trace ID") {
		t.Errorf("error = %+v", e)
	}
	if time.Since(start) > 3*time.Second {
		t.Errorf("a revoked sign-in took %v to report", time.Since(start))
	}
	// Every replica's Status says so.
	st, err := f.delegated(f.replicaKV(), f.encKey).Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !hasWarning(st, "sign in again", signInCmd) || !strings.Contains(st.LastError, "AADSTS50173") || st.LastErrorAt.IsZero() {
		t.Errorf("status after revocation: %+v", st)
	}
	// A new sign-in fixes it and clears the warning.
	time.Sleep(5 * time.Millisecond)
	if err := f.login(d, serviceUser); err != nil {
		t.Fatal(err)
	}
	if _, err := src.Token(ctx); err != nil {
		t.Fatal(err)
	}
	if st, err := d.Status(ctx); err != nil || len(st.Warnings) != 0 || st.LastError != "" {
		t.Errorf("status after a new sign-in: %+v %v", st, err)
	}
}

func TestDelegatedCacheEncryptedAtRest(t *testing.T) {
	f := newDelegatedFixture(t, devidp.Options{})
	d := f.delegated(f.kv, f.encKey)
	if err := f.login(d, serviceUser); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	entry, err := f.kv.Get(ctx, auth.CacheKey("svc"))
	if err != nil {
		t.Fatal(err)
	}
	raw := entry.Value()
	rts := f.refreshTokens()
	if len(rts) != 1 || len(rts[0]) < 20 {
		t.Fatalf("stored refresh tokens: %d", len(rts))
	}
	for _, secret := range []string{rts[0], serviceUser, "svc-mailpipe", "eyJ", "RefreshToken", "secret", tenantID} {
		if bytes.Contains(raw, []byte(secret)) {
			t.Errorf("the stored value contains %q in clear", strings.TrimSpace(secret[:min(8, len(secret))]))
		}
	}
	if entry.Key() != "delegated.svc" {
		t.Errorf("key %q", entry.Key())
	}

	// A wrong key: a clear error, no token.
	wrong := f.delegated(f.kv, randomKey(t))
	_, err = wrong.Source(auth.ScopeIMAPDelegated).Token(ctx)
	e := delegatedErr(t, err)
	if !errors.Is(err, auth.ErrCacheUndecryptable) || !e.Permanent || !strings.Contains(e.Hint, "token_cache_key") || !strings.Contains(e.Hint, signInCmd) {
		t.Errorf("wrong key: %+v", e)
	}
	if _, err := wrong.Status(ctx); err == nil || !strings.Contains(err.Error(), "token_cache_key") {
		t.Errorf("Status with a wrong key: %v", err)
	}

	// The name is authenticated: the entry copied to another identity's
	// key does not decrypt there, even with the same key.
	if _, err := f.kv.Put(ctx, auth.CacheKey("other"), raw); err != nil {
		t.Fatal(err)
	}
	other, err := auth.NewKVCacheStore(f.kv, "other", f.encKey)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := other.Load(ctx); !errors.Is(err, auth.ErrCacheUndecryptable) {
		t.Errorf("copied entry: %v", err)
	}
	if _, err := auth.NewKVCacheStore(f.kv, "svc", []byte("short")); err == nil {
		t.Error("NewKVCacheStore accepted a short key")
	}

	// A new sign-in with the new key replaces the undecryptable cache.
	if err := f.login(wrong, serviceUser); err != nil {
		t.Fatalf("login with a new key: %v", err)
	}
	if _, err := wrong.Source(auth.ScopeIMAPDelegated).Token(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Source(graphScopes...).Token(ctx); !errors.Is(err, auth.ErrCacheUndecryptable) {
		t.Errorf("old key after the re-keyed sign-in: %v", err)
	}
}

func TestDelegatedStatusRefreshTokenIdle(t *testing.T) {
	f := newDelegatedFixture(t, devidp.Options{})
	clk := &clock{}
	d := f.delegated(f.kv, f.encKey, auth.WithClock(clk.now))
	if err := f.login(d, serviceUser); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	clk.advance(79 * 24 * time.Hour)
	if st, err := d.Status(ctx); err != nil || len(st.Warnings) != 0 {
		t.Errorf("after 79 days: %+v %v", st, err)
	}
	clk.advance(2 * 24 * time.Hour)
	st, err := d.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !hasWarning(st, "not been used for 81 days", "90 days", signInCmd) || !st.SignedIn {
		t.Errorf("after 81 days: %+v", st)
	}
}

func TestDelegatedTokenWithClaimsBypassesCache(t *testing.T) {
	f := newDelegatedFixture(t, devidp.Options{})
	d := f.delegated(f.kv, f.encKey)
	if err := f.login(d, serviceUser); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	src := d.Source(auth.ScopeIMAPDelegated)
	first, err := src.Token(ctx)
	if err != nil {
		t.Fatal(err)
	}
	cs, ok := src.(auth.ClaimsTokenSource)
	if !ok {
		t.Fatal("delegated source is not a ClaimsTokenSource")
	}
	claims := `{"access_token":{"acrs":{"essential":true,"value":"c1"}}}`
	// As it comes in WWW-Authenticate: base64.
	tok, err := cs.TokenWithClaims(ctx, base64.StdEncoding.EncodeToString([]byte(claims)))
	if err != nil {
		t.Fatal(err)
	}
	if tok.Value == first.Value || f.idp.RefreshRequests() != 1 {
		t.Fatalf("claims token: new %v, refreshes %d", tok.Value != first.Value, f.idp.RefreshRequests())
	}
	c, err := f.idp.Validate(tok.Value, "https://outlook.office.com")
	if err != nil || len(c.ACRS) != 1 || c.ACRS[0] != "c1" {
		t.Errorf("claims token acrs %v %v", c.ACRS, err)
	}
	if got := f.idp.ClaimsRequests(); len(got) != 1 || !strings.Contains(got[0], `"acrs"`) {
		t.Errorf("claims sent: %q", got)
	}
	// Later Token calls get the token that satisfies the challenge.
	if again, err := src.Token(ctx); err != nil || again != tok {
		t.Errorf("Token after TokenWithClaims: err %v, same %v", err, again == tok)
	}
	if _, err := cs.TokenWithClaims(ctx, "not claims"); err == nil {
		t.Error("TokenWithClaims accepted garbage")
	}
}

func TestAuthAppTokenWithClaimsBypassesCache(t *testing.T) {
	f := newFixture(t, devidp.Options{})
	src := f.app(t, f.identity()).Source(auth.ScopeIMAPApp)
	ctx := context.Background()
	first, err := src.Token(ctx)
	if err != nil {
		t.Fatal(err)
	}
	cs, ok := src.(auth.ClaimsTokenSource)
	if !ok {
		t.Fatal("app source is not a ClaimsTokenSource")
	}
	claims := `{"access_token":{"nbf":{"essential":true,"value":"1700000000"}}}`
	tok, err := cs.TokenWithClaims(ctx, claims)
	if err != nil {
		t.Fatal(err)
	}
	if tok.Value == first.Value || f.idp.TokenRequests() != 2 {
		t.Errorf("new token %v, token requests %d", tok.Value != first.Value, f.idp.TokenRequests())
	}
	if got := f.idp.ClaimsRequests(); len(got) != 1 || got[0] != claims {
		t.Errorf("claims sent: %q", got)
	}
	if again, err := src.Token(ctx); err != nil || again != tok || f.idp.TokenRequests() != 2 {
		t.Errorf("Token after TokenWithClaims: err %v, same %v", err, again == tok)
	}
}

func TestDeviceCodeLoginFailures(t *testing.T) {
	f := newDelegatedFixture(t, devidp.Options{Clients: []devidp.Client{{ID: clientID, Secret: secret}}})
	if err := f.idp.AddUser("someone.else@contoso.example", devidp.UserOptions{}); err != nil {
		t.Fatal(err)
	}
	d := f.delegated(f.kv, f.encKey)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	// Declined, expired.
	for _, tc := range []struct {
		act  func(code string) error
		code string
		hint string
	}{
		{f.idp.DeclineDeviceCode, "AADSTS70000", "cancelled"},
		{f.idp.ExpireDeviceCode, "AADSTS70019", "15 minutes"},
	} {
		err := d.Login(ctx, []string{auth.ScopeIMAPDelegated}, func(m auth.DeviceCodeMessage) {
			if err := tc.act(m.UserCode); err != nil {
				t.Error(err)
			}
		})
		if e := delegatedErr(t, err); e.Code != tc.code || !strings.Contains(e.Hint, tc.hint) {
			t.Errorf("%s: %+v", tc.code, e)
		}
	}

	// The wrong person signs in: refused, and no tokens of theirs stay.
	err := f.login(d, "someone.else@contoso.example")
	if e := delegatedErr(t, err); !strings.Contains(e.Description, "someone.else@contoso.example") || !strings.Contains(e.Hint, serviceUser) {
		t.Errorf("wrong account: %+v", e)
	}
	if st, err := d.Status(ctx); err != nil || st.SignedIn || !hasWarning(st, "not signed in") || strings.Contains(strings.Join(st.Warnings, " "), "someone.else") {
		t.Errorf("status after a wrong-account sign-in: %+v %v", st, err)
	}

	// Scopes of two resources in one sign-in.
	err = d.Login(ctx, []string{auth.ScopeIMAPDelegated, auth.ScopeGraphMailReadWriteShared}, nil)
	if e := delegatedErr(t, err); !strings.Contains(e.Description, "several resources") {
		t.Errorf("two resources: %+v", e)
	}
	if f.idp.DeviceCodeRequests() != 3 {
		t.Errorf("device code requests = %d", f.idp.DeviceCodeRequests())
	}

	// An app registration without "Allow public client flows".
	id := f.identity()
	id.ClientID = clientID
	store, err := auth.NewKVCacheStore(f.kv, "confidential", f.encKey)
	if err != nil {
		t.Fatal(err)
	}
	conf, err := auth.NewDelegated("confidential", id, store, auth.WithHTTPClient(f.idp.HTTPClient()), auth.WithLogger(f.logger))
	if err != nil {
		t.Fatal(err)
	}
	err = conf.Login(ctx, []string{auth.ScopeIMAPDelegated}, func(m auth.DeviceCodeMessage) {
		_ = f.idp.ApproveDeviceCode(m.UserCode, serviceUser)
	})
	if e := delegatedErr(t, err); e.Code != "AADSTS7000218" || !strings.Contains(e.Hint, "Allow public client flows") {
		t.Errorf("no public client flows: %+v", e)
	}
}

func TestNewDelegatedConfigErrors(t *testing.T) {
	good := config.Identity{Kind: "delegated", TenantID: tenantID, ClientID: publicClientID, Username: serviceUser}
	store := &memStore{}
	for _, tc := range []struct {
		edit func(*config.Identity)
		want string
	}{
		{func(id *config.Identity) { id.Username = "" }, "identities.svc.username"},
		{func(id *config.Identity) { id.TenantID = "" }, "identities.svc.tenant_id"},
		{func(id *config.Identity) { id.AuthorityHost = "http://login.example" }, "identities.svc.authority_host"},
	} {
		id := good
		tc.edit(&id)
		if _, err := auth.NewDelegated("svc", id, store); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("err = %v, want mention of %s", err, tc.want)
		}
	}
	if _, err := auth.NewDelegated("svc", good, nil); err == nil {
		t.Error("NewDelegated without a store: no error")
	}
	d, err := auth.NewDelegated("svc", good, store)
	if err != nil || d.Authority() != "https://login.microsoftonline.com/"+tenantID || !strings.Contains(d.SignInCommand(), "svc") {
		t.Errorf("NewDelegated: %v", err)
	}
	for _, k := range []string{"", "bm90IGJhc2U2NA", base64.StdEncoding.EncodeToString(make([]byte, 16)), "!!!"} {
		if _, err := auth.DecodeTokenCacheKey(k); err == nil {
			t.Errorf("DecodeTokenCacheKey(%q): no error", k)
		}
	}
	if k, err := auth.DecodeTokenCacheKey(base64.StdEncoding.EncodeToString(make([]byte, 32))); err != nil || len(k) != 32 {
		t.Errorf("DecodeTokenCacheKey: %v", err)
	}
}

// memStore is an in-memory CacheStore.
type memStore struct {
	mu   sync.Mutex
	data []byte
	rev  uint64
}

func (m *memStore) Load(context.Context) ([]byte, uint64, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]byte(nil), m.data...), m.rev, nil
}

func (m *memStore) Save(_ context.Context, data []byte, rev uint64) (uint64, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if rev != m.rev {
		return 0, auth.ErrCacheConflict
	}
	m.data, m.rev = append([]byte(nil), data...), m.rev+1
	return m.rev, nil
}

func TestAuthAppStatusExpiry(t *testing.T) {
	day := 24 * time.Hour
	date := func(d time.Duration) string { return time.Now().Add(d).UTC().Format(time.DateOnly) }
	for _, tc := range []struct {
		name    string
		id      config.Identity
		warning string
		note    string
	}{
		{"secret expiring", config.Identity{ClientSecret: "x", SecretExpires: date(10 * day), ExpiryWarning: 30 * day}, "expires on", ""},
		{"secret expired", config.Identity{ClientSecret: "x", SecretExpires: date(-2 * day)}, "expired on", ""},
		{"secret fine", config.Identity{ClientSecret: "x", SecretExpires: date(200 * day), ExpiryWarning: 30 * day}, "", ""},
		{"secret outside a short window", config.Identity{ClientSecret: "x", SecretExpires: date(10 * day), ExpiryWarning: 7 * day}, "", ""},
		{"secret without date", config.Identity{ClientSecret: "x"}, "", "secret_expires"},
		{"bad date", config.Identity{ClientSecret: "x", SecretExpires: "soon"}, "not a date", ""},
	} {
		st := auth.AppStatus(tc.id)
		switch {
		case tc.warning == "" && len(st.Warnings) != 0:
			t.Errorf("%s: warnings %q", tc.name, st.Warnings)
		case tc.warning != "" && (len(st.Warnings) != 1 || !strings.Contains(st.Warnings[0], tc.warning)):
			t.Errorf("%s: warnings %q, want %q", tc.name, st.Warnings, tc.warning)
		case tc.note != "" && (len(st.Notes) != 1 || !strings.Contains(st.Notes[0], tc.note)):
			t.Errorf("%s: notes %q", tc.name, st.Notes)
		}
		if st.Kind != "secret" {
			t.Errorf("%s: kind %q", tc.name, st.Kind)
		}
	}
	if st := auth.AppStatus(config.Identity{ClientSecret: "x", SecretExpires: date(40 * day)}); len(st.Warnings) != 0 {
		t.Errorf("default window is 30 days: %q", st.Warnings)
	}
	clk := &clock{}
	clk.advance(35 * day)
	if st := auth.AppStatus(config.Identity{ClientSecret: "x", SecretExpires: date(40 * day)}, auth.WithClock(clk.now)); len(st.Warnings) != 1 {
		t.Errorf("with a clock 35 days ahead: %q", st.Warnings)
	}

	// Certificate: NotAfter.
	key := rsaKey(t, 0)
	cert := selfSigned(t, key, &key.PublicKey, time.Now().Add(5*day))
	p := filepath.Join(t.TempDir(), "app.pem")
	writePEM(t, p, &pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw}, &pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(key)})
	st := auth.AppStatus(config.Identity{CertificateFile: p, ExpiryWarning: 30 * day})
	if st.Kind != "certificate" || !st.Expires.Equal(cert.NotAfter) || len(st.Warnings) != 1 || !strings.Contains(st.Warnings[0], "certificate") {
		t.Errorf("certificate: %+v", st)
	}
	st = auth.AppStatus(config.Identity{CertificateFile: filepath.Join(t.TempDir(), "missing.pem")})
	if len(st.Warnings) != 1 || !strings.Contains(st.Warnings[0], "cannot read") {
		t.Errorf("missing certificate: %+v", st)
	}
}

func TestDelegatedWrongAccountKeepsSignIn(t *testing.T) {
	f := newDelegatedFixture(t, devidp.Options{})
	if err := f.idp.AddUser("someone.else@contoso.example", devidp.UserOptions{}); err != nil {
		t.Fatal(err)
	}
	clk := &clock{}
	d := f.delegated(f.kv, f.encKey, auth.WithClock(clk.now))
	if err := f.login(d, serviceUser); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	before, err := d.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	clk.advance(time.Hour)
	if err := f.login(d, "someone.else@contoso.example"); err == nil {
		t.Fatal("sign-in as another account accepted")
	}
	after, err := d.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !after.SignedIn || after.SignedInAs != serviceUser || !after.SignedInAt.Equal(before.SignedInAt) || len(after.Warnings) != 0 {
		t.Errorf("status after a wrong-account sign-in: before %+v after %+v", before, after)
	}
	if _, err := d.Source(auth.ScopeIMAPDelegated).Token(ctx); err != nil {
		t.Errorf("the earlier sign-in no longer works: %v", err)
	}
}
