package app

import (
	"context"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"

	"github.com/mailpipe/mailpipe/internal/config"
	"github.com/mailpipe/mailpipe/internal/testenv/stack"
)

func runOnce(t *testing.T, cfg *config.Importer) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	return RunImporter(ctx, cfg, true, Deps{Logger: zaptest.NewLogger(t)})
}

func assertFolders(t *testing.T, st *stack.Stack, imp, processed, errs int) {
	t.Helper()
	if n := st.Dovecot.Count(stack.User, stack.Import); n != imp {
		t.Errorf("import folder has %d messages, want %d", n, imp)
	}
	if n := st.Dovecot.Count(stack.User, stack.Processed); n != processed {
		t.Errorf("processed folder has %d messages, want %d", n, processed)
	}
	if n := st.Dovecot.Count(stack.User, stack.ErrorBox); n != errs {
		t.Errorf("error folder has %d messages, want %d", n, errs)
	}
}

// TestImportThousandExactlyOnce: MSAL → fake Entra ID → XOAUTH2 → Dovecot →
// JetStream; 1,000 messages end in processed, 1,000 distinct messages in
// the stream; a second run publishes nothing.
func TestImportThousandExactlyOnce(t *testing.T) {
	st := stack.Start(t, stack.Options{})
	st.Dovecot.AppendFunc(stack.User, stack.Import, 1000, func(i int) []byte { return stack.Invoice(i, 2000) })
	cfg := st.Config()

	if err := runOnce(t, cfg); err != nil {
		t.Fatalf("run --once: %v", err)
	}
	assertFolders(t, st, 0, 1000, 0)
	s := st.Stream(cfg.Bus.Stream.Name)
	if s.Messages != 1000 || s.DistinctID != 1000 || len(s.PerDigest) != 1000 {
		t.Fatalf("stream: %d messages, %d distinct ids, %d distinct bodies; want 1000 each", s.Messages, s.DistinctID, len(s.PerDigest))
	}
	if err := runOnce(t, cfg); err != nil {
		t.Fatalf("second run --once: %v", err)
	}
	if s2 := st.Stream(cfg.Bus.Stream.Name); s2.Messages != 1000 {
		t.Fatalf("second run published %d more messages", s2.Messages-1000)
	}
	assertFolders(t, st, 0, 1000, 0)
}
