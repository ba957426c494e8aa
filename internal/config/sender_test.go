package config

import (
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/mailpipe/mailpipe/pkg/mailjob"
)

// minimalSenderYAML is the smallest valid sender configuration.
const minimalSenderYAML = `
identities:
  contoso:
    tenant_id: contoso.onmicrosoft.com
    client_id: ` + guidClient + `
    client_secret: minimal-secret
mailboxes:
  - address: Billing@contoso.nl
    identity: contoso
`

const senderExamplePath = "../../configs/sender.example.yaml"

func TestSenderDefaults(t *testing.T) {
	cfg, err := ParseSender([]byte(minimalSenderYAML), noEnv)
	if err != nil {
		t.Fatal(err)
	}
	s := cfg.Streams
	if s.Jobs.Name != mailjob.DefaultJobsStream || s.Jobs.SubjectPrefix != mailjob.DefaultJobsPrefix ||
		s.Jobs.MaxAge != 7*24*time.Hour || s.Jobs.DuplicateWindow != 24*time.Hour || s.Jobs.Storage != "file" || s.Jobs.Replicas != 1 {
		t.Errorf("jobs stream = %+v", s.Jobs)
	}
	if s.Status.Name != mailjob.DefaultStatusStream || s.Status.SubjectPrefix != mailjob.DefaultStatusPrefix || s.Status.MaxAge != 30*24*time.Hour {
		t.Errorf("status stream = %+v", s.Status)
	}
	if s.DeadLetter.Name != mailjob.DefaultDeadLetterStream || s.DeadLetter.SubjectPrefix != mailjob.DefaultDeadLetterPrefix || s.DeadLetter.MaxAge != 30*24*time.Hour {
		t.Errorf("dead-letter stream = %+v", s.DeadLetter)
	}
	if s.AttachmentBucket != mailjob.DefaultAttachmentBucket || s.StateBucket != "mailpipe-outbound-state" || s.TokenBucket != "mailpipe-tokens" {
		t.Errorf("buckets = %+v", s)
	}
	k := cfg.Consumer
	if k.Durable != "mailpipe-sender" || k.MaxAckPending != 64 || k.AckWait != 2*time.Minute || k.MaxDeliver != 10 ||
		!slices.Equal(k.Backoff, DefaultSenderBackoff) {
		t.Errorf("consumer = %+v", k)
	}
	if got := cfg.Limits.Mailjob(); got != mailjob.DefaultLimits {
		t.Errorf("limits = %+v, want %+v", got, mailjob.DefaultLimits)
	}
	m := cfg.Mailboxes[0]
	if m.Name != "billing" || m.Transport != "graph" || m.Graph.BaseURL != DefaultGraphBaseURL || m.Graph.Timeout != 60*time.Second {
		t.Errorf("mailbox = %+v", m)
	}
	if m.SMTP != (SMTP{}) {
		t.Errorf("graph mailbox got smtp settings %+v", m.SMTP)
	}
	if m.Rate != (Rate{MessagesPerMinute: 30, RecipientsPerDay: 10000, MessageWindow: time.Minute, RecipientWindow: 24 * time.Hour}) {
		t.Errorf("rate = %+v", m.Rate)
	}
	if m.MaxConcurrency != 4 {
		t.Errorf("max_concurrency = %d", m.MaxConcurrency)
	}
	if cfg.ShutdownTimeout != 30*time.Second || cfg.Log.Level != "info" {
		t.Errorf("shutdown %s, log %+v", cfg.ShutdownTimeout, cfg.Log)
	}
	if got, ok := cfg.Mailbox("BILLING@contoso.NL"); !ok || got.Name != "billing" {
		t.Errorf("Mailbox lookup is not case-insensitive: %+v %v", got, ok)
	}
	if _, ok := cfg.Mailbox("ceo@contoso.nl"); ok {
		t.Error("ceo@ is allowed")
	}
}

