package graphfake

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"time"
)

type uploadSession struct {
	id          string
	token       string
	mbID        string
	msgImmID    string
	msgRestID   string
	appID       string
	name        string
	contentType string
	isInline    bool
	contentID   string
	size        int64
	data        []byte
	expires     time.Time
}

func (u *uploadSession) url(host string) string {
	return fmt.Sprintf("https://%s/api/v2.0/Users('%s')/Messages('%s')/AttachmentSessions('%s')?authtoken=%s",
		host, u.mbID, u.msgRestID, u.id, u.token)
}

func handleCreateUploadSession(c *call) {
	var in struct {
		AttachmentItem *struct {
			AttachmentType string `json:"attachmentType"`
			Name           string `json:"name"`
			Size           int64  `json:"size"`
			ContentType    string `json:"contentType"`
			IsInline       bool   `json:"isInline"`
			ContentID      string `json:"contentId"`
		} `json:"AttachmentItem"`
	}
	if err := json.Unmarshal(c.body, &in); err != nil || in.AttachmentItem == nil {
		c.fail(errBadRequest("Empty Payload. JSON content expected."))
		return
	}
	it := in.AttachmentItem
	if it.AttachmentType != "" && !strings.EqualFold(it.AttachmentType, "file") {
		c.fail(errBadRequest("Only file attachments can be uploaded."))
		return
	}
	if it.Name == "" || it.Size <= 0 {
		c.fail(newErr(http.StatusBadRequest, "ErrorInvalidParameter", "The attachment item needs a name and a size."))
		return
	}
	lim := c.s.lim.limits()
	if lim.MaxAttachmentSize > 0 && it.Size > lim.MaxAttachmentSize {
		c.fail(newErr(http.StatusBadRequest, "ErrorAttachmentSizeLimitExceeded", "The attachment size exceeds the maximum allowed size."))
		return
	}
	s := c.s
	s.mu.Lock()
	m, e := c.messageArg()
	if e != nil {
		s.mu.Unlock()
		c.fail(e)
		return
	}
	u := &uploadSession{
		id:          randomAttachmentID(),
		token:       randomToken() + randomToken(),
		mbID:        c.mb.id,
		msgImmID:    m.immID,
		msgRestID:   m.restID,
		appID:       strings.ToLower(c.claims.AppID),
		name:        it.Name,
		contentType: it.ContentType,
		isInline:    it.IsInline,
		contentID:   it.ContentID,
		size:        it.Size,
		expires:     time.Now().Add(15 * time.Minute).UTC(),
	}
	if u.contentType == "" {
		u.contentType = "application/octet-stream"
	}
	s.uploads[u.id] = u
	s.mu.Unlock()
	c.json(http.StatusCreated, map[string]any{
		"@odata.context":     "https://" + c.host + "/v1.0/$metadata#microsoft.graph.uploadSession",
		"uploadUrl":          u.url(c.host),
		"expirationDateTime": u.expires.Format("2006-01-02T15:04:05.0000000Z"),
		"nextExpectedRanges": []string{"0-"},
	})
}

var sessionPath = regexp.MustCompile(`(?i)/AttachmentSessions\('([^']+)'\)$`)

var contentRange = regexp.MustCompile(`^bytes (\d+)-(\d+)/(\d+)$`)

