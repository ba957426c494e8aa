package mailjob

import (
	"encoding/base64"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"
)

// validJob is a job using every field.
func validJob() *Job {
	return &Job{
		JobID:         "erp:invoice-2026.0142_1",
		From:          "billing@example.com",
		SenderProfile: "finance",
		To:            []Recipient{{Address: "ap@customer.example", Name: "Customer, Accounts Payable"}},
		Cc:            []Recipient{{Address: "o'brien+billing@customer.example", Name: `Pat "the payer" O'Brien`}},
		Bcc:           []Recipient{{Address: "archive@example.com"}},
		ReplyTo:       []Recipient{{Address: "billing-replies@example.com", Name: "Billing"}},
		Subject:       "Invoice 2026-0142 – 1.234,00 €",
		Text:          "Dear customer,\r\nplease find the invoice attached.\r\n",
		HTML:          `<p>Dear customer,</p><img src="cid:logo@example.com">`,
		Attachments: []Attachment{
			{Filename: "logo.png", ContentType: "image/png", ContentID: "logo@example.com", Inline: true,
				ContentBase64: base64.StdEncoding.EncodeToString([]byte("\x89PNG fake"))},
			{Filename: "Rechnung 2026-0142.pdf", ContentType: "application/pdf",
				Object: &ObjectRef{Bucket: "mailpipe-attachments", Name: "erp/2026-0142.pdf", Size: 5 << 20,
					SHA256: strings.Repeat("ab", 32)}},
			{Filename: "lines.csv", ContentType: `text/csv; charset=utf-8; header="present"`,
				ContentBase64: base64.StdEncoding.EncodeToString([]byte("a;b\r\n1;2\r\n"))},
		},
		Headers:         map[string]string{"X-ERP-Document": "INV-2026-0142", "x-tenant": "acme\tgmbh"},
		SaveToSentItems: Bool(false),
		Importance:      ImportanceHigh,
		Correlation:     map[string]string{"document": "INV-2026-0142", "erp.tenant": "acme"},
		CreatedAt:       time.Date(2026, 3, 2, 8, 15, 4, 0, time.UTC),
	}
}

func minimalJob() *Job {
	return &Job{JobID: "j1", From: "a@example.com", To: []Recipient{{Address: "b@example.org"}}, Text: "hi"}
}

func problemsOf(t *testing.T, err error) []Problem {
	t.Helper()
	if err == nil {
		return nil
	}
	var verr *ValidationError
	if !errors.As(err, &verr) {
		t.Fatalf("error %v (%T) is not a *ValidationError", err, err)
	}
	if !errors.Is(err, ErrInvalidJob) {
		t.Errorf("errors.Is(%v, ErrInvalidJob) is false", err)
	}
	return verr.Problems
}

func TestValidateValid(t *testing.T) {
	for name, j := range map[string]*Job{"full": validJob(), "minimal": minimalJob()} {
		if err := j.Validate(DefaultLimits); err != nil {
			t.Errorf("%s: %v", name, err)
		}
		if err := j.Validate(Limits{}); err != nil {
			t.Errorf("%s with zero limits (defaults): %v", name, err)
		}
	}
	if validJob().SavesToSentItems() || !minimalJob().SavesToSentItems() {
		t.Error("SavesToSentItems")
	}
}

