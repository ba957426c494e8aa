package graphfake_test

import (
	"net/url"
	"strings"
	"testing"

	"github.com/mailpipe/mailpipe/internal/testenv/graphfake"
)

func TestLocalizedWellKnownFolders(t *testing.T) {
	e := newEnv(t)
	nl := "postbus@contoso.test"
	e.g.AddMailbox(nl, graphfake.MailboxOptions{FolderNames: graphfake.DutchFolderNames})
	id := e.g.CreateFolderPath(nl, "Postvak IN/Algemeen/Import")
	if again := e.g.CreateFolderPath(nl, "Postvak IN/Algemeen/Import"); again != id {
		t.Fatalf("CreateFolderPath is not idempotent: %s vs %s", again, id)
	}
	// The well-known name works whatever the language; the display name is localized.
	r := e.get("/users/" + nl + "/mailFolders/Inbox")
	expectStatus(t, r, 200)
	inbox := r.json(t)
	if inbox["displayName"] != "Postvak IN" {
		t.Fatalf("inbox displayName %v", inbox["displayName"])
	}
	// Walk the path one level at a time, as the docs prescribe.
	parent := str(inbox["id"])
	for _, name := range []string{"Algemeen", "Import"} {
		r := e.get("/users/" + nl + "/mailFolders/" + parent + "/childFolders?$filter=" + url.QueryEscape("displayName eq '"+name+"'"))
		expectStatus(t, r, 200)
		vs := values(t, r.json(t))
		if len(vs) != 1 {
			t.Fatalf("%s: %d matches", name, len(vs))
		}
		parent = str(vs[0]["id"])
	}
	if parent != id {
		t.Fatalf("walked to %s, created %s", parent, id)
	}
	// An English name does not match a Dutch folder.
	r = e.get("/users/" + nl + "/mailFolders/msgfolderroot/childFolders?$filter=" + url.QueryEscape("displayName eq 'Inbox'"))
	if vs := values(t, r.json(t)); len(vs) != 0 {
		t.Fatalf("Inbox matched in a Dutch mailbox: %v", vs)
	}
	// German preset too.
	de := "postfach@contoso.test"
	e.g.AddMailbox(de, graphfake.MailboxOptions{FolderNames: graphfake.GermanFolderNames})
	if r := e.get("/users/" + de + "/mailFolders/sentitems").json(t); r["displayName"] != "Gesendete Elemente" {
		t.Fatalf("sentitems: %v", r["displayName"])
	}
}

func TestChildFolderFilterQuotesAndCase(t *testing.T) {
	e := newEnv(t)
	id := e.g.CreateFolderPath(shared, "Inbox/Bob's Invoices")
	e.g.CreateFolderPath(shared, "Inbox/Bob")
	lit := "displayName eq 'BOB''S invoices'" // doubled quote, other case
	r := e.get("/users/" + shared + "/mailFolders/inbox/childFolders?$filter=" + url.QueryEscape(lit))
	expectStatus(t, r, 200)
	vs := values(t, r.json(t))
	if len(vs) != 1 || vs[0]["id"] != id || vs[0]["displayName"] != "Bob's Invoices" {
		t.Fatalf("got %v", vs)
	}
	// An undoubled quote is a syntax error.
	r = e.get("/users/" + shared + "/mailFolders/inbox/childFolders?$filter=" + url.QueryEscape("displayName eq 'Bob's Invoices'"))
	expectError(t, r, 400, "ErrorInvalidUrlQueryFilter")
	// Only displayName can be filtered here.
	r = e.get("/users/" + shared + "/mailFolders/inbox/childFolders?$filter=" + url.QueryEscape("totalItemCount eq 3"))
	expectError(t, r, 400, "ErrorInvalidUrlQueryFilter")
}

func TestChildFolderPagingSelectHidden(t *testing.T) {
	e := newEnv(t)
	for i := 0; i < 25; i++ {
		e.g.CreateFolderPath(shared, "Inbox/F"+string(rune('A'+i)))
	}
	e.g.CreateFolderPath(shared, "Inbox/Secret")
	e.g.SetFolderHidden(shared, "Inbox/Secret", true)
	seen := map[string]bool{}
	next := "/users/" + shared + "/mailFolders/inbox/childFolders?$select=displayName"
	pages := 0
	for next != "" {
		r := e.get(next)
		expectStatus(t, r, 200)
		v := r.json(t)
		for _, f := range values(t, v) {
			if _, ok := f["totalItemCount"]; ok {
				t.Fatalf("$select not applied: %v", f)
			}
			if f["id"] == nil {
				t.Fatalf("id missing: %v", f)
			}
			seen[str(f["displayName"])] = true
		}
		next = str(v["@odata.nextLink"])
		if next != "" && !strings.Contains(next, "skiptoken") {
			t.Fatalf("nextLink %s", next)
		}
		pages++
	}
	if len(seen) != 25 || seen["Secret"] || pages != 3 {
		t.Fatalf("%d folders in %d pages (default page size 10), hidden seen=%v", len(seen), pages, seen["Secret"])
	}
	r := e.get("/users/" + shared + "/mailFolders/inbox/childFolders?includeHiddenFolders=true&$top=100")
	vs := values(t, r.json(t))
	if len(vs) != 26 {
		t.Fatalf("with hidden: %d", len(vs))
	}
	r = e.get("/users/" + shared + "/mailFolders/inbox/childFolders?$select=sizeInBytesX")
	expectError(t, r, 400, "RequestBroker--ParseUri")
}

func TestCreateFolderAndNestedAddressing(t *testing.T) {
	e := newEnv(t)
	r := e.post("/users/"+shared+"/mailFolders/inbox/childFolders", map[string]any{"displayName": "Processed"})
	expectStatus(t, r, 201)
	f := r.json(t)
	if f["displayName"] != "Processed" || f["parentFolderId"] == nil {
		t.Fatalf("%v", f)
	}
	r = e.post("/users/"+shared+"/mailFolders/inbox/childFolders", map[string]any{"displayName": "processed"})
	expectError(t, r, 409, "ErrorFolderExists")
	// mailFolders/{a}/childFolders/{b} addresses b; OData key syntax works.
	r = e.get("/users/" + shared + "/mailFolders('inbox')/childFolders/" + str(f["id"]))
	expectStatus(t, r, 200)
	if r.json(t)["displayName"] != "Processed" {
		t.Fatal("nested addressing")
	}
	if got, ok := e.g.FolderID(shared, "Inbox/Processed"); !ok || got != f["id"] {
		t.Fatalf("FolderID %v %v", got, ok)
	}
	// Top-level folders list the well-known ones.
	r = e.get("/users/" + shared + "/mailFolders?$top=50")
	names := map[string]bool{}
	for _, v := range values(t, r.json(t)) {
		names[str(v["displayName"])] = true
	}
	for _, n := range []string{"Inbox", "Sent Items", "Deleted Items", "Archive", "Drafts", "Junk Email"} {
		if !names[n] {
			t.Fatalf("%s missing from %v", n, names)
		}
	}
	// A well-formed unknown id is 404, garbage is malformed.
	r = e.get("/users/" + shared + "/mailFolders/AAMkAGI2TG93AAAAAAAAAAAAAAAAAAAAAAA=")
	expectError(t, r, 404, "ErrorItemNotFound")
	r = e.get("/users/" + shared + "/mailFolders/nope")
	expectError(t, r, 400, "ErrorInvalidIdMalformed")
}
