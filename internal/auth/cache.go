package auth

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/AzureAD/microsoft-authentication-library-for-go/apps/cache"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"
)

// CacheStore keeps the serialized token cache of one delegated identity
// where every replica reads and writes it. Revisions make writes
// compare-and-set: a write based on an outdated read fails with
// ErrCacheConflict instead of overwriting what another replica wrote.
type CacheStore interface {
	// Load returns the stored cache and its revision; (nil, 0, nil) when
	// there is none. An entry that cannot be decrypted gives an error
	// wrapping ErrCacheUndecryptable, with its revision (so that a new
	// sign-in can replace it).
	Load(ctx context.Context) (data []byte, revision uint64, err error)
	// Save stores data if the stored revision is still revision (0: only
	// if nothing is stored) and returns the new revision; otherwise it
	// fails with an error wrapping ErrCacheConflict.
	Save(ctx context.Context, data []byte, revision uint64) (uint64, error)
}

// ErrCacheConflict is returned by CacheStore.Save when another writer got
// there first.
var ErrCacheConflict = errors.New("the token cache was changed by another writer")

// ErrCacheUndecryptable is wrapped by the errors of a CacheStore whose
// entry cannot be decrypted (wrong token_cache_key, or tampered with).
var ErrCacheUndecryptable = errors.New("the token cache cannot be decrypted")

// TokenCacheKeySize is the size of a token cache key (AES-256).
const TokenCacheKeySize = 32

// DecodeTokenCacheKey decodes an identity's token_cache_key: base64 of 32
// random bytes (e.g. `openssl rand -base64 32`). The error never contains
// the key.
func DecodeTokenCacheKey(s string) ([]byte, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return nil, errors.New("token_cache_key is empty: set it to base64 of 32 random bytes, e.g. from `openssl rand -base64 32`")
	}
	for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.RawStdEncoding, base64.URLEncoding, base64.RawURLEncoding} {
		if b, err := enc.DecodeString(s); err == nil {
			if len(b) != TokenCacheKeySize {
				return nil, fmt.Errorf("token_cache_key decodes to %d bytes, want %d (base64 of 32 random bytes, e.g. from `openssl rand -base64 32`)", len(b), TokenCacheKeySize)
			}
			return b, nil
		}
	}
	return nil, errors.New("token_cache_key is not base64 (want base64 of 32 random bytes, e.g. from `openssl rand -base64 32`)")
}

// OpenTokenBucket creates or updates the JetStream key-value bucket that
// holds the encrypted token caches of delegated identities (one entry per
// identity, no history, file storage).
func OpenTokenBucket(ctx context.Context, js jetstream.JetStream, bucket string, replicas int) (jetstream.KeyValue, error) {
	kv, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket:      bucket,
		Description: "mailpipe delegated token caches (AES-256-GCM encrypted)",
		History:     1,
		Storage:     jetstream.FileStorage,
		Replicas:    max(replicas, 1),
	})
	if err != nil {
		return nil, fmt.Errorf("auth: token bucket %q (bus.token_bucket): %w", bucket, err)
	}
	return kv, nil
}

// KVCacheStore is a CacheStore in a JetStream key-value bucket, encrypted
// with AES-256-GCM: every write has a random 96-bit nonce, and the
// identity's name is the authenticated data, so an entry copied to another
// identity's key does not decrypt.
type KVCacheStore struct {
	kv   jetstream.KeyValue
	key  string // the KV key
	name string // identity name: authenticated data
	aead cipher.AEAD
}

var kvKeyRe = regexp.MustCompile(`^[A-Za-z0-9_-]+$`)

// cacheMagic starts every stored value (format version 1).
var cacheMagic = []byte("mptc\x01")

