// Package importer runs the per-mailbox import loop: list the import
// folder, stream each message, publish it to JetStream, and only after the
// PubAck move it to the processed folder. Messages that cannot be handled
// go to a dead-letter subject and the error folder, with the reason.
//
// Exactly-once publishing rests on three things: the Nats-Msg-Id is derived
// from the message's identity in its folder (mailbox.Ref.DedupID), so a
// message published again after a crash between PubAck and move is dropped
// by JetStream's duplicate window; a message is only moved after its PubAck;
// and moves are idempotent. A UIDVALIDITY change (new identities for the
// same mail) is bridged by the SHA-256 of each published body.
package importer

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"strconv"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/mailpipe/mailpipe/internal/bus"
	"github.com/mailpipe/mailpipe/internal/config"
	"github.com/mailpipe/mailpipe/internal/mailbox"
)

// Bus is what the importer needs from the message bus (*bus.Bus).
type Bus interface {
	PublishMail(ctx context.Context, env bus.Envelope, body []byte) (*bus.Pending, error)
	PublishLargeMail(ctx context.Context, env bus.Envelope, r io.Reader) (bus.PublishResult, error)
	PublishDeadLetter(ctx context.Context, dl bus.DeadLetter) error
	FolderValidity(ctx context.Context, mailbox, folder string) (uint32, bool, error)
	SetFolderValidity(ctx context.Context, mailbox, folder string, v uint32) error
	RecentDigests(ctx context.Context, mailbox string, since time.Time) (map[string]bool, error)
}

// Settings are the bus-side knobs a worker needs.
type Settings struct {
	// LargeThreshold: bodies above it go through the object store.
	LargeThreshold int64
	// DuplicateWindow of the inbound stream (for the UIDVALIDITY bridge).
	DuplicateWindow time.Duration
	// Batch is how many messages one fetch/publish/move round covers
	// (imap.fetch_batch, graph.page_size).
	Batch int
	// ListLimit bounds one listing (0: 10 × batch).
	ListLimit int
}

// Worker imports one mailbox. Run it from one goroutine.
type Worker struct {
	cfg config.Mailbox
	src mailbox.Source
	// mover, when set, is a second connection to the same mailbox that
	// moves batch k while src fetches batch k+1 (see SetMover).
	mover    mailbox.Source
	bus      Bus
	set      Settings
	log      *zap.Logger
	stats    *Stats
	bufs     sync.Pool
	sourceID string // "imap" or "graph"
}

// NewWorker returns a worker for mailbox cfg reading from src.
func NewWorker(cfg config.Mailbox, src mailbox.Source, b Bus, set Settings, log *zap.Logger, stats *Stats) *Worker {
	if set.Batch <= 0 {
		set.Batch = max(cfg.IMAP.FetchBatch, 1)
	}
	if set.ListLimit <= 0 {
		set.ListLimit = 10 * max(set.Batch, 100)
	}
	if stats == nil {
		stats = NewStats()
	}
	return &Worker{cfg: cfg, src: src, bus: b, set: set, stats: stats, sourceID: cfg.Source,
		log: log.With(zap.String("mailbox", cfg.Name))}
}

// SetMover makes the worker move messages through mover, a second Source
// for the same mailbox (its own connection), so that the moves of one batch
// overlap with the fetch and publish of the next instead of stalling the
// pipeline: on a local server this hides about a third of the import time.
// The rules are unchanged: a message is moved only after its PubAck; at
// most one batch's moves are in progress; a pass waits for its last moves
// before it returns (so the next listing never sees mail being moved), also
// when it stops early. Without a mover, moves run in line on the source.
// The worker uses mover from one goroutine at a time; the caller closes it.
func (w *Worker) SetMover(mover mailbox.Source) { w.mover = mover }

// PassResult counts what one pass did.
type PassResult struct {
	Listed, Published, Duplicates, Failed, Moved int
}