func TestAddresses(t *testing.T) {
	good := []string{
		"a@example.com",
		"first.last+tag@sub.example.co.uk",
		"o'brien@example.ie",
		"!#$%&'*+/=?^_`{|}~-@example.com",
		"user@müller.de",           // IDN, U-label
		"user@xn--mller-kva.de",    // the same domain as an A-label
		"用户@例子.广告",                 // internationalized local part and domain
		"δοκιμή@παράδειγμα.δοκιμή", // Greek
		"x@a-b.example",            // hyphen inside a label
		"UPPER@EXAMPLE.COM",        // case is kept
		strings.Repeat("a", 64) + "@example.com",
	}
	for _, a := range good {
		if p := AddressProblem(a); p != "" {
			t.Errorf("%q refused: %s", a, p)
		}
	}
	bad := map[string]string{
		"":                                       "required",
		"Doe, John <john@example.com>":           "bare address",
		"\"Doe, John\" <john@example.com>":       "bare address",
		"<john@example.com>":                     "bare address",
		"\"john\"@example.com":                   "bare address",
		"a@example.com, b@example.com":           "single address",
		"a@example.com;b@example.com":            "single address",
		"john@example.com\r\nBcc: x@evil.test":   "line breaks",
		"john@example.com\nBcc: x@evil.test":     "line breaks",
		"john@example.com\u2028x":                "line breaks",
		" john@example.com":                      "spaces",
		"john doe@example.com":                   "spaces",
		"john\x00@example.com":                   "control",
		"john@@example.com":                      "more than one @",
		"john@x@example.com":                     "more than one @",
		"johnexample.com":                        "no @",
		"@example.com":                           "nothing before @",
		"john@":                                  "no domain",
		"john@example":                           "two labels",
		"john@localhost":                         "two labels",
		".john@example.com":                      "dot",
		"john.@example.com":                      "dot",
		"john..doe@example.com":                  "dot",
		"john@example..com":                      "dot",
		"john@example.com.":                      "dot",
		"john@-example.com":                      "hyphen",
		"john@example-.com":                      "hyphen",
		"john@exa_mple.com":                      `'_'`,
		"john@ex!ample.com":                      `'!'`,
		"john@[192.0.2.1]":                       "address literals",
		"john@192.0.2.1":                         "number",
		"john@☃.example":                         `'☃'`,
		"jo\u200bhn@example.com":                 "U+200B",
		strings.Repeat("a", 65) + "@example.com": "64 bytes",
		"a@" + strings.Repeat("b", 64) + ".com":  "63 bytes",
		"a@" + strings.Repeat("b.", 130) + "com": "", // too long overall: any reason
	}
	for a, want := range bad {
		p := AddressProblem(a)
		if p == "" || !strings.Contains(p, want) {
			t.Errorf("%q: got %q, want a reason containing %q", a, p, want)
		}
	}
}

