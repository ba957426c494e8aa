package imap_test

import (
	"context"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mailpipe/mailpipe/internal/auth"
	"github.com/mailpipe/mailpipe/internal/config"
	"github.com/mailpipe/mailpipe/internal/mailbox"
	"github.com/mailpipe/mailpipe/internal/mailbox/imap"
	"github.com/mailpipe/mailpipe/internal/mailbox/mailboxtest"
	"github.com/mailpipe/mailpipe/internal/testenv/dovecot"
)

const (
	user   = "invoices@example.test"
	issuer = "https://idp.example.test/tenant/v2.0"
)

var hsKey = []byte("conformance-hs256-key-0123456789")

// TestConformance runs the mailbox.Source conformance suite against a real
// Dovecot, logging in with XOAUTH2, in each way the source can move mail
// and with both hierarchy separators.
func TestConformance(t *testing.T) {
	for _, v := range []struct {
		name string
		opts dovecot.Options
	}{
		{"Move", dovecot.Options{}},                                         // UID MOVE
		{"NoMove", dovecot.Options{NoMove: true}},                           // UID COPY, STORE \Deleted, UID EXPUNGE
		{"NoMoveNoUIDPlus", dovecot.Options{NoMove: true, NoUIDPlus: true}}, // copies stay flagged \Deleted
		{"SeparatorDot", dovecot.Options{Separator: "."}},                   // "/" in the configuration, "." on the wire
	} {
		t.Run(v.name, func(t *testing.T) {
			t.Parallel()
			mailboxtest.Run(t, dovecotHarness{opts: v.opts})
		})
	}
}

// dovecotHarness gives every fixture its own Dovecot (started in a few
// hundred milliseconds), so fixtures share nothing.
type dovecotHarness struct {
	opts dovecot.Options
}

func (h dovecotHarness) Features() mailboxtest.Features {
	// Dovecot serves CRLF line ends; its maildir MOVE/COPY is not
	// exclusive across sessions (two sessions moving the same message at
	// once can both copy it).
	return mailboxtest.Features{CRLF: true, ExclusiveMove: false}
}

func (h dovecotHarness) New(t *testing.T, opts mailboxtest.FixtureOptions, msgs [][]byte) (mailbox.Source, mailboxtest.Fixture) {
	t.Helper()
	dopts := h.opts
	dopts.OAuth2 = &dovecot.OAuth2{Issuer: issuer, HS256Key: hsKey}
	srv := dovecot.Start(t, dopts)
	fx := &dovecotFixture{
		t:    t,
		srv:  srv,
		opts: opts,
		// A non-ASCII processed folder: modified UTF-7 on the wire.
		folders: mailboxtest.Folders{Import: "INBOX/Import", Processed: "INBOX/Verwerkt-Ä", Error: "INBOX/Fout"},
	}
	if opts.NoImport {
		if len(msgs) > 0 {
			t.Fatalf("NoImport with %d messages", len(msgs))
		}
	} else {
		srv.AppendMany(user, fx.folders.Import, msgs)
	}
	if !opts.NoProcessed {
		srv.CreateFolder(user, fx.folders.Processed)
	}
	if !opts.NoError {
		srv.CreateFolder(user, fx.folders.Error)
	}
	return fx.NewSource(), fx
}

type dovecotFixture struct {
	t       *testing.T
	srv     *dovecot.Server
	opts    mailboxtest.FixtureOptions
	folders mailboxtest.Folders
}

var _ mailboxtest.SeenFixture = (*dovecotFixture)(nil)

func (f *dovecotFixture) Folders() mailboxtest.Folders { return f.folders }

func (f *dovecotFixture) NewSource() mailbox.Source {
	f.t.Helper()
	host, portStr, err := net.SplitHostPort(f.srv.Addr())
	if err != nil {
		f.t.Fatal(err)
	}
	port, _ := strconv.Atoi(portStr)
	login := user
	if f.opts.BadCredentials {
		login = "someone-else@example.test" // a valid token, for another mailbox
	}
	tokens := &staticTokens{token: auth.Token{Value: f.srv.MintToken(login, time.Hour), ExpiresOn: time.Now().Add(time.Hour)}}
	src, err := imap.New(imap.Options{
		Mailbox: config.Mailbox{
			Name: "invoices", Address: user, Source: "imap",
			IMAP: config.IMAP{Host: host, Port: port, Security: "insecure", Auth: "xoauth2", Timeout: 30 * time.Second},
			Folders: config.Folders{Import: f.folders.Import, Processed: f.folders.Processed, Error: f.folders.Error,
				IncludeSubfolders: f.opts.IncludeSubfolders},
		},
		Tokens: tokens,
	})
	if err != nil {
		f.t.Fatal(err)
	}
	f.t.Cleanup(func() { src.Close() })
	return src
}

func (f *dovecotFixture) Exists(folder string) bool {
	return slices.Contains(f.srv.Folders(user), folder)
}

// live returns the messages of folder that are not flagged \Deleted.
func (f *dovecotFixture) live(folder string) []dovecot.Message {
	var out []dovecot.Message
	for _, m := range f.srv.Fetch(user, folder) {
		if !slices.Contains(m.Flags, `\Deleted`) {
			out = append(out, m)
		}
	}
	return out
}

func (f *dovecotFixture) Count(folder string) int {
	n := 0
	for _, flags := range f.srv.Flags(user, folder) {
		if !slices.Contains(flags, `\Deleted`) {
			n++
		}
	}
	return n
}

func (f *dovecotFixture) Bodies(folder string) [][]byte {
	var out [][]byte
	for _, m := range f.live(folder) {
		out = append(out, m.Raw)
	}
	return out
}

func (f *dovecotFixture) Seen(folder string) []bool {
	var out []bool
	for _, flags := range f.srv.Flags(user, folder) {
		if !slices.Contains(flags, `\Deleted`) {
			out = append(out, slices.ContainsFunc(flags, func(s string) bool { return strings.EqualFold(s, `\Seen`) }))
		}
	}
	return out
}

func (f *dovecotFixture) Add(folder string, raw []byte) {
	f.srv.AppendMany(user, folder, [][]byte{raw})
}

// staticTokens is an auth.TokenSource with one token that counts its calls.
type staticTokens struct {
	token       auth.Token
	tokens      atomic.Int32
	invalidated atomic.Int32
}

func (s *staticTokens) Token(context.Context) (auth.Token, error) {
	s.tokens.Add(1)
	return s.token, nil
}

func (s *staticTokens) Invalidate() { s.invalidated.Add(1) }
