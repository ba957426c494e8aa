package dovecot_test

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"
	"github.com/emersion/go-sasl"
	"github.com/golang-jwt/jwt/v5"

	"github.com/mailpipe/mailpipe/internal/testenv/dovecot"
)

const (
	invoices = "invoices@example.test"
	issuer   = "https://idp.example.test"
)

var hsKey = []byte("0123456789abcdef0123456789abcdef")

func testMessage(i int, size int) []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "From: sender@example.test\r\nTo: %s\r\nSubject: message %d\r\nMessage-ID: <m%d@example.test>\r\n\r\n", invoices, i, i)
	line := strings.Repeat("x", 76) + "\r\n"
	for b.Len() < size {
		b.WriteString(line)
	}
	return b.Bytes()
}

// dial connects to addr without logging in; the connection is bounded so a
// silent server cannot hang the test.
func dial(t *testing.T, addr string) *imapclient.Client {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	_ = conn.SetDeadline(time.Now().Add(2 * time.Minute))
	c := imapclient.New(conn, nil)
	t.Cleanup(func() { c.Close() })
	if err := c.WaitGreeting(); err != nil {
		t.Fatal(err)
	}
	return c
}

func TestFoldersAppendCount(t *testing.T) {
	t.Parallel()
	s := dovecot.Start(t, dovecot.Options{Users: []dovecot.User{{Name: invoices, Password: "secret"}}})

	const folder = "Postvak IN/Algemeen/Verwerkt-Ä"
	s.CreateFolder(invoices, folder)
	s.CreateFolder(invoices, folder) // idempotent
	if !slices.Contains(s.Folders(invoices), folder) {
		t.Fatalf("Folders = %q, want it to contain %q", s.Folders(invoices), folder)
	}
	// Dovecot's maildir++ layout: "." between levels, modified UTF-7.
	onDisk := filepath.Join(s.Dir(), "home", invoices, "Maildir", ".Postvak IN.Algemeen.Verwerkt-&AMQ-")
	if s.MaildirPath(invoices, folder) != onDisk {
		t.Errorf("MaildirPath = %s, want %s", s.MaildirPath(invoices, folder), onDisk)
	}
	if _, err := os.Stat(filepath.Join(onDisk, "cur")); err != nil {
		t.Errorf("folder not where expected on disk: %v", err)
	}

	// What a client sees: "/" separator, decoded name.
	c := dial(t, s.Addr())
	if err := c.Login(invoices, "secret").Wait(); err != nil {
		t.Fatal(err)
	}
	list, err := c.List("", "Postvak IN/*", nil).Collect()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, l := range list {
		if l.Delim != '/' {
			t.Errorf("delimiter %q, want '/'", l.Delim)
		}
		names = append(names, l.Mailbox)
	}
	if !slices.Contains(names, folder) {
		t.Errorf("LIST = %q, want %q in it", names, folder)
	}

	msgs := [][]byte{testMessage(1, 500), testMessage(2, 500), testMessage(3, 500)}
	s.Append(invoices, folder, testMessage(0, 500))
	s.AppendMany(invoices, folder, msgs)
	s.AppendMany(invoices, "INBOX", msgs[:2])
	s.Append(invoices, "Nieuw/Map", testMessage(9, 100)) // created on the fly

	if n := s.Count(invoices, folder); n != 4 {
		t.Errorf("Count(folder) = %d, want 4", n)
	}
	if n := s.Count(invoices, "INBOX"); n != 2 {
		t.Errorf("Count(INBOX) = %d, want 2", n)
	}
	if n := s.Count(invoices, "Nieuw/Map"); n != 1 {
		t.Errorf("Count(Nieuw/Map) = %d, want 1", n)
	}
	got := s.Messages(invoices, folder)
	want := append([][]byte{testMessage(0, 500)}, msgs...)
	if len(got) != len(want) {
		t.Fatalf("Messages: %d, want %d", len(got), len(want))
	}
	for i := range want {
		if !bytes.Equal(got[i], want[i]) {
			t.Errorf("message %d differs: got %.60q", i, got[i])
		}
	}
	for i, f := range s.Flags(invoices, folder) {
		if len(f) != 0 {
			t.Errorf("message %d flags %q, want none", i, f)
		}
	}
	// The logged-in client sees the seeded messages too.
	st, err := c.Status(folder, &imap.StatusOptions{NumMessages: true}).Wait()
	if err != nil || *st.NumMessages != 4 {
		t.Errorf("client STATUS = %v, %v; want 4 messages", st, err)
	}

	s.DeleteFolder(invoices, folder)
	s.DeleteFolder(invoices, folder) // idempotent
	if slices.Contains(s.Folders(invoices), folder) {
		t.Errorf("folder still listed after DeleteFolder: %q", s.Folders(invoices))
	}
}