func TestValidateRules(t *testing.T) {
	cases := []struct {
		name string
		edit func(j *Job)
		path string
		want string // part of the reason
	}{
		{"no job_id", func(j *Job) { j.JobID = "" }, "job_id", "required"},
		{"long job_id", func(j *Job) { j.JobID = strings.Repeat("a", 129) }, "job_id", "at most 128"},
		{"job_id with space", func(j *Job) { j.JobID = "inv 42" }, "job_id", "' '"},
		{"job_id with slash", func(j *Job) { j.JobID = "inv/42" }, "job_id", "'/'"},
		{"job_id with wildcard", func(j *Job) { j.JobID = "inv.*" }, "job_id", "'*'"},
		{"no from", func(j *Job) { j.From = "" }, "from", "required"},
		{"from with name", func(j *Job) { j.From = "Billing <billing@example.com>" }, "from", "bare address"},
		{"from injection", func(j *Job) { j.From = "billing@example.com\r\nBcc: x@evil.test" }, "from", "line breaks"},
		{"bad sender_profile", func(j *Job) { j.SenderProfile = "Finance" }, "sender_profile", "a-z 0-9"},
		{"no recipients", func(j *Job) { j.To, j.Cc, j.Bcc = nil, nil, nil }, "to", "at least one recipient"},
		{"reply_to alone is no recipient", func(j *Job) { j.To, j.Cc, j.Bcc = nil, nil, nil }, "to", "in to, cc or bcc"},
		{"recipient display-name form", func(j *Job) { j.To[0].Address = `"Doe, John" <john@example.com>` }, "to[0].address", "put a display name in name"},
		{"recipient list in one", func(j *Job) { j.Cc[0].Address = "a@example.com,b@example.com" }, "cc[0].address", "single address"},
		{"bcc injection", func(j *Job) { j.Bcc[0].Address = "x@example.com\nBcc: y@evil.test" }, "bcc[0].address", "line breaks"},
		{"reply_to bad", func(j *Job) { j.ReplyTo[0].Address = "nobody" }, "reply_to[0].address", "no @"},
		{"name injection", func(j *Job) { j.To[0].Name = "Eve\r\nBcc: x@evil.test" }, "to[0].name", "line break"},
		{"name control char", func(j *Job) { j.To[0].Name = "Eve\x07" }, "to[0].name", "U+0007"},
		{"name too long", func(j *Job) { j.To[0].Name = strings.Repeat("é", 257) }, "to[0].name", "at most 256"},
		{"subject CRLF", func(j *Job) { j.Subject = "Invoice\r\nBcc: x@evil.test" }, "subject", "line break"},
		{"subject LF", func(j *Job) { j.Subject = "Invoice\nmore" }, "subject", "line break"},
		{"subject line separator", func(j *Job) { j.Subject = "Invoice\u2028more" }, "subject", "U+2028"},
		{"subject too long", func(j *Job) { j.Subject = strings.Repeat("x", 999) }, "subject", "at most 998"},
		{"subject bad UTF-8", func(j *Job) { j.Subject = "Invoice \xff" }, "subject", "UTF-8"},
		{"empty body", func(j *Job) { j.Text, j.HTML = "", "" }, "text", "a body is required"},
		{"non-X header", func(j *Job) { j.Headers = map[string]string{"Content-Type": "text/plain"} }, "headers.Content-Type", "custom headers must start with X-"},
		{"Reply-To header", func(j *Job) { j.Headers = map[string]string{"Reply-To": "x@evil.test"} }, "headers.Reply-To", "start with X-"},
		{"bare X- header", func(j *Job) { j.Headers = map[string]string{"X-": "v"} }, "headers.X-", "after X-"},
		{"header name with colon", func(j *Job) { j.Headers = map[string]string{"X-A:B": "v"} }, `headers["X-A:B"]`, "':'"},
		{"header name with space", func(j *Job) { j.Headers = map[string]string{"X-A B": "v"} }, `headers["X-A B"]`, "' '"},
		{"header name injection", func(j *Job) { j.Headers = map[string]string{"X-A\r\nBcc": "v"} }, `headers["X-A\r\nBcc"]`, "line breaks"},
		{"header value CRLF", func(j *Job) { j.Headers = map[string]string{"X-Ref": "1\r\nBcc: x@evil.test"} }, "headers.X-Ref", "value must be one line"},
		{"header value LF", func(j *Job) { j.Headers = map[string]string{"X-Ref": "1\nx"} }, "headers.X-Ref", "line break"},
		{"header value too long", func(j *Job) { j.Headers = map[string]string{"X-Ref": strings.Repeat("é", 500)} }, "headers.X-Ref", "1000 bytes"},
		{"reserved header", func(j *Job) { j.Headers = map[string]string{"x-MailPipe-Job-Id": "1"} }, "headers.x-MailPipe-Job-Id", "reserved"},
		{"header repeated in other case", func(j *Job) { j.Headers = map[string]string{"X-Ref": "1", "x-ref": "2"} }, "headers.x-ref", "case-insensitive"},
		{"too many headers", func(j *Job) {
			j.Headers = map[string]string{}
			for i := range 65 {
				j.Headers[fmt.Sprintf("X-H%d", i)] = "v"
			}
		}, "headers", "at most 64"},
		{"attachment without filename", func(j *Job) { j.Attachments[2].Filename = "" }, "attachments[2].filename", "required"},
		{"attachment filename with path", func(j *Job) { j.Attachments[1].Filename = "../../etc/passwd" }, "attachments[1].filename", "without a path"},
		{"attachment filename injection", func(j *Job) { j.Attachments[1].Filename = "a.pdf\r\nContent-Type: text/html" }, "attachments[1].filename", "line break"},
		{"attachment without content_type", func(j *Job) { j.Attachments[0].ContentType = "" }, "attachments[0].content_type", "required"},
		{"attachment bad content_type", func(j *Job) { j.Attachments[0].ContentType = "pdf" }, "attachments[0].content_type", "media type"},
		{"content_type injection", func(j *Job) { j.Attachments[0].ContentType = "text/plain\r\nX-Evil: 1" }, "attachments[0].content_type", "media type"},
		{"inline without content_id", func(j *Job) { j.Attachments[0].ContentID = "" }, "attachments[0].content_id", "required when inline"},
		{"content_id in brackets", func(j *Job) { j.Attachments[0].ContentID = "<logo@example.com>" }, "attachments[0].content_id", "without < and >"},
		{"content_id with space", func(j *Job) { j.Attachments[0].ContentID = "logo 1" }, "attachments[0].content_id", "may contain only"},
		{"duplicate content_id", func(j *Job) { j.Attachments[2].ContentID = "logo@example.com" }, "attachments[2].content_id", "also the content_id of attachments[0]"},
		{"both sources", func(j *Job) { j.Attachments[1].ContentBase64 = "QUJD" }, "attachments[1]", "mutually exclusive"},
		{"no source", func(j *Job) { j.Attachments[0].ContentBase64 = "" }, "attachments[0]", "one of content_base64 or object is required"},
		{"base64 with line breaks", func(j *Job) { j.Attachments[2].ContentBase64 = "QUJD\r\nREVG" }, "attachments[2].content_base64", "line breaks"},
		{"base64 URL alphabet", func(j *Job) { j.Attachments[2].ContentBase64 = "ab-_" }, "attachments[2].content_base64", "URL-safe"},
		{"base64 without padding", func(j *Job) { j.Attachments[2].ContentBase64 = "QUJDRA" }, "attachments[2].content_base64", "multiple of 4"},
		{"base64 padding inside", func(j *Job) { j.Attachments[2].ContentBase64 = "QQ==QUJD" }, "attachments[2].content_base64", "padding only at the end"},
		{"object without bucket", func(j *Job) { j.Attachments[1].Object.Bucket = "" }, "attachments[1].object.bucket", "required"},
		{"object bad bucket", func(j *Job) { j.Attachments[1].Object.Bucket = "my.bucket" }, "attachments[1].object.bucket", "bucket name"},
		{"object without name", func(j *Job) { j.Attachments[1].Object.Name = "" }, "attachments[1].object.name", "required"},
		{"object negative size", func(j *Job) { j.Attachments[1].Object.Size = -1 }, "attachments[1].object.size", "negative"},
		{"object too large", func(j *Job) { j.Attachments[1].Object.Size = 151 << 20 }, "attachments[1].object.size", "largest attachment"},
		{"object bad sha256", func(j *Job) { j.Attachments[1].Object.SHA256 = "abc" }, "attachments[1].object.sha256", "64 hex"},
		{"bad importance", func(j *Job) { j.Importance = "urgent" }, "importance", "low, normal or high"},
		{"too many correlation keys", func(j *Job) {
			for i := range 17 {
				j.Correlation[fmt.Sprintf("k%d", i)] = "v"
			}
		}, "correlation", "at most 16"},
		{"bad correlation key", func(j *Job) { j.Correlation["order id"] = "1" }, `correlation["order id"]`, "key must be"},
		{"long correlation value", func(j *Job) { j.Correlation["document"] = strings.Repeat("x", 257) }, "correlation.document", "at most 256"},
		{"too many recipients", func(j *Job) {
			j.To, j.Cc, j.Bcc = nil, nil, nil
			for i := range 501 {
				r := Recipient{Address: fmt.Sprintf("r%d@example.com", i)}
				switch i % 3 {
				case 0:
					j.To = append(j.To, r)
				case 1:
					j.Cc = append(j.Cc, r)
				default:
					j.Bcc = append(j.Bcc, r)
				}
			}
		}, "", "501 recipients in to, cc and bcc together, over the limit of 500"},
		{"too many attachments", func(j *Job) {
			j.Attachments = nil
			for i := range 251 {
				j.Attachments = append(j.Attachments, Attachment{Filename: fmt.Sprintf("f%d.txt", i), ContentType: "text/plain", ContentBase64: "QQ=="})
			}
		}, "attachments", "251 attachments, at most 250"},
		{"too much inline content", func(j *Job) {
			j.Attachments[2].ContentBase64 = base64.StdEncoding.EncodeToString(make([]byte, 540<<10))
		}, "attachments", "over the limit of 716800"},
		{"too large in total", func(j *Job) { j.Attachments[1].Object.Size = 36 << 20 }, "", "over the limit of 36700160 bytes"},
		{"job too large as JSON", func(j *Job) { j.HTML = strings.Repeat("<p>x</p>", 130<<10) }, "", "as JSON, over the limit"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			j := validJob()
			c.edit(j)
			probs := problemsOf(t, j.Validate(DefaultLimits))
			for _, p := range probs {
				if p.Path == c.path && strings.Contains(p.Reason, c.want) {
					return
				}
			}
			t.Errorf("want %s: ...%s..., got %v", c.path, c.want, probs)
		})
	}
}

