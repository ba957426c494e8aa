package bus

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/mailpipe/mailpipe/internal/config"
)

// HeaderRoom is what a message may carry in headers on top of its body:
// streams accept LargeMessageThreshold+HeaderRoom bytes, and the server's
// max_payload must be at least that.
const HeaderRoom = 64 << 10

const (
	defaultMaxInFlight    = 256
	defaultPublishTimeout = 30 * time.Second
	// The JetStream context's own cap on async publishes; the real bound is
	// per mailbox (bus.max_in_flight).
	asyncMaxPending = 1 << 20
)

// Bus publishes mail to the inbound stream and keeps importer state.
type Bus struct {
	conn *Conn
	cfg  config.Bus
	log  *zap.Logger
	// js has the async publish handlers; conn.js is left alone for others.
	js        jetstream.JetStream
	inbound   jetstream.Stream
	dead      jetstream.Stream
	obs       jetstream.ObjectStore
	objStream jetstream.Stream // the object store's stream, OBJ_<bucket>
	kv        jetstream.KeyValue
	threshold int64
	inFlight  int
	timeout   time.Duration

	mu      sync.Mutex
	pending map[*nats.Msg]*Pending
	sems    map[string]chan struct{}
}

// Open creates or updates the inbound and dead-letter streams, the object
// store bucket and the state bucket, and returns a Bus publishing to them.
// Settings an update cannot change, or which suggest the stream belongs to
// something else (other subjects, storage type, retention), are errors that
// name the stream and the configuration key.
func Open(ctx context.Context, conn *Conn, cfg config.Bus, log *zap.Logger) (*Bus, error) {
	if log == nil {
		log = zap.NewNop()
	}
	b := &Bus{
		conn:      conn,
		cfg:       cfg,
		log:       log,
		threshold: int64(cfg.LargeMessageThreshold),
		inFlight:  cfg.MaxInFlight,
		timeout:   cfg.PublishTimeout,
		pending:   make(map[*nats.Msg]*Pending),
		sems:      make(map[string]chan struct{}),
	}
	if b.inFlight <= 0 {
		b.inFlight = defaultMaxInFlight
	}
	if b.timeout <= 0 {
		b.timeout = defaultPublishTimeout
	}
	if err := validate(cfg); err != nil {
		return nil, err
	}
	if mp := conn.nc.MaxPayload(); mp < b.threshold+HeaderRoom {
		return nil, fmt.Errorf("bus: bus.large_message_threshold (%d bytes) plus %d bytes for headers exceeds the NATS server's max_payload (%d bytes): lower bus.large_message_threshold to at most %d or raise max_payload on the server",
			b.threshold, HeaderRoom, mp, mp-HeaderRoom)
	}

	var err error
	b.js, err = jetstream.New(conn.nc,
		jetstream.WithPublishAsyncAckHandler(b.onAck),
		jetstream.WithPublishAsyncErrHandler(b.onErr),
		jetstream.WithPublishAsyncTimeout(b.timeout),
		jetstream.WithPublishAsyncMaxPending(asyncMaxPending),
	)
	if err != nil {
		return nil, fmt.Errorf("bus: jetstream: %w", err)
	}

	maxMsg := int32(min(b.threshold+HeaderRoom, 1<<31-1))
	if b.inbound, err = b.ensureStream(ctx, cfg.Stream, "bus.stream", maxMsg,
		"mailpipe inbound mail: one message per imported mail"); err != nil {
		return nil, err
	}
	if b.dead, err = b.ensureStream(ctx, cfg.DeadLetter, "bus.dead_letter", maxMsg,
		"mailpipe dead letters: mail that could not be imported"); err != nil {
		return nil, err
	}

	storage, _ := storageType(cfg.Stream.Storage)
	replicas := max(cfg.Stream.Replicas, 1)
	b.obs, err = b.js.CreateOrUpdateObjectStore(ctx, jetstream.ObjectStoreConfig{
		Bucket:      cfg.ObjectBucket,
		Description: "mailpipe bodies of large mail referenced from " + cfg.Stream.Name,
		// Objects live as long as the messages referencing them.
		TTL:      cfg.Stream.MaxAge,
		Storage:  storage,
		Replicas: replicas,
	})
	if err != nil {
		return nil, fmt.Errorf("bus: object store bucket %q (bus.object_bucket): %w", cfg.ObjectBucket, err)
	}
	if b.objStream, err = b.js.Stream(ctx, "OBJ_"+cfg.ObjectBucket); err != nil {
		return nil, fmt.Errorf("bus: object store bucket %q (bus.object_bucket): %w", cfg.ObjectBucket, err)
	}
	b.kv, err = b.js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket:      cfg.StateBucket,
		Description: "mailpipe importer state",
		History:     1,
		Storage:     storage,
		Replicas:    replicas,
	})
	if err != nil {
		return nil, fmt.Errorf("bus: key-value bucket %q (bus.state_bucket): %w", cfg.StateBucket, err)
	}
	log.Info("bus ready",
		zap.String("stream", cfg.Stream.Name), zap.String("subjects", cfg.Stream.SubjectPrefix+".>"),
		zap.String("dead_letter_stream", cfg.DeadLetter.Name),
		zap.String("object_bucket", cfg.ObjectBucket), zap.String("state_bucket", cfg.StateBucket))
	return b, nil
}

