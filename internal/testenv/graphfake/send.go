package graphfake

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"mime"
	"net/http"
	"strings"
	"time"
)

type jsonRecipient struct {
	EmailAddress struct {
		Name    string `json:"name"`
		Address string `json:"address"`
	} `json:"emailAddress"`
}

type jsonAttachment struct {
	ODataType    string `json:"@odata.type"`
	Name         string `json:"name"`
	ContentType  string `json:"contentType"`
	ContentBytes string `json:"contentBytes"`
	IsInline     bool   `json:"isInline"`
	ContentID    string `json:"contentId"`
}

type jsonMessage struct {
	Subject *string `json:"subject"`
	Body    *struct {
		ContentType string `json:"contentType"`
		Content     string `json:"content"`
	} `json:"body"`
	From                   *jsonRecipient  `json:"from"`
	Sender                 *jsonRecipient  `json:"sender"`
	ToRecipients           []jsonRecipient `json:"toRecipients"`
	CcRecipients           []jsonRecipient `json:"ccRecipients"`
	BccRecipients          []jsonRecipient `json:"bccRecipients"`
	ReplyTo                []jsonRecipient `json:"replyTo"`
	InternetMessageHeaders []struct {
		Name  string `json:"name"`
		Value string `json:"value"`
	} `json:"internetMessageHeaders"`
	InternetMessageID             *string `json:"internetMessageId"`
	SingleValueExtendedProperties []struct {
		ID    string `json:"id"`
		Value string `json:"value"`
	} `json:"singleValueExtendedProperties"`
	Attachments []jsonAttachment `json:"attachments"`
	Importance  string           `json:"importance"`
	IsRead      *bool            `json:"isRead"`
}

func toAddr(r *jsonRecipient) *addr {
	if r == nil {
		return nil
	}
	return &addr{Name: r.EmailAddress.Name, Address: r.EmailAddress.Address}
}

func toAddrs(rs []jsonRecipient) []addr {
	var out []addr
	for i := range rs {
		out = append(out, *toAddr(&rs[i]))
	}
	return out
}

func errHeaderName(name string) *gErr {
	return newErr(http.StatusBadRequest, "InvalidInternetMessageHeader",
		fmt.Sprintf("The internet message header name '%s' should start with 'x-' or 'X-'.", name))
}

// checkHeaders: Graph accepts only custom headers named x-... .
func (j *jsonMessage) checkHeaders() *gErr {
	for _, h := range j.InternetMessageHeaders {
		if !strings.HasPrefix(strings.ToLower(h.Name), "x-") {
			return errHeaderName(h.Name)
		}
	}
	return nil
}

func (s *Server) decodeAttachment(a jsonAttachment) (*attachment, *gErr) {
	if a.ODataType != "" && !strings.EqualFold(a.ODataType, "#microsoft.graph.fileAttachment") {
		return nil, errBadRequest("Only file attachments are supported by this fake.")
	}
	data, err := base64.StdEncoding.DecodeString(a.ContentBytes)
	if err != nil {
		return nil, newErr(http.StatusBadRequest, "ErrorInvalidRequest", "The contentBytes of the attachment are not valid base64.")
	}
	if int64(len(data)) >= s.lim.limits().MaxInlineAttachment {
		return nil, newErr(http.StatusRequestEntityTooLarge, "RequestEntityTooLarge",
			"The attachment is too large for this request: attach files of 3 MB or more with an upload session.")
	}
	ct := a.ContentType
	if ct == "" {
		ct = mime.TypeByExtension(extOf(a.Name))
		if ct == "" {
			ct = "application/octet-stream"
		}
	}
	return &attachment{id: randomAttachmentID(), name: a.Name, contentType: ct, isInline: a.IsInline,
		contentID: a.ContentID, data: data, modified: time.Now().UTC()}, nil
}

func extOf(name string) string {
	if i := strings.LastIndexByte(name, '.'); i >= 0 {
		return name[i:]
	}
	return ""
}

func randomAttachmentID() string {
	return base64.URLEncoding.EncodeToString(append([]byte{0x00, 0x03, 0x24, 0x00, 0x01}, randomBytes(30)...))
}

