package sender

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/mailpipe/mailpipe/internal/outbound"
	"github.com/mailpipe/mailpipe/pkg/mailjob"
)

// bookkeeping bounds the writes that record an attempt's outcome; they run
// even when the hard context ended, so that a send that happened is
// recorded.
const bookkeeping = 15 * time.Second

// delivery is one delivery of a job message to this replica.
type delivery struct {
	msg   jetstream.Msg
	md    *jetstream.MsgMetadata
	job   *mailjob.Job
	jobID string // usable in a status event; "" when the message has none
	mb    *mailbox
	name  string // metrics label
	log   *zap.Logger
	st    *JobState
	rev   revision
}

// prepare works one delivery of a job from mb's consumer up to the send:
// validation, allow-list, the job's state, the rate window and the claim.
// It returns the send to run, or nil when the delivery is settled
// (acknowledged, terminated or put back with a delay). The mailbox loop
// calls it before fetching more, so that its next look at the rate window
// sees this job's reservation.
func (s *Sender) prepare(ctx context.Context, mb *mailbox, msg jetstream.Msg) (send func()) {
	d := &delivery{msg: msg, mb: mb, name: mb.name, log: mb.log}
	md, err := msg.Metadata()
	if err != nil {
		d.log.Error("job message without metadata", zap.Error(err))
		_ = msg.NakWithDelay(time.Second)
		return nil
	}
	d.md = md
	job, perr := mailjob.ParseJobMsg(msg, s.limits)
	d.job = job
	d.jobID = jobIDOf(msg, job)
	d.log = d.log.With(zap.String("job_id", d.jobID), zap.Uint64("seq", md.Sequence.Stream))
	if perr != nil {
		s.refuse(ctx, d, perr)
		return nil
	}
	if !strings.EqualFold(job.From, mb.Config.Address) {
		// Another address with the same subject token.
		s.giveUp(ctx, d, 1, mailjob.ReasonSenderNotAllowed,
			fmt.Sprintf("%s is not on this sender's allow-list of mailboxes to send as", job.From))
		return nil
	}
	transport := mb.Transport
	if p := job.SenderProfile; p != "" {
		t, ok := mb.Profiles[p]
		if !ok {
			s.giveUp(ctx, d, 1, mailjob.ReasonUnknownSenderProfile,
				fmt.Sprintf("sender_profile %q is not configured for %s (profiles: %s)", p, mb.Config.Address, profileNames(mb)))
			return nil
		}
		transport = t
	}
	if !s.claim(ctx, d) {
		return nil
	}
	// While this process sends the job, a redelivery of it (after a NATS
	// outage longer than the ack wait) must not take it for interrupted.
	s.sending.Store(job.JobID, true)
	return func() {
		defer s.sending.Delete(job.JobID)
		s.metrics.busy(mb.name, 1)
		defer s.metrics.busy(mb.name, -1)
		start := time.Now()
		res, serr := s.send(ctx, d, transport)
		s.metrics.sendTook(d.name, time.Since(start))
		if serr == nil {
			if s.hooks.afterSend != nil && s.hooks.afterSend(job.JobID) {
				return
			}
			s.sent(ctx, d, res)
			return
		}
		s.failed(ctx, d, serr)
	}
}

func profileNames(mb *mailbox) string {
	var names []string
	for _, p := range mb.Config.Profiles {
		names = append(names, p.Name)
	}
	if len(names) == 0 {
		return "none"
	}
	return strings.Join(names, ", ")
}

// jobIDOf is the job id a status event and a dead letter can carry: the
// job's, else the message's Nats-Msg-Id when it is a valid job id.
func jobIDOf(msg jetstream.Msg, job *mailjob.Job) string {
	for _, id := range []string{jobIDField(job), msg.Headers().Get(mailjob.HeaderMsgID)} {
		if validJobID(id) {
			return id
		}
	}
	return ""
}

func jobIDField(job *mailjob.Job) string {
	if job == nil {
		return ""
	}
	return job.JobID
}

func validJobID(id string) bool {
	if id == "" || len(id) > mailjob.MaxJobIDLen {
		return false
	}
	for _, c := range id {
		switch {
		case 'A' <= c && c <= 'Z', 'a' <= c && c <= 'z', '0' <= c && c <= '9', c == '.', c == '_', c == ':', c == '-':
		default:
			return false
		}
	}
	return true
}

