package mailjob

import (
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"
)

// ErrInvalidJob is matched (errors.Is) by every *ValidationError.
var ErrInvalidJob = errors.New("mailjob: invalid job")

// Problem is one thing wrong with a job.
type Problem struct {
	// Path is the JSON path of the offending value: "job_id",
	// "attachments[2].filename", "headers.Content-Type",
	// `headers["X-A b"]` for keys that are not plain names. It is empty for
	// problems of the job as a whole (size, number of recipients).
	Path string
	// Reason says what is wrong, for humans.
	Reason string
}

func (p Problem) String() string {
	if p.Path == "" {
		return p.Reason
	}
	return p.Path + ": " + p.Reason
}

// ValidationError lists every problem found in a job: Validate reports
// them in the order of the job's fields; ParseJob and ValidateJSON first
// the structural ones in the order of the document.
type ValidationError struct {
	Problems []Problem
}

func (e *ValidationError) Error() string {
	var b strings.Builder
	b.WriteString("mailjob: invalid job: ")
	for i, p := range e.Problems {
		if i > 0 {
			b.WriteString("; ")
		}
		b.WriteString(p.String())
	}
	return b.String()
}

// Unwrap makes errors.Is(err, ErrInvalidJob) true.
func (e *ValidationError) Unwrap() error { return ErrInvalidJob }

// Paths returns the paths of the problems, in order.
func (e *ValidationError) Paths() []string {
	out := make([]string, len(e.Problems))
	for i, p := range e.Problems {
		out[i] = p.Path
	}
	return out
}

// Validate checks the job against the format and against limits (zero
// fields of limits mean the defaults). It returns nil or a
// *ValidationError listing every problem.
func (j *Job) Validate(limits Limits) error {
	v := &validator{limits: limits.withDefaults()}
	v.job(j)
	return v.err()
}

type validator struct {
	limits   Limits
	problems []Problem
	// skip reports paths already known to be broken (ParseJob's structural
	// problems), whose follow-up problems would only repeat them.
	skip func(path string) bool
}

func (v *validator) add(path, format string, args ...any) {
	if v.skip != nil && v.skip(path) {
		return
	}
	v.problems = append(v.problems, Problem{Path: path, Reason: fmt.Sprintf(format, args...)})
}

func (v *validator) err() error {
	if len(v.problems) == 0 {
		return nil
	}
	return &ValidationError{Problems: v.problems}
}

