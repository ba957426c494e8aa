package app

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/mailpipe/mailpipe/internal/bus"
	"github.com/mailpipe/mailpipe/internal/config"
	"github.com/mailpipe/mailpipe/internal/importer"
	"github.com/mailpipe/mailpipe/internal/mailbox"
	"github.com/mailpipe/mailpipe/internal/testenv/graphfake"
	"github.com/mailpipe/mailpipe/internal/testenv/stack"
)

// graphHang bounds waits that only fail when something hangs.
const graphHang = 5 * time.Minute

func assertGraphFolders(t *testing.T, st *stack.GraphStack, imp, processed, errs int) {
	t.Helper()
	if n := st.Count(0, stack.GraphImport); n != imp {
		t.Errorf("import folder has %d messages, want %d", n, imp)
	}
	if n := st.Count(0, stack.GraphProcessed); n != processed {
		t.Errorf("processed folder has %d messages, want %d", n, processed)
	}
	if n := st.Count(0, stack.GraphError); n != errs {
		t.Errorf("error folder has %d messages, want %d", n, errs)
	}
}

func assertGraphStream(t *testing.T, st *stack.GraphStack, cfg *config.Importer, n int) {
	t.Helper()
	s := st.Stream(cfg.Bus.Stream.Name)
	if s.Messages != n || s.DistinctID != n || len(s.PerDigest) != n {
		t.Fatalf("stream: %d messages, %d distinct ids, %d distinct bodies; want %d each", s.Messages, s.DistinctID, len(s.PerDigest), n)
	}
	if dl := st.Stream(cfg.Bus.DeadLetter.Name); dl.Messages != 0 {
		t.Fatalf("%d dead letters, want none (reasons: %v)", dl.Messages, dl.Headers)
	}
}

// graphFaults runs the fault schedule of TestGraphImportThousandWithFaults
// until done closes: first the fake allows only 3 requests in flight per
// mailbox (the importer keeps 4: MailboxConcurrency 429s with Retry-After
// 0.15); after 8 of them the limit is lifted and a storm of 429s with
// Retry-After 0.275 follows for 700 ms. Both are triggered by what the
// fake saw, not by time, so that they hit whatever the machine's speed.
func graphFaults(t *testing.T, g *graphfake.Server, done <-chan struct{}) <-chan struct{} {
	t.Helper()
	g.SetLimits(graphfake.Limits{MailboxConcurrency: 3, ConcurrencyRetryAfter: 150 * time.Millisecond})
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		tick := time.NewTicker(5 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-done:
				g.SetLimits(graphfake.Limits{})
				return
			case <-tick.C:
			}
			if g.Stats().ConcurrencyThrottled >= 8 {
				g.SetLimits(graphfake.Limits{})
				g.ThrottleStorm(700*time.Millisecond, 275*time.Millisecond)
				return
			}
		}
	}()
	return stopped
}