func validate(cfg config.Bus) error {
	var errs []error
	for _, s := range []struct {
		key string
		st  config.Stream
	}{{"bus.stream", cfg.Stream}, {"bus.dead_letter", cfg.DeadLetter}} {
		if s.st.Name == "" || strings.ContainsAny(s.st.Name, ". *>/\\\t\r\n") {
			errs = append(errs, fmt.Errorf("%s.name %q is not a valid stream name", s.key, s.st.Name))
		}
		if !validSubjectPrefix(s.st.SubjectPrefix) {
			errs = append(errs, fmt.Errorf("%s.subject_prefix %q is not a valid subject prefix (dot-separated tokens, no wildcards)", s.key, s.st.SubjectPrefix))
		}
		if _, err := storageType(s.st.Storage); err != nil {
			errs = append(errs, fmt.Errorf("%s.storage: %w", s.key, err))
		}
		if s.st.MaxAge > 0 && s.st.DuplicateWindow > s.st.MaxAge {
			errs = append(errs, fmt.Errorf("%s.duplicate_window (%s) must not exceed %s.max_age (%s)", s.key, s.st.DuplicateWindow, s.key, s.st.MaxAge))
		}
	}
	if cfg.Stream.Name != "" && cfg.Stream.Name == cfg.DeadLetter.Name {
		errs = append(errs, fmt.Errorf("bus.dead_letter.name must differ from bus.stream.name (%q)", cfg.Stream.Name))
	}
	if p, d := cfg.Stream.SubjectPrefix, cfg.DeadLetter.SubjectPrefix; p != "" && d != "" &&
		(p == d || strings.HasPrefix(d, p+".") || strings.HasPrefix(p, d+".")) {
		errs = append(errs, fmt.Errorf("bus.dead_letter.subject_prefix %q overlaps bus.stream.subject_prefix %q", d, p))
	}
	if cfg.ObjectBucket == "" {
		errs = append(errs, errors.New("bus.object_bucket must be set"))
	}
	if cfg.StateBucket == "" {
		errs = append(errs, errors.New("bus.state_bucket must be set"))
	}
	if cfg.LargeMessageThreshold <= 0 {
		errs = append(errs, errors.New("bus.large_message_threshold must be positive"))
	}
	if len(errs) > 0 {
		return fmt.Errorf("bus: invalid configuration: %w", errors.Join(errs...))
	}
	return nil
}

