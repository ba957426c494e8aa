// Command sender takes outbound mail jobs (docs/jobs.md) from NATS
// JetStream and sends them through Microsoft Graph or SMTP as the
// allow-listed shared mailboxes, within Exchange Online's sending limits,
// at most once each, reporting every job with status events.
//
//	sender run     --config F
//	sender check   --config F
//	sender enqueue --config F [--wait] [--source URI] job.json
//	sender auth login  --config F --mailbox ADDRESS [--profile NAME]
//	sender auth status --config F
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/mailpipe/mailpipe/internal/app"
	"github.com/mailpipe/mailpipe/internal/config"
	"github.com/mailpipe/mailpipe/internal/logging"
	"github.com/mailpipe/mailpipe/pkg/mailjob"
)

const usage = `usage:
  sender run     --config FILE                        send jobs until SIGTERM
  sender check   --config FILE                        test NATS, streams, consumers, and per mailbox the token and the right to send as it (nothing is sent)
  sender enqueue --config FILE [--wait] JOB.json      validate a job (JSON, docs/jobs.md; - reads stdin) and queue it; --wait follows its status events
  sender auth login  --config FILE --mailbox ADDRESS [--profile NAME]  sign in a delegated identity (device code)
  sender auth status --config FILE                    sign-in, token and secret/certificate expiry per identity
`

func main() { os.Exit(run(os.Args[1:], os.Stdin, os.Stdout, os.Stderr)) }

func run(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	cmd := args[0]
	if cmd == "auth" {
		if len(args) < 2 || (args[1] != "login" && args[1] != "status") {
			fmt.Fprint(stderr, usage)
			return 2
		}
		cmd = "auth " + args[1]
		args = args[1:]
	}
	switch cmd {
	case "run", "check", "enqueue", "auth login", "auth status":
	case "-h", "--help", "help":
		fmt.Fprint(stdout, usage)
		return 0
	default:
		fmt.Fprintf(stderr, "unknown command %q\n%s", cmd, usage)
		return 2
	}
	fs := flag.NewFlagSet("sender "+cmd, flag.ContinueOnError)
	fs.SetOutput(stderr)
	cfgPath := fs.String("config", "", "configuration file (YAML)")
	mailbox := fs.String("mailbox", "", "auth login: the mailbox (address or name) whose identity signs in")
	profile := fs.String("profile", "", "auth login: the mailbox's sender profile whose identity signs in")
	wait := fs.Bool("wait", false, "enqueue: follow the job's status events until the final one")
	timeout := fs.Duration("timeout", 10*time.Minute, "enqueue --wait: give up waiting after this long")
	source := fs.String("source", "", "enqueue: ce-source of the job (default /mailpipe/sender-cli)")
	// Flags may come before or after the job file.
	var positional []string
	rest := args[1:]
	for {
		if err := fs.Parse(rest); err != nil {
			return 2
		}
		if fs.NArg() == 0 {
			break
		}
		positional = append(positional, fs.Arg(0))
		rest = fs.Args()[1:]
	}
	if *cfgPath == "" {
		fmt.Fprintln(stderr, "--config is required")
		return 2
	}
	if cmd == "enqueue" && len(positional) != 1 {
		fmt.Fprintln(stderr, "enqueue needs one job file (JSON), or - for standard input")
		return 2
	}
	if cmd != "enqueue" && len(positional) > 0 {
		fmt.Fprintf(stderr, "unexpected argument %q\n", positional[0])
		return 2
	}
	cfg, err := config.LoadSender(*cfgPath)
	if err != nil {
		fmt.Fprintln(stderr, err) // names the file already
		return 2
	}
	log, err := logging.New(cfg.Log.Level, cfg.Log.Format)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 2
	}
	defer log.Sync()
	deps := app.Deps{Logger: log}

	switch cmd {
	case "auth login":
		if *mailbox == "" {
			fmt.Fprintln(stderr, "--mailbox is required")
			return 2
		}
		if err := app.SenderAuthLogin(ctx, cfg, *mailbox, *profile, stdout, deps); err != nil {
			fmt.Fprintln(stderr, err)
			return 1
		}
		return 0
	case "auth status":
		if err := app.SenderAuthStatus(ctx, cfg, stdout, deps); err != nil {
			if !errors.Is(err, app.ErrAuthAttention) {
				fmt.Fprintln(stderr, err)
			}
			return 1
		}
		return 0
	case "check":
		if err := app.CheckSender(ctx, cfg, stdout, app.SenderDeps{Deps: deps}); err != nil {
			if !errors.Is(err, app.ErrCheckFailed) {
				fmt.Fprintln(stderr, err)
			}
			return 1
		}
		fmt.Fprintln(stdout, "all checks passed")
		return 0
	case "enqueue":
		return enqueue(ctx, cfg, positional[0], *source, *wait, *timeout, deps, stdin, stdout, stderr)
	}
	if err := app.RunSender(ctx, cfg, app.SenderDeps{Deps: deps}); err != nil {
		log.Error("sender stopped with an error")
		fmt.Fprintln(stderr, err)
		return 1
	}
	return 0
}

func enqueue(ctx context.Context, cfg *config.Sender, file, source string, wait bool, timeout time.Duration,
	deps app.Deps, stdin io.Reader, stdout, stderr io.Writer) int {
	var (
		data []byte
		err  error
	)
	if file == "-" {
		data, err = io.ReadAll(stdin)
	} else {
		data, err = os.ReadFile(file)
	}
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 2
	}
	res, err := app.EnqueueJob(ctx, cfg, data, source, deps)
	var verr *mailjob.ValidationError
	switch {
	case errors.As(err, &verr):
		fmt.Fprintf(stderr, "%s: the job is invalid (%d problems), nothing was queued:\n", file, len(verr.Problems))
		for _, p := range verr.Problems {
			fmt.Fprintf(stderr, "  %s\n", p)
		}
		return 1
	case err != nil:
		fmt.Fprintln(stderr, err)
		return 1
	}
	r := res.Result
	if r.Duplicate {
		fmt.Fprintf(stdout, "job %s: duplicate: a job with this id was already queued (stream %s, sequence %d); nothing new was stored\n",
			res.Job.JobID, r.Stream, r.Sequence)
	} else {
		fmt.Fprintf(stdout, "job %s: queued on %s (stream %s, sequence %d)\n", res.Job.JobID, r.Subject, r.Stream, r.Sequence)
	}
	if !wait {
		return 0
	}
	wctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	ev, err := app.WatchJob(wctx, cfg, res.Job.JobID, stdout, deps)
	if err != nil {
		fmt.Fprintf(stderr, "waiting for job %s: %v\n", res.Job.JobID, err)
		return 1
	}
	if ev.Type != mailjob.StatusSent {
		return 1
	}
	return 0
}
