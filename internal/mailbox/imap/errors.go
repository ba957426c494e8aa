package imap

import (
	"errors"
	"regexp"
	"strconv"
	"strings"
	"time"

	goimap "github.com/emersion/go-imap/v2"

	"github.com/mailpipe/mailpipe/internal/mailbox"
)

// throttledRE matches Exchange Online's throttling reply:
// "BAD Request is throttled. Suggested Backoff Time: 155 milliseconds".
var throttledRE = regexp.MustCompile(`(?i)throttled.*?backoff time:\s*(\d+)\s*milliseconds`)

// errConnLost marks a connection closed under us (timeout, BYE, reset).
var errConnLost = errors.New("connection lost")

// responseCodeExpungeIssued (RFC 5530): another session expunged some of
// the messages a command named. Dovecot then refuses a whole UID MOVE or
// UID COPY ("NO [EXPUNGEISSUED] Some of the requested messages no longer
// exist") until the session has seen the EXPUNGE (any NOOP).
const responseCodeExpungeIssued goimap.ResponseCode = "EXPUNGEISSUED"

// classification of IMAP response codes (RFC 5530 and friends).
var codeKinds = map[goimap.ResponseCode]mailbox.Kind{
	goimap.ResponseCodeAuthenticationFailed: mailbox.Auth,
	goimap.ResponseCodeAuthorizationFailed:  mailbox.Auth,
	goimap.ResponseCodeExpired:              mailbox.Auth,
	goimap.ResponseCodeNoPerm:               mailbox.Auth,
	goimap.ResponseCodePrivacyRequired:      mailbox.Auth,
	goimap.ResponseCodeContactAdmin:         mailbox.Auth,
	goimap.ResponseCodeNonExistent:          mailbox.NotFound,
	goimap.ResponseCodeTryCreate:            mailbox.NotFound,
	goimap.ResponseCodeUnavailable:          mailbox.Transient,
	goimap.ResponseCodeInUse:                mailbox.Transient,
	goimap.ResponseCodeServerBug:            mailbox.Transient,
	responseCodeExpungeIssued:               mailbox.Transient,
	goimap.ResponseCodeLimit:                mailbox.Throttled,
	goimap.ResponseCodeOverQuota:            mailbox.Permanent,
	goimap.ResponseCodeTooBig:               mailbox.Permanent,
	goimap.ResponseCodeCannot:               mailbox.Permanent,
	goimap.ResponseCodeParse:                mailbox.Permanent,
	goimap.ResponseCodeCorruption:           mailbox.Permanent,
	goimap.ResponseCodeClientBug:            mailbox.Permanent,
	goimap.ResponseCodeAlreadyExists:        mailbox.Permanent,
	goimap.ResponseCodeHasChildren:          mailbox.Permanent,
	goimap.ResponseCodeBadCharset:           mailbox.Permanent,
	goimap.ResponseCodeUnknownCTE:           mailbox.Permanent,
	goimap.ResponseCodeTooMany:              mailbox.Permanent,
	goimap.ResponseCodeNoPrivate:            mailbox.Permanent,
}

// classify turns an error from the IMAP client into a *mailbox.Error.
func classify(op, mbox, folder string, err error) error {
	if err == nil {
		return nil
	}
	var me *mailbox.Error
	if errors.As(err, &me) {
		return err
	}
	e := &mailbox.Error{Kind: kindOf(err), Op: op, Mailbox: mbox, Folder: folder, Err: err}
	if e.Kind == mailbox.Throttled {
		e.RetryAfter = retryAfter(err)
	}
	return e
}

func kindOf(err error) mailbox.Kind {
	var ie *goimap.Error
	if errors.As(err, &ie) {
		if m := throttledRE.FindStringSubmatch(ie.Text); m != nil {
			return mailbox.Throttled
		}
		if k, ok := codeKinds[ie.Code]; ok {
			return k
		}
		// No code (or one without a kind): Exchange says "NO AUTHENTICATE
		// failed." for a rejected token and "BAD User is authenticated but
		// not connected." (to SELECT, after a successful login) when the
		// app lacks access to the mailbox. Both need an operator, so the
		// text is looked at before a bare BAD counts as permanent.
		t := strings.ToLower(ie.Text)
		switch {
		case strings.Contains(t, "authenticat"), strings.Contains(t, "not connected"), strings.Contains(t, "login failed"):
			return mailbox.Auth
		case strings.Contains(t, "doesn't exist"), strings.Contains(t, "does not exist"), strings.Contains(t, "not found"), strings.Contains(t, "unknown mailbox"):
			return mailbox.NotFound
		}
		if ie.Type == goimap.StatusResponseTypeBad {
			return mailbox.Permanent
		}
		return mailbox.Transient
	}
	// Everything else is the connection: reset, EOF, closed under us by
	// the timeout guard (errConnLost), dial and TLS failures.
	return mailbox.Transient
}

// isExpungeIssued reports a NO [EXPUNGEISSUED].
func isExpungeIssued(err error) bool {
	var ie *goimap.Error
	return errors.As(err, &ie) && ie.Code == responseCodeExpungeIssued
}

// retryAfter extracts Exchange's suggested backoff; 1s when absent.
func retryAfter(err error) time.Duration {
	var ie *goimap.Error
	if errors.As(err, &ie) {
		if m := throttledRE.FindStringSubmatch(ie.Text); m != nil {
			if ms, perr := strconv.Atoi(m[1]); perr == nil {
				return time.Duration(ms) * time.Millisecond
			}
		}
	}
	return time.Second
}
