package app

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/mailpipe/mailpipe/internal/devcert"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/mailpipe/mailpipe/internal/bus"
	"github.com/mailpipe/mailpipe/internal/config"
	"github.com/mailpipe/mailpipe/internal/devidp"
	"github.com/mailpipe/mailpipe/internal/devmail"
	"github.com/mailpipe/mailpipe/internal/logging"
	"github.com/mailpipe/mailpipe/pkg/mailmsg"
)

const (
	demoMailbox = "facturen@demo.mailpipe.test"
	demoClient  = "7d3c2a51-0b8e-4f6a-9c1d-5e2f8a7b6c40"
	demoSecret  = "demo-client-secret-value"
	demoTenant  = "demo.onmicrosoft.com"
)

// demoConfig is the importer configuration the demo writes and then loads
// like any other: a Dutch shared mailbox read over IMAP with XOAUTH2.
const demoConfig = `# Written by "importer demo": a local dev mailbox stands in for Exchange Online.
log:
  level: info
  format: console
nats:
  embedded:
    store_dir: {{DIR}}/nats
identities:
  demo-tenant:
    tenant_id: {{TENANT}}
    client_id: {{CLIENT}}
    client_secret_file: {{DIR}}/client-secret
    authority_host: {{AUTHORITY}}
    ca_file: {{DIR}}/devidp-ca.pem
mailboxes:
  - name: facturen
    address: {{MAILBOX}}
    source: imap
    identity: demo-tenant
    imap:
      host: 127.0.0.1
      port: {{IMAPPORT}}
      security: tls
      tls:
        ca_file: {{DIR}}/imap-ca.pem
    folders:
      import: Postvak IN/Algemeen/Import
      processed: Postvak IN/Algemeen/Verwerkt
      error: Postvak IN/Algemeen/Fout
    poll_interval: 10s
    max_message_size: 5MiB
`

