package devmail

import (
	"bytes"
	"encoding/base64"
	"io"
	"mime"
	"mime/multipart"
	"mime/quotedprintable"
	"net/mail"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestSampleInvoices(t *testing.T) {
	now := time.Date(2026, 11, 21, 9, 15, 0, 0, time.UTC)
	const n = 25 // more than there are suppliers
	msgs := SampleInvoices(n, now)
	if len(msgs) != n {
		t.Fatalf("got %d messages, want %d", len(msgs), n)
	}

	again := SampleInvoices(n, now)
	for i := range msgs {
		if !bytes.Equal(msgs[i], again[i]) {
			t.Fatalf("message %d differs between two calls", i)
		}
	}
	if bytes.Equal(SampleInvoices(1, now.Add(time.Hour))[0], msgs[0]) {
		t.Error("a different now gives the same message")
	}
	if len(SampleInvoices(0, now)) != 0 {
		t.Error("SampleInvoices(0) is not empty")
	}

	dec := new(mime.WordDecoder)
	ids := map[string]bool{}
	var prev time.Time
	for i, raw := range msgs {
		if bytes.Contains(bytes.ReplaceAll(raw, []byte("\r\n"), nil), []byte("\n")) || bytes.Contains(bytes.ReplaceAll(raw, []byte("\r\n"), nil), []byte("\r")) {
			t.Errorf("message %d has bare CR or LF", i)
		}
		for _, line := range bytes.Split(raw, []byte("\r\n")) {
			if len(line) > 998 {
				t.Errorf("message %d has a line of %d bytes", i, len(line))
			}
		}

		msg, err := mail.ReadMessage(bytes.NewReader(raw))
		if err != nil {
			t.Fatalf("message %d: %v", i, err)
		}
		h := msg.Header

		for _, k := range []string{"Subject", "From", "To"} {
			if v := h.Get(k); !isASCII(v) {
				t.Errorf("message %d: %s header is not ASCII: %q", i, k, v)
			}
		}
		subject, err := dec.DecodeHeader(h.Get("Subject"))
		if err != nil {
			t.Fatalf("message %d subject: %v", i, err)
		}
		from, err := mail.ParseAddress(h.Get("From"))
		if err != nil {
			t.Fatalf("message %d From: %v", i, err)
		}
		if _, err := mail.ParseAddress(h.Get("To")); err != nil {
			t.Fatalf("message %d To: %v", i, err)
		}
		if !strings.HasSuffix(subject, " – "+from.Name) {
			t.Errorf("message %d: subject %q does not name the sender %q", i, subject, from.Name)
		}
		if i == 0 && subject != "Factuur 2026-0042 – Bloemenhandel Müller" {
			t.Errorf("first subject %q", subject)
		}
		number := invoiceNumber.FindString(subject)
		if number == "" {
			t.Fatalf("message %d: no invoice number in %q", i, subject)
		}

		id := h.Get("Message-ID")
		if _, err := mail.ParseAddress(id); !strings.HasPrefix(id, "<") || err != nil {
			t.Errorf("message %d: bad Message-ID %q", i, id)
		}
		if ids[id] {
			t.Errorf("message %d: duplicate Message-ID %q", i, id)
		}
		ids[id] = true

		date, err := h.Date()
		if err != nil {
			t.Fatalf("message %d Date: %v", i, err)
		}
		if date.After(now) || date.Before(now.Add(-48*time.Hour)) || date.Before(prev) {
			t.Errorf("message %d: date %v out of order or range", i, date)
		}
		prev = date

		parts := walk(t, h.Get("Content-Type"), msg.Body)
		if got := strings.Join(parts.types, ","); got != "multipart/mixed,multipart/alternative,text/plain,text/html,application/pdf" {
			t.Errorf("message %d structure %s", i, got)
		}
		if !strings.Contains(parts.text, number) || !strings.Contains(parts.html, number) {
			t.Errorf("message %d: bodies do not mention %s", i, number)
		}
		if !strings.Contains(parts.text, "€") {
			t.Errorf("message %d: no amount in text body", i)
		}
		if !strings.HasSuffix(parts.pdfName, ".pdf") || !strings.Contains(parts.pdfName, number) {
			t.Errorf("message %d: attachment name %q", i, parts.pdfName)
		}
		checkPDF(t, parts.pdf, number)
	}
}

var invoiceNumber = regexp.MustCompile(`(RE-)?\d{4}-\d{4}`)

func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 {
			return false
		}
	}
	return true
}

