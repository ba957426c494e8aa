package importer

import (
	"fmt"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Stats holds the importer's metrics and per-mailbox liveness. The mailbox
// label is the configured mailbox name (never an address).
type Stats struct {
	Registry *prometheus.Registry

	messages    *prometheus.CounterVec
	pollErrors  *prometheus.CounterVec
	lastSuccess *prometheus.GaugeVec
	active      *prometheus.GaugeVec

	graphRequests *prometheus.CounterVec

	mu   sync.Mutex
	last map[string]time.Time
}

// NewStats registers the importer metrics in a new registry.
func NewStats() *Stats {
	s := &Stats{
		Registry: prometheus.NewRegistry(),
		messages: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mailpipe_importer_messages_total",
			Help: "Messages handled, by mailbox and result (processed: published and moved; error: dead-lettered and moved to the error folder).",
		}, []string{"mailbox", "result"}),
		pollErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mailpipe_importer_poll_errors_total",
			Help: "Import passes that failed, by mailbox.",
		}, []string{"mailbox"}),
		lastSuccess: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "mailpipe_importer_last_success_timestamp_seconds",
			Help: "Unix time of the last successful import pass, by mailbox.",
		}, []string{"mailbox"}),
		active: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "mailpipe_importer_active",
			Help: "1 when this process holds the mailbox's lease and imports from it, 0 when it stands by for another replica.",
		}, []string{"mailbox"}),
		graphRequests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mailpipe_graph_requests_total",
			Help: "Microsoft Graph requests as Exchange counts them (each $batch item is one), by mailbox, operation and status class.",
		}, []string{"mailbox", "op", "status"}),
		last: map[string]time.Time{},
	}
	s.Registry.MustRegister(s.messages, s.pollErrors, s.lastSuccess, s.active, s.graphRequests,
		prometheus.NewGoCollector(), prometheus.NewProcessCollector(prometheus.ProcessCollectorOpts{}))
	return s
}

func (s *Stats) add(mbox string, processed, failed int) {
	if processed > 0 {
		s.messages.WithLabelValues(mbox, "processed").Add(float64(processed))
	}
	if failed > 0 {
		s.messages.WithLabelValues(mbox, "error").Add(float64(failed))
	}
}

func (s *Stats) pollFailed(mbox string) { s.pollErrors.WithLabelValues(mbox).Inc() }

func (s *Stats) pollOK(mbox string) {
	now := time.Now()
	s.lastSuccess.WithLabelValues(mbox).Set(float64(now.Unix()))
	s.active.WithLabelValues(mbox).Set(1)
	s.mu.Lock()
	s.last[mbox] = now
	s.mu.Unlock()
}

// Stale returns the mailboxes without a successful pass since before
// cutoff (a mailbox never polled counts from start).
func (s *Stats) Stale(mailboxes []string, started, cutoff time.Time) []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	for _, m := range mailboxes {
		t, ok := s.last[m]
		if !ok {
			t = started
		}
		if t.Before(cutoff) {
			out = append(out, m)
		}
	}
	return out
}

// Standby records that mbox is healthy in this process but worked by
// another replica (which holds its lease): readiness stays green.
func (s *Stats) Standby(mbox string) {
	s.active.WithLabelValues(mbox).Set(0)
	s.mu.Lock()
	s.last[mbox] = time.Now()
	s.mu.Unlock()
}

// GraphRequest counts Graph requests as Exchange counts them (each $batch
// item is one); with mailpipe_importer_messages_total it gives requests per
// imported message.
func (s *Stats) GraphRequest(mbox, op string, units, status int) {
	s.graphRequests.WithLabelValues(mbox, op, statusClass(status)).Add(float64(units))
}

func statusClass(status int) string {
	switch {
	case status == 0:
		return "error"
	case status == 429:
		return "429"
	default:
		return fmt.Sprintf("%dxx", status/100)
	}
}
