package graphfake

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"time"
)

// ErrorBody is the JSON body of a Graph error answer.
type ErrorBody struct {
	Error ErrorDetail `json:"error"`
}

// ErrorDetail is the "error" object of a Graph error answer.
type ErrorDetail struct {
	Code       string      `json:"code"`
	Message    string      `json:"message"`
	InnerError *InnerError `json:"innerError,omitempty"`
}

// InnerError carries the request ids, as Graph adds them.
type InnerError struct {
	Date            string `json:"date"`
	RequestID       string `json:"request-id"`
	ClientRequestID string `json:"client-request-id"`
}

// gErr is an error answer.
type gErr struct {
	status     int
	code       string
	msg        string
	retryAfter string // Retry-After header, if any
	header     http.Header
}

func (e *gErr) Error() string { return fmt.Sprintf("%d %s: %s", e.status, e.code, e.msg) }

func newErr(status int, code, msg string) *gErr { return &gErr{status: status, code: code, msg: msg} }

// Messages and codes Graph uses for mail resources.
const (
	msgAccessDenied   = "Access is denied. Check credentials and try again."
	msgItemNotFound   = "The specified object was not found in the store."
	msgConcurrency    = "Application is over its MailboxConcurrency limit."
	msgIncomingBytes  = "Application is over its IncomingBytes limit."
	msgMailboxAbsent  = "The mailbox is either inactive, soft-deleted, or is hosted on-premise."
	msgIDMalformed    = "Id is malformed."
	msgMeNotDelegated = "/me request is only valid with delegated authentication flow."
	msgRAOP           = "Access to OData is disabled: [RAOP] : Blocked by tenant configured AppOnly AccessPolicy settings."
	msgSendAsDenied   = "The user account which was used to submit this request does not have the right to send mail on behalf of the specified sending account., Cannot submit message."
)

func errItemNotFound() *gErr {
	return newErr(http.StatusNotFound, "ErrorItemNotFound", msgItemNotFound)
}

func errAccessDenied() *gErr {
	return newErr(http.StatusForbidden, "ErrorAccessDenied", msgAccessDenied)
}

func errBadRequest(msg string) *gErr { return newErr(http.StatusBadRequest, "BadRequest", msg) }

func errInvalidUser(u string) *gErr {
	return newErr(http.StatusNotFound, "ErrorInvalidUser", fmt.Sprintf("The requested user '%s' is invalid.", u))
}

func errSegment(seg string) *gErr {
	return newErr(http.StatusBadRequest, "BadRequest", fmt.Sprintf("Resource not found for the segment '%s'.", seg))
}

func errUnknownProperty(prop, typ string) *gErr {
	return newErr(http.StatusBadRequest, "RequestBroker--ParseUri",
		fmt.Sprintf("Could not find a property named '%s' on type 'microsoft.graph.%s'.", prop, typ))
}

func errTooLarge() *gErr {
	return newErr(http.StatusRequestEntityTooLarge, "RequestEntityTooLarge",
		"The request entity is too large. Request bodies are limited to 4 MB.")
}

func (s *Server) writeError(w http.ResponseWriter, e *gErr) {
	h := w.Header()
	for k, v := range e.header {
		h[k] = v
	}
	if e.retryAfter != "" {
		h.Set("Retry-After", e.retryAfter)
	}
	body := ErrorBody{Error: ErrorDetail{
		Code:    e.code,
		Message: e.msg,
		InnerError: &InnerError{
			Date:            time.Now().UTC().Format("2006-01-02T15:04:05"),
			RequestID:       h.Get("request-id"),
			ClientRequestID: h.Get("client-request-id"),
		},
	}}
	writeJSON(w, e.status, body)
}

// marshal encodes v as Graph does (no HTML escaping of <, >, &).
func marshal(v any) ([]byte, error) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	return bytes.TrimSuffix(buf.Bytes(), []byte("\n")), nil
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := marshal(v)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	h := w.Header()
	h.Set("Content-Type", "application/json;odata.metadata=minimal;odata.streaming=true;IEEE754Compatible=false;charset=utf-8")
	h.Set("Cache-Control", "private")
	h.Set("OData-Version", "4.0")
	w.WriteHeader(status)
	_, _ = w.Write(b)
}
