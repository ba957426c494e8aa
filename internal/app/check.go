package app

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/mailpipe/mailpipe/internal/auth"
	"github.com/mailpipe/mailpipe/internal/bus"
	"github.com/mailpipe/mailpipe/internal/config"
	"github.com/mailpipe/mailpipe/internal/mailbox"
)

// ErrCheckFailed is returned by CheckImporter when any check failed; the
// details were written to the output.
var ErrCheckFailed = errors.New("one or more checks failed")

// checker writes one line per check.
type checker struct {
	out    io.Writer
	failed bool
}

func (c *checker) ok(format string, a ...any) { fmt.Fprintf(c.out, "  ok    "+format+"\n", a...) }
func (c *checker) fail(format string, a ...any) {
	c.failed = true
	fmt.Fprintf(c.out, "  FAIL  "+format+"\n", a...)
}
func (c *checker) warn(format string, a ...any) { fmt.Fprintf(c.out, "  warn  "+format+"\n", a...) }

// CheckImporter is the "Test connection" button: for every mailbox it gets
// a token, logs in, resolves the folders (creating processed/error folders
// with create), then checks NATS and the stream settings. It writes a
// report to out and returns ErrCheckFailed when anything failed.
func CheckImporter(ctx context.Context, cfg *config.Importer, out io.Writer, create bool, d Deps) error {
	c := &checker{out: out}
	fmt.Fprintln(out, "nats")
	conn, b, closeConn := checkNATS(ctx, c, cfg, d)
	defer closeConn()
	srcs, err := newSources(ctx, cfg, conn, b, nil, d)
	if err != nil {
		return err
	}
	for name, id := range cfg.Identities {
		checkIdentityExpiry(c, name, id)
	}
	for _, m := range cfg.Mailboxes {
		where := fmt.Sprintf("imap %s:%d", m.IMAP.Host, m.IMAP.Port)
		if m.Source == "graph" {
			where = "graph " + m.Graph.BaseURL
		}
		fmt.Fprintf(out, "mailbox %q (%s, %s)\n", m.Name, m.Address, where)
		checkMailbox(ctx, c, m, srcs, create)
	}
	if c.failed {
		return ErrCheckFailed
	}
	return nil
}

func checkIdentityExpiry(c *checker, name string, id config.Identity) {
	if id.SecretExpires != "" {
		if t, err := time.Parse("2006-01-02", id.SecretExpires); err == nil {
			left := time.Until(t)
			switch {
			case left < 0:
				c.fail("identity %q: client secret expired on %s: create a new secret in Entra ID and update the Secret", name, id.SecretExpires)
			case left < 30*24*time.Hour:
				c.warn("identity %q: client secret expires on %s (%d days): renew it now", name, id.SecretExpires, int(left.Hours()/24))
			}
		}
	}
	if id.CertificateFile != "" {
		if exp, ok, err := auth.CertificateExpiry(id); err == nil && ok {
			left := time.Until(exp)
			switch {
			case left < 0:
				c.fail("identity %q: certificate expired on %s", name, exp.Format("2006-01-02"))
			case left < 30*24*time.Hour:
				c.warn("identity %q: certificate expires on %s (%d days)", name, exp.Format("2006-01-02"), int(left.Hours()/24))
			}
		}
	}
}

