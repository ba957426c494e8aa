package smtp

import (
	"bytes"
	"mime"
	"net/mail"
	"strings"
	"testing"

	"github.com/mailpipe/mailpipe/internal/outbound"
	"github.com/mailpipe/mailpipe/pkg/mailjob"
)

func reply(t *testing.T, line string) *Reply {
	t.Helper()
	code, text, _ := strings.Cut(line, " ")
	r := &Reply{}
	for _, r0 := range code {
		r.Code = r.Code*10 + int(r0-'0')
	}
	if enh, rest, ok := splitEnhanced(text, r.Code); ok {
		r.Enhanced, text = enh, rest
	}
	r.Lines = []string{text}
	return r
}

func TestClassifyReply(t *testing.T) {
	for _, c := range []struct {
		step, line string
		kind       outbound.Kind
		reason     string
		hint       string
	}{
		{stepGreeting, "421 4.3.2 Service not available, closing transmission channel", outbound.Transient, mailjob.ReasonGraphUnavailable, ""},
		{stepRcpt, "450 4.2.1 Mailbox temporarily unavailable", outbound.Transient, mailjob.ReasonGraphUnavailable, ""},
		{stepDataEnd, "451 4.4.4 Temporary server error. Please try again later", outbound.Transient, mailjob.ReasonGraphUnavailable, ""},
		{stepRcpt, "452 4.5.3 Too many recipients", outbound.Transient, mailjob.ReasonGraphUnavailable, ""},
		{stepAuth, "454 4.7.0 Temporary authentication failure", outbound.Transient, mailjob.ReasonGraphUnavailable, ""},
		{stepAuth, "535 5.7.3 Authentication unsuccessful", outbound.Auth, mailjob.ReasonAuthFailed, "Set-CASMailbox"},
		{stepAuth, "535 5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled for the Tenant. Visit https://aka.ms/smtp_auth_disabled for more information.", outbound.Auth, mailjob.ReasonAuthFailed, "-SmtpClientAuthenticationDisabled $false"},
		{stepAuth, "535 5.7.139 Authentication unsuccessful, the user credentials were incorrect.", outbound.Auth, mailjob.ReasonAuthFailed, "Set-CASMailbox"},
		{stepMail, "530 5.7.57 Client not authenticated to send mail.", outbound.Auth, mailjob.ReasonAuthFailed, ""},
		{stepMail, "550 5.7.60 SMTP; Client does not have permissions to send as this sender", outbound.Auth, mailjob.ReasonSendAsDenied, "Add-RecipientPermission"},
		{stepDataEnd, "550 5.7.60 SMTP; Client does not have permissions to send as this sender", outbound.Auth, mailjob.ReasonSendAsDenied, "SendAs"},
		{stepDataEnd, "554 5.2.0 STOREDRV.Submission.Exception:SendAsDeniedException.MapiExceptionSendAsDenied; Failed to process message", outbound.Auth, mailjob.ReasonSendAsDenied, ""},
		{stepDataEnd, "552 5.3.4 Message size exceeds fixed maximum message size", outbound.Permanent, mailjob.ReasonMessageTooLarge, ""},
		{stepMail, "552 5.3.4 Message size exceeds fixed maximum message size", outbound.Permanent, mailjob.ReasonMessageTooLarge, ""},
		{stepDataEnd, "554 5.3.4 Message too big for system", outbound.Permanent, mailjob.ReasonMessageTooLarge, ""},
		{stepRcpt, "550 5.1.1 User unknown", outbound.Permanent, mailjob.ReasonRecipientRejected, ""},
		{stepRcpt, "550 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP address lookup", outbound.Permanent, mailjob.ReasonRecipientRejected, ""},
		{stepRcpt, "550 5.7.1 Relaying denied", outbound.Permanent, mailjob.ReasonRecipientRejected, ""},
		{stepDataEnd, "554 5.2.0 STOREDRV.Submission.Exception:SubmissionQuotaExceededException; Failed to process message due to a permanent exception with message [BeginDiagnosticData]Message submission rate for this client has exceeded the configured limit.[EndDiagnosticData]", outbound.Throttled, mailjob.ReasonThrottled, ""},
		{stepDataEnd, "432 4.3.2 STOREDRV.ClientSubmit; sender thread limit exceeded", outbound.Throttled, mailjob.ReasonThrottled, ""},
		{stepDataEnd, "554 5.6.0 Invalid message content", outbound.Permanent, mailjob.ReasonInvalidJob, ""},
		{stepMail, "550 5.1.8 Access denied, bad outbound sender", outbound.Auth, mailjob.ReasonSendAsDenied, "restricted"},
		{stepMail, "501 5.1.7 Invalid address", outbound.Permanent, mailjob.ReasonInvalidJob, ""},
		{stepMail, "550 5.7.708 Service unavailable. Access denied, traffic not accepted from this IP.", outbound.Auth, mailjob.ReasonSendAsDenied, ""},
		{stepDataEnd, "554 5.2.0 STOREDRV.Submission.Exception:SomethingNewException; Failed", outbound.Transient, mailjob.ReasonGraphUnavailable, ""},
		{stepData, "503 5.5.1 Need RCPT command", outbound.Transient, mailjob.ReasonGraphUnavailable, ""},
		{stepRcpt, "552 5.5.3 Too many recipients", outbound.Permanent, mailjob.ReasonInvalidJob, ""},
	} {
		r := reply(t, c.line)
		e := classifyReply(c.step, "x@example.com", r, true)
		if e.Kind != c.kind || e.ReasonCode != c.reason {
			t.Errorf("%s %q: %s/%s, want %s/%s", c.step, c.line, e.Kind, e.ReasonCode, c.kind, c.reason)
		}
		if c.hint != "" && !strings.Contains(e.Error(), c.hint) {
			t.Errorf("%s %q: %q lacks hint %q", c.step, c.line, e.Error(), c.hint)
		}
		if e.Kind == outbound.Throttled && e.RetryAfter <= 0 {
			t.Errorf("%q: throttled without RetryAfter", c.line)
		}
	}
}

