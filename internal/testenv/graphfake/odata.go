package graphfake

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

var messageProps = []string{
	"bccRecipients", "body", "bodyPreview", "categories", "ccRecipients", "changeKey", "conversationId",
	"conversationIndex", "createdDateTime", "flag", "from", "hasAttachments", "id", "importance",
	"inferenceClassification", "internetMessageHeaders", "internetMessageId", "isDeliveryReceiptRequested",
	"isDraft", "isRead", "isReadReceiptRequested", "lastModifiedDateTime", "parentFolderId",
	"receivedDateTime", "replyTo", "sender", "sentDateTime", "subject", "toRecipients", "uniqueBody", "webLink",
}

// messageDefault: properties returned without $select.
var messageDefault = func() []string {
	var out []string
	for _, p := range messageProps {
		if p != "internetMessageHeaders" && p != "uniqueBody" {
			out = append(out, p)
		}
	}
	return out
}()

var folderProps = []string{"childFolderCount", "displayName", "id", "isHidden", "parentFolderId", "totalItemCount", "unreadItemCount"}

// parseSelect validates $select against props (case-insensitive) and
// returns canonical names; nil means the defaults.
func parseSelect(v string, props []string, typ string) ([]string, *gErr) {
	if strings.TrimSpace(v) == "" {
		return nil, nil
	}
	var out []string
	for _, f := range strings.Split(v, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		found := ""
		for _, p := range props {
			if strings.EqualFold(p, f) {
				found = p
				break
			}
		}
		if found == "" {
			return nil, errUnknownProperty(f, typ)
		}
		out = append(out, found)
	}
	return out, nil
}

// parseTop checks $top (1..max); def when absent.
func parseTop(v string, def, max int) (int, *gErr) {
	if v == "" {
		return def, nil
	}
	n, err := strconv.Atoi(strings.TrimSpace(v))
	if err != nil {
		return 0, newErr(http.StatusBadRequest, "BadRequest", fmt.Sprintf("Invalid $top value '%s'.", v))
	}
	if n < 1 || (max > 0 && n > max) {
		return 0, newErr(http.StatusBadRequest, "ErrorInvalidArgument",
			fmt.Sprintf("The value of the $top query option must be between 1 and %d.", max))
	}
	return n, nil
}

// pageToken is the state behind an opaque $skiptoken of a list: the
// query of the first request and the offset (Graph's $skip).
type pageToken struct {
	Q map[string][]string `json:"q"`
	O int                 `json:"o"`
}

func encodePageToken(q url.Values, offset int) string {
	b, _ := json.Marshal(pageToken{Q: q, O: offset})
	return base64.RawURLEncoding.EncodeToString(b)
}

// listQuery gives the effective query of a list request and its offset:
// with a $skiptoken, the query it encodes.
func listQuery(q url.Values) (url.Values, int, *gErr) {
	tok := q.Get("$skiptoken")
	if tok == "" {
		tok = q.Get("%24skiptoken")
	}
	if tok == "" {
		return q, 0, nil
	}
	b, err := base64.RawURLEncoding.DecodeString(tok)
	var pt pageToken
	if err != nil || json.Unmarshal(b, &pt) != nil || pt.O < 0 {
		return nil, 0, newErr(http.StatusBadRequest, "ErrorInvalidUrlQuery", "The skip token is invalid.")
	}
	return url.Values(pt.Q), pt.O, nil
}

// nextLink builds an opaque nextLink for path (as the client used it).
func nextLink(c *call, q url.Values, offset int) string {
	clean := url.Values{}
	for k, v := range q {
		if k != "$skiptoken" {
			clean[k] = v
		}
	}
	return "https://" + c.host + c.r.URL.Path + "?%24skiptoken=" + encodePageToken(clean, offset)
}

// ---- $filter ----

// cond is one comparison of a $filter.
type cond struct {
	prop string // canonical lower-case property
	op   string // eq, ne, ge, gt, le, lt, any
	str  string
	t    time.Time
	b    bool
	// singleValueExtendedProperties/any(...): id and value
	extID, extValue string
}