var (
	jobIDRe         = regexp.MustCompile(`^[A-Za-z0-9._:-]+$`)
	senderProfileRe = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]*$`)
	// A media type with optional parameters (RFC 2045 / 9110 tokens).
	contentTypeRe = regexp.MustCompile(`^[A-Za-z0-9!#$%&'*+.^_` + "`" + `|~-]+/[A-Za-z0-9!#$%&'*+.^_` + "`" + `|~-]+` +
		`([ \t]*;[ \t]*[A-Za-z0-9!#$%&'*+.^_` + "`" + `|~-]+=([A-Za-z0-9!#$%&'*+.^_` + "`" + `|~-]+|"[^"\\\x00-\x1f\x7f]*"))*$`)
	contentIDRe   = regexp.MustCompile("^[A-Za-z0-9!#$%&'*+/=?^_`{|}~.@-]+$")
	bucketRe      = regexp.MustCompile(`^[A-Za-z0-9_-]+$`)
	sha256Re      = regexp.MustCompile(`^[0-9a-fA-F]{64}$`)
	corrKeyRe     = regexp.MustCompile(`^[A-Za-z0-9_.:-]+$`)
	plainKeyRe    = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_-]*$`)
	reservedHdrRe = regexp.MustCompile(`^[Xx]-[Mm][Aa][Ii][Ll][Pp][Ii][Pp][Ee]-`)
)

func (v *validator) job(j *Job) {
	v.jobID("job_id", j.JobID)
	if p := AddressProblem(j.From); p != "" {
		v.add("from", "%s", p)
	}
	if s := j.SenderProfile; s != "" && (len(s) > MaxSenderProfileLen || !senderProfileRe.MatchString(s)) {
		v.add("sender_profile", "must be 1-%d characters a-z 0-9 _ - starting with a letter or digit", MaxSenderProfileLen)
	}
	v.recipients("to", j.To)
	v.recipients("cc", j.Cc)
	v.recipients("bcc", j.Bcc)
	if j.Recipients() == 0 {
		v.add("to", "at least one recipient is required (in to, cc or bcc)")
	}
	v.recipients("reply_to", j.ReplyTo)
	v.text("subject", j.Subject, MaxSubjectLen)
	if j.Text == "" && j.HTML == "" {
		v.add("text", "a body is required: text, html or both")
	}
	if !utf8.ValidString(j.Text) {
		v.add("text", "is not valid UTF-8")
	}
	if !utf8.ValidString(j.HTML) {
		v.add("html", "is not valid UTF-8")
	}
	inline, total := v.attachments(j.Attachments)
	total += int64(len(j.Text)) + int64(len(j.HTML))
	v.headers(j.Headers)
	switch j.Importance {
	case "", ImportanceLow, ImportanceNormal, ImportanceHigh:
	default:
		v.add("importance", "must be low, normal or high, not %q", string(j.Importance))
	}
	v.correlation(j.Correlation)

	if n := j.Recipients(); n > v.limits.MaxRecipients {
		v.add("", "%d recipients in to, cc and bcc together, over the limit of %d", n, v.limits.MaxRecipients)
	}
	if inline > int64(v.limits.MaxInlineSize) {
		v.add("attachments", "the inline content (content_base64) is %d bytes in total, over the limit of %d: upload large attachments to the object store", inline, v.limits.MaxInlineSize)
	}
	if total > v.limits.MaxTotalSize {
		v.add("", "the mail is %d bytes (bodies and attachments), over the limit of %d bytes", total, v.limits.MaxTotalSize)
	}
	if data, err := json.Marshal(j); err == nil && len(data) > v.limits.MaxJobSize {
		v.add("", "the job is %d bytes as JSON, over the limit of %d bytes: upload large attachments to the object store", len(data), v.limits.MaxJobSize)
	}
}

func (v *validator) jobID(path, id string) {
	switch {
	case id == "":
		v.add(path, "required")
	case len(id) > MaxJobIDLen:
		v.add(path, "is %d characters, at most %d allowed", len(id), MaxJobIDLen)
	case !jobIDRe.MatchString(id):
		v.add(path, "may contain only A-Z a-z 0-9 . _ : - (found %s)", quoteFirstBad(id, func(r rune) bool {
			return r < utf8.RuneSelf && jobIDRe.MatchString(string(r))
		}))
	}
}

func (v *validator) recipients(path string, rs []Recipient) {
	for i, r := range rs {
		p := index(path, i)
		if reason := AddressProblem(r.Address); reason != "" {
			v.add(field(p, "address"), "%s", reason)
		}
		if r.Name != "" {
			v.text(field(p, "name"), r.Name, MaxNameLen)
		}
	}
}

// text checks a one-line text of at most max characters.
func (v *validator) text(path, s string, max int) {
	if p := lineProblem(s); p != "" {
		v.add(path, "%s", p)
		return
	}
	if n := utf8.RuneCountInString(s); n > max {
		v.add(path, "is %d characters, at most %d allowed", n, max)
	}
}

// attachments checks the attachments and returns the length of their
// inline (base64) content and their decoded size.
func (v *validator) attachments(as []Attachment) (inline, size int64) {
	if len(as) > v.limits.MaxAttachments {
		v.add("attachments", "%d attachments, at most %d allowed", len(as), v.limits.MaxAttachments)
	}
	cids := map[string]int{}
	for i, a := range as {
		p := index("attachments", i)
		switch {
		case a.Filename == "":
			v.add(field(p, "filename"), "required")
		case lineProblem(a.Filename) != "":
			v.add(field(p, "filename"), "%s", lineProblem(a.Filename))
		case strings.ContainsAny(a.Filename, `/\`):
			v.add(field(p, "filename"), `must be a file name without a path (no / or \)`)
		default:
			v.text(field(p, "filename"), a.Filename, MaxFilenameLen)
		}
		switch {
		case a.ContentType == "":
			v.add(field(p, "content_type"), "required")
		case utf8.RuneCountInString(a.ContentType) > MaxContentTypeLen || !contentTypeRe.MatchString(a.ContentType):
			v.add(field(p, "content_type"), "must be a media type such as application/pdf (parameters allowed), at most %d characters", MaxContentTypeLen)
		}
		switch cid := a.ContentID; {
		case cid == "":
			if a.Inline {
				v.add(field(p, "content_id"), "required when inline is true (the HTML body refers to the picture as cid:<content_id>)")
			}
		case strings.HasPrefix(cid, "<") || strings.HasSuffix(cid, ">"):
			v.add(field(p, "content_id"), "must be given without < and >")
		case len(cid) > MaxContentIDLen || !contentIDRe.MatchString(cid):
			v.add(field(p, "content_id"), "may contain only letters, digits and !#$%%&'*+/=?^_`{|}~.@- (at most %d)", MaxContentIDLen)
		default:
			if first, dup := cids[cid]; dup {
				v.add(field(p, "content_id"), "%q is also the content_id of attachments[%d]", cid, first)
			} else {
				cids[cid] = i
			}
		}
		switch {
		case a.ContentBase64 != "" && a.Object != nil:
			v.add(p, "content_base64 and object are mutually exclusive: give one")
		case a.ContentBase64 == "" && a.Object == nil:
			v.add(p, "one of content_base64 or object is required (empty attachments are not supported)")
		}
		if a.ContentBase64 != "" {
			inline += int64(len(a.ContentBase64))
			n, reason := base64Size(a.ContentBase64)
			if reason != "" {
				v.add(field(p, "content_base64"), "%s", reason)
			}
			size += n
		}
		if o := a.Object; o != nil {
			op := field(p, "object")
			switch {
			case o.Bucket == "":
				v.add(field(op, "bucket"), "required")
			case !bucketRe.MatchString(o.Bucket):
				v.add(field(op, "bucket"), "may contain only A-Z a-z 0-9 _ - (a JetStream object store bucket name)")
			}
			switch {
			case o.Name == "":
				v.add(field(op, "name"), "required")
			default:
				v.text(field(op, "name"), o.Name, MaxObjectNameLen)
			}
			switch {
			case o.Size < 0:
				v.add(field(op, "size"), "must not be negative")
			case o.Size > MaxObjectSize:
				v.add(field(op, "size"), "%d bytes is over %d, the largest attachment Microsoft Graph accepts", o.Size, MaxObjectSize)
			}
			size += max(o.Size, 0)
			if o.SHA256 != "" && !sha256Re.MatchString(o.SHA256) {
				v.add(field(op, "sha256"), "must be 64 hex digits")
			}
		}
	}
	return inline, size
}