func newInternetMessageID() string {
	return "<" + strings.ToUpper(strings.ReplaceAll(randomToken(), "-", "")) + "@GRAPHFAKE01MB0001.graphfake.test>"
}

// messageFromJSON makes an unsaved message from a JSON message resource.
func (s *Server) messageFromJSON(j *jsonMessage) (*message, *gErr) {
	if e := j.checkHeaders(); e != nil {
		return nil, e
	}
	d := &draftData{
		from:    toAddr(j.From),
		sender:  toAddr(j.Sender),
		to:      toAddrs(j.ToRecipients),
		cc:      toAddrs(j.CcRecipients),
		bcc:     toAddrs(j.BccRecipients),
		replyTo: toAddrs(j.ReplyTo),
	}
	if j.Subject != nil {
		d.subject = *j.Subject
	}
	d.bodyType = "text"
	if j.Body != nil {
		d.body = j.Body.Content
		if strings.EqualFold(j.Body.ContentType, "html") {
			d.bodyType = "html"
		}
	}
	d.importance = strings.ToLower(j.Importance)
	for _, h := range j.InternetMessageHeaders {
		d.headers = append(d.headers, hdr{Name: h.Name, Value: h.Value})
	}
	if j.InternetMessageID != nil && strings.TrimSpace(*j.InternetMessageID) != "" {
		d.messageID = strings.TrimSpace(*j.InternetMessageID)
	} else {
		d.messageID = newInternetMessageID()
	}
	m := &message{draft: d, isDraft: true, isRead: true}
	for _, ep := range j.SingleValueExtendedProperties {
		m.ext = append(m.ext, extProp{ID: normExtID(ep.ID), Value: ep.Value})
	}
	for _, a := range j.Attachments {
		att, e := s.decodeAttachment(a)
		if e != nil {
			return nil, e
		}
		m.atts = append(m.atts, att)
	}
	m.rebuild(time.Now().UTC())
	return m, nil
}

// messageFromMIME makes an unsaved message from base64 MIME (a text/plain
// request body).
func messageFromMIME(body []byte) (*message, *gErr) {
	raw, err := base64.StdEncoding.DecodeString(strings.Join(strings.Fields(string(body)), ""))
	if err != nil || len(raw) == 0 {
		return nil, newErr(http.StatusBadRequest, "ErrorMimeContentInvalidBase64String", "Invalid base64 string for MIME content.")
	}
	raw = ensureHeader(raw, "Message-ID", newInternetMessageID())
	m := &message{mimeBase: raw, isDraft: true, isRead: true}
	m.rebuild(time.Now().UTC())
	return m, nil
}

// rebuild renders the MIME of a draft from its parts.
func (m *message) rebuild(date time.Time) {
	switch {
	case m.draft != nil:
		m.raw = buildMIME(m.draft, m.atts, date)
		m.meta = parseMeta(m.raw)
		m.meta.bcc = m.draft.bcc
		if m.draft.from == nil {
			m.meta.from, m.meta.sender = nil, nil
		}
	case m.mimeBase != nil:
		m.raw = wrapMIME(m.mimeBase, m.atts)
		m.meta = parseMeta(m.raw)
	}
	if len(m.atts) > 0 {
		m.meta.hasAttachments = true
	}
}

func isJSONBody(r *http.Request) bool {
	mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type"))
	return mt == "" || strings.HasSuffix(mt, "json")
}

// handleCreateMessage creates a draft (POST /messages, or in a folder).
func handleCreateMessage(c *call) {
	var m *message
	var e *gErr
	if isJSONBody(c.r) {
		var j jsonMessage
		if err := json.Unmarshal(c.body, &j); err != nil {
			c.fail(errBadRequest("Empty Payload. JSON content expected."))
			return
		}
		if m, e = c.s.messageFromJSON(&j); e != nil {
			c.fail(e)
			return
		}
	} else if m, e = messageFromMIME(c.body); e != nil {
		c.fail(e)
		return
	}
	s := c.s
	s.mu.Lock()
	f := c.mb.wellKnown[WellKnownDrafts]
	if lower(c.path, 0) == "mailfolders" {
		if f, e = c.folderArg(c.path[1]); e != nil {
			s.mu.Unlock()
			c.fail(e)
			return
		}
	}
	m.received = time.Now().UTC()
	s.insert(c.mb, f, m)
	v := c.messageJSON(m, renderOpts{})
	s.mu.Unlock()
	v["@odata.context"] = "https://" + c.host + "/v1.0/$metadata#users('" + c.mb.id + "')/messages/$entity"
	c.json(http.StatusCreated, v)
}

