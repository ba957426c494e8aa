package sender

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// Limit is a mailbox's sending limit: at most Messages mails per
// MessageWindow and Recipients recipients per RecipientWindow, both
// sliding, over all replicas.
type Limit struct {
	Messages        int
	MessageWindow   time.Duration
	Recipients      int
	RecipientWindow time.Duration
	// Grace: a reservation neither committed nor released within this long
	// (its replica died during the send) counts as a mail sent at its end.
	Grace time.Duration
}

// rcptBuckets is the number of buckets the recipient window is cut into:
// recipients are counted per bucket as if sent at the bucket's end, so
// that the state stays small (at most ~290 entries for 10,000 recipients
// a day) and errs on the safe side by at most one bucket (5 minutes of
// 24 hours).
const rcptBuckets = 288

// window is the value of a mailbox's rate key (rate.<mailbox token>).
type window struct {
	// Pending are reservations of sends in progress.
	Pending []reservation `json:"pending,omitempty"`
	// Sent are the completion times (Unix nanoseconds) of sends within the
	// message window.
	Sent []int64 `json:"sent,omitempty"`
	// Rcpt are the recipients of completed sends within the recipient
	// window, by bucket.
	Rcpt []bucket `json:"rcpt,omitempty"`
	// PauseUntil (Unix nanoseconds): Exchange said 429 with Retry-After.
	PauseUntil int64 `json:"pause_until,omitempty"`
}

type reservation struct {
	Job string `json:"job"`
	T   int64  `json:"t"`
	N   int    `json:"n"`
}

type bucket struct {
	Start int64 `json:"s"`
	N     int   `json:"n"`
}

func (l Limit) bucketSize() int64 {
	return max(int64(l.RecipientWindow)/rcptBuckets, int64(time.Millisecond))
}

// prune drops what left the windows and turns reservations older than
// the grace period into sends.
func (w *window) prune(now int64, l Limit) {
	keep := w.Pending[:0]
	for _, r := range w.Pending {
		if end := r.T + int64(l.Grace); end <= now {
			w.addSent(end, r.N, l)
			continue
		}
		keep = append(keep, r)
	}
	w.Pending = keep
	w.Sent = slices.DeleteFunc(w.Sent, func(t int64) bool { return t+int64(l.MessageWindow) <= now })
	bs := l.bucketSize()
	w.Rcpt = slices.DeleteFunc(w.Rcpt, func(b bucket) bool { return b.Start+bs+int64(l.RecipientWindow) <= now })
	if w.PauseUntil <= now {
		w.PauseUntil = 0
	}
}

func (w *window) addSent(t int64, n int, l Limit) {
	i, _ := slices.BinarySearch(w.Sent, t)
	w.Sent = slices.Insert(w.Sent, i, t)
	bs := l.bucketSize()
	start := t - t%bs
	for i := range w.Rcpt {
		if w.Rcpt[i].Start == start {
			w.Rcpt[i].N += n
			return
		}
	}
	i, _ = slices.BinarySearchFunc(w.Rcpt, start, func(b bucket, s int64) int { return cmpInt64(b.Start, s) })
	w.Rcpt = slices.Insert(w.Rcpt, i, bucket{Start: start, N: n})
}

