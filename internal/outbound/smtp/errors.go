package smtp

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/mailpipe/mailpipe/internal/auth"
	"github.com/mailpipe/mailpipe/internal/outbound"
	"github.com/mailpipe/mailpipe/pkg/mailjob"
)

// ErrMaybeSent is wrapped by the Ambiguous errors of Send: the message
// had been handed over completely (the final "." of DATA was written) but
// the server's answer never came, so it may have been accepted. SMTP
// offers no way to find out; this transport never sends such a job again
// (see the package documentation).
var ErrMaybeSent = errors.New("the mail may have been sent: the connection failed after the message was handed over and before the server confirmed it; SMTP cannot look it up, so it is not sent again")

// Steps of a submission, as named in errors.
const (
	stepConnect  = "connect"
	stepGreeting = "greeting"
	stepEHLO     = "EHLO"
	stepSTARTTLS = "STARTTLS"
	stepAuth     = "AUTH"
	stepMail     = "MAIL FROM"
	stepRcpt     = "RCPT TO"
	stepData     = "DATA"
	stepMessage  = "message"
	stepDataEnd  = "end of data"
	stepRset     = "RSET"
)

// ReplyError is a negative (or unexpected) reply of the SMTP server.
type ReplyError struct {
	// Step is the command answered: "greeting", "EHLO", "STARTTLS",
	// "AUTH", "MAIL FROM", "RCPT TO", "DATA" or "end of data".
	Step string
	// Address is the recipient (RCPT TO) or sender (MAIL FROM) concerned.
	Address string
	Reply   *Reply
	// Hint says what an operator can do, when known.
	Hint string
}

func (e *ReplyError) Error() string {
	s := "server answered " + e.Step
	if e.Address != "" {
		s += " <" + e.Address + ">"
	}
	s += " with " + e.Reply.String()
	if e.Hint != "" {
		s += " (hint: " + e.Hint + ")"
	}
	return s
}

// throttleRetryAfter is how long to wait after Exchange refused a
// submission for a sending limit (30 messages per minute per mailbox).
const throttleRetryAfter = time.Minute

// throttleMarkers are texts of Exchange Online's throttling replies
// (554 5.2.0 STOREDRV.Submission.Exception:SubmissionQuotaExceededException,
// "Message submission rate for this client has exceeded the configured
// limit", 432 4.3.2 STOREDRV.ClientSubmit; sender thread limit exceeded).
var throttleMarkers = []string{
	"submissionquotaexceeded", "submission rate", "recipientratelimit",
	"sender thread limit", "throttl", "rate limit",
}

// Hints for operators.
const (
	hintAuthDisabled = "SMTP AUTH is disabled for the mailbox or the organization: enable it for the mailbox with " +
		"Set-CASMailbox -Identity <mailbox> -SmtpClientAuthenticationDisabled $false " +
		"(the organization-wide setting is Set-TransportConfig -SmtpClientAuthenticationDisabled; Entra ID security defaults also block SMTP AUTH)"
	hintTokenRefused = "the token was refused: enable SMTP AUTH for the mailbox (Set-CASMailbox -Identity <mailbox> -SmtpClientAuthenticationDisabled $false); " +
		"app-only: the app needs SMTP.SendAsApp with admin consent, a token for https://outlook.office365.com/.default, and its service principal " +
		"registered in Exchange (New-ServicePrincipal) with FullAccess on the mailbox (Add-MailboxPermission); " +
		"delegated: the account needs https://outlook.office.com/SMTP.Send and the username must be the signed-in account"
	hintPassword     = "check the username and password"
	hintSendAsDenied = "the authenticated account has no Send As right on the mailbox: grant it " +
		"(Add-RecipientPermission -Identity <mailbox> -Trustee <account> -AccessRights SendAs), or authenticate as the mailbox itself"
	hintBlockedSender = "the mailbox may be blocked from sending (Microsoft Defender: restricted entities)"
)

