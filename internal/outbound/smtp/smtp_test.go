package smtp

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	mrand "math/rand/v2"
	"mime"
	"mime/multipart"
	"mime/quotedprintable"
	"net"
	"net/mail"
	"net/textproto"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/iotest"
	"time"

	"go.uber.org/zap/zaptest"

	"github.com/mailpipe/mailpipe/internal/auth"
	"github.com/mailpipe/mailpipe/internal/devidp"
	"github.com/mailpipe/mailpipe/internal/devmail"
	"github.com/mailpipe/mailpipe/internal/outbound"
	"github.com/mailpipe/mailpipe/pkg/mailjob"
)

const (
	billing = "billing@contoso.example"
	service = "svc-mailer@contoso.example"
)

// hangGuard bounds every test's context, so that a wedged exchange fails
// instead of hanging the run. Tests make no timing assertions.
const hangGuard = 60 * time.Second

// tokens is a TokenSource handing out one token, counting invalidations.
type tokens struct {
	mu          sync.Mutex
	value       string
	invalidated int
}

func (s *tokens) Token(context.Context) (auth.Token, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return auth.Token{Value: s.value, ExpiresOn: time.Now().Add(time.Hour)}, nil
}

func (s *tokens) Invalidate() {
	s.mu.Lock()
	s.invalidated++
	s.mu.Unlock()
}

type delivery struct {
	from string
	to   []string
	raw  []byte
}

// env is a dev identity provider and a dev SMTP server with STARTTLS.
type env struct {
	t      *testing.T
	idp    *devidp.Server
	srv    *devmail.SMTPServer
	caFile string

	mu         sync.Mutex
	deliveries []delivery
}

func newEnv(t *testing.T, configure func(*devmail.SMTPOptions)) *env {
	t.Helper()
	idp, err := devidp.Start(devidp.Options{Tenant: "contoso.example"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(idp.Close)
	e := &env{t: t, idp: idp}
	cert, caPEM := selfSigned(t)
	e.caFile = filepath.Join(t.TempDir(), "smtp-ca.pem")
	if err := os.WriteFile(e.caFile, caPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	opts := devmail.SMTPOptions{
		TLSConfig: &tls.Config{Certificates: []tls.Certificate{cert}},
		ValidateToken: func(tok string) (string, error) {
			c, err := idp.Validate(tok, ScopeSMTPApp)
			if err != nil {
				return "", err
			}
			return c.Email, nil
		},
		Deliver: func(from string, to []string, raw []byte) error {
			e.mu.Lock()
			e.deliveries = append(e.deliveries, delivery{from, to, raw})
			e.mu.Unlock()
			return nil
		},
		Logger: zaptest.NewLogger(t),
	}
	if configure != nil {
		configure(&opts)
	}
	srv, err := devmail.StartSMTP(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	e.srv = srv
	return e
}

func (e *env) delivered() []delivery {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]delivery(nil), e.deliveries...)
}

// token mints an Outlook token for email (ttl < 0: expired).
func (e *env) token(email string, ttl time.Duration) *tokens {
	e.t.Helper()
	tok, err := e.idp.Mint(email, ScopeSMTPApp, ttl)
	if err != nil {
		e.t.Fatal(err)
	}
	return &tokens{value: tok}
}

// transport makes a transport against the dev server; opts fields that
// are zero get the defaults of the environment.
func (e *env) transport(opts Options) *Transport {
	e.t.Helper()
	host, port, _ := net.SplitHostPort(e.srv.Addr())
	opts.Host = host
	if opts.Port == 0 {
		opts.Port = atoi(port)
	}
	if opts.CAFile == "" {
		opts.CAFile = e.caFile
	}
	if opts.Tokens == nil && opts.Password == "" {
		opts.Tokens = e.token(billing, 0)
	}
	if opts.Logger == nil {
		opts.Logger = zaptest.NewLogger(e.t)
	}
	tr, err := New(opts)
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { tr.Close() })
	return tr
}

func atoi(s string) int {
	n := 0
	for _, r := range s {
		n = n*10 + int(r-'0')
	}
	return n
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), hangGuard)
	t.Cleanup(cancel)
	return c
}

func simpleJob(id string) *mailjob.Job {
	return &mailjob.Job{
		JobID:   id,
		From:    billing,
		To:      []mailjob.Recipient{{Address: "ap@customer.example", Name: "Customer, Accounts Payable"}},
		Subject: "Invoice 2026-0142",
		Text:    "Dear customer,\n\nplease find the invoice attached.\n.\n.. two dots\n",
	}
}

// wantErr checks err's kind and reason code and returns the *outbound.Error.
func wantErr(t *testing.T, err error, kind outbound.Kind, reason string) *outbound.Error {
	t.Helper()
	var oe *outbound.Error
	if !errors.As(err, &oe) {
		t.Fatalf("error %v (%T), want *outbound.Error %s/%s", err, err, kind, reason)
	}
	if oe.Kind != kind || oe.ReasonCode != reason {
		t.Fatalf("error %v: kind %s reason %s, want %s/%s", err, oe.Kind, oe.ReasonCode, kind, reason)
	}
	return oe
}