// NewKVCacheStore returns the store of the identity called name (its key
// under identities in the configuration) in kv, encrypted with encKey (32
// bytes, see DecodeTokenCacheKey). The entry's key is "delegated.<name>"
// (names with other characters than letters, digits, '-' and '_' are
// hashed). NewKVCacheStore does no I/O.
func NewKVCacheStore(kv jetstream.KeyValue, name string, encKey []byte) (*KVCacheStore, error) {
	if kv == nil {
		return nil, errors.New("auth: token cache store: no key-value bucket")
	}
	if len(encKey) != TokenCacheKeySize {
		return nil, fmt.Errorf("auth: token cache key of identity %q has %d bytes, want %d", name, len(encKey), TokenCacheKeySize)
	}
	block, err := aes.NewCipher(encKey)
	if err != nil {
		return nil, fmt.Errorf("auth: token cache key: %w", err)
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, fmt.Errorf("auth: token cache key: %w", err)
	}
	return &KVCacheStore{kv: kv, key: CacheKey(name), name: name, aead: aead}, nil
}

// CacheKey is the key of an identity's entry in the token bucket.
func CacheKey(name string) string {
	if kvKeyRe.MatchString(name) {
		return "delegated." + name
	}
	sum := sha256.Sum256([]byte(name))
	return "delegated.h" + hex.EncodeToString(sum[:16])
}

// Key is the entry's key in the bucket.
func (s *KVCacheStore) Key() string { return s.key }

// Load reads and decrypts the entry.
func (s *KVCacheStore) Load(ctx context.Context) ([]byte, uint64, error) {
	e, err := s.kv.Get(ctx, s.key)
	switch {
	case errors.Is(err, jetstream.ErrKeyNotFound), errors.Is(err, jetstream.ErrKeyDeleted):
		return nil, 0, nil
	case err != nil:
		return nil, 0, fmt.Errorf("read %s from token bucket %s: %w", s.key, s.kv.Bucket(), err)
	}
	data, err := s.open(e.Value())
	if err != nil {
		return nil, e.Revision(), err
	}
	return data, e.Revision(), nil
}

// Save encrypts data and writes it if the entry's revision is still
// revision (0: if there is no entry).
func (s *KVCacheStore) Save(ctx context.Context, data []byte, revision uint64) (uint64, error) {
	val, err := s.seal(data)
	if err != nil {
		return 0, err
	}
	var rev uint64
	if revision == 0 {
		rev, err = s.kv.Create(ctx, s.key, val)
	} else {
		rev, err = s.kv.Update(ctx, s.key, val, revision)
	}
	switch {
	case err == nil:
		return rev, nil
	case isCASConflict(err):
		return 0, fmt.Errorf("write %s to token bucket %s: %w", s.key, s.kv.Bucket(), ErrCacheConflict)
	}
	return 0, fmt.Errorf("write %s to token bucket %s: %w", s.key, s.kv.Bucket(), err)
}

func isCASConflict(err error) bool {
	if errors.Is(err, jetstream.ErrKeyExists) || errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
		return true
	}
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) &&
		(apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence || apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant)
}

func (s *KVCacheStore) seal(plain []byte) ([]byte, error) {
	nonce := make([]byte, s.aead.NonceSize())
	if _, err := rand.Read(nonce); err != nil {
		return nil, fmt.Errorf("token cache: %w", err)
	}
	out := make([]byte, 0, len(cacheMagic)+len(nonce)+len(plain)+s.aead.Overhead())
	out = append(out, cacheMagic...)
	out = append(out, nonce...)
	return s.aead.Seal(out, nonce, plain, []byte(s.name)), nil
}

func (s *KVCacheStore) open(val []byte) ([]byte, error) {
	ns := s.aead.NonceSize()
	if len(val) < len(cacheMagic)+ns+s.aead.Overhead() || string(val[:len(cacheMagic)]) != string(cacheMagic) {
		return nil, fmt.Errorf("entry %s in token bucket %s is not a mailpipe token cache: %w", s.key, s.kv.Bucket(), ErrCacheUndecryptable)
	}
	nonce := val[len(cacheMagic) : len(cacheMagic)+ns]
	plain, err := s.aead.Open(nil, nonce, val[len(cacheMagic)+ns:], []byte(s.name))
	if err != nil {
		return nil, fmt.Errorf("entry %s in token bucket %s: %w: token_cache_key is not the key it was written with (or the entry was altered)", s.key, s.kv.Bucket(), ErrCacheUndecryptable)
	}
	return plain, nil
}

