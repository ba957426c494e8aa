package sender

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/mailpipe/mailpipe/internal/config"
	"github.com/mailpipe/mailpipe/pkg/mailjob"
)

// jobStreamMaxMsg is the largest job message (docs/jobs.md: 1 MiB, headers
// included); dead letters are the same messages.
const jobStreamMaxMsg = 1 << 20

// Streams are the streams and buckets of the outbound contract.
type Streams struct {
	Jobs, Status, DeadLetter jetstream.Stream
	Attachments              jetstream.ObjectStore
	State                    jetstream.KeyValue
}

// EnsureStreams creates the jobs, status and dead-letter streams, the
// attachment bucket and the state bucket with the settings of
// docs/jobs.md, or updates them to cfg. A stream that exists with other
// subjects, another retention or another storage type is an error naming
// the configuration key.
func EnsureStreams(ctx context.Context, js jetstream.JetStream, cfg config.SenderStreams, log *zap.Logger) (*Streams, error) {
	if log == nil {
		log = zap.NewNop()
	}
	var (
		s   Streams
		err error
	)
	if s.Jobs, err = ensureStream(ctx, js, cfg.Jobs, "streams.jobs", jetstream.WorkQueuePolicy, jetstream.DiscardNew, jobStreamMaxMsg,
		"mailpipe outbound mail jobs: one message per mail to send", log); err != nil {
		return nil, err
	}
	if s.Status, err = ensureStream(ctx, js, cfg.Status, "streams.status", jetstream.LimitsPolicy, jetstream.DiscardOld, -1,
		"mailpipe outbound status events (accepted, sent, failed)", log); err != nil {
		return nil, err
	}
	if s.DeadLetter, err = ensureStream(ctx, js, cfg.DeadLetter, "streams.dead_letter", jetstream.LimitsPolicy, jetstream.DiscardOld, jobStreamMaxMsg,
		"mailpipe outbound dead letters: jobs the sender gave up on", log); err != nil {
		return nil, err
	}
	storage, _ := storageType(cfg.Jobs.Storage)
	replicas := max(cfg.Jobs.Replicas, 1)
	s.Attachments, err = js.CreateOrUpdateObjectStore(ctx, jetstream.ObjectStoreConfig{
		Bucket:      cfg.AttachmentBucket,
		Description: "mailpipe attachments of outbound jobs in " + cfg.Jobs.Name,
		TTL:         cfg.Jobs.MaxAge,
		Storage:     storage,
		Replicas:    replicas,
	})
	if err != nil {
		return nil, fmt.Errorf("object store bucket %q (streams.attachment_bucket): %w", cfg.AttachmentBucket, err)
	}
	s.State, err = js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket:      cfg.StateBucket,
		Description: "mailpipe sender: state of each job and the mailboxes' rate windows",
		History:     1,
		// A job's state must outlive every delivery of the job.
		TTL:      cfg.Jobs.MaxAge + 24*time.Hour,
		Storage:  storage,
		Replicas: replicas,
	})
	if err != nil {
		return nil, fmt.Errorf("key-value bucket %q (streams.state_bucket): %w", cfg.StateBucket, err)
	}
	return &s, nil
}

func storageType(s string) (jetstream.StorageType, error) {
	switch strings.ToLower(s) {
	case "", "file":
		return jetstream.FileStorage, nil
	case "memory":
		return jetstream.MemoryStorage, nil
	}
	return 0, fmt.Errorf("%q is neither file nor memory", s)
}

func ensureStream(ctx context.Context, js jetstream.JetStream, st config.Stream, key string,
	retention jetstream.RetentionPolicy, discard jetstream.DiscardPolicy, maxMsg int32, desc string, log *zap.Logger) (jetstream.Stream, error) {
	storage, err := storageType(st.Storage)
	if err != nil {
		return nil, fmt.Errorf("%s.storage: %w", key, err)
	}
	want := jetstream.StreamConfig{
		Name:        st.Name,
		Description: desc,
		Subjects:    []string{st.SubjectPrefix + ".>"},
		Retention:   retention,
		Discard:     discard,
		Storage:     storage,
		Replicas:    max(st.Replicas, 1),
		MaxAge:      st.MaxAge,
		Duplicates:  st.DuplicateWindow,
		MaxBytes:    -1,
		MaxMsgs:     -1,
		MaxMsgSize:  maxMsg,
	}
	if st.MaxBytes > 0 {
		want.MaxBytes = int64(st.MaxBytes)
	}
	s, err := js.Stream(ctx, st.Name)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		s, err = js.CreateStream(ctx, want)
		if err != nil {
			return nil, fmt.Errorf("create stream %s (%s): %w", st.Name, key, err)
		}
		log.Info("stream created", zap.String("stream", st.Name), zap.Strings("subjects", want.Subjects))
		return s, nil
	}
	if err != nil {
		return nil, fmt.Errorf("look up stream %s (%s.name): %w", st.Name, key, err)
	}
	have := s.CachedInfo().Config
	if !slices.Equal(have.Subjects, want.Subjects) {
		return nil, fmt.Errorf("stream %s exists with subjects %v, but %s.subject_prefix %q needs exactly %v: use another %s.name or change the stream's subjects",
			st.Name, have.Subjects, key, st.SubjectPrefix, want.Subjects, key)
	}
	if have.Retention != retention {
		return nil, fmt.Errorf("stream %s exists with retention %s, the sender needs %s (docs/jobs.md); the retention of a stream cannot be changed: set %s.name to another name or recreate the stream",
			st.Name, have.Retention, retention, key)
	}
	if have.Storage != storage {
		return nil, fmt.Errorf("stream %s exists with %s storage, but %s.storage is %s; the storage type cannot be changed",
			st.Name, have.Storage, key, storage)
	}
	upd := have
	var changed []string
	set := func(field string, differ bool, apply func()) {
		if differ {
			changed = append(changed, field)
			apply()
		}
	}
	set(key+".replicas", have.Replicas != want.Replicas, func() { upd.Replicas = want.Replicas })
	set(key+".max_age", have.MaxAge != want.MaxAge, func() { upd.MaxAge = want.MaxAge })
	set(key+".duplicate_window", have.Duplicates != want.Duplicates, func() { upd.Duplicates = want.Duplicates })
	set(key+".max_bytes", have.MaxBytes != want.MaxBytes, func() { upd.MaxBytes = want.MaxBytes })
	set("max message size", have.MaxMsgSize != want.MaxMsgSize, func() { upd.MaxMsgSize = want.MaxMsgSize })
	set("discard policy", have.Discard != want.Discard, func() { upd.Discard = want.Discard })
	if len(changed) == 0 {
		return s, nil
	}
	s, err = js.UpdateStream(ctx, upd)
	if err != nil {
		return nil, fmt.Errorf("update stream %s (changed: %s): %w", st.Name, strings.Join(changed, ", "), err)
	}
	log.Info("stream updated", zap.String("stream", st.Name), zap.Strings("changed", changed))
	return s, nil
}