func TestSeparatorDot(t *testing.T) {
	t.Parallel()
	s := dovecot.Start(t, dovecot.Options{Users: []dovecot.User{{Name: invoices, Password: "secret"}}, Separator: "."})
	s.CreateFolder(invoices, "Archief/2026")
	s.AppendMany(invoices, "Archief/2026", [][]byte{testMessage(1, 100)})
	if n := s.Count(invoices, "Archief/2026"); n != 1 {
		t.Errorf("Count = %d, want 1", n)
	}
	c := dial(t, s.Addr())
	if err := c.Login(invoices, "secret").Wait(); err != nil {
		t.Fatal(err)
	}
	list, err := c.List("", "Archief*", nil).Collect()
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, l := range list {
		if l.Delim != '.' {
			t.Errorf("delimiter %q, want '.'", l.Delim)
		}
		found = found || l.Mailbox == "Archief.2026"
	}
	if !found {
		t.Errorf("Archief.2026 not listed: %v", list)
	}
}

func TestPasswordLogin(t *testing.T) {
	t.Parallel()
	s := dovecot.Start(t, dovecot.Options{Users: []dovecot.User{{Name: invoices, Password: "secret"}}})

	c := dial(t, s.Addr())
	if err := c.Login(invoices, "secret").Wait(); err != nil {
		t.Fatalf("LOGIN: %v\n%s", err, s.Log())
	}
	c2 := dial(t, s.Addr())
	if err := c2.Authenticate(sasl.NewPlainClient("", invoices, "secret")); err != nil {
		t.Fatalf("AUTHENTICATE PLAIN: %v", err)
	}
	for i := 0; i < 3; i++ { // no growing per-IP penalty
		start := time.Now()
		c3 := dial(t, s.Addr())
		if err := c3.Login(invoices, "wrong").Wait(); !isIMAPError(err, imap.StatusResponseTypeNo, imap.ResponseCodeAuthenticationFailed) {
			t.Fatalf("LOGIN with a wrong password: %v, want NO [AUTHENTICATIONFAILED]", err)
		}
		if d := time.Since(start); d > 3*time.Second {
			t.Errorf("failed login %d took %v", i, d)
		}
	}
	if !strings.Contains(s.Log(), "Password mismatch") {
		t.Errorf("auth failure not in log:\n%s", s.Log())
	}
}

// xoauth2 is a minimal XOAUTH2 SASL client. Dovecot answers a failure with
// an error challenge (JSON), which the client must answer before it gets
// the tagged NO. go-imap encodes an empty answer as "=", which Dovecot
// 2.3 rejects with "BAD Invalid base64 data in continued response"; an
// answer of "\x01" gets the proper "NO [AUTHENTICATIONFAILED]".
type xoauth2 struct {
	user, token string
	errReply    []byte // nil: "\x01"
}

func (x *xoauth2) Start() (string, []byte, error) {
	return "XOAUTH2", []byte("user=" + x.user + "\x01auth=Bearer " + x.token + "\x01\x01"), nil
}

func (x *xoauth2) Next(challenge []byte) ([]byte, error) {
	if x.errReply == nil {
		return []byte{1}, nil
	}
	return x.errReply, nil
}

func isIMAPError(err error, typ imap.StatusResponseType, code imap.ResponseCode) bool {
	var ie *imap.Error
	return errors.As(err, &ie) && ie.Type == typ && ie.Code == code
}

