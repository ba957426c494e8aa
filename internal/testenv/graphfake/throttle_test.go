package graphfake_test

import (
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mailpipe/mailpipe/internal/testenv/graphfake"
)

func TestConcurrencyLimit(t *testing.T) {
	e := newEnv(t)
	e.seed(shared, "Inbox", 1)
	e.g.SetLatency(300 * time.Millisecond)
	var mu sync.Mutex
	var results []resp
	var wg sync.WaitGroup
	for i := 0; i < 7; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := e.get("/users/" + shared + "/mailFolders/inbox")
			mu.Lock()
			results = append(results, r)
			mu.Unlock()
		}()
	}
	wg.Wait()
	ok, limited := 0, 0
	for _, r := range results {
		switch r.status {
		case 200:
			ok++
		case 429:
			limited++
			want := `{"error":{"code":"ApplicationThrottled","message":"Application is over its MailboxConcurrency limit."`
			if !strings.HasPrefix(string(r.body), want) {
				t.Fatalf("body %s", r.body)
			}
			if r.header.Get("Retry-After") == "" {
				t.Fatal("no Retry-After")
			}
		default:
			t.Fatalf("status %d", r.status)
		}
	}
	if ok != 4 || limited != 3 {
		t.Fatalf("ok %d, 429 %d (limit 4 in flight)", ok, limited)
	}
	st := e.g.Stats()
	if st.ConcurrencyThrottled != 3 || st.Throttled != 3 || st.MaxInFlight != 4 {
		t.Fatalf("stats %+v", st)
	}
	// The limit is per mailbox: another mailbox is not affected.
	e.g.SetLatency(0)
	expectStatus(t, e.get("/users/"+other+"/mailFolders/inbox"), 200)
}

func TestBudgetFractionalRetryAfterAndThrottledRequestsCount(t *testing.T) {
	e := newEnv(t)
	e.g.SetLimits(graphfake.Limits{RequestBudget: 5, BudgetWindow: 2 * time.Second})
	for i := 0; i < 5; i++ {
		expectStatus(t, e.get("/users/"+shared+"/mailFolders/inbox"), 200)
		time.Sleep(20 * time.Millisecond)
	}
	r := e.get("/users/" + shared + "/mailFolders/inbox")
	expectError(t, r, 429, "TooManyRequests")
	ra := r.header.Get("Retry-After")
	first, err := strconv.ParseFloat(ra, 64)
	if err != nil || first <= 0 || first > 2 {
		t.Fatalf("Retry-After %q", ra)
	}
	if !strings.Contains(ra, ".") {
		t.Fatalf("Retry-After %q is not fractional", ra)
	}
	// Another app has its own budget.
	expectStatus(t, e.call("GET", "/users/"+shared+"/mailFolders/inbox", e.mint(map[string]any{"appid": "other-app", "roles": []string{"Mail.Read"}}), nil), 200)
	// Requests made while throttled count: hammering pushes the time when
	// the budget frees up further out.
	for i := 0; i < 10; i++ {
		expectStatus(t, e.get("/users/"+shared+"/mailFolders/inbox"), 429)
	}
	r = e.get("/users/" + shared + "/mailFolders/inbox")
	expectStatus(t, r, 429)
	later, _ := strconv.ParseFloat(r.header.Get("Retry-After"), 64)
	if later <= first {
		t.Fatalf("Retry-After %v after hammering, %v before", later, first)
	}
	time.Sleep(time.Duration(later*float64(time.Second)) + 30*time.Millisecond)
	expectStatus(t, e.get("/users/"+shared+"/mailFolders/inbox"), 200)
}

func TestFaultsAndStorm(t *testing.T) {
	e := newEnv(t)
	ids := e.seed(shared, "Inbox", 1)
	if err := e.g.FailNext(2, 503, "GET", `/\$value$`); err != nil {
		t.Fatal(err)
	}
	v := "/users/" + shared + "/messages/" + ids[0] + "/$value"
	expectStatus(t, e.get("/users/"+shared+"/mailFolders/inbox"), 200)
	expectStatus(t, e.get(v), 503)
	expectStatus(t, e.get(v), 503)
	expectStatus(t, e.get(v), 200)
	// A 504 after a delay.
	_ = e.g.InjectFault(graphfake.Fault{Path: `/\$value$`, Status: 504, Delay: 50 * time.Millisecond})
	start := time.Now()
	expectStatus(t, e.get(v), 504)
	if time.Since(start) < 50*time.Millisecond {
		t.Fatal("no delay")
	}
	// A download cut mid-way.
	_ = e.g.InjectFault(graphfake.Fault{Path: `/\$value$`, CutAfter: 10})
	req, _ := http.NewRequest("GET", e.g.BaseURL()+v, nil)
	req.Header.Set("Authorization", "Bearer "+e.app)
	res, err := e.client.Do(req)
	if err == nil {
		_, err = readAll(res)
	}
	if err == nil {
		t.Fatal("a cut download read without error")
	}
	// A storm of 429s.
	e.g.ThrottleStorm(100*time.Millisecond, 1500*time.Millisecond)
	r := e.get("/users/" + shared + "/mailFolders/inbox")
	expectStatus(t, r, 429)
	if r.header.Get("Retry-After") != "1.5" {
		t.Fatalf("Retry-After %q", r.header.Get("Retry-After"))
	}
	time.Sleep(120 * time.Millisecond)
	expectStatus(t, e.get("/users/"+shared+"/mailFolders/inbox"), 200)
	if st := e.g.Stats(); st.Faults != 4 || st.ByStatus[503] != 2 {
		t.Fatalf("stats %+v", st)
	}
	if err := e.g.InjectFault(graphfake.Fault{Path: "("}); err == nil {
		t.Fatal("bad pattern accepted")
	}
}

func readAll(res *http.Response) ([]byte, error) {
	defer res.Body.Close()
	var out []byte
	buf := make([]byte, 4096)
	for {
		n, err := res.Body.Read(buf)
		out = append(out, buf[:n]...)
		if err != nil {
			if err.Error() == "EOF" {
				return out, nil
			}
			return out, err
		}
	}
}