// base64Size checks standard base64 with padding and no line breaks and
// returns the decoded size.
func base64Size(s string) (int64, string) {
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case 'A' <= c && c <= 'Z', 'a' <= c && c <= 'z', '0' <= c && c <= '9', c == '+', c == '/':
		case c == '=':
			rest := s[i:]
			if rest != "=" && rest != "==" {
				return 0, "is not valid base64: '=' padding only at the end"
			}
			i = len(s)
		case c == '\r' || c == '\n' || c == ' ' || c == '\t':
			return 0, "is not valid base64: must not contain line breaks or spaces"
		case c == '-' || c == '_':
			return 0, "is not valid base64: standard alphabet with + and / expected, not the URL-safe one"
		default:
			return 0, fmt.Sprintf("is not valid base64: contains %q", rune(c))
		}
	}
	if len(s)%4 != 0 {
		return 0, "is not valid base64: its length must be a multiple of 4 (with = padding)"
	}
	n := int64(len(s)) / 4 * 3
	n -= int64(len(s) - len(strings.TrimRight(s, "=")))
	return n, ""
}

func (v *validator) headers(h map[string]string) {
	if len(h) > MaxHeaders {
		v.add("headers", "%d headers, at most %d allowed", len(h), MaxHeaders)
	}
	names := sortedKeys(h)
	seen := map[string]string{}
	for _, name := range names {
		p := key("headers", name)
		if reason := headerNameProblem(name); reason != "" {
			v.add(p, "%s", reason)
		} else if prev, dup := seen[strings.ToLower(name)]; dup {
			v.add(p, "repeats %s: header names are case-insensitive", prev)
		} else {
			seen[strings.ToLower(name)] = name
		}
		val := h[name]
		if reason := lineProblem(val); reason != "" {
			v.add(p, "value %s", reason)
		} else if len(val) > MaxHeaderValueLen {
			v.add(p, "value is %d bytes, at most %d allowed", len(val), MaxHeaderValueLen)
		}
	}
}