// Demo runs the importer end to end on this machine: a fake Entra ID token
// endpoint, a dev IMAP mailbox seeded with supplier invoices (and one scan
// too large to import), embedded NATS; then it shows what a consumer reads.
// The importer runs through the same code as production (config loader,
// MSAL, XOAUTH2 over TLS, JetStream). Then the sender queues and sends a
// reply to the first invoice through a dev SMTP submission server into
// the dev mailboxes, and shows its status events.
func Demo(ctx context.Context, dir string, out io.Writer) error {
	dir, err := filepath.Abs(dir)
	if err != nil {
		return err
	}
	if err := os.RemoveAll(dir); err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	log, err := logging.New("info", "console")
	if err != nil {
		return err
	}
	step := func(format string, a ...any) { fmt.Fprintf(out, "\n==> "+format+"\n", a...) }

	step("Starting a local stand-in for Entra ID (OAuth2 client credentials)")
	idp, err := devidp.Start(devidp.Options{Tenant: demoTenant, Clients: []devidp.Client{{
		ID: demoClient, Secret: demoSecret, Email: demoMailbox,
	}}})
	if err != nil {
		return fmt.Errorf("start identity provider: %w", err)
	}
	defer idp.Close()
	if _, err := idp.WriteCAFile(dir); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "client-secret"), []byte(demoSecret+"\n"), 0o600); err != nil {
		return err
	}
	fmt.Fprintf(out, "    authority https://%s/%s\n", idp.AuthorityHost(), demoTenant)

	step("Starting a dev IMAP mailbox (TLS, XOAUTH2) for %s", demoMailbox)
	ca, err := devcert.New("mailpipe dev mailbox", "")
	if err != nil {
		return err
	}
	tlsCfg, caPEM := ca.ServerTLS(), ca.PEM
	if err := os.WriteFile(filepath.Join(dir, "imap-ca.pem"), caPEM, 0o600); err != nil {
		return err
	}
	mail, err := devmail.Start(devmail.Options{
		TLSConfig: tlsCfg,
		Users:     []devmail.User{{Address: demoMailbox}, {Address: demoBookkeeping}},
		ValidateToken: func(tok string) (string, error) {
			c, err := idp.Validate(tok, "https://outlook.office365.com")
			if err != nil {
				return "", err
			}
			return c.Email, nil
		},
		Logger: log.Named("devmail"),
	})
	if err != nil {
		return fmt.Errorf("start dev mailbox: %w", err)
	}
	defer mail.Close()
	for _, f := range []string{"INBOX/Algemeen/Import", "INBOX/Algemeen/Verwerkt", "INBOX/Algemeen/Fout"} {
		if err := mail.CreateFolder(demoMailbox, f); err != nil {
			return fmt.Errorf("create folder %s: %w", f, err)
		}
	}
	now := time.Now()
	invoices := devmail.SampleInvoices(12, now)
	for _, m := range invoices {
		if err := mail.Append(demoMailbox, "INBOX/Algemeen/Import", m, now); err != nil {
			return err
		}
	}
	scan := scanMessage(now, 1, 2_000_000)
	big := scanMessage(now, 2, 6_000_000)
	for _, m := range [][]byte{scan, big} {
		if err := mail.Append(demoMailbox, "INBOX/Algemeen/Import", m, now); err != nil {
			return err
		}
	}
	fmt.Fprintf(out, "    seeded 'Postvak IN/Algemeen/Import' with %d supplier invoices, a %.1f MB scan (over the 512 KiB\n    payload threshold: goes through the object store) and a %.1f MB scan (over the 5 MiB limit)\n",
		len(invoices), float64(len(scan))/1e6, float64(len(big))/1e6)

	_, port, _ := net.SplitHostPort(mail.Addr())
	cfgText := strings.NewReplacer("{{DIR}}", dir, "{{TENANT}}", demoTenant, "{{CLIENT}}", demoClient,
		"{{AUTHORITY}}", idp.AuthorityHost(), "{{MAILBOX}}", demoMailbox, "{{IMAPPORT}}", port).Replace(demoConfig)
	cfgPath := filepath.Join(dir, "importer.yaml")
	if err := os.WriteFile(cfgPath, []byte(cfgText), 0o600); err != nil {
		return err
	}
	cfg, err := config.LoadImporter(cfgPath)
	if err != nil {
		return fmt.Errorf("demo config: %w", err)
	}

	step("Connecting NATS (embedded JetStream, store in %s)", cfg.NATS.Embedded.StoreDir)
	conn, err := bus.Connect(ctx, cfg.NATS, log)
	if err != nil {
		return err
	}
	defer conn.Close()
	deps := Deps{Logger: log, Conn: conn}

	step("importer check --config %s", cfgPath)
	if err := CheckImporter(ctx, cfg, out, false, deps); err != nil {
		return err
	}

	step("importer run --once --config %s", cfgPath)
	if err := RunImporter(ctx, cfg, true, deps); err != nil {
		return err
	}

	step("Folders after the run")
	for _, f := range []string{"INBOX/Algemeen/Import", "INBOX/Algemeen/Verwerkt", "INBOX/Algemeen/Fout"} {
		n, err := mail.Count(demoMailbox, f)
		if err != nil {
			return err
		}
		fmt.Fprintf(out, "    %-28s %3d messages\n", strings.Replace(f, "INBOX", "Postvak IN", 1), n)
	}

	step("What a consumer receives (pkg/mailmsg) on %s.facturen", cfg.Bus.Stream.SubjectPrefix)
	if err := showStream(ctx, conn.JetStream(), cfg.Bus.Stream.Name, out); err != nil {
		return err
	}
	step("Dead letters on %s.facturen", cfg.Bus.DeadLetter.SubjectPrefix)
	if err := showDeadLetters(ctx, conn.JetStream(), cfg.Bus.DeadLetter.Name, out); err != nil {
		return err
	}
	// The other direction: the sender replies to an imported invoice.
	if err := demoSender(ctx, dir, conn, idp, tlsCfg, mail, cfg.Bus.Stream.Name, log, out, step); err != nil {
		return err
	}
	fmt.Fprintf(out, "\nDone. The configurations used are %s and %s; formats: docs/messages.md, docs/jobs.md.\n",
		cfgPath, filepath.Join(dir, "sender.yaml"))
	return nil
}

