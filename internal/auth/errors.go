package auth

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"regexp"
	"strconv"
	"strings"

	msalerrors "github.com/AzureAD/microsoft-authentication-library-for-go/apps/errors"
)

// Error is a failed token acquisition. Its text names the identity, tenant,
// client and scope, the AADSTS code and Entra ID's description, and a hint
// for the operator. It never contains the client secret or a token.
type Error struct {
	Identity string // name under identities in the configuration
	Tenant   string
	Client   string
	Scope    string
	// Code is Entra ID's error code, e.g. "AADSTS7000215"; empty when the
	// token endpoint gave no answer (network, timeout).
	Code string
	// OAuthError is the OAuth error, e.g. "invalid_client".
	OAuthError string
	// HTTPStatus is the token endpoint's HTTP status; 0 without an answer.
	HTTPStatus int
	// Description is Entra ID's error description without the code prefix
	// and trace lines, or what went wrong on the way.
	Description string
	// Hint says what to check or change.
	Hint string
	// Permanent is true when retrying cannot help until the configuration
	// or the app registration changes; network errors, throttling and
	// server errors are not permanent.
	Permanent bool
	// Err is the underlying error for errors.Is/As (network and context
	// errors); nil for error answers of the token endpoint.
	Err error
}

func (e *Error) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "auth: identity %q (tenant %s, client %s): token for %s: ", e.Identity, e.Tenant, e.Client, e.Scope)
	switch {
	case e.Code != "" && e.Description != "":
		b.WriteString(e.Code + ": " + e.Description)
	case e.Code != "":
		b.WriteString(e.Code)
	case e.Description != "":
		b.WriteString(e.Description)
	default:
		b.WriteString("token request failed")
	}
	if e.Hint != "" {
		b.WriteString(" (hint: " + e.Hint + ")")
	}
	return b.String()
}

func (e *Error) Unwrap() error { return e.Err }

// IsPermanent reports whether err is an *Error that retrying cannot fix.
func IsPermanent(err error) bool {
	var e *Error
	return errors.As(err, &e) && e.Permanent
}

// oauthError is the JSON error body of Entra ID.
type oauthError struct {
	Error            string `json:"error"`
	ErrorDescription string `json:"error_description"`
	ErrorCodes       []int  `json:"error_codes"`
}

var aadstsRe = regexp.MustCompile(`AADSTS(\d+)`)

// transientCodes are AADSTS codes worth retrying even though they come
// with a 4xx status.
var transientCodes = map[string]bool{
	"AADSTS90033": true, // a transient error has occurred
	"AADSTS50196": true, // loop detected (too many requests in a row)
	"AADSTS90006": true, // the server could not process the request
}

// classify turns an MSAL error into an *Error.
func (a *ident) classify(scope string, err error) *Error {
	e := &Error{Identity: a.name, Tenant: a.tenant, Client: a.clientID, Scope: scope}
	var callErr msalerrors.CallErr
	var urlErr *url.Error
	var cacheErr *cacheError
	switch {
	case errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled):
		return a.contextError(scope, err)
	case errors.As(err, &cacheErr):
		e.Err = err
		e.Description = cacheErr.Error()
		e.Hint = a.cacheHint(err)
		e.Permanent = errors.Is(err, ErrCacheUndecryptable)
	case errors.As(err, &callErr):
		a.fromCallErr(e, callErr)
	case errors.As(err, &urlErr) || isNetError(err):
		e.Err = err
		e.Description = "cannot reach the token endpoint: " + netCause(err)
		if isTLSError(err) {
			e.Hint = "the identity platform's TLS certificate is not trusted: check authority_host, or set ca_file to the CA of a TLS-inspecting proxy"
		} else {
			e.Hint = "check network access to https://" + hostOf(a.authority) + " (firewall, proxy settings) and authority_host"
		}
	default:
		e.Err = err
		msg := err.Error()
		e.Description = firstLine(msg)
		if strings.Contains(msg, "issuer") && strings.Contains(msg, "authority") ||
			strings.Contains(msg, "invalid_instance") || strings.Contains(msg, "TenantDiscoveryResponse") {
			e.Permanent = true
			e.Hint = "authority_host " + hostOf(a.authority) + " does not serve a Microsoft identity platform OpenID configuration for tenant " + a.tenant
		}
	}
	e.Description = a.redact(e.Description)
	return e
}

