package graphfake_test

import (
	"bytes"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestListPagingOrderAndTop(t *testing.T) {
	e := newEnv(t)
	ids := e.seed(shared, "Inbox/Import", 25)
	folder, _ := e.g.FolderID(shared, "Inbox/Import")
	var got []string
	next := "/users/" + shared + "/mailFolders/" + folder + "/messages?$select=id,receivedDateTime,internetMessageId,subject,from"
	pages := 0
	for next != "" {
		r := e.get(next)
		expectStatus(t, r, 200)
		v := r.json(t)
		for _, m := range values(t, v) {
			if _, ok := m["body"]; ok {
				t.Fatalf("$select not kept across pages: %v", m)
			}
			got = append(got, str(m["id"]))
		}
		next = str(v["@odata.nextLink"])
		if next != "" && (!strings.Contains(next, "%24skiptoken=") || strings.Contains(next, "$top")) {
			t.Fatalf("nextLink is not opaque: %s", next)
		}
		pages++
	}
	if pages != 3 || len(got) != 25 {
		t.Fatalf("%d messages in %d pages (default $top 10)", len(got), pages)
	}
	// Default order: newest first.
	if got[0] != ids[24] || got[24] != ids[0] {
		t.Fatal("default order is not receivedDateTime desc")
	}
	r := e.get("/users/" + shared + "/mailFolders/" + folder + "/messages?$top=5&$orderby=receivedDateTime%20asc&$select=id")
	vs := values(t, r.json(t))
	if len(vs) != 5 || vs[0]["id"] != ids[0] || vs[4]["id"] != ids[4] {
		t.Fatalf("asc order: %v", vs)
	}
	for _, top := range []string{"0", "1001", "x"} {
		r := e.get("/users/" + shared + "/mailFolders/" + folder + "/messages?$top=" + top)
		expectStatus(t, r, 400)
	}
	r = e.get("/users/" + shared + "/mailFolders/" + folder + "/messages?$top=1000&$select=id")
	if vs := values(t, r.json(t)); len(vs) != 25 {
		t.Fatalf("$top=1000: %d", len(vs))
	}
}

// Graph's nextLink is offset-based ($skip): moving messages out of the
// folder while paging through it makes the next page skip some.
func TestNextLinkIsOffsetBased(t *testing.T) {
	e := newEnv(t)
	e.seed(shared, "Inbox/Import", 20)
	folder, _ := e.g.FolderID(shared, "Inbox/Import")
	r := e.get("/users/" + shared + "/mailFolders/" + folder + "/messages?$top=10&$select=id")
	v := r.json(t)
	for _, m := range values(t, v) {
		expectStatus(t, e.post("/users/"+shared+"/messages/"+str(m["id"])+"/move", map[string]string{"destinationId": "archive"}), 201)
	}
	r = e.get(str(v["@odata.nextLink"]))
	v = r.json(t)
	if n := len(values(t, v)); n != 0 || v["@odata.nextLink"] != nil {
		t.Fatalf("second page after moving the first out: %d messages (want 0: offset 10 of 10 left)", n)
	}
	if e.g.Count(shared, "Inbox/Import") != 10 {
		t.Fatal("count")
	}
}

func TestSelectSizeAndExtendedProperty(t *testing.T) {
	e := newEnv(t)
	e.seed(shared, "Inbox", 1)
	r := e.get("/users/" + shared + "/mailFolders/inbox/messages?$select=id,size")
	m := expectError(t, r, 400, "RequestBroker--ParseUri")
	if !strings.Contains(m, "'size'") {
		t.Fatalf("message %q", m)
	}
	// The size is PidTagMessageSize, read as an extended property.
	exp := url.QueryEscape("singleValueExtendedProperties($filter=id eq 'Integer 0x0E08')")
	r = e.get("/users/" + shared + "/mailFolders/inbox/messages?$select=id&$expand=" + exp)
	expectStatus(t, r, 200)
	vs := values(t, r.json(t))
	props := vs[0]["singleValueExtendedProperties"].([]any)
	p := props[0].(map[string]any)
	body := e.g.Bodies(shared, "Inbox")[0]
	if p["id"] != "Integer 0xe08" || p["value"] != strconv.Itoa(len(body)) {
		t.Fatalf("size property %v, body %d bytes", p, len(body))
	}
}

func TestGetValueStreamsChunked(t *testing.T) {
	e := newEnv(t)
	big := bytes.Repeat([]byte("0123456789abcdef"), 5<<20/16) // 5 MiB
	raw := append([]byte("From: a@b.test\r\nTo: "+shared+"\r\nSubject: big\r\nMessage-ID: <big@b.test>\r\n\r\n"), big...)
	id := e.g.AddMessage(shared, "Inbox", raw, time.Now())
	r := e.get("/users/" + shared + "/messages/" + id + "/$value")
	expectStatus(t, r, 200)
	if !bytes.Equal(r.body, raw) {
		t.Fatalf("body differs: %d vs %d bytes", len(r.body), len(raw))
	}
	if r.resp.ContentLength != -1 || len(r.resp.TransferEncoding) == 0 || r.resp.TransferEncoding[0] != "chunked" {
		t.Fatalf("not chunked: length %d, %v", r.resp.ContentLength, r.resp.TransferEncoding)
	}
	if ct := r.header.Get("Content-Type"); ct != "text/plain" {
		t.Fatalf("Content-Type %q", ct)
	}
	// Also under the folder, and by immutable id.
	info, _ := e.g.MessageInfo(shared, id)
	r = e.get("/users/" + shared + "/mailFolders/inbox/messages/" + info.ImmutableID + "/$value")
	expectStatus(t, r, 200)
	if st := e.g.Stats(); st.ValueBytes != int64(2*len(raw)) || st.ByKind["messages.value"] != 2 {
		t.Fatalf("stats %+v", st)
	}
}

func TestFilterInternetMessageIDAndInefficientFilter(t *testing.T) {
	e := newEnv(t)
	e.seed(shared, "Inbox", 5)
	want := e.g.Messages(shared, "Inbox")[2]
	f := url.QueryEscape("internetMessageId eq '" + want.InternetMessageID + "'")
	r := e.get("/users/" + shared + "/mailFolders/inbox/messages?$filter=" + f)
	vs := values(t, r.json(t))
	if len(vs) != 1 || vs[0]["id"] != want.ID || vs[0]["internetMessageId"] != want.InternetMessageID {
		t.Fatalf("%v", vs)
	}
	f = url.QueryEscape("receivedDateTime ge " + want.ReceivedDateTime.Format(time.RFC3339))
	r = e.get("/users/" + shared + "/mailFolders/inbox/messages?$orderby=receivedDateTime%20desc&$filter=" + f)
	if vs := values(t, r.json(t)); len(vs) != 3 {
		t.Fatalf("ge: %d", len(vs))
	}
	f = url.QueryEscape("subject eq 'Invoice 001'")
	r = e.get("/users/" + shared + "/mailFolders/inbox/messages?$orderby=receivedDateTime&$filter=" + f)
	expectError(t, r, 400, "InefficientFilter")
}

func TestGetDeleteAndDefaults(t *testing.T) {
	e := newEnv(t)
	ids := e.seed(shared, "Inbox", 1)
	r := e.get("/users/" + shared + "/messages/" + ids[0])
	expectStatus(t, r, 200)
	m := r.json(t)
	if m["subject"] != "Invoice 000" || str(m["internetMessageId"]) == "" || m["from"] == nil || m["isRead"] != false {
		t.Fatalf("%v", m)
	}
	if _, ok := m["internetMessageHeaders"]; ok {
		t.Fatal("internetMessageHeaders returned without $select")
	}
	r = e.get("/users/" + shared + "/messages/" + ids[0] + "?$select=internetMessageHeaders")
	if hs, _ := r.json(t)["internetMessageHeaders"].([]any); len(hs) == 0 {
		t.Fatalf("headers: %s", r.body)
	}
	r = e.call("DELETE", "/users/"+shared+"/messages/"+ids[0], e.app, nil)
	expectStatus(t, r, 204)
	r = e.get("/users/" + shared + "/messages/" + ids[0])
	expectError(t, r, 404, "ErrorItemNotFound")
	if e.g.Count(shared, "Inbox") != 0 {
		t.Fatal("not deleted")
	}
}
