package app

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.uber.org/zap"

	"github.com/mailpipe/mailpipe/internal/auth"
	"github.com/mailpipe/mailpipe/internal/bus"
	"github.com/mailpipe/mailpipe/internal/config"
	"github.com/mailpipe/mailpipe/internal/mailbox/graph"
	"github.com/mailpipe/mailpipe/internal/outbound"
	"github.com/mailpipe/mailpipe/internal/outbound/smtp"
	"github.com/mailpipe/mailpipe/internal/sender"
	"github.com/mailpipe/mailpipe/internal/throttle"
	"github.com/mailpipe/mailpipe/pkg/mailjob"
)

// SenderDeps are the Deps of the sender's commands, with what tests of the
// sender may replace.
type SenderDeps struct {
	Deps
	// NewTransport, when set, replaces the transports built from the
	// configuration: it returns the transport sending as m for profile
	// ("" for the mailbox's own), and whether it finds earlier sends.
	NewTransport func(m config.SenderMailbox, profile string) (outbound.Transport, bool, error)
	// Holder names the replica in job states (default host/pid).
	Holder string
	// SweepInterval is sender.Options.SweepInterval (tests).
	SweepInterval time.Duration
}

// connectNATS connects as cfg says, unless d brings a connection.
func connectNATS(ctx context.Context, cfg config.NATS, d Deps) (*bus.Conn, bool, error) {
	if d.Conn != nil {
		return d.Conn, false, nil
	}
	c, err := bus.Connect(ctx, cfg, d.logger())
	return c, true, err
}

// RunSender runs the sender until ctx ends (SIGTERM): it takes no new job
// then, and the sends in progress get cfg.ShutdownTimeout to finish; a send
// cut off at the deadline is not acknowledged, and the next attempt (in
// any replica) looks before sending again.
func RunSender(ctx context.Context, cfg *config.Sender, d SenderDeps) error {
	log := d.logger()
	hard, cancelHard := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelHard()
	stopHard := context.AfterFunc(ctx, func() {
		log.Info("shutting down: no new jobs; waiting for the sends in progress", zap.Duration("deadline", cfg.ShutdownTimeout))
		t := time.AfterFunc(cfg.ShutdownTimeout, func() {
			log.Warn("shutdown deadline reached: abandoning the sends in progress (their jobs are not acknowledged; the next attempt looks before sending)")
			cancelHard()
		})
		context.AfterFunc(hard, func() { t.Stop() })
	})
	defer stopHard()

	conn, owned, err := connectNATS(hard, cfg.NATS, d.Deps)
	if err != nil {
		return err
	}
	if owned {
		defer conn.Close()
	}
	tr, err := newSenderTransports(hard, cfg, conn, d)
	if err != nil {
		return err
	}
	defer tr.Close()
	mbs, err := tr.mailboxes()
	if err != nil {
		return err
	}
	metrics := sender.NewMetrics()
	holder := d.Holder
	if holder == "" {
		holder = leaseHolder()
	}
	s, err := sender.Open(hard, sender.Options{Config: cfg, Mailboxes: mbs, JS: conn.JetStream(), Logger: log,
		Metrics: metrics, Holder: holder, SweepInterval: d.SweepInterval})
	if err != nil {
		return err
	}
	if cfg.HTTPListen != "" {
		srv := senderOpsServer(cfg, metrics, conn)
		go func() {
			if err := srv.ListenAndServe(); err != nil && !errors.Is(err, http.ErrServerClosed) {
				log.Error("metrics/health listener failed", zap.String("http_listen", cfg.HTTPListen), zap.Error(err))
			}
		}()
		defer srv.Close()
	}
	log.Info("sender running", zap.Strings("subjects", s.AllowedSubjects()), zap.Bool("embedded_nats", conn.Embedded()))
	return s.Run(ctx, hard)
}

// senderOpsServer serves /metrics, /healthz (process up) and /readyz (NATS
// connected).
func senderOpsServer(cfg *config.Sender, m *sender.Metrics, conn *bus.Conn) *http.Server {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(m.Registry, promhttp.HandlerOpts{}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") })
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		if !conn.NC().IsConnected() {
			w.WriteHeader(http.StatusServiceUnavailable)
			fmt.Fprintln(w, "not connected to NATS")
			return
		}
		fmt.Fprintln(w, "ok")
	})
	return &http.Server{Addr: cfg.HTTPListen, Handler: mux, ReadHeaderTimeout: 10 * time.Second}
}