// serveUpload serves PUTs (and a DELETE) to an upload session URL. The URL
// is pre-authenticated: no Authorization header.
func (s *Server) serveUpload(w http.ResponseWriter, r *http.Request) {
	s.count("upload.put", r.Method, false)
	mm := sessionPath.FindStringSubmatch(r.URL.Path)
	if mm == nil {
		s.writeError(w, errSegment(r.URL.Path))
		return
	}
	if r.Header.Get("Authorization") != "" {
		s.writeError(w, errUnauthenticated("The upload URL is pre-authenticated: send no Authorization header."))
		return
	}
	s.mu.Lock()
	u := s.uploads[mm[1]]
	s.mu.Unlock()
	if u == nil || r.URL.Query().Get("authtoken") != u.token {
		s.writeError(w, errUnauthenticated("Access token validation failure."))
		return
	}
	if time.Now().After(u.expires) {
		s.writeError(w, errItemNotFound())
		return
	}
	if r.Method == http.MethodGet {
		// The session's state, as OneDrive's upload sessions answer it
		// (Outlook's documentation does not say whether attachment
		// sessions do): where the next upload must start.
		s.mu.Lock()
		next := int64(len(u.data))
		s.mu.Unlock()
		writeJSON(w, http.StatusOK, map[string]any{
			"expirationDateTime": u.expires.Format("2006-01-02T15:04:05.0000000Z"),
			"nextExpectedRanges": []string{strconv.FormatInt(next, 10)},
		})
		return
	}
	if r.Method == http.MethodDelete {
		s.mu.Lock()
		delete(s.uploads, u.id)
		s.mu.Unlock()
		w.WriteHeader(http.StatusNoContent)
		return
	}
	if r.Method != http.MethodPut {
		s.writeError(w, errMethod())
		return
	}
	lim := s.lim.limits()
	if r.ContentLength > lim.MaxUploadChunk {
		s.writeError(w, errTooLarge().withMsg("The chunk is too large: upload at most 4 MB per request."))
		return
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, lim.MaxUploadChunk+1))
	if err != nil {
		s.writeError(w, errBadRequest("Could not read the request body."))
		return
	}
	if int64(len(body)) > lim.MaxUploadChunk {
		s.writeError(w, errTooLarge().withMsg("The chunk is too large: upload at most 4 MB per request."))
		return
	}
	release, conc, e := s.lim.admit(throttleKey{u.appID, u.mbID}, r.Method, int64(len(body)))
	if e != nil {
		s.stats.do(func(st *Stats) {
			st.Throttled++
			if conc {
				st.ConcurrencyThrottled++
			}
		})
		s.writeError(w, e)
		return
	}
	defer release()
	s.sleep(r.Context())
	if f := s.lim.fault(r.Method, r.URL.Path); f != nil && f.CutAfter == 0 {
		s.stats.do(func(st *Stats) { st.Faults++ })
		sleepCtx(r.Context(), f.Delay)
		if !f.Applied {
			s.answerFault(w, f)
			return
		}
		// Take the chunk, then answer the fault instead.
		real := w
		w = &discardWriter{}
		defer s.answerFault(real, f)
	}
	cr := contentRange.FindStringSubmatch(r.Header.Get("Content-Range"))
	if cr == nil {
		s.writeError(w, newErr(http.StatusBadRequest, "ErrorInvalidContentRange", "The Content-Range header is missing or malformed: use bytes {start}-{end}/{total}."))
		return
	}
	start, _ := strconv.ParseInt(cr[1], 10, 64)
	end, _ := strconv.ParseInt(cr[2], 10, 64)
	total, _ := strconv.ParseInt(cr[3], 10, 64)
	s.mu.Lock()
	defer s.mu.Unlock()
	next := int64(len(u.data))
	switch {
	case total != u.size:
		s.writeError(w, newErr(http.StatusBadRequest, "ErrorInvalidContentRange", fmt.Sprintf("The total size %d does not match the size of the upload session (%d).", total, u.size)))
		return
	case end < start || end >= total || end-start+1 != int64(len(body)):
		s.writeError(w, newErr(http.StatusBadRequest, "ErrorInvalidContentRange", "The Content-Range does not match the length of the body."))
		return
	case start != next:
		e := newErr(http.StatusRequestedRangeNotSatisfiable, "ErrorInvalidContentRange", fmt.Sprintf("Bytes must be uploaded in order: the next expected range starts at %d.", next))
		s.writeError(w, e)
		return
	}
	u.data = append(u.data, body...)
	if int64(len(u.data)) < u.size {
		writeJSON(w, http.StatusOK, map[string]any{
			"@odata.context":     "https://" + r.Host + "/api/v2.0/$metadata#Users('" + u.mbID + "')/Messages('" + u.msgRestID + "')/AttachmentSessions/$entity",
			"expirationDateTime": u.expires.Format("2006-01-02T15:04:05.0000000Z"),
			"nextExpectedRanges": []string{strconv.FormatInt(int64(len(u.data)), 10)},
		})
		return
	}
	delete(s.uploads, u.id)
	mb := s.byObjectID[u.mbID]
	var m *message
	if mb != nil {
		m = mb.byImm[u.msgImmID]
	}
	if m == nil {
		s.writeError(w, errItemNotFound())
		return
	}
	att := &attachment{id: randomAttachmentID(), name: u.name, contentType: u.contentType, isInline: u.isInline,
		contentID: u.contentID, data: u.data, modified: time.Now().UTC()}
	m.atts = append(m.atts, att)
	if m.draft == nil && m.mimeBase == nil {
		m.mimeBase = m.raw
	}
	m.rebuild(time.Now().UTC())
	m.touch()
	w.Header().Set("Location", fmt.Sprintf("https://%s/api/v2.0/Users('%s')/Messages('%s')/Attachments('%s')", r.Host, u.mbID, m.restID, att.id))
	w.WriteHeader(http.StatusCreated)
}