func hs256(t *testing.T, key []byte, claims jwt.MapClaims) string {
	t.Helper()
	tok, err := jwt.NewWithClaims(jwt.SigningMethodHS256, claims).SignedString(key)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func TestXOAUTH2(t *testing.T) {
	t.Parallel()
	s := dovecot.Start(t, dovecot.Options{OAuth2: &dovecot.OAuth2{Issuer: issuer, HS256Key: hsKey}})
	now := time.Now()
	claims := func(email string, iat, exp time.Time) jwt.MapClaims {
		return jwt.MapClaims{"sub": email, "email": email, "iss": issuer, "iat": iat.Unix(), "exp": exp.Unix()}
	}
	valid := hs256(t, hsKey, claims(invoices, now, now.Add(time.Hour)))
	noSub := claims(invoices, now, now.Add(time.Hour))
	delete(noSub, "sub")
	otherIss := claims(invoices, now, now.Add(time.Hour))
	otherIss["iss"] = "https://evil.example.test"

	for _, tc := range []struct {
		name     string
		user     string
		token    string
		errReply []byte
		ok       bool
		wantBad  bool
	}{
		{name: "valid", user: invoices, token: valid, ok: true},
		{name: "minted by MintToken", user: "someone@example.test", token: s.MintToken("someone@example.test", time.Hour), ok: true},
		{name: "expired", user: invoices, token: hs256(t, hsKey, claims(invoices, now.Add(-2*time.Hour), now.Add(-time.Hour)))},
		{name: "expired by MintToken", user: invoices, token: s.MintToken(invoices, -time.Minute)},
		{name: "wrong key", user: invoices, token: hs256(t, []byte("another key another key 12345678"), claims(invoices, now, now.Add(time.Hour)))},
		{name: "wrong issuer", user: invoices, token: hs256(t, hsKey, otherIss)},
		{name: "no sub claim", user: invoices, token: hs256(t, hsKey, noSub)},
		{name: "other user", user: "other@example.test", token: valid},
		{name: "not a JWT", user: invoices, token: "not-a-jwt"},
		{name: "empty answer to the error challenge", user: invoices, token: "not-a-jwt", errReply: []byte{}, wantBad: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			start := time.Now()
			c := dial(t, s.Addr())
			err := c.Authenticate(&xoauth2{user: tc.user, token: tc.token, errReply: tc.errReply})
			if tc.ok && err != nil {
				t.Fatalf("XOAUTH2 failed: %v\n%s", err, s.Log())
			}
			if !tc.ok {
				want := "NO [AUTHENTICATIONFAILED]"
				if tc.wantBad {
					want = "BAD"
				}
				if tc.wantBad && !isIMAPError(err, imap.StatusResponseTypeBad, "") ||
					!tc.wantBad && !isIMAPError(err, imap.StatusResponseTypeNo, imap.ResponseCodeAuthenticationFailed) {
					t.Fatalf("XOAUTH2 result %v, want %s", err, want)
				}
			}
			if d := time.Since(start); d > 3*time.Second {
				t.Errorf("took %v", d)
			}
			if tc.ok {
				if c.State() != imap.ConnStateAuthenticated {
					t.Errorf("state %v after login", c.State())
				}
				if _, err := c.Status("INBOX", &imap.StatusOptions{NumMessages: true}).Wait(); err != nil {
					t.Errorf("STATUS INBOX: %v", err)
				}
			}
		})
	}

	t.Run("OAUTHBEARER", func(t *testing.T) {
		c := dial(t, s.Addr())
		err := c.Authenticate(sasl.NewOAuthBearerClient(&sasl.OAuthBearerOptions{Username: invoices, Token: valid}))
		if err != nil {
			t.Fatalf("OAUTHBEARER: %v", err)
		}
	})
	// Each failure for its own reason.
	log := s.Log()
	for _, reason := range []string{
		"Token has expired",
		"Incorrect JWT signature",
		"Issuer 'https://evil.example.test' is not allowed",
		"Missing 'sub' field",
		"Username 'other@example.test' did not match 'invoices@example.test'",
	} {
		if !strings.Contains(log, reason) {
			t.Errorf("%q not in log:\n%s", reason, log)
		}
	}
}

func capsOf(c *imapclient.Client) []string {
	var out []string
	for cp := range c.Caps() {
		out = append(out, string(cp))
	}
	return out
}

func TestCapabilities(t *testing.T) {
	t.Parallel()
	user := []dovecot.User{{Name: invoices, Password: "secret"}}
	for _, tc := range []struct {
		name                string
		opts                dovecot.Options
		wantMove, wantUIDPl bool
	}{
		{"default", dovecot.Options{Users: user}, true, true},
		{"NoMove", dovecot.Options{Users: user, NoMove: true}, false, true},
		{"NoMove NoUIDPlus", dovecot.Options{Users: user, NoMove: true, NoUIDPlus: true}, false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			s := dovecot.Start(t, tc.opts)
			c := dial(t, s.Addr())
			check := func(when string) {
				caps := c.Caps()
				// Before login Dovecot's default banner lists only a few
				// capabilities, so only absence can be checked there.
				hasMove, hasUIDPlus := caps.Has(imap.CapMove), caps.Has(imap.CapUIDPlus)
				if when == "before login" && (hasMove && !tc.wantMove || hasUIDPlus && !tc.wantUIDPl) ||
					when != "before login" && (hasMove != tc.wantMove || hasUIDPlus != tc.wantUIDPl) {
					t.Errorf("%s: MOVE %v UIDPLUS %v, want %v %v; caps %q", when,
						caps.Has(imap.CapMove), caps.Has(imap.CapUIDPlus), tc.wantMove, tc.wantUIDPl, capsOf(c))
				}
				for _, must := range []imap.Cap{imap.CapIMAP4rev1, imap.CapIdle, imap.CapLiteralPlus} {
					if !caps.Has(must) {
						t.Errorf("%s: %s missing: %q", when, must, capsOf(c))
					}
				}
			}
			check("before login")
			if err := c.Login(invoices, "secret").Wait(); err != nil {
				t.Fatal(err)
			}
			if _, err := c.Capability().Wait(); err != nil { // explicit CAPABILITY after login
				t.Fatal(err)
			}
			check("after login")
		})
	}
}