// senderTransports builds the transports of the allow-listed mailboxes:
// one token client and one Graph throttle per identity, delegated
// identities through the token bucket.
type senderTransports struct {
	cfg       *config.Sender
	d         SenderDeps
	apps      map[string]*auth.App
	delegated map[string]*auth.Delegated
	throttles map[string]*throttle.App
	built     []outbound.Transport
}

func newSenderTransports(ctx context.Context, cfg *config.Sender, conn *bus.Conn, d SenderDeps) (*senderTransports, error) {
	t := &senderTransports{cfg: cfg, d: d, apps: map[string]*auth.App{}, delegated: map[string]*auth.Delegated{},
		throttles: map[string]*throttle.App{}}
	if d.NewTransport != nil {
		return t, nil
	}
	var kv jetstream.KeyValue
	for _, name := range senderIdentities(cfg) {
		id := cfg.Identities[name]
		t.throttles[name] = throttle.NewApp(throttle.AppOptions{Name: name, MaxConcurrency: id.GraphMaxConcurrency})
		if !isDelegated(id) {
			opts := append([]auth.Option{auth.WithLogger(d.logger())}, d.AuthOptions...)
			a, err := auth.NewApp(name, id, opts...)
			if err != nil {
				return nil, err
			}
			t.apps[name] = a
			continue
		}
		if conn == nil {
			continue
		}
		if kv == nil {
			var err error
			if kv, err = auth.OpenTokenBucket(ctx, conn.JetStream(), cfg.Streams.TokenBucket, cfg.Streams.Jobs.Replicas); err != nil {
				return nil, err
			}
		}
		dl, err := senderDelegated(cfg, name, kv, d.Deps)
		if err != nil {
			return nil, err
		}
		t.delegated[name] = dl
	}
	return t, nil
}

// senderIdentities lists the identities the mailboxes and profiles use.
func senderIdentities(cfg *config.Sender) []string {
	set := map[string]bool{}
	for _, m := range cfg.Mailboxes {
		if m.Identity != "" {
			set[m.Identity] = true
		}
		for _, p := range m.Profiles {
			if p.Identity != "" {
				set[p.Identity] = true
			}
		}
	}
	return slices.Sorted(maps.Keys(set))
}

// senderSignIn is the command that signs the identity of mailbox in.
func senderSignIn(mailbox string) string {
	return "sender auth login --config FILE --mailbox " + mailbox
}

// senderDelegated opens a delegated identity over the token bucket kv.
func senderDelegated(cfg *config.Sender, name string, kv jetstream.KeyValue, d Deps) (*auth.Delegated, error) {
	id, ok := cfg.Identities[name]
	if !ok {
		return nil, fmt.Errorf("unknown identity %q", name)
	}
	key, err := auth.DecodeTokenCacheKey(id.TokenCacheKey.Value())
	if err != nil {
		return nil, fmt.Errorf("identities.%s.%w", name, err)
	}
	store, err := auth.NewKVCacheStore(kv, name, key)
	if err != nil {
		return nil, err
	}
	mailbox := ""
	for _, m := range cfg.Mailboxes {
		if m.Identity == name {
			mailbox = m.Address
			break
		}
	}
	opts := []auth.Option{auth.WithLogger(d.logger()), auth.WithSignInCommand(senderSignIn(mailbox))}
	opts = append(opts, d.AuthOptions...)
	return auth.NewDelegated(name, id, store, opts...)
}

// sendScopes are the scopes sending as m with identity id needs: the
// app-only scope, and the delegated scopes (one resource).
func sendScopes(m config.SenderMailbox, id config.Identity) (app string, delegated []string) {
	if m.Transport == "smtp" {
		return imapScope(id.AuthorityHost), []string{smtp.ScopeSMTPDelegated}
	}
	r := graphResource(m.Graph.BaseURL)
	// Mail.ReadWrite.Shared: the drafts and the look-up in Sent Items that
	// make a retry safe; the same scopes as the importer's Graph sign-in.
	return r + "/.default", []string{r + "/Mail.ReadWrite.Shared", r + "/Mail.Send.Shared"}
}

