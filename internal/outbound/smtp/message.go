package smtp

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"mime"
	"mime/quotedprintable"
	"net/mail"
	"sort"
	"strings"
	"time"
	"unicode/utf8"

	"golang.org/x/net/idna"

	"github.com/mailpipe/mailpipe/internal/outbound"
	"github.com/mailpipe/mailpipe/pkg/mailjob"
)

// envelope is the SMTP envelope of a job and the addresses as they go
// into the header.
type envelope struct {
	from      string   // MAIL FROM, domain as A-label
	rcpts     []string // RCPT TO: To, Cc and Bcc, each once
	utf8      bool     // an address has a non-ASCII local part: SMTPUTF8 needed
	messageID string
}

// errInvalid marks a job the transport cannot turn into a message.
var errInvalid = errors.New("invalid job")

// asciiDomain returns addr with its domain as A-label (IDNA) and reports
// whether the local part is non-ASCII.
func asciiDomain(addr string) (string, bool, error) {
	at := strings.LastIndexByte(addr, '@')
	if at <= 0 || at == len(addr)-1 || strings.ContainsAny(addr, " \t\r\n<>\x00") {
		return "", false, fmt.Errorf("%w: %q is not a bare address", errInvalid, addr)
	}
	local, domain := addr[:at], addr[at+1:]
	d, err := idna.Lookup.ToASCII(domain)
	if err != nil {
		return "", false, fmt.Errorf("%w: domain of %q: %v", errInvalid, addr, err)
	}
	return local + "@" + d, !isASCII(local), nil
}

func newEnvelope(job *mailjob.Job) (*envelope, error) {
	from, u, err := asciiDomain(job.From)
	if err != nil {
		return nil, err
	}
	env := &envelope{from: from, utf8: u}
	seen := make(map[string]bool)
	for _, list := range [][]mailjob.Recipient{job.To, job.Cc, job.Bcc} {
		for _, r := range list {
			a, u, err := asciiDomain(r.Address)
			if err != nil {
				return nil, err
			}
			env.utf8 = env.utf8 || u
			if k := strings.ToLower(a); !seen[k] {
				seen[k] = true
				env.rcpts = append(env.rcpts, a)
			}
		}
	}
	if len(env.rcpts) == 0 {
		return nil, fmt.Errorf("%w: no recipients", errInvalid)
	}
	// The Message-ID must be ASCII: an internationalized sender domain
	// goes in as A-label.
	env.messageID = outbound.MessageID(job.JobID, job.From)
	if !isASCII(env.messageID) {
		env.messageID = outbound.MessageID(job.JobID, from)
	}
	return env, nil
}

// estimateSize is the message size for MAIL FROM's SIZE parameter: a
// slight underestimate (RFC 1870 lets the server refuse an estimate above
// its limit at once). Objects without a known size count as empty.
func estimateSize(job *mailjob.Job) int64 {
	n := int64(1024 + len(job.Subject) + len(job.Text) + len(job.HTML))
	for _, a := range job.Attachments {
		switch {
		case a.ContentBase64 != "":
			n += int64(len(a.ContentBase64))
		case a.Object != nil:
			n += (a.Object.Size + 2) / 3 * 4
		}
	}
	return n
}

// attachmentError is a failure to read an attachment's content while the
// message was written.
type attachmentError struct {
	filename string
	err      error
}

func (e *attachmentError) Error() string {
	return fmt.Sprintf("attachment %q: %v", e.filename, e.err)
}

func (e *attachmentError) Unwrap() error { return e.err }

// message writes a job as an RFC 5322 / MIME message.
type message struct {
	job  *mailjob.Job
	env  *envelope
	att  outbound.Attachments
	date time.Time
	// boundary makes multipart boundaries (random by default).
	boundary func() string
}

// entity is a MIME entity: its header fields and a body writer.
type entity struct {
	fields [][2]string
	body   func(w io.Writer) error
}

