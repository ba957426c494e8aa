package app

import (
	"context"
	"fmt"
	"os"
	"time"

	"go.uber.org/zap"

	"github.com/mailpipe/mailpipe/internal/bus"
)

// leaseHolder names this process in lease values.
func leaseHolder() string {
	host, _ := os.Hostname()
	return fmt.Sprintf("%s/%d", host, os.Getpid())
}

// runLeased runs work while this process holds the lease on mailbox name,
// so that one replica at a time works a mailbox (two concurrent moves of
// the same message can leave two copies in the processed folder on some
// servers). Other replicas stand by and take over within the lease TTL
// when the holder stops or dies. When the lease is lost, work's soft
// context ends (no new batch starts) and the lease is sought again.
//
// With once, a standby waits for the lease, then runs work (which returns
// when the folder is empty): two `run --once` on one mailbox both succeed.
func runLeased(ctx context.Context, leases *bus.Leases, name string, once bool, poll time.Duration, log *zap.Logger, standby func(), work func(soft context.Context) error) error {
	wait := min(poll, bus.DefaultLeaseTTL/3)
	if once {
		wait = min(wait, time.Second)
	}
	announced := false
	for {
		l, err := leases.TryAcquire(ctx, name)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			log.Warn("cannot reach the lease bucket; retrying", zap.Error(err))
		}
		if l == nil {
			if err == nil {
				standby()
				if !announced {
					holder, _ := leases.Holder(ctx, name)
					log.Info("standing by: another replica works this mailbox", zap.String("holder", holder))
					announced = true
				}
			}
			if !sleepCtx(ctx, wait) {
				return nil
			}
			continue
		}
		announced = false
		log.Debug("lease acquired")
		soft, cancel := context.WithCancel(ctx)
		go func() {
			select {
			case <-l.Lost():
				log.Warn("lease lost: finishing the batch in progress, then standing by", zap.Error(l.Err()))
				cancel()
			case <-soft.Done():
			}
		}()
		err = work(soft)
		lost := soft.Err() != nil && ctx.Err() == nil
		cancel()
		rctx, rcancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		l.Release(rctx)
		rcancel()
		if lost && err == nil {
			continue
		}
		return err
	}
}

func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