// Run imports until soft ends. With once it returns when the import folder
// is empty (nil) or on an error that persists after retries.
//
// Shutdown has two phases: when soft ends no new batch starts; the batch in
// progress goes on with hard (which the caller cancels after its shutdown
// deadline), so acknowledged messages are still moved and nothing
// unacknowledged is.
//
// Errors are retried with backoff: throttling waits the server's
// suggestion; auth and configuration problems (folder missing) wait longer
// and are logged each time, so an operator sees them.
func (w *Worker) Run(soft, hard context.Context, once bool) error {
	ctx := soft
	failures := 0
	for {
		res, err := w.Pass(soft, hard)
		if ctx.Err() != nil {
			return nil
		}
		if err != nil {
			failures++
			w.stats.pollFailed(w.cfg.Name)
			wait := backoff(err, failures)
			w.log.Error("import pass failed", zap.Error(err), zap.String("kind", mailbox.KindOf(err).String()),
				zap.Duration("retry_in", wait), zap.Int("attempt", failures))
			if once && (failures >= 5 || mailbox.KindOf(err) == mailbox.Auth || mailbox.KindOf(err) == mailbox.NotFound) {
				return err
			}
			if !sleep(ctx, wait) {
				return nil
			}
			continue
		}
		failures = 0
		w.stats.pollOK(w.cfg.Name)
		if res.Listed > 0 {
			w.log.Info("import pass done", zap.Int("listed", res.Listed), zap.Int("published", res.Published),
				zap.Int("duplicates", res.Duplicates), zap.Int("failed", res.Failed), zap.Int("moved", res.Moved))
			continue // more may be waiting: list again at once
		}
		if once {
			return nil
		}
		if !sleep(ctx, w.cfg.PollInterval) {
			return nil
		}
	}
}

// backoff picks the wait before retrying after err (attempt >= 1).
func backoff(err error, attempt int) time.Duration {
	if ra := mailbox.RetryAfterOf(err); ra > 0 {
		return ra
	}
	base := time.Second << min(attempt-1, 6) // 1s .. 64s
	switch mailbox.KindOf(err) {
	case mailbox.Auth, mailbox.NotFound:
		base = 30 * time.Second << min(attempt-1, 3) // 30s .. 4m
	}
	return base/2 + rand.N(base/2+1)
}

func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// Pass lists the import folder once and handles what it found, batch by
// batch. It returns after the listing is handled; Run calls it again.
func (w *Worker) Pass(soft, hard context.Context) (res PassResult, err error) {
	if soft.Err() != nil {
		return res, nil
	}
	ctx := hard
	var moving pendingMove
	// Whatever ends the pass, the moves in progress are waited for.
	defer func() { err = errors.Join(err, w.finishMove(&moving, &res)) }()
	listing, err := w.src.List(ctx, w.set.ListLimit)
	if err != nil {
		return res, err
	}
	res.Listed = len(listing.Refs)
	bridge, changed, err := w.validityBridge(ctx, listing)
	if err != nil {
		return res, err
	}
	batch := w.set.Batch
	for i := 0; i < len(listing.Refs); i += batch {
		if soft.Err() != nil {
			return res, nil
		}
		end := min(i+batch, len(listing.Refs))
		if err := w.batch(ctx, listing.Refs[i:end], bridge, &res, &moving); err != nil {
			return res, err
		}
	}
	if err := w.finishMove(&moving, &res); err != nil {
		return res, err
	}
	// Every message listed under the new UIDVALIDITY is handled: remember
	// it, so the bridge is not needed any more.
	for _, f := range changed {
		if err := w.bus.SetFolderValidity(ctx, w.cfg.Name, f, listing.Validity[f]); err != nil {
			return res, fmt.Errorf("store uidvalidity of folder %q: %w", f, err)
		}
	}
	return res, nil
}

