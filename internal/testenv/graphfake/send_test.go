package graphfake_test

import (
	"bytes"
	"encoding/base64"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"testing"

	"github.com/mailpipe/mailpipe/internal/testenv/graphfake"
)

func sendBody(subject string) map[string]any {
	return map[string]any{"message": map[string]any{
		"subject":      subject,
		"body":         map[string]string{"contentType": "Text", "content": "Hello"},
		"toRecipients": []any{map[string]any{"emailAddress": map[string]string{"address": "customer@example.test"}}},
	}}
}

func TestSendMailIsNotIdempotent(t *testing.T) {
	e := newEnv(t)
	u := "/users/" + shared + "/sendMail"
	r := e.post(u, sendBody("Statement"))
	expectStatus(t, r, 202)
	if len(r.body) != 0 {
		t.Fatalf("body %s", r.body)
	}
	expectStatus(t, e.post(u, sendBody("Statement")), 202)
	sub := e.g.Submitted()
	if len(sub) != 2 || sub[0].InternetMessageID == sub[1].InternetMessageID {
		t.Fatalf("%d submissions", len(sub))
	}
	si := e.g.SentItems(shared)
	if len(si) != 2 || si[0].From != shared || si[0].Subject != "Statement" || si[0].To[0] != "customer@example.test" {
		t.Fatalf("sent items %+v", si)
	}
	// saveToSentItems false (the docs' example sends it as a string).
	b := sendBody("Unsaved")
	b["saveToSentItems"] = "false"
	expectStatus(t, e.post(u, b), 202)
	if len(e.g.SentItems(shared)) != 2 || len(e.g.Submitted()) != 3 {
		t.Fatal("saveToSentItems false")
	}
	// Delivery to a mailbox of the fake.
	b = sendBody("Internal")
	b["message"].(map[string]any)["toRecipients"] = []any{map[string]any{"emailAddress": map[string]string{"address": other}}}
	expectStatus(t, e.post(u, b), 202)
	if e.g.Count(other, "Inbox") != 1 {
		t.Fatal("not delivered")
	}
	// MIME, base64 as text/plain.
	mimeMsg := "From: " + shared + "\r\nTo: customer@example.test\r\nSubject: MIME\r\n\r\nbody\r\n"
	r = e.post(u, []byte(base64.StdEncoding.EncodeToString([]byte(mimeMsg))))
	expectStatus(t, r, 202)
	r = e.post(u, []byte("not base64 !"))
	expectError(t, r, 400, "ErrorMimeContentInvalidBase64String")
}

func TestCustomHeadersMustStartWithX(t *testing.T) {
	e := newEnv(t)
	b := sendBody("Headers")
	b["message"].(map[string]any)["internetMessageHeaders"] = []any{
		map[string]string{"name": "X-Mailpipe-Id", "value": "1"},
		map[string]string{"name": "In-Reply-To", "value": "<a@b>"},
	}
	r := e.post("/users/"+shared+"/sendMail", b)
	m := expectError(t, r, 400, "InvalidInternetMessageHeader")
	if !strings.Contains(m, "'In-Reply-To'") {
		t.Fatalf("%q", m)
	}
	if len(e.g.Submitted()) != 0 {
		t.Fatal("the whole send must fail")
	}
	b["message"].(map[string]any)["internetMessageHeaders"] = []any{map[string]string{"name": "x-mailpipe-id", "value": "1"}}
	expectStatus(t, e.post("/users/"+shared+"/sendMail", b), 202)
	found := false
	for _, h := range e.g.SentItems(shared)[0].Headers {
		found = found || (h.Name == "x-mailpipe-id" && h.Value == "1")
	}
	if !found {
		t.Fatal("custom header not in the sent message")
	}
}