// ConsumerName is the durable consumer of an allow-listed mailbox:
// <durable>_<mailbox token>, shortened with a hash when it would be long.
func ConsumerName(durable, address string) string {
	name := durable + "_" + mailjob.MailboxToken(address)
	if len(name) <= 128 {
		return name
	}
	sum := sha256.Sum256([]byte(name))
	return name[:100] + "-" + hex.EncodeToString(sum[:8])
}

// RejectsConsumerName is the durable consumer taking jobs on subjects of
// no allow-listed mailbox, to refuse them.
func RejectsConsumerName(durable string) string { return durable + "-rejects" }

// mailboxConsumerConfig is the consumer of one mailbox's subject. The
// server redelivers without limit: the sender counts attempts itself
// (waits for the rate window are no attempts) and gives up after
// consumer.max_deliver of them.
func mailboxConsumerConfig(cfg config.Consumer, name, subject, address string) jetstream.ConsumerConfig {
	return jetstream.ConsumerConfig{
		Durable:       name,
		Description:   "mailpipe sender: jobs from " + address,
		FilterSubject: subject,
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       cfg.AckWait,
		MaxDeliver:    -1,
		MaxAckPending: cfg.MaxAckPending,
		DeliverPolicy: jetstream.DeliverAllPolicy,
	}
}

func rejectsConsumerConfig(cfg config.Consumer, subjects []string) jetstream.ConsumerConfig {
	return jetstream.ConsumerConfig{
		Durable:        RejectsConsumerName(cfg.Durable),
		Description:    "mailpipe sender: jobs from mailboxes that are not allowed, to be refused",
		FilterSubjects: subjects,
		AckPolicy:      jetstream.AckExplicitPolicy,
		AckWait:        cfg.AckWait,
		MaxDeliver:     -1,
		MaxAckPending:  cfg.MaxAckPending,
		DeliverPolicy:  jetstream.DeliverAllPolicy,
	}
}

// consumerFilters is the set of subjects a consumer takes.
func consumerFilters(c jetstream.ConsumerConfig) []string {
	if c.FilterSubject != "" {
		return []string{c.FilterSubject}
	}
	return c.FilterSubjects
}

// prepareConsumers makes room for the mailbox consumers on the work
// queue (whose consumers may not overlap): it takes the allowed subjects
// out of the rejects consumer and deletes this sender's consumers of
// mailboxes no longer allowed.
func prepareConsumers(ctx context.Context, stream jetstream.Stream, cfg config.Consumer, allowed map[string]string, log *zap.Logger) error {
	rejects := RejectsConsumerName(cfg.Durable)
	lister := stream.ListConsumers(ctx)
	for info := range lister.Info() {
		c := info.Config
		filters := consumerFilters(c)
		switch {
		case info.Name == rejects:
			keep := slices.DeleteFunc(slices.Clone(filters), func(s string) bool { _, ok := allowed[s]; return ok })
			if len(keep) == len(filters) {
				continue
			}
			if len(keep) == 0 {
				if err := stream.DeleteConsumer(ctx, rejects); err != nil && !errors.Is(err, jetstream.ErrConsumerNotFound) {
					return fmt.Errorf("delete consumer %s: %w", rejects, err)
				}
				continue
			}
			if _, err := stream.UpdateConsumer(ctx, rejectsConsumerConfig(cfg, keep)); err != nil {
				return fmt.Errorf("update consumer %s: %w", rejects, err)
			}
		case strings.HasPrefix(info.Name, cfg.Durable+"_") && len(filters) == 1:
			if name, ok := allowed[filters[0]]; ok && name == info.Name {
				continue
			}
			log.Info("deleting the consumer of a mailbox that is no longer allowed", zap.String("consumer", info.Name), zap.Strings("subjects", filters))
			if err := stream.DeleteConsumer(ctx, info.Name); err != nil && !errors.Is(err, jetstream.ErrConsumerNotFound) {
				return fmt.Errorf("delete consumer %s: %w", info.Name, err)
			}
		}
	}
	if err := lister.Err(); err != nil && !errors.Is(err, jetstream.ErrEndOfData) {
		return fmt.Errorf("list the consumers of %s: %w", stream.CachedInfo().Config.Name, err)
	}
	return nil
}