func TestSendSimple(t *testing.T) {
	e := newEnv(t, nil)
	tr := e.transport(Options{})
	job := simpleJob("erp-invoice-2026-0142")
	res, err := tr.Send(ctx(t), job, nil)
	if err != nil {
		t.Fatal(err)
	}
	wantID := outbound.MessageID(job.JobID, job.From)
	if res.InternetMessageID != wantID || res.AlreadySent || res.Requests < 7 {
		t.Errorf("result %+v, want Message-ID %s, not already sent, the commands counted", res, wantID)
	}
	got := e.delivered()
	if len(got) != 1 {
		t.Fatalf("%d deliveries", len(got))
	}
	d := got[0]
	if d.from != billing || len(d.to) != 1 || d.to[0] != "ap@customer.example" {
		t.Errorf("envelope %s → %v", d.from, d.to)
	}
	msg, err := mail.ReadMessage(bytes.NewReader(d.raw))
	if err != nil {
		t.Fatal(err)
	}
	h := msg.Header
	for k, want := range map[string]string{
		"From":                      "<" + billing + ">",
		"To":                        `"Customer, Accounts Payable" <ap@customer.example>`,
		"Subject":                   "Invoice 2026-0142",
		"Message-Id":                wantID,
		"Mime-Version":              "1.0",
		"Content-Transfer-Encoding": "quoted-printable",
	} {
		if v := h.Get(k); v != want {
			t.Errorf("%s: %q, want %q", k, v, want)
		}
	}
	if date, err := h.Date(); err != nil || time.Since(date) > time.Hour {
		t.Errorf("Date %q: %v", h.Get("Date"), err)
	}
	body, _ := io.ReadAll(quotedprintable.NewReader(msg.Body))
	if want := strings.ReplaceAll(job.Text, "\n", "\r\n"); string(body) != want {
		t.Errorf("body %q, want %q", body, want)
	}
	for _, line := range strings.Split(string(d.raw), "\r\n") {
		if len(line) > 998 {
			t.Errorf("line of %d bytes", len(line))
		}
	}

	// The same job again: found, not sent twice.
	res2, err := tr.Send(ctx(t), job, nil)
	if err != nil || !res2.AlreadySent || res2.InternetMessageID != wantID {
		t.Errorf("second Send: %+v, %v; want AlreadySent", res2, err)
	}
	if n := len(e.delivered()); n != 1 {
		t.Errorf("%d deliveries after the second Send", n)
	}
}

// patternReader yields n pseudo-random bytes from a seed, without
// holding them.
func patternReader(seed uint64, n int64) io.Reader {
	return io.LimitReader(mrand.NewChaCha8([32]byte{byte(seed), byte(seed >> 8)}), n)
}

func patternSum(t *testing.T, seed uint64, n int64) [32]byte {
	h := sha256.New()
	if _, err := io.Copy(h, patternReader(seed, n)); err != nil {
		t.Fatal(err)
	}
	return [32]byte(h.Sum(nil))
}

type readCloser struct {
	io.Reader
	closed *atomic.Int32
}

func (r readCloser) Close() error { r.closed.Add(1); return nil }

// objects serves pattern objects: the object's name is its seed.
func objects(closed *atomic.Int32) outbound.Attachments {
	return func(_ context.Context, ref mailjob.ObjectRef) (io.ReadCloser, error) {
		if ref.Name == "missing" {
			return nil, errors.New("nats: object not found")
		}
		return readCloser{patternReader(uint64(atoi(ref.Name)), ref.Size), closed}, nil
	}
}

const bigSize = 20 << 20

func richJob() *mailjob.Job {
	return &mailjob.Job{
		JobID:   "erp-invoice-2026-0143",
		From:    billing,
		To:      []mailjob.Recipient{{Address: "ap@customer.example", Name: "Müller & Søn, Crédit"}},
		Cc:      []mailjob.Recipient{{Address: "controller@customer.example", Name: "Jürgen \"JJ\" Jäger"}},
		Bcc:     []mailjob.Recipient{{Address: "archive@contoso.example"}, {Address: "AP@customer.example"}},
		ReplyTo: []mailjob.Recipient{{Address: "billing-replies@contoso.example", Name: "Billing"}},
		Subject: "Rechnung 2026-0143 für Müller – 請求書 " + strings.Repeat("lang ", 30),
		Text:    "Guten Tag,\n\nanbei die Rechnung.\n",
		HTML:    `<p>Guten Tag,</p><img src="cid:logo@contoso"><p>anbei die Rechnung – ✓</p>`,
		Attachments: []mailjob.Attachment{
			{Filename: "logo.png", ContentType: "image/png", ContentID: "logo@contoso", Inline: true,
				ContentBase64: "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJ"},
			{Filename: "Rechnung Müller 2026-0143 mit einem recht langen Dateinamen.pdf", ContentType: "application/pdf",
				Object: &mailjob.ObjectRef{Bucket: "mailpipe-attachments", Name: "7", Size: bigSize}},
			{Filename: "positions.csv", ContentType: "text/csv; charset=utf-8",
				ContentBase64: "YSxiCjEsMgo="},
		},
		Headers: map[string]string{
			"X-ERP-Document": "INV-2026-0143",
			"X-ERP-Customer": "Müller GmbH",
		},
		Importance: mailjob.ImportanceHigh,
	}
}

