package bus

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// DefaultLeaseTTL is how long a mailbox lease lives without renewal: the
// time a standby replica waits before taking over from one that died.
const DefaultLeaseTTL = 30 * time.Second

// ErrLeaseLost is returned when a lease could not be renewed because it
// expired and another holder may have taken it.
var ErrLeaseLost = errors.New("bus: lease lost")

// Leases hands out one active worker per mailbox across all replicas. A
// lease is a key in a KV bucket whose TTL is the lease TTL: Create fails
// while another holder's key exists; the holder renews it with a
// compare-and-set Update well before the TTL; a holder that dies stops
// renewing and the server expires its key (the server's clock decides, so
// replicas' clock skew does not matter).
type Leases struct {
	kv     jetstream.KeyValue
	ttl    time.Duration
	holder string
}

// OpenLeases creates or binds the lease bucket <state bucket>-leases.
// holder identifies this process in the lease value (e.g. host name + pid).
func (b *Bus) OpenLeases(ctx context.Context, ttl time.Duration, holder string) (*Leases, error) {
	if ttl <= 0 {
		ttl = DefaultLeaseTTL
	}
	name := b.cfg.StateBucket + "-leases"
	storage, err := storageType(b.cfg.Stream.Storage)
	if err != nil {
		return nil, err
	}
	kv, err := b.js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket:      name,
		Description: "mailpipe: one active importer per mailbox",
		TTL:         ttl,
		History:     1,
		Replicas:    b.cfg.Stream.Replicas,
		Storage:     storage,
	})
	if err != nil {
		return nil, fmt.Errorf("lease bucket %s: %w", name, err)
	}
	return &Leases{kv: kv, ttl: ttl, holder: holder}, nil
}

// Lease is a held lease. Lost is closed when renewal failed.
type Lease struct {
	l    *Leases
	key  string
	rev  uint64
	lost chan struct{}
	stop chan struct{}
	done chan struct{}
	once sync.Once
	err  error
}

// TryAcquire takes the lease on name if nobody holds it; it returns nil,
// nil when another holder has it. A held lease renews itself every third
// of the TTL until Release.
func (l *Leases) TryAcquire(ctx context.Context, name string) (*Lease, error) {
	key := "mailbox." + name
	rev, err := l.kv.Create(ctx, key, []byte(l.holder))
	if errors.Is(err, jetstream.ErrKeyExists) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("acquire lease %s: %w", key, err)
	}
	ls := &Lease{l: l, key: key, rev: rev, lost: make(chan struct{}), stop: make(chan struct{}), done: make(chan struct{})}
	go ls.renew()
	return ls, nil
}

// Holder returns who holds the lease on name ("" when free).
func (l *Leases) Holder(ctx context.Context, name string) (string, error) {
	e, err := l.kv.Get(ctx, "mailbox."+name)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return "", nil
	}
	if err != nil {
		return "", err
	}
	return string(e.Value()), nil
}

func (ls *Lease) renew() {
	defer close(ls.done)
	t := time.NewTicker(ls.l.ttl / 3)
	defer t.Stop()
	failures := 0
	for {
		select {
		case <-ls.stop:
			return
		case <-t.C:
		}
		ctx, cancel := context.WithTimeout(context.Background(), ls.l.ttl/3)
		rev, err := ls.l.kv.Update(ctx, ls.key, []byte(ls.l.holder), ls.rev)
		cancel()
		if err == nil {
			ls.rev, failures = rev, 0
			continue
		}
		failures++
		// A CAS conflict or a missing key means the lease expired (and may
		// be someone else's now); two failed renewals in a row leave less
		// than a third of the TTL: give up before it can expire under us.
		var apiErr *jetstream.APIError
		conflict := errors.As(err, &apiErr) && apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence
		if conflict || errors.Is(err, jetstream.ErrKeyNotFound) || failures >= 2 {
			ls.err = fmt.Errorf("%w: %s: %v", ErrLeaseLost, ls.key, err)
			close(ls.lost)
			return
		}
	}
}

// Lost is closed when the lease could not be renewed; stop working then.
func (ls *Lease) Lost() <-chan struct{} { return ls.lost }

// Err says why the lease was lost.
func (ls *Lease) Err() error { return ls.err }

// Release stops renewing and deletes the key (when still ours) so a
// standby can take over at once.
func (ls *Lease) Release(ctx context.Context) {
	ls.once.Do(func() {
		close(ls.stop)
		<-ls.done
		select {
		case <-ls.lost:
			return
		default:
		}
		_ = ls.l.kv.Delete(ctx, ls.key, jetstream.LastRevision(ls.rev))
	})
}
