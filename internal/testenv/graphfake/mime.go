package graphfake

import (
	"bytes"
	"encoding/base64"
	"io"
	"mime"
	"mime/multipart"
	"mime/quotedprintable"
	"net/mail"
	"strings"
	"time"
	"unicode/utf8"
)

type addr struct{ Name, Address string }

type hdr struct{ Name, Value string }

// msgMeta is what Graph derives from a message's MIME.
type msgMeta struct {
	subject        string
	from, sender   *addr
	to, cc, bcc    []addr
	replyTo        []addr
	messageID      string
	sent           time.Time
	bodyType       string // "text" or "html"
	body           string // at most maxBodyText bytes
	preview        string
	hasAttachments bool
	importance     string
	headers        []hdr
}

const maxBodyText = 64 << 10

var wordDecoder = &mime.WordDecoder{CharsetReader: func(charset string, in io.Reader) (io.Reader, error) {
	return in, nil // good enough for a fake: UTF-8 and ASCII pass, others are kept as bytes
}}

// splitHeader returns the header block and the body of raw.
func splitHeader(raw []byte) (head, body []byte) {
	if i := bytes.Index(raw, []byte("\r\n\r\n")); i >= 0 {
		j := bytes.Index(raw, []byte("\n\n"))
		if j < 0 || i < j {
			return raw[:i+2], raw[i+4:]
		}
	}
	if j := bytes.Index(raw, []byte("\n\n")); j >= 0 {
		return raw[:j+1], raw[j+2:]
	}
	return raw, nil
}

// parseHeaders unfolds the header block into name/value pairs in order.
func parseHeaders(head []byte) []hdr {
	var out []hdr
	for _, line := range strings.Split(strings.ReplaceAll(string(head), "\r\n", "\n"), "\n") {
		if line == "" {
			continue
		}
		if (line[0] == ' ' || line[0] == '\t') && len(out) > 0 {
			out[len(out)-1].Value += " " + strings.TrimSpace(line)
			continue
		}
		name, value, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		out = append(out, hdr{Name: strings.TrimSpace(name), Value: strings.TrimSpace(value)})
	}
	return out
}

func headerValue(hs []hdr, name string) string {
	for _, h := range hs {
		if strings.EqualFold(h.Name, name) {
			return h.Value
		}
	}
	return ""
}

func decodeWords(s string) string {
	if d, err := wordDecoder.DecodeHeader(s); err == nil {
		return d
	}
	return s
}

func parseAddrs(v string) []addr {
	if strings.TrimSpace(v) == "" {
		return nil
	}
	p := mail.AddressParser{WordDecoder: wordDecoder}
	list, err := p.ParseList(v)
	if err != nil {
		return []addr{{Address: strings.TrimSpace(v)}}
	}
	out := make([]addr, 0, len(list))
	for _, a := range list {
		out = append(out, addr{Name: a.Name, Address: a.Address})
	}
	return out
}

func firstAddr(v string) *addr {
	if as := parseAddrs(v); len(as) > 0 {
		return &as[0]
	}
	return nil
}

// parseMeta reads what the message resource shows from raw MIME.
func parseMeta(raw []byte) msgMeta {
	head, body := splitHeader(raw)
	hs := parseHeaders(head)
	m := msgMeta{
		subject:   decodeWords(headerValue(hs, "Subject")),
		from:      firstAddr(headerValue(hs, "From")),
		sender:    firstAddr(headerValue(hs, "Sender")),
		to:        parseAddrs(headerValue(hs, "To")),
		cc:        parseAddrs(headerValue(hs, "Cc")),
		bcc:       parseAddrs(headerValue(hs, "Bcc")),
		replyTo:   parseAddrs(headerValue(hs, "Reply-To")),
		messageID: strings.TrimSpace(headerValue(hs, "Message-ID")),
		headers:   hs,
	}
	if m.sender == nil {
		m.sender = m.from
	}
	if t, err := mail.ParseDate(headerValue(hs, "Date")); err == nil {
		m.sent = t.UTC()
	}
	switch strings.ToLower(headerValue(hs, "Importance")) {
	case "high", "low":
		m.importance = strings.ToLower(headerValue(hs, "Importance"))
	default:
		m.importance = "normal"
	}
	m.bodyType, m.body, m.hasAttachments = extractBody(headerValue(hs, "Content-Type"), headerValue(hs, "Content-Transfer-Encoding"), body, 0)
	if m.bodyType == "" {
		m.bodyType = "text"
	}
	m.preview = makePreview(m.bodyType, m.body)
	return m
}

