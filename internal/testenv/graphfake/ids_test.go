package graphfake_test

import (
	"strings"
	"testing"
)

const preferImmutable = `IdType="ImmutableId"`

func TestMoveChangesRESTIDs(t *testing.T) {
	e := newEnv(t)
	ids := e.seed(shared, "Inbox/Import", 1)
	processed := e.g.CreateFolderPath(shared, "Inbox/Processed")
	r := e.post("/users/"+shared+"/messages/"+ids[0]+"/move", map[string]string{"destinationId": processed})
	expectStatus(t, r, 201)
	m := r.json(t)
	newID := str(m["id"])
	if newID == "" || newID == ids[0] {
		t.Fatalf("id did not change on move: %s", newID)
	}
	if m["parentFolderId"] != processed {
		t.Fatalf("parentFolderId %v", m["parentFolderId"])
	}
	if r.header.Get("Preference-Applied") != "" {
		t.Fatal("Preference-Applied without Prefer")
	}
	// The old id is stale.
	r = e.get("/users/" + shared + "/messages/" + ids[0])
	expectStatus(t, r, 404)
	if string(r.body) == "" || !strings.Contains(string(r.body), `"code":"ErrorItemNotFound","message":"The specified object was not found in the store."`) {
		t.Fatalf("body %s", r.body)
	}
	r = e.post("/users/"+shared+"/messages/"+ids[0]+"/move", map[string]string{"destinationId": "inbox"})
	expectError(t, r, 404, "ErrorItemNotFound")
	expectStatus(t, e.get("/users/"+shared+"/messages/"+newID), 200)
	if e.g.Count(shared, "Inbox/Processed") != 1 || e.g.Count(shared, "Inbox/Import") != 0 {
		t.Fatal("counts")
	}
}

func TestImmutableIDsSurviveMoves(t *testing.T) {
	e := newEnv(t)
	e.seed(shared, "Inbox", 1)
	r := e.get("/users/"+shared+"/mailFolders/inbox/messages?$select=id", "Prefer", preferImmutable)
	expectStatus(t, r, 200)
	if r.header.Get("Preference-Applied") != preferImmutable {
		t.Fatalf("Preference-Applied %q", r.header.Get("Preference-Applied"))
	}
	id := str(values(t, r.json(t))[0]["id"])
	if !strings.HasPrefix(id, "AAkALg") {
		t.Fatalf("immutable id %s", id)
	}
	for _, dst := range []string{"archive", "deleteditems", "inbox"} {
		r = e.post("/users/"+shared+"/messages/"+id+"/move", map[string]string{"destinationId": dst}, "Prefer", preferImmutable)
		expectStatus(t, r, 201)
		if got := str(r.json(t)["id"]); got != id {
			t.Fatalf("moved to %s: id %s, want %s", dst, got, id)
		}
	}
	// Without the header the same message shows its REST id.
	r = e.get("/users/" + shared + "/messages/" + id + "?$select=id")
	if got := str(r.json(t)["id"]); got == id || !strings.HasPrefix(got, "AAMkA") {
		t.Fatalf("REST id %s", got)
	}
	// Immutable ids are case-sensitive.
	flipped := strings.ToLower(id[:10]) + id[10:]
	r = e.get("/users/"+shared+"/messages/"+flipped, "Prefer", preferImmutable)
	expectError(t, r, 404, "ErrorItemNotFound")
	// Prefer can carry several preferences.
	r = e.get("/users/"+shared+"/messages/"+id+"?$select=id", "Prefer", `outlook.body-content-type="text", `+preferImmutable)
	if got := str(r.json(t)["id"]); got != id {
		t.Fatalf("combined Prefer: %s", got)
	}
}
