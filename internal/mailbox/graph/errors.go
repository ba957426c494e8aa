package graph

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/mailpipe/mailpipe/internal/auth"
	"github.com/mailpipe/mailpipe/internal/mailbox"
)

// apiError is a non-2xx answer of Graph (or of one $batch item).
type apiError struct {
	Method     string
	Status     int
	Code       string // error.code, e.g. "ErrorItemNotFound"
	Message    string
	RetryAfter time.Duration
	RequestID  string
}

func (e *apiError) Error() string {
	s := fmt.Sprintf("HTTP %d", e.Status)
	if e.Code != "" {
		s += " " + e.Code
	}
	if e.Message != "" {
		s += ": " + e.Message
	}
	if e.RequestID != "" {
		s += " (request-id " + e.RequestID + ")"
	}
	return s
}

// odataError is Graph's error body.
type odataError struct {
	Error struct {
		Code       string `json:"code"`
		Message    string `json:"message"`
		InnerError struct {
			Code      string `json:"code"`
			RequestID string `json:"request-id"`
		} `json:"innerError"`
	} `json:"error"`
}

func parseAPIError(method string, status int, h http.Header, body []byte) *apiError {
	e := &apiError{Method: method, Status: status, RetryAfter: retryAfterOf(h), RequestID: h.Get("request-id")}
	var oe odataError
	if json.Unmarshal(body, &oe) == nil {
		e.Code, e.Message = oe.Error.Code, oe.Error.Message
		if e.RequestID == "" {
			e.RequestID = oe.Error.InnerError.RequestID
		}
	} else if len(body) > 0 {
		msg := strings.TrimSpace(string(body))
		if len(msg) > 200 {
			msg = msg[:200] + "..."
		}
		e.Message = msg
	}
	if e.Message == "" {
		e.Message = http.StatusText(status)
	}
	return e
}

// rule classifies answers: status 0 matches any status, code "" any code.
// The first matching rule wins, so specific rules come first.
type rule struct {
	status int
	code   string
	kind   mailbox.Kind
	hint   hintKind
}

type hintKind int

const (
	noHint hintKind = iota
	hintPermission
	hintToken
	hintMailbox
	hintDestination
)

// rules is the one table that turns Graph's answers into error kinds.
var rules = []rule{
	{http.StatusTooManyRequests, "", mailbox.Throttled, noHint},
	{0, "ErrorServerBusy", mailbox.Throttled, noHint},
	{0, "ApplicationThrottled", mailbox.Throttled, noHint},
	{http.StatusUnauthorized, "", mailbox.Auth, hintToken},
	{0, "InvalidAuthenticationToken", mailbox.Auth, hintToken},
	{0, "ErrorInvalidUser", mailbox.NotFound, hintMailbox},
	{0, "MailboxNotEnabledForRESTAPI", mailbox.NotFound, hintMailbox},
	{0, "MailboxNotSupportedForRESTAPI", mailbox.NotFound, hintMailbox},
	{0, "ErrorNonExistentMailbox", mailbox.NotFound, hintMailbox},
	{0, "Request_ResourceNotFound", mailbox.NotFound, hintMailbox},
	{http.StatusForbidden, "", mailbox.Auth, hintPermission},
	{0, "ErrorAccessDenied", mailbox.Auth, hintPermission},
	{0, "ErrorToFolderNotFound", mailbox.NotFound, hintDestination},
	{0, "ErrorFolderNotFound", mailbox.NotFound, noHint},
	{http.StatusNotFound, "", mailbox.NotFound, noHint},
	{0, "ErrorMailboxStoreUnavailable", mailbox.Transient, noHint},
	{0, "ErrorMailboxMoveInProgress", mailbox.Transient, noHint},
	{0, "ErrorTimeoutExpired", mailbox.Transient, noHint},
	{http.StatusGone, "", mailbox.Transient, noHint}, // delta state expired: a full resync follows
	{0, "ErrorQuotaExceeded", mailbox.Permanent, noHint},
	{http.StatusRequestTimeout, "", mailbox.Transient, noHint},
	{http.StatusFailedDependency, "", mailbox.Transient, noHint},
	{http.StatusInternalServerError, "", mailbox.Transient, noHint},
	{http.StatusBadGateway, "", mailbox.Transient, noHint},
	{http.StatusServiceUnavailable, "", mailbox.Transient, noHint},
	{http.StatusGatewayTimeout, "", mailbox.Transient, noHint},
}