// TestValidateAllProblems checks that every problem is reported, in the
// order of the fields, with readable messages.
func TestValidateAllProblems(t *testing.T) {
	j := validJob()
	j.JobID = ""
	j.To[0].Address = "nobody"
	j.Subject = "a\r\nb"
	j.Attachments[2].Filename = ""
	j.Headers = map[string]string{"Content-Type": "text/html", "X-Ok": "fine"}
	j.Importance = "urgent"
	err := j.Validate(DefaultLimits)
	probs := problemsOf(t, err)
	var paths []string
	for _, p := range probs {
		paths = append(paths, p.Path)
	}
	want := []string{"job_id", "to[0].address", "subject", "attachments[2].filename", "headers.Content-Type", "importance"}
	if !slices.Equal(paths, want) {
		t.Errorf("paths %q, want %q", paths, want)
	}
	msg := err.Error()
	for _, s := range []string{
		"mailjob: invalid job: job_id: required; ",
		"attachments[2].filename: required",
		"headers.Content-Type: custom headers must start with X-",
	} {
		if !strings.Contains(msg, s) {
			t.Errorf("message %q lacks %q", msg, s)
		}
	}
}

func TestLimits(t *testing.T) {
	j := minimalJob()
	j.Cc = []Recipient{{Address: "c@example.com"}, {Address: "d@example.com"}}
	if err := j.Validate(Limits{MaxRecipients: 2}); err == nil {
		t.Error("3 recipients accepted with MaxRecipients 2")
	}
	if err := j.Validate(Limits{MaxRecipients: 3}); err != nil {
		t.Error(err)
	}
	j.Attachments = []Attachment{{Filename: "a", ContentType: "text/plain", ContentBase64: "QUJD"}}
	if err := j.Validate(Limits{MaxInlineSize: 3}); err == nil {
		t.Error("4 bytes of base64 accepted with MaxInlineSize 3")
	}
	if err := j.Validate(Limits{MaxTotalSize: 4}); err == nil { // "hi" + 3 bytes
		t.Error("5 bytes accepted with MaxTotalSize 4")
	}
	if err := j.Validate(Limits{MaxTotalSize: 5, MaxAttachments: 1}); err != nil {
		t.Error(err)
	}
	if err := j.Validate(Limits{MaxJobSize: 50}); err == nil {
		t.Error("job accepted with MaxJobSize 50")
	}
}

