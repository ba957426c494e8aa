// Command importer imports mail from IMAP (and later Graph) import folders
// into NATS JetStream, moving each message to the processed folder only
// after JetStream acknowledged it.
//
//	importer run   --config F [--once]
//	importer check --config F [--create-folders]
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

	"github.com/mailpipe/mailpipe/internal/app"
	"github.com/mailpipe/mailpipe/internal/config"
	"github.com/mailpipe/mailpipe/internal/logging"
)

const usage = `usage:
  importer run   --config FILE [--once]          import continuously (--once: until the import folders are empty)
  importer check --config FILE [--create-folders] test tokens, logins, folders, NATS and streams
  importer auth login  --config FILE --mailbox NAME  sign in a delegated identity (device code)
  importer auth status --config FILE                 sign-in, token and secret/certificate expiry per mailbox
  importer demo  [--dir DIR]                      run against a local dev mailbox and embedded NATS (no tenant needed)
`

func main() { os.Exit(run(os.Args[1:], os.Stdout, os.Stderr)) }

func run(args []string, stdout, stderr io.Writer) int {
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
	fs := flag.NewFlagSet("importer "+cmd, flag.ContinueOnError)
	fs.SetOutput(stderr)
	cfgPath := fs.String("config", "", "configuration file (YAML)")
	once := fs.Bool("once", false, "run: exit 0 once every import folder is empty")
	create := fs.Bool("create-folders", false, "check: create missing processed/error folders")
	dir := fs.String("dir", ".demo", "demo: working directory")
	mailboxName := fs.String("mailbox", "", "auth login: the mailbox whose identity signs in")
	if err := fs.Parse(args[1:]); err != nil {
		return 2
	}
	switch cmd {
	case "demo":
		if err := app.Demo(ctx, *dir, stdout); err != nil {
			fmt.Fprintln(stderr, "demo:", err)
			return 1
		}
		return 0
	case "run", "check", "auth login", "auth status":
	default:
		fmt.Fprint(stderr, usage)
		return 2
	}
	if *cfgPath == "" {
		fmt.Fprintln(stderr, "--config is required")
		return 2
	}
	cfg, err := config.LoadImporter(*cfgPath)
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
		if *mailboxName == "" {
			fmt.Fprintln(stderr, "--mailbox is required")
			return 2
		}
		if err := app.AuthLogin(ctx, cfg, *mailboxName, stdout, deps); err != nil {
			fmt.Fprintln(stderr, err)
			return 1
		}
		return 0
	case "auth status":
		if err := app.AuthStatus(ctx, cfg, stdout, deps); err != nil {
			if !errors.Is(err, app.ErrAuthAttention) {
				fmt.Fprintln(stderr, err)
			}
			return 1
		}
		return 0
	}
	if cmd == "check" {
		err := app.CheckImporter(ctx, cfg, stdout, *create, deps)
		if err != nil {
			if !errors.Is(err, app.ErrCheckFailed) {
				fmt.Fprintln(stderr, err)
			}
			return 1
		}
		fmt.Fprintln(stdout, "all checks passed")
		return 0
	}
	if err := app.RunImporter(ctx, cfg, *once, deps); err != nil {
		log.Error("importer stopped with an error")
		fmt.Fprintln(stderr, err)
		return 1
	}
	return 0
}
