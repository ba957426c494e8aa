package auth

import (
	"fmt"
	"time"

	"github.com/mailpipe/mailpipe/internal/config"
)

// DefaultExpiryWarning is how long before a client secret or certificate
// expires AppStatus starts warning when the identity sets no
// expiry_warning.
const DefaultExpiryWarning = 30 * 24 * time.Hour

// CredentialStatus describes an app identity's credential.
type CredentialStatus struct {
	// Kind is "secret", "certificate" or "" (none configured).
	Kind string
	// Expires is when the credential expires: secret_expires for a secret,
	// the certificate's NotAfter; zero when unknown.
	Expires time.Time
	// Warnings say what needs doing: expired, or expiring within the
	// identity's expiry_warning; a certificate that cannot be read.
	Warnings []string
	// Notes are hints that are not problems (e.g. no secret_expires set).
	Notes []string
}

// AppStatus reports when an app identity's credential expires, with
// warnings from id.ExpiryWarning (DefaultExpiryWarning when zero) before
// the expiry. It reads the certificate file; it makes no network request.
// Of the options only WithClock matters.
func AppStatus(id config.Identity, opts ...Option) CredentialStatus {
	o := newOptions(opts)
	now := o.now()
	window := id.ExpiryWarning
	if window <= 0 {
		window = DefaultExpiryWarning
	}
	var st CredentialStatus
	what := ""
	switch {
	case id.CertificateFile != "":
		st.Kind, what = "certificate", "the client certificate"
		notAfter, _, err := CertificateExpiry(id)
		if err != nil {
			st.Warnings = append(st.Warnings, fmt.Sprintf("cannot read the client certificate: %v", err))
			return st
		}
		st.Expires = notAfter
	case id.ClientSecret != "" || id.ClientSecretFile != "":
		st.Kind, what = "secret", "the client secret"
		if id.SecretExpires == "" {
			st.Notes = append(st.Notes, "secret_expires is not set, so its expiry cannot be watched: set it to the date the portal shows for the secret")
			return st
		}
		t, err := time.ParseInLocation(time.DateOnly, id.SecretExpires, time.UTC)
		if err != nil {
			st.Warnings = append(st.Warnings, fmt.Sprintf("secret_expires %q is not a date (YYYY-MM-DD)", id.SecretExpires))
			return st
		}
		st.Expires = t
	default:
		return st
	}
	renew := "create a new client secret in the app registration (Certificates & secrets), put its Value into client_secret or client_secret_file and update secret_expires"
	if st.Kind == "certificate" {
		renew = "create a new certificate, upload it to the app registration (Certificates & secrets) and update certificate_file"
	}
	left := st.Expires.Sub(now)
	day := st.Expires.UTC().Format(time.DateOnly)
	switch {
	case left <= 0:
		st.Warnings = append(st.Warnings, fmt.Sprintf("%s expired on %s: %s", what, day, renew))
	case left <= window:
		st.Warnings = append(st.Warnings, fmt.Sprintf("%s expires on %s (in %s): %s", what, day, days(left), renew))
	}
	return st
}

func days(d time.Duration) string {
	n := int(d.Hours() / 24)
	switch n {
	case 0:
		return "less than a day"
	case 1:
		return "1 day"
	}
	return fmt.Sprintf("%d days", n)
}