// cacheEnvelope is what a CacheStore holds: MSAL's serialized cache
// (opaque to MSAL's users, but the unified schema shared by all MSAL
// libraries) and mailpipe's metadata about the sign-in.
type cacheEnvelope struct {
	Version int             `json:"v"`
	Meta    cacheMeta       `json:"meta"`
	MSAL    json.RawMessage `json:"msal,omitempty"`
}

// cacheMeta is stored alongside the MSAL cache, for Status.
type cacheMeta struct {
	// Username is the account signed in with Login.
	Username string `json:"username,omitempty"`
	// SignedInAt is the time of the last Login.
	SignedInAt time.Time `json:"signed_in_at,omitzero"`
	// RefreshedAt is when a token response last brought a new refresh
	// token (each one renews the sign-in's 90-day inactivity window).
	RefreshedAt time.Time `json:"refreshed_at,omitzero"`
	// LastFailure is the last permanent token failure, cleared by the
	// next new refresh token.
	LastFailure *cacheFailure `json:"last_failure,omitempty"`
}

type cacheFailure struct {
	At          time.Time `json:"at"`
	Code        string    `json:"code,omitempty"`
	OAuthError  string    `json:"oauth_error,omitempty"`
	Description string    `json:"description,omitempty"`
	SignIn      bool      `json:"sign_in,omitempty"` // sign in again to fix it
}

func decodeEnvelope(data []byte) (cacheEnvelope, error) {
	var env cacheEnvelope
	if len(data) == 0 {
		return env, nil
	}
	if err := json.Unmarshal(data, &env); err != nil {
		return env, fmt.Errorf("%w: the decrypted entry is not a token cache: %v", ErrCacheUndecryptable, err)
	}
	return env, nil
}

func encodeEnvelope(meta cacheMeta, msal []byte) ([]byte, error) {
	return json.Marshal(cacheEnvelope{Version: 1, Meta: meta, MSAL: msal})
}

// cacheError is an error of the shared token cache (not of Entra ID).
type cacheError struct {
	op  string
	err error
}

func (e *cacheError) Error() string { return "token cache: " + e.op + ": " + e.err.Error() }
func (e *cacheError) Unwrap() error { return e.err }

// maxSaveAttempts bounds the merge-and-retry loop of Export and
// recordFailure.
const maxSaveAttempts = 8

// cacheAdapter is the cache.ExportReplace MSAL uses for a Delegated: every
// MSAL operation first loads the shared cache (Replace), and after every
// token response MSAL writes it back (Export) with compare-and-set. When
// another replica wrote in between, Export merges: entries this replica
// changed (the tokens it just received) win, everything else is taken
// from the newer stored cache, so a refresh by one replica never drops or
// rolls back what another stored. Delegated serializes its MSAL calls, so
// the last Replace is the base of the next Export.
type cacheAdapter struct {
	name  string
	store CacheStore
	log   *zap.Logger
	now   func() time.Time

	mu   sync.Mutex
	rev  uint64
	base []byte // MSAL JSON handed to MSAL by the last Replace
	meta cacheMeta
	// rtPrint identifies the refresh tokens in base.
	rtPrint string
	// rejected are hashes of invalidated access tokens, by their expiry.
	rejected map[string]time.Time
	// loginAs is set while Login waits for the sign-in of this user.
	loginAs string
	// resetUndecryptable lets Login replace an entry it cannot decrypt.
	resetUndecryptable bool
}

var _ cache.ExportReplace = (*cacheAdapter)(nil)