// refuse gives up on a job that is not a valid job.
func (s *Sender) refuse(ctx context.Context, d *delivery, err error) {
	var verr *mailjob.ValidationError
	switch {
	case errors.Is(err, mailjob.ErrNotJob):
		s.giveUp(ctx, d, 1, mailjob.ReasonUnsupportedType, oneLine(err.Error()))
	case errors.As(err, &verr):
		probs := make([]string, len(verr.Problems))
		for i, p := range verr.Problems {
			probs[i] = p.String()
		}
		s.giveUp(ctx, d, 1, mailjob.ReasonInvalidJob, oneLine("invalid job: "+strings.Join(probs, "; ")))
	default:
		s.giveUp(ctx, d, 1, mailjob.ReasonInvalidJob, oneLine(err.Error()))
	}
}

// reject handles a message of the rejects consumer: a job on a subject
// of no allow-listed mailbox.
func (s *Sender) reject(ctx context.Context, msg jetstream.Msg) {
	d := &delivery{msg: msg, log: s.log}
	md, err := msg.Metadata()
	if err != nil {
		_ = msg.NakWithDelay(time.Second)
		return
	}
	d.md = md
	job, perr := mailjob.ParseJobMsg(msg, s.limits)
	d.job = job
	d.jobID = jobIDOf(msg, job)
	d.log = s.log.With(zap.String("job_id", d.jobID), zap.String("subject", msg.Subject()))
	if perr != nil {
		s.refuse(ctx, d, perr)
		return
	}
	for _, mb := range s.mailboxes {
		if strings.EqualFold(mb.Config.Address, job.From) {
			d.name = mb.name
			s.giveUp(ctx, d, 1, mailjob.ReasonInvalidJob, fmt.Sprintf("from: the job was published on %s, but jobs from %s belong on %s", msg.Subject(), job.From, mb.subject))
			return
		}
	}
	s.giveUp(ctx, d, 1, mailjob.ReasonSenderNotAllowed,
		fmt.Sprintf("%s is not on this sender's allow-list of mailboxes to send as", job.From))
}

