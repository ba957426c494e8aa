package app

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/mailpipe/mailpipe/internal/config"
	"github.com/mailpipe/mailpipe/internal/importer"
)

// /readyz fails while a mailbox has had no successful poll for three poll
// intervals plus a minute (a silent stall shows), and recovers when it has;
// a replica standing by for another counts as healthy.
func TestReadinessShowsStalledMailbox(t *testing.T) {
	cfg := &config.Importer{Mailboxes: []config.Mailbox{{Name: "invoices", PollInterval: time.Second}}}
	stats := importer.NewStats()
	srv := opsServer(cfg, stats, time.Now().Add(-10*time.Minute))
	get := func(path string) (int, string) {
		rec := httptest.NewRecorder()
		srv.Handler.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
		return rec.Code, rec.Body.String()
	}
	if code, body := get("/readyz"); code != http.StatusServiceUnavailable || !strings.Contains(body, "invoices") {
		t.Fatalf("stalled mailbox: /readyz %d %q, want 503 naming the mailbox", code, body)
	}
	if code, _ := get("/healthz"); code != http.StatusOK {
		t.Fatalf("/healthz %d while only readiness should fail", code)
	}
	stats.Standby("invoices")
	if code, body := get("/readyz"); code != http.StatusOK {
		t.Fatalf("after a successful check-in: /readyz %d %q", code, body)
	}
	if code, body := get("/metrics"); code != http.StatusOK || !strings.Contains(body, "mailpipe_importer_active") {
		t.Fatalf("/metrics %d lacks the importer metrics", code)
	}
}
