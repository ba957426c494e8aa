package graphfake

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
)

const timeLayout = "2006-01-02T15:04:05Z"

func fmtTime(t time.Time) string { return t.UTC().Format(timeLayout) }

// renderOpts say how to render a message.
type renderOpts struct {
	sel      []string // nil: defaults
	ext      bool     // $expand=singleValueExtendedProperties
	extIDs   []string // nil: all
	bodyText bool     // Prefer: outlook.body-content-type="text"
}

func (c *call) renderOpts(q url.Values) (renderOpts, *gErr) {
	var o renderOpts
	var e *gErr
	if o.sel, e = parseSelect(q.Get("$select"), messageProps, "message"); e != nil {
		return o, e
	}
	if o.extIDs, o.ext, e = expandExt(q.Get("$expand")); e != nil {
		return o, e
	}
	o.bodyText = c.prefs.bodyText
	return o, nil
}

func recipient(a addr) map[string]any {
	name := a.Name
	if name == "" {
		name = a.Address
	}
	return map[string]any{"emailAddress": map[string]any{"name": name, "address": a.Address}}
}

func recipients(as []addr) []map[string]any {
	out := []map[string]any{}
	for _, a := range as {
		out = append(out, recipient(a))
	}
	return out
}

func (m *message) changeKey() string {
	h := sha256.Sum256([]byte(m.immID + ":" + strconv.Itoa(m.version)))
	return "CQAAABYAAAA" + base64.StdEncoding.EncodeToString(h[:12])
}

var subjectPrefix = regexp.MustCompile(`(?i)^\s*((re|fw|fwd|aw|wg|sv|vs)\s*:\s*)+`)

func (m *message) conversationID() string {
	h := sha256.Sum256([]byte(strings.ToLower(subjectPrefix.ReplaceAllString(m.meta.subject, ""))))
	return base64.URLEncoding.EncodeToString(append([]byte{0x00, 0x10, 0x24, 0x00}, h[:16]...))
}

// extProps gives the extended properties of m, stored and computed.
func (m *message) extProps() []extProp {
	out := append([]extProp(nil), m.ext...)
	head, _ := splitHeader(m.raw)
	out = append(out,
		extProp{ID: "Integer 0xe08", Value: strconv.Itoa(len(m.raw))}, // PidTagMessageSize
		extProp{ID: "String 0x7d", Value: string(head)},               // PidTagTransportMessageHeaders
	)
	return out
}

func (c *call) messageJSON(m *message, o renderOpts) map[string]any {
	sel := o.sel
	if sel == nil {
		sel = messageDefault
	}
	meta := &m.meta
	v := map[string]any{
		"@odata.etag": `W/"` + m.changeKey() + `"`,
		"id":          m.idFor(c.immutable),
	}
	for _, p := range sel {
		switch p {
		case "createdDateTime":
			v[p] = fmtTime(m.created)
		case "lastModifiedDateTime":
			v[p] = fmtTime(m.modified)
		case "changeKey":
			v[p] = m.changeKey()
		case "categories":
			v[p] = []string{}
		case "receivedDateTime":
			v[p] = fmtTime(m.received)
		case "sentDateTime":
			if meta.sent.IsZero() {
				v[p] = fmtTime(m.received)
			} else {
				v[p] = fmtTime(meta.sent)
			}
		case "hasAttachments":
			v[p] = meta.hasAttachments || len(m.atts) > 0
		case "internetMessageId":
			if meta.messageID == "" {
				v[p] = nil
			} else {
				v[p] = meta.messageID
			}
		case "subject":
			v[p] = meta.subject
		case "bodyPreview":
			v[p] = meta.preview
		case "importance":
			v[p] = meta.importance
		case "parentFolderId":
			v[p] = m.folder.id
		case "conversationId":
			v[p] = m.conversationID()
		case "conversationIndex":
			h := sha256.Sum256([]byte(m.conversationID()))
			v[p] = base64.StdEncoding.EncodeToString(h[:22])
		case "isDeliveryReceiptRequested":
			v[p] = false
		case "isReadReceiptRequested":
			v[p] = false
		case "isRead":
			v[p] = m.isRead
		case "isDraft":
			v[p] = m.isDraft
		case "webLink":
			v[p] = "https://outlook.office365.com/owa/?ItemID=" + url.QueryEscape(m.restID) + "&exvsurl=1&viewmodel=ReadMessageItem"
		case "inferenceClassification":
			v[p] = "focused"
		case "body", "uniqueBody":
			typ, content := meta.bodyType, meta.body
			if o.bodyText && typ == "html" {
				typ, content = "text", makePreviewFull(content)
			}
			v[p] = map[string]any{"contentType": typ, "content": content}
		case "sender":
			if meta.sender != nil {
				v[p] = recipient(*meta.sender)
			} else {
				v[p] = nil
			}
		case "from":
			if meta.from != nil {
				v[p] = recipient(*meta.from)
			} else {
				v[p] = nil
			}
		case "toRecipients":
			v[p] = recipients(meta.to)
		case "ccRecipients":
			v[p] = recipients(meta.cc)
		case "bccRecipients":
			v[p] = recipients(meta.bcc)
		case "replyTo":
			v[p] = recipients(meta.replyTo)
		case "flag":
			v[p] = map[string]any{"flagStatus": "notFlagged"}
		case "internetMessageHeaders":
			hs := []map[string]string{}
			for _, h := range meta.headers {
				hs = append(hs, map[string]string{"name": h.Name, "value": h.Value})
			}
			v[p] = hs
		}
	}
	if o.ext {
		out := []map[string]string{}
		for _, ep := range m.extProps() {
			if o.extIDs == nil && (ep.ID == "Integer 0xe08" || ep.ID == "String 0x7d") {
				continue
			}
			keep := o.extIDs == nil
			for _, id := range o.extIDs {
				if strings.EqualFold(id, ep.ID) {
					keep = true
				}
			}
			if keep {
				out = append(out, map[string]string{"id": ep.ID, "value": ep.Value})
			}
		}
		v["singleValueExtendedProperties"] = out
	}
	return v
}

