package graphfake_test

import (
	"encoding/json"
	"net/http"
	"testing"
	"time"
)

// BenchmarkImportLoop lists a folder, downloads every message and moves it,
// as an importer does, and reports the requests per message.
func BenchmarkImportLoop(b *testing.B) {
	e := newEnv(b)
	e.g.SetLatency(time.Millisecond)
	const n = 50
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		e.seed(shared, "Inbox/Import", n)
		e.g.ResetStats()
		b.StartTimer()
		for e.g.Count(shared, "Inbox/Import") > 0 {
			r := e.get("/users/"+shared+"/mailFolders/inbox/childFolders?$filter=displayName%20eq%20'Import'", "Prefer", preferImmutable)
			folder := str(values(b, r.json(b))[0]["id"])
			r = e.get("/users/"+shared+"/mailFolders/"+folder+"/messages?$top=100&$select=id,internetMessageId", "Prefer", preferImmutable)
			var page struct {
				Value []struct{ ID string } `json:"value"`
			}
			_ = json.Unmarshal(r.body, &page)
			for _, m := range page.Value {
				if r := e.get("/users/"+shared+"/messages/"+m.ID+"/$value", "Prefer", preferImmutable); r.status != http.StatusOK {
					b.Fatal(r.status)
				}
				if r := e.post("/users/"+shared+"/messages/"+m.ID+"/move", map[string]string{"destinationId": "archive"}, "Prefer", preferImmutable); r.status != http.StatusCreated {
					b.Fatal(r.status)
				}
			}
		}
		b.ReportMetric(float64(e.g.Stats().Requests)/n, "req/msg")
	}
}
