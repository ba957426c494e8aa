package app

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/mailpipe/mailpipe/internal/auth"
	"github.com/mailpipe/mailpipe/internal/bus"
	"github.com/mailpipe/mailpipe/internal/config"
)

// ErrAuthAttention is returned by AuthStatus when an identity needs
// attention (not signed in, refresh token about to expire or rejected,
// secret or certificate expiring); the details were written to the output.
var ErrAuthAttention = errors.New("one or more identities need attention")

// fallbackTokenBucket is used when the configuration (built in code) names
// no token bucket.
const fallbackTokenBucket = "mailpipe-tokens"

// signInCommand is the command that signs the identity of mailbox in.
func signInCommand(mailbox string) string {
	return "importer auth login --config FILE --mailbox " + mailbox
}

// delegatedScopes are the scopes a delegated sign-in for mailbox m asks
// for: IMAP, or Graph (reading/moving and sending, so that one sign-in
// also serves sending from the mailbox) of the cloud of graph.base_url, as
// the importer asks for them (see sources.New).
func delegatedScopes(m config.Mailbox, id config.Identity) []string {
	if m.Source == "graph" {
		r := graphResource(m.Graph.BaseURL)
		return []string{r + "/Mail.ReadWrite.Shared", r + "/Mail.Send.Shared", auth.ScopeOfflineAccess}
	}
	return []string{imapDelegatedScope(id.AuthorityHost), auth.ScopeOfflineAccess}
}

func isDelegated(id config.Identity) bool { return id.Kind == "delegated" }

// tokenBucket opens the token bucket on conn.
func tokenBucket(ctx context.Context, cfg *config.Importer, conn *bus.Conn) (jetstream.KeyValue, error) {
	name := cfg.Bus.TokenBucket
	if name == "" {
		name = fallbackTokenBucket
	}
	return auth.OpenTokenBucket(ctx, conn.JetStream(), name, cfg.Bus.Stream.Replicas)
}

// delegatedIdentity opens the delegated identity called name, its token
// cache in kv (see tokenBucket). Hints name signInMailbox's login command.
// RunImporter can build the token sources of delegated mailboxes with it:
// Source(auth.ScopeIMAPDelegated) for IMAP, Source(auth.ScopeGraphMailReadWriteShared)
// for Graph.
func delegatedIdentity(cfg *config.Importer, name string, kv jetstream.KeyValue, signInMailbox string, d Deps) (*auth.Delegated, error) {
	id, ok := cfg.Identities[name]
	if !ok {
		return nil, fmt.Errorf("unknown identity %q", name)
	}
	key, err := auth.DecodeTokenCacheKey(id.TokenCacheKey.Value())
	if err != nil {
		return nil, fmt.Errorf("identities.%s.%w", name, err)
	}
	store, err := auth.NewKVCacheStore(kv, name, key)
	if err != nil {
		return nil, err
	}
	opts := []auth.Option{auth.WithLogger(d.logger()), auth.WithSignInCommand(signInCommand(signInMailbox))}
	opts = append(opts, d.AuthOptions...)
	return auth.NewDelegated(name, id, store, opts...)
}

// findMailbox finds a mailbox by name.
func findMailbox(cfg *config.Importer, name string) (config.Mailbox, error) {
	var names []string
	for _, m := range cfg.Mailboxes {
		if m.Name == name {
			return m, nil
		}
		names = append(names, m.Name)
	}
	if len(names) == 0 {
		return config.Mailbox{}, fmt.Errorf("no mailbox %q: the configuration has no mailboxes", name)
	}
	return config.Mailbox{}, fmt.Errorf("no mailbox %q (configured: %s)", name, strings.Join(names, ", "))
}