// applyPatch updates m from a PATCH body; the caller holds s.mu.
func (s *Server) applyPatch(c *call, m *message, in map[string]json.RawMessage) *gErr {
	var j jsonMessage
	b, _ := json.Marshal(in)
	if err := json.Unmarshal(b, &j); err != nil {
		return errBadRequest("Invalid message payload.")
	}
	for k := range in {
		switch k {
		case "isRead", "singleValueExtendedProperties", "categories", "flag", "importance":
		default:
			if !m.isDraft {
				return newErr(http.StatusBadRequest, "ErrorInvalidPropertyUpdateSentMessage", "Update operation is invalid for property of a sent message.")
			}
			if m.draft == nil {
				return errBadRequest("This fake updates only the flags of drafts created from MIME.")
			}
		}
	}
	if e := j.checkHeaders(); e != nil {
		return e
	}
	if j.IsRead != nil {
		m.isRead = *j.IsRead
	}
	for _, ep := range j.SingleValueExtendedProperties {
		id := normExtID(ep.ID)
		replaced := false
		for i := range m.ext {
			if strings.EqualFold(m.ext[i].ID, id) {
				m.ext[i].Value, replaced = ep.Value, true
			}
		}
		if !replaced {
			m.ext = append(m.ext, extProp{ID: id, Value: ep.Value})
		}
	}
	if d := m.draft; d != nil {
		if j.Subject != nil {
			d.subject = *j.Subject
		}
		if j.Body != nil {
			d.body = j.Body.Content
			d.bodyType = "text"
			if strings.EqualFold(j.Body.ContentType, "html") {
				d.bodyType = "html"
			}
		}
		if _, ok := in["from"]; ok {
			d.from = toAddr(j.From)
		}
		if _, ok := in["toRecipients"]; ok {
			d.to = toAddrs(j.ToRecipients)
		}
		if _, ok := in["ccRecipients"]; ok {
			d.cc = toAddrs(j.CcRecipients)
		}
		if _, ok := in["bccRecipients"]; ok {
			d.bcc = toAddrs(j.BccRecipients)
		}
		if _, ok := in["internetMessageHeaders"]; ok {
			d.headers = nil
			for _, h := range j.InternetMessageHeaders {
				d.headers = append(d.headers, hdr{Name: h.Name, Value: h.Value})
			}
		}
		if j.Importance != "" {
			d.importance = strings.ToLower(j.Importance)
		}
		m.rebuild(time.Now().UTC())
	}
	return nil
}

func handleAddAttachment(c *call) {
	var j jsonAttachment
	if err := json.Unmarshal(c.body, &j); err != nil {
		c.fail(errBadRequest("Empty Payload. JSON content expected."))
		return
	}
	att, e := c.s.decodeAttachment(j)
	if e != nil {
		c.fail(e)
		return
	}
	c.s.mu.Lock()
	m, e := c.messageArg()
	if e == nil {
		m.atts = append(m.atts, att)
		if m.draft == nil && m.mimeBase == nil {
			m.mimeBase = m.raw
		}
		m.rebuild(time.Now().UTC())
		m.touch()
	}
	c.s.mu.Unlock()
	if e != nil {
		c.fail(e)
		return
	}
	v := attachmentJSON(att, false)
	c.json(http.StatusCreated, v)
}

// errSendRate is the answer past 30 messages per minute per mailbox.
func errSendRate(wait time.Duration) *gErr {
	e := newErr(http.StatusTooManyRequests, "ErrorExceededMessageLimit",
		"The mailbox has exceeded the limit of messages submitted per minute. Try again later.")
	e.retryAfter = retryAfter(wait)
	return e
}

