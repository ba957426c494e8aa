package devmail

import (
	"bufio"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"errors"
	"fmt"
	"math/big"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"
	"github.com/emersion/go-sasl"
	"go.uber.org/zap/zaptest"
)

const (
	alice         = "alice@contoso.example"
	alicePassword = "Wachtwoord-123"
	bob           = "bob@fabrikam.example" // XOAUTH2 only
	errChallenge  = `{"status":"401","schemes":"bearer","scope":"https://outlook.office365.com/.default"}`
)

var errTokenExpired = errors.New("token expired")

func validateToken(token string) (string, error) {
	switch token {
	case "token-alice":
		return alice, nil
	case "token-bob":
		return "Bob@Fabrikam.example", nil // case differs from the user= field
	default:
		return "", errTokenExpired
	}
}

func startServer(t *testing.T, tlsConfig *tls.Config) *Server {
	t.Helper()
	s, err := Start(Options{
		TLSConfig:     tlsConfig,
		Users:         []User{{Address: alice, Password: alicePassword}, {Address: bob}},
		ValidateToken: validateToken,
		Logger:        zaptest.NewLogger(t),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return s
}

// dial connects a client whose connection gives up after a while, so that a
// wedged exchange fails the test instead of hanging it.
func dial(t *testing.T, s *Server, opts *imapclient.Options) *imapclient.Client {
	t.Helper()
	conn, err := net.Dial("tcp", s.Addr())
	if err != nil {
		t.Fatal(err)
	}
	conn.SetDeadline(time.Now().Add(20 * time.Second))
	c := imapclient.New(conn, opts)
	t.Cleanup(func() { c.Close() })
	return c
}

// xoauth2Client is a SASL XOAUTH2 client that answers an error challenge
// with ^A, as Exchange expects.
type xoauth2Client struct {
	user, token string
	challenges  []string
}

func (x *xoauth2Client) Start() (string, []byte, error) {
	return "XOAUTH2", []byte("user=" + x.user + "\x01auth=Bearer " + x.token + "\x01\x01"), nil
}

func (x *xoauth2Client) Next(challenge []byte) ([]byte, error) {
	x.challenges = append(x.challenges, string(challenge))
	return []byte{0x01}, nil
}

func TestXOAuth2Login(t *testing.T) {
	s := startServer(t, nil)
	c := dial(t, s, nil)
	if err := c.WaitGreeting(); err != nil {
		t.Fatal(err)
	}
	caps := c.Caps()
	for _, want := range []imap.Cap{imap.CapIMAP4rev1, imap.CapSASLIR, "AUTH=XOAUTH2", "AUTH=PLAIN"} {
		if !caps.Has(want) {
			t.Errorf("greeting capabilities %v lack %s", caps, want)
		}
	}

	x := &xoauth2Client{user: "BOB@fabrikam.example", token: "token-bob"}
	if err := c.Authenticate(x); err != nil {
		t.Fatalf("XOAUTH2: %v", err)
	}
	if len(x.challenges) != 0 {
		t.Errorf("unexpected challenges %q", x.challenges)
	}

	caps = c.Caps()
	for _, want := range []imap.Cap{imap.CapIMAP4rev1, imap.CapUIDPlus, imap.CapMove, imap.CapIdle, imap.CapNamespace, imap.CapLiteralPlus, imap.CapChildren} {
		if !caps.Has(want) {
			t.Errorf("capabilities after login %v lack %s", caps, want)
		}
	}
	ns, err := c.Namespace().Wait()
	if err != nil {
		t.Fatal(err)
	}
	if len(ns.Personal) != 1 || ns.Personal[0].Delim != '/' || ns.Personal[0].Prefix != "" {
		t.Errorf("NAMESPACE personal = %+v", ns.Personal)
	}
	if _, err := c.Select("INBOX", nil).Wait(); err != nil {
		t.Fatal(err)
	}
}

func TestXOAuth2RejectedThenRetry(t *testing.T) {
	s := startServer(t, nil)
	c := dial(t, s, nil)

	for _, x := range []*xoauth2Client{
		{user: alice, token: "expired"},   // rejected by ValidateToken
		{user: alice, token: "token-bob"}, // valid, but for another user
		{user: "nobody@contoso.example", token: "token-nobody"},
	} {
		err := c.Authenticate(x)
		var imapErr *imap.Error
		if !errors.As(err, &imapErr) || imapErr.Type != imap.StatusResponseTypeNo || imapErr.Text != "AUTHENTICATE failed." {
			t.Fatalf("XOAUTH2 %s/%s: got %v, want NO AUTHENTICATE failed.", x.user, x.token, err)
		}
		if len(x.challenges) != 1 || x.challenges[0] != errChallenge {
			t.Errorf("XOAUTH2 %s/%s: challenges %q, want one %s", x.user, x.token, x.challenges, errChallenge)
		}
	}

	// The connection is not wedged: a second attempt works.
	if err := c.Authenticate(&xoauth2Client{user: alice, token: "token-alice"}); err != nil {
		t.Fatalf("XOAUTH2 after failures: %v", err)
	}
	if _, err := c.Select("INBOX", nil).Wait(); err != nil {
		t.Fatal(err)
	}

	// Same, followed by a password login.
	c2 := dial(t, s, nil)
	if err := c2.Authenticate(&xoauth2Client{user: alice, token: "expired"}); err == nil {
		t.Fatal("XOAUTH2 with a rejected token succeeded")
	}
	if err := c2.Login(alice, alicePassword).Wait(); err != nil {
		t.Fatalf("LOGIN after failed XOAUTH2: %v", err)
	}
	if _, err := c2.Select("INBOX", nil).Wait(); err != nil {
		t.Fatal(err)
	}
}

// TestXOAuth2Wire checks the exact exchange, with and without SASL-IR.
func TestXOAuth2Wire(t *testing.T) {
	s := startServer(t, nil)
	conn, err := net.Dial("tcp", s.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	r := bufio.NewReader(conn)
	readLine := func() string {
		t.Helper()
		l, err := r.ReadString('\n')
		if err != nil {
			t.Fatalf("read: %v", err)
		}
		if !strings.HasSuffix(l, "\r\n") {
			t.Fatalf("line %q does not end in CRLF", l)
		}
		return strings.TrimSuffix(l, "\r\n")
	}
	send := func(s string) {
		t.Helper()
		if _, err := conn.Write([]byte(s + "\r\n")); err != nil {
			t.Fatal(err)
		}
	}
	ir := func(user, token string) string {
		return base64.StdEncoding.EncodeToString([]byte("user=" + user + "\x01auth=Bearer " + token + "\x01\x01"))
	}

	if l := readLine(); !strings.HasPrefix(l, "* OK ") {
		t.Fatalf("greeting %q", l)
	}
	send("a1 AUTHENTICATE XOAUTH2 " + ir(alice, "expired"))
	if l, want := readLine(), "+ "+base64.StdEncoding.EncodeToString([]byte(errChallenge)); l != want {
		t.Fatalf("got %q, want %q", l, want)
	}
	send("AQ==")
	if l := readLine(); l != "a1 NO AUTHENTICATE failed." {
		t.Fatalf("got %q", l)
	}

	// Without SASL-IR: empty continuation, then the response.
	send("a2 AUTHENTICATE XOAUTH2")
	if l := readLine(); l != "+ " && l != "+" {
		t.Fatalf("got %q, want empty continuation", l)
	}
	send(ir(alice, "token-alice"))
	if l := readLine(); !strings.HasPrefix(l, "a2 OK ") {
		t.Fatalf("got %q", l)
	}
}

func TestPasswordLogin(t *testing.T) {
	s := startServer(t, nil)

	c := dial(t, s, nil)
	err := c.Login(alice, "wrong").Wait()
	var imapErr *imap.Error
	if !errors.As(err, &imapErr) || imapErr.Type != imap.StatusResponseTypeNo || imapErr.Text != "LOGIN failed." {
		t.Fatalf("LOGIN with wrong password: %v", err)
	}
	if err := c.Login(bob, "").Wait(); err == nil {
		t.Fatal("LOGIN of a token-only user succeeded")
	}
	if err := c.Login("ALICE@contoso.example", alicePassword).Wait(); err != nil {
		t.Fatalf("LOGIN: %v", err)
	}

	c = dial(t, s, nil)
	if err := c.Authenticate(sasl.NewPlainClient("", alice, "wrong")); err == nil {
		t.Fatal("AUTHENTICATE PLAIN with wrong password succeeded")
	}
	if err := c.Authenticate(sasl.NewPlainClient("", alice, alicePassword)); err != nil {
		t.Fatalf("AUTHENTICATE PLAIN: %v", err)
	}

	c = dial(t, s, nil)
	if err := c.Authenticate(sasl.NewLoginClient(alice, alicePassword)); err != nil {
		t.Fatalf("AUTHENTICATE LOGIN: %v", err)
	}
	if err := c.Noop().Wait(); err != nil {
		t.Fatal(err)
	}
}

func TestNonASCIIFolders(t *testing.T) {
	s := startServer(t, nil)
	folders := []string{"Postvak IN/Algemeen/Import", "Rechnungen/Überfällig", "Факторинг"}
	for _, f := range folders {
		if err := s.CreateFolder(alice, f); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.CreateFolder(alice, "postvak in/algemeen/import"); err != nil {
		t.Fatalf("re-creating a folder in other case: %v", err)
	}
	raw := SampleInvoices(1, time.Date(2026, 5, 4, 10, 0, 0, 0, time.UTC))[0]
	if err := s.Append(alice, "Rechnungen/Überfällig", raw, time.Now()); err != nil {
		t.Fatal(err)
	}
	if err := s.Append(alice, "Nope", raw, time.Now()); err == nil {
		t.Fatal("Append to a missing folder succeeded")
	}

	c := dial(t, s, nil)
	if err := c.Login(alice, alicePassword).Wait(); err != nil {
		t.Fatal(err)
	}

	list, err := c.List("", "*", nil).Collect()
	if err != nil {
		t.Fatal(err)
	}
	attrs := map[string][]imap.MailboxAttr{}
	for _, l := range list {
		if l.Delim != '/' {
			t.Errorf("%q: delimiter %q", l.Mailbox, l.Delim)
		}
		attrs[l.Mailbox] = l.Attrs
	}
	for name, want := range map[string]imap.MailboxAttr{
		"INBOX":                      imap.MailboxAttrHasNoChildren,
		"Postvak IN":                 imap.MailboxAttrHasChildren,
		"Postvak IN/Algemeen":        imap.MailboxAttrHasChildren,
		"Postvak IN/Algemeen/Import": imap.MailboxAttrHasNoChildren,
		"Rechnungen":                 imap.MailboxAttrHasChildren,
		"Rechnungen/Überfällig":      imap.MailboxAttrHasNoChildren,
		"Факторинг":                  imap.MailboxAttrHasNoChildren,
		"Sent Items":                 imap.MailboxAttrSent,
		"Deleted Items":              imap.MailboxAttrTrash,
	} {
		got, ok := attrs[name]
		if !ok {
			t.Errorf("LIST lacks %q (got %v)", name, attrs)
		} else if !slices.Contains(got, want) {
			t.Errorf("LIST %q attrs %v lack %s", name, got, want)
		}
	}

	data, err := c.Select("Rechnungen/Überfällig", nil).Wait()
	if err != nil {
		t.Fatalf("SELECT non-ASCII folder: %v", err)
	}
	if data.NumMessages != 1 {
		t.Errorf("SELECT: %d messages, want 1", data.NumMessages)
	}
	// Exchange folder names are case-insensitive.
	if _, err := c.Select("rechnungen/ÜBERFÄLLIG", nil).Wait(); err != nil {
		t.Errorf("SELECT in other case: %v", err)
	}
	if _, err := c.Select("Факторинг", nil).Wait(); err != nil {
		t.Errorf("SELECT Cyrillic folder: %v", err)
	}
	if _, err := c.Select("Missing", nil).Wait(); err == nil {
		t.Error("SELECT of a missing folder succeeded")
	}

	// Folder commands over IMAP keep the hierarchy consistent.
	if err := c.Create("Archief/2026/Q1", nil).Wait(); err != nil {
		t.Fatal(err)
	}
	if err := c.Rename("Archief", "Postvak IN/Archief", nil).Wait(); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Status("Postvak IN/Archief/2026/Q1", &imap.StatusOptions{NumMessages: true}).Wait(); err != nil {
		t.Errorf("STATUS of renamed subtree: %v", err)
	}
	if err := c.Delete("Postvak IN/Archief").Wait(); err != nil {
		t.Fatal(err)
	}
	list, err = c.List("", "Postvak IN/*", nil).Collect()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, l := range list {
		names = append(names, l.Mailbox)
	}
	if want := []string{"Postvak IN/Algemeen", "Postvak IN/Algemeen/Import"}; !slices.Equal(names, want) {
		t.Errorf("LIST after delete: %q, want %q", names, want)
	}
}

// TestModifiedUTF7Wire checks that non-ASCII names travel as modified
// UTF-7, as IMAP4rev1 requires.
func TestModifiedUTF7Wire(t *testing.T) {
	s := startServer(t, nil)
	if err := s.CreateFolder(alice, "Rechnungen/Überfällig"); err != nil {
		t.Fatal(err)
	}
	conn, err := net.Dial("tcp", s.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	r := bufio.NewReader(conn)
	transcript := func(cmd string) string {
		t.Helper()
		fmt.Fprintf(conn, "%s\r\n", cmd)
		tag := strings.Fields(cmd)[0]
		var b strings.Builder
		for {
			l, err := r.ReadString('\n')
			if err != nil {
				t.Fatal(err)
			}
			b.WriteString(l)
			if strings.HasPrefix(l, tag+" ") {
				return b.String()
			}
		}
	}
	r.ReadString('\n') // greeting
	transcript("a LOGIN " + alice + " " + alicePassword)
	if out := transcript(`b LIST "" "Rechnungen/*"`); !strings.Contains(out, `* LIST (\HasNoChildren) "/" "Rechnungen/&ANw-berf&AOQ-llig"`) {
		t.Errorf("LIST:\n%s", out)
	}
	if out := transcript(`c SELECT "Rechnungen/&ANw-berf&AOQ-llig"`); !strings.Contains(out, "c OK [READ-WRITE]") {
		t.Errorf("SELECT:\n%s", out)
	}
}

func TestUIDMove(t *testing.T) {
	s := startServer(t, nil)
	const src, dst = "Postvak IN/Algemeen/Import", "Postvak IN/Algemeen/Verwerkt"
	for _, f := range []string{src, dst} {
		if err := s.CreateFolder(alice, f); err != nil {
			t.Fatal(err)
		}
	}
	now := time.Date(2026, 2, 10, 9, 30, 0, 0, time.UTC)
	for _, raw := range SampleInvoices(4, now) {
		if err := s.Append(alice, src, raw, now); err != nil {
			t.Fatal(err)
		}
	}

	var mu sync.Mutex
	var expunged []uint32
	c := dial(t, s, &imapclient.Options{UnilateralDataHandler: &imapclient.UnilateralDataHandler{
		Expunge: func(seqNum uint32) {
			mu.Lock()
			expunged = append(expunged, seqNum)
			mu.Unlock()
		},
	}})
	if err := c.Authenticate(&xoauth2Client{user: alice, token: "token-alice"}); err != nil {
		t.Fatal(err)
	}
	status, err := c.Status(dst, &imap.StatusOptions{UIDValidity: true}).Wait()
	if err != nil {
		t.Fatal(err)
	}
	sel, err := c.Select(src, nil).Wait()
	if err != nil {
		t.Fatal(err)
	}
	if sel.NumMessages != 4 {
		t.Fatalf("%d messages in %s, want 4", sel.NumMessages, src)
	}

	data, err := c.Move(imap.UIDSetNum(2, 3), dst).Wait()
	if err != nil {
		t.Fatalf("UID MOVE: %v", err)
	}
	if data.UIDValidity != status.UIDValidity || data.UIDValidity == 0 {
		t.Errorf("COPYUID uidvalidity %d, want %d", data.UIDValidity, status.UIDValidity)
	}
	if data.SourceUIDs == nil || data.SourceUIDs.String() != "2:3" || data.DestUIDs == nil || data.DestUIDs.String() != "1:2" {
		t.Errorf("COPYUID %v -> %v, want 2:3 -> 1:2", data.SourceUIDs, data.DestUIDs)
	}
	mu.Lock()
	if !slices.Equal(expunged, []uint32{3, 2}) && !slices.Equal(expunged, []uint32{2, 2}) {
		t.Errorf("EXPUNGE responses %v, want two for sequence numbers 2 and 3", expunged)
	}
	mu.Unlock()
	if n := c.Mailbox().NumMessages; n != 2 {
		t.Errorf("client sees %d messages after MOVE, want 2", n)
	}
	for folder, want := range map[string]int{src: 2, dst: 2} {
		if n, err := s.Count(alice, folder); err != nil || n != want {
			t.Errorf("Count(%s) = %d, %v; want %d", folder, n, err, want)
		}
	}

	// What is left is UIDs 1 and 4.
	uids, err := c.UIDSearch(&imap.SearchCriteria{}, nil).Wait()
	if err != nil {
		t.Fatal(err)
	}
	if got := uids.AllUIDs(); !slices.Equal(got, []imap.UID{1, 4}) {
		t.Errorf("UIDs left %v, want [1 4]", got)
	}

	// A UID that does not exist: OK, nothing moved, connection fine.
	if _, err := c.Move(imap.UIDSetNum(99), dst).Wait(); err != nil {
		t.Errorf("UID MOVE of a missing UID: %v", err)
	}
	// A missing destination: NO [TRYCREATE], nothing moved.
	_, err = c.Move(imap.UIDSetNum(1), "Postvak IN/Bestaat niet").Wait()
	var imapErr *imap.Error
	if !errors.As(err, &imapErr) || imapErr.Code != imap.ResponseCodeTryCreate {
		t.Errorf("UID MOVE to a missing folder: %v, want NO [TRYCREATE]", err)
	}
	// Case-insensitive destination, as on Exchange.
	data, err = c.Move(imap.UIDSetNum(4), strings.ToUpper(dst)).Wait()
	if err != nil {
		t.Fatal(err)
	}
	if data.DestUIDs == nil || data.DestUIDs.String() != "3" {
		t.Errorf("COPYUID dest %v, want 3", data.DestUIDs)
	}
	// UID COPY reports COPYUID too.
	cp, err := c.Copy(imap.UIDSetNum(1), dst).Wait()
	if err != nil {
		t.Fatal(err)
	}
	if cp.UIDValidity != status.UIDValidity || cp.SourceUIDs.String() != "1" || cp.DestUIDs.String() != "4" {
		t.Errorf("COPY: %+v", cp)
	}
	if err := c.Noop().Wait(); err != nil {
		t.Fatal(err)
	}
	for folder, want := range map[string]int{src: 1, dst: 4} {
		if n, err := s.Count(alice, folder); err != nil || n != want {
			t.Errorf("Count(%s) = %d, %v; want %d", folder, n, err, want)
		}
	}
}

func TestIdleSeesAppend(t *testing.T) {
	s := startServer(t, nil)
	exists := make(chan uint32, 10)
	c := dial(t, s, &imapclient.Options{UnilateralDataHandler: &imapclient.UnilateralDataHandler{
		Mailbox: func(data *imapclient.UnilateralDataMailbox) {
			if data.NumMessages != nil {
				exists <- *data.NumMessages
			}
		},
	}})
	if err := c.Authenticate(&xoauth2Client{user: bob, token: "token-bob"}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Select("INBOX", nil).Wait(); err != nil {
		t.Fatal(err)
	}
	idle, err := c.Idle()
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Append(bob, "inbox", SampleInvoices(1, time.Now())[0], time.Time{}); err != nil {
		t.Fatal(err)
	}
	select {
	case n := <-exists:
		if n != 1 {
			t.Errorf("EXISTS %d, want 1", n)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no EXISTS while idling")
	}
	if err := idle.Close(); err != nil {
		t.Fatal(err)
	}
	if err := idle.Wait(); err != nil {
		t.Fatal(err)
	}
}

func TestTLS(t *testing.T) {
	cert, pool := selfSignedCert(t)
	s := startServer(t, &tls.Config{Certificates: []tls.Certificate{cert}})

	c, err := imapclient.DialTLS(s.Addr(), &imapclient.Options{TLSConfig: &tls.Config{RootCAs: pool, ServerName: "localhost"}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Authenticate(&xoauth2Client{user: alice, token: "token-alice"}); err != nil {
		t.Fatalf("XOAUTH2 over TLS: %v", err)
	}
	if _, err := c.Select("INBOX", nil).Wait(); err != nil {
		t.Fatal(err)
	}
	if err := c.Logout().Wait(); err != nil {
		t.Fatal(err)
	}

	if _, err := Start(Options{TLSConfig: &tls.Config{}}); err == nil {
		t.Error("Start with a TLS config without certificate succeeded")
	}
}

func TestStartErrors(t *testing.T) {
	for _, users := range [][]User{
		{{Address: "not-an-address"}},
		{{Address: alice}, {Address: strings.ToUpper(alice)}},
	} {
		if s, err := Start(Options{Users: users}); err == nil {
			s.Close()
			t.Errorf("Start with users %v succeeded", users)
		}
	}
	s := startServer(t, nil)
	if err := s.CreateFolder("nobody@contoso.example", "X"); err == nil {
		t.Error("CreateFolder for an unknown user succeeded")
	}
	for _, bad := range []string{"", "/", "a//b", "Foo/*"} {
		if err := s.CreateFolder(alice, bad); err == nil {
			t.Errorf("CreateFolder(%q) succeeded", bad)
		}
	}
	if _, err := s.Count(alice, "Missing"); err == nil {
		t.Error("Count of a missing folder succeeded")
	}
	if n, err := s.Count(alice, "INBOX"); err != nil || n != 0 {
		t.Errorf("Count(INBOX) = %d, %v", n, err)
	}
}

func selfSignedCert(t *testing.T) (tls.Certificate, *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "localhost"},
		DNSNames:              []string{"localhost"},
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1)},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(leaf)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}, pool
}