func TestBase64Size(t *testing.T) {
	for _, n := range []int{1, 2, 3, 4, 5, 100, 1000} {
		s := base64.StdEncoding.EncodeToString(make([]byte, n))
		if got, reason := base64Size(s); got != int64(n) || reason != "" {
			t.Errorf("%d bytes: got %d %q", n, got, reason)
		}
	}
}

// TestParseJob checks that ParseJob is about structure only: content rules
// and limits are Validate's.
func TestParseJob(t *testing.T) {
	data := []byte(`{"job_id":"j 1","from":"a@example.com","to":[{"address":"b@example.org"}],"subject":"s","text":"t",
		"headers":{"Content-Type":"text/html"},"created_at":"2026-03-02T08:15:04.5+01:00"}`)
	j, err := ParseJob(data)
	if err != nil {
		t.Fatalf("ParseJob applied content rules: %v", err)
	}
	if j.JobID != "j 1" || j.Headers["Content-Type"] != "text/html" || !j.CreatedAt.Equal(time.Date(2026, 3, 2, 7, 15, 4, 5e8, time.UTC)) {
		t.Errorf("decoded %+v", j)
	}
	probs := problemsOf(t, j.Validate(DefaultLimits))
	if len(probs) != 2 || probs[0].Path != "job_id" || probs[1].Path != "headers.Content-Type" {
		t.Errorf("Validate: %v", probs)
	}

	// Structural problems: every one, with the partial job.
	j, err = ParseJob([]byte(`{"job_id":"j1","from":"a@example.com","to":[{"address":"b@example.org","email":"x"}],
		"subject":null,"text":"t","correlation":{"order":"42"},"inline":true}`))
	probs = problemsOf(t, err)
	got := fmt.Sprint(probs)
	for _, want := range []string{"to[0].email: unknown field", "subject: must be a string, not null", "inline: unknown field"} {
		if !strings.Contains(got, want) {
			t.Errorf("problems %s lack %q", got, want)
		}
	}
	if j == nil || j.JobID != "j1" || j.Correlation["order"] != "42" {
		t.Errorf("partial job %+v", j)
	}
	if j, err := ParseJob([]byte(`{"job_id":`)); j != nil || err == nil {
		t.Errorf("broken JSON: %+v %v", j, err)
	}
	if _, err := ParseJob([]byte(`{"job_id":"a","from":"a@example.com","subject":"","text":"x","to":[{"address":"b@example.com"}]} {}`)); err == nil {
		t.Error("data after the job accepted")
	}
	if _, err := ParseJob([]byte("{\"job_id\":\"a\xff\"}")); err == nil || !strings.Contains(err.Error(), "UTF-8") {
		t.Errorf("invalid UTF-8: %v", err)
	}
}