// extractBody finds the text of a message (best effort): the first text/plain
// or text/html part, decoded. It reports whether there are attachments.
func extractBody(ctype, cte string, body []byte, depth int) (typ, text string, atts bool) {
	mt, params, err := mime.ParseMediaType(ctype)
	if err != nil || ctype == "" {
		mt = "text/plain"
	}
	switch {
	case strings.HasPrefix(mt, "multipart/") && depth < 4:
		r := multipart.NewReader(bytes.NewReader(body), params["boundary"])
		for {
			p, err := r.NextRawPart()
			if err != nil {
				break
			}
			pb, _ := io.ReadAll(io.LimitReader(p, 4*maxBodyText))
			disp, _, _ := mime.ParseMediaType(p.Header.Get("Content-Disposition"))
			pt, _, _ := mime.ParseMediaType(p.Header.Get("Content-Type"))
			if disp == "attachment" || (pt != "" && !strings.HasPrefix(pt, "text/") && !strings.HasPrefix(pt, "multipart/")) {
				atts = true
				continue
			}
			t, x, a := extractBody(p.Header.Get("Content-Type"), p.Header.Get("Content-Transfer-Encoding"), pb, depth+1)
			atts = atts || a
			if typ == "" || (typ == "html" && t == "text" && mt == "multipart/alternative") {
				if t != "" {
					typ, text = t, x
				}
			}
		}
		return typ, text, atts
	case mt == "text/plain" || mt == "text/html":
		if len(body) > 4*maxBodyText {
			body = body[:4*maxBodyText]
		}
		dec := decodeCTE(cte, body)
		if len(dec) > maxBodyText {
			dec = dec[:maxBodyText]
		}
		t := "text"
		if mt == "text/html" {
			t = "html"
		}
		return t, strings.ToValidUTF8(string(dec), "\uFFFD"), false
	}
	return "", "", true
}

func decodeCTE(cte string, b []byte) []byte {
	switch strings.ToLower(strings.TrimSpace(cte)) {
	case "base64":
		out, err := io.ReadAll(base64.NewDecoder(base64.StdEncoding, newlineStripper{bytes.NewReader(b)}))
		if err == nil || len(out) > 0 {
			return out
		}
	case "quoted-printable":
		out, err := io.ReadAll(quotedprintable.NewReader(bytes.NewReader(b)))
		if err == nil || len(out) > 0 {
			return out
		}
	}
	return b
}

type newlineStripper struct{ r io.Reader }

func (n newlineStripper) Read(p []byte) (int, error) {
	k, err := n.r.Read(p)
	j := 0
	for _, c := range p[:k] {
		if c != '\r' && c != '\n' {
			p[j] = c
			j++
		}
	}
	return j, err
}

func makePreview(typ, body string) string {
	if typ == "html" {
		var b strings.Builder
		in := false
		for _, r := range body {
			switch {
			case r == '<':
				in = true
			case r == '>':
				in = false
				b.WriteByte(' ')
			case !in:
				b.WriteRune(r)
			}
		}
		body = b.String()
	}
	body = strings.Join(strings.Fields(body), " ")
	if utf8.RuneCountInString(body) > 255 {
		r := []rune(body)
		body = string(r[:255])
	}
	return body
}

// draftData is a message given as JSON (sendMail, or a draft).
type draftData struct {
	subject    string
	bodyType   string
	body       string
	from       *addr
	sender     *addr
	to, cc     []addr
	bcc        []addr
	replyTo    []addr
	headers    []hdr
	importance string
	messageID  string
}

func fmtAddr(a addr) string { return (&mail.Address{Name: a.Name, Address: a.Address}).String() }

func fmtAddrs(as []addr) string {
	var parts []string
	for _, a := range as {
		parts = append(parts, fmtAddr(a))
	}
	return strings.Join(parts, ", ")
}