// validityBridge compares each folder's UIDVALIDITY with the stored one.
// For changed folders it returns the digests of mail published recently, so
// mail already published under its old identity is moved, not republished.
func (w *Worker) validityBridge(ctx context.Context, l mailbox.Listing) (map[string]bool, []string, error) {
	var changed []string
	for folder, v := range l.Validity {
		stored, ok, err := w.bus.FolderValidity(ctx, w.cfg.Name, folder)
		if err != nil {
			return nil, nil, fmt.Errorf("read uidvalidity of folder %q: %w", folder, err)
		}
		if !ok {
			if err := w.bus.SetFolderValidity(ctx, w.cfg.Name, folder, v); err != nil {
				return nil, nil, fmt.Errorf("store uidvalidity of folder %q: %w", folder, err)
			}
			continue
		}
		if stored != v {
			w.log.Warn("folder UIDVALIDITY changed: messages get new identities; skipping those already published (by SHA-256)",
				zap.String("folder", folder), zap.Uint32("old", stored), zap.Uint32("new", v))
			changed = append(changed, folder)
		}
	}
	if len(changed) == 0 {
		return nil, nil, nil
	}
	digests, err := w.bus.RecentDigests(ctx, w.cfg.Name, time.Now().Add(-w.set.DuplicateWindow))
	if err != nil {
		return nil, nil, fmt.Errorf("read recent digests: %w", err)
	}
	return digests, changed, nil
}

// inflight is a message fetched and published, waiting for its PubAck.
type inflight struct {
	ref     mailbox.Ref
	env     bus.Envelope
	pending *bus.Pending
	buf     *[]byte
}

// pendingMove is a batch's moves running on the mover.
type pendingMove struct {
	done                 chan struct{}
	toProcessed, toError []mailbox.Ref
	movedProcessed       bool // toProcessed moved
	movedError           bool // toError moved
	err                  error
}

// startMove moves toProcessed and then toError: on the mover in the
// background when there is one (finishMove collects the outcome), else in
// line.
func (w *Worker) startMove(ctx context.Context, m *pendingMove, toProcessed, toError []mailbox.Ref) {
	*m = pendingMove{done: make(chan struct{}), toProcessed: toProcessed, toError: toError}
	run := func(src mailbox.Source) {
		defer close(m.done)
		if err := src.Move(ctx, toProcessed, mailbox.ToProcessed); err != nil {
			m.err = fmt.Errorf("move %d messages to processed folder: %w", len(toProcessed), err)
			return
		}
		m.movedProcessed = true
		if err := src.Move(ctx, toError, mailbox.ToError); err != nil {
			m.err = fmt.Errorf("move %d messages to error folder: %w", len(toError), err)
			return
		}
		m.movedError = true
	}
	if w.mover == nil {
		run(w.src)
		return
	}
	go run(w.mover)
}

// finishMove waits for the moves started last (if any), counts what was
// moved and returns the move's error. The wait is not bounded by a
// context: Move itself is (the ctx given to startMove, and the source's
// timeout).
func (w *Worker) finishMove(m *pendingMove, res *PassResult) error {
	if m.done == nil {
		return nil
	}
	<-m.done
	processed, failed := 0, 0
	if m.movedProcessed {
		processed = len(m.toProcessed)
	}
	if m.movedError {
		failed = len(m.toError)
	}
	res.Moved += processed
	res.Failed += failed
	w.stats.add(w.cfg.Name, processed, failed)
	err := m.err
	*m = pendingMove{}
	return err
}