// submit sends m from c.mb; the caller holds s.mu. save keeps a copy in
// Sent Items (m is moved there; otherwise it is dropped).
func (s *Server) submit(c *call, m *message, save bool) *gErr {
	mb := c.mb
	lim := s.lim.limits()
	owner := addr{Name: mb.displayName, Address: mb.address}
	from := m.meta.from
	if m.draft != nil {
		from = m.draft.from
	}
	if from == nil || from.Address == "" {
		from = &owner
	}
	var sender *addr
	if c.claims.Delegated() && !strings.EqualFold(from.Address, c.claims.UPN) {
		if !c.claims.hasScope("Mail.Send.Shared") {
			return errAccessDenied()
		}
		fmb := s.mailboxLocked(from.Address)
		user := strings.ToLower(c.claims.UPN)
		switch {
		case fmb != nil && fmb.sendAs[user]:
		case fmb != nil && fmb.sendOnBeh[user]:
			sender = &addr{Address: c.claims.UPN}
			if umb := s.mailboxLocked(c.claims.UPN); umb != nil {
				sender.Name = umb.displayName
			}
		default:
			return newErr(http.StatusForbidden, "ErrorSendAsDenied", msgSendAsDenied)
		}
	}
	meta := m.meta
	if len(meta.to)+len(meta.cc)+len(meta.bcc) == 0 {
		return newErr(http.StatusBadRequest, "ErrorInvalidRecipients", "At least one recipient is not valid., A message can't be sent because it contains no recipients.")
	}
	now := time.Now().UTC()
	if lim.SendPerMinute > 0 {
		cut := now.Add(-time.Minute)
		i := 0
		for i < len(mb.sendTimes) && !mb.sendTimes[i].After(cut) {
			i++
		}
		mb.sendTimes = mb.sendTimes[i:]
		if len(mb.sendTimes) >= lim.SendPerMinute {
			return errSendRate(mb.sendTimes[len(mb.sendTimes)-lim.SendPerMinute].Add(time.Minute).Sub(now))
		}
	}
	if lim.MaxSendSize > 0 && int64(len(m.raw)) > lim.MaxSendSize {
		return newErr(http.StatusBadRequest, "ErrorMessageSizeExceeded", "The message exceeds the maximum supported size.")
	}
	mb.sendTimes = append(mb.sendTimes, now)
	// Exchange stamps From/Sender and the date when it submits.
	if m.draft != nil {
		m.draft.from, m.draft.sender = from, sender
		m.rebuild(now)
	} else {
		m.raw = ensureHeader(ensureHeader(m.raw, "Date", now.Format(time.RFC1123Z)), "From", fmtAddr(*from))
		m.meta = parseMeta(m.raw)
	}
	m.isDraft, m.isRead = false, true
	m.received = now
	m.meta.sent = now
	sent := m.sentMessage(mb.address)
	if save {
		sentItems := mb.wellKnown[WellKnownSentItems]
		if m.folder == nil {
			s.insert(mb, sentItems, m)
		} else {
			mb.move(m, sentItems)
		}
		sent.ID, sent.ImmutableID = m.restID, m.immID
	} else if m.folder != nil {
		mb.remove(m)
	}
	s.submitted = append(s.submitted, sent)
	s.deliver(m, now)
	return nil
}

// deliver puts a copy into the inbox of every recipient that is a mailbox
// of the fake.
func (s *Server) deliver(m *message, now time.Time) {
	raw := m.raw
	seen := map[string]bool{}
	for _, list := range [][]addr{m.meta.to, m.meta.cc, m.meta.bcc} {
		for _, a := range list {
			k := strings.ToLower(a.Address)
			if seen[k] {
				continue
			}
			seen[k] = true
			rmb := s.mailboxLocked(a.Address)
			if rmb == nil || rmb.inactive {
				continue
			}
			cp := &message{raw: raw, received: now, meta: parseMeta(raw)}
			cp.meta.bcc = nil
			cp.created = now
			s.insert(rmb, rmb.wellKnown[WellKnownInbox], cp)
		}
	}
}