// writeTo writes the message with CRLF line endings (not dot-stuffed).
// Attachment contents are streamed from the Attachments opener in pieces:
// no attachment is held in memory as a whole.
func (m *message) writeTo(ctx context.Context, w io.Writer) error {
	job := m.job
	if m.boundary == nil {
		m.boundary = randomBoundary
	}
	var h [][2]string
	add := func(name, value string) { h = append(h, [2]string{name, value}) }

	add("Date", m.date.Format(time.RFC1123Z))
	from, _, err := asciiDomain(job.From)
	if err != nil {
		return err
	}
	add("From", formatAddress(mailjob.Recipient{Address: from}))
	if len(job.To) > 0 {
		v, err := formatList(job.To)
		if err != nil {
			return err
		}
		add("To", v)
	} else if len(job.Cc) == 0 {
		add("To", "undisclosed-recipients:;")
	}
	if len(job.Cc) > 0 {
		v, err := formatList(job.Cc)
		if err != nil {
			return err
		}
		add("Cc", v)
	}
	// Bcc recipients are in the envelope only.
	if len(job.ReplyTo) > 0 {
		v, err := formatList(job.ReplyTo)
		if err != nil {
			return err
		}
		add("Reply-To", v)
	}
	if strings.ContainsAny(job.Subject, "\r\n") {
		return fmt.Errorf("%w: line break in subject", errInvalid)
	}
	add("Subject", encodeText(job.Subject))
	add("Message-ID", m.env.messageID)
	switch job.Importance {
	case mailjob.ImportanceHigh:
		add("Importance", "high")
	case mailjob.ImportanceLow:
		add("Importance", "low")
	}
	names := make([]string, 0, len(job.Headers))
	for k := range job.Headers {
		names = append(names, k)
	}
	sort.Strings(names)
	for _, k := range names {
		v := job.Headers[k]
		if !validFieldName(k) || !(strings.HasPrefix(k, "X-") || strings.HasPrefix(k, "x-")) {
			return fmt.Errorf("%w: header name %q", errInvalid, k)
		}
		if strings.ContainsAny(v, "\r\n") {
			return fmt.Errorf("%w: line break in header %s", errInvalid, k)
		}
		add(k, encodeText(v))
	}
	add("MIME-Version", "1.0")

	root, err := m.root(ctx)
	if err != nil {
		return err
	}
	for _, f := range append(h, root.fields...) {
		if _, err := io.WriteString(w, foldField(f[0], f[1])); err != nil {
			return err
		}
	}
	if _, err := io.WriteString(w, "\r\n"); err != nil {
		return err
	}
	return root.body(w)
}

// root builds the body structure:
//
//	multipart/mixed            (when there are attachments)
//	  multipart/related        (HTML with inline pictures)
//	    multipart/alternative  (text and HTML)
//	      text/plain
//	      text/html
//	    inline pictures
//	  attachments
func (m *message) root(ctx context.Context) (entity, error) {
	job := m.job
	var body entity
	switch {
	case job.Text != "" && job.HTML != "":
		body = m.multipart("alternative", []entity{textEntity("plain", job.Text), textEntity("html", job.HTML)})
	case job.HTML != "":
		body = textEntity("html", job.HTML)
	default:
		body = textEntity("plain", job.Text)
	}
	var inline, attached []entity
	for i := range job.Attachments {
		a := &job.Attachments[i]
		e, err := m.attachmentEntity(ctx, a)
		if err != nil {
			return entity{}, err
		}
		if a.Inline && a.ContentID != "" && job.HTML != "" {
			inline = append(inline, e)
		} else {
			attached = append(attached, e)
		}
	}
	if len(inline) > 0 {
		body = m.multipart("related", append([]entity{body}, inline...))
	}
	if len(attached) > 0 {
		body = m.multipart("mixed", append([]entity{body}, attached...))
	}
	return body, nil
}