func validSubjectPrefix(p string) bool {
	if p == "" {
		return false
	}
	for _, tok := range strings.Split(p, ".") {
		if tok == "" || tok == "*" || tok == ">" || strings.ContainsAny(tok, " \t\r\n") {
			return false
		}
	}
	return true
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

func storageName(t jetstream.StorageType) string {
	if t == jetstream.MemoryStorage {
		return "memory"
	}
	return "file"
}

// ensureStream creates the stream, or updates the settings mailpipe manages
// and leaves the others (compression, placement, metadata...) as the
// operator set them.
func (b *Bus) ensureStream(ctx context.Context, st config.Stream, key string, maxMsg int32, desc string) (jetstream.Stream, error) {
	storage, _ := storageType(st.Storage)
	want := jetstream.StreamConfig{
		Name:        st.Name,
		Description: desc,
		Subjects:    []string{st.SubjectPrefix + ".>"},
		Retention:   jetstream.LimitsPolicy,
		Discard:     jetstream.DiscardOld,
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

	s, err := b.js.Stream(ctx, st.Name)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		s, err = b.js.CreateStream(ctx, want)
		if err != nil {
			return nil, fmt.Errorf("bus: create stream %s (%s): %w", st.Name, key, explainStreamErr(err, key))
		}
		b.log.Info("stream created", zap.String("stream", st.Name), zap.Strings("subjects", want.Subjects))
		return s, nil
	}
	if err != nil {
		return nil, fmt.Errorf("bus: look up stream %s (%s.name): %w", st.Name, key, err)
	}

	have := s.CachedInfo().Config
	if !slices.Equal(sorted(have.Subjects), want.Subjects) {
		return nil, fmt.Errorf("bus: stream %s exists with subjects %v, but %s.subject_prefix %q needs exactly [%s]: use another %s.name or %s.subject_prefix, or change the stream's subjects yourself",
			st.Name, have.Subjects, key, st.SubjectPrefix, want.Subjects[0], key, key)
	}
	if have.Storage != want.Storage {
		return nil, fmt.Errorf("bus: stream %s exists with %s storage, but %s.storage is %s; the storage type of a stream cannot be changed: set %s.storage to %s or recreate the stream",
			st.Name, storageName(have.Storage), key, storageName(want.Storage), key, storageName(have.Storage))
	}
	if have.Retention != jetstream.LimitsPolicy {
		return nil, fmt.Errorf("bus: stream %s exists with retention %s, mailpipe needs limits retention: it is probably another application's stream; set %s.name to another name",
			st.Name, have.Retention, key)
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
	set(key+".duplicate_window", want.Duplicates > 0 && have.Duplicates != want.Duplicates, func() { upd.Duplicates = want.Duplicates })
	set(key+".max_bytes", have.MaxBytes != want.MaxBytes, func() { upd.MaxBytes = want.MaxBytes })
	set("bus.large_message_threshold", have.MaxMsgSize != want.MaxMsgSize, func() { upd.MaxMsgSize = want.MaxMsgSize })
	set("discard policy", have.Discard != want.Discard, func() { upd.Discard = want.Discard })
	if len(changed) == 0 {
		return s, nil
	}
	if want.Duplicates == 0 && upd.MaxAge > 0 && upd.Duplicates > upd.MaxAge {
		// The server default window; keep it valid for the new max age.
		upd.Duplicates = upd.MaxAge
	}
	s, err = b.js.UpdateStream(ctx, upd)
	if err != nil {
		return nil, fmt.Errorf("bus: update stream %s (changed: %s): %w", st.Name, strings.Join(changed, ", "), explainStreamErr(err, key))
	}
	b.log.Info("stream updated", zap.String("stream", st.Name), zap.Strings("changed", changed))
	return s, nil
}

func explainStreamErr(err error, key string) error {
	var apiErr *jetstream.APIError
	if errors.As(err, &apiErr) {
		switch apiErr.ErrorCode {
		case jetstream.JSErrCodeStreamNameInUse:
			return fmt.Errorf("%w (check %s.name)", err, key)
		}
		if strings.Contains(apiErr.Description, "overlap") {
			return fmt.Errorf("%w: another stream already captures %s.subject_prefix", err, key)
		}
		if strings.Contains(apiErr.Description, "replicas") {
			return fmt.Errorf("%w (check %s.replicas)", err, key)
		}
	}
	return err
}

func sorted(s []string) []string {
	c := slices.Clone(s)
	slices.Sort(c)
	return c
}

// Conn returns the connection the bus uses.
func (b *Bus) Conn() *Conn { return b.conn }

// Subject is the inbound subject of a mailbox.
func (b *Bus) Subject(mailbox string) string { return b.cfg.Stream.SubjectPrefix + "." + mailbox }

// DeadLetterSubject is the dead-letter subject of a mailbox.
func (b *Bus) DeadLetterSubject(mailbox string) string {
	return b.cfg.DeadLetter.SubjectPrefix + "." + mailbox
}

// LargeMessageThreshold is the largest body PublishMail accepts; larger
// bodies go through PublishLargeMail.
func (b *Bus) LargeMessageThreshold() int64 { return b.threshold }

// StreamSummary describes a stream for `importer check`.
type StreamSummary struct {
	Name            string
	Subjects        []string
	Messages        uint64
	Bytes           uint64
	Consumers       int
	Replicas        int
	Storage         string
	MaxAge          time.Duration
	DuplicateWindow time.Duration
	MaxBytes        int64
	MaxMsgSize      int32
	FirstTime       time.Time
	LastTime        time.Time
}

// BucketSummary describes an object store or key-value bucket.
type BucketSummary struct {
	Name    string
	Entries uint64 // objects are counted as chunks plus one meta entry each
	Bytes   uint64
}

// Info is what `importer check` reports about the bus.
type Info struct {
	ServerName    string
	ServerVersion string
	MaxPayload    int64
	Embedded      bool
	Inbound       StreamSummary
	DeadLetter    StreamSummary
	Objects       BucketSummary
	State         BucketSummary
}

// String is a one-line summary for `importer check`.
func (i Info) String() string {
	server := "embedded server"
	if !i.Embedded {
		server = "server " + i.ServerName
	}
	return fmt.Sprintf("%s %s (max_payload %s); %s; dead letters: %s; object bucket %s: %s; state bucket %s: %d keys",
		server, i.ServerVersion, humanBytes(uint64(i.MaxPayload)), i.Inbound, i.DeadLetter,
		i.Objects.Name, humanBytes(i.Objects.Bytes), i.State.Name, i.State.Entries)
}

// String is a one-line summary of the stream.
func (s StreamSummary) String() string {
	return fmt.Sprintf("stream %s %v: %d messages, %s, max age %s, duplicate window %s, %d replica(s), %s storage",
		s.Name, s.Subjects, s.Messages, humanBytes(s.Bytes), s.MaxAge, s.DuplicateWindow, s.Replicas, s.Storage)
}

func humanBytes(n uint64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := uint64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

// StreamInfo fetches the current state of the streams and buckets.
func (b *Bus) StreamInfo(ctx context.Context) (Info, error) {
	info := Info{
		ServerName:    b.conn.nc.ConnectedServerName(),
		ServerVersion: b.conn.nc.ConnectedServerVersion(),
		MaxPayload:    b.conn.nc.MaxPayload(),
		Embedded:      b.conn.Embedded(),
	}
	var err error
	if info.Inbound, err = summarize(ctx, b.inbound); err != nil {
		return info, err
	}
	if info.DeadLetter, err = summarize(ctx, b.dead); err != nil {
		return info, err
	}
	os, err := b.obs.Status(ctx)
	if err != nil {
		return info, fmt.Errorf("bus: object bucket %s: %w", b.cfg.ObjectBucket, err)
	}
	info.Objects = BucketSummary{Name: os.Bucket(), Bytes: os.Size()}
	if bs, ok := os.(*jetstream.ObjectBucketStatus); ok && bs.StreamInfo() != nil {
		info.Objects.Entries = bs.StreamInfo().State.Msgs
	}
	ks, err := b.kv.Status(ctx)
	if err != nil {
		return info, fmt.Errorf("bus: state bucket %s: %w", b.cfg.StateBucket, err)
	}
	info.State = BucketSummary{Name: ks.Bucket(), Entries: ks.Values(), Bytes: ks.Bytes()}
	return info, nil
}

func summarize(ctx context.Context, s jetstream.Stream) (StreamSummary, error) {
	si, err := s.Info(ctx)
	if err != nil {
		return StreamSummary{}, fmt.Errorf("bus: stream %s: %w", s.CachedInfo().Config.Name, err)
	}
	c := si.Config
	return StreamSummary{
		Name:            c.Name,
		Subjects:        c.Subjects,
		Messages:        si.State.Msgs,
		Bytes:           si.State.Bytes,
		Consumers:       si.State.Consumers,
		Replicas:        c.Replicas,
		Storage:         storageName(c.Storage),
		MaxAge:          c.MaxAge,
		DuplicateWindow: c.Duplicates,
		MaxBytes:        c.MaxBytes,
		MaxMsgSize:      c.MaxMsgSize,
		FirstTime:       si.State.FirstTime,
		LastTime:        si.State.LastTime,
	}, nil
}