func (a *ident) fromCallErr(e *Error, ce msalerrors.CallErr) {
	var body []byte
	if ce.Resp != nil {
		e.HTTPStatus = ce.Resp.StatusCode
		if ce.Resp.Body != nil {
			// MSAL read the body and put it back as an in-memory reader.
			body, _ = io.ReadAll(io.LimitReader(ce.Resp.Body, 1<<20))
			ce.Resp.Body = io.NopCloser(bytes.NewReader(body))
		}
	}
	var oe oauthError
	if !parseOAuthError(body, &oe) && ce.Err != nil {
		// The message ends with the body: "http call(...) error: reply
		// status code was 401:\n{...}".
		msg := ce.Err.Error()
		if i := strings.IndexByte(msg, '{'); i >= 0 {
			parseOAuthError([]byte(msg[i:]), &oe)
		}
	}
	e.OAuthError = oe.Error
	switch {
	case len(oe.ErrorCodes) > 0:
		e.Code = "AADSTS" + strconv.Itoa(oe.ErrorCodes[0])
	default:
		if m := aadstsRe.FindStringSubmatch(oe.ErrorDescription); m != nil {
			e.Code = "AADSTS" + m[1]
		}
	}
	e.Description = cleanDescription(oe.ErrorDescription)
	if e.Description == "" && oe.Error != "" {
		e.Description = oe.Error
	}
	if e.Description == "" {
		e.Description = fmt.Sprintf("HTTP %d %s from the identity platform", e.HTTPStatus, http.StatusText(e.HTTPStatus))
	}
	e.Permanent = permanent(e.Code, e.HTTPStatus)
	e.Hint = a.hint(e)
}

func parseOAuthError(b []byte, oe *oauthError) bool {
	b = bytes.TrimSpace(b)
	if len(b) == 0 || b[0] != '{' {
		return false
	}
	return json.Unmarshal(b, oe) == nil && (oe.Error != "" || oe.ErrorDescription != "" || len(oe.ErrorCodes) > 0)
}

// cleanDescription drops the "AADSTSnnnn: " prefix and the trace lines.
func cleanDescription(d string) string {
	for _, sep := range []string{"\r\n", "\n", " Trace ID:"} {
		if i := strings.Index(d, sep); i >= 0 {
			d = d[:i]
		}
	}
	d = strings.TrimSpace(d)
	if m := aadstsRe.FindStringIndex(d); m != nil && m[0] == 0 {
		d = strings.TrimSpace(strings.TrimPrefix(d[m[1]:], ":"))
	}
	return d
}

func permanent(code string, status int) bool {
	if transientCodes[code] {
		return false
	}
	switch {
	case status == http.StatusTooManyRequests, status == http.StatusRequestTimeout:
		return false
	case status >= 500:
		return false
	case status >= 400:
		return true
	}
	return false
}

// hint gives the operator advice for common codes.
func (a *ident) hint(e *Error) string {
	if a.delegated {
		if h := a.delegatedHint(e); h != "" {
			return h
		}
	}
	id := "identities." + a.name
	switch e.Code {
	case "AADSTS7000215":
		return "the client secret is wrong: copy the secret's Value (not its Secret ID) from the app registration's " +
			"Certificates & secrets page into " + id + ".client_secret or client_secret_file"
	case "AADSTS7000222":
		return "the client secret has expired: create a new client secret in the app registration (Certificates & secrets), " +
			"put its Value into " + id + ".client_secret or client_secret_file and update secret_expires"
	case "AADSTS700016":
		return "application " + a.clientID + " was not found in tenant " + a.tenant + ": check " + id +
			".client_id (the Application (client) ID, not the object ID) and tenant_id, and that an administrator " +
			"of this tenant has consented to the app"
	case "AADSTS90002":
		return "tenant " + a.tenant + " does not exist: check " + id + ".tenant_id (Directory (tenant) ID or a verified domain) " +
			"and authority_host (national clouds have their own login host)"
	case "AADSTS70011", "AADSTS1002012":
		return "scope " + e.Scope + " is not valid for an app-only token: use a resource's /.default scope, e.g. " +
			ScopeIMAPApp + " for IMAP or " + ScopeGraphApp + " for Graph"
	case "AADSTS500011":
		return "the resource of scope " + e.Scope + " is not available in tenant " + a.tenant +
			": check the scope's spelling and that the tenant has the service (e.g. Exchange Online)"
	case "AADSTS700027":
		return "the certificate in " + id + ".certificate_file is not registered on application " + a.clientID +
			" (or its private key does not belong to it): upload the certificate (public part) under Certificates & secrets"
	case "AADSTS700024":
		return "the client assertion is outside its valid time range: check this machine's clock"
	case "AADSTS7000218":
		return "no client credential was sent: set " + id + ".client_secret, client_secret_file or certificate_file"
	case "AADSTS65001":
		return "consent is missing: an administrator must grant admin consent for the app's API permissions " +
			"(e.g. Office 365 Exchange Online IMAP.AccessAsApp, Microsoft Graph Mail.ReadWrite)"
	case "AADSTS50126":
		return "the credentials were rejected (invalid username or password); for app-only access check " + id +
			" and that admin consent was granted"
	case "AADSTS7000112":
		return "application " + a.clientID + " is disabled in tenant " + a.tenant + ": enable its enterprise application"
	case "AADSTS53003":
		return "a Conditional Access policy blocked the token request: ask the tenant administrator to exclude the app's service principal"
	}
	switch {
	case e.HTTPStatus == http.StatusTooManyRequests:
		return "the identity platform throttled the request; it is retried later"
	case e.HTTPStatus >= 500:
		return "the identity platform had a server error; it is retried later"
	}
	return ""
}