func TestSplitEnhanced(t *testing.T) {
	for _, c := range []struct {
		text      string
		code      int
		enh, rest string
	}{
		{"5.7.60 SMTP; Client", 550, "5.7.60", "SMTP; Client"},
		{"2.0.0 OK", 250, "2.0.0", "OK"},
		{"4.7.0 x", 550, "", "4.7.0 x"},
		{"smtp.example Hello", 250, "", "smtp.example Hello"},
		{"5.1.1234 x", 550, "", "5.1.1234 x"},
	} {
		enh, rest, _ := splitEnhanced(c.text, c.code)
		if enh != c.enh || rest != c.rest {
			t.Errorf("splitEnhanced(%q, %d) = %q, %q", c.text, c.code, enh, rest)
		}
	}
}

func TestDotWriter(t *testing.T) {
	var b bytes.Buffer
	d := newDotWriter(&b)
	for _, chunk := range []string{".first\r\n", "mid", "dle\r\n.", "split\r\n", "..\r\n", "end"} {
		d.Write([]byte(chunk))
	}
	b.WriteString(d.terminator())
	want := "..first\r\nmiddle\r\n..split\r\n...\r\nend\r\n.\r\n"
	if b.String() != want {
		t.Errorf("got %q, want %q", b.String(), want)
	}
}

func TestHeaderEncoding(t *testing.T) {
	dec := new(mime.WordDecoder)
	for _, v := range []string{
		"Invoice 2026-0142",
		"Rechnung für Müller",
		"請求書 " + strings.Repeat("長い件名 ", 60),
		strings.Repeat("x", 997),                                           // one long word: encoded so that it can be folded
		"looks =?utf-8?q?encoded?= but is not",                             // taken literally
		"tabs\tand  double  spaces " + strings.Repeat("word ", 40) + "end", // (trailing blanks are dropped by readers)
	} {
		enc := encodeText(v)
		field := foldField("Subject", enc)
		for _, line := range strings.Split(strings.TrimSuffix(field, "\r\n"), "\r\n") {
			if len(line) > 998 {
				t.Errorf("%q: line of %d bytes", v[:20], len(line))
			}
			if strings.TrimSpace(line) == "" {
				t.Errorf("%q: whitespace-only line", v[:20])
			}
		}
		msg, err := mail.ReadMessage(strings.NewReader(field + "\r\n"))
		if err != nil {
			t.Fatal(err)
		}
		got, err := dec.DecodeHeader(msg.Header.Get("Subject"))
		if err != nil || got != v {
			t.Errorf("round trip of %q: %q, %v", v, got, err)
		}
	}
}

func TestFormatParam(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		{"logo.png", "filename=logo.png"},
		{"Invoice 2026.pdf", `filename="Invoice 2026.pdf"`},
		{`a"b\c.txt`, `filename="a\"b\\c.txt"`},
		{"Müller.pdf", "filename*=utf-8''M%C3%BCller.pdf"},
	} {
		if got := formatParam("filename", c.in); got != c.want {
			t.Errorf("formatParam(%q) = %s, want %s", c.in, got, c.want)
		}
		_, params, err := mime.ParseMediaType("attachment; " + formatParam("filename", c.in))
		if err != nil || params["filename"] != c.in {
			t.Errorf("%q parses back as %q (%v)", c.in, params["filename"], err)
		}
	}
	long := strings.Repeat("Überweisung ", 20) + ".pdf"
	_, params, err := mime.ParseMediaType("attachment; " + formatParam("filename", long))
	if err != nil || params["filename"] != long {
		t.Errorf("continuations parse back as %q (%v)", params["filename"], err)
	}
}

func TestEnvelope(t *testing.T) {
	job := &mailjob.Job{
		JobID: "idn-1",
		From:  "rechnung@müller.example",
		To:    []mailjob.Recipient{{Address: "kunde@bücher.example"}},
		Cc:    []mailjob.Recipient{{Address: "Kunde@BÜCHER.example"}},
		Bcc:   []mailjob.Recipient{{Address: "jörg@example.com"}},
	}
	env, err := newEnvelope(job)
	if err != nil {
		t.Fatal(err)
	}
	if env.from != "rechnung@xn--mller-kva.example" || len(env.rcpts) != 2 || env.rcpts[0] != "kunde@xn--bcher-kva.example" || !env.utf8 {
		t.Errorf("envelope %+v", env)
	}
	if env.messageID != "<mailpipe.idn-1@xn--mller-kva.example>" {
		t.Errorf("Message-ID %s", env.messageID)
	}
	job.To, job.Cc, job.Bcc = nil, nil, nil
	if _, err := newEnvelope(job); err == nil {
		t.Error("a job without recipients made an envelope")
	}
}
