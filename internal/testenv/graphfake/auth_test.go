package graphfake_test

import (
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/mailpipe/mailpipe/internal/devidp"
	"github.com/mailpipe/mailpipe/internal/testenv/graphfake"
)

func TestAuthentication(t *testing.T) {
	e := newEnv(t)
	u := "/users/" + shared + "/mailFolders/inbox"
	r := e.call("GET", u, "", nil)
	m := expectError(t, r, 401, "InvalidAuthenticationToken")
	if m != "Access token is empty." || r.header.Get("WWW-Authenticate") == "" {
		t.Fatalf("%q %v", m, r.header)
	}
	expectError(t, e.call("GET", u, "not-a-jwt", nil), 401, "InvalidAuthenticationToken")
	forged := e.app[:len(e.app)-4] + "AAAA"
	expectError(t, e.call("GET", u, forged, nil), 401, "InvalidAuthenticationToken")
	expired := e.mint(jwt.MapClaims{"appid": appID, "roles": []string{"Mail.Read"}, "exp": time.Now().Add(-time.Minute).Unix()})
	m = expectError(t, e.call("GET", u, expired, nil), 401, "InvalidAuthenticationToken")
	if !strings.Contains(m, "expired") {
		t.Fatalf("expired: %q", m)
	}
	// A token for Exchange Online (IMAP) is not a Graph token.
	outlook, err := e.idp.Mint(shared, devidp.ResourceOutlook, 0)
	if err != nil {
		t.Fatal(err)
	}
	m = expectError(t, e.call("GET", u, outlook, nil), 401, "InvalidAuthenticationToken")
	if !strings.Contains(m, "audience") {
		t.Fatalf("audience: %q", m)
	}
	// devidp's own Graph token (Mail.ReadWrite) works.
	graph, err := e.idp.Mint(shared, devidp.ResourceGraph+"/.default", 0)
	if err != nil {
		t.Fatal(err)
	}
	expectStatus(t, e.call("GET", u, graph, nil), 200)
}

func TestApplicationPermissions(t *testing.T) {
	e := newEnv(t)
	ids := e.seed(shared, "Inbox", 1)
	u := "/users/" + shared + "/messages/" + ids[0]
	none := e.appToken("User.Read.All")
	m := expectError(t, e.call("GET", u, none, nil), 403, "ErrorAccessDenied")
	if m != "Access is denied. Check credentials and try again." {
		t.Fatalf("%q", m)
	}
	read := e.appToken("Mail.Read")
	expectStatus(t, e.call("GET", u, read, nil), 200)
	expectError(t, e.call("POST", u+"/move", read, map[string]string{"destinationId": "archive"}), 403, "ErrorAccessDenied")
	expectError(t, e.call("POST", "/users/"+shared+"/sendMail", read, sendBody("x")), 403, "ErrorAccessDenied")
	// The user object needs directory permissions.
	expectError(t, e.get("/users/"+shared), 403, "Authorization_RequestDenied")
	r := e.call("GET", "/users/"+shared, none, nil)
	expectStatus(t, r, 200)
	if r.json(t)["mail"] != shared {
		t.Fatal("user")
	}
	// /me needs a delegated token.
	m = expectError(t, e.get("/me/messages"), 400, "BadRequest")
	if !strings.Contains(m, "delegated") {
		t.Fatalf("%q", m)
	}
	// Unknown mailbox, mailbox without Exchange Online.
	m = expectError(t, e.get("/users/nobody@contoso.test/messages"), 404, "ErrorInvalidUser")
	if m != "The requested user 'nobody@contoso.test' is invalid." {
		t.Fatalf("%q", m)
	}
	e.g.AddMailbox("gone@contoso.test", graphfake.MailboxOptions{Inactive: true})
	expectError(t, e.get("/users/gone@contoso.test/messages"), 404, "MailboxNotEnabledForRESTAPI")
	// The object id works as well as the address.
	id := e.g.AddMailbox(shared, graphfake.MailboxOptions{})
	expectStatus(t, e.get("/users/"+id+"/messages/"+ids[0]), 200)
	// An application access policy scopes the app to some mailboxes.
	e.g.RestrictApp(appID, other)
	expectError(t, e.get(u), 403, "ErrorAccessDenied")
	expectStatus(t, e.get("/users/"+other+"/mailFolders/inbox"), 200)
	e.g.RestrictApp(appID)
	expectStatus(t, e.get(u), 200)
}

func TestDelegatedSharedMailbox(t *testing.T) {
	e := newEnv(t)
	ids := e.seed(shared, "Inbox", 1)
	tok := e.userToken(svcUser, "Mail.ReadWrite.Shared", "Mail.Send.Shared", "offline_access", "User.Read")
	u := "/users/" + shared + "/messages/" + ids[0]
	// No Full Access yet.
	expectError(t, e.call("GET", u, tok, nil), 403, "ErrorAccessDenied")
	e.g.GrantFullAccess(svcUser, shared)
	expectStatus(t, e.call("GET", u, tok, nil), 200)
	expectStatus(t, e.call("POST", u+"/move", tok, map[string]string{"destinationId": "archive"}), 201)
	// The user's own mailbox, as /me.
	r := e.call("GET", "/me/mailFolders/inbox", tok, nil)
	expectStatus(t, r, 200)
	r = e.call("GET", "/me", tok, nil)
	if r.json(t)["userPrincipalName"] != svcUser {
		t.Fatalf("%s", r.body)
	}
	// Mail.ReadWrite (not .Shared) does not reach other mailboxes, even with Full Access.
	own := e.userToken(svcUser, "Mail.ReadWrite")
	expectError(t, e.call("GET", "/users/"+shared+"/mailFolders/inbox", own, nil), 403, "ErrorAccessDenied")
	expectStatus(t, e.call("GET", "/me/mailFolders/inbox", own, nil), 200)
	e.g.RevokeFullAccess(svcUser, shared)
	expectError(t, e.call("GET", "/users/"+shared+"/mailFolders/inbox", tok, nil), 403, "ErrorAccessDenied")
}

func TestStaticTokensAndStart(t *testing.T) {
	if _, err := graphfake.Start(graphfake.Options{}); err == nil {
		t.Fatal("Start without ValidateToken")
	}
	if _, err := graphfake.Start(graphfake.Options{ValidateToken: graphfake.StaticTokens(nil), Addr: "0.0.0.0:0"}); err == nil {
		t.Fatal("non-loopback address accepted")
	}
	g, err := graphfake.Start(graphfake.Options{ValidateToken: graphfake.StaticTokens(map[string]graphfake.Claims{
		"a.b.c": {Audience: graphfake.ResourceGraph, AppID: "bench", Roles: []string{"Mail.ReadWrite"}},
	})})
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	g.AddMailbox(shared, graphfake.MailboxOptions{})
	e := &env{t: t, g: g, client: g.HTTPClient(), app: "a.b.c"}
	expectStatus(t, e.get("/users/"+shared+"/mailFolders/inbox"), 200)
	expectStatus(t, e.call("GET", "/users/"+shared+"/mailFolders/inbox", "x.y.z", nil), 401)
	if p, err := g.WriteCAFile(t.TempDir()); err != nil || !strings.HasSuffix(p, "graphfake-ca.pem") {
		t.Fatal(p, err)
	}
	if len(g.CACertPEM()) == 0 || g.CertPool() == nil {
		t.Fatal("CA")
	}
}