// The idempotent path: draft with own internetMessageId and an immutable
// id, a large attachment through an upload session, send, find it in Sent
// Items.
func TestDraftUploadSendFlow(t *testing.T) {
	e := newEnv(t)
	imm := []string{"Prefer", preferImmutable}
	mid := "<outbox-42@mailpipe.test>"
	marker := "String {66f5a359-4659-4830-9070-00047ec6ac6e} Name MailpipeOutboxId"
	r := e.post("/users/"+shared+"/messages", map[string]any{
		"subject":                "Invoice 42",
		"body":                   map[string]string{"contentType": "HTML", "content": "<p>See attached</p>"},
		"toRecipients":           []any{map[string]any{"emailAddress": map[string]string{"address": "customer@example.test"}}},
		"internetMessageId":      mid,
		"internetMessageHeaders": []any{map[string]string{"name": "X-Mailpipe-Outbox", "value": "42"}},
		"singleValueExtendedProperties": []any{map[string]string{
			"id": marker, "value": "42"}},
	}, imm...)
	expectStatus(t, r, 201)
	d := r.json(t)
	id := str(d["id"])
	if d["isDraft"] != true || d["internetMessageId"] != mid || !strings.HasPrefix(id, "AAkALg") {
		t.Fatalf("draft %v", d)
	}
	if e.g.Count(shared, "Drafts") != 1 {
		t.Fatal("draft not in Drafts")
	}
	// A small attachment inline.
	r = e.post("/users/"+shared+"/messages/"+id+"/attachments", map[string]any{
		"@odata.type": "#microsoft.graph.fileAttachment", "name": "note.txt", "contentType": "text/plain",
		"contentBytes": base64.StdEncoding.EncodeToString([]byte("small")),
	}, imm...)
	expectStatus(t, r, 201)
	// Files of 3 MB and more must go through an upload session (the limit
	// lowered here to keep the request under the 4 MB body limit).
	e.g.SetLimits(graphfake.Limits{MaxInlineAttachment: 1 << 20})
	r = e.post("/users/"+shared+"/messages/"+id+"/attachments", map[string]any{
		"@odata.type": "#microsoft.graph.fileAttachment", "name": "big.pdf",
		"contentBytes": base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{0xAB}, 1<<20)),
	}, imm...)
	expectStatus(t, r, 413)
	e.g.SetLimits(graphfake.Limits{})
	pdf := bytes.Repeat([]byte("%PDF-1.7 fake "), 700_000) // ~9.8 MB
	r = e.post("/users/"+shared+"/messages/"+id+"/attachments/createUploadSession", map[string]any{
		"AttachmentItem": map[string]any{"attachmentType": "file", "name": "invoice.pdf", "size": len(pdf), "contentType": "application/pdf"},
	}, imm...)
	expectStatus(t, r, 201)
	sess := r.json(t)
	up := str(sess["uploadUrl"])
	if up == "" || sess["nextExpectedRanges"].([]any)[0] != "0-" {
		t.Fatalf("session %v", sess)
	}
	put := func(from, to int, auth bool) resp {
		req, _ := http.NewRequest("PUT", up, bytes.NewReader(pdf[from:to]))
		req.Header.Set("Content-Type", "application/octet-stream")
		req.Header.Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", from, to-1, len(pdf)))
		if auth {
			req.Header.Set("Authorization", "Bearer "+e.app)
		}
		res, err := e.client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := readAll(res)
		return resp{status: res.StatusCode, header: res.Header, body: b, resp: res}
	}
	const chunk = 320 * 1024 * 10                    // 3.125 MiB, a multiple of 320 KiB
	expectStatus(t, put(0, chunk, true), 401)        // pre-authenticated URL: no Authorization
	expectStatus(t, put(chunk, 2*chunk, false), 416) // out of order
	expectStatus(t, put(0, 4<<20+1, false), 413)     // chunk too large
	r = put(0, chunk, false)
	expectStatus(t, r, 200)
	if r.json(t)["nextExpectedRanges"].([]any)[0] != strconv.Itoa(chunk) {
		t.Fatalf("%s", r.body)
	}
	for off := chunk; off < len(pdf); off += chunk {
		r = put(off, min(off+chunk, len(pdf)), false)
	}
	expectStatus(t, r, 201)
	if !strings.Contains(r.header.Get("Location"), "/Attachments('") {
		t.Fatalf("Location %q", r.header.Get("Location"))
	}
	r = e.call("GET", "/users/"+shared+"/messages/"+id+"/attachments", e.app, nil)
	if n := len(values(t, r.json(t))); n != 2 {
		t.Fatalf("%d attachments", n)
	}
	// Send: 202, the message moves to Sent Items with the same immutable id.
	r = e.post("/users/"+shared+"/messages/"+id+"/send", nil, imm...)
	expectStatus(t, r, 202)
	r = e.get("/users/"+shared+"/messages/"+id, imm...)
	expectStatus(t, r, 200)
	sent := r.json(t)
	sentItems, _ := e.g.FolderID(shared, "Sent Items")
	if sent["isDraft"] != false || sent["parentFolderId"] != sentItems || sent["internetMessageId"] != mid || sent["hasAttachments"] != true {
		t.Fatalf("sent %v", sent)
	}
	// On retry the sender looks in Sent Items first.
	f := url.QueryEscape("internetMessageId eq '" + mid + "'")
	r = e.get("/users/" + shared + "/mailFolders/sentitems/messages?$select=id,internetMessageId&$filter=" + f)
	if vs := values(t, r.json(t)); len(vs) != 1 {
		t.Fatalf("filter by internetMessageId: %v", vs)
	}
	f = url.QueryEscape("singleValueExtendedProperties/any(ep: ep/id eq '" + marker + "' and ep/value eq '42')")
	r = e.get("/users/" + shared + "/mailFolders/sentitems/messages?$select=id&$filter=" + f)
	if vs := values(t, r.json(t)); len(vs) != 1 {
		t.Fatalf("filter by extended property: %s", r.body)
	}
	si := e.g.SentItems(shared)
	if len(si) != 1 || si[0].InternetMessageID != mid || si[0].ImmutableID != id || len(si[0].Attachments) != 2 ||
		!bytes.Equal(si[0].Attachments[1].Data, pdf) || si[0].ExtendedProperties[marker] != "42" {
		t.Fatalf("sent items %+v", si)
	}
	// Sending again is refused: it is no draft any more.
	expectStatus(t, e.post("/users/"+shared+"/messages/"+id+"/send", nil, imm...), 400)
	// Request bodies over 4 MB are refused.
	r = e.post("/users/"+shared+"/messages", bytes.Repeat([]byte("A"), 4<<20+10))
	expectStatus(t, r, 413)
}