func TestSendRich(t *testing.T) {
	e := newEnv(t, nil)
	tr := e.transport(Options{})
	job := richJob()
	var closed atomic.Int32
	res, err := tr.Send(ctx(t), job, objects(&closed))
	if err != nil {
		t.Fatal(err)
	}
	if closed.Load() != 1 {
		t.Errorf("object reader closed %d times, want 1", closed.Load())
	}
	got := e.delivered()
	if len(got) != 1 {
		t.Fatalf("%d deliveries", len(got))
	}
	d := got[0]
	// Bcc: delivered (envelope), duplicates once, but not in the header.
	wantRcpts := "ap@customer.example,controller@customer.example,archive@contoso.example"
	if strings.Join(d.to, ",") != wantRcpts {
		t.Errorf("envelope recipients %v, want %s", d.to, wantRcpts)
	}
	if bytes.Contains(d.raw, []byte("archive@contoso.example")) || bytes.Contains(bytes.ToLower(d.raw[:bytes.Index(d.raw, []byte("\r\n\r\n"))]), []byte("\nbcc:")) {
		t.Error("the Bcc recipient appears in the message")
	}
	for i, line := range strings.Split(string(d.raw), "\r\n") {
		if len(line) > 998 {
			t.Fatalf("line %d has %d bytes", i, len(line))
		}
	}

	msg, err := mail.ReadMessage(bytes.NewReader(d.raw))
	if err != nil {
		t.Fatal(err)
	}
	h := msg.Header
	dec := new(mime.WordDecoder)
	if s, err := dec.DecodeHeader(h.Get("Subject")); err != nil || s != job.Subject {
		t.Errorf("Subject %q decodes to %q (%v), want %q", h.Get("Subject"), s, err, job.Subject)
	}
	if !isASCII(h.Get("Subject")) {
		t.Error("Subject not encoded")
	}
	to, err := h.AddressList("To")
	if err != nil || len(to) != 1 || to[0].Name != job.To[0].Name || to[0].Address != "ap@customer.example" {
		t.Errorf("To %q → %v, %v", h.Get("To"), to, err)
	}
	cc, err := h.AddressList("Cc")
	if err != nil || len(cc) != 1 || cc[0].Name != job.Cc[0].Name {
		t.Errorf("Cc %q → %v, %v", h.Get("Cc"), cc, err)
	}
	if rt, err := h.AddressList("Reply-To"); err != nil || len(rt) != 1 || rt[0].Address != "billing-replies@contoso.example" {
		t.Errorf("Reply-To %q", h.Get("Reply-To"))
	}
	if h.Get("Message-Id") != outbound.MessageID(job.JobID, job.From) || res.InternetMessageID != h.Get("Message-Id") {
		t.Errorf("Message-ID %q, result %q", h.Get("Message-Id"), res.InternetMessageID)
	}
	if h.Get("X-Erp-Document") != "INV-2026-0143" {
		t.Errorf("X-ERP-Document %q", h.Get("X-Erp-Document"))
	}
	if s, _ := dec.DecodeHeader(h.Get("X-Erp-Customer")); s != "Müller GmbH" {
		t.Errorf("X-ERP-Customer %q", h.Get("X-Erp-Customer"))
	}
	if h.Get("Importance") != "high" {
		t.Errorf("Importance %q", h.Get("Importance"))
	}

	// Structure: mixed(related(alternative(text, html), logo), pdf, csv).
	mixed := parts(t, h.Get("Content-Type"), msg.Body, "multipart/mixed")
	if len(mixed) != 3 {
		t.Fatalf("multipart/mixed has %d parts", len(mixed))
	}
	related := parts(t, mixed[0].ct, bytes.NewReader(mixed[0].body), "multipart/related")
	if len(related) != 2 {
		t.Fatalf("multipart/related has %d parts", len(related))
	}
	alt := parts(t, related[0].ct, bytes.NewReader(related[0].body), "multipart/alternative")
	if len(alt) != 2 || !strings.HasPrefix(alt[0].ct, "text/plain") || !strings.HasPrefix(alt[1].ct, "text/html") {
		t.Fatalf("alternative parts %v", alt)
	}
	if string(alt[0].body) != strings.ReplaceAll(job.Text, "\n", "\r\n") || string(alt[1].body) != job.HTML {
		t.Errorf("bodies %q / %q", alt[0].body, alt[1].body)
	}
	logo := related[1]
	pixel, _ := base64.StdEncoding.DecodeString(job.Attachments[0].ContentBase64)
	if logo.header.Get("Content-Id") != "<logo@contoso>" || !strings.HasPrefix(logo.header.Get("Content-Disposition"), "inline") ||
		!bytes.Equal(logo.body, pixel) {
		t.Errorf("inline image: %v, %d bytes", logo.header, len(logo.body))
	}
	pdf := mixed[1]
	if pdf.filename != job.Attachments[1].Filename {
		t.Errorf("filename %q, want %q", pdf.filename, job.Attachments[1].Filename)
	}
	if int64(len(pdf.body)) != bigSize || sha256.Sum256(pdf.body) != patternSum(t, 7, bigSize) {
		t.Errorf("the 20 MB attachment arrived with %d bytes, or changed", len(pdf.body))
	}
	csv := mixed[2]
	if csv.filename != "positions.csv" || string(csv.body) != "a,b\n1,2\n" || !strings.Contains(csv.ct, "charset=utf-8") {
		t.Errorf("csv: %q %q %q", csv.filename, csv.ct, csv.body)
	}
}

