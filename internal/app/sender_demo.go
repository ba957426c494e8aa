package app

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"mime"
	"net"
	"net/mail"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/mailpipe/mailpipe/internal/bus"
	"github.com/mailpipe/mailpipe/internal/config"
	"github.com/mailpipe/mailpipe/internal/devidp"
	"github.com/mailpipe/mailpipe/internal/devmail"
	"github.com/mailpipe/mailpipe/pkg/mailjob"
	"github.com/mailpipe/mailpipe/pkg/mailmsg"
)

// demoBookkeeping is a second dev mailbox: the demo's reply goes to the
// supplier (outside) with a copy to it.
const demoBookkeeping = "boekhouding@demo.mailpipe.test"

// demoSenderConfig is the sender configuration the demo writes: the shared
// mailbox sends over SMTP submission (STARTTLS, XOAUTH2) with the same
// app registration.
const demoSenderConfig = `# Written by "importer demo": the dev SMTP server stands in for smtp.office365.com.
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
    identity: demo-tenant
    transport: smtp
    smtp:
      host: 127.0.0.1
      port: {{SMTPPORT}}
      security: starttls
      tls:
        ca_file: {{DIR}}/imap-ca.pem
`

// demoSender is the sender part of Demo: a dev SMTP server delivering
// into the dev mailboxes, a reply to the first imported invoice queued
// with `sender enqueue`, sent by `sender run`, its status events, and the
// reply in Sent Items and in the bookkeeping INBOX.
func demoSender(ctx context.Context, dir string, conn *bus.Conn, idp *devidp.Server, tlsCfg *tls.Config,
	mbox *devmail.Server, importStream string, log *zap.Logger, out io.Writer, step func(string, ...any)) error {
	step("Starting a dev SMTP submission server (STARTTLS, XOAUTH2) that delivers into the dev mailboxes")
	var (
		mu        sync.Mutex
		delivered [][]byte
	)
	smtpSrv, err := devmail.StartSMTP(devmail.SMTPOptions{
		TLSConfig: tlsCfg,
		Hostname:  "smtp.demo.mailpipe.test",
		ValidateToken: func(tok string) (string, error) {
			c, err := idp.Validate(tok, "https://outlook.office365.com")
			if err != nil {
				return "", err
			}
			return c.Email, nil
		},
		Deliver: func(from string, to []string, raw []byte) error {
			mu.Lock()
			delivered = append(delivered, bytes.Clone(raw))
			mu.Unlock()
			return mbox.DeliverLocal(from, to, raw)
		},
		Logger: log.Named("devsmtp"),
	})
	if err != nil {
		return fmt.Errorf("start dev SMTP server: %w", err)
	}
	defer smtpSrv.Close()
	_, port, _ := net.SplitHostPort(smtpSrv.Addr())
	fmt.Fprintf(out, "    smtp://%s (STARTTLS; AUTH XOAUTH2 with tokens of the demo tenant)\n", smtpSrv.Addr())

	cfgText := strings.NewReplacer("{{DIR}}", dir, "{{TENANT}}", demoTenant, "{{CLIENT}}", demoClient,
		"{{AUTHORITY}}", idp.AuthorityHost(), "{{MAILBOX}}", demoMailbox, "{{SMTPPORT}}", port).Replace(demoSenderConfig)
	cfgPath := filepath.Join(dir, "sender.yaml")
	if err := os.WriteFile(cfgPath, []byte(cfgText), 0o600); err != nil {
		return err
	}
	cfg, err := config.LoadSender(cfgPath)
	if err != nil {
		return fmt.Errorf("demo sender config: %w", err)
	}
	deps := Deps{Logger: log, Conn: conn}

	step("sender check --config %s", cfgPath)
	if err := CheckSender(ctx, cfg, out, SenderDeps{Deps: deps}); err != nil {
		return err
	}

	job, err := demoReply(ctx, conn.JetStream(), importStream)
	if err != nil {
		return err
	}
	jobPath := filepath.Join(dir, "reply.json")
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	enc.SetIndent("", "  ")
	if err := enc.Encode(job); err != nil {
		return err
	}
	data := buf.Bytes()
	if err := os.WriteFile(jobPath, data, 0o600); err != nil {
		return err
	}
	step("sender enqueue --config %s %s  (a reply to the first imported invoice)", cfgPath, jobPath)
	for _, line := range strings.Split(strings.TrimSpace(string(data)), "\n") {
		fmt.Fprintf(out, "    %s\n", line)
	}
	for range 2 {
		res, err := EnqueueJob(ctx, cfg, data, "/demo/accounts-payable", deps)
		if err != nil {
			return err
		}
		if res.Result.Duplicate {
			fmt.Fprintf(out, "    job %s: duplicate: already queued (stream %s, sequence %d); nothing new was stored\n", job.JobID, res.Result.Stream, res.Result.Sequence)
		} else {
			fmt.Fprintf(out, "    job %s: queued on %s (stream %s, sequence %d)\n", job.JobID, res.Result.Subject, res.Result.Stream, res.Result.Sequence)
		}
	}

	step("sender run --config %s  (until the job's final status event)", cfgPath)
	runCtx, stopRun := context.WithCancel(ctx)
	runErr := make(chan error, 1)
	go func() { runErr <- RunSender(runCtx, cfg, SenderDeps{Deps: deps}) }()
	wctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	var events bytes.Buffer
	ev, werr := WatchJob(wctx, cfg, job.JobID, &events, deps)
	cancel()
	stopRun()
	if err := <-runErr; err != nil {
		return err
	}
	if werr != nil {
		return fmt.Errorf("job %s: %w", job.JobID, werr)
	}
	fmt.Fprintf(out, "\n    Status events on %s:\n", mailjob.StatusSubject(cfg.Streams.Status.SubjectPrefix, job.JobID))
	for _, line := range strings.Split(strings.TrimSpace(events.String()), "\n") {
		fmt.Fprintf(out, "      %s\n", line)
	}
	if ev.Type != mailjob.StatusSent {
		return fmt.Errorf("job %s was not sent: %s", job.JobID, ev.Reason)
	}

	step("The reply in the dev mailboxes")
	for _, f := range []struct{ user, folder string }{{demoMailbox, "Sent Items"}, {demoBookkeeping, "INBOX"}} {
		n, err := mbox.Count(f.user, f.folder)
		if err != nil {
			return err
		}
		fmt.Fprintf(out, "    %-34s %-10s %d message(s)\n", f.user, f.folder, n)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(delivered) > 0 {
		msg, err := mail.ReadMessage(bytes.NewReader(delivered[0]))
		if err == nil {
			fmt.Fprintln(out, "\n    Headers of the reply as delivered:")
			for _, k := range []string{"From", "To", "Cc", "Subject", "Message-Id", "X-Mailpipe-Job-Id", "X-Invoice-Message-Id"} {
				if v := msg.Header.Get(k); v != "" {
					if d, err := new(mime.WordDecoder).DecodeHeader(v); err == nil {
						v = d
					}
					fmt.Fprintf(out, "      %s: %s\n", k, v)
				}
			}
		}
	}
	return nil
}

// demoReply builds the reply job to the first mail of the importer's
// stream, as a program consuming the stream would.
func demoReply(ctx context.Context, js jetstream.JetStream, stream string) (*mailjob.Job, error) {
	cons, err := js.OrderedConsumer(ctx, stream, jetstream.OrderedConsumerConfig{})
	if err != nil {
		return nil, err
	}
	msg, err := cons.Next(jetstream.FetchMaxWait(5 * time.Second))
	if err != nil {
		return nil, fmt.Errorf("read the first imported mail: %w", err)
	}
	m, err := mailmsg.Parse(msg)
	if err != nil {
		return nil, err
	}
	supplier, err := mail.ParseAddress(m.From)
	if err != nil {
		return nil, fmt.Errorf("the invoice's From %q: %w", m.From, err)
	}
	// The job id derives from the invoice: a retry of this program
	// queues the same job, which JetStream stores once.
	sum := sha256.Sum256([]byte(m.MessageID))
	job := &mailjob.Job{
		JobID:   "ap-reply-" + hex.EncodeToString(sum[:6]),
		From:    demoMailbox,
		To:      []mailjob.Recipient{{Address: supplier.Address, Name: supplier.Name}},
		Cc:      []mailjob.Recipient{{Address: demoBookkeeping, Name: "Boekhouding"}},
		Subject: "Re: " + m.Subject,
		Text: "Geachte leverancier,\n\nuw factuur is in goede orde ontvangen en wordt binnen de betalingstermijn voldaan.\n\n" +
			"Met vriendelijke groet,\nCrediteurenadministratie\n",
		Headers:     map[string]string{"X-Invoice-Message-Id": m.MessageID},
		Correlation: map[string]string{"invoice_message_id": strings.Trim(m.MessageID, "<>")},
	}
	if err := job.Validate(mailjob.DefaultLimits); err != nil {
		return nil, err
	}
	return job, nil
}
