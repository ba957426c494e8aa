// Package stack starts, for tests and benchmarks, everything an importer
// talks to, as real components on loopback: a fake Entra ID token endpoint
// (devidp, used through real MSAL), a real Dovecot validating the XOAUTH2
// tokens, and a real NATS server with JetStream. Config returns an importer
// configuration pointing at them.
package stack

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/mailpipe/mailpipe/internal/config"
	"github.com/mailpipe/mailpipe/internal/devidp"
	"github.com/mailpipe/mailpipe/internal/testenv/dovecot"
)

// Fixed identities of the stack.
const (
	User       = "invoices@example.test"
	Password   = "imap-password"
	ClientID   = "0b6f2a1e-6c1d-4b8e-9a57-3f2e1d0c9b8a"
	Secret     = "test-client-secret~value"
	Tenant     = "contoso.onmicrosoft.com"
	Import     = "INBOX/Import"
	Processed  = "INBOX/Processed"
	ErrorBox   = "INBOX/Error"
	IdentityID = "contoso"
)

// Options tune the stack.
type Options struct {
	Dovecot dovecot.Options // OAuth2 and Users are filled in
	// Folders overrides the import/processed/error folder paths.
	Import, Processed, Error string
}

// Stack is a running set of servers.
type Stack struct {
	t       testing.TB
	IdP     *devidp.Server
	Dovecot *dovecot.Server
	NATS    *server.Server
	caFile  string
	opts    Options
}

// Start starts the servers; they stop at test cleanup. Any failure fails
// the test (Dovecot missing included: never a skip).
func Start(t testing.TB, opts Options) *Stack {
	t.Helper()
	if opts.Import == "" {
		opts.Import, opts.Processed, opts.Error = Import, Processed, ErrorBox
	}
	idp, err := devidp.Start(devidp.Options{Tenant: Tenant, Clients: []devidp.Client{{ID: ClientID, Secret: Secret, Email: User}}})
	if err != nil {
		t.Fatalf("start identity provider: %v", err)
	}
	t.Cleanup(idp.Close)
	caFile, err := idp.WriteCAFile(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	dopts := opts.Dovecot
	dopts.OAuth2 = &dovecot.OAuth2{Issuer: idp.Issuer(), HS256Key: idp.HS256Key()}
	dopts.Users = append(dopts.Users, dovecot.User{Name: User, Password: Password})
	dc := dovecot.Start(t, dopts)
	for _, f := range []string{opts.Import, opts.Processed, opts.Error} {
		dc.CreateFolder(User, f)
	}
	ns, err := server.NewServer(&server.Options{
		Host: "127.0.0.1", Port: -1, JetStream: true, StoreDir: t.TempDir(), NoLog: true, NoSigs: true,
		MaxPayload: 8 << 20,
	})
	if err != nil {
		t.Fatalf("start nats: %v", err)
	}
	ns.Start()
	if !ns.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats server not ready")
	}
	t.Cleanup(ns.Shutdown)
	return &Stack{t: t, IdP: idp, Dovecot: dc, NATS: ns, caFile: caFile, opts: opts}
}

// NATSURL is the client URL of the NATS server.
func (s *Stack) NATSURL() string { return s.NATS.ClientURL() }

// Config returns a validated importer configuration for one mailbox
// ("invoices") over XOAUTH2, with defaults applied. Tests adjust it and
// call Validate again if they change it.
func (s *Stack) Config() *config.Importer {
	s.t.Helper()
	host, port := splitAddr(s.t, s.Dovecot.Addr())
	cfg := &config.Importer{
		Log:  config.Log{Level: "info", Format: "json"},
		NATS: config.NATS{URL: s.NATSURL()},
		Identities: map[string]config.Identity{IdentityID: {
			TenantID: Tenant, ClientID: ClientID, ClientSecret: Secret,
			AuthorityHost: s.IdP.AuthorityHost(), CAFile: s.caFile,
		}},
		Mailboxes: []config.Mailbox{{
			Name: "invoices", Address: User, Source: "imap", Identity: IdentityID,
			IMAP:    config.IMAP{Host: host, Port: port, Security: "insecure", Auth: "xoauth2", Timeout: 20 * time.Second},
			Folders: config.Folders{Import: s.opts.Import, Processed: s.opts.Processed, Error: s.opts.Error},
			// Tests poll fast.
			PollInterval: time.Second,
		}},
	}
	cfg.ApplyDefaults()
	if err := cfg.Validate(); err != nil {
		s.t.Fatalf("stack config invalid: %v", err)
	}
	return cfg
}

func splitAddr(t testing.TB, addr string) (string, int) {
	var host string
	var port int
	for i := len(addr) - 1; i >= 0; i-- {
		if addr[i] == ':' {
			host = addr[:i]
			if _, err := fmt.Sscanf(addr[i+1:], "%d", &port); err != nil {
				t.Fatalf("bad address %q", addr)
			}
			break
		}
	}
	return host, port
}

// StreamStats counts the messages in a stream and their distinct ce-id
// (= Nats-Msg-Id) and SHA-256 values.
type StreamStats struct {
	Messages   int
	DistinctID int
	// PerDigest counts messages per body digest.
	PerDigest map[string]int
	// Subjects (decoded Mailpipe-Subject) in stream order.
	Subjects []string
	Headers  []nats.Header
}

// Stream reads every message of stream (headers only) and counts them.
func (s *Stack) Stream(name string) StreamStats {
	s.t.Helper()
	nc, err := nats.Connect(s.NATSURL())
	if err != nil {
		s.t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		s.t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	st := StreamStats{PerDigest: map[string]int{}}
	str, err := js.Stream(ctx, name)
	if err != nil {
		if err == jetstream.ErrStreamNotFound {
			return st
		}
		s.t.Fatal(err)
	}
	info, err := str.Info(ctx)
	if err != nil {
		s.t.Fatal(err)
	}
	if info.State.Msgs == 0 {
		return st
	}
	cons, err := str.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{HeadersOnly: true})
	if err != nil {
		s.t.Fatal(err)
	}
	ids := map[string]bool{}
	for i := uint64(0); i < info.State.Msgs; i++ {
		m, err := cons.Next(jetstream.FetchMaxWait(10 * time.Second))
		if err != nil {
			s.t.Fatalf("read stream %s message %d of %d: %v", name, i+1, info.State.Msgs, err)
		}
		h := m.Headers()
		st.Messages++
		ids[h.Get("ce-id")] = true
		st.PerDigest[h.Get("Mailpipe-Sha256")]++
		st.Subjects = append(st.Subjects, h.Get("Mailpipe-Subject"))
		st.Headers = append(st.Headers, h)
	}
	st.DistinctID = len(ids)
	return st
}

// Digest is the hex SHA-256 of b, as in the Mailpipe-Sha256 header.
func Digest(b []byte) string {
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

// Invoice returns a plain test message of about size bytes (at least the
// header) with a unique Message-ID derived from i.
func Invoice(i, size int) []byte {
	h := fmt.Sprintf("From: Supplier %d <billing@supplier%d.example>\r\nTo: %s\r\nSubject: Invoice %06d\r\nDate: Mon, 02 Nov 2026 10:00:00 +0100\r\nMessage-ID: <inv-%06d@supplier.example>\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n", i%97, i%97, User, i, i)
	b := make([]byte, 0, max(size, len(h)+2))
	b = append(b, h...)
	line := []byte("Invoice line item ......................................... EUR 100,00\r\n")
	for len(b)+len(line) <= size {
		b = append(b, line...)
	}
	return append(b, "\r\n"...)
}