func headerNameProblem(name string) string {
	switch {
	case name == "":
		return "header name is empty"
	case strings.ContainsAny(name, "\r\n"):
		return "header name must not contain line breaks"
	case len(name) < 2 || (name[0] != 'X' && name[0] != 'x') || name[1] != '-':
		return "custom headers must start with X- (Exchange refuses other names)"
	case len(name) == 2:
		return "header name needs a name after X-"
	case len(name) > MaxHeaderNameLen:
		return fmt.Sprintf("header name is %d bytes, at most %d allowed", len(name), MaxHeaderNameLen)
	case reservedHdrRe.MatchString(name):
		return "X-Mailpipe- headers are reserved for mailpipe"
	}
	for i := 0; i < len(name); i++ {
		if c := name[i]; c <= ' ' || c >= 0x7f || c == ':' {
			return fmt.Sprintf("header name may contain printable ASCII except ':' only (found %q)", rune(c))
		}
	}
	return ""
}

func (v *validator) correlation(c map[string]string) {
	if len(c) > MaxCorrelationKeys {
		v.add("correlation", "%d keys, at most %d allowed", len(c), MaxCorrelationKeys)
	}
	for _, k := range sortedKeys(c) {
		p := key("correlation", k)
		if k == "" || len(k) > MaxCorrelationKeyLen || !corrKeyRe.MatchString(k) {
			v.add(p, "key must be 1-%d characters A-Z a-z 0-9 _ . : -", MaxCorrelationKeyLen)
		}
		if !utf8.ValidString(c[k]) {
			v.add(p, "is not valid UTF-8")
		} else if n := utf8.RuneCountInString(c[k]); n > MaxCorrelationValLen {
			v.add(p, "is %d characters, at most %d allowed", n, MaxCorrelationValLen)
		}
	}
}

// lineProblem checks that s is valid UTF-8 on one line: no CR, LF, other
// control characters (tab is allowed) or Unicode line separators.
func lineProblem(s string) string {
	if !utf8.ValidString(s) {
		return "is not valid UTF-8"
	}
	for _, r := range s {
		switch {
		case r == '\r' || r == '\n':
			return "must be one line: it contains a line break (CR or LF)"
		case r == '\u0085' || r == '\u2028' || r == '\u2029':
			return fmt.Sprintf("must be one line: it contains the line separator U+%04X", r)
		case r == '\t':
		case r < 0x20 || r == 0x7f:
			return fmt.Sprintf("must not contain the control character U+%04X", r)
		}
	}
	return ""
}