func (m *message) multipart(subtype string, parts []entity) entity {
	b := m.boundary()
	ct := "multipart/" + subtype + "; boundary=\"" + b + "\""
	if subtype == "related" {
		ct = "multipart/related; type=\"text/html\"; boundary=\"" + b + "\""
		if len(parts) > 0 && len(parts[0].fields) > 0 && strings.HasPrefix(parts[0].fields[0][1], "multipart/alternative") {
			ct = "multipart/related; type=\"multipart/alternative\"; boundary=\"" + b + "\""
		}
	}
	return entity{
		fields: [][2]string{{"Content-Type", ct}},
		body: func(w io.Writer) error {
			for _, p := range parts {
				if _, err := io.WriteString(w, "--"+b+"\r\n"); err != nil {
					return err
				}
				for _, f := range p.fields {
					if _, err := io.WriteString(w, foldField(f[0], f[1])); err != nil {
						return err
					}
				}
				if _, err := io.WriteString(w, "\r\n"); err != nil {
					return err
				}
				if err := p.body(w); err != nil {
					return err
				}
				if _, err := io.WriteString(w, "\r\n"); err != nil {
					return err
				}
			}
			_, err := io.WriteString(w, "--"+b+"--\r\n")
			return err
		},
	}
}

// textEntity is a UTF-8 body part in quoted-printable, which keeps lines
// short and any content 7-bit.
func textEntity(subtype, text string) entity {
	return entity{
		fields: [][2]string{
			{"Content-Type", "text/" + subtype + "; charset=\"utf-8\""},
			{"Content-Transfer-Encoding", "quoted-printable"},
		},
		body: func(w io.Writer) error {
			qp := quotedprintable.NewWriter(w)
			if _, err := io.WriteString(qp, text); err != nil {
				return err
			}
			return qp.Close()
		},
	}
}