// batch handles one batch: fetch (streamed) → publish (async, bounded) →
// wait for every PubAck → one move per destination. The moves of the
// previous batch are waited for before this batch's start; with a mover,
// this batch's moves are left running when batch returns.
func (w *Worker) batch(ctx context.Context, refs []mailbox.Ref, bridge map[string]bool, res *PassResult, moving *pendingMove) error {
	var (
		toProcessed, toError []mailbox.Ref
		waiting              []inflight
		fetch                []mailbox.Ref
		// waiting[:released] have had their buffers returned to the
		// pool: a buffer is reused as soon as its PubAck is in, so a
		// batch holds about max_in_flight buffers, not one per message.
		released int
	)
	release := func() {
		for ; released < len(waiting); released++ {
			f := &waiting[released]
			select {
			case <-f.pending.Done():
				w.putBuf(f.buf)
				f.buf = nil
			default:
				return
			}
		}
	}
	// Over-size mail is rejected from its listed size without fetching it.
	for _, r := range refs {
		if w.cfg.MaxMessageSize > 0 && r.Size > int64(w.cfg.MaxMessageSize) {
			reason := fmt.Sprintf("message is %d bytes, over the limit of %d bytes (mailboxes[%s].max_message_size)", r.Size, int64(w.cfg.MaxMessageSize), w.cfg.Name)
			if err := w.deadLetter(ctx, w.envelope(r, headerFields{}, r.Size), reason, nil); err != nil {
				return err
			}
			toError = append(toError, r)
			continue
		}
		fetch = append(fetch, r)
	}

	fetchErr := w.src.Fetch(ctx, fetch, func(m *mailbox.Message) error {
		// The listed size can be smaller than the MIME (Graph lists the
		// store size): check the exact size too, before reading the body.
		if w.cfg.MaxMessageSize > 0 && m.Size > int64(w.cfg.MaxMessageSize) {
			reason := fmt.Sprintf("message is %d bytes, over the limit of %d bytes (mailboxes[%s].max_message_size)", m.Size, int64(w.cfg.MaxMessageSize), w.cfg.Name)
			if err := w.deadLetter(ctx, w.envelope(m.Ref, headerFields{}, m.Size), reason, nil); err != nil {
				return err
			}
			toError = append(toError, m.Ref)
			return nil
		}
		if m.Size <= w.set.LargeThreshold {
			release()
			bp := w.getBuf(m.Size)
			n, err := io.ReadFull(m.Body, *bp)
			if err != nil {
				w.putBuf(bp)
				return fmt.Errorf("read %s: %w (after %d of %d bytes)", m.Ref, err, n, m.Size)
			}
			body := (*bp)[:n]
			env := w.envelope(m.Ref, parseHeader(body[:max(headerEnd(body), 0)+headerFallback(body)]), int64(n))
			sum := sha256.Sum256(body)
			env.SHA256 = hex.EncodeToString(sum[:])
			if bridge != nil && bridge[env.SHA256] {
				w.putBuf(bp)
				res.Duplicates++
				toProcessed = append(toProcessed, m.Ref)
				return nil
			}
			p, err := w.bus.PublishMail(ctx, env, body)
			if err != nil {
				w.putBuf(bp)
				if errors.Is(err, bus.ErrRejected) {
					if derr := w.deadLetter(ctx, env, err.Error(), body); derr != nil {
						return derr
					}
					toError = append(toError, m.Ref)
					return nil
				}
				return err
			}
			waiting = append(waiting, inflight{ref: m.Ref, env: env, pending: p, buf: bp})
			return nil
		}
		// Large: stream to the object store; the header is parsed from
		// the first bytes on the way.
		head, rest, err := readHead(m.Body)
		if err != nil {
			return fmt.Errorf("read %s: %w", m.Ref, err)
		}
		env := w.envelope(m.Ref, parseHeader(head), m.Size)
		body := io.MultiReader(bytes.NewReader(head), rest)
		if bridge != nil {
			// The digest must be known before publishing: spool to disk
			// (memory stays bounded), hash, then publish from the file.
			spool, sum, err := spoolAndHash(body)
			if err != nil {
				return fmt.Errorf("spool %s: %w", m.Ref, err)
			}
			defer spool.Close()
			if bridge[sum] {
				res.Duplicates++
				toProcessed = append(toProcessed, m.Ref)
				return nil
			}
			body = spool
		}
		r, err := w.bus.PublishLargeMail(ctx, env, body)
		if err != nil {
			if errors.Is(err, bus.ErrRejected) {
				if derr := w.deadLetter(ctx, env, err.Error(), nil); derr != nil {
					return derr
				}
				toError = append(toError, m.Ref)
				return nil
			}
			return err
		}
		w.count(r.Duplicate, res)
		toProcessed = append(toProcessed, m.Ref)
		return nil
	})

	// Collect every PubAck, even when the fetch failed half-way: what was
	// acknowledged can still be moved.
	var ackErr error
	for _, f := range waiting {
		r, err := f.pending.Wait(ctx)
		w.putBuf(f.buf)
		switch {
		case err == nil:
			w.count(r.Duplicate, res)
			toProcessed = append(toProcessed, f.ref)
		case errors.Is(err, bus.ErrRejected):
			if derr := w.deadLetter(ctx, f.env, err.Error(), nil); derr != nil {
				ackErr = errors.Join(ackErr, derr)
				continue
			}
			toError = append(toError, f.ref)
		default:
			// Not acknowledged: leave it in the import folder; the next
			// pass publishes it again under the same Nats-Msg-Id.
			ackErr = errors.Join(ackErr, fmt.Errorf("publish %s: %w", f.ref, err))
		}
	}
	// One batch's moves at a time, in order.
	if err := w.finishMove(moving, res); err != nil {
		// The previous batch's moves failed (connection lost...): stop
		// the pass; this batch stays in the import folder and is
		// published again (as duplicates) and moved by the next pass.
		return errors.Join(err, fetchErr, ackErr)
	}
	w.startMove(ctx, moving, toProcessed, toError)
	if w.mover == nil {
		if err := w.finishMove(moving, res); err != nil {
			return err
		}
	}
	return errors.Join(fetchErr, ackErr)
}