// tokens returns the token source of identity name for sending as m.
func (t *senderTransports) tokens(m config.SenderMailbox, name string) (auth.TokenSource, bool, error) {
	id, ok := t.cfg.Identities[name]
	if !ok {
		return nil, false, fmt.Errorf("mailbox %s: unknown identity %q", m.Address, name)
	}
	appScope, delScopes := sendScopes(m, id)
	if isDelegated(id) {
		dl := t.delegated[name]
		if dl == nil {
			return nil, true, fmt.Errorf("mailbox %s: delegated identity %q needs NATS for its token cache, which is not reachable", m.Address, name)
		}
		return dl.Source(delScopes...), true, nil
	}
	return t.apps[name].Source(appScope), false, nil
}

// transport builds the transport sending as m with identity name.
func (t *senderTransports) transport(m config.SenderMailbox, profile, name string) (outbound.Transport, bool, error) {
	if t.d.NewTransport != nil {
		return t.d.NewTransport(m, profile)
	}
	log := t.d.logger().With(zap.String("mailbox", m.Name))
	switch m.Transport {
	case "smtp":
		o := smtp.Options{
			Host: m.SMTP.Host, Port: m.SMTP.Port, Security: m.SMTP.Security, Username: m.SMTP.Username,
			CAFile: m.SMTP.TLS.CAFile, ServerName: m.SMTP.TLS.ServerName, CertFile: m.SMTP.TLS.CertFile, KeyFile: m.SMTP.TLS.KeyFile,
			Timeout: m.SMTP.Timeout, Logger: log,
		}
		switch m.SMTP.Auth {
		case "xoauth2":
			ts, delegated, err := t.tokens(m, name)
			if err != nil {
				return nil, false, err
			}
			o.Tokens = ts
			if name != m.Identity {
				// A profile's identity: log in as its token's account,
				// the service account (which sends as the mailbox with
				// Send As) or the mailbox itself (app-only).
				o.Username = m.Address
				if delegated {
					o.Username = t.cfg.Identities[name].Username
				}
			}
		case "password":
			o.Password = m.SMTP.Password.Value()
		}
		tr, err := smtp.New(o)
		return tr, false, err
	default:
		ts, delegated, err := t.tokens(m, name)
		if err != nil {
			return nil, false, err
		}
		tr, err := graph.NewTransport(graph.TransportOptions{
			BaseURL: m.Graph.BaseURL, CAFile: m.Graph.CAFile, Tokens: ts, Delegated: delegated,
			App: t.throttles[name], MaxConcurrency: min(m.MaxConcurrency, throttle.DefaultMailboxConcurrency),
			Timeout: m.Graph.Timeout, Logger: log,
		})
		return tr, true, err
	}
}

// mailboxes builds every mailbox's transports.
func (t *senderTransports) mailboxes() ([]sender.Mailbox, error) {
	var out []sender.Mailbox
	for _, m := range t.cfg.Mailboxes {
		tr, looksUp, err := t.transport(m, "", m.Identity)
		if err != nil {
			return nil, fmt.Errorf("mailbox %s: %w", m.Address, err)
		}
		t.built = append(t.built, tr)
		mb := sender.Mailbox{Config: m, Transport: tr, LooksUp: looksUp, Profiles: map[string]outbound.Transport{}}
		for _, p := range m.Profiles {
			pt, lu, err := t.transport(m, p.Name, p.Identity)
			if err != nil {
				return nil, fmt.Errorf("mailbox %s, profile %s: %w", m.Address, p.Name, err)
			}
			t.built = append(t.built, pt)
			mb.Profiles[p.Name] = pt
			mb.LooksUp = mb.LooksUp && lu
		}
		out = append(out, mb)
	}
	return out, nil
}

func (t *senderTransports) Close() {
	for _, tr := range t.built {
		_ = tr.Close()
	}
}

