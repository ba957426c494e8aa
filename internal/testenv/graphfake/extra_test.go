package graphfake_test

import (
	"encoding/base64"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mailpipe/mailpipe/internal/testenv/graphfake"
)

func TestPatchAndDeltaUpdates(t *testing.T) {
	e := newEnv(t)
	ids := e.seed(shared, "Inbox", 2)
	_, _, dl, _ := e.deltaRound(t, "/users/"+shared+"/mailFolders/inbox/messages/delta?$select=isRead", 10)
	r := e.call("PATCH", "/users/"+shared+"/messages/"+ids[0], e.app, map[string]any{"isRead": true})
	expectStatus(t, r, 200)
	if r.json(t)["isRead"] != true {
		t.Fatal("isRead")
	}
	e.g.MarkRead(shared, ids[1], true)
	present, removed, _, _ := e.deltaRound(t, dl, 10)
	if !equalSets(present, ids) || len(removed) != 0 {
		t.Fatalf("updates: %v %v", present, removed)
	}
	// Received mail cannot be rewritten.
	r = e.call("PATCH", "/users/"+shared+"/messages/"+ids[0], e.app, map[string]any{"subject": "x"})
	expectError(t, r, 400, "ErrorInvalidPropertyUpdateSentMessage")
	// The whole-mailbox listing sees every folder.
	e.seed(shared, "Archive", 3)
	r = e.get("/users/" + shared + "/messages?$top=50&$select=id")
	if n := len(values(t, r.json(t))); n != 5 {
		t.Fatalf("/messages: %d", n)
	}
}

func TestMIMEDraftWithAttachment(t *testing.T) {
	e := newEnv(t)
	raw := "From: " + shared + "\r\nTo: customer@example.test\r\nSubject: MIME draft\r\n" +
		"Content-Type: text/plain; charset=utf-8\r\n\r\nPlease pay.\r\n"
	r := e.post("/users/"+shared+"/messages", []byte(base64.StdEncoding.EncodeToString([]byte(raw))))
	expectStatus(t, r, 201)
	d := r.json(t)
	id := str(d["id"])
	if d["subject"] != "MIME draft" || d["isDraft"] != true || str(d["internetMessageId"]) == "" {
		t.Fatalf("%v", d)
	}
	r = e.post("/users/"+shared+"/messages/"+id+"/attachments", map[string]any{
		"@odata.type": "#microsoft.graph.fileAttachment", "name": "a.csv",
		"contentBytes": base64.StdEncoding.EncodeToString([]byte("a,b\n1,2\n")),
	})
	expectStatus(t, r, 201)
	expectStatus(t, e.post("/users/"+shared+"/messages/"+id+"/send", nil), 202)
	si := e.g.SentItems(shared)
	if len(si) != 1 || !strings.Contains(string(si[0].Raw), "multipart/mixed") || !strings.Contains(string(si[0].Raw), "Please pay.") {
		t.Fatalf("%+v", si)
	}
	// The old REST id of the draft is stale after the send moved it.
	expectError(t, e.get("/users/"+shared+"/messages/"+id), 404, "ErrorItemNotFound")
	expectStatus(t, e.get("/users/"+shared+"/messages/"+si[0].ID), 200)
}

func TestAppConcurrencyAndIncomingBytes(t *testing.T) {
	e := newEnv(t)
	e.g.SetLimits(graphfake.Limits{AppConcurrency: 2})
	e.g.SetLatency(200 * time.Millisecond)
	var wg sync.WaitGroup
	var mu sync.Mutex
	codes := map[int]int{}
	for _, mb := range []string{shared, other, svcUser} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := e.get("/users/" + mb + "/mailFolders/inbox")
			mu.Lock()
			codes[r.status]++
			mu.Unlock()
		}()
	}
	wg.Wait()
	if codes[200] != 2 || codes[429] != 1 {
		t.Fatalf("per-app cap of 2 over 3 mailboxes: %v", codes)
	}
	e.g.SetLatency(0)
	e.g.SetLimits(graphfake.Limits{UploadBytes: 2000, UploadWindow: time.Minute})
	big := sendBody(strings.Repeat("x", 1000))
	expectStatus(t, e.post("/users/"+shared+"/sendMail", big), 202)
	r := e.post("/users/"+shared+"/sendMail", big)
	if m := expectError(t, r, 429, "ApplicationThrottled"); !strings.Contains(m, "IncomingBytes") || r.header.Get("Retry-After") == "" {
		t.Fatalf("%q", m)
	}
}

func TestGatewayTimeouts(t *testing.T) {
	e := newEnv(t)
	e.seed(shared, "Inbox", 30)
	e.g.SetLimits(graphfake.Limits{PageTimeoutBytes: 20000, ValueTimeoutBytes: 100, ValueTimeoutAfter: 30 * time.Millisecond})
	expectStatus(t, e.get("/users/"+shared+"/mailFolders/inbox/messages?$top=30"), 504)
	expectStatus(t, e.get("/users/"+shared+"/mailFolders/inbox/messages?$top=30&$select=id"), 200)
	id := e.g.Messages(shared, "Inbox")[0].ID
	start := time.Now()
	expectStatus(t, e.get("/users/"+shared+"/messages/"+id+"/$value"), 504)
	if time.Since(start) < 30*time.Millisecond {
		t.Fatal("504 came too early")
	}
}

func TestSendMailInBatch(t *testing.T) {
	e := newEnv(t)
	// A non-JSON item body is the base64 of the request body, and the
	// request body of a MIME sendMail is itself base64.
	mimeMsg := base64.StdEncoding.EncodeToString([]byte(base64.StdEncoding.EncodeToString(
		[]byte("To: customer@example.test\r\nSubject: batched\r\n\r\nhi\r\n"))))
	_, res := e.batch(t, []map[string]any{
		{"id": "1", "method": "POST", "url": "/users/" + shared + "/sendMail",
			"headers": map[string]string{"Content-Type": "text/plain"}, "body": mimeMsg},
		{"id": "2", "method": "POST", "url": "/users/" + shared + "/sendMail", "body": map[string]any{}},
	})
	if res["1"].Status != 202 || res["2"].Status != 400 {
		t.Fatalf("%d %s / %d %s", res["1"].Status, res["1"].Body, res["2"].Status, res["2"].Body)
	}
	if si := e.g.SentItems(shared); len(si) != 1 || si[0].Subject != "batched" || si[0].From != shared {
		t.Fatalf("%+v", si)
	}
}