type part struct {
	header   textproto.MIMEHeader
	ct       string
	filename string
	body     []byte
}

func (p part) String() string { return p.ct }

// parts reads a multipart body, decoding each part's transfer encoding.
func parts(t *testing.T, contentType string, body io.Reader, want string) []part {
	t.Helper()
	mt, params, err := mime.ParseMediaType(contentType)
	if err != nil || mt != want {
		t.Fatalf("Content-Type %q (%v), want %s", contentType, err, want)
	}
	mr := multipart.NewReader(body, params["boundary"])
	var out []part
	for {
		p, err := mr.NextRawPart()
		if err == io.EOF {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		var r io.Reader = p
		switch strings.ToLower(p.Header.Get("Content-Transfer-Encoding")) {
		case "base64":
			r = base64.NewDecoder(base64.StdEncoding, p)
		case "quoted-printable":
			r = quotedprintable.NewReader(p)
		}
		b, err := io.ReadAll(r)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, part{header: p.Header, ct: p.Header.Get("Content-Type"), filename: p.FileName(), body: b})
	}
}

func TestSendAttachmentFailures(t *testing.T) {
	e := newEnv(t, nil)
	tr := e.transport(Options{})
	var closed atomic.Int32

	job := simpleJob("missing-object")
	job.Attachments = []mailjob.Attachment{{Filename: "a.pdf", ContentType: "application/pdf",
		Object: &mailjob.ObjectRef{Bucket: "b", Name: "missing"}}}
	for _, c := range []struct {
		err    error
		kind   outbound.Kind
		reason string
	}{
		{fmt.Errorf("object %q is not in bucket b: %w", "missing", outbound.ErrAttachmentNotFound), outbound.Permanent, mailjob.ReasonAttachmentNotFound},
		{fmt.Errorf("sha256 differs: %w", outbound.ErrAttachmentMismatch), outbound.Permanent, mailjob.ReasonAttachmentMismatch},
		{&outbound.Error{Kind: outbound.Permanent, ReasonCode: mailjob.ReasonAttachmentNotFound, Err: errors.New("gone")}, outbound.Permanent, mailjob.ReasonAttachmentNotFound},
		{errors.New("nats: timeout"), outbound.Transient, mailjob.ReasonInternal},
	} {
		_, err := tr.Send(ctx(t), job, func(context.Context, mailjob.ObjectRef) (io.ReadCloser, error) { return nil, c.err })
		wantErr(t, err, c.kind, c.reason)
		// A reader that fails halfway: the same, and the partial
		// message is abandoned.
		_, err = tr.Send(ctx(t), job, func(context.Context, mailjob.ObjectRef) (io.ReadCloser, error) {
			return readCloser{io.MultiReader(patternReader(1, 100_000), iotest.ErrReader(c.err)), &closed}, nil
		})
		wantErr(t, err, c.kind, c.reason)
	}

	// An object shorter than the job says: the message is abandoned
	// before its end, nothing is delivered.
	job = simpleJob("short-object")
	job.Attachments = []mailjob.Attachment{{Filename: "a.bin", ContentType: "application/octet-stream",
		Object: &mailjob.ObjectRef{Bucket: "b", Name: "3", Size: 1 << 20}}}
	_, err := tr.Send(ctx(t), job, func(_ context.Context, ref mailjob.ObjectRef) (io.ReadCloser, error) {
		return readCloser{patternReader(3, ref.Size/2), &closed}, nil
	})
	wantErr(t, err, outbound.Permanent, mailjob.ReasonAttachmentMismatch)
	if n := len(e.delivered()); n != 0 {
		t.Errorf("%d deliveries of abandoned messages", n)
	}
	// Not remembered as sent: a corrected attempt goes out.
	if _, err := tr.Send(ctx(t), job, objects(&closed)); err != nil {
		t.Fatal(err)
	}
	if n := len(e.delivered()); n != 1 {
		t.Errorf("%d deliveries", n)
	}
}