func TestSenderSMTPDefaults(t *testing.T) {
	for _, tc := range []struct {
		security string
		port     int
	}{{"", 587}, {"starttls", 587}, {"tls", 465}, {"insecure", 25}} {
		y := minimalSenderYAML + "    transport: smtp\n    smtp:\n      host: smtp.office365.com\n"
		if tc.security != "" {
			y += "      security: " + tc.security + "\n"
		}
		cfg, err := ParseSender([]byte(y), noEnv)
		if err != nil {
			t.Fatalf("security %q: %v", tc.security, err)
		}
		s := cfg.Mailboxes[0].SMTP
		if s.Port != tc.port || s.Auth != "xoauth2" || s.Username != "Billing@contoso.nl" || s.Timeout != time.Minute {
			t.Errorf("security %q: smtp = %+v", tc.security, s)
		}
		if cfg.Mailboxes[0].Graph != (SendGraph{}) {
			t.Errorf("smtp mailbox got graph settings %+v", cfg.Mailboxes[0].Graph)
		}
	}
	// A local test server without authentication needs no identity.
	cfg, err := ParseSender([]byte(`
mailboxes:
  - address: dev@localhost.test
    transport: smtp
    smtp: {host: 127.0.0.1, port: 2525, security: insecure, auth: none}
`), noEnv)
	if err != nil {
		t.Fatal(err)
	}
	if s := cfg.Mailboxes[0].SMTP; s.Username != "" || s.Port != 2525 {
		t.Errorf("smtp = %+v", s)
	}
}

func TestSenderSMTPLoginOfDelegatedIdentity(t *testing.T) {
	y := `
identities:
  svc: {kind: delegated, tenant_id: contoso.onmicrosoft.com, client_id: ` + guidClient + `, username: svc@contoso.nl, token_cache_key: ` + testCacheKey + `}
mailboxes:
  - {address: support@contoso.nl, identity: svc, transport: smtp, smtp: {host: smtp.office365.com}}
`
	cfg, err := ParseSender([]byte(y), noEnv)
	if err != nil {
		t.Fatal(err)
	}
	if u := cfg.Mailboxes[0].SMTP.Username; u != "svc@contoso.nl" {
		t.Errorf("username = %q, want the service account", u)
	}
}

func TestSenderTokenCollision(t *testing.T) {
	y := `
identities:
  contoso: {tenant_id: contoso.onmicrosoft.com, client_id: ` + guidClient + `, client_secret: x}
mailboxes:
  - {name: ab1, address: a.b@contoso.nl, identity: contoso}
  - {name: ab2, address: a_b@contoso.nl, identity: contoso}
  - {name: ab3, address: A.B@Contoso.nl, identity: contoso}
  - {name: ok, address: other@contoso.nl, identity: contoso}
`
	_, err := ParseSender([]byte(y), noEnv)
	assertProblems(t, err, []string{
		`mailboxes[1].address: "a_b@contoso.nl" and mailboxes[0].address "a.b@contoso.nl" share the subject token "a_b_contoso_nl" (jobs of both would go to mailpipe.outbound.jobs.a_b_contoso_nl)`,
		`mailboxes[2].address: "A.B@Contoso.nl" is listed twice (also mailboxes[0])`,
	})
}

func TestSenderValidationListsEveryProblem(t *testing.T) {
	y := `
log: {level: loud}
streams:
  jobs: {name: "BAD.NAME", subject_prefix: mailpipe.outbound}
  status: {subject_prefix: mailpipe.outbound.status}
  state_bucket: "state bucket"
consumer:
  durable: "a.b"
  max_ack_pending: -1
  ack_wait: 500ms
  max_deliver: 1001
  backoff: [10s, -1s, 8d]
limits:
  max_recipients: 2000
  max_inline_size: 2MiB
  max_job_size: 2MiB
identities:
  contoso: {tenant_id: contoso.onmicrosoft.com, client_id: ` + guidClient + `, client_secret: x}
mailboxes:
  - name: Billing
    address: "Billing <billing@contoso.nl>"
    identity: nobody
    transport: graph
    graph: {base_url: "http://graph.example/v1.0"}
    smtp: {host: smtp.office365.com}
  - address: support@contoso.nl
    transport: smtp
    smtp: {host: "smtp.office365.com:587", security: ssl, auth: password}
    profiles:
      - {name: Dunning}
      - {name: x, identity: ghost}
      - {name: x}
    rate: {messages_per_minute: 31, recipients_per_day: 100, message_window: 2m}
    max_concurrency: 65
  - address: fax@contoso.nl
    transport: fax
`
	_, err := ParseSender([]byte(y), noEnv)
	assertProblems(t, err, []string{
		`log.level: "loud" is not one of debug, info, warn, error`,
		`streams.jobs.name: "BAD.NAME" is not a valid stream name`,
		`streams.status.subject_prefix: "mailpipe.outbound.status" overlaps streams.jobs.subject_prefix "mailpipe.outbound"`,
		`streams.dead_letter.subject_prefix: "mailpipe.outbound.deadletter" overlaps streams.jobs.subject_prefix "mailpipe.outbound"`,
		`streams.state_bucket: "state bucket" is not a valid bucket name`,
		`consumer.durable: "a.b" must be 1-64 characters`,
		`consumer.max_ack_pending: must be between 1 and 10000, got -1`,
		`consumer.ack_wait: must be at least 1s, got 500ms`,
		`consumer.max_deliver: must be between 1 and 1000, got 1001`,
		`consumer.backoff[1]: must be positive, got -1s`,
		`consumer.backoff[2]: 192h0m0s is not shorter than streams.jobs.max_age 168h0m0s`,
		`limits.max_recipients: must be between 1 and 1000`,
		`limits.max_job_size: must be between 1KiB and 1000KiB`,
		`mailboxes[0].name: "Billing" must be 1-64 characters`,
		`mailboxes[0].address: "Billing <billing@contoso.nl>" is not a bare e-mail address`,
		`mailboxes[0].graph.base_url: "http://graph.example/v1.0" must use https`,
		`mailboxes[0].smtp: not used with transport graph (found host)`,
		`mailboxes[0].identity: unknown identity "nobody" (defined: contoso)`,
		`mailboxes[1].smtp.host: "smtp.office365.com:587" must not include a port`,
		`mailboxes[1].smtp.security: "ssl" is not one of starttls, tls, insecure`,
		`mailboxes[1].smtp.password: required with auth password`,
		`mailboxes[1].profiles[0].name: "Dunning" must be 1-64 characters`,
		`mailboxes[1].profiles[1].identity: unknown identity "ghost"`,
		`mailboxes[1].profiles[2].name: duplicate profile "x" (also profiles[1])`,
		`mailboxes[1].rate.messages_per_minute: must be between 1 and 30`,
		`mailboxes[1].rate.recipients_per_day: 100 is below limits.max_recipients 2000`,
		`mailboxes[1].rate.message_window: must be between 100ms and 1m, got 2m0s`,
		`mailboxes[1].max_concurrency: must be between 1 and 64, got 65`,
		`mailboxes[2].transport: "fax" is not one of graph, smtp`,
	})
	// Problems point at their line.
	if !strings.Contains(err.Error(), "mailboxes[2].transport: \"fax\" is not one of graph, smtp (line 36)") {
		t.Errorf("line numbers missing:\n%v", err)
	}
}