// makePreviewFull turns HTML into text without truncating.
func makePreviewFull(html string) string {
	var b strings.Builder
	in := false
	for _, r := range html {
		switch {
		case r == '<':
			in = true
		case r == '>':
			in = false
		case !in:
			b.WriteRune(r)
		}
	}
	return strings.TrimSpace(b.String())
}

// messageArg looks up the message of the path; the caller holds s.mu.
func (c *call) messageArg() (*message, *gErr) {
	id := c.path[1]
	if m := c.mb.lookup(id); m != nil {
		return m, nil
	}
	if !validID(id) {
		return nil, newErr(http.StatusBadRequest, "ErrorInvalidIdMalformed", msgIDMalformed)
	}
	return nil, errItemNotFound()
}

var messageFilterProps = map[string]string{
	"internetmessageid":    "string",
	"subject":              "string",
	"receiveddatetime":     "time",
	"sentdatetime":         "time",
	"createddatetime":      "time",
	"lastmodifieddatetime": "time",
	"isread":               "bool",
	"isdraft":              "bool",
}

func (m *message) timeProp(p string) time.Time {
	switch p {
	case "sentdatetime":
		if !m.meta.sent.IsZero() {
			return m.meta.sent
		}
		return m.received
	case "createddatetime":
		return m.created
	case "lastmodifieddatetime":
		return m.modified
	}
	return m.received
}

func (m *message) matches(conds []cond) bool {
	for _, cd := range conds {
		var ok bool
		switch cd.prop {
		case "internetmessageid":
			ok = cmpOp(cd.op, strings.Compare(m.meta.messageID, cd.str))
		case "subject":
			ok = cmpOp(cd.op, strings.Compare(strings.ToLower(m.meta.subject), strings.ToLower(cd.str)))
		case "isread", "isdraft":
			b := m.isRead
			if cd.prop == "isdraft" {
				b = m.isDraft
			}
			ok = cmpOp(cd.op, map[bool]int{true: 0, false: 1}[b == cd.b])
		case "singlevalueextendedproperties":
			id := normExtID(cd.extID)
			for _, ep := range m.extProps() {
				if strings.EqualFold(ep.ID, id) && (cd.extValue == "" || ep.Value == cd.extValue) {
					ok = true
				}
			}
		default:
			ok = cmpOp(cd.op, m.timeProp(cd.prop).Compare(cd.t))
		}
		if !ok {
			return false
		}
	}
	return true
}