func TestBadToken(t *testing.T) {
	e := newEnv(t, nil)
	for _, tc := range []struct {
		name string
		tok  func() *tokens
	}{
		{"expired", func() *tokens { return e.token(billing, -time.Minute) }},
		{"other mailbox", func() *tokens { return e.token("someone@contoso.example", 0) }},
		{"garbage", func() *tokens { return &tokens{value: "not-a-jwt"} }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tok := tc.tok()
			tr := e.transport(Options{Tokens: tok})
			_, err := tr.Send(ctx(t), simpleJob("bad-token-"+strings.ReplaceAll(tc.name, " ", "-")), nil)
			oe := wantErr(t, err, outbound.Auth, mailjob.ReasonAuthFailed)
			var re *ReplyError
			if !errors.As(err, &re) || re.Reply.Code != 535 || re.Reply.Enhanced != "5.7.3" {
				t.Fatalf("error %v, want the 535 5.7.3 reply", err)
			}
			msg := oe.Error()
			for _, want := range []string{"Set-CASMailbox", "-SmtpClientAuthenticationDisabled $false", "SMTP.SendAsApp", "error challenge", `"status":"401"`} {
				if !strings.Contains(msg, want) {
					t.Errorf("error %q lacks %q", msg, want)
				}
			}
			if tok.invalidated != 1 {
				t.Errorf("token invalidated %d times, want 1", tok.invalidated)
			}
			if strings.Contains(msg, tok.value) {
				t.Error("the error contains the token")
			}
		})
	}
	if n := len(e.delivered()); n != 0 {
		t.Errorf("%d deliveries", n)
	}
}

func TestAuthDisabled(t *testing.T) {
	e := newEnv(t, func(o *devmail.SMTPOptions) { o.AuthDisabled = []string{billing} })
	tr := e.transport(Options{})
	_, err := tr.Send(ctx(t), simpleJob("auth-disabled"), nil)
	oe := wantErr(t, err, outbound.Auth, mailjob.ReasonAuthFailed)
	if !strings.Contains(oe.Error(), "5.7.139") || !strings.Contains(oe.Error(), "Set-CASMailbox -Identity <mailbox> -SmtpClientAuthenticationDisabled $false") {
		t.Errorf("error %q lacks the reply or the hint", oe)
	}
	if _, err := tr.CheckSendAs(ctx(t), billing); err == nil {
		t.Error("CheckSendAs succeeded")
	}
}

func TestSendAsDenied(t *testing.T) {
	// A service account with a delegated-style token sends as the shared
	// mailbox billing@ without the Send As right.
	e := newEnv(t, nil)
	tr := e.transport(Options{Username: service, Tokens: e.token(service, 0)})
	_, err := tr.Send(ctx(t), simpleJob("send-as-mail"), nil)
	oe := wantErr(t, err, outbound.Auth, mailjob.ReasonSendAsDenied)
	if !strings.Contains(oe.Error(), "Add-RecipientPermission") {
		t.Errorf("error %q lacks the hint", oe)
	}
	if _, err := tr.CheckSendAs(ctx(t), billing); err == nil {
		t.Error("CheckSendAs succeeded although MAIL FROM is refused")
	} else {
		wantErr(t, err, outbound.Auth, mailjob.ReasonSendAsDenied)
	}
	// As itself it may send.
	text, err := tr.CheckSendAs(ctx(t), service)
	if err != nil || !strings.Contains(text, "no Send As right is needed") {
		t.Errorf("CheckSendAs(self) = %q, %v", text, err)
	}

	// Exchange Online checks the From header at the end of DATA: that is
	// a refusal too, not an unknown outcome; CheckSendAs passes but says
	// it could not verify Send As.
	e2 := newEnv(t, func(o *devmail.SMTPOptions) { o.DeferSendAsCheck = true })
	tr2 := e2.transport(Options{Username: service, Tokens: e2.token(service, 0)})
	_, err = tr2.Send(ctx(t), simpleJob("send-as-data"), nil)
	wantErr(t, err, outbound.Auth, mailjob.ReasonSendAsDenied)
	text, err = tr2.CheckSendAs(ctx(t), billing)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"STARTTLS", "authenticated as " + service + " with XOAUTH2", "MAIL FROM:<" + billing + "> accepted", "nothing sent", "Not verified: the Send As right"} {
		if !strings.Contains(text, want) {
			t.Errorf("CheckSendAs = %q, lacks %q", text, want)
		}
	}
	if n := len(e.delivered()) + len(e2.delivered()); n != 0 {
		t.Errorf("%d deliveries", n)
	}
}