// classifyReply turns a negative reply into a classified error. oauth
// tells whether AUTH used a token (for the hint).
func classifyReply(step, addr string, r *Reply, oauth bool) *outbound.Error {
	re := &ReplyError{Step: step, Address: addr, Reply: r}
	e := &outbound.Error{Err: re}
	text := strings.ToLower(r.Text())
	enh := r.Enhanced
	permanent := r.Code >= 500
	switch {
	case strings.Contains(text, "sendasdenied") || enh == "5.7.60":
		e.Kind, e.ReasonCode, re.Hint = outbound.Auth, mailjob.ReasonSendAsDenied, hintSendAsDenied
	case enh == "5.7.139" || strings.Contains(text, "smtpclientauthentication is disabled"):
		e.Kind, e.ReasonCode, re.Hint = outbound.Auth, mailjob.ReasonAuthFailed, hintAuthDisabled
	case step == stepAuth && permanent:
		e.Kind, e.ReasonCode = outbound.Auth, mailjob.ReasonAuthFailed
		if oauth {
			re.Hint = hintTokenRefused
		} else {
			re.Hint = hintPassword
		}
	case r.Code == 530:
		e.Kind, e.ReasonCode = outbound.Auth, mailjob.ReasonAuthFailed
		re.Hint = "the server wants authentication first"
	case containsAny(text, throttleMarkers):
		e.Kind, e.ReasonCode, e.RetryAfter = outbound.Throttled, mailjob.ReasonThrottled, throttleRetryAfter
	case permanent && enh == "5.5.3":
		// Too many recipients.
		e.Kind, e.ReasonCode = outbound.Permanent, mailjob.ReasonInvalidJob
	case permanent && (r.Code == 552 || enh == "5.3.4" || enh == "5.2.3"):
		e.Kind, e.ReasonCode = outbound.Permanent, mailjob.ReasonMessageTooLarge
	case !permanent:
		// 421, 450, 451, 452, 454, ...: try again later.
		e.Kind, e.ReasonCode = outbound.Transient, mailjob.ReasonGraphUnavailable
	case step == stepRcpt:
		e.Kind, e.ReasonCode = outbound.Permanent, mailjob.ReasonRecipientRejected
	case strings.HasPrefix(enh, "5.6."):
		// Content refused.
		e.Kind, e.ReasonCode = outbound.Permanent, mailjob.ReasonInvalidJob
	case enh == "5.1.8":
		e.Kind, e.ReasonCode, re.Hint = outbound.Auth, mailjob.ReasonSendAsDenied, hintBlockedSender
	case strings.HasPrefix(enh, "5.7.") && (step == stepMail || step == stepDataEnd):
		// A policy refusal of this sender (access denied).
		e.Kind, e.ReasonCode = outbound.Auth, mailjob.ReasonSendAsDenied
	case strings.HasPrefix(enh, "5.1.") && step == stepMail:
		// The sender address itself.
		e.Kind, e.ReasonCode = outbound.Permanent, mailjob.ReasonInvalidJob
	default:
		// An unrecognised refusal: retried by the sender a bounded number
		// of times, its text ends up in the final reason.
		e.Kind, e.ReasonCode = outbound.Transient, mailjob.ReasonGraphUnavailable
	}
	return e
}

func containsAny(s string, subs []string) bool {
	for _, sub := range subs {
		if strings.Contains(s, sub) {
			return true
		}
	}
	return false
}

// networkError classifies a failed network step before the message was
// handed over: nothing was sent, try again later.
func networkError(step string, err error) *outbound.Error {
	e := &outbound.Error{Kind: outbound.Transient, ReasonCode: mailjob.ReasonGraphUnavailable}
	var certErr *tls.CertificateVerificationError
	var unknownAuth x509.UnknownAuthorityError
	var hostErr x509.HostnameError
	if errors.As(err, &certErr) || errors.As(err, &unknownAuth) || errors.As(err, &hostErr) {
		e.Err = fmt.Errorf("%s: the server's TLS certificate is not trusted (check host; set ca_file for a private CA or a TLS-inspecting proxy): %w", step, err)
		return e
	}
	if step == stepConnect || strings.Contains(err.Error(), step) {
		e.Err = err
	} else {
		e.Err = fmt.Errorf("%s: %w", step, err)
	}
	return e
}

// ambiguousError reports a failure after the message was handed over.
func ambiguousError(err error) *outbound.Error {
	return &outbound.Error{
		Kind:       outbound.Ambiguous,
		ReasonCode: mailjob.ReasonGraphUnavailable,
		Err:        fmt.Errorf("%w (%v)", ErrMaybeSent, err),
	}
}

// tokenError classifies a failure to get an access token.
func tokenError(err error) *outbound.Error {
	kind := outbound.Transient
	if auth.IsPermanent(err) {
		kind = outbound.Auth
	}
	return &outbound.Error{Kind: kind, ReasonCode: mailjob.ReasonAuthFailed, Err: fmt.Errorf("get an access token for SMTP: %w", err)}
}

// invalidJobError: the job cannot be written as a message.
func invalidJobError(err error) *outbound.Error {
	return &outbound.Error{Kind: outbound.Permanent, ReasonCode: mailjob.ReasonInvalidJob, Err: err}
}