func TestSenderNoMailboxes(t *testing.T) {
	_, err := ParseSender([]byte("log: {level: info}\n"), noEnv)
	assertProblems(t, err, []string{"mailboxes: at least one mailbox is required"})
}

func TestSenderStrictKeys(t *testing.T) {
	y := minimalSenderYAML + "    rate:\n      mesages_per_minute: 10\n    smpt: {}\nconsumers: {}\n"
	_, err := ParseSender([]byte(y), noEnv)
	assertProblems(t, err, []string{
		`mailboxes[0].rate.mesages_per_minute: unknown key (did you mean "messages_per_minute"?)`,
		`mailboxes[0].smpt: unknown key (did you mean "smtp"?)`,
		`consumers: unknown key (did you mean "consumer"?)`,
	})
}

func TestSenderScaledRateWindow(t *testing.T) {
	y := minimalSenderYAML + "    rate: {messages_per_minute: 30, message_window: 3s, recipients_per_day: 600, recipient_window: 10s}\nlimits: {max_recipients: 50}\n"
	cfg, err := ParseSender([]byte(y), noEnv)
	if err != nil {
		t.Fatal(err)
	}
	want := Rate{MessagesPerMinute: 30, MessageWindow: 3 * time.Second, RecipientsPerDay: 600, RecipientWindow: 10 * time.Second}
	if cfg.Mailboxes[0].Rate != want {
		t.Errorf("rate = %+v, want %+v", cfg.Mailboxes[0].Rate, want)
	}
}