func checkMailbox(ctx context.Context, c *checker, m config.Mailbox, srcs *sources, create bool) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	if m.Identity != "" && (m.Source == "graph" || m.IMAP.Auth != "password") {
		id := srcs.cfg.Identities[m.Identity]
		appScope, delegatedScope := imapScope(id.AuthorityHost), imapDelegatedScope(id.AuthorityHost)
		if m.Source == "graph" {
			r := graphResource(m.Graph.BaseURL)
			appScope, delegatedScope = r+"/.default", r+"/Mail.ReadWrite.Shared"
		}
		scope := appScope
		if isDelegated(id) {
			scope = delegatedScope
		}
		ts, _, err := srcs.tokens(m, appScope, delegatedScope)
		if err == nil {
			var tok auth.Token
			if tok, err = ts.Token(ctx); err == nil {
				c.ok("token for %s (identity %q), valid until %s", scope, m.Identity, tok.ExpiresOn.Local().Format("15:04"))
			}
		}
		if err != nil {
			c.fail("token for %s (identity %q): %v", scope, m.Identity, err)
			return
		}
	}
	src, err := srcs.New(m)
	if err != nil {
		c.fail("%v", err)
		return
	}
	defer src.Close()
	folders, err := src.Check(ctx, create)
	if len(folders) == 0 && err != nil {
		if m.Source == "graph" {
			c.fail("access to the mailbox: %v", err)
		} else {
			c.fail("login: %v", err)
		}
		return
	}
	c.ok("logged in as %s", m.Address)
	// Each error about one folder is reported with that folder; the rest
	// after the folders.
	errs := unjoin(err)
	if err == nil {
		errs = nil
	}
	reported := make([]bool, len(errs))
	errFor := func(path string) (int, error) {
		for i, e := range errs {
			var me *mailbox.Error
			if !reported[i] && errors.As(e, &me) && me.Folder == path {
				return i, e
			}
		}
		return -1, nil
	}
	for i, f := range folders {
		role := "import folder"
		switch {
		case i == 1:
			role = "processed folder"
		case i == 2:
			role = "error folder"
		case i > 2:
			role = "import subfolder"
		}
		switch {
		case !f.Exists:
			j, e := errFor(f.Path)
			switch {
			case e != nil && mailbox.KindOf(e) != mailbox.NotFound:
				// Not known to be missing: say what went wrong.
				reported[j] = true
				c.fail("%s '%s': %v", role, f.Path, e)
			case i == 0 && e != nil:
				// The details name what exists there.
				reported[j] = true
				c.fail("%s '%s' not found: %v", role, f.Path, e)
			case i > 0:
				c.fail("%s '%s' not found (run `importer check --create-folders` to create it)", role, f.Path)
			default:
				c.fail("%s '%s' not found", role, f.Path)
			}
		case i == 0:
			c.ok("opened %s '%s' containing %d messages (%d unread)", role, f.Path, f.Messages, f.Unseen)
		case f.Messages < 0:
			c.ok("%s '%s'", role, f.Path)
		default:
			c.ok("%s '%s' present (%d messages)", role, f.Path, f.Messages)
		}
	}
	for i, e := range errs {
		if !reported[i] && mailbox.KindOf(e) != mailbox.NotFound {
			c.fail("%v", e)
		}
	}
}

func unjoin(err error) []error {
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		return j.Unwrap()
	}
	return []error{err}
}

// checkNATS connects and opens the streams, reporting both; it returns
// what it could open (nil when it failed) and a func closing it.
func checkNATS(ctx context.Context, c *checker, cfg *config.Importer, d Deps) (*bus.Conn, *bus.Bus, func()) {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	conn, owned, err := connect(ctx, cfg, d)
	if err != nil {
		c.fail("connect: %v", err)
		return nil, nil, func() {}
	}
	closeConn := func() {
		if owned {
			conn.Close()
		}
	}
	if conn.Embedded() {
		c.ok("embedded NATS server with JetStream (store %s)", cfg.NATS.Embedded.StoreDir)
	} else {
		c.ok("connected to %s", conn.ClientURL())
	}
	b, err := bus.Open(ctx, conn, cfg.Bus, d.logger())
	if err != nil {
		c.fail("streams: %v", err)
		return conn, nil, closeConn
	}
	info, err := b.StreamInfo(ctx)
	if err != nil {
		c.fail("stream info: %v", err)
		return conn, b, closeConn
	}
	c.ok("%s", info)
	return conn, b, closeConn
}