func cmpInt64(a, b int64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

func (w *window) counts() (msgs, rcpts int) {
	msgs = len(w.Sent) + len(w.Pending)
	for _, b := range w.Rcpt {
		rcpts += b.N
	}
	for _, r := range w.Pending {
		rcpts += r.N
	}
	return msgs, rcpts
}

// wait is how long a send of n recipients must wait (0: it may go now);
// the window must be pruned.
func (w *window) wait(now int64, n int, l Limit) time.Duration {
	var wait int64
	if w.PauseUntil > now {
		wait = w.PauseUntil - now
	}
	msgs, rcpts := w.counts()
	if msgs+1 > l.Messages {
		var d int64
		if len(w.Sent) > 0 && len(w.Sent) >= msgs+1-l.Messages {
			// The oldest sends leave the window first.
			d = w.Sent[msgs-l.Messages] + int64(l.MessageWindow) - now
		} else {
			// Sends in progress hold the window: they complete, then
			// count for a whole window. Look again after the average
			// spacing.
			d = int64(l.MessageWindow) / int64(l.Messages)
		}
		wait = max(wait, d)
	}
	if need := rcpts + n - l.Recipients; need > 0 {
		d := int64(l.RecipientWindow) / rcptBuckets
		freed := 0
		for _, b := range w.Rcpt {
			freed += b.N
			if freed >= need {
				d = b.Start + l.bucketSize() + int64(l.RecipientWindow) - now
				break
			}
		}
		wait = max(wait, d)
	}
	if wait > 0 {
		return time.Duration(max(wait, int64(time.Millisecond)))
	}
	return 0
}

// windows keeps the mailboxes' windows in the state bucket; every change
// is a compare-and-set, so replicas share them.
type windows struct {
	kv  jetstream.KeyValue
	now func() time.Time
}

// RateKey is the state bucket key of a mailbox's window.
func RateKey(mailboxToken string) string { return "rate." + mailboxToken }

// errTooMany: the job has more recipients than the mailbox may send to in
// a whole window; it can never be sent.
var errTooMany = errors.New("more recipients than the mailbox may send to in its recipient window")

// update applies change to the window under key with compare-and-set,
// retrying on conflicts. change returns false to leave the window as it
// is (nothing is written).
func (ws windows) update(ctx context.Context, key string, l Limit, change func(w *window, now int64) bool) error {
	for try := 0; ; try++ {
		var (
			w   window
			rev uint64
		)
		e, err := ws.kv.Get(ctx, key)
		switch {
		case errors.Is(err, jetstream.ErrKeyNotFound):
		case err != nil:
			return fmt.Errorf("read rate window %s: %w", key, err)
		default:
			rev = e.Revision()
			if err := json.Unmarshal(e.Value(), &w); err != nil {
				// Unreadable (another version?): start afresh rather than
				// stop sending.
				w = window{}
			}
		}
		now := ws.now().UnixNano()
		w.prune(now, l)
		if !change(&w, now) {
			return nil
		}
		data, err := json.Marshal(&w)
		if err != nil {
			return err
		}
		if rev == 0 {
			_, err = ws.kv.Create(ctx, key, data)
		} else {
			_, err = ws.kv.Update(ctx, key, data, rev)
		}
		if err == nil {
			return nil
		}
		if !isCASConflict(err) {
			return fmt.Errorf("write rate window %s: %w", key, err)
		}
		if try >= 200 {
			return fmt.Errorf("write rate window %s: too much contention: %w", key, err)
		}
		// Another replica wrote in between: read again.
		t := time.NewTimer(time.Duration(rand.Int64N(int64(2*time.Millisecond) << min(try, 4))))
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
	}
}

// reserve books a send of n recipients for job: it returns 0 when booked,
// or how long to wait. A job that holds a reservation already (an earlier
// attempt that did not finish) keeps it.
func (ws windows) reserve(ctx context.Context, key, job string, n int, l Limit) (time.Duration, error) {
	if n > l.Recipients {
		return 0, errTooMany
	}
	var wait time.Duration
	err := ws.update(ctx, key, l, func(w *window, now int64) bool {
		wait = 0
		if slices.ContainsFunc(w.Pending, func(r reservation) bool { return r.Job == job }) {
			return false
		}
		if wait = w.wait(now, n, l); wait > 0 {
			return false
		}
		w.Pending = append(w.Pending, reservation{Job: job, T: now, N: n})
		return true
	})
	return wait, err
}

// commit turns job's reservation into a send completed now. Without a
// reservation (it outlived the grace period) the send is counted again:
// counting too much only slows sending down.
func (ws windows) commit(ctx context.Context, key, job string, n int, l Limit) error {
	return ws.update(ctx, key, l, func(w *window, now int64) bool {
		if i := slices.IndexFunc(w.Pending, func(r reservation) bool { return r.Job == job }); i >= 0 {
			n = w.Pending[i].N
			w.Pending = slices.Delete(w.Pending, i, i+1)
		}
		w.addSent(now, n, l)
		return true
	})
}

// release drops job's reservation: nothing was sent.
func (ws windows) release(ctx context.Context, key, job string, l Limit) error {
	return ws.update(ctx, key, l, func(w *window, _ int64) bool {
		i := slices.IndexFunc(w.Pending, func(r reservation) bool { return r.Job == job })
		if i < 0 {
			return false
		}
		w.Pending = slices.Delete(w.Pending, i, i+1)
		return true
	})
}

// pause stops sends from the mailbox for d (a 429's Retry-After).
func (ws windows) pause(ctx context.Context, key string, d time.Duration, l Limit) error {
	return ws.update(ctx, key, l, func(w *window, now int64) bool {
		if until := now + int64(d); until > w.PauseUntil {
			w.PauseUntil = until
			return true
		}
		return false
	})
}

// peek returns how many sends of one recipient the window admits now and,
// when none, how long until one is admitted. It writes nothing.
func (ws windows) peek(ctx context.Context, key string, l Limit) (room int, wait time.Duration, err error) {
	var w window
	e, err := ws.kv.Get(ctx, key)
	switch {
	case errors.Is(err, jetstream.ErrKeyNotFound):
	case err != nil:
		return 0, 0, fmt.Errorf("read rate window %s: %w", key, err)
	default:
		_ = json.Unmarshal(e.Value(), &w)
	}
	now := ws.now().UnixNano()
	w.prune(now, l)
	if wait = w.wait(now, 1, l); wait > 0 {
		return 0, wait, nil
	}
	msgs, rcpts := w.counts()
	return max(1, min(l.Messages-msgs, l.Recipients-rcpts)), 0, nil
}