// TestGraphImportThousandWithFaults: MSAL → fake Entra ID → Graph (fake,
// Dutch mailbox) → JetStream, with the server misbehaving as Exchange
// does: MailboxConcurrency 429s, a storm of 429s with fractional
// Retry-After, 429s inside $batch answers, 503s on downloads, moves and
// listings, and a 504 on one $value. 1,000 messages end in the processed
// folder and in the stream, once each; nothing goes to the error folder or
// the dead letters; a second run publishes nothing.
func TestGraphImportThousandWithFaults(t *testing.T) {
	for _, discovery := range []string{"delta", "list"} {
		t.Run(discovery, func(t *testing.T) {
			st := stack.StartGraph(t, stack.GraphOptions{Latency: 3 * time.Millisecond})
			const n = 1000
			st.Seed(0, n, func(k int) []byte { return stack.Invoice(k, 2000) })
			cfg := st.Config()
			cfg.Mailboxes[0].Graph.Discovery = discovery
			if err := cfg.Validate(); err != nil {
				t.Fatal(err)
			}
			g := st.Graph
			for _, f := range []graphfake.Fault{
				// Rules are tried in this order: the first $value gets a
				// 504 (not retried at once: the message waits for the
				// next pass), the next three a 503 (retried after the
				// Retry-After).
				{Method: http.MethodGet, Path: `/messages/[^/]+/\$value$`, Status: http.StatusGatewayTimeout, Count: 1},
				{Method: http.MethodGet, Path: `/messages/[^/]+/\$value$`, Status: http.StatusServiceUnavailable, RetryAfter: "0.2", Count: 3},
				// Moves are $batch items: 429s with a fractional
				// Retry-After inside a 200, then 503s.
				{Method: http.MethodPost, Path: `/move$`, Status: http.StatusTooManyRequests, RetryAfter: "0.35", Count: 4},
				{Method: http.MethodPost, Path: `/move$`, Status: http.StatusServiceUnavailable, RetryAfter: "0.1", Count: 2},
				// One listing or delta page, without Retry-After.
				{Method: http.MethodGet, Path: `/mailFolders/[^/]+/messages(/delta)?$`, Status: http.StatusServiceUnavailable, Count: 1},
			} {
				if err := g.InjectFault(f); err != nil {
					t.Fatal(err)
				}
			}
			const injected = 1 + 3 + 4 + 2 + 1
			g.ResetStats()
			done := make(chan struct{})
			stopped := graphFaults(t, g, done)
			err := runOnce(t, cfg)
			close(done)
			<-stopped
			if err != nil {
				t.Fatalf("run --once: %v", err)
			}
			stats := g.Stats()
			t.Logf("%d requests (%d HTTP round trips), %d throttled (%d MailboxConcurrency), %d injected faults, by status %v",
				stats.Requests, stats.HTTPRequests, stats.Throttled, stats.ConcurrencyThrottled, stats.Faults, stats.ByStatus)
			if stats.Faults != injected {
				t.Errorf("%d injected faults served, want %d", stats.Faults, injected)
			}
			if stats.ConcurrencyThrottled == 0 {
				t.Error("no MailboxConcurrency 429 was served")
			}
			if stats.Throttled < stats.ConcurrencyThrottled+4+1 {
				t.Errorf("%d 429s in all, %d for concurrency: the storm did not hit", stats.Throttled, stats.ConcurrencyThrottled)
			}
			assertGraphFolders(t, st, 0, n, 0)
			assertGraphStream(t, st, cfg, n)

			g.ClearFaults()
			if err := runOnce(t, cfg); err != nil {
				t.Fatalf("second run --once: %v", err)
			}
			if s := st.Stream(cfg.Bus.Stream.Name); s.Messages != n {
				t.Fatalf("second run published %d more messages", s.Messages-n)
			}
			assertGraphFolders(t, st, 0, n, 0)
		})
	}
}

