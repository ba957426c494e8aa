package devmail

import (
	"bytes"
	"strings"

	"github.com/emersion/go-imap/v2"
)

const mechXOAuth2 = "XOAUTH2"

// xoauth2ErrorChallenge is what Exchange Online sends when it rejects an
// XOAUTH2 token; the client must answer it (conventionally with a lone
// ^A) before the tagged NO follows.
var xoauth2ErrorChallenge = []byte(`{"status":"401","schemes":"bearer","scope":"https://outlook.office365.com/.default"}`)

// errAuthenticateFailed is Exchange's answer to a failed AUTHENTICATE.
var errAuthenticateFailed = &imap.Error{
	Type: imap.StatusResponseTypeNo,
	Text: "AUTHENTICATE failed.",
}

// xoauth2Server is the server side of SASL XOAUTH2. The client's (initial)
// response is
//
//	"user=" user "\x01auth=Bearer " token "\x01\x01"
type xoauth2Server struct {
	auth func(user, token string) bool

	askedInitial bool
	failed       bool
	done         bool
}

func (x *xoauth2Server) Next(response []byte) (challenge []byte, done bool, err error) {
	switch {
	case x.done:
		return nil, false, errAuthenticateFailed
	case x.failed:
		// Whatever the client answered to the error challenge, the
		// exchange ends with NO.
		x.done = true
		return nil, false, errAuthenticateFailed
	case response == nil && !x.askedInitial:
		// No SASL-IR: an empty "+ " asks for the initial response.
		x.askedInitial = true
		return nil, false, nil
	}

	user, token, ok := parseXOAuth2(response)
	if !ok {
		x.done = true
		return nil, false, errAuthenticateFailed
	}
	if !x.auth(user, token) {
		x.failed = true
		return xoauth2ErrorChallenge, false, nil
	}
	x.done = true
	return nil, true, nil
}

// parseXOAuth2 parses an XOAUTH2 client response. Key/value pairs are
// separated by ^A; the auth value is "Bearer <token>" (scheme
// case-insensitive).
func parseXOAuth2(resp []byte) (user, token string, ok bool) {
	if !bytes.HasSuffix(resp, []byte("\x01\x01")) {
		return "", "", false
	}
	for _, kv := range strings.Split(string(resp[:len(resp)-2]), "\x01") {
		k, v, found := strings.Cut(kv, "=")
		if !found {
			return "", "", false
		}
		switch strings.ToLower(k) {
		case "user":
			user = v
		case "auth":
			scheme, tok, found := strings.Cut(v, " ")
			if !found || !strings.EqualFold(scheme, "Bearer") {
				return "", "", false
			}
			token = strings.TrimSpace(tok)
		}
	}
	return user, token, user != "" && token != ""
}

// plainServer is SASL PLAIN (RFC 4616). go-sasl's server answers a missing
// initial response with an empty challenge that imapserver encodes as
// "+ =", which clients take for a real challenge; this one sends "+ ".
type plainServer struct {
	auth func(username, password string) bool

	askedInitial bool
	done         bool
}

func (p *plainServer) Next(response []byte) ([]byte, bool, error) {
	if p.done {
		return nil, false, errAuthenticateFailed
	}
	if response == nil && !p.askedInitial {
		p.askedInitial = true
		return nil, false, nil
	}
	p.done = true
	parts := bytes.Split(response, []byte{0})
	if len(parts) != 3 {
		return nil, false, errAuthenticateFailed
	}
	identity, username, password := string(parts[0]), string(parts[1]), string(parts[2])
	if identity != "" && !strings.EqualFold(identity, username) {
		return nil, false, errAuthenticateFailed
	}
	if !p.auth(username, password) {
		return nil, false, errAuthenticateFailed
	}
	return nil, true, nil
}

// loginServer is the obsolete SASL LOGIN mechanism: "Username:" and
// "Password:" challenges; the username may come as initial response.
type loginServer struct {
	auth func(username, password string) bool

	step     int
	username string
}

func (l *loginServer) Next(response []byte) ([]byte, bool, error) {
	switch l.step {
	case 0:
		if response == nil {
			l.step = 1
			return []byte("Username:"), false, nil
		}
		l.username = string(response)
		l.step = 2
		return []byte("Password:"), false, nil
	case 1:
		l.username = string(response)
		l.step = 2
		return []byte("Password:"), false, nil
	case 2:
		l.step = 3
		if !l.auth(l.username, string(response)) {
			return nil, false, errAuthenticateFailed
		}
		return nil, true, nil
	default:
		return nil, false, errAuthenticateFailed
	}
}
