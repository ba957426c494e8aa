package graphfake_test

import (
	"encoding/base64"
	"encoding/json"
	"strconv"
	"testing"
	"time"

	"github.com/mailpipe/mailpipe/internal/testenv/graphfake"
)

type batchRes struct {
	ID      string            `json:"id"`
	Status  int               `json:"status"`
	Headers map[string]string `json:"headers"`
	Body    json.RawMessage   `json:"body"`
}

func (e *env) batch(t *testing.T, reqs []map[string]any) (resp, map[string]batchRes) {
	t.Helper()
	r := e.post("/$batch", map[string]any{"requests": reqs})
	if r.status != 200 {
		return r, nil
	}
	var out struct {
		Responses []batchRes `json:"responses"`
	}
	if err := json.Unmarshal(r.body, &out); err != nil {
		t.Fatal(err)
	}
	m := map[string]batchRes{}
	for _, x := range out.Responses {
		m[x.ID] = x
	}
	if len(m) != len(reqs) {
		t.Fatalf("%d responses for %d requests", len(m), len(reqs))
	}
	return r, m
}

func moveItem(id, msg, dst string) map[string]any {
	return map[string]any{
		"id": id, "method": "POST", "url": "/users/" + shared + "/messages/" + msg + "/move",
		"headers": map[string]string{"Content-Type": "application/json", "Prefer": preferImmutable},
		"body":    map[string]string{"destinationId": dst},
	}
}

func TestBatchMovesAndLimits(t *testing.T) {
	e := newEnv(t)
	e.g.SetLatency(10 * time.Millisecond)
	ids := e.seed(shared, "Inbox/Import", 21)
	var reqs []map[string]any
	for i, id := range ids {
		reqs = append(reqs, moveItem(strconv.Itoa(i), id, "archive"))
	}
	// More than 20: the whole batch is refused.
	r, _ := e.batch(t, reqs)
	expectError(t, r, 400, "BadRequest")
	if e.g.Count(shared, "Inbox/Import") != 21 {
		t.Fatal("a refused batch moved messages")
	}
	e.g.ResetStats()
	_, res := e.batch(t, reqs[:20])
	for i := 0; i < 20; i++ {
		x := res[strconv.Itoa(i)]
		if x.Status != 201 {
			t.Fatalf("item %d: %d %s", i, x.Status, x.Body)
		}
		var m map[string]any
		_ = json.Unmarshal(x.Body, &m)
		if m["id"] == nil || x.Headers["Preference-Applied"] != preferImmutable {
			t.Fatalf("item %d: %v %v", i, m, x.Headers)
		}
	}
	st := e.g.Stats()
	if st.BatchItems != 20 || st.Requests != 20 || st.HTTPRequests != 1 || st.ByKind["messages.move"] != 20 {
		t.Fatalf("stats %+v", st)
	}
	if st.MaxInFlight > 4 {
		t.Fatalf("%d items in flight, Outlook runs at most 4", st.MaxInFlight)
	}
	if e.g.Count(shared, "Archive") != 20 {
		t.Fatalf("archive %d", e.g.Count(shared, "Archive"))
	}
	// Duplicate ids refuse the batch.
	r, _ = e.batch(t, []map[string]any{moveItem("a", ids[20], "archive"), moveItem("A", ids[20], "archive")})
	expectStatus(t, r, 400)
}

func TestBatchItemsThrottledIndividually(t *testing.T) {
	e := newEnv(t)
	ids := e.seed(shared, "Inbox", 6)
	e.g.SetLimits(graphfake.Limits{RequestBudget: 4, BudgetWindow: 5 * time.Second})
	var reqs []map[string]any
	for i, id := range ids {
		reqs = append(reqs, map[string]any{"id": strconv.Itoa(i), "method": "GET", "url": "/users/" + shared + "/messages/" + id + "?$select=id",
			"dependsOn": prev(i)})
	}
	_, res := e.batch(t, reqs)
	ok, throttled := 0, 0
	for _, x := range res {
		switch x.Status {
		case 200:
			ok++
		case 429:
			throttled++
			ra, err := strconv.ParseFloat(x.Headers["Retry-After"], 64)
			if err != nil || ra <= 0 || ra > 5 {
				t.Fatalf("item Retry-After %q", x.Headers["Retry-After"])
			}
		case 424:
		default:
			t.Fatalf("item %s: %d %s", x.ID, x.Status, x.Body)
		}
	}
	// Sequential (dependsOn): 4 succeed, the 5th gets 429, the 6th 424.
	if ok != 4 || throttled != 1 || res["5"].Status != 424 {
		t.Fatalf("ok %d throttled %d, last %d", ok, throttled, res["5"].Status)
	}
	if st := e.g.Stats(); st.Throttled != 1 {
		t.Fatalf("throttled %d", st.Throttled)
	}
}

func prev(i int) []string {
	if i == 0 {
		return nil
	}
	return []string{strconv.Itoa(i - 1)}
}

func TestBatchDependsOnAndBodies(t *testing.T) {
	e := newEnv(t)
	ids := e.seed(shared, "Inbox", 1)
	raw := e.g.Bodies(shared, "Inbox")[0]
	_, res := e.batch(t, []map[string]any{
		{"id": "1", "method": "GET", "url": "/users/" + shared + "/messages/AAMkAGI2TG93AAAAAAAAAAAAAAAAAAAAAAA="},
		{"id": "2", "method": "GET", "url": "/users/" + shared + "/mailFolders/inbox", "dependsOn": []string{"1"}},
		{"id": "3", "method": "GET", "url": "users/" + shared + "/messages/" + ids[0] + "/$value"},
		{"id": "4", "method": "GET", "url": e.g.BaseURL() + "/users/nobody@contoso.test/messages"},
	})
	if res["1"].Status != 404 || res["2"].Status != 424 {
		t.Fatalf("dependsOn: %d %d", res["1"].Status, res["2"].Status)
	}
	var b64 string
	if err := json.Unmarshal(res["3"].Body, &b64); err != nil {
		t.Fatalf("$value body %s", res["3"].Body)
	}
	got, _ := base64.StdEncoding.DecodeString(b64)
	if string(got) != string(raw) {
		t.Fatal("$value in a batch: body differs")
	}
	if res["4"].Status != 404 {
		t.Fatalf("unknown user %d", res["4"].Status)
	}
	// A cycle or an unknown dependency refuses the batch.
	r, _ := e.batch(t, []map[string]any{
		{"id": "1", "method": "GET", "url": "/users/" + shared, "dependsOn": []string{"2"}},
		{"id": "2", "method": "GET", "url": "/users/" + shared, "dependsOn": []string{"1"}},
	})
	expectStatus(t, r, 400)
	r, _ = e.batch(t, []map[string]any{{"id": "1", "method": "GET", "url": "/users/" + shared, "dependsOn": []string{"9"}}})
	expectStatus(t, r, 400)
	// No token: the batch itself is 401.
	r = e.call("POST", "/$batch", "", map[string]any{"requests": []any{}})
	expectError(t, r, 401, "InvalidAuthenticationToken")
}
