package bus

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/mailpipe/mailpipe/pkg/mailmsg"
)

var kvToken = regexp.MustCompile(`^[-_=a-zA-Z0-9]+$`)

// validityKey is "uidvalidity.<mailbox>.<base64url(folder)>": folder names
// may hold any character, KV keys only [-/_=.a-zA-Z0-9].
func validityKey(mailbox, folder string) (string, error) {
	if !kvToken.MatchString(mailbox) {
		return "", fmt.Errorf("bus: mailbox name %q cannot be used in a state key", mailbox)
	}
	if folder == "" {
		return "", errors.New("bus: empty folder name")
	}
	return "uidvalidity." + mailbox + "." + base64.RawURLEncoding.EncodeToString([]byte(folder)), nil
}

// FolderValidity returns the UIDVALIDITY last recorded for a folder, and
// false when none is recorded.
func (b *Bus) FolderValidity(ctx context.Context, mailbox, folder string) (uint32, bool, error) {
	key, err := validityKey(mailbox, folder)
	if err != nil {
		return 0, false, err
	}
	e, err := b.kv.Get(ctx, key)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return 0, false, nil
	}
	if err != nil {
		return 0, false, fmt.Errorf("bus: state %s: %w", key, classify(err))
	}
	v, err := strconv.ParseUint(string(e.Value()), 10, 32)
	if err != nil {
		return 0, false, fmt.Errorf("bus: state %s holds %q, not a UIDVALIDITY", key, e.Value())
	}
	return uint32(v), true, nil
}

// SetFolderValidity records the UIDVALIDITY of a folder.
func (b *Bus) SetFolderValidity(ctx context.Context, mailbox, folder string, v uint32) error {
	key, err := validityKey(mailbox, folder)
	if err != nil {
		return err
	}
	if _, err := b.kv.Put(ctx, key, strconv.AppendUint(nil, uint64(v), 10)); err != nil {
		return fmt.Errorf("bus: state %s: %w", key, classify(err))
	}
	return nil
}

// KeyValue returns the state bucket, for other importer state (leases).
func (b *Bus) KeyValue() jetstream.KeyValue { return b.kv }

// RecentDigests returns the Mailpipe-Sha256 values of the mail published
// for mailbox since the given time (by stream timestamp). It reads headers
// only. Used after a UIDVALIDITY change to avoid publishing again the mail
// already published under the old identities.
func (b *Bus) RecentDigests(ctx context.Context, mailbox string, since time.Time) (map[string]bool, error) {
	if !validToken(mailbox) {
		return nil, fmt.Errorf("bus: mailbox name %q is not a valid subject token", mailbox)
	}
	set := make(map[string]bool)
	err := scan(ctx, b.js, b.inbound, b.Subject(mailbox), since, true, func(m jetstream.Msg) {
		if d := m.Headers().Get(mailmsg.HeaderSHA256); d != "" {
			set[d] = true
		}
	})
	if err != nil {
		return nil, err
	}
	return set, nil
}

// CountMessages is the number of messages of a mailbox in the inbound stream.
func (b *Bus) CountMessages(ctx context.Context, mailbox string) (uint64, error) {
	return countSubject(ctx, b.inbound, b.Subject(mailbox))
}

// CountDeadLetters is the number of dead letters of a mailbox.
func (b *Bus) CountDeadLetters(ctx context.Context, mailbox string) (uint64, error) {
	return countSubject(ctx, b.dead, b.DeadLetterSubject(mailbox))
}

// Messages returns every message of a mailbox in the inbound stream, in
// order. It holds them all in memory: for tests and small checks.
func (b *Bus) Messages(ctx context.Context, mailbox string) ([]jetstream.Msg, error) {
	var out []jetstream.Msg
	err := scan(ctx, b.js, b.inbound, b.Subject(mailbox), time.Time{}, false, func(m jetstream.Msg) { out = append(out, m) })
	return out, err
}

// DeadLetters returns every dead letter of a mailbox, in order (tests).
func (b *Bus) DeadLetters(ctx context.Context, mailbox string) ([]jetstream.Msg, error) {
	var out []jetstream.Msg
	err := scan(ctx, b.js, b.dead, b.DeadLetterSubject(mailbox), time.Time{}, false, func(m jetstream.Msg) { out = append(out, m) })
	return out, err
}

func countSubject(ctx context.Context, s jetstream.Stream, subject string) (uint64, error) {
	info, err := s.Info(ctx, jetstream.WithSubjectFilter(subject))
	if err != nil {
		return 0, fmt.Errorf("bus: stream info: %w", classify(err))
	}
	return info.State.Subjects[subject], nil
}

// scanIdle bounds the wait for the next message of a scan; it only matters
// when messages expire while being scanned.
const scanIdle = 5 * time.Second

// scan passes fn the messages on subject from since (zero: all) up to the
// last one stored when the scan started, using an ordered consumer.
func scan(ctx context.Context, js jetstream.JetStream, s jetstream.Stream, subject string, since time.Time, headersOnly bool, fn func(jetstream.Msg)) error {
	name := s.CachedInfo().Config.Name
	last, err := s.GetLastMsgForSubject(ctx, subject)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("bus: last message of %s in %s: %w", subject, name, classify(err))
	}
	cfg := jetstream.OrderedConsumerConfig{
		FilterSubjects:    []string{subject},
		HeadersOnly:       headersOnly,
		InactiveThreshold: time.Minute,
	}
	if !since.IsZero() {
		if last.Time.Before(since) {
			return nil
		}
		cfg.DeliverPolicy = jetstream.DeliverByStartTimePolicy
		cfg.OptStartTime = &since
	}
	cons, err := js.OrderedConsumer(ctx, name, cfg)
	if err != nil {
		return fmt.Errorf("bus: consumer on %s: %w", name, classify(err))
	}
	it, err := cons.Messages()
	if err != nil {
		return fmt.Errorf("bus: consume %s: %w", name, classify(err))
	}
	defer it.Stop()
	for {
		nctx, cancel := context.WithTimeout(ctx, scanIdle)
		m, err := it.Next(jetstream.NextContext(nctx))
		cancel()
		if err != nil {
			if ctx.Err() == nil && errors.Is(err, context.DeadlineExceeded) {
				return nil // nothing more: the rest expired meanwhile
			}
			return fmt.Errorf("bus: scan %s in %s: %w", subject, name, classify(err))
		}
		fn(m)
		md, err := m.Metadata()
		if err != nil {
			return fmt.Errorf("bus: scan %s in %s: %w", subject, name, err)
		}
		if md.Sequence.Stream >= last.Sequence || md.NumPending == 0 {
			return nil
		}
	}
}