// Replace loads the shared cache into MSAL, minus the access tokens that
// are due for renewal or were invalidated, so that MSAL redeems the
// refresh token for them instead of handing them out again.
func (a *cacheAdapter) Replace(ctx context.Context, u cache.Unmarshaler, _ cache.ReplaceHints) error {
	data, rev, err := a.store.Load(ctx)
	if err != nil {
		a.mu.Lock()
		reset := a.resetUndecryptable
		a.mu.Unlock()
		if !reset || !errors.Is(err, ErrCacheUndecryptable) {
			return &cacheError{op: "load", err: err}
		}
		a.log.Warn("the stored token cache cannot be decrypted with token_cache_key; this sign-in replaces it")
		data = nil
	}
	env, err := decodeEnvelope(data)
	if err != nil {
		return &cacheError{op: "load", err: err}
	}
	msal := []byte(env.MSAL)
	if len(msal) == 0 {
		msal = []byte("{}")
	}
	a.mu.Lock()
	msal = a.strip(msal)
	a.mu.Unlock()
	if err := u.Unmarshal(msal); err != nil {
		return &cacheError{op: "load", err: fmt.Errorf("MSAL cannot read the stored cache: %w", err)}
	}
	a.mu.Lock()
	a.rev, a.base, a.meta, a.rtPrint = rev, msal, env.Meta, sectionPrint(msal, "RefreshToken")
	a.mu.Unlock()
	return nil
}

// Export stores MSAL's cache with compare-and-set on the revision Replace
// read, merging with a newer stored cache on conflict.
func (a *cacheAdapter) Export(ctx context.Context, m cache.Marshaler, _ cache.ExportHints) error {
	ours, err := m.Marshal()
	if err != nil {
		return &cacheError{op: "save", err: err}
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	base, rev := a.base, a.rev
	update := a.metaUpdate(base, ours)
	meta := update(a.meta)
	for attempt := 1; ; attempt++ {
		plain, err := encodeEnvelope(meta, ours)
		if err != nil {
			return &cacheError{op: "save", err: err}
		}
		newRev, err := a.store.Save(ctx, plain, rev)
		if err == nil {
			a.rev, a.base, a.meta, a.rtPrint = newRev, ours, meta, sectionPrint(ours, "RefreshToken")
			return nil
		}
		if !errors.Is(err, ErrCacheConflict) || attempt == maxSaveAttempts {
			return &cacheError{op: "save", err: err}
		}
		// Another replica wrote since our Replace: merge our changes into
		// its cache and try again on top of it.
		theirData, theirRev, err := a.store.Load(ctx)
		if err != nil {
			return &cacheError{op: "save", err: err}
		}
		theirs, err := decodeEnvelope(theirData)
		if err != nil {
			return &cacheError{op: "save", err: err}
		}
		merged, err := mergeCaches(base, ours, theirs.MSAL)
		if err != nil {
			return &cacheError{op: "save", err: err}
		}
		a.log.Info("token cache was changed by another replica meanwhile; merged this replica's new tokens into it",
			zap.Int("attempt", attempt))
		base, rev, ours, meta = theirs.MSAL, theirRev, merged, update(theirs.Meta)
	}
}

// metaUpdate returns how an Export of ours (based on base) changes the
// metadata: a changed refresh token renews the sign-in and clears the last
// failure; the Export of a Login records the sign-in. a.mu must be held.
func (a *cacheAdapter) metaUpdate(base, ours []byte) func(cacheMeta) cacheMeta {
	now := a.now()
	rtChanged := sectionPrint(base, "RefreshToken") != sectionPrint(ours, "RefreshToken")
	login := ""
	if a.loginAs != "" {
		// A sign-in of the configured account brings it a new refresh
		// token (another account signing in does not).
		if acc, ok := findAccount(ours, a.loginAs); ok && refreshTokenOf(ours, acc.HomeAccountID) != refreshTokenOf(base, acc.HomeAccountID) {
			login = a.loginAs
		}
		a.loginAs = ""
	}
	return func(m cacheMeta) cacheMeta {
		if rtChanged {
			if now.After(m.RefreshedAt) {
				m.RefreshedAt = now
			}
			m.LastFailure = nil
		}
		if login != "" {
			m.Username, m.SignedInAt, m.RefreshedAt, m.LastFailure = login, now, now, nil
		}
		return m
	}
}

// failureRewrite is how long the same failure is not recorded again.
const failureRewrite = 10 * time.Minute

// recordFailure stores a permanent token failure in the metadata, so that
// Status on any replica shows it.
func (a *cacheAdapter) recordFailure(ctx context.Context, f cacheFailure) error {
	for attempt := 1; ; attempt++ {
		data, rev, err := a.store.Load(ctx)
		if err != nil {
			return err
		}
		if rev == 0 {
			return nil
		}
		env, err := decodeEnvelope(data)
		if err != nil {
			return err
		}
		if last := env.Meta.LastFailure; last != nil && last.Code == f.Code && f.At.Sub(last.At) < failureRewrite {
			return nil // recorded already: replicas retrying do not rewrite it every time
		}
		env.Meta.LastFailure = &f
		plain, err := encodeEnvelope(env.Meta, env.MSAL)
		if err != nil {
			return err
		}
		if _, err = a.store.Save(ctx, plain, rev); err == nil || !errors.Is(err, ErrCacheConflict) || attempt == maxSaveAttempts {
			return err
		}
	}
}

// lastRTPrint identifies the refresh tokens MSAL got from the last Replace.
func (a *cacheAdapter) lastRTPrint() string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.rtPrint
}

