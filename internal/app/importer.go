// Package app wires configuration, identity, mailbox sources and the bus
// into the importer (and later the sender). cmd/ only parses flags and
// signals; everything here is callable from tests.
package app

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.uber.org/zap"

	"github.com/mailpipe/mailpipe/internal/auth"
	"github.com/mailpipe/mailpipe/internal/bus"
	"github.com/mailpipe/mailpipe/internal/config"
	"github.com/mailpipe/mailpipe/internal/importer"
	"github.com/mailpipe/mailpipe/internal/mailbox"
)

// Deps lets tests and the demo inject pieces; zero values mean production.
type Deps struct {
	Logger *zap.Logger
	// AuthOptions are passed to every auth.NewApp (e.g. an HTTP client
	// trusting a test identity provider).
	AuthOptions []auth.Option
	// Conn, when set, is used instead of connecting from cfg.NATS.
	Conn *bus.Conn
}

func (d Deps) logger() *zap.Logger {
	if d.Logger == nil {
		return zap.NewNop()
	}
	return d.Logger
}

func connect(ctx context.Context, cfg *config.Importer, d Deps) (*bus.Conn, bool, error) {
	if d.Conn != nil {
		return d.Conn, false, nil
	}
	c, err := bus.Connect(ctx, cfg.NATS, d.logger())
	return c, true, err
}

// RunImporter runs every configured mailbox until ctx ends (SIGTERM) or,
// with once, until every import folder is empty. When ctx ends, no new
// batch starts and the batches in progress get cfg.ShutdownTimeout to
// finish; what was not acknowledged is not moved.
func RunImporter(ctx context.Context, cfg *config.Importer, once bool, d Deps) error {
	log := d.logger()
	hard, cancelHard := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelHard()
	stopHard := context.AfterFunc(ctx, func() {
		log.Info("shutting down: no new work; waiting for in-flight batches", zap.Duration("deadline", cfg.ShutdownTimeout))
		t := time.AfterFunc(cfg.ShutdownTimeout, func() {
			log.Warn("shutdown deadline reached: abandoning in-flight work (unacknowledged mail stays in the import folder)")
			cancelHard()
		})
		context.AfterFunc(hard, func() { t.Stop() })
	})
	defer stopHard()

	conn, owned, err := connect(hard, cfg, d)
	if err != nil {
		return err
	}
	if owned {
		defer conn.Close()
	}
	b, err := bus.Open(hard, conn, cfg.Bus, log)
	if err != nil {
		return err
	}
	stats := importer.NewStats()
	srcs, err := newSources(hard, cfg, conn, b, stats, d)
	if err != nil {
		return err
	}
	leases, err := b.OpenLeases(hard, bus.DefaultLeaseTTL, leaseHolder())
	if err != nil {
		return err
	}
	started := time.Now()
	if cfg.HTTPListen != "" {
		srv := opsServer(cfg, stats, started)
		go func() {
			if err := srv.ListenAndServe(); err != nil && !errors.Is(err, http.ErrServerClosed) {
				log.Error("metrics/health listener failed", zap.String("http_listen", cfg.HTTPListen), zap.Error(err))
			}
		}()
		defer srv.Close()
	}

	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		errs []error
	)
	for _, m := range cfg.Mailboxes {
		src, err := srcs.New(m)
		if err != nil {
			return err
		}
		settings := importer.Settings{
			LargeThreshold:  int64(cfg.Bus.LargeMessageThreshold),
			DuplicateWindow: cfg.Bus.Stream.DuplicateWindow,
			Batch:           batchSize(m),
		}
		w := importer.NewWorker(m, src, b, settings, log, stats)
		var mover mailbox.Source
		if m.Source != "graph" {
			// IMAP: a second connection for the moves, so that they
			// overlap with the next batch's fetch (see
			// importer.Worker.SetMover). Graph moves are $batch requests
			// of their own; a second source would only add requests.
			if mover, err = srcs.New(m); err != nil {
				src.Close()
				return err
			}
			w.SetMover(mover)
		}
		mlog := log.With(zap.String("mailbox", m.Name))
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer src.Close()
			if mover != nil {
				defer mover.Close()
			}
			err := runLeased(ctx, leases, m.Name, once, m.PollInterval, mlog,
				func() { stats.Standby(m.Name) },
				func(soft context.Context) error { return w.Run(soft, hard, once) })
			if err != nil {
				mu.Lock()
				errs = append(errs, fmt.Errorf("mailbox %q: %w", m.Name, err))
				mu.Unlock()
			}
		}()
	}
	log.Info("importer started", zap.Int("mailboxes", len(cfg.Mailboxes)), zap.Bool("once", once),
		zap.Bool("embedded_nats", conn.Embedded()))
	wg.Wait()
	return errors.Join(errs...)
}

// opsServer serves /metrics, /healthz (process up) and /readyz (every
// mailbox had a successful pass within 3 poll intervals + 1 minute: a
// silent stall shows).
func opsServer(cfg *config.Importer, stats *importer.Stats, started time.Time) *http.Server {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(stats.Registry, promhttp.HandlerOpts{}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") })
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		var stale []string
		for _, m := range cfg.Mailboxes {
			cutoff := time.Now().Add(-(3*m.PollInterval + time.Minute))
			stale = append(stale, stats.Stale([]string{m.Name}, started, cutoff)...)
		}
		if len(stale) > 0 {
			w.WriteHeader(http.StatusServiceUnavailable)
			fmt.Fprintf(w, "no successful poll recently: %v\n", stale)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	return &http.Server{Addr: cfg.HTTPListen, Handler: mux, ReadHeaderTimeout: 10 * time.Second}
}