// CheckSender is the "Test connection" button of the sender: NATS, the
// streams and every mailbox's consumer; per mailbox (and sender profile)
// a token and the transport's Send As check, without sending. It writes a
// report to out and returns ErrCheckFailed when anything failed.
func CheckSender(ctx context.Context, cfg *config.Sender, out io.Writer, d SenderDeps) error {
	c := &checker{out: out}
	fmt.Fprintln(out, "nats")
	conn, closeConn := checkSenderNATS(ctx, c, cfg, d.Deps)
	defer closeConn()
	for _, name := range senderIdentities(cfg) {
		checkIdentityExpiry(c, name, cfg.Identities[name])
	}
	tr, err := newSenderTransports(ctx, cfg, conn, d)
	if err != nil {
		c.fail("identities: %v", err)
		return ErrCheckFailed
	}
	defer tr.Close()
	for _, m := range cfg.Mailboxes {
		where := "graph " + m.Graph.BaseURL
		if m.Transport == "smtp" {
			where = fmt.Sprintf("smtp %s:%d (%s)", m.SMTP.Host, m.SMTP.Port, m.SMTP.Security)
		}
		fmt.Fprintf(out, "mailbox %s (%s, %s)\n", m.Address, m.Name, where)
		checkSendAs(ctx, c, tr, m, "", m.Identity)
		for _, p := range m.Profiles {
			checkSendAs(ctx, c, tr, m, p.Name, p.Identity)
		}
	}
	if c.failed {
		return ErrCheckFailed
	}
	return nil
}

func checkSendAs(ctx context.Context, c *checker, tr *senderTransports, m config.SenderMailbox, profile, identity string) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	what := ""
	if profile != "" {
		what = fmt.Sprintf("profile %q: ", profile)
	}
	if identity != "" && tr.d.NewTransport == nil {
		id := tr.cfg.Identities[identity]
		appScope, delScopes := sendScopes(m, id)
		scope := appScope
		if isDelegated(id) {
			scope = strings.Join(delScopes, " ")
		}
		ts, _, err := tr.tokens(m, identity)
		if err == nil {
			var tok auth.Token
			if tok, err = ts.Token(ctx); err == nil {
				c.ok("%stoken for %s (identity %q), valid until %s", what, scope, identity, tok.ExpiresOn.Local().Format("15:04"))
			}
		}
		if err != nil {
			c.fail("%stoken for %s (identity %q): %v", what, scope, identity, err)
			return
		}
	}
	t, _, err := tr.transport(m, profile, identity)
	if err != nil {
		c.fail("%s%v", what, err)
		return
	}
	defer t.Close()
	note, err := t.CheckSendAs(ctx, m.Address)
	if err != nil {
		c.fail("%ssend as %s: %v", what, m.Address, err)
		return
	}
	if note == "" {
		note = "can send"
	}
	c.ok("%ssend as %s: %s", what, m.Address, note)
}

// checkSenderNATS connects, creates or checks the streams and reports the
// consumers.
func checkSenderNATS(ctx context.Context, c *checker, cfg *config.Sender, d Deps) (*bus.Conn, func()) {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	conn, owned, err := connectNATS(ctx, cfg.NATS, d)
	if err != nil {
		c.fail("connect: %v", err)
		return nil, func() {}
	}
	closeConn := func() {
		if owned {
			conn.Close()
		}
	}
	if conn.Embedded() {
		c.ok("embedded NATS server with JetStream (store %s)", cfg.NATS.Embedded.StoreDir)
	} else {
		c.ok("connected to %s", conn.ClientURL())
	}
	st, err := sender.EnsureStreams(ctx, conn.JetStream(), cfg.Streams, d.logger())
	if err != nil {
		c.fail("streams: %v", err)
		return conn, closeConn
	}
	for _, s := range []jetstream.Stream{st.Jobs, st.Status, st.DeadLetter} {
		info, err := s.Info(ctx)
		if err != nil {
			c.fail("stream %s: %v", s.CachedInfo().Config.Name, err)
			continue
		}
		k := info.Config
		c.ok("stream %s %v: %d messages, %s retention, max age %s, duplicate window %s",
			k.Name, k.Subjects, info.State.Msgs, k.Retention, k.MaxAge, k.Duplicates)
	}
	c.ok("buckets: attachments %s, state %s", cfg.Streams.AttachmentBucket, cfg.Streams.StateBucket)
	for _, m := range cfg.Mailboxes {
		name := sender.ConsumerName(cfg.Consumer.Durable, m.Address)
		cons, err := st.Jobs.Consumer(ctx, name)
		switch {
		case errors.Is(err, jetstream.ErrConsumerNotFound):
			c.ok("consumer %s: created when the sender starts (jobs from %s)", name, m.Address)
		case err != nil:
			c.fail("consumer %s: %v", name, err)
		default:
			info, err := cons.Info(ctx)
			if err != nil {
				c.fail("consumer %s: %v", name, err)
				continue
			}
			c.ok("consumer %s on %s: %d jobs waiting, %d being sent", name, info.Config.FilterSubject, info.NumPending, info.NumAckPending)
		}
	}
	return conn, closeConn
}