// storedRTChanged reports whether the stored cache holds other refresh
// tokens than those identified by print, waiting up to wait for that to
// happen (another replica that just redeemed the same refresh token and is
// about to store the new one).
func (a *cacheAdapter) storedRTChanged(ctx context.Context, print string, wait time.Duration) bool {
	deadline := time.Now().Add(wait)
	delay := 25 * time.Millisecond
	for {
		if data, rev, err := a.store.Load(ctx); err == nil && rev != 0 {
			if env, err := decodeEnvelope(data); err == nil && sectionPrint(env.MSAL, "RefreshToken") != print {
				return true
			}
		}
		if !time.Now().Add(delay).Before(deadline) {
			return false
		}
		select {
		case <-ctx.Done():
			return false
		case <-time.After(delay):
		}
		delay = min(2*delay, 400*time.Millisecond)
	}
}

// reject makes Replace drop the access token tok from now on.
func (a *cacheAdapter) reject(tok Token) {
	sum := sha256.Sum256([]byte(tok.Value))
	a.mu.Lock()
	if a.rejected == nil {
		a.rejected = map[string]time.Time{}
	}
	a.rejected[hex.EncodeToString(sum[:])] = tok.ExpiresOn
	a.mu.Unlock()
}

func (a *cacheAdapter) setLogin(username string) {
	a.mu.Lock()
	a.loginAs, a.resetUndecryptable = username, true
	a.mu.Unlock()
}

func (a *cacheAdapter) clearLogin() {
	a.mu.Lock()
	a.loginAs, a.resetUndecryptable = "", false
	a.mu.Unlock()
}

// msalAccessToken is the part of an MSAL access token entry that Replace
// and Status read.
type msalAccessToken struct {
	HomeAccountID string          `json:"home_account_id"`
	Secret        string          `json:"secret"`
	Target        string          `json:"target"`
	CachedAt      json.RawMessage `json:"cached_at"`
	ExpiresOn     json.RawMessage `json:"expires_on"`
}

type msalAccount struct {
	HomeAccountID string `json:"home_account_id"`
	Username      string `json:"username"`
	Name          string `json:"name"`
}

// unixField reads MSAL's time fields: unix seconds as a JSON string.
func unixField(raw json.RawMessage) time.Time {
	n, err := strconv.ParseInt(strings.Trim(string(raw), `"`), 10, 64)
	if err != nil || n <= 0 {
		return time.Time{}
	}
	return time.Unix(n, 0)
}