// headerFallback: when no blank line ends the header (a message that is
// all header), parse all of it.
func headerFallback(b []byte) int {
	if headerEnd(b) < 0 {
		return len(b)
	}
	return 0
}

func (w *Worker) count(dup bool, res *PassResult) {
	if dup {
		res.Duplicates++
	} else {
		res.Published++
	}
}

func (w *Worker) envelope(r mailbox.Ref, h headerFields, size int64) bus.Envelope {
	sid := r.ID
	if sid == "" {
		sid = strconv.FormatUint(uint64(r.UIDValidity), 10) + "/" + strconv.FormatUint(uint64(r.UID), 10)
	}
	return bus.Envelope{
		DedupID: r.DedupID(), Mailbox: r.Mailbox, Address: w.cfg.Address, Folder: r.Folder,
		Source: w.sourceID, SourceID: sid,
		MessageID: h.MessageID, From: h.From, Subject: h.Subject, Date: h.Date,
		Received: r.Received, Size: size,
	}
}

// deadLetter publishes a dead letter and logs the reason once.
func (w *Worker) deadLetter(ctx context.Context, env bus.Envelope, reason string, body []byte) error {
	if int64(len(body)) > w.set.LargeThreshold {
		body = nil
	}
	w.log.Warn("message cannot be imported; moving it to the error folder",
		zap.String("folder", env.Folder), zap.String("source_id", env.SourceID),
		zap.String("msg_id", env.MessageID), zap.String("reason", reason))
	if err := w.bus.PublishDeadLetter(ctx, bus.DeadLetter{Envelope: env, Reason: reason, Body: body}); err != nil {
		return fmt.Errorf("publish dead letter for %s: %w", env.SourceID, err)
	}
	return nil
}

func (w *Worker) getBuf(size int64) *[]byte {
	if v := w.bufs.Get(); v != nil {
		bp := v.(*[]byte)
		if int64(cap(*bp)) >= size {
			*bp = (*bp)[:size]
			return bp
		}
	}
	b := make([]byte, size, max(size, 64<<10))
	return &b
}

func (w *Worker) putBuf(bp *[]byte) {
	if bp != nil && cap(*bp) <= int(w.set.LargeThreshold)+1 {
		w.bufs.Put(bp)
	}
}

// spoolFile is a temporary file removed on Close.
type spoolFile struct{ *os.File }

func (f spoolFile) Close() error {
	err := f.File.Close()
	os.Remove(f.Name())
	return err
}

// spoolAndHash copies r to a temporary file and returns it rewound, with the
// hex SHA-256 of the content.
func spoolAndHash(r io.Reader) (spoolFile, string, error) {
	f, err := os.CreateTemp("", "mailpipe-spool-*")
	if err != nil {
		return spoolFile{}, "", err
	}
	sf := spoolFile{f}
	h := sha256.New()
	if _, err := io.Copy(io.MultiWriter(f, h), r); err != nil {
		sf.Close()
		return spoolFile{}, "", err
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		sf.Close()
		return spoolFile{}, "", err
	}
	return sf, hex.EncodeToString(h.Sum(nil)), nil
}