// AddressProblem returns why addr is not an address mailpipe accepts, or
// "" when it is. Accepted are bare addresses local@domain: a dot-atom
// local part (RFC 5322; UTF-8 allowed, RFC 6531) of at most 64 bytes and
// a domain of at least two labels, which may be internationalized (U-labels
// or xn-- A-labels). Quoted local parts, address literals and display names
// are refused.
func AddressProblem(addr string) string {
	switch {
	case addr == "":
		return "required"
	case !utf8.ValidString(addr):
		return "is not valid UTF-8"
	case strings.ContainsAny(addr, "\r\n\u0085\u2028\u2029"):
		return "must not contain line breaks"
	case strings.ContainsAny(addr, `<>"`):
		return "must be a bare address such as name@example.com; put a display name in name"
	case strings.ContainsAny(addr, ",;"):
		return "must be a single address: list each recipient separately"
	case strings.IndexFunc(addr, func(r rune) bool { return unicode.IsSpace(r) || unicode.IsControl(r) }) >= 0:
		return "must not contain spaces or control characters"
	case utf8.RuneCountInString(addr) > MaxAddressLen:
		return fmt.Sprintf("is %d characters, at most %d allowed", utf8.RuneCountInString(addr), MaxAddressLen)
	}
	at := strings.LastIndexByte(addr, '@')
	if at < 0 {
		return "is not an e-mail address: no @"
	}
	local, domain := addr[:at], addr[at+1:]
	if strings.Contains(local, "@") {
		return "is not an e-mail address: more than one @"
	}
	if p := localPartProblem(local); p != "" {
		return p
	}
	return domainProblem(domain)
}

func localPartProblem(local string) string {
	switch {
	case local == "":
		return "is not an e-mail address: nothing before @"
	case len(local) > 64:
		return "the part before @ is longer than 64 bytes"
	case strings.HasPrefix(local, ".") || strings.HasSuffix(local, ".") || strings.Contains(local, ".."):
		return "the part before @ must not start or end with a dot or contain two dots in a row"
	}
	for _, r := range local {
		if r < utf8.RuneSelf {
			if !isAtext(byte(r)) && r != '.' {
				return fmt.Sprintf("the part before @ must not contain %q", r)
			}
		} else if !unicode.IsGraphic(r) || unicode.IsSpace(r) {
			return fmt.Sprintf("the part before @ must not contain U+%04X", r)
		}
	}
	return ""
}

func isAtext(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' ||
		strings.IndexByte("!#$%&'*+/=?^_`{|}~-", c) >= 0
}

func domainProblem(d string) string {
	switch {
	case d == "":
		return "is not an e-mail address: no domain after @"
	case strings.HasPrefix(d, "["):
		return "address literals ([192.0.2.1]) are not supported"
	case len(d) > 253:
		return "the domain is longer than 253 bytes"
	}
	labels := strings.Split(d, ".")
	if len(labels) < 2 {
		return fmt.Sprintf("the domain %q needs at least two labels (example.com)", d)
	}
	for _, l := range labels {
		if l == "" {
			return "the domain must not start or end with a dot or contain two dots in a row"
		}
		if strings.HasPrefix(l, "-") || strings.HasSuffix(l, "-") {
			return fmt.Sprintf("the domain label %q must not start or end with a hyphen", l)
		}
		if len(l) > 63 {
			return fmt.Sprintf("the domain label %q is longer than 63 bytes", l)
		}
		for _, r := range l {
			ok := r == '-' || ('a' <= r && r <= 'z') || ('A' <= r && r <= 'Z') || ('0' <= r && r <= '9') ||
				(r >= utf8.RuneSelf && (unicode.IsLetter(r) || unicode.IsMark(r) || unicode.IsDigit(r)))
			if !ok {
				return fmt.Sprintf("the domain must not contain %q", r)
			}
		}
	}
	if tld := labels[len(labels)-1]; strings.IndexFunc(tld, func(r rune) bool { return r < '0' || r > '9' }) < 0 {
		return "the domain must not end in a number (IP addresses are not supported)"
	}
	return ""
}

// quoteFirstBad quotes the first rune of s for which ok is false.
func quoteFirstBad(s string, ok func(rune) bool) string {
	for _, r := range s {
		if !ok(r) {
			return strconv.QuoteRune(r)
		}
	}
	return "?"
}

func sortedKeys(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// JSON paths.

func field(parent, name string) string {
	if parent == "" {
		return name
	}
	return parent + "." + name
}

func index(parent string, i int) string { return parent + "[" + strconv.Itoa(i) + "]" }

func key(parent, k string) string {
	if plainKeyRe.MatchString(k) {
		return field(parent, k)
	}
	return parent + "[" + strconv.Quote(k) + "]"
}
