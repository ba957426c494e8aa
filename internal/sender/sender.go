// Package sender takes outbound mail jobs (docs/jobs.md, pkg/mailjob) from
// the JetStream work queue and sends them through a transport (Microsoft
// Graph, SMTP) as the allow-listed mailboxes, at most once each, within
// every mailbox's sending rate, reporting each job with status events.
//
// Each allow-listed mailbox has its own durable pull consumer on the jobs
// stream (filtered on its subject), so that a mailbox waiting for its rate
// window holds up no other; jobs on any other subject go through a rejects
// consumer and are refused (sender_not_allowed, invalid_job). Per job, the
// state bucket holds its phase (accepted, sending, ambiguous, sent,
// failed), changed with compare-and-set only: a job already sent is
// acknowledged without sending, and two replicas never start an attempt of
// one job together. Per mailbox, the state bucket holds a sliding window of
// sends and recipients shared by all replicas.
package sender

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/mailpipe/mailpipe/internal/config"
	"github.com/mailpipe/mailpipe/internal/outbound"
	"github.com/mailpipe/mailpipe/pkg/mailjob"
)

// Mailbox is an allow-listed mailbox and the transports sending as it.
type Mailbox struct {
	Config config.SenderMailbox
	// Transport sends jobs without sender_profile.
	Transport outbound.Transport
	// Profiles are the transports of the mailbox's sender profiles, by
	// name.
	Profiles map[string]outbound.Transport
	// LooksUp says the transports find an earlier send of a job before
	// sending (Graph: Sent Items, the draft's marker). When false (SMTP), a
	// job whose earlier attempt may have sent the mail fails instead of
	// being sent again.
	LooksUp bool
}

// Options configure Open.
type Options struct {
	// Config supplies the streams, consumer settings and limits; the
	// mailboxes come from Mailboxes.
	Config    *config.Sender
	Mailboxes []Mailbox
	JS        jetstream.JetStream
	Logger    *zap.Logger
	Metrics   *Metrics
	// Holder names this replica in the job states (host/pid).
	Holder string
	// SweepInterval is how often the jobs stream is scanned for subjects
	// of mailboxes that are not allowed (default 10s).
	SweepInterval time.Duration
	// FetchWait bounds one fetch request (default 2s); a soft stop waits
	// for it.
	FetchWait time.Duration

	hooks hooks
}

// hooks let tests stop a handler at a point, as a crash would: returning
// true abandons the delivery there (no ack, no further state change).
type hooks struct {
	afterSend func(jobID string) bool
	beforeAck func(jobID string) bool
}

// Sender runs the consumers of one replica.
type Sender struct {
	cfg       *config.Sender
	js        jetstream.JetStream
	log       *zap.Logger
	metrics   *Metrics
	holder    string
	streams   *Streams
	state     stateStore
	rates     windows
	limits    mailjob.Limits
	mailboxes []*mailbox
	allowed   map[string]string // job subject -> consumer name
	sweep     time.Duration
	fetchWait time.Duration
	hooks     hooks

	// staleAfter: a "sending" state not renewed for this long belongs to
	// a replica that stopped.
	staleAfter time.Duration
	heartbeat  time.Duration

	objMu   sync.Mutex
	objects map[string]jetstream.ObjectStore

	// sending holds the ids of the jobs this process is sending.
	sending sync.Map

	rejects jetstream.Consumer
}

type mailbox struct {
	Mailbox
	name    string
	token   string
	subject string
	rateKey string
	limit   Limit
	cons    jetstream.Consumer
	consCfg jetstream.ConsumerConfig
	slots   chan struct{}
	log     *zap.Logger
}