func TestSenderSecretsAndEnv(t *testing.T) {
	y := `
nats: {user: mailpipe, password_file: nats-pw}
mailboxes:
  - address: ${MAILBOX}
    transport: smtp
    smtp: {host: smtp.example.net, auth: password, password_file: smtp-pw}
  - address: other@example.net
    transport: smtp
    smtp: {host: smtp.example.net, auth: password, password: inline, password_file: smtp-pw}
`
	files := fakeFiles(map[string]string{"/cfg/nats-pw": "natssecret\n", "/cfg/smtp-pw": "smtpsecret\n"})
	_, err := ParseSenderWith([]byte(y), LoadOptions{LookupEnv: envMap(map[string]string{"MAILBOX": "relay@example.net"}), ReadFile: files, BaseDir: "/cfg"})
	assertProblems(t, err, []string{"mailboxes[1].smtp.password_file: cannot be combined with mailboxes[1].smtp.password"})

	y = strings.Replace(y, "password: inline, ", "", 1)
	cfg, err := ParseSenderWith([]byte(y), LoadOptions{LookupEnv: envMap(map[string]string{"MAILBOX": "relay@example.net"}), ReadFile: files, BaseDir: "/cfg"})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.NATS.Password.Value() != "natssecret" || cfg.Mailboxes[0].SMTP.Password.Value() != "smtpsecret" {
		t.Errorf("secrets not read: %q %q", cfg.NATS.Password.Value(), cfg.Mailboxes[0].SMTP.Password.Value())
	}
	if cfg.Mailboxes[0].Address != "relay@example.net" || cfg.Mailboxes[0].SMTP.PasswordFile != "/cfg/smtp-pw" {
		t.Errorf("mailbox = %+v", cfg.Mailboxes[0])
	}
	if strings.Contains(fmtAll(cfg), "smtpsecret") {
		t.Error("a secret is printed")
	}

	_, err = ParseSender([]byte(y), noEnv)
	if err == nil || !strings.Contains(err.Error(), "environment variable MAILBOX is not set") {
		t.Errorf("missing variable: %v", err)
	}
}

func TestLoadSenderRelativeFiles(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "secret"), []byte("s3cret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	y := strings.Replace(minimalSenderYAML, "client_secret: minimal-secret", "client_secret_file: secret", 1)
	path := filepath.Join(dir, "sender.yaml")
	if err := os.WriteFile(path, []byte(y), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := LoadSender(path)
	if err != nil {
		t.Fatal(err)
	}
	if id := cfg.Identities["contoso"]; id.ClientSecret.Value() != "s3cret" || id.ClientSecretFile != filepath.Join(dir, "secret") {
		t.Errorf("identity = %#v", id)
	}
	if _, err := LoadSender(filepath.Join(dir, "missing.yaml")); err == nil {
		t.Error("missing file loads")
	}
}

func TestSenderExampleLoads(t *testing.T) {
	cfg, err := LoadSenderWith(senderExamplePath, exampleOptions())
	if err != nil {
		t.Fatalf("example config: %v", err)
	}
	if len(cfg.Mailboxes) != 2 {
		t.Fatalf("mailboxes = %d", len(cfg.Mailboxes))
	}
	b, s := cfg.Mailboxes[0], cfg.Mailboxes[1]
	if b.Name != "billing" || b.Transport != "graph" || len(b.Profiles) != 1 || b.Profiles[0].Identity != "contoso-delegated" {
		t.Errorf("billing = %+v", b)
	}
	if p, ok := b.Profile("dunning"); !ok || p.Identity != "contoso-delegated" {
		t.Errorf("profile dunning = %+v %v", p, ok)
	}
	if s.Transport != "smtp" || s.SMTP.Host != "smtp.office365.com" || s.SMTP.Port != 587 || s.Rate.MessagesPerMinute != 20 || s.Rate.RecipientsPerDay != 10000 ||
		s.SMTP.Username != "svc-mailpipe@contoso.nl" {
		t.Errorf("support = %+v", s)
	}
	if cfg.HTTPListen != ":9090" || cfg.Streams.Jobs.Name != "MAILPIPE_OUTBOUND" || cfg.Streams.Status.Replicas != 1 {
		t.Errorf("cfg = %+v", cfg)
	}
}

func TestSenderExampleDocumentsEveryKey(t *testing.T) {
	data, err := os.ReadFile(senderExamplePath)
	if err != nil {
		t.Fatal(err)
	}
	var keys []string
	var walk func(rt reflect.Type)
	walk = func(rt reflect.Type) {
		switch rt.Kind() {
		case reflect.Map, reflect.Slice:
			walk(rt.Elem())
		case reflect.Struct:
			if rt == durationType {
				return
			}
			for i := range rt.NumField() {
				if name := yamlName(rt.Field(i)); name != "" {
					keys = append(keys, name)
					walk(rt.Field(i).Type)
				}
			}
		}
	}
	walk(reflect.TypeFor[Sender]())
	if len(keys) < 60 {
		t.Fatalf("found only %d keys; the walk is broken", len(keys))
	}
	for _, k := range keys {
		re := regexp.MustCompile(`(?m)^[ \t]*(#[ \t]*)?(- )?` + regexp.QuoteMeta(k) + `:`)
		if !re.Match(data) {
			t.Errorf("example does not document %q", k)
		}
	}
}

func fmtAll(v any) string { return strings.Join([]string{fmtV(v), fmtGo(v)}, "\n") }

func fmtV(v any) string  { return fmt.Sprintf("%v %+v", v, v) }
func fmtGo(v any) string { return fmt.Sprintf("%#v", v) }