type filterParser struct {
	s   string
	pos int
}

func errFilter() *gErr {
	return newErr(http.StatusBadRequest, "ErrorInvalidUrlQueryFilter", "The query filter contains one or more invalid nodes.")
}

func (p *filterParser) ws() {
	for p.pos < len(p.s) && (p.s[p.pos] == ' ' || p.s[p.pos] == '\t') {
		p.pos++
	}
}

// word reads an identifier, path or keyword.
func (p *filterParser) word() string {
	p.ws()
	start := p.pos
	for p.pos < len(p.s) {
		ch := p.s[p.pos]
		if ch == ' ' || ch == '(' || ch == ')' || ch == ',' || ch == '\'' || ch == ':' {
			break
		}
		p.pos++
	}
	return p.s[start:p.pos]
}

func (p *filterParser) expect(ch byte) bool {
	p.ws()
	if p.pos < len(p.s) && p.s[p.pos] == ch {
		p.pos++
		return true
	}
	return false
}

// literal reads an OData string literal ('it”s') or another token.
func (p *filterParser) literal() (string, bool, bool) {
	p.ws()
	if p.pos < len(p.s) && p.s[p.pos] == '\'' {
		p.pos++
		var b strings.Builder
		for p.pos < len(p.s) {
			ch := p.s[p.pos]
			if ch == '\'' {
				if p.pos+1 < len(p.s) && p.s[p.pos+1] == '\'' {
					b.WriteByte('\'')
					p.pos += 2
					continue
				}
				p.pos++
				return b.String(), true, true
			}
			b.WriteByte(ch)
			p.pos++
		}
		return "", true, false // unterminated
	}
	start := p.pos
	for p.pos < len(p.s) && p.s[p.pos] != ' ' && p.s[p.pos] != ')' && p.s[p.pos] != ',' {
		p.pos++
	}
	return p.s[start:p.pos], false, p.pos > start
}

// parseFilter parses "a eq 'x' and b ge 2024-01-01T00:00:00Z" for the
// properties given (lower-case name -> kind: "string", "time", "bool").
func parseFilter(s string, props map[string]string) ([]cond, *gErr) {
	p := &filterParser{s: s}
	var out []cond
	for {
		c, e := p.cond(props)
		if e != nil {
			return nil, e
		}
		out = append(out, c)
		p.ws()
		if p.pos >= len(p.s) {
			return out, nil
		}
		if !strings.EqualFold(p.word(), "and") {
			return nil, errFilter()
		}
	}
}

func (p *filterParser) cond(props map[string]string) (cond, *gErr) {
	name := p.word()
	lname := strings.ToLower(name)
	if lname == "singlevalueextendedproperties/any" {
		// singleValueExtendedProperties/any(ep: ep/id eq '...' and ep/value eq '...')
		if !p.expect('(') {
			return cond{}, errFilter()
		}
		v := p.word()
		if !p.expect(':') {
			return cond{}, errFilter()
		}
		c := cond{prop: "singlevalueextendedproperties", op: "any"}
		for i := 0; i < 2; i++ {
			f := strings.ToLower(p.word())
			if !strings.EqualFold(p.word(), "eq") {
				return cond{}, errFilter()
			}
			lit, quoted, ok := p.literal()
			if !ok || !quoted {
				return cond{}, errFilter()
			}
			switch f {
			case strings.ToLower(v) + "/id":
				c.extID = lit
			case strings.ToLower(v) + "/value":
				c.extValue = lit
			default:
				return cond{}, errFilter()
			}
			p.ws()
			if p.pos < len(p.s) && p.s[p.pos] == ')' {
				break
			}
			if !strings.EqualFold(p.word(), "and") {
				return cond{}, errFilter()
			}
		}
		if !p.expect(')') || c.extID == "" {
			return cond{}, errFilter()
		}
		return c, nil
	}
	kind, ok := props[lname]
	if !ok {
		return cond{}, errFilter()
	}
	op := strings.ToLower(p.word())
	switch op {
	case "eq", "ne", "ge", "gt", "le", "lt":
	default:
		return cond{}, errFilter()
	}
	lit, quoted, ok := p.literal()
	if !ok {
		return cond{}, errFilter()
	}
	c := cond{prop: lname, op: op}
	switch kind {
	case "string":
		if !quoted {
			return cond{}, errFilter()
		}
		c.str = lit
	case "time":
		t, err := time.Parse(time.RFC3339, lit)
		if err != nil {
			return cond{}, errFilter()
		}
		c.t = t
	case "bool":
		switch strings.ToLower(lit) {
		case "true":
			c.b = true
		case "false":
		default:
			return cond{}, errFilter()
		}
	}
	return c, nil
}