// AuthLogin signs in the delegated identity of mailbox with the device
// code flow: it writes the verification URL and the code to out and waits
// (until ctx ends or the code expires, 15 minutes) for someone to sign in
// as the identity's username in a browser on any device. The tokens go
// into the encrypted token cache in the token bucket (bus.token_bucket),
// where every replica picks them up without a restart. The sign-in asks
// for the scopes of the mailbox's source: IMAP.AccessAsUser.All for imap,
// Mail.ReadWrite.Shared and Mail.Send.Shared for graph (plus
// offline_access); sign in once per resource when an identity serves both.
func AuthLogin(ctx context.Context, cfg *config.Importer, mailbox string, out io.Writer, d Deps) error {
	m, err := findMailbox(cfg, mailbox)
	if err != nil {
		return err
	}
	if m.Identity == "" {
		return fmt.Errorf("mailbox %q has no identity (it logs in with a password): nothing to sign in", m.Name)
	}
	id, ok := cfg.Identities[m.Identity]
	if !ok {
		return fmt.Errorf("mailboxes[%s].identity: unknown identity %q", m.Name, m.Identity)
	}
	if !isDelegated(id) {
		return fmt.Errorf("mailbox %q uses identity %q of kind %q: app identities get tokens with their client secret or certificate, no sign-in is needed (kind delegated signs a service account in)",
			m.Name, m.Identity, kindOf(id))
	}
	conn, owned, err := connect(ctx, cfg, d)
	if err != nil {
		return err
	}
	if owned {
		defer conn.Close()
	}
	kv, err := tokenBucket(ctx, cfg, conn)
	if err != nil {
		return err
	}
	dl, err := delegatedIdentity(cfg, m.Identity, kv, m.Name, d)
	if err != nil {
		return err
	}
	scopes := delegatedScopes(m, id)
	fmt.Fprintf(out, "Signing in identity %q (tenant %s, client %s) as %s for mailbox %q (%s).\n",
		m.Identity, id.TenantID, id.ClientID, dl.Username(), m.Name, sourceOf(m))
	fmt.Fprintf(out, "Permissions asked for: %s\n", strings.Join(scopes, " "))
	err = dl.Login(ctx, scopes, func(msg auth.DeviceCodeMessage) {
		fmt.Fprintf(out, "\nTo sign in, open %s in a browser (on any device) and enter the code %s\n", msg.VerificationURL, msg.UserCode)
		fmt.Fprintf(out, "Sign in as %s. The code is valid until %s.\n", dl.Username(), msg.ExpiresOn.Local().Format("15:04:05 MST"))
		fmt.Fprintln(out, "Waiting for the sign-in ...")
	})
	if err != nil {
		return err
	}
	tctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	tok, err := dl.Source(scopes...).Token(tctx)
	if err != nil {
		return fmt.Errorf("signed in, but getting a token failed: %w", err)
	}
	fmt.Fprintf(out, "\nSigned in as %s. Access token valid until %s.\n", dl.Username(), formatTime(tok.ExpiresOn))
	fmt.Fprintf(out, "The encrypted token cache is in bucket %q, shared by all importer replicas: they use the new sign-in without a restart.\n",
		kvBucketName(cfg))
	return nil
}

// AuthStatus writes, per mailbox, its identity and kind; for delegated
// identities who is signed in since when, when the refresh token was last
// renewed and until when the cached access tokens are valid; for app
// identities when the client secret or certificate expires; and warnings
// with what to do. It reads the token caches (no request to Entra ID) and
// returns ErrAuthAttention when there are warnings.
func AuthStatus(ctx context.Context, cfg *config.Importer, out io.Writer, d Deps) error {
	attention := false
	warn := func(format string, a ...any) {
		attention = true
		fmt.Fprintf(out, "  warn  "+format+"\n", a...)
	}

	// Delegated identities: one status each, from the token bucket.
	delegated := map[string]*delegatedReport{}
	var conn *bus.Conn
	var kv jetstream.KeyValue
	var connErr error
	for _, m := range cfg.Mailboxes {
		id, ok := cfg.Identities[m.Identity]
		if m.Identity == "" || !ok || !isDelegated(id) || delegated[m.Identity] != nil {
			continue
		}
		r := &delegatedReport{}
		delegated[m.Identity] = r
		if conn == nil && connErr == nil {
			var owned bool
			conn, owned, connErr = connect(ctx, cfg, d)
			if connErr == nil {
				if owned {
					defer conn.Close()
				}
				kv, connErr = tokenBucket(ctx, cfg, conn)
			}
		}
		if connErr != nil {
			r.err = connErr
			continue
		}
		dl, err := delegatedIdentity(cfg, m.Identity, kv, m.Name, d)
		if err != nil {
			r.err = err
			continue
		}
		sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		r.st, r.err = dl.Status(sctx)
		cancel()
	}

	for _, m := range cfg.Mailboxes {
		fmt.Fprintf(out, "mailbox %q (%s, %s)\n", m.Name, sourceOf(m), m.Address)
		if m.Identity == "" {
			fmt.Fprintln(out, "  identity: none (IMAP password login)")
			continue
		}
		id, ok := cfg.Identities[m.Identity]
		if !ok {
			warn("unknown identity %q", m.Identity)
			continue
		}
		fmt.Fprintf(out, "  identity %q: kind %s, tenant %s, client %s\n", m.Identity, kindOf(id), id.TenantID, id.ClientID)
		if !isDelegated(id) {
			cs := auth.AppStatus(id, d.AuthOptions...)
			switch {
			case cs.Kind == "":
				fmt.Fprintln(out, "  credential: none configured")
			case cs.Expires.IsZero():
				fmt.Fprintf(out, "  credential: client %s, expiry unknown\n", cs.Kind)
			default:
				fmt.Fprintf(out, "  credential: client %s, expires %s\n", cs.Kind, cs.Expires.UTC().Format(time.DateOnly))
			}
			for _, n := range cs.Notes {
				fmt.Fprintf(out, "  note  %s\n", n)
			}
			for _, w := range cs.Warnings {
				warn("%s", w)
			}
			continue
		}
		r := delegated[m.Identity]
		if r.err != nil {
			warn("cannot read the sign-in: %v", r.err)
			continue
		}
		st := r.st
		fmt.Fprintf(out, "  service account: %s\n", st.Username)
		if st.SignedInAs != "" {
			if st.SignedInAt.IsZero() {
				fmt.Fprintf(out, "  signed in as %s\n", st.SignedInAs)
			} else {
				fmt.Fprintf(out, "  signed in as %s on %s\n", st.SignedInAs, formatTime(st.SignedInAt))
			}
		} else {
			fmt.Fprintln(out, "  not signed in")
		}
		if !st.RefreshedAt.IsZero() {
			fmt.Fprintf(out, "  refresh token renewed %s\n", formatTime(st.RefreshedAt))
		}
		scopes := delegatedScopes(m, cfg.Identities[m.Identity])
		shown := false
		for _, at := range st.AccessTokens {
			if !coversScope(at.Scopes, scopes[0]) {
				continue
			}
			shown = true
			verb := "valid until"
			if !at.ExpiresOn.After(time.Now()) {
				verb = "expired"
			}
			fmt.Fprintf(out, "  access token (%s) %s %s\n", at.Scopes, verb, formatTime(at.ExpiresOn))
		}
		if !shown && st.SignedIn {
			fmt.Fprintf(out, "  access token (%s): none cached (the next request gets one)\n", scopes[0])
		}
		for _, w := range st.Warnings {
			warn("%s", w)
		}
	}
	if attention {
		return ErrAuthAttention
	}
	return nil
}

