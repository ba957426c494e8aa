package imap

import (
	"bytes"
	"encoding/base64"
	"strings"
	"testing"
)

func TestXOAuth2InitialResponse(t *testing.T) {
	x := &xoauth2{user: "invoices@example.test", token: "eyJ0eXAi.payload.sig"}
	mech, ir, err := x.Start()
	if err != nil {
		t.Fatal(err)
	}
	if mech != "XOAUTH2" {
		t.Errorf("mechanism %q", mech)
	}
	want := []byte("user=invoices@example.test\x01auth=Bearer eyJ0eXAi.payload.sig\x01\x01")
	if !bytes.Equal(ir, want) {
		t.Errorf("initial response %q, want %q", ir, want)
	}
}

// An error challenge is answered with a single 0x01 (an empty answer,
// encoded "=", makes Dovecot reply BAD instead of the real result) and
// described for the error message.
func TestXOAuth2ErrorChallenge(t *testing.T) {
	const challenge = `{"status":"401","schemes":"bearer","scope":"https://outlook.office365.com/.default"}`
	x := &xoauth2{user: "u", token: "t"}
	// go-imap hands Next the decoded challenge.
	resp, err := x.Next([]byte(challenge))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(resp, []byte{0x01}) {
		t.Errorf("answer %q, want \\x01", resp)
	}
	if want := "server status 401, expects scope https://outlook.office365.com/.default"; x.failure != want {
		t.Errorf("failure %q, want %q", x.failure, want)
	}
}

func TestDescribeXOAuth2Failure(t *testing.T) {
	b64 := func(s string) []byte { return []byte(base64.StdEncoding.EncodeToString([]byte(s))) }
	for _, tc := range []struct {
		challenge []byte
		want      string
	}{
		{[]byte(`{"status":"401","schemes":"bearer","scope":"https://outlook.office365.com/.default"}`), "server status 401, expects scope https://outlook.office365.com/.default"},
		{b64(`{"status":"401","schemes":"bearer","scope":"https://outlook.office365.com/.default"}`), "server status 401, expects scope https://outlook.office365.com/.default"},
		{b64(`{"status":"invalid_token"}`), "server status invalid_token"},
		{[]byte(`{"status":"400"}`), "server status 400"},
		{[]byte("  not json at all  "), "not json at all"},
		{[]byte(strings.Repeat("x", 300)), strings.Repeat("x", 200)},
	} {
		if got := describeXOAuth2Failure(tc.challenge); got != tc.want {
			t.Errorf("describeXOAuth2Failure(%.40q) = %q, want %q", tc.challenge, got, tc.want)
		}
	}
}