func handleSendMail(c *call) {
	var m *message
	var e *gErr
	save := true
	if isJSONBody(c.r) {
		var in struct {
			Message         *jsonMessage    `json:"message"`
			SaveToSentItems json.RawMessage `json:"saveToSentItems"`
		}
		if err := json.Unmarshal(c.body, &in); err != nil || in.Message == nil {
			c.fail(errBadRequest("Empty Payload. JSON content expected."))
			return
		}
		switch strings.Trim(strings.ToLower(string(in.SaveToSentItems)), `"`) {
		case "", "true", "null":
		case "false":
			save = false
		default:
			c.fail(errBadRequest("Invalid value for saveToSentItems."))
			return
		}
		if m, e = c.s.messageFromJSON(in.Message); e != nil {
			c.fail(e)
			return
		}
	} else if m, e = messageFromMIME(c.body); e != nil {
		c.fail(e)
		return
	}
	c.s.mu.Lock()
	e = c.s.submit(c, m, save)
	c.s.mu.Unlock()
	if e != nil {
		c.fail(e)
		return
	}
	c.applied()
	c.w.WriteHeader(http.StatusAccepted)
}

func handleSendDraft(c *call) {
	c.s.mu.Lock()
	m, e := c.messageArg()
	if e == nil && !m.isDraft {
		e = newErr(http.StatusBadRequest, "ErrorInvalidOperation", "Only draft messages can be sent.")
	}
	if e == nil {
		e = c.s.submit(c, m, true)
	}
	c.s.mu.Unlock()
	if e != nil {
		c.fail(e)
		return
	}
	c.applied()
	c.w.WriteHeader(http.StatusAccepted)
}

// SentMessage is a submitted message (for assertions).
type SentMessage struct {
	// Mailbox whose sendMail or send was used.
	Mailbox string
	// ID and ImmutableID in Sent Items (empty when not saved).
	ID, ImmutableID   string
	InternetMessageID string
	From, Sender      string
	To, Cc, Bcc       []string
	Subject           string
	// Headers are the message's top-level MIME headers.
	Headers            []Header
	Attachments        []Attachment
	ExtendedProperties map[string]string
	Raw                []byte
	SentAt             time.Time
}

// Header is a MIME header.
type Header struct{ Name, Value string }

// Attachment is a file attachment of a sent message.
type Attachment struct {
	Name, ContentType string
	IsInline          bool
	ContentID         string
	Data              []byte
}

func (m *message) sentMessage(mailbox string) SentMessage {
	sm := SentMessage{
		Mailbox:            mailbox,
		InternetMessageID:  m.meta.messageID,
		Subject:            m.meta.subject,
		Raw:                m.raw,
		SentAt:             m.meta.sent,
		ExtendedProperties: map[string]string{},
	}
	if m.meta.from != nil {
		sm.From = m.meta.from.Address
	}
	if m.meta.sender != nil {
		sm.Sender = m.meta.sender.Address
	}
	for _, a := range m.meta.to {
		sm.To = append(sm.To, a.Address)
	}
	for _, a := range m.meta.cc {
		sm.Cc = append(sm.Cc, a.Address)
	}
	for _, a := range m.meta.bcc {
		sm.Bcc = append(sm.Bcc, a.Address)
	}
	for _, h := range m.meta.headers {
		sm.Headers = append(sm.Headers, Header{Name: h.Name, Value: h.Value})
	}
	for _, a := range m.atts {
		sm.Attachments = append(sm.Attachments, Attachment{Name: a.name, ContentType: a.contentType, IsInline: a.isInline, ContentID: a.contentID, Data: a.data})
	}
	for _, ep := range m.ext {
		sm.ExtendedProperties[ep.ID] = ep.Value
	}
	return sm
}

// SentItems lists the messages in a mailbox's Sent Items folder, oldest
// first.
func (s *Server) SentItems(mailbox string) []SentMessage {
	s.mu.Lock()
	defer s.mu.Unlock()
	mb := s.mustMailbox(mailbox)
	var out []SentMessage
	for _, m := range mb.wellKnown[WellKnownSentItems].sorted(true) {
		sm := m.sentMessage(mb.address)
		sm.ID, sm.ImmutableID = m.restID, m.immID
		out = append(out, sm)
	}
	return out
}

// Submitted lists every accepted submission in order, including sends with
// saveToSentItems false; two sendMail calls for the same message are two
// entries (sendMail is not idempotent).
func (s *Server) Submitted() []SentMessage {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]SentMessage(nil), s.submitted...)
}
