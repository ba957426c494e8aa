package graphfake_test

import (
	"bytes"
	"fmt"
	"net/http"
	"testing"

	"github.com/mailpipe/mailpipe/internal/testenv/graphfake"
)

// Applied faults: the request takes effect, the answer is lost.
func TestAppliedFaults(t *testing.T) {
	e := newEnv(t)
	u := "/users/" + shared + "/sendMail"
	if err := e.g.InjectFault(graphfake.Fault{Method: "POST", Path: `/sendMail$`, Status: 504, Applied: true}); err != nil {
		t.Fatal(err)
	}
	expectStatus(t, e.post(u, sendBody("a")), 504)
	if n := len(e.g.Submitted()); n != 1 {
		t.Fatalf("%d submitted after an applied 504", n)
	}
	if err := e.g.InjectFault(graphfake.Fault{Method: "POST", Path: `/sendMail$`, Applied: true, Drop: true}); err != nil {
		t.Fatal(err)
	}
	req, _ := http.NewRequest("POST", e.g.BaseURL()+u, bytes.NewReader([]byte(`{"message":{"subject":"b","toRecipients":[{"emailAddress":{"address":"c@example.test"}}]}}`)))
	req.Header.Set("Authorization", "Bearer "+e.app)
	req.Header.Set("Content-Type", "application/json")
	if res, err := e.client.Do(req); err == nil {
		res.Body.Close()
		t.Fatalf("status %d, want a dropped connection", res.StatusCode)
	}
	if n := len(e.g.Submitted()); n != 2 {
		t.Fatalf("%d submitted after an applied drop", n)
	}
	// Drop without Applied: no effect.
	if err := e.g.InjectFault(graphfake.Fault{Method: "POST", Path: `/sendMail$`, Drop: true}); err != nil {
		t.Fatal(err)
	}
	if res, err := e.client.Do(req.Clone(req.Context())); err == nil {
		res.Body.Close()
	}
	if n := len(e.g.Submitted()); n != 2 {
		t.Fatalf("%d submitted after a drop", n)
	}
}

// GET on an upload URL tells where the session stands, also after a PUT
// whose answer was lost.
func TestUploadSessionState(t *testing.T) {
	e := newEnv(t)
	r := e.post("/users/"+shared+"/messages", map[string]any{"subject": "s"})
	expectStatus(t, r, 201)
	id := str(r.json(t)["id"])
	data := bytes.Repeat([]byte("x"), 700_000)
	r = e.post("/users/"+shared+"/messages/"+id+"/attachments/createUploadSession", map[string]any{
		"AttachmentItem": map[string]any{"attachmentType": "file", "name": "x.bin", "size": len(data)}})
	expectStatus(t, r, 201)
	up := str(r.json(t)["uploadUrl"])
	state := func() string {
		r := e.call("GET", up, "", nil)
		expectStatus(t, r, 200)
		return str(r.json(t)["nextExpectedRanges"].([]any)[0])
	}
	if s := state(); s != "0" {
		t.Fatalf("next %s", s)
	}
	if err := e.g.InjectFault(graphfake.Fault{Method: "PUT", Path: `AttachmentSessions`, Status: 503, Applied: true}); err != nil {
		t.Fatal(err)
	}
	req, _ := http.NewRequest("PUT", up, bytes.NewReader(data[:327680]))
	req.Header.Set("Content-Range", fmt.Sprintf("bytes 0-327679/%d", len(data)))
	res, err := e.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != 503 {
		t.Fatalf("status %d", res.StatusCode)
	}
	if s := state(); s != "327680" {
		t.Fatalf("next %s after an applied 503", s)
	}
}