// claim takes the job through its state: it acknowledges the job when it
// was sent before; otherwise it books the mailbox's rate window and claims
// the job for an attempt (true), or puts it back to wait.
func (s *Sender) claim(ctx context.Context, d *delivery) bool {
	job, mb := d.job, d.mb
	st, rev, err := s.state.get(ctx, job.JobID)
	if err != nil {
		s.later(d, 2*time.Second, "job state unavailable", err)
		return false
	}
	if st != nil && st.Seq != d.md.Sequence.Stream && st.Final() {
		d.log.Info("a job with this id was handled before, outside the duplicate window: a new job",
			zap.String("earlier_state", st.Phase), zap.Uint64("earlier_seq", st.Seq))
		st = nil
	}
	if st == nil {
		st = &JobState{Phase: PhaseAccepted, Seq: d.md.Sequence.Stream, From: job.From}
		n, err := s.state.write(ctx, job.JobID, st, rev.rev)
		if err != nil {
			s.later(d, time.Second, "cannot record the job", err)
			return false
		}
		rev = revision{rev: n, created: time.Now()}
		if err := s.status(ctx, d, mailjob.StatusAccepted, 1, nil); err != nil {
			d.log.Warn("cannot publish the accepted event", zap.Error(err))
		}
	}
	d.st, d.rev = st, rev

	switch st.Phase {
	case PhaseSent:
		// Sent by an earlier delivery whose acknowledgement was lost.
		if err := s.status(ctx, d, mailjob.StatusSent, st.Attempt, func(e *mailjob.StatusEvent) { e.InternetMessageID = st.MessageID }); err != nil {
			s.later(d, 2*time.Second, "cannot publish the sent event", err)
			return false
		}
		s.ack(ctx, d)
		s.metrics.job(d.name, "already_sent")
		d.log.Info("job was sent before: acknowledged without sending", zap.Int("attempt", st.Attempt))
		return false
	case PhaseFailed:
		s.giveUp(ctx, d, st.finalAttempt(), st.ReasonCode, st.Reason)
		return false
	case PhaseSending:
		age := time.Since(rev.created)
		if _, busy := s.sending.Load(job.JobID); busy || age < s.staleAfter {
			// Another replica is sending it (or was, until moments ago).
			_ = d.msg.NakWithDelay(max(s.staleAfter-age, 0) + time.Duration(rand.Int64N(int64(time.Second))))
			return false
		}
		d.log.Warn("the previous attempt was interrupted: its outcome is unknown",
			zap.Int("attempt", st.Attempt), zap.String("holder", st.Holder), zap.Duration("silent_for", age))
		st.Phase = PhaseAmbiguous
		st.Failures++
		st.ReasonCode = mailjob.ReasonInternal
		st.Reason = fmt.Sprintf("attempt %d was interrupted (replica %s stopped while sending)", st.Attempt, st.Holder)
	}
	if st.Phase == PhaseAmbiguous && !mb.LooksUp {
		s.giveUp(ctx, d, st.Attempt+1, st.ReasonCode, cannotLookUp(st.Attempt, st.Reason))
		return false
	}
	if st.Failures >= s.cfg.Consumer.MaxDeliver {
		s.giveUp(ctx, d, st.Attempt+1, mailjob.ReasonAttemptsExhausted,
			fmt.Sprintf("%d attempts failed; the last: %s", st.Failures, st.Reason))
		return false
	}
	if err := s.checkAttachments(ctx, job); err != nil {
		if code, permanent := attachmentReason(err); permanent {
			s.giveUp(ctx, d, st.Attempt+1, code, oneLine(err.Error()))
		} else {
			s.later(d, 5*time.Second, "cannot read the attachment bucket", err)
		}
		return false
	}

	wait, err := s.rates.reserve(ctx, mb.rateKey, job.JobID, job.Recipients(), mb.limit)
	if errors.Is(err, errTooMany) {
		s.giveUp(ctx, d, st.Attempt+1, mailjob.ReasonInvalidJob,
			fmt.Sprintf("%d recipients: more than %s may send to in %s (%d)", job.Recipients(), mb.Config.Address, mb.limit.RecipientWindow, mb.limit.Recipients))
		return false
	}
	if err != nil {
		s.later(d, 2*time.Second, "rate window unavailable", err)
		return false
	}
	if wait > 0 {
		// Over the rate: the job waits in the queue, no attempt spent.
		wait += time.Duration(rand.Int64N(int64(min(wait/8, 2*time.Second)) + int64(50*time.Millisecond)))
		s.metrics.rateWait(d.name, wait)
		d.log.Debug("rate window full: the job waits", zap.Duration("wait", wait))
		_ = d.msg.NakWithDelay(wait)
		return false
	}

	// Claim the job: the compare-and-set fails if another replica changed
	// its state since it was read.
	st.Phase = PhaseSending
	st.Attempt++
	st.Holder = s.holder
	st.Started = time.Now().UTC()
	st.Heartbeat = st.Started
	n, err := s.state.write(ctx, job.JobID, st, rev.rev)
	if err != nil {
		s.releaseRate(ctx, d)
		if errors.Is(err, errConflict) {
			_ = d.msg.NakWithDelay(time.Second)
			return false
		}
		s.later(d, 2*time.Second, "cannot record the attempt", err)
		return false
	}
	d.rev = revision{rev: n, created: time.Now()}
	if st.Attempt > 1 {
		if err := s.status(ctx, d, mailjob.StatusAccepted, st.Attempt, nil); err != nil {
			d.log.Warn("cannot publish the accepted event", zap.Error(err))
		}
	}

	return true
}

func (st *JobState) finalAttempt() int { return max(st.Attempt, 1) }

func cannotLookUp(attempt int, reason string) string {
	return fmt.Sprintf("the outcome of attempt %d is unknown (%s), and this mailbox's transport cannot look up sent mail: the job is not sent again, so that no one gets it twice; check whether it arrived and publish a new job if not", attempt, reason)
}