type walked struct {
	types      []string
	text, html string
	pdf        []byte
	pdfName    string
}

func walk(t *testing.T, contentType string, body io.Reader) walked {
	t.Helper()
	var w walked
	var rec func(contentType string, header map[string][]string, body io.Reader)
	rec = func(contentType string, header map[string][]string, body io.Reader) {
		mediaType, params, err := mime.ParseMediaType(contentType)
		if err != nil {
			t.Fatalf("Content-Type %q: %v", contentType, err)
		}
		w.types = append(w.types, mediaType)
		if strings.HasPrefix(mediaType, "multipart/") {
			mr := multipart.NewReader(body, params["boundary"])
			for {
				p, err := mr.NextRawPart()
				if err == io.EOF {
					return
				}
				if err != nil {
					t.Fatal(err)
				}
				rec(p.Header.Get("Content-Type"), p.Header, p)
			}
		}
		cte := ""
		if v := header["Content-Transfer-Encoding"]; len(v) > 0 {
			cte = strings.ToLower(v[0])
		}
		var r io.Reader = body
		switch cte {
		case "quoted-printable":
			r = quotedprintable.NewReader(body)
		case "base64":
			r = base64.NewDecoder(base64.StdEncoding, body)
		}
		data, err := io.ReadAll(r)
		if err != nil {
			t.Fatalf("%s body: %v", mediaType, err)
		}
		switch mediaType {
		case "text/plain":
			w.text = string(data)
		case "text/html":
			w.html = string(data)
		case "application/pdf":
			w.pdf = data
			if v := header["Content-Disposition"]; len(v) > 0 {
				if _, p, err := mime.ParseMediaType(v[0]); err == nil {
					w.pdfName = p["filename"]
				}
			}
		}
	}
	rec(contentType, nil, body)
	return w
}

// checkPDF checks the PDF structure: header, trailer, and that startxref
// and every cross-reference entry point at what they should.
func checkPDF(t *testing.T, pdf []byte, number string) {
	t.Helper()
	s := string(pdf)
	if !strings.HasPrefix(s, "%PDF-1.") || !strings.HasSuffix(s, "%%EOF\n") {
		t.Fatalf("not a PDF: %.20q...", s)
	}
	if !strings.Contains(s, "("+number+")") && !strings.Contains(s, " "+number+")") {
		t.Errorf("PDF does not contain %s", number)
	}
	m := regexp.MustCompile(`startxref\n(\d+)\n%%EOF\n$`).FindStringSubmatch(s)
	if m == nil {
		t.Fatal("PDF has no startxref")
	}
	xref, _ := strconv.Atoi(m[1])
	if !strings.HasPrefix(s[xref:], "xref\n0 ") {
		t.Fatalf("startxref %d does not point at the xref table", xref)
	}
	lines := strings.SplitAfter(s[xref:], "\n")
	count, _ := strconv.Atoi(strings.Fields(lines[1])[1])
	for obj := 1; obj < count; obj++ {
		entry := lines[2+obj]
		if len(entry) != 20 || !strings.HasSuffix(entry, " n \n") {
			t.Fatalf("xref entry %q", entry)
		}
		off, _ := strconv.Atoi(entry[:10])
		if want := strconv.Itoa(obj) + " 0 obj\n"; !strings.HasPrefix(s[off:], want) {
			t.Errorf("xref entry for object %d points at %.12q", obj, s[off:])
		}
	}
	// The content stream's /Length is exact.
	lm := regexp.MustCompile(`<< /Length (\d+) >>\nstream\n`).FindStringSubmatchIndex(s)
	if lm == nil {
		t.Fatal("PDF has no content stream")
	}
	length, _ := strconv.Atoi(s[lm[2]:lm[3]])
	if !strings.HasPrefix(s[lm[1]+length:], "endstream") {
		t.Errorf("stream /Length %d is wrong", length)
	}
}