func showStream(ctx context.Context, js jetstream.JetStream, stream string, out io.Writer) error {
	cons, err := js.OrderedConsumer(ctx, stream, jetstream.OrderedConsumerConfig{})
	if err != nil {
		return err
	}
	info, err := cons.Info(ctx)
	if err != nil {
		return err
	}
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	var first jetstream.Msg
	fmt.Fprintln(tw, "    SEQ\tFROM\tSUBJECT\tSIZE\tBODY\tSHA-256")
	for i := uint64(0); i < info.NumPending; i++ {
		msg, err := cons.Next(jetstream.FetchMaxWait(5 * time.Second))
		if err != nil {
			return err
		}
		m, err := mailmsg.Parse(msg)
		if err != nil {
			return err
		}
		body, err := m.Body(ctx, js)
		if err != nil {
			return err
		}
		n, err := io.Copy(io.Discard, body)
		body.Close()
		if err != nil {
			return fmt.Errorf("read body of %s: %w", m.ID, err)
		}
		where := "payload"
		if m.Object != nil {
			where = "object store"
		}
		if first == nil {
			first = msg
		}
		meta, _ := msg.Metadata()
		fmt.Fprintf(tw, "    %d\t%s\t%s\t%d\t%s\t%s…\n", meta.Sequence.Stream, trunc(m.From, 38), trunc(m.Subject, 48), n, where, m.SHA256[:12])
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if first != nil {
		fmt.Fprintf(out, "\n    Headers of the first message (NATS subject %s):\n", first.Subject())
		h := first.Headers()
		keys := make([]string, 0, len(h))
		for k := range h {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			fmt.Fprintf(out, "      %s: %s\n", k, h.Get(k))
		}
	}
	return nil
}

func showDeadLetters(ctx context.Context, js jetstream.JetStream, stream string, out io.Writer) error {
	cons, err := js.OrderedConsumer(ctx, stream, jetstream.OrderedConsumerConfig{})
	if err != nil {
		return err
	}
	info, err := cons.Info(ctx)
	if err != nil {
		return err
	}
	for i := uint64(0); i < info.NumPending; i++ {
		msg, err := cons.Next(jetstream.FetchMaxWait(5 * time.Second))
		if err != nil {
			return err
		}
		fmt.Fprintf(out, "    %s: %s\n", msg.Headers().Get(mailmsg.HeaderSourceID), msg.Headers().Get(mailmsg.HeaderReason))
	}
	if info.NumPending == 0 {
		fmt.Fprintln(out, "    (none)")
	}
	return nil
}

func trunc(s string, n int) string {
	r := []rune(s)
	if len(r) <= n {
		return s
	}
	return string(r[:n-1]) + "…"
}

// scanMessage is a "scanned invoice" of about size bytes from the office
// scanner: the 6 MB one is over the demo's 5 MiB limit, so it goes to the
// error folder with a dead letter.
func scanMessage(now time.Time, n, size int) []byte {
	var b strings.Builder
	fmt.Fprintf(&b, "From: Scanner Receptie <scanner@demo.mailpipe.test>\r\nTo: %s\r\nSubject: Scan %04d (600 dpi)\r\nDate: %s\r\nMessage-ID: <scan-%04d@demo.mailpipe.test>\r\nMIME-Version: 1.0\r\nContent-Type: application/pdf; name=\"scan-%04d.pdf\"\r\nContent-Disposition: attachment; filename=\"scan-%04d.pdf\"\r\nContent-Transfer-Encoding: base64\r\n\r\n",
		demoMailbox, n, now.Format(time.RFC1123Z), n, n, n)
	line := strings.Repeat("QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo", 2) + "\r\n"
	for b.Len() < size {
		b.WriteString(line)
	}
	return []byte(b.String())
}