// send runs the transport while keeping the delivery alive (InProgress)
// and the job's claim fresh.
func (s *Sender) send(ctx context.Context, d *delivery, t outbound.Transport) (outbound.Result, error) {
	hbCtx, stop := context.WithCancel(ctx)
	var (
		wg sync.WaitGroup
		mu sync.Mutex
	)
	wg.Go(func() {
		tick := time.NewTicker(s.heartbeat)
		defer tick.Stop()
		for {
			select {
			case <-hbCtx.Done():
				return
			case <-tick.C:
			}
			_ = d.msg.InProgress()
			mu.Lock()
			st := *d.st
			st.Heartbeat = time.Now().UTC()
			n, err := s.state.write(hbCtx, d.job.JobID, &st, d.rev.rev)
			switch {
			case err == nil:
				d.rev = revision{rev: n, created: time.Now()}
			case errors.Is(err, errConflict):
				d.log.Warn("another replica took the job over while it was being sent", zap.Error(err))
			case hbCtx.Err() == nil:
				d.log.Warn("cannot renew the job's claim", zap.Error(err))
			}
			mu.Unlock()
		}
	})
	res, err := t.Send(ctx, d.job, s.openAttachment)
	stop()
	wg.Wait()
	return res, err
}

// sent records a successful send: window, state, sent event, ack.
func (s *Sender) sent(ctx context.Context, d *delivery, res outbound.Result) {
	bg, cancel := context.WithTimeout(context.WithoutCancel(ctx), bookkeeping)
	defer cancel()
	if err := s.rates.commit(bg, d.mb.rateKey, d.job.JobID, d.job.Recipients(), d.mb.limit); err != nil {
		d.log.Warn("cannot count the send in the rate window", zap.Error(err))
	}
	st := d.st
	st.Phase = PhaseSent
	st.MessageID = res.InternetMessageID
	st.ReasonCode, st.Reason = "", ""
	var err error
	for try := 0; try < 3; try++ {
		if _, err = s.state.put(bg, d.job.JobID, st); err == nil {
			break
		}
		sleepCtx(bg, 200*time.Millisecond)
	}
	if err != nil {
		d.log.Error("the job was sent, but its state could not be recorded", zap.Error(err))
	}
	if err := s.status(bg, d, mailjob.StatusSent, st.Attempt, func(e *mailjob.StatusEvent) { e.InternetMessageID = res.InternetMessageID }); err != nil {
		// Not acknowledged: the redelivery finds the state sent and
		// publishes the event then.
		s.later(d, 2*time.Second, "sent, but the sent event could not be published", err)
		return
	}
	if s.hooks.beforeAck != nil && s.hooks.beforeAck(d.job.JobID) {
		return
	}
	s.ack(bg, d)
	result := "sent"
	if res.AlreadySent {
		result = "already_sent"
	}
	s.metrics.job(d.name, result)
	d.log.Info("job sent", zap.Int("attempt", st.Attempt), zap.String("internet_message_id", res.InternetMessageID),
		zap.Bool("already_sent", res.AlreadySent))
}

// failed decides what a failed attempt means: wait and retry, or give up.
func (s *Sender) failed(ctx context.Context, d *delivery, serr error) {
	bg, cancel := context.WithTimeout(context.WithoutCancel(ctx), bookkeeping)
	defer cancel()
	st := d.st
	kind := outbound.KindOf(serr)
	var oe *outbound.Error
	if !errors.As(serr, &oe) && ctx.Err() != nil {
		// Cut off by the shutdown deadline: the request may have left.
		kind = outbound.Ambiguous
	}
	code := outbound.ReasonOf(serr)
	reason := oneLine(serr.Error())
	if kind == outbound.Auth && code == mailjob.ReasonAuthFailed {
		kind = outbound.Transient // no token now: try again later
	}
	attempt := st.Attempt
	switch kind {
	case outbound.Permanent, outbound.Auth:
		s.releaseRate(bg, d)
		s.giveUp(bg, d, attempt, code, reason)
		return
	case outbound.Throttled:
		s.releaseRate(bg, d)
		wait := oe.RetryAfter
		if wait <= 0 {
			wait = s.backoff(1)
		}
		if err := s.rates.pause(bg, d.mb.rateKey, wait, d.mb.limit); err != nil {
			d.log.Warn("cannot pause the mailbox's rate window", zap.Error(err))
		}
		s.metrics.attemptFailed(d.name, "throttled")
		s.metrics.rateWait(d.name, wait)
		st.Phase = PhaseAccepted
		s.retry(bg, d, code, reason, wait)
		return
	case outbound.Ambiguous:
		// Perhaps sent: it counts in the window.
		if err := s.rates.commit(bg, d.mb.rateKey, d.job.JobID, d.job.Recipients(), d.mb.limit); err != nil {
			d.log.Warn("cannot count the send in the rate window", zap.Error(err))
		}
		st.Failures++
		if !d.mb.LooksUp {
			st.ReasonCode, st.Reason = code, reason
			s.giveUp(bg, d, attempt, code, cannotLookUp(attempt, reason))
			return
		}
		s.metrics.attemptFailed(d.name, "ambiguous")
		st.Phase = PhaseAmbiguous
	default: // Transient, and auth_failed
		s.releaseRate(bg, d)
		st.Failures++
		st.Phase = PhaseAccepted
		s.metrics.attemptFailed(d.name, kind.String())
	}
	if st.Failures >= s.cfg.Consumer.MaxDeliver {
		s.giveUp(bg, d, attempt, mailjob.ReasonAttemptsExhausted,
			fmt.Sprintf("%d attempts failed; the last: %s", st.Failures, reason))
		return
	}
	wait := s.backoff(st.Failures)
	if ctx.Err() != nil {
		// This replica is stopping: let another one take the job now.
		wait = 0
	}
	s.retry(bg, d, code, reason, wait)
}