func TestDropAfterDataIsAmbiguous(t *testing.T) {
	e := newEnv(t, nil)
	tr := e.transport(Options{})
	// The server takes the mail, then the connection breaks before the
	// 250: the client cannot know.
	e.srv.InjectFault(devmail.SMTPFault{At: devmail.SMTPAtDataEnd, Drop: true, Deliver: true})
	job := simpleJob("dropped")
	_, err := tr.Send(ctx(t), job, nil)
	wantErr(t, err, outbound.Ambiguous, mailjob.ReasonGraphUnavailable)
	if !errors.Is(err, ErrMaybeSent) {
		t.Errorf("error %v does not wrap ErrMaybeSent", err)
	}
	// Not sent again, not even tried.
	res, err := tr.Send(ctx(t), job, nil)
	wantErr(t, err, outbound.Ambiguous, mailjob.ReasonGraphUnavailable)
	if res.InternetMessageID != outbound.MessageID(job.JobID, job.From) || res.Requests != 0 {
		t.Errorf("second attempt: %+v", res)
	}
	if n := len(e.delivered()); n != 1 {
		t.Errorf("%d deliveries, want exactly 1", n)
	}

	// Silent after the end of the message: the same.
	e.srv.InjectFault(devmail.SMTPFault{At: devmail.SMTPAtDataEnd, Hang: true})
	tr2 := e.transport(Options{Timeout: 300 * time.Millisecond})
	_, err = tr2.Send(ctx(t), simpleJob("silent-after-data"), nil)
	wantErr(t, err, outbound.Ambiguous, mailjob.ReasonGraphUnavailable)
}

func TestTransientReplies(t *testing.T) {
	e := newEnv(t, nil)
	tr := e.transport(Options{})
	for _, f := range []devmail.SMTPFault{
		{At: devmail.SMTPAtGreeting, Reply: "421 4.3.2 Service not available, closing transmission channel"},
		{At: devmail.SMTPAtMail, Reply: "421 4.3.2 Service not available, closing transmission channel"},
		{At: devmail.SMTPAtRcpt, Reply: "450 4.2.1 Mailbox temporarily unavailable"},
		{At: devmail.SMTPAtRcpt, Reply: "452 4.5.3 Too many recipients"},
		{At: devmail.SMTPAtDataEnd, Reply: "451 4.4.4 Temporary server error. Please try again later"},
		{At: devmail.SMTPAtRcpt, Drop: true},
	} {
		e.srv.InjectFault(f)
		_, err := tr.Send(ctx(t), simpleJob("transient"), nil)
		wantErr(t, err, outbound.Transient, mailjob.ReasonGraphUnavailable)
	}
	if n := len(e.delivered()); n != 0 {
		t.Fatalf("%d deliveries", n)
	}
	// After the faults the job goes out, once.
	if _, err := tr.Send(ctx(t), simpleJob("transient"), nil); err != nil {
		t.Fatal(err)
	}
	if n := len(e.delivered()); n != 1 {
		t.Errorf("%d deliveries", n)
	}
}

func TestPermanentAndThrottledReplies(t *testing.T) {
	e := newEnv(t, nil)
	tr := e.transport(Options{})
	for i, c := range []struct {
		fault  devmail.SMTPFault
		kind   outbound.Kind
		reason string
	}{
		{devmail.SMTPFault{At: devmail.SMTPAtDataEnd, Reply: "552 5.3.4 Message size exceeds fixed maximum message size"}, outbound.Permanent, mailjob.ReasonMessageTooLarge},
		{devmail.SMTPFault{At: devmail.SMTPAtRcpt, Reply: "550 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP address lookup"}, outbound.Permanent, mailjob.ReasonRecipientRejected},
		{devmail.SMTPFault{At: devmail.SMTPAtDataEnd, Reply: "554 5.2.0 STOREDRV.Submission.Exception:SubmissionQuotaExceededException; Failed to process message due to a permanent exception with message [BeginDiagnosticData]Message submission rate for this client has exceeded the configured limit.[EndDiagnosticData]"}, outbound.Throttled, mailjob.ReasonThrottled},
		{devmail.SMTPFault{At: devmail.SMTPAtDataEnd, Reply: "554 5.2.0 STOREDRV.Submission.Exception:SendAsDeniedException.MapiExceptionSendAsDenied; Failed to process message due to a permanent exception with message Cannot submit message."}, outbound.Auth, mailjob.ReasonSendAsDenied},
	} {
		e.srv.InjectFault(c.fault)
		_, err := tr.Send(ctx(t), simpleJob("refused-"+string(rune('a'+i))), nil)
		oe := wantErr(t, err, c.kind, c.reason)
		if c.kind == outbound.Throttled && oe.RetryAfter <= 0 {
			t.Errorf("throttled without RetryAfter: %v", oe)
		}
	}

	// A size limit announced by the server: refused at MAIL FROM with the
	// SIZE estimate, before any of the message is sent.
	small := newEnv(t, func(o *devmail.SMTPOptions) { o.MaxMessageSize = 64 << 10 })
	job := simpleJob("too-large")
	job.Attachments = []mailjob.Attachment{{Filename: "big.bin", ContentType: "application/octet-stream",
		Object: &mailjob.ObjectRef{Bucket: "b", Name: "5", Size: 1 << 20}}}
	var closed atomic.Int32
	_, err := small.transport(Options{}).Send(ctx(t), job, objects(&closed))
	var re *ReplyError
	wantErr(t, err, outbound.Permanent, mailjob.ReasonMessageTooLarge)
	if !errors.As(err, &re) || re.Step != stepMail || closed.Load() != 0 {
		t.Errorf("refused at %v (object opened %d times), want at MAIL FROM before the object is read", err, closed.Load())
	}
	if n := len(e.delivered()) + len(small.delivered()); n != 0 {
		t.Errorf("%d deliveries", n)
	}
}