// graphWorker builds the worker of cfg's first mailbox as RunImporter does
// (batches of graph.page_size, delta links in the state bucket), with
// optional wrappers.
func graphWorker(t *testing.T, cfg *config.Importer, wrapBus func(importer.Bus) importer.Bus, wrapSrc func(mailbox.Source) mailbox.Source) (*importer.Worker, func()) {
	t.Helper()
	ctx := context.Background()
	log := zaptest.NewLogger(t)
	conn, err := bus.Connect(ctx, cfg.NATS, log)
	if err != nil {
		t.Fatal(err)
	}
	b, err := bus.Open(ctx, conn, cfg.Bus, log)
	if err != nil {
		t.Fatal(err)
	}
	srcs, err := newSources(ctx, cfg, conn, b, nil, Deps{Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	m := cfg.Mailboxes[0]
	src, err := srcs.New(m)
	if err != nil {
		t.Fatal(err)
	}
	var ib importer.Bus = b
	if wrapBus != nil {
		ib = wrapBus(b)
	}
	if wrapSrc != nil {
		src = wrapSrc(src)
	}
	w := importer.NewWorker(m, src, ib, importer.Settings{
		LargeThreshold: int64(cfg.Bus.LargeMessageThreshold), DuplicateWindow: cfg.Bus.Stream.DuplicateWindow,
		Batch: batchSize(m),
	}, log, nil)
	return w, func() { src.Close(); conn.Close() }
}

// TestGraphCrashAtEachStep kills the importer (in-process: everything after
// the crash point is cut off) after a fetch, after a publish before its
// PubAck, after the PubAcks before the move, and in the middle of a move
// ($batch); a restart leaves every message in the processed folder,
// published exactly once (the Nats-Msg-Id comes from the immutable id,
// which the move does not change).
func TestGraphCrashAtEachStep(t *testing.T) {
	for _, discovery := range []string{"delta", "list"} {
		for _, step := range []string{"after-fetch", "before-ack", "before-move", "mid-move"} {
			t.Run(discovery+"/"+step, func(t *testing.T) {
				st := stack.StartGraph(t, stack.GraphOptions{})
				const n = 120
				st.Seed(0, n, func(k int) []byte { return stack.Invoice(k, 3000) })
				cfg := st.Config()
				cfg.Mailboxes[0].Graph.Discovery = discovery
				cfg.Mailboxes[0].Graph.PageSize = 50

				ctx, cancel := context.WithCancel(context.Background())
				w, closeFn := graphWorker(t, cfg,
					func(b importer.Bus) importer.Bus { return &crashBus{Bus: b, step: step, at: 70, cancel: cancel} },
					func(s mailbox.Source) mailbox.Source { return &crashSource{Source: s, step: step, cancel: cancel} })
				done := make(chan error, 1)
				go func() { done <- w.Run(ctx, ctx, false) }()
				select {
				case <-done:
				case <-time.After(graphHang):
					t.Fatal("worker did not stop after the simulated crash")
				}
				closeFn()
				if ctx.Err() == nil {
					t.Fatal("the crash point was never reached")
				}
				left := st.Count(0, stack.GraphImport)
				if left == 0 {
					t.Fatalf("crash at %s left nothing to recover (import folder empty)", step)
				}
				published := st.Stream(cfg.Bus.Stream.Name).Messages
				t.Logf("after the crash: %d messages published, %d left in the import folder", published, left)

				// Restart.
				if err := runOnce(t, cfg); err != nil {
					t.Fatalf("restart: %v", err)
				}
				assertGraphFolders(t, st, 0, n, 0)
				assertGraphStream(t, st, cfg, n)
			})
		}
	}
}

// graphCheck runs CheckImporter and returns its error and output.
func graphCheck(t *testing.T, cfg *config.Importer, create bool) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), graphHang)
	defer cancel()
	var out strings.Builder
	err := CheckImporter(ctx, cfg, &out, create, Deps{Logger: zaptest.NewLogger(t, zaptest.Level(zap.WarnLevel))})
	t.Logf("check (create %v): %v\n%s", create, err, out.String())
	return out.String(), err
}

func wantLines(t *testing.T, what, out string, want ...string) {
	t.Helper()
	for _, w := range want {
		if !strings.Contains(out, w) {
			t.Errorf("%s: output lacks %q:\n%s", what, w, out)
		}
	}
}

func wantFailed(t *testing.T, what, out string, err error, want ...string) {
	t.Helper()
	if !errors.Is(err, ErrCheckFailed) {
		t.Errorf("%s: check returned %v, want ErrCheckFailed:\n%s", what, err, out)
	}
	wantLines(t, what, out, want...)
}