// retry records a failed attempt that will be repeated after wait.
func (s *Sender) retry(ctx context.Context, d *delivery, code, reason string, wait time.Duration) {
	st := d.st
	st.ReasonCode, st.Reason = code, reason
	st.Holder = ""
	if _, err := s.state.put(ctx, d.job.JobID, st); err != nil {
		d.log.Warn("cannot record the failed attempt", zap.Error(err))
	}
	if err := s.status(ctx, d, mailjob.StatusFailed, st.Attempt, func(e *mailjob.StatusEvent) {
		e.Reason, e.ReasonCode = reason, code
	}); err != nil {
		d.log.Warn("cannot publish the failed event", zap.Error(err))
	}
	d.log.Warn("attempt failed; the job will be tried again", zap.Int("attempt", st.Attempt), zap.Int("failures", st.Failures),
		zap.String("reason_code", code), zap.String("reason", reason), zap.Duration("retry_in", wait))
	if wait <= 0 {
		_ = d.msg.Nak()
		return
	}
	_ = d.msg.NakWithDelay(wait)
}

// giveUp ends a job for good: dead letter, final failed event, state,
// termination, in that order, so that a crash in between only repeats
// what is de-duplicated (the dead letter's and event's ids).
func (s *Sender) giveUp(ctx context.Context, d *delivery, attempt int, code, reason string) {
	if code == "" {
		code = mailjob.ReasonInternal
	}
	if err := s.deadLetter(ctx, d, code, reason); err != nil {
		s.later(d, 5*time.Second, "cannot publish the dead letter", err)
		return
	}
	if d.jobID != "" {
		if err := s.status(ctx, d, mailjob.StatusFailed, attempt, func(e *mailjob.StatusEvent) {
			e.Permanent = true
			e.Reason, e.ReasonCode = reason, code
		}); err != nil {
			s.later(d, 5*time.Second, "cannot publish the failed event", err)
			return
		}
	}
	if d.st != nil {
		st := d.st
		st.Phase = PhaseFailed
		st.ReasonCode, st.Reason = code, reason
		st.Holder = ""
		if st.Attempt < attempt {
			st.Attempt = attempt
		}
		if _, err := s.state.put(ctx, d.job.JobID, st); err != nil {
			d.log.Warn("cannot record the failure", zap.Error(err))
		}
	}
	if err := d.msg.TermWithReason(code); err != nil {
		d.log.Warn("cannot terminate the job message", zap.Error(err))
	}
	result := "failed"
	if d.st == nil {
		result = "rejected"
	}
	s.metrics.job(d.name, result)
	d.log.Warn("job failed for good", zap.String("reason_code", code), zap.String("reason", reason), zap.Int("attempt", attempt))
}