// TestStreamingMemory sends a 20 MB attachment whose size the job does
// not state (so the SIZE estimate passes) to a server whose limit is
// smaller: the server discards the data and answers 552 after it. The
// allocations of the whole exchange stay far below the attachment's
// size: it is streamed, not held.
func TestStreamingMemory(t *testing.T) {
	e := newEnv(t, func(o *devmail.SMTPOptions) { o.MaxMessageSize = 1 << 20 })
	tr := e.transport(Options{})
	job := simpleJob("streamed")
	job.Attachments = []mailjob.Attachment{{Filename: "big.bin", ContentType: "application/octet-stream",
		Object: &mailjob.ObjectRef{Bucket: "b", Name: "9"}}}
	att := func(context.Context, mailjob.ObjectRef) (io.ReadCloser, error) {
		return io.NopCloser(patternReader(9, bigSize)), nil
	}
	// Warm up (TLS, token parsing, pools) with a small send.
	if _, err := tr.Send(ctx(t), simpleJob("warm-up"), nil); err != nil {
		t.Fatal(err)
	}
	runtime.GC()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	_, err := tr.Send(ctx(t), job, att)
	runtime.ReadMemStats(&after)
	wantErr(t, err, outbound.Permanent, mailjob.ReasonMessageTooLarge)
	const limit = 10 << 20 // loose (the race detector adds some): one copy of the attachment would be 20 MB, its encoding 27 MB
	alloc := after.TotalAlloc - before.TotalAlloc
	t.Logf("allocated %.1f MB while streaming %d MB", float64(alloc)/(1<<20), bigSize>>20)
	if alloc > limit {
		t.Errorf("sending a %d MB attachment allocated %.1f MB (client and server together), want < %d MB",
			bigSize>>20, float64(alloc)/(1<<20), limit>>20)
	}
}