// buildMIME renders a JSON message (with attachments) as MIME, as Exchange
// does when it submits it.
func buildMIME(d *draftData, atts []*attachment, date time.Time) []byte {
	var b bytes.Buffer
	w := func(name, value string) {
		if value != "" {
			b.WriteString(name + ": " + value + "\r\n")
		}
	}
	if d.from != nil {
		w("From", fmtAddr(*d.from))
	}
	if d.sender != nil && (d.from == nil || !strings.EqualFold(d.sender.Address, d.from.Address)) {
		w("Sender", fmtAddr(*d.sender))
	}
	w("To", fmtAddrs(d.to))
	w("Cc", fmtAddrs(d.cc))
	w("Reply-To", fmtAddrs(d.replyTo))
	w("Subject", mime.QEncoding.Encode("utf-8", d.subject))
	w("Date", date.Format(time.RFC1123Z))
	w("Message-ID", d.messageID)
	if d.importance == "high" || d.importance == "low" {
		w("Importance", d.importance)
	}
	for _, h := range d.headers {
		w(h.Name, mime.QEncoding.Encode("utf-8", h.Value))
	}
	w("MIME-Version", "1.0")
	ct := "text/plain"
	if strings.EqualFold(d.bodyType, "html") {
		ct = "text/html"
	}
	bodyPart := func(out *bytes.Buffer) {
		out.WriteString("Content-Type: " + ct + "; charset=\"utf-8\"\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n")
		qp := quotedprintable.NewWriter(out)
		_, _ = qp.Write([]byte(d.body))
		_ = qp.Close()
		out.WriteString("\r\n")
	}
	if len(atts) == 0 {
		bodyPart(&b)
		return b.Bytes()
	}
	var inner bytes.Buffer
	bodyPart(&inner)
	return appendMixed(&b, inner.Bytes(), atts)
}

// appendMixed writes a multipart/mixed body of first (a part with its
// headers) and the attachments after the headers already in b.
func appendMixed(b *bytes.Buffer, first []byte, atts []*attachment) []byte {
	boundary := "_graphfake_" + strings.ReplaceAll(randomToken(), "-", "x")
	b.WriteString("Content-Type: multipart/mixed; boundary=\"" + boundary + "\"\r\n\r\n")
	b.WriteString("--" + boundary + "\r\n")
	b.Write(first)
	for _, a := range atts {
		b.WriteString("\r\n--" + boundary + "\r\n")
		ct := a.contentType
		if ct == "" {
			ct = "application/octet-stream"
		}
		name := mime.QEncoding.Encode("utf-8", a.name)
		b.WriteString("Content-Type: " + ct + "; name=\"" + name + "\"\r\n")
		disp := "attachment"
		if a.isInline {
			disp = "inline"
			if a.contentID != "" {
				b.WriteString("Content-ID: <" + a.contentID + ">\r\n")
			}
		}
		b.WriteString("Content-Disposition: " + disp + "; filename=\"" + name + "\"\r\n")
		b.WriteString("Content-Transfer-Encoding: base64\r\n\r\n")
		enc := base64.StdEncoding.EncodeToString(a.data)
		for len(enc) > 76 {
			b.WriteString(enc[:76] + "\r\n")
			enc = enc[76:]
		}
		b.WriteString(enc + "\r\n")
	}
	b.WriteString("\r\n--" + boundary + "--\r\n")
	return b.Bytes()
}

// wrapMIME adds attachments to a message given as MIME.
func wrapMIME(base []byte, atts []*attachment) []byte {
	if len(atts) == 0 {
		return base
	}
	head, body := splitHeader(base)
	hs := parseHeaders(head)
	var b bytes.Buffer
	var first bytes.Buffer
	for _, h := range hs {
		switch strings.ToLower(h.Name) {
		case "content-type", "content-transfer-encoding":
			first.WriteString(h.Name + ": " + h.Value + "\r\n")
		case "mime-version":
		default:
			b.WriteString(h.Name + ": " + h.Value + "\r\n")
		}
	}
	b.WriteString("MIME-Version: 1.0\r\n")
	first.WriteString("\r\n")
	first.Write(body)
	return appendMixed(&b, first.Bytes(), atts)
}

// setHeader returns raw with a header added at the top if it is missing.
func ensureHeader(raw []byte, name, value string) []byte {
	head, _ := splitHeader(raw)
	if headerValue(parseHeaders(head), name) != "" {
		return raw
	}
	out := make([]byte, 0, len(raw)+len(name)+len(value)+4)
	out = append(out, name+": "+value+"\r\n"...)
	return append(out, raw...)
}