func handleListMessages(c *call) {
	q, offset, e := listQuery(c.q)
	if e != nil {
		c.fail(e)
		return
	}
	ro, e := c.renderOpts(q)
	if e != nil {
		c.fail(e)
		return
	}
	top, e := parseTop(q.Get("$top"), 10, 1000)
	if e != nil {
		c.fail(e)
		return
	}
	var conds []cond
	if fv := q.Get("$filter"); strings.TrimSpace(fv) != "" {
		if conds, e = parseFilter(fv, messageFilterProps); e != nil {
			c.fail(e)
			return
		}
	}
	orderProp, asc := "receiveddatetime", false
	if ob := strings.TrimSpace(q.Get("$orderby")); ob != "" {
		f := strings.Fields(ob)
		orderProp = strings.ToLower(f[0])
		if messageFilterProps[orderProp] != "time" || len(f) > 2 {
			c.fail(errBadRequest(fmt.Sprintf("The $orderby expression '%s' is not supported.", ob)))
			return
		}
		asc = len(f) == 1 || strings.EqualFold(f[1], "asc")
		if len(f) == 2 && !asc && !strings.EqualFold(f[1], "desc") {
			c.fail(errBadRequest(fmt.Sprintf("The $orderby expression '%s' is not supported.", ob)))
			return
		}
		// Properties in $orderby must come first in $filter.
		if len(conds) > 0 && conds[0].prop != orderProp {
			c.fail(newErr(http.StatusBadRequest, "InefficientFilter", "The restriction or sort order is too complex for this operation."))
			return
		}
	}
	s := c.s
	s.mu.Lock()
	var all []*message
	if len(c.path) > 1 && lower(c.path, 0) == "mailfolders" {
		f, e := c.folderArg(c.path[1])
		if e != nil {
			s.mu.Unlock()
			c.fail(e)
			return
		}
		for _, m := range f.msgs {
			all = append(all, m)
		}
	} else {
		for _, m := range c.mb.byImm {
			all = append(all, m)
		}
	}
	var match []*message
	for _, m := range all {
		if m.matches(conds) {
			match = append(match, m)
		}
	}
	sortBy(match, orderProp, asc)
	page := []map[string]any{}
	for i := offset; i < len(match) && i < offset+top; i++ {
		page = append(page, c.messageJSON(match[i], ro))
	}
	s.mu.Unlock()
	v := map[string]any{
		"@odata.context": "https://" + c.host + "/v1.0/$metadata#users('" + c.mb.id + "')/messages",
		"value":          page,
	}
	if offset+top < len(match) {
		v["@odata.nextLink"] = nextLink(c, q, offset+top)
	}
	c.page(v)
}

func sortBy(ms []*message, prop string, asc bool) {
	if prop == "receiveddatetime" {
		sortMessages(ms, asc)
		return
	}
	sortMessagesFunc(ms, func(m *message) time.Time { return m.timeProp(prop) }, asc)
}

func sortMessagesFunc(ms []*message, key func(*message) time.Time, asc bool) {
	slices.SortFunc(ms, func(a, b *message) int {
		c := key(a).Compare(key(b))
		if c == 0 {
			c = cmpU64(a.key, b.key)
		}
		if !asc {
			c = -c
		}
		return c
	})
}

// page writes a collection, or 504 when it is larger than the gateway
// lets through in time.
func (c *call) page(v map[string]any, applied ...string) {
	b, err := marshal(v)
	if err != nil {
		c.fail(newErr(http.StatusInternalServerError, "ErrorInternalServerError", err.Error()))
		return
	}
	if lim := c.s.lim.limits().PageTimeoutBytes; lim > 0 && len(b) > lim {
		c.fail(faultError(&Fault{Status: http.StatusGatewayTimeout}))
		return
	}
	c.applied(applied...)
	h := c.w.Header()
	h.Set("Content-Type", "application/json;odata.metadata=minimal;odata.streaming=true;IEEE754Compatible=false;charset=utf-8")
	h.Set("Cache-Control", "private")
	h.Set("OData-Version", "4.0")
	c.w.WriteHeader(http.StatusOK)
	_, _ = c.w.Write(b)
}

func handleGetMessage(c *call) {
	ro, e := c.renderOpts(c.q)
	if e != nil {
		c.fail(e)
		return
	}
	c.s.mu.Lock()
	m, e := c.messageArg()
	if e != nil {
		c.s.mu.Unlock()
		c.fail(e)
		return
	}
	v := c.messageJSON(m, ro)
	c.s.mu.Unlock()
	v["@odata.context"] = "https://" + c.host + "/v1.0/$metadata#users('" + c.mb.id + "')/messages/$entity"
	c.json(http.StatusOK, v)
}