// TestGraphCheck is the "Test connection" report for a Graph mailbox:
// app-only and delegated (after `auth login` with the device code), and
// each way it fails, saying what is wrong.
func TestGraphCheck(t *testing.T) {
	st := stack.StartGraph(t, stack.GraphOptions{Delegated: true})
	addr := stack.GraphAddress(0)
	st.Seed(0, 5, func(k int) []byte { return stack.Invoice(k, 800) })
	for _, m := range st.Graph.Messages(addr, stack.GraphImport)[:2] {
		st.Graph.MarkRead(addr, m.ID, true)
	}
	opened := fmt.Sprintf("opened import folder '%s' containing 5 messages (3 unread)", stack.GraphImport)
	dests := []string{
		fmt.Sprintf("processed folder '%s' present (0 messages)", stack.GraphProcessed),
		fmt.Sprintf("error folder '%s' present (0 messages)", stack.GraphError),
	}

	t.Run("app", func(t *testing.T) {
		out, err := graphCheck(t, st.Config(), false)
		if err != nil {
			t.Fatalf("check: %v\n%s", err, out)
		}
		wantLines(t, "app-only", out, append([]string{
			fmt.Sprintf(`mailbox %q (%s, graph %s)`, stack.GraphName(0), addr, st.Graph.BaseURL()),
			fmt.Sprintf(`ok    token for https://graph.microsoft.com/.default (identity %q), valid until`, stack.GraphIdentityID),
			"ok    " + opened,
		}, dests...)...)
		if strings.Contains(out, "FAIL") || strings.Contains(out, stack.Secret) {
			t.Errorf("app-only check:\n%s", out)
		}
	})

	t.Run("delegated", func(t *testing.T) {
		cfg := st.DelegatedConfig()
		ctx, cancel := context.WithTimeout(context.Background(), graphHang)
		defer cancel()
		// Before the sign-in: the check says how to sign in.
		out, err := graphCheck(t, cfg, false)
		wantFailed(t, "delegated, not signed in", out, err, "not signed in", "importer auth login --config FILE --mailbox "+stack.GraphName(0))

		w := &codeApprover{t: t, idp: st.IdP, as: stack.GraphServiceUser}
		if err := AuthLogin(ctx, cfg, stack.GraphName(0), w, Deps{Logger: zaptest.NewLogger(t, zaptest.Level(zap.WarnLevel))}); err != nil {
			t.Fatalf("auth login: %v\n%s", err, w)
		}
		out, err = graphCheck(t, cfg, false)
		if err != nil {
			t.Fatalf("delegated check: %v\n%s", err, out)
		}
		wantLines(t, "delegated", out, append([]string{
			fmt.Sprintf(`ok    token for https://graph.microsoft.com/Mail.ReadWrite.Shared (identity %q), valid until`, stack.GraphDelegatedID),
			"ok    " + opened,
		}, dests...)...)

		// Without Full Access to the mailbox: a 403 that names what the
		// service account needs.
		st.Graph.RevokeFullAccess(stack.GraphServiceUser, addr)
		out, err = graphCheck(t, cfg, false)
		st.Graph.GrantFullAccess(stack.GraphServiceUser, addr)
		wantFailed(t, "delegated without Full Access", out, err, "FAIL  access to the mailbox: ", "403", "Mail.ReadWrite.Shared", "Full Access to "+addr)
		if strings.Contains(out, "not found") || strings.Contains(out, "logged in") {
			t.Errorf("a 403 is reported as a missing folder or a login:\n%s", out)
		}
	})

	t.Run("wrong-secret", func(t *testing.T) {
		cfg := st.Config()
		id := cfg.Identities[stack.GraphIdentityID]
		id.ClientSecret = "wrong-secret-value"
		cfg.Identities[stack.GraphIdentityID] = id
		out, err := graphCheck(t, cfg, false)
		wantFailed(t, "wrong secret", out, err, "FAIL  token for https://graph.microsoft.com/.default", "AADSTS7000215", stack.ClientID)
		if strings.Contains(out, "wrong-secret-value") {
			t.Errorf("output leaks the secret:\n%s", out)
		}
	})

	t.Run("unknown-client", func(t *testing.T) {
		cfg := st.Config()
		id := cfg.Identities[stack.GraphIdentityID]
		id.ClientID = "9f8e7d6c-5b4a-4392-8170-6f5e4d3c2b1a"
		cfg.Identities[stack.GraphIdentityID] = id
		out, err := graphCheck(t, cfg, false)
		wantFailed(t, "unknown client", out, err, "AADSTS700016", "9f8e7d6c-5b4a-4392-8170-6f5e4d3c2b1a")
	})

	t.Run("expired-secret", func(t *testing.T) {
		if err := st.IdP.SetSecretExpired(stack.ClientID, true); err != nil {
			t.Fatal(err)
		}
		defer st.IdP.SetSecretExpired(stack.ClientID, false)
		out, err := graphCheck(t, st.Config(), false)
		wantFailed(t, "expired secret", out, err, "AADSTS7000222")
		if strings.Contains(out, stack.Secret) {
			t.Errorf("output leaks the secret:\n%s", out)
		}
	})

	t.Run("missing-permission", func(t *testing.T) {
		// The app registration lacks (admin consent for) Mail.ReadWrite:
		// its tokens carry no role, Graph answers 403.
		st.SetAppRoles()
		defer st.ResetAppRoles()
		out, err := graphCheck(t, st.Config(), false)
		wantFailed(t, "missing permission", out, err, "FAIL  access to the mailbox: ", "403", "application permission Mail.ReadWrite", "admin consent")
		if strings.Contains(out, "not found") || strings.Contains(out, "logged in") {
			t.Errorf("a 403 is reported as a missing folder or a login:\n%s", out)
		}
		// Mail.Read: reading works, creating folders does not.
		st.SetAppRoles("Mail.Read")
		cfg := st.Config()
		cfg.Mailboxes[0].Folders.Error = stack.GraphError + "-nieuw"
		out, err = graphCheck(t, cfg, true)
		wantFailed(t, "Mail.Read only", out, err, "ok    "+opened,
			fmt.Sprintf("FAIL  error folder '%s-nieuw': ", stack.GraphError), "403", "Mail.ReadWrite")
		if strings.Contains(out, "not found") {
			t.Errorf("a folder that could not be created for lack of permission is reported as missing:\n%s", out)
		}
	})

	t.Run("mailbox-not-found", func(t *testing.T) {
		cfg := st.Config()
		cfg.Mailboxes[0].Address = "nobody@example.test"
		out, err := graphCheck(t, cfg, true)
		wantFailed(t, "unknown mailbox", out, err, "FAIL  access to the mailbox: ", "nobody@example.test", "was not found", "mailboxes[facturen].address")
		if strings.Contains(out, "--create-folders") {
			t.Errorf("an unknown mailbox is reported as missing folders:\n%s", out)
		}
	})

	t.Run("folder-not-found", func(t *testing.T) {
		fresh := stack.StartGraph(t, stack.GraphOptions{NoDestFolders: true})
		fresh.Seed(0, 2, func(k int) []byte { return stack.Invoice(k, 800) })
		cfg := fresh.Config()
		out, err := graphCheck(t, cfg, false)
		wantFailed(t, "no processed and error folders", out, err,
			fmt.Sprintf("opened import folder '%s' containing 2 messages (2 unread)", stack.GraphImport),
			fmt.Sprintf("FAIL  processed folder '%s' not found (run `importer check --create-folders` to create it)", stack.GraphProcessed),
			fmt.Sprintf("FAIL  error folder '%s' not found", stack.GraphError))
		out, err = graphCheck(t, cfg, true)
		if err != nil {
			t.Fatalf("check --create-folders: %v\n%s", err, out)
		}
		wantLines(t, "check --create-folders", out,
			fmt.Sprintf("processed folder '%s' present (0 messages)", stack.GraphProcessed),
			fmt.Sprintf("error folder '%s' present (0 messages)", stack.GraphError))
		for _, f := range []string{stack.GraphProcessed, stack.GraphError} {
			if _, ok := fresh.Graph.FolderID(stack.GraphAddress(0), f); !ok {
				t.Errorf("folder %s was not created", f)
			}
		}
		// A missing import folder names the folders that exist there.
		cfg.Mailboxes[0].Folders.Import = "Postvak IN/Algemeen/Imprt"
		out, err = graphCheck(t, cfg, true)
		wantFailed(t, "import folder missing", out, err, "import folder 'Postvak IN/Algemeen/Imprt' not found", `no folder "Imprt" in Postvak IN/Algemeen`, "Fout, Import, Verwerkt")
	})
}

