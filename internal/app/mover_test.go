package app

import (
	"context"
	"testing"
	"time"

	"github.com/mailpipe/mailpipe/internal/mailbox"
	"github.com/mailpipe/mailpipe/internal/testenv/stack"
)

// TestCrashInOverlappedMove is TestCrashAtEachStep for the moves that run
// on a second connection (Worker.SetMover, as RunImporter sets it up)
// while the next batch is being fetched: a crash before or in the middle
// of such a move must still end, after a restart, with every message in
// processed and published exactly once.
func TestCrashInOverlappedMove(t *testing.T) {
	for _, step := range []string{"before-move", "mid-move"} {
		t.Run(step, func(t *testing.T) {
			st := stack.Start(t, stack.Options{})
			const n = 120
			st.Dovecot.AppendFunc(stack.User, stack.Import, n, func(i int) []byte { return stack.Invoice(i, 3000) })
			cfg := st.Config()
			cfg.Mailboxes[0].IMAP.FetchBatch = 50

			ctx, cancel := context.WithCancel(context.Background())
			w, closeFn := worker(t, cfg, nil, nil)
			mover := testSource(t, cfg)
			// The second batch's moves crash: the first batch is moved,
			// the second published but (wholly or partly) not moved, the
			// third being fetched when the crash comes.
			cs := &crashSource{Source: mover, step: "none", cancel: cancel}
			w.SetMover(&armAfterFirst{crashSource: cs, step: step})
			done := make(chan error, 1)
			go func() { done <- w.Run(ctx, ctx, false) }()
			select {
			case <-done:
			case <-time.After(2 * time.Minute):
				t.Fatal("worker did not stop after the simulated crash")
			}
			mover.Close()
			closeFn()
			if ctx.Err() == nil {
				t.Fatal("the crash point was never reached")
			}
			if got := st.Dovecot.Count(stack.User, stack.Import); got == 0 || got == n {
				t.Fatalf("crash at %s left %d of %d messages in the import folder; want some moved, some not", step, got, n)
			}

			if err := runOnce(t, cfg); err != nil {
				t.Fatalf("restart: %v", err)
			}
			assertFolders(t, st, 0, n, 0)
			s := st.Stream(cfg.Bus.Stream.Name)
			if s.Messages != n || s.DistinctID != n || len(s.PerDigest) != n {
				t.Fatalf("stream after crash at %s: %d messages, %d distinct ids, %d distinct bodies; want %d each",
					step, s.Messages, s.DistinctID, len(s.PerDigest), n)
			}
		})
	}
}

// armAfterFirst lets the first non-empty move through and arms the crash
// for the next one.
type armAfterFirst struct {
	*crashSource
	step  string
	moves int
}

func (a *armAfterFirst) Move(ctx context.Context, refs []mailbox.Ref, dest mailbox.Dest) error {
	if len(refs) > 0 {
		if a.moves++; a.moves == 2 {
			a.crashSource.step = a.step
		}
	}
	return a.crashSource.Move(ctx, refs, dest)
}
