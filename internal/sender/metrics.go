package sender

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the sender's Prometheus metrics. The mailbox label is the
// configured mailbox name (never an address); jobs refused before a
// mailbox is known count under mailbox "".
type Metrics struct {
	Registry *prometheus.Registry

	jobs      *prometheus.CounterVec
	attempts  *prometheus.CounterVec
	rateWaits *prometheus.CounterVec
	waited    *prometheus.CounterVec
	inFlight  *prometheus.GaugeVec
	duration  *prometheus.HistogramVec
}

// NewMetrics registers the sender metrics in a new registry (with the Go
// and process collectors).
func NewMetrics() *Metrics {
	m := &Metrics{
		Registry: prometheus.NewRegistry(),
		jobs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mailpipe_sender_jobs_total",
			Help: "Jobs finished, by mailbox and result: sent, already_sent (a redelivery of a job sent before: acknowledged without sending), failed (permanent failure, dead-lettered), rejected (invalid, not allowed: dead-lettered without an attempt).",
		}, []string{"mailbox", "result"}),
		attempts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mailpipe_sender_attempt_failures_total",
			Help: "Send attempts that failed and will be retried, by mailbox and kind (transient, throttled, auth, ambiguous).",
		}, []string{"mailbox", "kind"}),
		rateWaits: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mailpipe_sender_rate_waits_total",
			Help: "Times a mailbox's jobs waited for its sending-rate window (messages per minute, recipients per day) or a Retry-After, by mailbox.",
		}, []string{"mailbox"}),
		waited: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mailpipe_sender_rate_wait_seconds_total",
			Help: "Time jobs were put back to wait for the rate window, by mailbox.",
		}, []string{"mailbox"}),
		inFlight: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "mailpipe_sender_in_flight",
			Help: "Jobs of the mailbox being handled by this replica.",
		}, []string{"mailbox"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "mailpipe_sender_send_duration_seconds",
			Help:    "Duration of send attempts (the transport's Send), by mailbox.",
			Buckets: prometheus.ExponentialBuckets(0.05, 2, 12),
		}, []string{"mailbox"}),
	}
	m.Registry.MustRegister(m.jobs, m.attempts, m.rateWaits, m.waited, m.inFlight, m.duration,
		prometheus.NewGoCollector(), prometheus.NewProcessCollector(prometheus.ProcessCollectorOpts{}))
	return m
}

func (m *Metrics) job(mailbox, result string) {
	if m != nil {
		m.jobs.WithLabelValues(mailbox, result).Inc()
	}
}

func (m *Metrics) attemptFailed(mailbox, kind string) {
	if m != nil {
		m.attempts.WithLabelValues(mailbox, kind).Inc()
	}
}

func (m *Metrics) rateWait(mailbox string, d time.Duration) {
	if m != nil {
		m.rateWaits.WithLabelValues(mailbox).Inc()
		m.waited.WithLabelValues(mailbox).Add(d.Seconds())
	}
}

func (m *Metrics) busy(mailbox string, delta float64) {
	if m != nil {
		m.inFlight.WithLabelValues(mailbox).Add(delta)
	}
}

func (m *Metrics) sendTook(mailbox string, d time.Duration) {
	if m != nil {
		m.duration.WithLabelValues(mailbox).Observe(d.Seconds())
	}
}