// deadLetter publishes the job message as received, with the dead-letter
// type and id and the reason headers.
func (s *Sender) deadLetter(ctx context.Context, d *delivery, code, reason string) error {
	src := d.msg
	m := nats.NewMsg(mailjob.DeadLetterSubject(s.cfg.Streams.DeadLetter.SubjectPrefix, src.Subject()))
	for k, v := range src.Headers() {
		m.Header[k] = append([]string(nil), v...)
	}
	id := d.jobID
	if id == "" {
		id = fmt.Sprintf("seq-%d", d.md.Sequence.Stream)
	}
	m.Header.Set(mailjob.HeaderType, mailjob.TypeDeadLetter)
	m.Header.Set(mailjob.HeaderID, mailjob.DeadLetterIDPrefix+id)
	m.Header.Set(mailjob.HeaderMsgID, mailjob.DeadLetterIDPrefix+id)
	m.Header.Set(mailjob.HeaderReason, headerValue(reason, 4000))
	m.Header.Set(mailjob.HeaderReasonCode, code)
	m.Data = src.Data()
	opts := []jetstream.PublishOpt{jetstream.WithExpectStream(s.cfg.Streams.DeadLetter.Name)}
	_, err := s.js.PublishMsg(ctx, m, opts...)
	if err != nil && len(m.Data) > 0 && isTooLarge(err) {
		// The job was at the size limit: keep the headers.
		m.Data = nil
		m.Header.Set(mailjob.HeaderReason, headerValue(reason+" (the job's payload was too large to keep here)", 4000))
		_, err = s.js.PublishMsg(ctx, m, opts...)
	}
	if err != nil {
		return fmt.Errorf("publish dead letter %s: %w", m.Subject, err)
	}
	return nil
}

func isTooLarge(err error) bool {
	var apiErr *jetstream.APIError
	return errors.Is(err, nats.ErrMaxPayload) ||
		(errors.As(err, &apiErr) && apiErr.ErrorCode == jetstream.JSErrCodeStreamMessageExceedsMaximum)
}

// status publishes an event of the job.
func (s *Sender) status(ctx context.Context, d *delivery, typ mailjob.StatusType, attempt int, edit func(*mailjob.StatusEvent)) error {
	if d.jobID == "" {
		return nil
	}
	ev := &mailjob.StatusEvent{JobID: d.jobID, Type: typ, Attempt: max(attempt, 1)}
	if d.job != nil {
		if mailjob.AddressProblem(d.job.From) == "" {
			ev.From = d.job.From
		}
		ev.Correlation = d.job.Correlation
	}
	if edit != nil {
		edit(ev)
	}
	_, err := mailjob.PublishStatus(ctx, s.js, ev,
		mailjob.WithSubjectPrefix(s.cfg.Streams.Status.SubjectPrefix), mailjob.WithStream(s.cfg.Streams.Status.Name))
	if err != nil && ev.Correlation != nil {
		// A correlation that breaks the rules (an invalid job's) must not
		// keep the event from being published.
		ev.Correlation = nil
		_, err = mailjob.PublishStatus(ctx, s.js, ev,
			mailjob.WithSubjectPrefix(s.cfg.Streams.Status.SubjectPrefix), mailjob.WithStream(s.cfg.Streams.Status.Name))
	}
	return err
}

func (s *Sender) ack(ctx context.Context, d *delivery) {
	if err := d.msg.DoubleAck(ctx); err != nil {
		// The state says sent: a redelivery is acknowledged without
		// sending.
		d.log.Warn("cannot acknowledge the job", zap.Error(err))
	}
}

// later puts the message back because of a problem of the sender's own
// (NATS, the state bucket); it is no attempt.
func (s *Sender) later(d *delivery, wait time.Duration, what string, err error) {
	d.log.Warn(what+"; the job will be taken again", zap.Error(err), zap.Duration("retry_in", wait))
	_ = d.msg.NakWithDelay(wait)
}

func (s *Sender) releaseRate(ctx context.Context, d *delivery) {
	if err := s.rates.release(ctx, d.mb.rateKey, d.job.JobID, d.mb.limit); err != nil {
		d.log.Warn("cannot release the rate reservation (it expires on its own)", zap.Error(err))
	}
}

// oneLine makes s fit for a status event's reason and a header.
func oneLine(s string) string {
	return strings.Join(strings.FieldsFunc(s, func(r rune) bool { return r == '\r' || r == '\n' }), " ")
}

func headerValue(s string, n int) string {
	s = oneLine(s)
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n] + "…"
}