// TestGraphAuthStatus: `auth status` for a Graph mailbox with a delegated
// identity: signed in after `auth login`; after the refresh tokens are
// revoked (password reset, say) and a refresh failed, it says to sign in
// again.
func TestGraphAuthStatus(t *testing.T) {
	st := stack.StartGraph(t, stack.GraphOptions{Delegated: true})
	st.Seed(0, 2, func(k int) []byte { return stack.Invoice(k, 800) })
	// Access tokens shorter-lived than the renewal margin: every new
	// process asks Entra ID for one with the refresh token.
	st.IdP.SetTokenTTL(2 * time.Minute)
	cfg := st.DelegatedConfig()
	deps := Deps{Logger: zaptest.NewLogger(t, zaptest.Level(zap.ErrorLevel))}
	ctx, cancel := context.WithTimeout(context.Background(), graphHang)
	defer cancel()
	signIn := "importer auth login --config FILE --mailbox " + stack.GraphName(0)

	var out bytes.Buffer
	err := AuthStatus(ctx, cfg, &out, deps)
	if !errors.Is(err, ErrAuthAttention) || !strings.Contains(out.String(), "not signed in: run `"+signIn+"`") {
		t.Fatalf("status before sign-in: %v\n%s", err, out.String())
	}

	w := &codeApprover{t: t, idp: st.IdP, as: stack.GraphServiceUser}
	if err := AuthLogin(ctx, cfg, stack.GraphName(0), w, deps); err != nil {
		t.Fatalf("auth login: %v\n%s", err, w)
	}
	out.Reset()
	if err := AuthStatus(ctx, cfg, &out, deps); err != nil {
		t.Fatalf("status after sign-in: %v\n%s", err, out.String())
	}
	wantLines(t, "status after sign-in", out.String(),
		fmt.Sprintf(`mailbox %q (graph, %s)`, stack.GraphName(0), stack.GraphAddress(0)),
		fmt.Sprintf(`identity %q: kind delegated`, stack.GraphDelegatedID),
		"service account: "+stack.GraphServiceUser,
		"signed in as "+stack.GraphServiceUser+" on ",
		"refresh token renewed ")
	// The sign-in works for the importer.
	if err := runOnce(t, cfg); err != nil {
		t.Fatalf("run with the delegated sign-in: %v", err)
	}
	assertGraphFolders(t, st, 0, 2, 0)

	if err := st.IdP.RevokeRefreshTokens(stack.GraphServiceUser); err != nil {
		t.Fatal(err)
	}
	// The next token request (here by check) fails...
	co, err := graphCheck(t, cfg, false)
	wantFailed(t, "check after revocation", co, err, "AADSTS50173", signIn)
	// ... and status, reading the shared token cache, says so.
	out.Reset()
	err = AuthStatus(ctx, cfg, &out, deps)
	if !errors.Is(err, ErrAuthAttention) {
		t.Errorf("status after revocation: %v", err)
	}
	wantLines(t, "status after revocation", out.String(), "the refresh token was rejected", "AADSTS50173", "sign in again: run `"+signIn+"`")

	// Signing in again fixes it.
	w = &codeApprover{t: t, idp: st.IdP, as: stack.GraphServiceUser}
	if err := AuthLogin(ctx, cfg, stack.GraphName(0), w, deps); err != nil {
		t.Fatalf("auth login again: %v\n%s", err, w)
	}
	out.Reset()
	if err := AuthStatus(ctx, cfg, &out, deps); err != nil {
		t.Fatalf("status after signing in again: %v\n%s", err, out.String())
	}
}

// A delegated sign-in for a Graph mailbox asks for the scopes of the cloud
// of its graph.base_url, the ones the importer then asks tokens for.
func TestGraphDelegatedScopesFollowTheCloud(t *testing.T) {
	for base, res := range map[string]string{
		"https://graph.microsoft.com/v1.0":             "https://graph.microsoft.com",
		"https://graph.microsoft.us/v1.0":              "https://graph.microsoft.us",
		"https://dod-graph.microsoft.us/v1.0":          "https://dod-graph.microsoft.us",
		"https://microsoftgraph.chinacloudapi.cn/v1.0": "https://microsoftgraph.chinacloudapi.cn",
		"https://127.0.0.1:8443/v1.0":                  "https://graph.microsoft.com",
	} {
		got := delegatedScopes(config.Mailbox{Source: "graph", Graph: config.Graph{BaseURL: base}}, config.Identity{})
		want := []string{res + "/Mail.ReadWrite.Shared", res + "/Mail.Send.Shared", "offline_access"}
		if strings.Join(got, " ") != strings.Join(want, " ") {
			t.Errorf("%s: sign-in scopes %q, want %q", base, got, want)
		}
	}
}