// Open creates or updates the streams and buckets (EnsureStreams) and one
// durable consumer per mailbox, and removes this sender's consumers of
// mailboxes no longer allowed. It sends nothing. It is idempotent: every
// replica calls it at start-up, concurrently or not.
func Open(ctx context.Context, opts Options) (*Sender, error) {
	cfg := opts.Config
	if cfg == nil || opts.JS == nil {
		return nil, errors.New("sender: Config and JS are required")
	}
	if len(opts.Mailboxes) == 0 {
		return nil, errors.New("sender: no mailboxes: the allow-list is empty")
	}
	log := opts.Logger
	if log == nil {
		log = zap.NewNop()
	}
	s := &Sender{
		cfg: cfg, js: opts.JS, log: log, metrics: opts.Metrics, holder: opts.Holder,
		limits:     cfg.Limits.Mailjob(),
		allowed:    map[string]string{},
		sweep:      opts.SweepInterval,
		fetchWait:  opts.FetchWait,
		hooks:      opts.hooks,
		staleAfter: cfg.Consumer.AckWait,
		heartbeat:  max(cfg.Consumer.AckWait/3, 50*time.Millisecond),
		objects:    map[string]jetstream.ObjectStore{},
	}
	if s.holder == "" {
		s.holder = "sender"
	}
	if s.sweep <= 0 {
		s.sweep = 10 * time.Second
	}
	if s.fetchWait <= 0 {
		s.fetchWait = 2 * time.Second
	}
	var err error
	if s.streams, err = EnsureStreams(ctx, opts.JS, cfg.Streams, log); err != nil {
		return nil, fmt.Errorf("sender: %w", err)
	}
	s.state = stateStore{kv: s.streams.State}
	s.rates = windows{kv: s.streams.State, now: time.Now}
	s.objects[cfg.Streams.AttachmentBucket] = s.streams.Attachments

	seen := map[string]bool{}
	for _, m := range opts.Mailboxes {
		mc := m.Config
		if m.Transport == nil {
			return nil, fmt.Errorf("sender: mailbox %s has no transport", mc.Address)
		}
		token := mailjob.MailboxToken(mc.Address)
		if seen[token] {
			return nil, fmt.Errorf("sender: mailboxes share the subject token %s", token)
		}
		seen[token] = true
		mb := &mailbox{
			Mailbox: m,
			name:    mc.Name,
			token:   token,
			subject: mailjob.Subject(cfg.Streams.Jobs.SubjectPrefix, mc.Address),
			rateKey: RateKey(token),
			limit: Limit{
				Messages: mc.Rate.MessagesPerMinute, MessageWindow: mc.Rate.MessageWindow,
				Recipients: mc.Rate.RecipientsPerDay, RecipientWindow: mc.Rate.RecipientWindow,
				Grace: cfg.Consumer.AckWait + 10*time.Second,
			},
			slots: make(chan struct{}, max(mc.MaxConcurrency, 1)),
			log:   log.With(zap.String("mailbox", mc.Name)),
		}
		name := ConsumerName(cfg.Consumer.Durable, mc.Address)
		mb.consCfg = mailboxConsumerConfig(cfg.Consumer, name, mb.subject, mc.Address)
		s.allowed[mb.subject] = name
		s.mailboxes = append(s.mailboxes, mb)
	}
	if err := prepareConsumers(ctx, s.streams.Jobs, cfg.Consumer, s.allowed, log); err != nil {
		return nil, fmt.Errorf("sender: %w", err)
	}
	for _, mb := range s.mailboxes {
		if mb.cons, err = s.streams.Jobs.CreateOrUpdateConsumer(ctx, mb.consCfg); err != nil {
			return nil, fmt.Errorf("sender: consumer %s for %s: %w", mb.consCfg.Durable, mb.subject, err)
		}
	}
	return s, nil
}

// Streams returns the streams and buckets the sender uses.
func (s *Sender) Streams() *Streams { return s.streams }

// Run takes and sends jobs until soft ends; then it takes no new job and
// waits for the jobs in progress, which are abandoned (not acknowledged:
// the next attempt looks before sending again) when hard ends. It blocks
// until every job it took is settled or abandoned. Failures of NATS or of
// a transport are retried here (jobs go back to the queue with a delay);
// Run returns no error of its own. Call it once per Sender.
func (s *Sender) Run(soft, hard context.Context) error {
	var loops, handlers sync.WaitGroup
	for _, mb := range s.mailboxes {
		loops.Go(func() { s.mailboxLoop(soft, hard, mb, &handlers) })
	}
	loops.Go(func() { s.rejectsLoop(soft, hard) })
	s.log.Info("sender started", zap.Int("mailboxes", len(s.mailboxes)), zap.String("holder", s.holder))
	loops.Wait()
	handlers.Wait()
	return nil
}

// mailboxLoop fetches as many jobs as the mailbox has free slots and room
// in its rate window; when the window is full it sleeps until it frees,
// without fetching (so its jobs wait in the stream, attempts unspent).
func (s *Sender) mailboxLoop(soft, hard context.Context, mb *mailbox, handlers *sync.WaitGroup) {
	release := func(n int) {
		for range n {
			<-mb.slots
		}
	}
	for soft.Err() == nil {
		select {
		case mb.slots <- struct{}{}:
		case <-soft.Done():
			return
		}
		n := 1
	more:
		for n < cap(mb.slots) {
			select {
			case mb.slots <- struct{}{}:
				n++
			default:
				break more
			}
		}
		room, wait, err := s.rates.peek(soft, mb.rateKey, mb.limit)
		if err != nil {
			release(n)
			if soft.Err() == nil {
				mb.log.Warn("cannot read the rate window; retrying", zap.Error(err))
			}
			sleepCtx(soft, time.Second)
			continue
		}
		if room == 0 {
			release(n)
			if info, err := mb.cons.Info(soft); err == nil && info.NumPending > 0 {
				s.metrics.rateWait(mb.name, wait)
				mb.log.Debug("rate window full: jobs wait", zap.Duration("wait", wait), zap.Uint64("pending", info.NumPending))
			}
			sleepCtx(soft, wait)
			continue
		}
		if n > room {
			release(n - room)
			n = room
		}
		batch, err := mb.cons.Fetch(n, jetstream.FetchMaxWait(s.fetchWait))
		if err != nil {
			release(n)
			if soft.Err() != nil {
				return
			}
			mb.log.Warn("fetch failed; retrying", zap.Error(err))
			if errors.Is(err, jetstream.ErrConsumerNotFound) {
				if c, err := s.streams.Jobs.CreateOrUpdateConsumer(soft, mb.consCfg); err == nil {
					mb.cons = c
				}
			}
			sleepCtx(soft, time.Second)
			continue
		}
		held := n
		for msg := range batch.Messages() {
			if soft.Err() != nil {
				// Fetched as the stop came: another replica takes it.
				_ = msg.Nak()
				continue
			}
			send := s.prepare(hard, mb, msg)
			if send == nil {
				continue
			}
			held--
			handlers.Go(func() {
				defer release(1)
				send()
			})
		}
		release(held)
		if err := batch.Error(); err != nil && !errors.Is(err, jetstream.ErrNoMessages) && soft.Err() == nil {
			mb.log.Debug("fetch ended", zap.Error(err))
			if errors.Is(err, jetstream.ErrConsumerNotFound) || errors.Is(err, jetstream.ErrConsumerDeleted) {
				if c, err := s.streams.Jobs.CreateOrUpdateConsumer(soft, mb.consCfg); err == nil {
					mb.cons = c
				}
				sleepCtx(soft, time.Second)
			}
		}
	}
}