func cmpOp(op string, c int) bool {
	switch op {
	case "eq":
		return c == 0
	case "ne":
		return c != 0
	case "ge":
		return c >= 0
	case "gt":
		return c > 0
	case "le":
		return c <= 0
	case "lt":
		return c < 0
	}
	return false
}

// ---- extended properties ----

// normExtID gives the canonical form of an extended property id, as
// Exchange returns it: "Integer 0xe08", "String {guid} Name X".
func normExtID(id string) string {
	f := strings.Fields(id)
	if len(f) == 0 {
		return id
	}
	f[0] = canonicalType(f[0])
	if len(f) == 2 && strings.HasPrefix(strings.ToLower(f[1]), "0x") {
		if n, err := strconv.ParseUint(f[1][2:], 16, 32); err == nil {
			f[1] = "0x" + strconv.FormatUint(n, 16)
		}
		return strings.Join(f, " ")
	}
	if len(f) >= 4 && strings.HasPrefix(f[1], "{") {
		f[1] = strings.ToLower(f[1])
		switch strings.ToLower(f[2]) {
		case "name":
			f[2] = "Name"
			return strings.Join(f[:3], " ") + " " + strings.Join(strings.Fields(id)[3:], " ")
		case "id":
			f[2] = "Id"
			if n, err := strconv.ParseUint(strings.TrimPrefix(strings.ToLower(f[3]), "0x"), 16, 32); err == nil {
				f[3] = "0x" + strconv.FormatUint(n, 16)
			}
		}
	}
	return strings.Join(f, " ")
}

func canonicalType(t string) string {
	for _, k := range []string{"Binary", "Boolean", "Currency", "CLSID", "Double", "Float", "Integer", "Long", "Object", "Short", "String", "SystemTime"} {
		if strings.EqualFold(k, t) {
			return k
		}
	}
	return t
}

// expandExt parses $expand=singleValueExtendedProperties($filter=id eq '...').
// ok is false when $expand does not ask for them; ids nil means all.
func expandExt(v string) (ids []string, ok bool, e *gErr) {
	v = strings.TrimSpace(v)
	if v == "" {
		return nil, false, nil
	}
	name, inner, hasInner := strings.Cut(v, "(")
	if !strings.EqualFold(strings.TrimSpace(name), "singleValueExtendedProperties") {
		return nil, false, errBadRequest(fmt.Sprintf("Parsing OData Select and Expand failed: Could not find a property named '%s' on type 'microsoft.graph.message'.", strings.TrimSpace(name)))
	}
	if !hasInner {
		return nil, true, nil
	}
	inner = strings.TrimSuffix(strings.TrimSpace(inner), ")")
	k, fv, _ := strings.Cut(inner, "=")
	if !strings.EqualFold(strings.TrimSpace(k), "$filter") {
		return nil, false, errFilter()
	}
	p := &filterParser{s: fv}
	for {
		if !strings.EqualFold(p.word(), "id") || !strings.EqualFold(p.word(), "eq") {
			return nil, false, errFilter()
		}
		lit, quoted, okLit := p.literal()
		if !okLit || !quoted {
			return nil, false, errFilter()
		}
		ids = append(ids, normExtID(lit))
		p.ws()
		if p.pos >= len(p.s) {
			return ids, true, nil
		}
		if !strings.EqualFold(p.word(), "or") {
			return nil, false, errFilter()
		}
	}
}
