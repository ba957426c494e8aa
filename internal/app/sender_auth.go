package app

import (
	"context"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/mailpipe/mailpipe/internal/auth"
	"github.com/mailpipe/mailpipe/internal/config"
)

// findSenderMailbox finds an allow-listed mailbox by address or name.
func findSenderMailbox(cfg *config.Sender, key string) (config.SenderMailbox, error) {
	var known []string
	for _, m := range cfg.Mailboxes {
		if strings.EqualFold(m.Address, key) || m.Name == key {
			return m, nil
		}
		known = append(known, m.Address)
	}
	return config.SenderMailbox{}, fmt.Errorf("no mailbox %q on the allow-list (configured: %s)", key, strings.Join(known, ", "))
}

// senderIdentityUses lists, per identity, the mailboxes and profiles that
// use it.
type identityUse struct {
	mailbox config.SenderMailbox
	profile string
}

func senderUses(cfg *config.Sender) map[string][]identityUse {
	uses := map[string][]identityUse{}
	for _, m := range cfg.Mailboxes {
		if m.Identity != "" {
			uses[m.Identity] = append(uses[m.Identity], identityUse{mailbox: m})
		}
		for _, p := range m.Profiles {
			if p.Identity != "" {
				uses[p.Identity] = append(uses[p.Identity], identityUse{mailbox: m, profile: p.Name})
			}
		}
	}
	return uses
}

// SenderAuthLogin signs in the delegated identity sending as mailbox (an
// address or a mailbox name; with profile, that sender profile's identity)
// with the device code flow, as AuthLogin does for the importer. It asks
// for the scopes of the mailbox's transport: Mail.ReadWrite.Shared and
// Mail.Send.Shared for graph (the importer's Graph scopes: one sign-in
// serves both), SMTP.Send for smtp; plus offline_access.
func SenderAuthLogin(ctx context.Context, cfg *config.Sender, mailbox, profile string, out io.Writer, d Deps) error {
	m, err := findSenderMailbox(cfg, mailbox)
	if err != nil {
		return err
	}
	name := m.Identity
	if profile != "" {
		p, ok := m.Profile(profile)
		if !ok {
			return fmt.Errorf("mailbox %s has no sender profile %q", m.Address, profile)
		}
		name = p.Identity
	}
	if name == "" {
		return fmt.Errorf("mailbox %s has no identity (smtp auth %s): nothing to sign in", m.Address, m.SMTP.Auth)
	}
	id, ok := cfg.Identities[name]
	if !ok {
		return fmt.Errorf("mailbox %s: unknown identity %q", m.Address, name)
	}
	if !isDelegated(id) {
		return fmt.Errorf("mailbox %s uses identity %q of kind %q: app identities get tokens with their client secret or certificate, no sign-in is needed (kind delegated signs a service account in)",
			m.Address, name, kindOf(id))
	}
	conn, owned, err := connectNATS(ctx, cfg.NATS, d)
	if err != nil {
		return err
	}
	if owned {
		defer conn.Close()
	}
	kv, err := auth.OpenTokenBucket(ctx, conn.JetStream(), cfg.Streams.TokenBucket, cfg.Streams.Jobs.Replicas)
	if err != nil {
		return err
	}
	dl, err := senderDelegated(cfg, name, kv, d)
	if err != nil {
		return err
	}
	_, scopes := sendScopes(m, id)
	scopes = append(scopes, auth.ScopeOfflineAccess)
	fmt.Fprintf(out, "Signing in identity %q (tenant %s, client %s) as %s to send as %s (%s).\n",
		name, id.TenantID, id.ClientID, dl.Username(), m.Address, m.Transport)
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
	fmt.Fprintf(out, "The encrypted token cache is in bucket %q, shared by all sender (and importer) replicas: they use the new sign-in without a restart.\n",
		cfg.Streams.TokenBucket)
	fmt.Fprintln(out, "The service account needs Send As (or Send on Behalf) on the mailbox: `sender check` tests it without sending.")
	return nil
}

// SenderAuthStatus writes, per identity used by the allow-listed mailboxes,
// its kind and the mailboxes and profiles using it; for delegated
// identities who is signed in since when and the cached access tokens; for
// app identities when the secret or certificate expires; and warnings. It
// reads the token caches (no request to Entra ID) and returns
// ErrAuthAttention when there are warnings.
func SenderAuthStatus(ctx context.Context, cfg *config.Sender, out io.Writer, d Deps) error {
	attention := false
	warn := func(format string, a ...any) {
		attention = true
		fmt.Fprintf(out, "  warn  "+format+"\n", a...)
	}
	uses := senderUses(cfg)
	var kv jetstream.KeyValue
	var connErr error
	for _, name := range senderIdentities(cfg) {
		id, ok := cfg.Identities[name]
		if !ok {
			continue
		}
		fmt.Fprintf(out, "identity %q: kind %s, tenant %s, client %s\n", name, kindOf(id), id.TenantID, id.ClientID)
		for _, u := range uses[name] {
			if u.profile != "" {
				fmt.Fprintf(out, "  sends as %s (profile %q, %s)\n", u.mailbox.Address, u.profile, u.mailbox.Transport)
			} else {
				fmt.Fprintf(out, "  sends as %s (%s)\n", u.mailbox.Address, u.mailbox.Transport)
			}
		}
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
		if kv == nil && connErr == nil {
			conn, owned, err := connectNATS(ctx, cfg.NATS, d)
			if err == nil {
				if owned {
					defer conn.Close()
				}
				kv, err = auth.OpenTokenBucket(ctx, conn.JetStream(), cfg.Streams.TokenBucket, cfg.Streams.Jobs.Replicas)
			}
			connErr = err
		}
		if connErr != nil {
			warn("cannot read the sign-in: %v", connErr)
			continue
		}
		dl, err := senderDelegated(cfg, name, kv, d)
		if err != nil {
			warn("cannot read the sign-in: %v", err)
			continue
		}
		sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		st, err := dl.Status(sctx)
		cancel()
		if err != nil {
			warn("cannot read the sign-in: %v", err)
			continue
		}
		fmt.Fprintf(out, "  service account: %s\n", st.Username)
		switch {
		case st.SignedInAs != "" && !st.SignedInAt.IsZero():
			fmt.Fprintf(out, "  signed in as %s on %s\n", st.SignedInAs, formatTime(st.SignedInAt))
		case st.SignedInAs != "":
			fmt.Fprintf(out, "  signed in as %s\n", st.SignedInAs)
		default:
			fmt.Fprintln(out, "  not signed in")
		}
		if !st.RefreshedAt.IsZero() {
			fmt.Fprintf(out, "  refresh token renewed %s\n", formatTime(st.RefreshedAt))
		}
		wanted := map[string]bool{}
		for _, u := range uses[name] {
			_, scopes := sendScopes(u.mailbox, id)
			wanted[scopes[0]] = true
		}
		for _, at := range st.AccessTokens {
			for scope := range wanted {
				if !coversScope(at.Scopes, scope) {
					continue
				}
				verb := "valid until"
				if !at.ExpiresOn.After(time.Now()) {
					verb = "expired"
				}
				fmt.Fprintf(out, "  access token (%s) %s %s\n", at.Scopes, verb, formatTime(at.ExpiresOn))
				break
			}
		}
		for _, w := range st.Warnings {
			warn("%s", w)
		}
	}
	if len(uses) == 0 {
		fmt.Fprintln(out, "no mailbox uses an identity (smtp auth password or none): nothing to sign in")
	}
	if attention {
		return ErrAuthAttention
	}
	return nil
}