func ruleFor(status int, code string) rule {
	for _, r := range rules {
		if (r.status == 0 || r.status == status) && (r.code == "" || strings.EqualFold(r.code, code)) {
			return r
		}
	}
	if status >= 500 {
		return rule{kind: mailbox.Transient}
	}
	return rule{kind: mailbox.Permanent}
}

// classify turns an error of a request into a *mailbox.Error.
func (s *Source) classify(op, folder string, err error) error {
	if err == nil {
		return nil
	}
	var me *mailbox.Error
	if errors.As(err, &me) {
		return err
	}
	e := &mailbox.Error{Kind: mailbox.Transient, Op: op, Mailbox: s.cfg.Name, Folder: folder, Err: err}
	var ae *apiError
	var te *auth.Error
	switch {
	case errors.As(err, &ae):
		r := ruleFor(ae.Status, ae.Code)
		e.Kind = r.kind
		if r.kind == mailbox.Throttled {
			e.RetryAfter = ae.RetryAfter
			if e.RetryAfter <= 0 {
				e.RetryAfter = time.Second
			}
		}
		if h := s.hint(r.hint); h != "" {
			e.Err = fmt.Errorf("%w; %s", err, h)
		}
	case errors.As(err, &te):
		// The token endpoint: a rejected secret or consent needs an
		// operator; a network problem there passes.
		if te.Permanent {
			e.Kind = mailbox.Auth
		}
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		// The caller's context: Transient, as is.
	}
	return e
}

func (s *Source) hint(h hintKind) string {
	host := s.base.Hostname()
	switch h {
	case hintPermission:
		if s.delegated {
			return fmt.Sprintf("the signed-in account needs the delegated permission Mail.ReadWrite.Shared (consented) and Full Access to %s (Add-MailboxPermission -AccessRights FullAccess)", s.user)
		}
		return fmt.Sprintf("the app needs the Microsoft Graph application permission Mail.ReadWrite with admin consent, and access to %s if an application access policy or RBAC for Applications limits it (delegated identities need Mail.ReadWrite.Shared and Full Access to the mailbox)", s.user)
	case hintToken:
		return fmt.Sprintf("the access token was rejected even after getting a new one: it must be a Microsoft Graph token for %s (scope https://%s/.default), not one for outlook.office365.com, and from the tenant of the mailbox", host, host)
	case hintMailbox:
		return fmt.Sprintf("mailbox %s was not found or cannot be used over Graph: check mailboxes[%s].address, that it is an Exchange Online mailbox (not on-premises) and, for a user mailbox, that it is licensed", s.user, s.cfg.Name)
	case hintDestination:
		return "the destination folder is gone; run `importer check --create-folders`"
	}
	return ""
}

// isNotFound reports a 404 for the item itself (not for the mailbox or a
// folder).
func isItemNotFound(err error) bool {
	var ae *apiError
	if !errors.As(err, &ae) || ae.Status != http.StatusNotFound {
		return false
	}
	switch ruleFor(ae.Status, ae.Code).hint {
	case hintMailbox, hintDestination:
		return false
	}
	return !strings.EqualFold(ae.Code, "ErrorFolderNotFound")
}

// isMailboxError reports an answer saying the mailbox itself does not
// exist or cannot be used over Graph.
func isMailboxError(err error) bool {
	var ae *apiError
	return errors.As(err, &ae) && ruleFor(ae.Status, ae.Code).hint == hintMailbox
}

// isSyncStateGone reports an expired or invalid delta state.
func isSyncStateGone(err error) bool {
	var ae *apiError
	if !errors.As(err, &ae) {
		return false
	}
	switch strings.ToLower(ae.Code) {
	case "syncstatenotfound", "syncstateinvalid", "resyncrequired":
		return true
	}
	return ae.Status == http.StatusGone
}