// delegatedHint gives advice for the codes of delegated sign-in.
func (a *ident) delegatedHint(e *Error) string {
	signIn := "sign in again: run `" + a.signInCmd + "`"
	switch e.Code {
	case "AADSTS50173":
		return "the sign-in of " + a.username + " was revoked (password change or revoked sessions): " + signIn
	case "AADSTS700082", "AADSTS70008":
		return "the refresh token of " + a.username + " expired after 90 days without use: " + signIn +
			" (a running importer renews it every hour)"
	case "AADSTS70043", "AADSTS50133":
		return "the sign-in of " + a.username + " has expired (Conditional Access sign-in frequency or a password change): " + signIn
	case "AADSTS50076", "AADSTS50079", "AADSTS50158", "AADSTS50072", "AADSTS50074":
		return "Entra ID wants " + a.username + " to complete an interactive step (e.g. MFA): " + signIn
	case "AADSTS9002313":
		return "the refresh token in the token cache is not valid: " + signIn
	case "AADSTS65001":
		return "consent is missing for " + e.Scope + ": an administrator must grant admin consent for the app's delegated permissions " +
			"(Office 365 Exchange Online IMAP.AccessAsUser.All; Microsoft Graph Mail.ReadWrite.Shared, Mail.Send.Shared; offline_access), " +
			"or " + a.username + " consents when signing in"
	case "AADSTS7000218":
		return "application " + a.clientID + " does not allow public client flows: in the app registration, under Authentication, " +
			"set \"Allow public client flows\" to Yes (identities." + a.name + " is of kind delegated and sends no secret)"
	case "AADSTS70019":
		return "nobody signed in before the code expired: run the sign-in again and enter the code within 15 minutes"
	case "AADSTS70018":
		return "the device code was not recognized: run the sign-in again"
	case "AADSTS28000":
		return "one token serves one resource: ask for the IMAP scope and the Graph scopes in separate requests"
	case "AADSTS70011":
		return "scope " + e.Scope + " is not valid for a delegated token: use " + ScopeIMAPDelegated + " for IMAP, or " +
			ScopeGraphMailReadWriteShared + " and " + ScopeGraphMailSendShared + " for Graph"
	case "AADSTS50034", "AADSTS50057", "AADSTS50053":
		return "check the service account " + a.username + " (it must exist, be enabled and not be locked out), then " + signIn
	case "AADSTS53003":
		return "a Conditional Access policy blocked the sign-in of " + a.username + ": ask the tenant administrator to allow it for this app"
	}
	switch e.OAuthError {
	case "authorization_declined":
		return "the sign-in was cancelled on the device login page: run it again and approve it"
	case "invalid_grant", "interaction_required":
		return "the sign-in of " + a.username + " is no longer valid: " + signIn
	}
	return ""
}

// contextError is the error of a request ended by its context.
func (a *ident) contextError(scope string, err error) *Error {
	e := &Error{Identity: a.name, Tenant: a.tenant, Client: a.clientID, Scope: scope, Err: err}
	if errors.Is(err, context.DeadlineExceeded) {
		e.Description = "the token request timed out"
		e.Hint = "check network access to https://" + hostOf(a.authority) + " and authority_host"
	} else {
		e.Description = "the token request was cancelled"
	}
	return e
}

func (a *ident) redact(s string) string {
	if len(a.secret) >= 4 {
		s = strings.ReplaceAll(s, a.secret, "[redacted]")
	}
	return s
}

func isNetError(err error) bool {
	var ne net.Error
	var oe *net.OpError
	return errors.As(err, &ne) || errors.As(err, &oe) || isTLSError(err)
}

func isTLSError(err error) bool {
	var ua x509.UnknownAuthorityError
	var he x509.HostnameError
	var ci x509.CertificateInvalidError
	var cv *tls.CertificateVerificationError
	var rh tls.RecordHeaderError
	return errors.As(err, &ua) || errors.As(err, &he) || errors.As(err, &ci) || errors.As(err, &cv) || errors.As(err, &rh)
}

// netCause is the innermost useful text of a network error.
func netCause(err error) string {
	var urlErr *url.Error
	if errors.As(err, &urlErr) && urlErr.Err != nil {
		return urlErr.Op + " " + urlErr.URL + ": " + urlErr.Err.Error()
	}
	return firstLine(err.Error())
}

func firstLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		rest := strings.TrimSpace(s[i+1:])
		s = strings.TrimSpace(s[:i])
		if strings.HasSuffix(s, ":") && rest != "" {
			s += " " + firstLine(rest)
		}
	}
	return s
}

func hostOf(authority string) string {
	u, err := url.Parse(authority)
	if err != nil {
		return authority
	}
	return u.Host
}