// strip drops the access tokens that are due for renewal (by the rule of
// the sources: within max(5 minutes, 10% of the lifetime) of expiry) or
// were rejected. a.mu must be held.
func (a *cacheAdapter) strip(msal []byte) []byte {
	var top map[string]json.RawMessage
	if json.Unmarshal(msal, &top) != nil {
		return msal
	}
	var ats map[string]json.RawMessage
	if json.Unmarshal(top["AccessToken"], &ats) != nil || len(ats) == 0 {
		return msal
	}
	now := a.now()
	for h, exp := range a.rejected {
		if now.After(exp) {
			delete(a.rejected, h)
		}
	}
	dropped := false
	for k, raw := range ats {
		var at msalAccessToken
		if json.Unmarshal(raw, &at) != nil {
			continue
		}
		sum := sha256.Sum256([]byte(at.Secret))
		_, rejected := a.rejected[hex.EncodeToString(sum[:])]
		cached, expires := unixField(at.CachedAt), unixField(at.ExpiresOn)
		if rejected || expires.IsZero() || renewDue(now, cached, expires) {
			delete(ats, k)
			dropped = true
		}
	}
	if !dropped {
		return msal
	}
	b, err := json.Marshal(ats)
	if err != nil {
		return msal
	}
	top["AccessToken"] = b
	out, err := json.Marshal(top)
	if err != nil {
		return msal
	}
	return out
}

