package graphfake_test

import (
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"
)

// deltaRound follows nextLinks to the deltaLink; it returns the ids
// present, the removed ids and the deltaLink.
func (e *env) deltaRound(t *testing.T, link string, pageSize int, headers ...string) (present, removed []string, deltaLink string, pages int) {
	t.Helper()
	for {
		h := append([]string{"Prefer", "odata.maxpagesize=" + itoa(pageSize)}, headers...)
		r := e.get(link, h...)
		expectStatus(t, r, 200)
		if got := r.header.Get("Preference-Applied"); !strings.Contains(got, "odata.maxpagesize="+itoa(pageSize)) {
			t.Fatalf("Preference-Applied %q", got)
		}
		v := r.json(t)
		vs := values(t, v)
		if len(vs) > pageSize {
			t.Fatalf("page of %d > maxpagesize %d", len(vs), pageSize)
		}
		pages++
		for _, m := range vs {
			if m["@odata.type"] != "#microsoft.graph.message" {
				t.Fatalf("entry without @odata.type: %v", m)
			}
			if rm, ok := m["@removed"].(map[string]any); ok {
				if rm["reason"] != "deleted" {
					t.Fatalf("@removed %v", rm)
				}
				removed = append(removed, str(m["id"]))
				continue
			}
			present = append(present, str(m["id"]))
		}
		if dl := str(v["@odata.deltaLink"]); dl != "" {
			if v["@odata.nextLink"] != nil {
				t.Fatal("both links")
			}
			return present, removed, dl, pages
		}
		link = str(v["@odata.nextLink"])
		if link == "" {
			t.Fatalf("neither nextLink nor deltaLink: %s", r.body)
		}
	}
}

func itoa(n int) string { return strconv.Itoa(n) }

func sorted(s []string) []string { s = append([]string(nil), s...); sort.Strings(s); return s }

func equalSets(a, b []string) bool {
	return strings.Join(sorted(a), ",") == strings.Join(sorted(b), ",")
}

func TestDeltaAddsRemovesAndExpiry(t *testing.T) {
	e := newEnv(t)
	ids := e.seed(shared, "Inbox/Import", 5)
	folder, _ := e.g.FolderID(shared, "Inbox/Import")
	start := "/users/" + shared + "/mailFolders/" + folder + "/messages/delta?$select=id,subject,receivedDateTime"
	present, removed, dl, pages := e.deltaRound(t, start, 2)
	if !equalSets(present, ids) || len(removed) != 0 || pages != 3 {
		t.Fatalf("initial round: %d present, %d removed, %d pages", len(present), len(removed), pages)
	}
	if !strings.Contains(dl, "mailFolders('"+folder+"')/messages/delta?%24deltatoken=") {
		t.Fatalf("deltaLink %s", dl)
	}
	// Nothing changed: an empty page with a deltaLink.
	present, removed, dl, _ = e.deltaRound(t, dl, 2)
	if len(present)+len(removed) != 0 {
		t.Fatalf("no changes expected: %v %v", present, removed)
	}
	// New mail, one moved out by the importer, one deleted by a user, one moved in.
	added := e.g.AddMessage(shared, "Inbox/Import", mime("new"), time.Now())
	r := e.post("/users/"+shared+"/messages/"+ids[0]+"/move", map[string]string{"destinationId": "archive"})
	expectStatus(t, r, 201)
	e.g.DeleteMessage(shared, ids[1])
	other := e.g.AddMessage(shared, "Inbox", mime("elsewhere"), time.Now())
	movedIn, _ := e.g.MoveMessage(shared, other, "Inbox/Import")
	present, removed, dl2, _ := e.deltaRound(t, dl, 2)
	if !equalSets(present, []string{added, movedIn}) || !equalSets(removed, []string{ids[0], ids[1]}) {
		t.Fatalf("changes: present %v removed %v", present, removed)
	}
	// A deltaLink can be replayed; a nextLink replayed gives the same page.
	present, removed, _, _ = e.deltaRound(t, dl, 10)
	if len(present) != 2 || len(removed) != 2 {
		t.Fatalf("replayed deltaLink: %v %v", present, removed)
	}
	r = e.get(start, "Prefer", "odata.maxpagesize=2")
	next := str(r.json(t)["@odata.nextLink"])
	a := e.get(next, "Prefer", "odata.maxpagesize=2").json(t)
	b := e.get(next, "Prefer", "odata.maxpagesize=2").json(t)
	if str(values(t, a)[0]["id"]) != str(values(t, b)[0]["id"]) {
		t.Fatal("replayed nextLink gave another page")
	}
	// Expired state: 410 SyncStateNotFound, for delta and skip tokens alike.
	e.g.ExpireDeltaTokens()
	r = e.get(dl2)
	expectError(t, r, 410, "SyncStateNotFound")
	r = e.get(next)
	expectError(t, r, 410, "SyncStateNotFound")
	// A full resync works.
	present, _, _, _ = e.deltaRound(t, start, 50)
	if len(present) != e.g.Count(shared, "Inbox/Import") {
		t.Fatalf("resync: %d", len(present))
	}
}

func TestDeltaWithImmutableIDs(t *testing.T) {
	e := newEnv(t)
	e.seed(shared, "Inbox", 3)
	start := "/users/" + shared + "/mailFolders/inbox/messages/delta"
	imm := []string{"Prefer", preferImmutable}
	present, _, dl, _ := e.deltaRound(t, start, 10, imm...)
	for _, id := range present {
		if !strings.HasPrefix(id, "AAkALg") {
			t.Fatalf("not an immutable id: %s", id)
		}
	}
	r := e.post("/users/"+shared+"/messages/"+present[0]+"/move", map[string]string{"destinationId": "archive"}, imm...)
	expectStatus(t, r, 201)
	_, removed, _, _ := e.deltaRound(t, dl, 10, imm...)
	if len(removed) != 1 || removed[0] != present[0] {
		t.Fatalf("removed %v, want the immutable id %s", removed, present[0])
	}
	// changeType=created reports only new messages.
	_, _, dl, _ = e.deltaRound(t, start+"?changeType=created", 10)
	e.g.DeleteMessage(shared, present[1])
	n := e.g.AddMessage(shared, "Inbox", mime("created"), time.Now())
	p, rm, _, _ := e.deltaRound(t, dl, 10)
	if len(p) != 1 || p[0] != n || len(rm) != 0 {
		t.Fatalf("changeType=created: %v %v", p, rm)
	}
}