func TestSendAsDelegated(t *testing.T) {
	e := newEnv(t)
	tok := e.userToken(svcUser, "Mail.ReadWrite.Shared", "Mail.Send.Shared")
	b := sendBody("From the shared mailbox")
	b["message"].(map[string]any)["from"] = map[string]any{"emailAddress": map[string]string{"address": shared}}
	r := e.call("POST", "/me/sendMail", tok, b)
	m := expectError(t, r, 403, "ErrorSendAsDenied")
	if m == "" {
		t.Fatal("message")
	}
	e.g.GrantSendAs(svcUser, shared)
	expectStatus(t, e.call("POST", "/me/sendMail", tok, b), 202)
	if si := e.g.SentItems(svcUser); len(si) != 1 || si[0].From != shared {
		t.Fatalf("%+v", si)
	}
	// Saving into the shared mailbox's Sent Items needs Full Access.
	expectError(t, e.call("POST", "/users/"+shared+"/sendMail", tok, sendBody("x")), 403, "ErrorAccessDenied")
	e.g.GrantFullAccess(svcUser, shared)
	expectStatus(t, e.call("POST", "/users/"+shared+"/sendMail", tok, sendBody("x")), 202)
	if si := e.g.SentItems(shared); len(si) != 1 || si[0].From != shared {
		t.Fatalf("%+v", si)
	}
	// Send on Behalf: from the shared mailbox, sender the user.
	third := "team@contoso.test"
	e.g.AddMailbox(third, graphfake.MailboxOptions{})
	e.g.GrantSendOnBehalf(svcUser, third)
	b["message"].(map[string]any)["from"] = map[string]any{"emailAddress": map[string]string{"address": third}}
	expectStatus(t, e.call("POST", "/me/sendMail", tok, b), 202)
	last := e.g.Submitted()[len(e.g.Submitted())-1]
	if last.From != third || last.Sender != svcUser {
		t.Fatalf("on behalf: %+v", last)
	}
	// Without Mail.Send.Shared, no sending as others at all.
	plain := e.userToken(svcUser, "Mail.Send")
	expectError(t, e.call("POST", "/me/sendMail", plain, b), 403, "ErrorAccessDenied")
}

func TestSendRateLimit(t *testing.T) {
	e := newEnv(t)
	for i := 0; i < 30; i++ {
		expectStatus(t, e.post("/users/"+shared+"/sendMail", sendBody("n")), 202)
	}
	r := e.post("/users/"+shared+"/sendMail", sendBody("n"))
	expectStatus(t, r, 429)
	ra, err := strconv.ParseFloat(r.header.Get("Retry-After"), 64)
	if err != nil || ra <= 0 || ra > 60 {
		t.Fatalf("Retry-After %q", r.header.Get("Retry-After"))
	}
	// Another mailbox has its own limit.
	expectStatus(t, e.post("/users/"+other+"/sendMail", sendBody("n")), 202)
	if len(e.g.Submitted()) != 31 {
		t.Fatal("count")
	}
}