// sectionPrint identifies the content of one section of an MSAL cache
// (e.g. its refresh tokens), independent of JSON formatting.
func sectionPrint(msal []byte, section string) string {
	var top map[string]json.RawMessage
	if len(msal) == 0 || json.Unmarshal(msal, &top) != nil {
		return ""
	}
	var v any
	if json.Unmarshal(top[section], &v) != nil {
		return ""
	}
	b, _ := json.Marshal(v) // maps marshal with sorted keys
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

// mergeCaches merges MSAL caches three ways: every entry that ours changed
// relative to base (added, replaced or removed) is taken from ours, every
// other entry from theirs, the newer stored cache. When both changed an
// access token, the one that lives longer wins.
func mergeCaches(base, ours, theirs []byte) ([]byte, error) {
	var b, o, t map[string]json.RawMessage
	for _, p := range []struct {
		data []byte
		m    *map[string]json.RawMessage
	}{{base, &b}, {ours, &o}, {theirs, &t}} {
		if len(p.data) == 0 {
			*p.m = map[string]json.RawMessage{}
			continue
		}
		if err := json.Unmarshal(p.data, p.m); err != nil {
			return nil, fmt.Errorf("merge: %w", err)
		}
	}
	out := map[string]json.RawMessage{}
	for _, k := range unionKeys(b, o, t) {
		bs, bok := entries(b[k])
		os, ook := entries(o[k])
		ts, tok := entries(t[k])
		if !(bok && ook && tok) {
			// Not a section of entries: whole value.
			if v, ok := pick(b[k], o[k], t[k]); ok {
				out[k] = v
			}
			continue
		}
		sec := map[string]json.RawMessage{}
		for _, e := range unionKeys(bs, os, ts) {
			bv, ov, tv := bs[e], os[e], ts[e]
			if !sameJSON(ov, bv) && ov != nil && tv != nil && !sameJSON(tv, bv) && k == "AccessToken" {
				// Both replicas got a new access token: keep the longer-lived.
				if expiresOf(tv).After(expiresOf(ov)) {
					sec[e] = tv
				} else {
					sec[e] = ov
				}
				continue
			}
			if v, ok := pick(bv, ov, tv); ok {
				sec[e] = v
			}
		}
		if len(sec) > 0 {
			raw, err := json.Marshal(sec)
			if err != nil {
				return nil, err
			}
			out[k] = raw
		}
	}
	return json.Marshal(out)
}

// pick is the three-way choice for one value (nil: absent): ours when it
// differs from base, else theirs.
func pick(base, ours, theirs json.RawMessage) (json.RawMessage, bool) {
	if !sameJSON(ours, base) {
		return ours, ours != nil
	}
	return theirs, theirs != nil
}

// entries reads a section (an object of objects); absent counts as an
// empty section.
func entries(raw json.RawMessage) (map[string]json.RawMessage, bool) {
	m := map[string]json.RawMessage{}
	if raw == nil {
		return m, true
	}
	if json.Unmarshal(raw, &m) != nil {
		return nil, false
	}
	for _, v := range m {
		if t := strings.TrimSpace(string(v)); !strings.HasPrefix(t, "{") {
			return nil, false
		}
	}
	return m, true
}

func sameJSON(a, b json.RawMessage) bool {
	if a == nil || b == nil {
		return a == nil && b == nil
	}
	var x, y any
	if json.Unmarshal(a, &x) != nil || json.Unmarshal(b, &y) != nil {
		return string(a) == string(b)
	}
	return reflect.DeepEqual(x, y)
}

func expiresOf(raw json.RawMessage) time.Time {
	var at msalAccessToken
	if json.Unmarshal(raw, &at) != nil {
		return time.Time{}
	}
	return unixField(at.ExpiresOn)
}

func unionKeys(ms ...map[string]json.RawMessage) []string {
	seen := map[string]bool{}
	var keys []string
	for _, m := range ms {
		for k := range m {
			if !seen[k] {
				seen[k] = true
				keys = append(keys, k)
			}
		}
	}
	sort.Strings(keys)
	return keys
}

// findAccount finds the account of username in an MSAL cache.
func findAccount(msal []byte, username string) (msalAccount, bool) {
	var top struct {
		Account map[string]msalAccount `json:"Account"`
	}
	if len(msal) == 0 || json.Unmarshal(msal, &top) != nil {
		return msalAccount{}, false
	}
	keys := make([]string, 0, len(top.Account))
	for k := range top.Account {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		if acc := top.Account[k]; strings.EqualFold(acc.Username, username) {
			return acc, true
		}
	}
	return msalAccount{}, false
}

// accountNames lists the usernames of the accounts in an MSAL cache.
func accountNames(msal []byte) []string {
	var top struct {
		Account map[string]msalAccount `json:"Account"`
	}
	if len(msal) == 0 || json.Unmarshal(msal, &top) != nil {
		return nil
	}
	var names []string
	for _, acc := range top.Account {
		names = append(names, acc.Username)
	}
	sort.Strings(names)
	return names
}

// refreshTokenOf is the refresh token of an account in an MSAL cache.
func refreshTokenOf(msal []byte, homeAccountID string) string {
	var top struct {
		RefreshToken map[string]struct {
			HomeAccountID string `json:"home_account_id"`
			Secret        string `json:"secret"`
		} `json:"RefreshToken"`
	}
	if len(msal) == 0 || json.Unmarshal(msal, &top) != nil {
		return ""
	}
	for _, rt := range top.RefreshToken {
		if rt.HomeAccountID == homeAccountID {
			return rt.Secret
		}
	}
	return ""
}

// hasRefreshToken reports whether the MSAL cache holds a refresh token of
// the account.
func hasRefreshToken(msal []byte, homeAccountID string) bool {
	return refreshTokenOf(msal, homeAccountID) != ""
}

// accessTokens lists the access tokens of an account in an MSAL cache.
func accessTokens(msal []byte, homeAccountID string) []msalAccessToken {
	var top struct {
		AccessToken map[string]msalAccessToken `json:"AccessToken"`
	}
	if len(msal) == 0 || json.Unmarshal(msal, &top) != nil {
		return nil
	}
	var out []msalAccessToken
	for _, at := range top.AccessToken {
		if at.HomeAccountID == homeAccountID {
			at.Secret = ""
			out = append(out, at)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Target < out[j].Target })
	return out
}