type delegatedReport struct {
	st  auth.DelegatedStatus
	err error
}

// coversScope reports whether an access token's scope list includes scope.
func coversScope(target, scope string) bool {
	for _, s := range strings.Fields(target) {
		if strings.EqualFold(s, scope) {
			return true
		}
	}
	return false
}

func kindOf(id config.Identity) string {
	if id.Kind == "" {
		return "app"
	}
	return id.Kind
}

func sourceOf(m config.Mailbox) string {
	if m.Source == "" {
		return "imap"
	}
	return m.Source
}

func kvBucketName(cfg *config.Importer) string {
	if cfg.Bus.TokenBucket == "" {
		return fallbackTokenBucket
	}
	return cfg.Bus.TokenBucket
}

func formatTime(t time.Time) string { return t.UTC().Format("2006-01-02 15:04 UTC") }

// delegatedIdentityNames lists the delegated identities used by mailboxes,
// with the first mailbox using each (for sign-in hints).
func delegatedIdentityNames(cfg *config.Importer) map[string]string {
	out := map[string]string{}
	for _, m := range cfg.Mailboxes {
		if id, ok := cfg.Identities[m.Identity]; ok && isDelegated(id) {
			if _, seen := out[m.Identity]; !seen {
				out[m.Identity] = m.Name
			}
		}
	}
	return out
}

// openDelegatedIdentities opens every delegated identity used by a mailbox
// over conn's token bucket, for RunImporter.
func openDelegatedIdentities(ctx context.Context, cfg *config.Importer, conn *bus.Conn, d Deps) (map[string]*auth.Delegated, error) {
	names := delegatedIdentityNames(cfg)
	if len(names) == 0 {
		return map[string]*auth.Delegated{}, nil
	}
	kv, err := tokenBucket(ctx, cfg, conn)
	if err != nil {
		return nil, err
	}
	keys := make([]string, 0, len(names))
	for n := range names {
		keys = append(keys, n)
	}
	sort.Strings(keys)
	out := map[string]*auth.Delegated{}
	for _, n := range keys {
		dl, err := delegatedIdentity(cfg, n, kv, names[n], d)
		if err != nil {
			return nil, err
		}
		d.logger().Info("delegated identity ready", zap.String("identity", n), zap.String("username", dl.Username()))
		out[n] = dl
	}
	return out, nil
}