func (m *message) attachmentEntity(ctx context.Context, a *mailjob.Attachment) (entity, error) {
	if strings.ContainsAny(a.Filename, "\r\n") || strings.ContainsAny(a.ContentID, "\r\n<> ") {
		return entity{}, fmt.Errorf("%w: attachment %q", errInvalid, a.Filename)
	}
	mt, params, err := mime.ParseMediaType(a.ContentType)
	if err != nil || strings.HasPrefix(mt, "multipart/") || strings.HasPrefix(mt, "message/") {
		mt, params = "application/octet-stream", nil
	}
	ct := mt
	keys := make([]string, 0, len(params))
	for k := range params {
		if k != "name" {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	for _, k := range keys {
		ct += "; " + formatParam(k, params[k])
	}
	// name= for older clients: RFC 2047 inside a quoted string, as most
	// mail programs write it; filename= in Content-Disposition is the
	// standard place (RFC 2231).
	if isASCII(a.Filename) {
		ct += "; " + formatParam("name", a.Filename)
	} else {
		ct += "; name=\"" + mime.QEncoding.Encode("utf-8", a.Filename) + "\""
	}
	disposition := "attachment"
	if a.Inline {
		disposition = "inline"
	}
	fields := [][2]string{
		{"Content-Type", ct},
		{"Content-Transfer-Encoding", "base64"},
		{"Content-Disposition", disposition + "; " + formatParam("filename", a.Filename)},
	}
	if a.ContentID != "" {
		fields = append(fields, [2]string{"Content-ID", "<" + a.ContentID + ">"})
	}
	return entity{fields: fields, body: func(w io.Writer) error { return m.writeAttachment(ctx, w, a) }}, nil
}

// copyBufferSize is the size of the buffer attachments are copied with.
const copyBufferSize = 32 << 10

func (m *message) writeAttachment(ctx context.Context, w io.Writer, a *mailjob.Attachment) error {
	lw := &lineWrapper{w: w}
	enc := base64.NewEncoder(base64.StdEncoding, lw)
	var src io.Reader
	var want int64 = -1
	switch {
	case a.ContentBase64 != "":
		src = base64.NewDecoder(base64.StdEncoding, strings.NewReader(a.ContentBase64))
	case a.Object != nil:
		if m.att == nil {
			return &attachmentError{a.Filename, errors.New("no attachment store to read the object from")}
		}
		rc, err := m.att(ctx, *a.Object)
		if err != nil {
			return &attachmentError{a.Filename, err}
		}
		defer rc.Close()
		src = rc
		if a.Object.Size > 0 {
			want = a.Object.Size
		}
	default:
		return &attachmentError{a.Filename, errors.New("no content")}
	}
	cr := &countingReader{r: src}
	buf := make([]byte, copyBufferSize)
	if _, err := io.CopyBuffer(writerOnly{enc}, readerOnly{cr}, buf); err != nil {
		if cr.err != nil {
			return &attachmentError{a.Filename, cr.err}
		}
		return err
	}
	if want >= 0 && cr.n != want {
		return &attachmentError{a.Filename, fmt.Errorf("%w: the object has %d bytes, the job says %d", outbound.ErrAttachmentMismatch, cr.n, want)}
	}
	return enc.Close()
}

// countingReader counts bytes and remembers a read error (to tell it
// from a write error in io.Copy).
type countingReader struct {
	r   io.Reader
	n   int64
	err error
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	if err != nil && err != io.EOF {
		c.err = err
	}
	return n, err
}

// readerOnly and writerOnly hide ReadFrom/WriteTo so that io.CopyBuffer
// uses the bounded buffer.
type readerOnly struct{ io.Reader }
type writerOnly struct{ io.Writer }

// lineWrapper breaks base64 into lines of 76 characters. The line break
// is written before the next character, so the content never ends with
// an empty line.
type lineWrapper struct {
	w   io.Writer
	col int
}

const base64Line = 76

// Preallocated, so that writing them through an interface does not
// allocate (once per line of a 20 MB attachment adds up).
var (
	crlf = []byte("\r\n")
	dot  = []byte(".")
)

func (l *lineWrapper) Write(p []byte) (int, error) {
	written := 0
	for len(p) > 0 {
		if l.col == base64Line {
			if _, err := l.w.Write(crlf); err != nil {
				return written, err
			}
			l.col = 0
		}
		n := min(base64Line-l.col, len(p))
		if _, err := l.w.Write(p[:n]); err != nil {
			return written, err
		}
		l.col += n
		written += n
		p = p[n:]
	}
	return written, nil
}

// dotWriter dot-stuffs a message for DATA (RFC 5321 4.5.2): a line that
// starts with "." gets another one. close ends the message with
// CRLF "." CRLF.
type dotWriter struct {
	w           io.Writer
	atLineStart bool
}

func newDotWriter(w io.Writer) *dotWriter { return &dotWriter{w: w, atLineStart: true} }

func (d *dotWriter) Write(p []byte) (int, error) {
	written := 0
	for len(p) > 0 {
		if d.atLineStart && p[0] == '.' {
			if _, err := d.w.Write(dot); err != nil {
				return written, err
			}
		}
		i := bytes.IndexByte(p, '\n')
		n := len(p)
		if i >= 0 {
			n = i + 1
		}
		if _, err := d.w.Write(p[:n]); err != nil {
			return written, err
		}
		d.atLineStart = i >= 0
		written += n
		p = p[n:]
	}
	return written, nil
}

// terminator is what close writes after the message.
func (d *dotWriter) terminator() string {
	if d.atLineStart {
		return ".\r\n"
	}
	return "\r\n.\r\n"
}

// formatAddress writes a recipient as `"Name" <local@domain>` with the
// domain as A-label and a non-ASCII name RFC 2047-encoded.
func formatAddress(r mailjob.Recipient) string {
	a := mail.Address{Name: r.Name, Address: r.Address}
	return a.String()
}

func formatList(rs []mailjob.Recipient) (string, error) {
	parts := make([]string, 0, len(rs))
	for _, r := range rs {
		if strings.ContainsAny(r.Name, "\r\n") {
			return "", fmt.Errorf("%w: line break in the name of %s", errInvalid, r.Address)
		}
		a, _, err := asciiDomain(r.Address)
		if err != nil {
			return "", err
		}
		parts = append(parts, formatAddress(mailjob.Recipient{Address: a, Name: r.Name}))
	}
	return strings.Join(parts, ", "), nil
}

// maxWord is the longest run without a space an unstructured header
// value may have before it is encoded (so that folding can keep every
// line under 998 bytes).
const maxWord = 900

// encodeText prepares an unstructured header value (Subject, X- headers):
// printable ASCII stays as it is; anything else becomes RFC 2047
// encoded-words (Q encoding, UTF-8), which also split values that could
// not be folded.
func encodeText(s string) string {
	if !needsEncoding(s) {
		return s
	}
	if e := mime.QEncoding.Encode("utf-8", s); e != s {
		return e
	}
	// ASCII that still needs encoding (a very long word, or "=?" that a
	// reader would take for an encoded-word): B-encode in pieces.
	var b strings.Builder
	for len(s) > 0 {
		n := min(45, len(s))
		for n < len(s) && !utf8.RuneStart(s[n]) {
			n--
		}
		if b.Len() > 0 {
			b.WriteByte(' ')
		}
		b.WriteString("=?utf-8?b?" + base64.StdEncoding.EncodeToString([]byte(s[:n])) + "?=")
		s = s[n:]
	}
	return b.String()
}

func needsEncoding(s string) bool {
	word := 0
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= 0x7f || (c < ' ' && c != '\t') {
			return true
		}
		if c == ' ' || c == '\t' {
			word = 0
		} else if word++; word > maxWord {
			return true
		}
	}
	return strings.Contains(s, "=?")
}

// foldField renders a header field, folded (CRLF before a space) so that
// lines stay near 78 characters. Unfolding gives the value back exactly.
func foldField(name, value string) string {
	line := name + ": " + value
	if len(line) <= 78 {
		return line + "\r\n"
	}
	// Fold points: a space followed by a non-space, after the name.
	var pieces []string
	start := 0
	for i := len(name) + 2; i < len(line)-1; i++ {
		if line[i] == ' ' && line[i+1] != ' ' && line[i+1] != '\t' && line[i-1] != ' ' {
			pieces = append(pieces, line[start:i])
			start = i
		}
	}
	pieces = append(pieces, line[start:])
	var b strings.Builder
	cur := 0
	for i, p := range pieces {
		if i > 0 && cur+len(p) > 78 {
			b.WriteString("\r\n")
			cur = 0
		}
		b.WriteString(p)
		cur += len(p)
	}
	b.WriteString("\r\n")
	return b.String()
}

// formatParam renders a MIME parameter: a token, a quoted string, or, for
// non-ASCII or long values, RFC 2231 (charset, percent-encoding, and
// continuations of at most about 60 characters).
func formatParam(key, value string) string {
	if value != "" && isToken(value) && len(value) <= 60 {
		return key + "=" + value
	}
	if isPrintableASCII(value) && len(value) <= 60 {
		return key + "=\"" + strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(value) + "\""
	}
	var enc []string // percent-encoded characters, never split
	for _, r := range value {
		var e strings.Builder
		for _, c := range []byte(string(r)) {
			if c < 0x80 && isAttrChar(c) {
				e.WriteByte(c)
			} else {
				e.WriteString("%" + strings.ToUpper(hex.EncodeToString([]byte{c})))
			}
		}
		enc = append(enc, e.String())
	}
	var chunks []string
	var cur strings.Builder
	for _, e := range enc {
		if cur.Len()+len(e) > 60 {
			chunks = append(chunks, cur.String())
			cur.Reset()
		}
		cur.WriteString(e)
	}
	chunks = append(chunks, cur.String())
	if len(chunks) == 1 {
		return key + "*=utf-8''" + chunks[0]
	}
	parts := make([]string, len(chunks))
	for i, c := range chunks {
		if i == 0 {
			c = "utf-8''" + c
		}
		parts[i] = fmt.Sprintf("%s*%d*=%s", key, i, c)
	}
	return strings.Join(parts, "; ")
}

func isToken(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c <= ' ' || c >= 0x7f || strings.IndexByte(`()<>@,;:\"/[]?=`, c) >= 0 {
			return false
		}
	}
	return true
}

// isAttrChar: RFC 2231 attribute-char (token characters except * ' %).
func isAttrChar(c byte) bool {
	return isToken(string(c)) && c != '*' && c != '\'' && c != '%'
}

func isPrintableASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < ' ' || s[i] >= 0x7f {
			return false
		}
	}
	return true
}

func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 {
			return false
		}
	}
	return true
}

// validFieldName: printable ASCII without ":" and space (RFC 5322 ftext).
func validFieldName(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] <= ' ' || s[i] >= 0x7f || s[i] == ':' {
			return false
		}
	}
	return true
}

func randomBoundary() string {
	b := make([]byte, 15)
	if _, err := rand.Read(b); err != nil {
		panic("smtp: crypto/rand: " + err.Error())
	}
	return "mailpipe=_" + hex.EncodeToString(b)
}