// rejectsLoop looks for jobs on subjects of no allow-listed mailbox and
// refuses them.
func (s *Sender) rejectsLoop(soft, hard context.Context) {
	next := time.Now()
	for soft.Err() == nil {
		if !time.Now().Before(next) {
			if err := s.sweepUnrouted(soft); err != nil && soft.Err() == nil {
				s.log.Warn("cannot look for jobs of mailboxes that are not allowed", zap.Error(err))
			}
			next = time.Now().Add(s.sweep)
		}
		if s.rejects == nil {
			sleepCtx(soft, time.Until(next))
			continue
		}
		batch, err := s.rejects.Fetch(16, jetstream.FetchMaxWait(min(s.fetchWait, max(time.Until(next), 50*time.Millisecond))))
		if err != nil {
			if errors.Is(err, jetstream.ErrConsumerNotFound) {
				s.rejects = nil
			}
			sleepCtx(soft, 100*time.Millisecond)
			continue
		}
		for msg := range batch.Messages() {
			s.reject(hard, msg)
		}
		if err := batch.Error(); errors.Is(err, jetstream.ErrConsumerNotFound) || errors.Is(err, jetstream.ErrConsumerDeleted) {
			s.rejects = nil
		}
	}
}

// sweepUnrouted points the rejects consumer at the subjects of the jobs
// stream that hold jobs and belong to no allow-listed mailbox.
func (s *Sender) sweepUnrouted(ctx context.Context) error {
	prefix := s.cfg.Streams.Jobs.SubjectPrefix
	info, err := s.streams.Jobs.Info(ctx, jetstream.WithSubjectFilter(prefix+".>"))
	if err != nil {
		return err
	}
	var unrouted []string
	for subj, n := range info.State.Subjects {
		if _, ok := s.allowed[subj]; !ok && n > 0 {
			unrouted = append(unrouted, subj)
		}
	}
	if len(unrouted) == 0 {
		if s.rejects == nil {
			// Bind a rejects consumer another replica made, if any.
			if c, err := s.streams.Jobs.Consumer(ctx, RejectsConsumerName(s.cfg.Consumer.Durable)); err == nil {
				s.rejects = c
			}
		}
		return nil
	}
	slices.Sort(unrouted)
	name := RejectsConsumerName(s.cfg.Consumer.Durable)
	if c, err := s.streams.Jobs.Consumer(ctx, name); err == nil {
		s.rejects = c
		have := consumerFilters(c.CachedInfo().Config)
		if !slices.ContainsFunc(unrouted, func(u string) bool { return !slices.Contains(have, u) }) {
			return nil
		}
	}
	// A consumer of a mailbox that is no longer allowed (left by a replica
	// with an older allow-list) would overlap: remove it.
	if err := prepareConsumers(ctx, s.streams.Jobs, s.cfg.Consumer, s.allowed, s.log); err != nil {
		return err
	}
	c, err := s.streams.Jobs.CreateOrUpdateConsumer(ctx, rejectsConsumerConfig(s.cfg.Consumer, unrouted))
	if err != nil {
		return fmt.Errorf("consumer %s for %v: %w", name, unrouted, err)
	}
	s.rejects = c
	s.log.Info("jobs of mailboxes that are not allowed found: refusing them", zap.Strings("subjects", unrouted))
	return nil
}

// backoff is the wait before the next attempt after the given number of
// failures, with up to 10% jitter.
func (s *Sender) backoff(failures int) time.Duration {
	b := s.cfg.Consumer.Backoff
	if len(b) == 0 {
		return 10 * time.Second
	}
	d := b[min(max(failures, 1), len(b))-1]
	return d + time.Duration(rand.Int64N(int64(d)/10+1))
}

func sleepCtx(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// AllowedSubjects lists the subjects of the allow-listed mailboxes, sorted.
func (s *Sender) AllowedSubjects() []string {
	return slices.Sorted(maps.Keys(s.allowed))
}
