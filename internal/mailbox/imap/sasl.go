package imap

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"strings"
)

// xoauth2 is a SASL XOAUTH2 client (go-sasl has none). Exchange Online and
// Dovecot answer a rejected token with an error challenge (base64 JSON) that
// the client must answer before the server sends the tagged NO; an
// unanswered challenge wedges the connection.
type xoauth2 struct {
	user, token string
	// failure records the server's error challenge, if any.
	failure string
}

func (x *xoauth2) Start() (string, []byte, error) {
	return "XOAUTH2", []byte("user=" + x.user + "\x01auth=Bearer " + x.token + "\x01\x01"), nil
}

func (x *xoauth2) Next(challenge []byte) ([]byte, error) {
	x.failure = describeXOAuth2Failure(challenge)
	// Dovecot rejects an empty response (encoded "="); a lone ^A is what
	// both Dovecot and Exchange accept as "abort, tell me the result".
	return []byte{0x01}, nil
}

// describeXOAuth2Failure renders an XOAUTH2 error challenge such as
// {"status":"401","schemes":"bearer","scope":"https://outlook.office365.com/.default"}.
// go-imap hands over the challenge decoded; a challenge still in base64 is
// decoded too. Anything else is quoted as text.
func describeXOAuth2Failure(challenge []byte) string {
	type failure struct {
		Status  string `json:"status"`
		Scope   string `json:"scope"`
		Schemes string `json:"schemes"`
	}
	parse := func(raw []byte) (failure, bool) {
		var v failure
		err := json.Unmarshal(raw, &v)
		return v, err == nil && v.Status != ""
	}
	v, ok := parse(challenge)
	if !ok {
		if dec, err := base64.StdEncoding.DecodeString(string(challenge)); err == nil {
			v, ok = parse(dec)
		}
	}
	if !ok {
		s := strings.TrimSpace(string(challenge))
		if len(s) > 200 {
			s = s[:200]
		}
		return strings.ToValidUTF8(s, "")
	}
	if v.Scope != "" {
		return fmt.Sprintf("server status %s, expects scope %s", v.Status, v.Scope)
	}
	return "server status " + v.Status
}