// EnqueueResult is what EnqueueJob did.
type EnqueueResult struct {
	Job    *mailjob.Job
	Result *mailjob.PublishResult
}

// EnqueueJob validates the job in data (JSON, docs/jobs.md) with the
// sender's limits and allow-list and publishes it with pkg/mailjob, as a
// producer does. The streams are created first if needed (with the
// sender's settings). A job published again with the same job_id within
// the duplicate window is reported as a duplicate, nothing stored.
func EnqueueJob(ctx context.Context, cfg *config.Sender, data []byte, source string, d Deps) (*EnqueueResult, error) {
	job, err := mailjob.ValidateJSON(data, cfg.Limits.Mailjob())
	if err != nil {
		return nil, err
	}
	if _, ok := cfg.Mailbox(job.From); !ok {
		return nil, fmt.Errorf("from %s is not on this sender's allow-list (mailboxes): the sender would refuse the job (sender_not_allowed)", job.From)
	}
	conn, owned, err := connectNATS(ctx, cfg.NATS, d)
	if err != nil {
		return nil, err
	}
	if owned {
		defer conn.Close()
	}
	if _, err := sender.EnsureStreams(ctx, conn.JetStream(), cfg.Streams, d.logger()); err != nil {
		return nil, err
	}
	if source == "" {
		source = "/mailpipe/sender-cli"
	}
	res, err := mailjob.Publish(ctx, conn.JetStream(), job, mailjob.WithLimits(cfg.Limits.Mailjob()),
		mailjob.WithSubjectPrefix(cfg.Streams.Jobs.SubjectPrefix), mailjob.WithStream(cfg.Streams.Jobs.Name), mailjob.WithSource(source))
	if err != nil {
		return nil, err
	}
	return &EnqueueResult{Job: job, Result: res}, nil
}

// WatchJob writes the status events of jobID to out until a final one
// (or ctx ends) and returns the final event.
func WatchJob(ctx context.Context, cfg *config.Sender, jobID string, out io.Writer, d Deps) (*mailjob.StatusEvent, error) {
	conn, owned, err := connectNATS(ctx, cfg.NATS, d)
	if err != nil {
		return nil, err
	}
	if owned {
		defer conn.Close()
	}
	ch, err := mailjob.WatchStatus(ctx, conn.JetStream(), jobID,
		mailjob.WithSubjectPrefix(cfg.Streams.Status.SubjectPrefix), mailjob.WithStream(cfg.Streams.Status.Name))
	if err != nil {
		return nil, err
	}
	for ev := range ch {
		fmt.Fprintln(out, FormatStatus(ev))
		if ev.Final() {
			return &ev, nil
		}
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	return nil, errors.New("the status stream closed before the job's final event")
}

// FormatStatus renders a status event on one line.
func FormatStatus(ev mailjob.StatusEvent) string {
	s := fmt.Sprintf("%s  %-8s attempt %d", ev.Time.UTC().Format("15:04:05.000"), ev.Type, ev.Attempt)
	switch {
	case ev.Type == mailjob.StatusSent:
		s += "  " + ev.InternetMessageID
	case ev.Type == mailjob.StatusFailed:
		perm := "will retry"
		if ev.Permanent {
			perm = "permanent"
		}
		s += fmt.Sprintf("  %s (%s): %s", ev.ReasonCode, perm, ev.Reason)
	}
	return s
}