func TestSilentServer(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	// It accepts connections and never says a word.
	var mu sync.Mutex
	var accepted []net.Conn
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			accepted = append(accepted, c)
			mu.Unlock()
		}
	}()
	defer func() {
		ln.Close()
		mu.Lock()
		for _, c := range accepted {
			c.Close()
		}
		mu.Unlock()
	}()
	host, port, _ := net.SplitHostPort(ln.Addr().String())
	tr, err := New(Options{Host: host, Port: atoi(port), Tokens: &tokens{value: "x"}, Timeout: 300 * time.Millisecond, Logger: zaptest.NewLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	_, err = tr.Send(ctx(t), simpleJob("silent"), nil)
	oe := wantErr(t, err, outbound.Transient, mailjob.ReasonGraphUnavailable)
	if !strings.Contains(oe.Error(), "no response within") {
		t.Errorf("error %q", oe)
	}
	if _, err := tr.CheckSendAs(ctx(t), billing); outbound.KindOf(err) != outbound.Transient {
		t.Errorf("CheckSendAs: %v", err)
	}

	// Canceling the context ends a wait at once as well.
	tr2, _ := New(Options{Host: host, Port: atoi(port), Tokens: &tokens{value: "x"}, Timeout: hangGuard})
	defer tr2.Close()
	c, cancel := context.WithCancel(ctx(t))
	time.AfterFunc(100*time.Millisecond, cancel)
	_, err = tr2.Send(c, simpleJob("canceled"), nil)
	wantErr(t, err, outbound.Transient, mailjob.ReasonGraphUnavailable)
	if !errors.Is(err, context.Canceled) {
		t.Errorf("error %v does not wrap context.Canceled", err)
	}
}

func TestSecurityModes(t *testing.T) {
	// A server without TLS: STARTTLS required by default, so nothing is
	// sent; insecure mode works (and AUTH PLAIN with a password).
	e := newEnv(t, func(o *devmail.SMTPOptions) {
		o.TLSConfig = nil
		o.Users = []devmail.User{{Address: billing, Password: "s3cret"}}
	})
	_, err := e.transport(Options{}).Send(ctx(t), simpleJob("no-starttls"), nil)
	oe := wantErr(t, err, outbound.Transient, mailjob.ReasonGraphUnavailable)
	if !strings.Contains(oe.Error(), "does not offer STARTTLS") {
		t.Errorf("error %q", oe)
	}
	if _, err := e.transport(Options{Security: SecurityInsecure}).Send(ctx(t), simpleJob("insecure"), nil); err != nil {
		t.Fatal(err)
	}
	tr := e.transport(Options{Security: SecurityInsecure, Username: billing, Password: "s3cret"})
	if _, err := tr.Send(ctx(t), simpleJob("plain"), nil); err != nil {
		t.Fatal(err)
	}
	tr = e.transport(Options{Security: SecurityInsecure, Username: billing, Password: "wrong"})
	_, err = tr.Send(ctx(t), simpleJob("plain-wrong"), nil)
	if oe := wantErr(t, err, outbound.Auth, mailjob.ReasonAuthFailed); !strings.Contains(oe.Error(), hintPassword) || strings.Contains(oe.Error(), "wrong") {
		t.Errorf("error %q", oe)
	}

	// No authentication at all, to a relay that accepts that.
	anon := newEnv(t, func(o *devmail.SMTPOptions) { o.AllowAnonymous = true })
	host, port, _ := net.SplitHostPort(anon.srv.Addr())
	tr, err = New(Options{Host: host, Port: atoi(port), CAFile: anon.caFile, Logger: zaptest.NewLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	if _, err := tr.Send(ctx(t), simpleJob("anonymous"), nil); err != nil {
		t.Fatal(err)
	}
	if text, err := tr.CheckSendAs(ctx(t), billing); err != nil || !strings.Contains(text, "not authenticated") {
		t.Errorf("CheckSendAs without auth: %q, %v", text, err)
	}
	// Without authentication to a server that wants it: 530 at MAIL FROM.
	strict := newEnv(t, nil)
	host, port, _ = net.SplitHostPort(strict.srv.Addr())
	tr, err = New(Options{Host: host, Port: atoi(port), CAFile: strict.caFile})
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	_, err = tr.Send(ctx(t), simpleJob("anonymous-refused"), nil)
	wantErr(t, err, outbound.Auth, mailjob.ReasonAuthFailed)

	// Implicit TLS.
	e2 := newEnv(t, func(o *devmail.SMTPOptions) { o.ImplicitTLS = true })
	text, err := e2.transport(Options{Security: SecurityTLS}).CheckSendAs(ctx(t), billing)
	if err != nil || !strings.Contains(text, "implicit TLS") {
		t.Errorf("CheckSendAs over implicit TLS: %q, %v", text, err)
	}
	// An untrusted certificate.
	empty := filepath.Join(t.TempDir(), "other-ca.pem")
	_, otherCA := selfSigned(t)
	os.WriteFile(empty, otherCA, 0o600)
	_, err = e2.transport(Options{Security: SecurityTLS, CAFile: empty}).Send(ctx(t), simpleJob("untrusted"), nil)
	if oe := wantErr(t, err, outbound.Transient, mailjob.ReasonGraphUnavailable); !strings.Contains(oe.Error(), "not trusted") {
		t.Errorf("error %q", oe)
	}
	if n := len(e2.delivered()); n != 0 {
		t.Errorf("%d deliveries", n)
	}
}

func TestNew(t *testing.T) {
	tok := &tokens{value: "x"}
	for _, o := range []Options{
		{Tokens: tok},
		{Host: "h", Username: "u"},
		{Host: "h", Tokens: tok, CertFile: "c.pem"},
		{Host: "h", Tokens: tok, Password: "p", Username: "u"},
		{Host: "h", Password: "p"},
		{Host: "h", Tokens: tok, Security: "ssl"},
		{Host: "h", Tokens: tok, CAFile: filepath.Join(t.TempDir(), "missing.pem")},
	} {
		if _, err := New(o); err == nil {
			t.Errorf("New(%+v) succeeded", o)
		}
	}
	tr, err := New(Options{Host: "smtp.office365.com", Tokens: tok})
	if err != nil || tr.addr != "smtp.office365.com:587" || tr.opts.Timeout != DefaultTimeout {
		t.Errorf("defaults: %v, %+v", err, tr)
	}
	tr, _ = New(Options{Host: "h", Tokens: tok, Security: SecurityTLS})
	if tr.addr != "h:465" {
		t.Errorf("implicit TLS port: %s", tr.addr)
	}
	// One attempt per job at a time.
	release, _, err := tr.begin("j")
	if release == nil || err != nil {
		t.Fatal(err)
	}
	if r2, _, err := tr.begin("j"); r2 != nil || outbound.KindOf(err) != outbound.Transient {
		t.Errorf("a second attempt of a job in flight was let through: %v", err)
	}
	release()
	tr.Close()
	_, err = tr.Send(context.Background(), simpleJob("closed"), nil)
	wantErr(t, err, outbound.Transient, mailjob.ReasonInternal)
}

func selfSigned(t *testing.T) (tls.Certificate, []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(time.Now().UnixNano()),
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
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key},
		pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}