// handleValue streams the raw MIME, chunked, from the stored bytes.
func handleValue(c *call) {
	c.s.mu.Lock()
	m, e := c.messageArg()
	var raw []byte
	if e == nil {
		raw = m.raw
	}
	c.s.mu.Unlock()
	if e != nil {
		c.fail(e)
		return
	}
	lim := c.s.lim.limits()
	if lim.ValueTimeoutBytes > 0 && int64(len(raw)) >= lim.ValueTimeoutBytes {
		sleepCtx(c.r.Context(), lim.ValueTimeoutAfter)
		c.fail(faultError(&Fault{Status: http.StatusGatewayTimeout}))
		return
	}
	c.applied()
	c.w.Header().Set("Content-Type", "text/plain")
	c.w.WriteHeader(http.StatusOK)
	fl, _ := c.w.(http.Flusher)
	const chunk = 64 << 10
	var n int64
	for off := 0; off < len(raw); off += chunk {
		end := min(off+chunk, len(raw))
		k, err := c.w.Write(raw[off:end])
		n += int64(k)
		if err != nil {
			break
		}
		if fl != nil && !c.inBatch {
			fl.Flush()
		}
	}
	c.s.stats.do(func(st *Stats) { st.ValueBytes += n })
}

func sleepCtx(ctx context.Context, d time.Duration) {
	if d <= 0 {
		return
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	}
}

func handleMove(c *call) {
	var in struct {
		DestinationID string `json:"destinationId"`
	}
	if err := json.Unmarshal(c.body, &in); err != nil {
		c.fail(errBadRequest("Empty Payload. JSON content expected."))
		return
	}
	if strings.TrimSpace(in.DestinationID) == "" {
		c.fail(newErr(http.StatusBadRequest, "ErrorInvalidParameter", "The value of the parameter 'DestinationId' is empty."))
		return
	}
	ro, e := c.renderOpts(c.q)
	if e != nil {
		c.fail(e)
		return
	}
	c.s.mu.Lock()
	m, e := c.messageArg()
	if e != nil {
		c.s.mu.Unlock()
		c.fail(e)
		return
	}
	dst, e := c.folderArg(in.DestinationID)
	if e != nil {
		c.s.mu.Unlock()
		c.fail(e)
		return
	}
	c.mb.move(m, dst)
	v := c.messageJSON(m, ro)
	c.s.mu.Unlock()
	v["@odata.context"] = "https://" + c.host + "/v1.0/$metadata#users('" + c.mb.id + "')/messages/$entity"
	v["@odata.type"] = "#microsoft.graph.message"
	c.json(http.StatusCreated, v)
}

func handleDeleteMessage(c *call) {
	c.s.mu.Lock()
	m, e := c.messageArg()
	if e == nil {
		c.mb.remove(m)
	}
	c.s.mu.Unlock()
	if e != nil {
		c.fail(e)
		return
	}
	c.applied()
	c.w.WriteHeader(http.StatusNoContent)
}

func handleUpdateMessage(c *call) {
	var in map[string]json.RawMessage
	if err := json.Unmarshal(c.body, &in); err != nil {
		c.fail(errBadRequest("Empty Payload. JSON content expected."))
		return
	}
	c.s.mu.Lock()
	m, e := c.messageArg()
	if e != nil {
		c.s.mu.Unlock()
		c.fail(e)
		return
	}
	e = c.s.applyPatch(c, m, in)
	var v map[string]any
	if e == nil {
		m.touch()
		v = c.messageJSON(m, renderOpts{})
	}
	c.s.mu.Unlock()
	if e != nil {
		c.fail(e)
		return
	}
	c.json(http.StatusOK, v)
}

func handleListAttachments(c *call) {
	c.s.mu.Lock()
	m, e := c.messageArg()
	if e != nil {
		c.s.mu.Unlock()
		c.fail(e)
		return
	}
	out := []map[string]any{}
	for _, a := range m.atts {
		out = append(out, attachmentJSON(a, false))
	}
	c.s.mu.Unlock()
	c.json(http.StatusOK, map[string]any{"value": out})
}

func handleGetAttachment(c *call) {
	c.s.mu.Lock()
	m, e := c.messageArg()
	var v map[string]any
	if e == nil {
		e = errItemNotFound()
		for _, a := range m.atts {
			if a.id == c.path[3] {
				v, e = attachmentJSON(a, true), nil
			}
		}
	}
	c.s.mu.Unlock()
	if e != nil {
		c.fail(e)
		return
	}
	c.json(http.StatusOK, v)
}

func attachmentJSON(a *attachment, content bool) map[string]any {
	v := map[string]any{
		"@odata.type":          "#microsoft.graph.fileAttachment",
		"id":                   a.id,
		"lastModifiedDateTime": fmtTime(a.modified),
		"name":                 a.name,
		"contentType":          a.contentType,
		"size":                 len(a.data),
		"isInline":             a.isInline,
		"contentId":            nilIfEmpty(a.contentID),
	}
	if content {
		v["contentBytes"] = base64.StdEncoding.EncodeToString(a.data)
	}
	return v
}

func nilIfEmpty(s string) any {
	if s == "" {
		return nil
	}
	return s
}