func TestTLS(t *testing.T) {
	t.Parallel()
	s := dovecot.Start(t, dovecot.Options{Users: []dovecot.User{{Name: invoices, Password: "secret"}}, TLS: true})
	if s.TLSAddr() == "" || len(s.CACertPEM()) == 0 {
		t.Fatal("no TLS address or CA")
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(s.CACertPEM()) {
		t.Fatal("bad CA PEM")
	}
	for _, serverName := range []string{"", "localhost"} {
		c, err := imapclient.DialTLS(s.TLSAddr(), &imapclient.Options{TLSConfig: &tls.Config{RootCAs: pool, ServerName: serverName}})
		if err != nil {
			t.Fatalf("DialTLS (ServerName %q): %v", serverName, err)
		}
		if err := c.Login(invoices, "secret").Wait(); err != nil {
			t.Fatalf("LOGIN over TLS: %v", err)
		}
		c.Close()
	}
	// The plain port still works, and offers STARTTLS.
	c := dial(t, s.Addr())
	if !c.Caps().Has(imap.CapStartTLS) {
		t.Errorf("no STARTTLS on the plain port: %q", capsOf(c))
	}
}

func TestLargeMessage(t *testing.T) {
	t.Parallel()
	s := dovecot.Start(t, dovecot.Options{Users: []dovecot.User{{Name: invoices, Password: "secret"}}})
	big := testMessage(1, 30<<20)
	s.Append(invoices, "INBOX", big)
	if n := s.Count(invoices, "INBOX"); n != 1 {
		t.Fatalf("Count = %d, want 1", n)
	}
	got := s.Messages(invoices, "INBOX")
	if len(got) != 1 || !bytes.Equal(got[0], big) {
		t.Fatalf("stored message differs (%d messages)", len(got))
	}
}

func TestAppendManyIsFast(t *testing.T) {
	t.Parallel()
	const n, size = 10000, 50 << 10
	s := dovecot.Start(t, dovecot.Options{})
	start := time.Now()
	s.AppendFunc(invoices, "Bulk", n, func(i int) []byte { return testMessage(i, size) })
	seeded := time.Since(start)
	if got := s.Count(invoices, "Bulk"); got != n {
		t.Fatalf("Count = %d, want %d", got, n)
	}
	t.Logf("seeded %d × %d KB in %v, counted after %v", n, size>>10, seeded, time.Since(start))
	if d := time.Since(start); d > 60*time.Second {
		t.Errorf("seeding and counting took %v", d)
	}
	// UIDs follow the order of generation.
	c := s.AdminClient(invoices)
	if _, err := c.Select("Bulk", &imap.SelectOptions{ReadOnly: true}).Wait(); err != nil {
		t.Fatal(err)
	}
	subject := &imap.FetchItemBodySection{Specifier: imap.PartSpecifierHeader, HeaderFields: []string{"Subject"}, Peek: true}
	for _, i := range []int{0, 1, n / 2, n - 1} {
		uid := imap.UID(i + 1)
		msgs, err := c.Fetch(imap.UIDSetNum(uid), &imap.FetchOptions{UID: true, RFC822Size: true, BodySection: []*imap.FetchItemBodySection{subject}}).Collect()
		if err != nil || len(msgs) != 1 {
			t.Fatalf("UID FETCH %d: %v (%d messages)", uid, err, len(msgs))
		}
		want := fmt.Sprintf("Subject: message %d\r\n", i)
		if got := string(msgs[0].FindBodySection(subject)); !strings.HasPrefix(got, want) {
			t.Errorf("UID %d: %q, want %q", uid, got, want)
		}
		if msgs[0].RFC822Size != int64(len(testMessage(i, size))) {
			t.Errorf("UID %d: size %d, want %d", uid, msgs[0].RFC822Size, len(testMessage(i, size)))
		}
	}
}
