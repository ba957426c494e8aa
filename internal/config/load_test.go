package config

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"
)

const (
	guidTenant = "3f2b8c1d-5e6a-4b7c-9d8e-0a1b2c3d4e5f"
	guidClient = "0b6a2f1e-3c4d-4e5f-8a9b-1c2d3e4f5a6b"
)

// minimalYAML is the smallest valid configuration.
const minimalYAML = `
identities:
  contoso:
    tenant_id: contoso.onmicrosoft.com
    client_id: ` + guidClient + `
    client_secret: minimal-secret
mailboxes:
  - name: algemeen
    address: algemeen@contoso.nl
    identity: contoso
    imap:
      host: outlook.office365.com
    folders:
      import: INBOX/Import
      processed: INBOX/Done
      error: INBOX/Error
`

// testCacheKey is a valid token cache key: base64 of 32 bytes (0x00..0x1f).
const testCacheKey = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="

// graphYAML is a minimal valid configuration with one Graph mailbox read by
// an app-only identity.
const graphYAML = `
identities:
  contoso:
    tenant_id: contoso.onmicrosoft.com
    client_id: ` + guidClient + `
    client_secret: graph-secret
mailboxes:
  - name: secretariaat
    address: secretariaat@contoso.nl
    source: graph
    identity: contoso
    folders:
      import: Postvak IN/Algemeen/Import
      processed: Postvak IN/Algemeen/Verwerkt
      error: Postvak IN/Algemeen/Fout
`

// delegatedYAML is graphYAML with a delegated identity instead.
const delegatedYAML = `
identities:
  contoso:
    kind: delegated
    tenant_id: contoso.onmicrosoft.com
    client_id: ` + guidClient + `
    username: svc-mailpipe@contoso.nl
    token_cache_key: ` + testCacheKey + `
mailboxes:
  - name: secretariaat
    address: secretariaat@contoso.nl
    source: graph
    identity: contoso
    folders:
      import: Postvak IN/Algemeen/Import
      processed: Postvak IN/Algemeen/Verwerkt
      error: Postvak IN/Algemeen/Fout
`

// noEnv is a LookupEnv for an empty environment.
func noEnv(string) (string, bool) { return "", false }

func envMap(m map[string]string) func(string) (string, bool) {
	return func(k string) (string, bool) {
		v, ok := m[k]
		return v, ok
	}
}

// fakeFiles is a ReadFile over an in-memory file system.
func fakeFiles(m map[string]string) func(string) ([]byte, error) {
	return func(name string) ([]byte, error) {
		if s, ok := m[name]; ok {
			return []byte(s), nil
		}
		return nil, &fs.PathError{Op: "open", Path: name, Err: fs.ErrNotExist}
	}
}

// problemsOf returns the problems of a *ValidationError as "path: msg"
// strings (without line numbers), failing the test for any other error.
func problemsOf(t *testing.T, err error) []string {
	t.Helper()
	if err == nil {
		t.Fatal("expected an error, got none")
	}
	var ve *ValidationError
	if !errors.As(err, &ve) {
		t.Fatalf("expected a *ValidationError, got %T: %v", err, err)
	}
	var out []string
	for _, p := range ve.Problems {
		if p.Path != "" {
			p.Line = 0 // "path: msg" without " (line N)"
		}
		out = append(out, p.String())
	}
	return out
}

// assertProblems checks that every wanted line is the start of exactly one
// problem and that there are no other problems.
func assertProblems(t *testing.T, err error, want []string) {
	t.Helper()
	got := problemsOf(t, err)
	used := make([]bool, len(got))
	for _, w := range want {
		found := false
		for i, g := range got {
			if !used[i] && strings.HasPrefix(g, w) {
				used[i], found = true, true
				break
			}
		}
		if !found {
			t.Errorf("missing problem %q", w)
		}
		if !strings.Contains(err.Error(), w) {
			t.Errorf("error text lacks %q", w)
		}
	}
	for i, g := range got {
		if !used[i] {
			t.Errorf("unexpected problem %q", g)
		}
	}
	if t.Failed() {
		t.Logf("full error:\n%v", err)
	}
}

func TestParseFullConfig(t *testing.T) {
	const full = `
log:
  level: debug
  format: console
nats:
  url: nats://nats-1:4222, nats://nats-2:4222
  user: importer
  password_file: secrets/nats-password
  tls:
    ca_file: /etc/ssl/nats-ca.pem
    cert_file: tls/client.pem
    key_file: tls/client-key.pem
    server_name: nats.internal
  connect_timeout: 5s
  embedded:
    store_dir: /var/lib/mailpipe/nats
    listen: 127.0.0.1:4222
bus:
  stream:
    name: INBOUND
    subject_prefix: acme.mail.in
    replicas: 3
    max_age: 14d
    duplicate_window: 48h
    storage: memory
    max_bytes: 10GiB
  dead_letter:
    name: DEADLETTER
    subject_prefix: acme.mail.dl
    replicas: 3
    max_age: 60d
    duplicate_window: 1h
    storage: file
    max_bytes: 1GB
  object_bucket: bodies
  state_bucket: state
  token_bucket: tokens
  large_message_threshold: 1MiB
  max_in_flight: 64
  publish_timeout: 10s
identities:
  contoso:
    tenant_id: ` + guidTenant + `
    client_id: ` + guidClient + `
    client_secret_file: /run/secrets/client-secret
    authority_host: login.microsoftonline.us
    ca_file: /etc/ssl/proxy-ca.pem
    secret_expires: "2027-03-31"
    expiry_warning: 14d
    kind: app
    graph_max_concurrency: 8
  fabrikam:
    tenant_id: fabrikam.onmicrosoft.com
    client_id: ` + guidClient + `
    certificate_file: certs/app.pem
    private_key_file: certs/app-key.pem
  svc:
    kind: delegated
    tenant_id: contoso.onmicrosoft.com
    client_id: ` + guidClient + `
    username: svc-mailpipe@contoso.nl
    token_cache_key_file: secrets/token-cache-key
    expiry_warning: 7d
    graph_max_concurrency: 1000
mailboxes:
  - name: algemeen
    address: algemeen@contoso.nl
    source: imap
    identity: contoso
    imap:
      host: outlook.office365.com
      port: 993
      security: tls
      auth: xoauth2
      username: algemeen@contoso.nl
      tls:
        ca_file: /etc/ssl/imap-ca.pem
        cert_file: /etc/ssl/imap-client.pem
        key_file: /etc/ssl/imap-client-key.pem
        server_name: outlook.office365.com
      timeout: 2m
      fetch_batch: 500
    folders:
      import: Postvak IN/Algemeen/Import
      include_subfolders: true
      processed: Postvak IN/Algemeen/Verwerkt
      error: Postvak IN/Algemeen/Fout
    poll_interval: 30s
    max_message_size: 50MiB
  - name: support_2
    address: support@example.org
    identity: fabrikam
    imap:
      host: imap.example.org
      port: 1143
      security: starttls
      auth: password
      username: support
      password: "pa$$word"
      timeout: 1d
      fetch_batch: 1
    folders:
      import: INBOX
      include_subfolders: false
      processed: INBOX/Done
      error: INBOX/Failed
    poll_interval: 1s
    max_message_size: 1024
  - name: graph
    address: secretariaat@contoso.nl
    source: graph
    identity: svc
    graph:
      base_url: https://graph.microsoft.us/beta
      ca_file: certs/graph-ca.pem
      discovery: list
      page_size: 1000
      max_concurrency: 2
      request_budget: 5000
      budget_window: 5m
      timeout: 2m
      disable_batch: true
    folders:
      import: Postvak IN/Algemeen/Import
      processed: Postvak IN/Algemeen/Verwerkt
      error: Postvak IN/Algemeen/Fout
shutdown_timeout: 45s
http_listen: ":9090"
`
	base := filepath.FromSlash("/srv/mailpipe")
	cfg, err := ParseImporterWith([]byte(full), LoadOptions{
		LookupEnv: noEnv,
		BaseDir:   base,
		ReadFile: fakeFiles(map[string]string{
			filepath.Join(base, "secrets/nats-password"):   "nats-pw\n",
			"/run/secrets/client-secret":                   "client-secret-value\r\n",
			filepath.Join(base, "secrets/token-cache-key"): testCacheKey + "\n",
		}),
	})
	if err != nil {
		t.Fatalf("ParseImporterWith: %v", err)
	}

	want := &Importer{
		Log: Log{Level: "debug", Format: "console"},
		NATS: NATS{
			URL:          "nats://nats-1:4222, nats://nats-2:4222",
			User:         "importer",
			Password:     "nats-pw",
			PasswordFile: filepath.Join(base, "secrets/nats-password"),
			TLS: TLS{
				CAFile:     "/etc/ssl/nats-ca.pem",
				CertFile:   filepath.Join(base, "tls/client.pem"),
				KeyFile:    filepath.Join(base, "tls/client-key.pem"),
				ServerName: "nats.internal",
			},
			ConnectTimeout: 5 * time.Second,
			Embedded:       Embedded{StoreDir: "/var/lib/mailpipe/nats", Listen: "127.0.0.1:4222"},
		},
		Bus: Bus{
			Stream: Stream{
				Name: "INBOUND", SubjectPrefix: "acme.mail.in", Replicas: 3,
				MaxAge: 14 * 24 * time.Hour, DuplicateWindow: 48 * time.Hour,
				Storage: "memory", MaxBytes: 10 * GiB,
			},
			DeadLetter: Stream{
				Name: "DEADLETTER", SubjectPrefix: "acme.mail.dl", Replicas: 3,
				MaxAge: 60 * 24 * time.Hour, DuplicateWindow: time.Hour,
				Storage: "file", MaxBytes: 1_000_000_000,
			},
			ObjectBucket:          "bodies",
			StateBucket:           "state",
			TokenBucket:           "tokens",
			LargeMessageThreshold: MiB,
			MaxInFlight:           64,
			PublishTimeout:        10 * time.Second,
		},
		Identities: map[string]Identity{
			"contoso": {
				TenantID:            guidTenant,
				ClientID:            guidClient,
				ClientSecret:        "client-secret-value",
				ClientSecretFile:    "/run/secrets/client-secret",
				AuthorityHost:       "login.microsoftonline.us",
				CAFile:              "/etc/ssl/proxy-ca.pem",
				SecretExpires:       "2027-03-31",
				ExpiryWarning:       14 * 24 * time.Hour,
				Kind:                "app",
				GraphMaxConcurrency: 8,
			},
			"fabrikam": {
				TenantID:            "fabrikam.onmicrosoft.com",
				ClientID:            guidClient,
				CertificateFile:     filepath.Join(base, "certs/app.pem"),
				PrivateKeyFile:      filepath.Join(base, "certs/app-key.pem"),
				AuthorityHost:       "login.microsoftonline.com",
				ExpiryWarning:       30 * 24 * time.Hour,
				Kind:                "app",
				GraphMaxConcurrency: 16,
			},
			"svc": {
				Kind:                "delegated",
				TenantID:            "contoso.onmicrosoft.com",
				ClientID:            guidClient,
				Username:            "svc-mailpipe@contoso.nl",
				TokenCacheKey:       testCacheKey,
				TokenCacheKeyFile:   filepath.Join(base, "secrets/token-cache-key"),
				AuthorityHost:       "login.microsoftonline.com",
				ExpiryWarning:       7 * 24 * time.Hour,
				GraphMaxConcurrency: 1000,
			},
		},
		Mailboxes: []Mailbox{
			{
				Name: "algemeen", Address: "algemeen@contoso.nl", Source: "imap", Identity: "contoso",
				IMAP: IMAP{
					Host: "outlook.office365.com", Port: 993, Security: "tls", Auth: "xoauth2",
					Username: "algemeen@contoso.nl",
					TLS: TLS{
						CAFile:     "/etc/ssl/imap-ca.pem",
						CertFile:   "/etc/ssl/imap-client.pem",
						KeyFile:    "/etc/ssl/imap-client-key.pem",
						ServerName: "outlook.office365.com",
					},
					Timeout: 2 * time.Minute, FetchBatch: 500,
				},
				Folders: Folders{
					Import: "Postvak IN/Algemeen/Import", IncludeSubfolders: true,
					Processed: "Postvak IN/Algemeen/Verwerkt", Error: "Postvak IN/Algemeen/Fout",
				},
				PollInterval:   30 * time.Second,
				MaxMessageSize: 50 * MiB,
			},
			{
				Name: "support_2", Address: "support@example.org", Source: "imap", Identity: "fabrikam",
				IMAP: IMAP{
					Host: "imap.example.org", Port: 1143, Security: "starttls", Auth: "password",
					Username: "support", Password: "pa$word",
					Timeout: 24 * time.Hour, FetchBatch: 1,
				},
				Folders:        Folders{Import: "INBOX", Processed: "INBOX/Done", Error: "INBOX/Failed"},
				PollInterval:   time.Second,
				MaxMessageSize: 1024,
			},
			{
				Name: "graph", Address: "secretariaat@contoso.nl", Source: "graph", Identity: "svc",
				Graph: Graph{
					BaseURL: "https://graph.microsoft.us/beta", CAFile: filepath.Join(base, "certs/graph-ca.pem"),
					Discovery: "list", PageSize: 1000, MaxConcurrency: 2,
					RequestBudget: 5000, BudgetWindow: 5 * time.Minute, Timeout: 2 * time.Minute,
					DisableBatch: true,
				},
				Folders: Folders{
					Import: "Postvak IN/Algemeen/Import", Processed: "Postvak IN/Algemeen/Verwerkt", Error: "Postvak IN/Algemeen/Fout",
				},
				PollInterval:   DefaultPollInterval,
				MaxMessageSize: DefaultMaxMessageSize,
			},
		},
		ShutdownTimeout: 45 * time.Second,
		HTTPListen:      ":9090",
	}
	if !reflect.DeepEqual(cfg, want) {
		// Secrets print redacted, so compare them separately as well.
		t.Errorf("config mismatch\n got: %+v\nwant: %+v", cfg, want)
	}
	if got := cfg.NATS.Password.Value(); got != "nats-pw" {
		t.Errorf("nats password = %q", got)
	}
	if got := cfg.Identities["contoso"].ClientSecret.Value(); got != "client-secret-value" {
		t.Errorf("client secret = %q", got)
	}
	if got := cfg.Mailboxes[1].IMAP.Password.Value(); got != "pa$word" {
		t.Errorf("imap password = %q", got)
	}
	if got := cfg.Identities["svc"].TokenCacheKey.Value(); got != testCacheKey {
		t.Errorf("token cache key = %q", got)
	}
	if err := cfg.Validate(); err != nil {
		t.Errorf("Validate on a loaded config: %v", err)
	}
}

func TestDefaults(t *testing.T) {
	cfg, err := ParseImporter([]byte(minimalYAML), noEnv)
	if err != nil {
		t.Fatal(err)
	}
	checks := []struct {
		name      string
		got, want any
	}{
		{"log.level", cfg.Log.Level, "info"},
		{"log.format", cfg.Log.Format, "json"},
		{"nats.url", cfg.NATS.URL, ""},
		{"nats.connect_timeout", cfg.NATS.ConnectTimeout, 10 * time.Second},
		{"nats.embedded.store_dir", cfg.NATS.Embedded.StoreDir, "./data/nats"},
		{"bus.stream", cfg.Bus.Stream, Stream{
			Name: "MAILPIPE_INBOUND", SubjectPrefix: "mailpipe.inbound", Replicas: 1,
			MaxAge: 168 * time.Hour, DuplicateWindow: 24 * time.Hour, Storage: "file",
		}},
		{"bus.dead_letter", cfg.Bus.DeadLetter, Stream{
			Name: "MAILPIPE_DEADLETTER", SubjectPrefix: "mailpipe.deadletter", Replicas: 1,
			MaxAge: 720 * time.Hour, DuplicateWindow: 24 * time.Hour, Storage: "file",
		}},
		{"bus.object_bucket", cfg.Bus.ObjectBucket, "mailpipe-bodies"},
		{"bus.state_bucket", cfg.Bus.StateBucket, "mailpipe-state"},
		{"bus.token_bucket", cfg.Bus.TokenBucket, "mailpipe-tokens"},
		{"bus.large_message_threshold", cfg.Bus.LargeMessageThreshold, ByteSize(512 * 1024)},
		{"bus.max_in_flight", cfg.Bus.MaxInFlight, 256},
		{"bus.publish_timeout", cfg.Bus.PublishTimeout, 30 * time.Second},
		{"shutdown_timeout", cfg.ShutdownTimeout, 30 * time.Second},
		{"http_listen", cfg.HTTPListen, ""},
		{"identities.contoso.authority_host", cfg.Identities["contoso"].AuthorityHost, "login.microsoftonline.com"},
		{"identities.contoso.kind", cfg.Identities["contoso"].Kind, "app"},
		{"identities.contoso.expiry_warning", cfg.Identities["contoso"].ExpiryWarning, 720 * time.Hour},
		{"identities.contoso.graph_max_concurrency", cfg.Identities["contoso"].GraphMaxConcurrency, 16},
		{"mailboxes[0].source", cfg.Mailboxes[0].Source, "imap"},
		{"mailboxes[0].poll_interval", cfg.Mailboxes[0].PollInterval, 60 * time.Second},
		{"mailboxes[0].max_message_size", cfg.Mailboxes[0].MaxMessageSize, ByteSize(35 * 1024 * 1024)},
		{"mailboxes[0].imap.port", cfg.Mailboxes[0].IMAP.Port, 993},
		{"mailboxes[0].imap.security", cfg.Mailboxes[0].IMAP.Security, "tls"},
		{"mailboxes[0].imap.auth", cfg.Mailboxes[0].IMAP.Auth, "xoauth2"},
		{"mailboxes[0].imap.username", cfg.Mailboxes[0].IMAP.Username, "algemeen@contoso.nl"},
		{"mailboxes[0].imap.timeout", cfg.Mailboxes[0].IMAP.Timeout, 60 * time.Second},
		{"mailboxes[0].imap.fetch_batch", cfg.Mailboxes[0].IMAP.FetchBatch, 200},
		{"mailboxes[0].folders.include_subfolders", cfg.Mailboxes[0].Folders.IncludeSubfolders, false},
		// Graph defaults do not touch an imap mailbox.
		{"mailboxes[0].graph", cfg.Mailboxes[0].Graph, Graph{}},
	}
	for _, c := range checks {
		if !reflect.DeepEqual(c.got, c.want) {
			t.Errorf("%s = %v, want %v", c.name, c.got, c.want)
		}
	}

	// The IMAP port follows the security setting unless given.
	for _, tc := range []struct {
		security string
		port     int
	}{{"tls", 993}, {"starttls", 143}, {"insecure", 143}} {
		y := strings.Replace(minimalYAML, "      host: outlook.office365.com\n",
			"      host: outlook.office365.com\n      security: "+tc.security+"\n", 1)
		cfg, err := ParseImporter([]byte(y), noEnv)
		if err != nil {
			t.Fatalf("security %s: %v", tc.security, err)
		}
		if got := cfg.Mailboxes[0].IMAP.Port; got != tc.port {
			t.Errorf("security %s: port = %d, want %d", tc.security, got, tc.port)
		}
	}

	// Explicit values are kept.
	y := strings.Replace(minimalYAML, "      host: outlook.office365.com\n",
		"      host: outlook.office365.com\n      port: 10993\n      username: other@contoso.nl\n", 1)
	cfg, err = ParseImporter([]byte(y), noEnv)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Mailboxes[0].IMAP.Port != 10993 || cfg.Mailboxes[0].IMAP.Username != "other@contoso.nl" {
		t.Errorf("explicit port/username overridden: %d %q", cfg.Mailboxes[0].IMAP.Port, cfg.Mailboxes[0].IMAP.Username)
	}
}

func TestApplyDefaultsThenValidate(t *testing.T) {
	var empty Importer
	empty.ApplyDefaults()
	assertProblems(t, empty.Validate(), []string{"mailboxes: at least one mailbox is required"})

	c := Importer{
		Identities: map[string]Identity{"c": {TenantID: guidTenant, ClientID: guidClient, ClientSecret: "s"}},
		Mailboxes: []Mailbox{{
			Name: "m", Address: "m@example.com", Identity: "c",
			IMAP:    IMAP{Host: "imap.example.com"},
			Folders: Folders{Import: "INBOX", Processed: "Done", Error: "Failed"},
		}},
	}
	c.ApplyDefaults()
	if err := c.Validate(); err != nil {
		t.Fatalf("Validate: %v", err)
	}
}

func TestExpandEnv(t *testing.T) {
	env := envMap(map[string]string{
		"HOST":  "imap.example.org",
		"EMPTY": "",
		"PORT":  "1993",
		"MULTI": "a\nb",
	})
	tests := []struct {
		name, in, want string
		errs           []string // expected problems, in order
	}{
		{name: "plain", in: "host: ${HOST}\n", want: "host: imap.example.org\n"},
		{name: "twice on a line", in: "x: ${HOST}:${PORT}\n", want: "x: imap.example.org:1993\n"},
		{name: "inside quotes", in: `x: "${HOST}"`, want: `x: "imap.example.org"`},
		{name: "default unused", in: "p: ${PORT:-993}", want: "p: 1993"},
		{name: "default for unset", in: "p: ${NOPE:-993}", want: "p: 993"},
		{name: "default for empty", in: "p: ${EMPTY:-993}", want: "p: 993"},
		{name: "empty default", in: "p: ${NOPE:-}", want: "p: "},
		{name: "default with blanks and colons", in: "u: ${NOPE:-nats://h:4222/x y}", want: "u: nats://h:4222/x y"},
		{name: "set but empty without default", in: "p: ${EMPTY}", want: "p: "},
		{name: "dollar escape", in: "pw: pa$$word", want: "pw: pa$word"},
		{name: "escaped reference", in: "x: $${HOST}", want: "x: ${HOST}"},
		{name: "lone dollar kept", in: "x: a$b $ c$", want: "x: a$b $ c$"},
		{name: "full-line comment untouched", in: "# use ${NOPE} here\nx: 1\n", want: "# use ${NOPE} here\nx: 1\n"},
		{name: "trailing comment untouched", in: "x: ${HOST} # or ${NOPE}\n", want: "x: imap.example.org # or ${NOPE}\n"},
		{name: "hash inside quotes is not a comment", in: `x: "a #${HOST}"`, want: `x: "a #imap.example.org"`},
		{name: "hash inside single quotes", in: `x: 'it''s #${HOST}'`, want: `x: 'it''s #imap.example.org'`},
		{name: "apostrophe in plain scalar", in: "x: it's ${HOST} # ${NOPE}", want: "x: it's imap.example.org # ${NOPE}"},
		{name: "hash without blank is not a comment", in: "x: a#${HOST}", want: "x: a#imap.example.org"},
		{
			name: "missing variable",
			in:   "a: 1\nb: ${NOPE}\n",
			errs: []string{"line 2: environment variable NOPE is not set"},
		},
		{
			name: "every missing variable is reported",
			in:   "a: ${ONE}\nb: ${HOST}\nc: ${TWO} ${THREE}\n",
			errs: []string{
				"line 1: environment variable ONE is not set",
				"line 3: environment variable TWO is not set",
				"line 3: environment variable THREE is not set",
			},
		},
		{name: "invalid name", in: "a: ${1X}", errs: []string{"line 1: invalid variable reference ${1X}"}},
		{name: "empty name", in: "a: ${}", errs: []string{"line 1: invalid variable reference ${}"}},
		{name: "unterminated", in: "a: 1\nb: ${HOST\n", errs: []string{"line 2: unterminated ${"}},
		{name: "line break in value", in: "a: ${MULTI}", errs: []string{"line 1: environment variable MULTI contains a line break"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, errs := expandEnv(tc.in, env)
			if len(errs) != len(tc.errs) {
				t.Fatalf("problems = %v, want %v", errs, tc.errs)
			}
			for i, p := range errs {
				if !strings.HasPrefix(p.String(), tc.errs[i]) {
					t.Errorf("problem %d = %q, want prefix %q", i, p.String(), tc.errs[i])
				}
			}
			if len(tc.errs) == 0 && got != tc.want {
				t.Errorf("got %q, want %q", got, tc.want)
			}
		})
	}
}

func TestEnvExpansionInParse(t *testing.T) {
	y := strings.NewReplacer(
		"host: outlook.office365.com", "host: ${IMAP_HOST}\n      port: ${IMAP_PORT:-993}",
		"level: x", "",
	).Replace(minimalYAML) + "log:\n  level: ${LOG_LEVEL:-warn}\n"

	cfg, err := ParseImporter([]byte(y), envMap(map[string]string{"IMAP_HOST": "imap.example.org", "IMAP_PORT": "1993"}))
	if err != nil {
		t.Fatal(err)
	}
	if m := cfg.Mailboxes[0].IMAP; m.Host != "imap.example.org" || m.Port != 1993 {
		t.Errorf("imap = %s:%d", m.Host, m.Port)
	}
	if cfg.Log.Level != "warn" {
		t.Errorf("log.level = %q, want the default warn", cfg.Log.Level)
	}

	_, err = ParseImporter([]byte(y), noEnv)
	hostLine := 1 + slices.IndexFunc(strings.Split(y, "\n"), func(l string) bool { return strings.Contains(l, "${IMAP_HOST}") })
	assertProblems(t, err, []string{fmt.Sprintf("line %d: environment variable IMAP_HOST is not set", hostLine)})
}

func TestSecretFiles(t *testing.T) {
	withNATS := func(nats string) string { return minimalYAML + "nats:\n" + nats }
	tests := []struct {
		name     string
		yaml     string
		files    map[string]string
		check    func(t *testing.T, c *Importer)
		problems []string
	}{
		{
			name:  "file trimmed of one newline",
			yaml:  withNATS("  user: u\n  password_file: /s/nats\n"),
			files: map[string]string{"/s/nats": "secret\n\n"},
			check: func(t *testing.T, c *Importer) {
				if got := c.NATS.Password.Value(); got != "secret\n" {
					t.Errorf("password = %q, want only one newline trimmed", got)
				}
			},
		},
		{
			name:  "CRLF trimmed",
			yaml:  withNATS("  user: u\n  password_file: /s/nats\n"),
			files: map[string]string{"/s/nats": "secret\r\n"},
			check: func(t *testing.T, c *Importer) {
				if got := c.NATS.Password.Value(); got != "secret" {
					t.Errorf("password = %q", got)
				}
			},
		},
		{
			name: "client secret and imap password from files",
			yaml: strings.NewReplacer(
				"client_secret: minimal-secret", "client_secret_file: /s/client",
			).Replace(minimalYAML) + `  - name: other
    address: other@example.org
    imap:
      host: imap.example.org
      auth: password
      password_file: /s/imap
    folders: {import: INBOX, processed: Done, error: Failed}
`,
			files: map[string]string{"/s/client": "client-from-file", "/s/imap": "imap-from-file\n"},
			check: func(t *testing.T, c *Importer) {
				if got := c.Identities["contoso"].ClientSecret.Value(); got != "client-from-file" {
					t.Errorf("client secret = %q", got)
				}
				if got := c.Mailboxes[1].IMAP.Password.Value(); got != "imap-from-file" {
					t.Errorf("imap password = %q", got)
				}
			},
		},
		{
			name:     "both set",
			yaml:     withNATS("  user: u\n  password: hunter2-inline\n  password_file: /s/nats\n"),
			files:    map[string]string{"/s/nats": "hunter2-file"},
			problems: []string{"nats.password_file: cannot be combined with nats.password"},
		},
		{
			name:     "both set for a client secret",
			yaml:     strings.Replace(minimalYAML, "client_secret: minimal-secret", "client_secret: minimal-secret\n    client_secret_file: /s/client", 1),
			files:    map[string]string{"/s/client": "hunter2-file"},
			problems: []string{"identities.contoso.client_secret_file: cannot be combined with identities.contoso.client_secret"},
		},
		{
			name:     "missing file",
			yaml:     withNATS("  user: u\n  password_file: /s/missing\n"),
			problems: []string{`nats.password_file: cannot read "/s/missing": file does not exist`},
		},
		{
			name:     "empty file",
			yaml:     withNATS("  user: u\n  password_file: /s/empty\n"),
			files:    map[string]string{"/s/empty": "\n"},
			problems: []string{`nats.password_file: file "/s/empty" is empty`},
		},
		{
			name: "missing imap password file among other problems",
			yaml: strings.Replace(minimalYAML, "      host: outlook.office365.com\n",
				"      host: outlook.office365.com\n      auth: password\n      password_file: /s/imap\n      fetch_batch: -1\n", 1),
			problems: []string{
				`mailboxes[0].imap.password_file: cannot read "/s/imap": file does not exist`,
				"mailboxes[0].imap.fetch_batch: must be between 1 and 5000, got -1",
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := ParseImporterWith([]byte(tc.yaml), LoadOptions{LookupEnv: noEnv, ReadFile: fakeFiles(tc.files)})
			if tc.problems != nil {
				assertProblems(t, err, tc.problems)
				if strings.Contains(err.Error(), "hunter2") {
					t.Errorf("error reveals a secret: %v", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			tc.check(t, cfg)
		})
	}
}

func TestLoadImporterResolvesRelativeFiles(t *testing.T) {
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "secrets"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "secrets", "client-secret"), []byte("from-disk\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	y := strings.NewReplacer(
		"client_secret: minimal-secret", "client_secret_file: secrets/client-secret\n    certificate_file: \"\"",
		"host: outlook.office365.com", "host: ${MAILPIPE_TEST_IMAP_HOST}",
	).Replace(minimalYAML)
	path := filepath.Join(dir, "importer.yaml")
	if err := os.WriteFile(path, []byte(y), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("MAILPIPE_TEST_IMAP_HOST", "imap.test.example")

	// Load from another working directory: the secret is found next to the
	// config file.
	t.Chdir(t.TempDir())
	cfg, err := LoadImporter(path)
	if err != nil {
		t.Fatal(err)
	}
	id := cfg.Identities["contoso"]
	if id.ClientSecret.Value() != "from-disk" {
		t.Errorf("client secret = %q", id.ClientSecret.Value())
	}
	if want := filepath.Join(dir, "secrets", "client-secret"); id.ClientSecretFile != want {
		t.Errorf("client_secret_file = %q, want %q", id.ClientSecretFile, want)
	}
	if cfg.Mailboxes[0].IMAP.Host != "imap.test.example" {
		t.Errorf("host = %q", cfg.Mailboxes[0].IMAP.Host)
	}

	// A missing secret file is reported with its key and resolved path; the
	// error names the config file too.
	if err := os.Remove(filepath.Join(dir, "secrets", "client-secret")); err != nil {
		t.Fatal(err)
	}
	_, err = LoadImporter(path)
	if err == nil {
		t.Fatal("expected an error for a missing secret file")
	}
	for _, want := range []string{path, "identities.contoso.client_secret_file: cannot read", filepath.Join(dir, "secrets", "client-secret")} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q lacks %q", err, want)
		}
	}
	var ve *ValidationError
	if !errors.As(err, &ve) {
		t.Errorf("error does not wrap a *ValidationError: %v", err)
	}

	if _, err := LoadImporter(filepath.Join(dir, "nope.yaml")); err == nil || !strings.Contains(err.Error(), "read config") {
		t.Errorf("missing config file: err = %v", err)
	}
}

func TestStrictDecoding(t *testing.T) {
	const y = `log:
  levle: debug
natss:
  url: nats://x
identities:
  contoso:
    tenant_id: contoso.onmicrosoft.com
    clientSecret: hunter2
mailboxes:
  - name: a
    host: imap.example.org
    imap:
      host: imap.example.org
  - name: b
    imap:
      hots: imap.example.org
      port: nine
      timeout: [1, 2]
    folders:
      import: INBOX
      include_subfolders: maybe
      colour: blue
    poll_interval: 5 minutes
    max_message_size: 12 parsecs
  - name: c
    name: d
    imap: outlook.office365.com
bus:
  stream: [a, b]
  max_in_flight: 1.5
  large_message_threshold: {a: 1}
shutdown_timeout: 60
`
	_, err := ParseImporter([]byte(y), noEnv)
	assertProblems(t, err, []string{
		`log.levle: unknown key (did you mean "level"?)`,
		`natss: unknown key (did you mean "nats"?)`,
		`identities.contoso.clientSecret: unknown key (did you mean "client_secret"?)`,
		`mailboxes[0].host: unknown key (did you mean "imap.host"?)`,
		`mailboxes[1].imap.hots: unknown key (did you mean "host"?)`,
		`mailboxes[1].imap.port: invalid integer "nine"`,
		`mailboxes[1].imap.timeout: expected a duration, got a list`,
		`mailboxes[1].folders.include_subfolders: invalid boolean "maybe"`,
		`mailboxes[1].folders.colour: unknown key`,
		`mailboxes[1].poll_interval: invalid duration "5 minutes"`,
		`mailboxes[1].max_message_size: invalid size "12 parsecs"`,
		`mailboxes[2].name: duplicate key (first given on line 25)`,
		`mailboxes[2].imap: expected a mapping, got a string`,
		`bus.stream: expected a mapping, got a list`,
		`bus.max_in_flight: invalid integer "1.5"`,
		`bus.large_message_threshold: expected a size, got a mapping`,
		`shutdown_timeout: invalid duration "60"`,
	})
	if strings.Contains(err.Error(), "hunter2") {
		t.Errorf("error reveals a value of an unknown key: %v", err)
	}
	if strings.Contains(err.Error(), `colour: unknown key (did you mean`) {
		t.Errorf("suggestion for a key with no close match: %v", err)
	}

	// Line numbers point at the offending key.
	var ve *ValidationError
	errors.As(err, &ve)
	lines := map[string]int{}
	for _, p := range ve.Problems {
		lines[p.Path] = p.Line
	}
	for path, line := range map[string]int{"log.levle": 2, "mailboxes[1].imap.hots": 16, "shutdown_timeout": 32} {
		if lines[path] != line {
			t.Errorf("%s reported at line %d, want %d", path, lines[path], line)
		}
	}
	if !strings.Contains(err.Error(), `mailboxes[1].imap.hots: unknown key (did you mean "host"?) (line 16)`) {
		t.Errorf("error text lacks the line number:\n%v", err)
	}
}

func TestStrictDecodingEdgeCases(t *testing.T) {
	tests := []struct {
		name     string
		yaml     string
		problems []string
		errText  string // for errors that are not a *ValidationError
	}{
		{name: "empty document", yaml: "", problems: []string{"mailboxes: at least one mailbox is required"}},
		{name: "only comments", yaml: "# nothing\n", problems: []string{"mailboxes: at least one mailbox is required"}},
		{name: "top level is a list", yaml: "- a\n- b\n", problems: []string{"line 1: expected a mapping, got a list"}},
		{name: "two documents", yaml: "log: {}\n---\nlog: {}\n", errText: "expected one document"},
		{name: "syntax error", yaml: "log:\n  level: [\n", errText: "parse yaml"},
		{name: "quoted key path", yaml: "identities:\n  my id:\n    tenantid: x\n", problems: []string{`identities["my id"].tenantid: unknown key (did you mean "tenant_id"?)`}},
		{
			name: "unknown key in a merged anchor is reported once per path",
			yaml: `mailboxes:
  - name: a
    imap: &srv
      host: h
      prot: 993
  - name: b
    imap:
      <<: *srv
      fetch_batch: 10
`,
			problems: []string{
				`mailboxes[0].imap.prot: unknown key (did you mean "port"?)`,
				`mailboxes[1].imap.prot: unknown key (did you mean "port"?)`,
			},
		},
		{
			name:     "misplaced secret key",
			yaml:     "mailboxes:\n  - name: a\n    password_file: /x\n",
			problems: []string{`mailboxes[0].password_file: unknown key (did you mean "imap.password_file"?)`},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseImporter([]byte(tc.yaml), noEnv)
			if tc.errText != "" {
				if err == nil || !strings.Contains(err.Error(), tc.errText) {
					t.Fatalf("err = %v, want it to contain %q", err, tc.errText)
				}
				return
			}
			assertProblems(t, err, tc.problems)
		})
	}
}

func TestMergeKeys(t *testing.T) {
	y := minimalYAML + `  - name: second
    address: second@contoso.nl
    identity: contoso
    imap:
      <<: *imap
      port: 10993
    folders: {import: A, processed: B, error: C}
`
	y = strings.Replace(y, "    imap:\n      host: outlook.office365.com\n",
		"    imap: &imap\n      host: outlook.office365.com\n      fetch_batch: 42\n      port: 993\n", 1)
	cfg, err := ParseImporter([]byte(y), noEnv)
	if err != nil {
		t.Fatal(err)
	}
	im := cfg.Mailboxes[1].IMAP
	if im.Host != "outlook.office365.com" || im.FetchBatch != 42 || im.Port != 10993 {
		t.Errorf("merged imap = %s:%d batch %d", im.Host, im.Port, im.FetchBatch)
	}
	if cfg.Mailboxes[0].IMAP.Port != 993 {
		t.Errorf("anchor source changed: port %d", cfg.Mailboxes[0].IMAP.Port)
	}
}

func TestValidationProblems(t *testing.T) {
	const y = `
log:
  level: verbose
  format: text
nats:
  url: http://nats:4222
  credentials_file: /x.creds
  user: bob
  tls:
    key_file: key.pem
bus:
  stream:
    name: MAIL INBOUND
    subject_prefix: "mailpipe.>"
    replicas: 7
    max_age: 1h
    duplicate_window: 2h
    storage: disk
  dead_letter:
    subject_prefix: $JS.dl
  object_bucket: bodies.v1
  large_message_threshold: 16MiB
  max_in_flight: 20000
identities:
  contoso:
    tenant_id: common
    client_id: not-a-guid
    secret_expires: 31-12-2027
    private_key_file: /k.pem
  fabrikam:
    tenant_id: fabrikam.onmicrosoft.com
    client_id: ` + guidClient + `
    client_secret: hunter2-fabrikam
    certificate_file: /c.pem
    authority_host: https://login.microsoftonline.com/
mailboxes:
  - name: Algemeen
    address: algemeen
    identity: contosoo
    imap:
      host: imaps://outlook.office365.com
      port: 70000
      security: ssl
      fetch_batch: 9000
      password: hunter2-imap
    folders:
      import: INBOX/Import
      include_subfolders: true
      processed: inbox/Import/Done
      error: INBOX/Import/
    poll_interval: 500ms
    max_message_size: 0
  - name: dup
    address: dup@example.org
    source: graph
    folders: {import: A, processed: B, error: C}
  - name: dup
    address: dup2@example.org
    source: pop3
    folders: {import: A, processed: B, error: C}
  - name: dup
    address: Dup <dup@example.org>
    imap:
      host: imap.example.org:993
      auth: password
      timeout: -1s
      tls: {key_file: k.pem}
    folders: {import: A//B}
  - imap: {}
shutdown_timeout: -1s
http_listen: "9090"
`
	_, err := ParseImporter([]byte(y), noEnv)
	assertProblems(t, err, []string{
		`log.level: "verbose" is not one of debug, info, warn, error`,
		`log.format: "text" is not one of json, console`,
		`nats.url: entry 1 has scheme "http"; use nats, tls, ws or wss`,
		`nats: set at most one of credentials_file, nkey_seed_file and user/password (found credentials_file, user/password)`,
		`nats.user: needs nats.password or nats.password_file`,
		`nats.tls.key_file: only used together with cert_file`,
		`bus.stream.name: "MAIL INBOUND" is not a valid stream name`,
		`bus.stream.subject_prefix: "mailpipe.>" must not contain wildcards`,
		`bus.stream.replicas: must be between 1 and 5, got 7`,
		`bus.stream.duplicate_window: 2h0m0s is longer than max_age 1h0m0s`,
		`bus.stream.storage: "disk" is not one of file, memory`,
		`bus.dead_letter.subject_prefix: "$JS.dl" starts with $, which is reserved for NATS itself`,
		`bus.object_bucket: "bodies.v1" is not a valid bucket name`,
		`bus.large_message_threshold: must be between 1KiB and 8MiB, got 16MiB`,
		`bus.max_in_flight: must be between 1 and 10000, got 20000`,
		`identities.contoso.tenant_id: "common" is neither a GUID nor a domain name`,
		`identities.contoso.client_id: "not-a-guid" is not a GUID`,
		`identities.contoso: needs a credential: client_secret, client_secret_file or certificate_file`,
		`identities.contoso.private_key_file: only used together with certificate_file`,
		`identities.contoso.secret_expires: "31-12-2027" is not a date in the form YYYY-MM-DD`,
		`identities.fabrikam: set either a client secret (client_secret or client_secret_file) or certificate_file, not both`,
		`identities.fabrikam.authority_host: "https://login.microsoftonline.com/" must be a host name`,
		`mailboxes[0].name: "Algemeen" must be 1-64 characters of a-z, 0-9, '_' and '-'`,
		`mailboxes[0].address: "algemeen" is not an e-mail address`,
		`mailboxes[0].imap.host: "imaps://outlook.office365.com" must be a host name, without scheme or path`,
		`mailboxes[0].imap.port: must be between 1 and 65535, got 70000`,
		`mailboxes[0].imap.security: "ssl" is not one of tls, starttls, insecure`,
		`mailboxes[0].imap.password: only used with auth password (auth is xoauth2)`,
		`mailboxes[0].imap.fetch_batch: must be between 1 and 5000, got 9000`,
		`mailboxes[0].identity: unknown identity "contosoo" (defined: contoso, fabrikam)`,
		`mailboxes[0].folders.processed: "inbox/Import/Done" lies inside the import folder "INBOX/Import" and include_subfolders is true`,
		`mailboxes[0].folders.error: must differ from the import folder "INBOX/Import"`,
		`mailboxes[0].poll_interval: must be at least 1s, got 500ms`,
		// max_message_size 0 takes the default, so it is no problem.
		`mailboxes[1].identity: required with source graph: name an entry of identities`,
		`mailboxes[2].name: duplicate name "dup" (also used by mailboxes[1])`,
		`mailboxes[2].source: "pop3" is not one of imap, graph`,
		`mailboxes[3].name: duplicate name "dup" (also used by mailboxes[1])`,
		`mailboxes[3].address: "Dup <dup@example.org>" is not an e-mail address`,
		`mailboxes[3].imap.host: "imap.example.org:993" must not include a port; set imap.port`,
		`mailboxes[3].imap.password: required with auth password (or set password_file)`,
		`mailboxes[3].imap.tls.key_file: only used together with cert_file`,
		`mailboxes[3].imap.timeout: must be positive, got -1s`,
		`mailboxes[3].folders.import: "A//B" has an empty folder name between '/' separators`,
		`mailboxes[3].folders.processed: required`,
		`mailboxes[3].folders.error: required`,
		`mailboxes[4].name: required`,
		`mailboxes[4].address: required`,
		`mailboxes[4].imap.host: required`,
		`mailboxes[4].identity: required with imap.auth xoauth2`,
		`mailboxes[4].folders.import: required`,
		`mailboxes[4].folders.processed: required`,
		`mailboxes[4].folders.error: required`,
		`shutdown_timeout: must be positive, got -1s`,
		`http_listen: "9090" is not host:port`,
	})
	if strings.Contains(err.Error(), "hunter2") {
		t.Errorf("error reveals a secret:\n%v", err)
	}
	// Validation problems carry the line of their key, or of the closest
	// enclosing key when the key itself is absent.
	var ve *ValidationError
	errors.As(err, &ve)
	for _, p := range ve.Problems {
		if p.Line == 0 {
			t.Errorf("problem without a line: %v", p)
		}
	}
}

func TestValidationRules(t *testing.T) {
	// Each case edits the minimal config and expects exactly these problems.
	tests := []struct {
		name     string
		edit     func(c *Importer)
		problems []string
	}{
		{name: "valid as is", edit: func(*Importer) {}},
		{
			name: "same stream names and prefixes",
			edit: func(c *Importer) {
				c.Bus.DeadLetter.Name = c.Bus.Stream.Name
				c.Bus.DeadLetter.SubjectPrefix = c.Bus.Stream.SubjectPrefix
			},
			problems: []string{
				`bus.dead_letter.name: must differ from bus.stream.name (both are "MAILPIPE_INBOUND")`,
				`bus.dead_letter.subject_prefix: must differ from bus.stream.subject_prefix (both are "mailpipe.inbound")`,
			},
		},
		{
			name:     "overlapping prefixes",
			edit:     func(c *Importer) { c.Bus.DeadLetter.SubjectPrefix = "mailpipe.inbound.dead" },
			problems: []string{`bus.dead_letter.subject_prefix: "mailpipe.inbound.dead" overlaps bus.stream.subject_prefix "mailpipe.inbound"`},
		},
		{
			name:     "overlapping prefixes the other way round",
			edit:     func(c *Importer) { c.Bus.DeadLetter.SubjectPrefix = "mailpipe" },
			problems: []string{`bus.dead_letter.subject_prefix: "mailpipe" overlaps bus.stream.subject_prefix "mailpipe.inbound"`},
		},
		{
			name:     "prefix sharing only a string prefix is fine",
			edit:     func(c *Importer) { c.Bus.DeadLetter.SubjectPrefix = "mailpipe.inboundx" },
			problems: nil,
		},
		{
			name: "bad subjects and names",
			edit: func(c *Importer) {
				c.Bus.Stream.SubjectPrefix = "a..b"
				c.Bus.Stream.Name = "A.B"
				c.Bus.DeadLetter.SubjectPrefix = "a b"
				c.Bus.DeadLetter.Name = "X>"
			},
			problems: []string{
				`bus.stream.name: "A.B" is not a valid stream name`,
				`bus.stream.subject_prefix: "a..b" is not a valid subject (empty token)`,
				`bus.dead_letter.name: "X>" is not a valid stream name`,
				`bus.dead_letter.subject_prefix: "a b" must not contain blanks`,
			},
		},
		{
			name: "threshold bounds",
			edit: func(c *Importer) { c.Bus.LargeMessageThreshold = 1000 },
			problems: []string{
				"bus.large_message_threshold: must be between 1KiB and 8MiB, got 1KB",
			},
		},
		{
			name:     "threshold upper bound is inclusive",
			edit:     func(c *Importer) { c.Bus.LargeMessageThreshold = 8 * MiB },
			problems: nil,
		},
		{
			name: "nats user without password and nkey with credentials",
			edit: func(c *Importer) {
				c.NATS.CredentialsFile = "/a.creds"
				c.NATS.NKeySeedFile = "/a.nk"
			},
			problems: []string{"nats: set at most one of credentials_file, nkey_seed_file and user/password (found credentials_file, nkey_seed_file)"},
		},
		{
			name:     "nats password without user",
			edit:     func(c *Importer) { c.NATS.Password = "p" },
			problems: []string{"nats.password: needs nats.user"},
		},
		{
			name: "nats cluster urls",
			edit: func(c *Importer) {
				c.NATS.URL = "nats://a:4222,tls://b:4222, c:4222,wss://d"
			},
		},
		{
			name:     "nats url with bad port and empty entry",
			edit:     func(c *Importer) { c.NATS.URL = "nats://a:99999,,nats://" },
			problems: []string{"nats.url: entry 1 has an invalid port", "nats.url: entry 2 is empty", "nats.url: entry 3 has no host"},
		},
		{
			name:     "embedded listen",
			edit:     func(c *Importer) { c.NATS.Embedded.Listen = "localhost" },
			problems: []string{`nats.embedded.listen: "localhost" is not host:port`},
		},
		{
			name:     "no identities defined",
			edit:     func(c *Importer) { c.Identities = nil },
			problems: []string{`mailboxes[0].identity: unknown identity "contoso" (no identities are defined)`},
		},
		{
			name: "password auth needs no identity",
			edit: func(c *Importer) {
				c.Mailboxes[0].Identity = ""
				c.Mailboxes[0].IMAP.Auth = "password"
				c.Mailboxes[0].IMAP.PasswordFile = "/p"
			},
		},
		{
			name:     "unknown auth",
			edit:     func(c *Importer) { c.Mailboxes[0].IMAP.Auth = "plain" },
			problems: []string{`mailboxes[0].imap.auth: "plain" is not one of xoauth2, password`},
		},
		{
			name: "processed inside import without include_subfolders is fine",
			edit: func(c *Importer) { c.Mailboxes[0].Folders.Processed = "INBOX/Import/Done" },
		},
		{
			name: "error inside import with include_subfolders",
			edit: func(c *Importer) {
				c.Mailboxes[0].Folders.IncludeSubfolders = true
				c.Mailboxes[0].Folders.Error = "INBOX/Import/Sub/Error"
			},
			problems: []string{`mailboxes[0].folders.error: "INBOX/Import/Sub/Error" lies inside the import folder "INBOX/Import"`},
		},
		{
			name: "sibling with a common string prefix is not inside",
			edit: func(c *Importer) {
				c.Mailboxes[0].Folders.IncludeSubfolders = true
				c.Mailboxes[0].Folders.Processed = "INBOX/Import done"
			},
		},
		{
			name:     "fetch batch upper bound",
			edit:     func(c *Importer) { c.Mailboxes[0].IMAP.FetchBatch = 5001 },
			problems: []string{"mailboxes[0].imap.fetch_batch: must be between 1 and 5000, got 5001"},
		},
		{
			name:     "negative max message size",
			edit:     func(c *Importer) { c.Mailboxes[0].MaxMessageSize = -1 },
			problems: []string{"mailboxes[0].max_message_size: must be positive"},
		},
		{
			name: "certificate identity, GUID tenant, test authority host",
			edit: func(c *Importer) {
				c.Identities["contoso"] = Identity{
					TenantID: guidTenant, ClientID: guidClient,
					CertificateFile: "/c.pem", AuthorityHost: "127.0.0.1:8443",
				}
			},
		},
		{
			name: "identity with bad domain tenant",
			edit: func(c *Importer) {
				id := c.Identities["contoso"]
				id.TenantID = "contoso"
				c.Identities["contoso"] = id
			},
			problems: []string{`identities.contoso.tenant_id: "contoso" is neither a GUID nor a domain name`},
		},
		{
			name: "durations",
			edit: func(c *Importer) {
				c.NATS.ConnectTimeout = -time.Second
				c.Bus.PublishTimeout = -time.Second
				c.Bus.DeadLetter.MaxAge = -time.Hour
			},
			problems: []string{
				"nats.connect_timeout: must be positive",
				"bus.dead_letter.max_age: must be positive",
				"bus.publish_timeout: must be positive",
			},
		},
		{
			name:     "token bucket name",
			edit:     func(c *Importer) { c.Bus.TokenBucket = "tokens.v1" },
			problems: []string{`bus.token_bucket: "tokens.v1" is not a valid bucket name`},
		},
		{
			name:     "token bucket same as state bucket",
			edit:     func(c *Importer) { c.Bus.TokenBucket = "mailpipe-state" },
			problems: []string{`bus.token_bucket: must differ from bus.state_bucket (both are "mailpipe-state")`},
		},
		{
			name:     "token bucket same as object bucket",
			edit:     func(c *Importer) { c.Bus.TokenBucket = "mailpipe-bodies" },
			problems: []string{`bus.token_bucket: must differ from bus.object_bucket (both are "mailpipe-bodies")`},
		},
		{
			name: "custom token bucket",
			edit: func(c *Importer) { c.Bus.TokenBucket = "tokens" },
		},
		{
			name: "log enums",
			edit: func(c *Importer) {
				c.Log.Level = "warning"
				c.Log.Format = "JSON"
			},
			problems: []string{
				`log.level: "warning" is not one of debug, info, warn, error`,
				`log.format: "JSON" is not one of json, console`,
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := ParseImporter([]byte(minimalYAML), noEnv)
			if err != nil {
				t.Fatal(err)
			}
			tc.edit(cfg)
			cfg.ApplyDefaults()
			err = cfg.Validate()
			if tc.problems == nil {
				if err != nil {
					t.Fatalf("unexpected error: %v", err)
				}
				return
			}
			assertProblems(t, err, tc.problems)
		})
	}
}

func TestByteSize(t *testing.T) {
	parse := []struct {
		in   string
		want ByteSize
		err  string
	}{
		{in: "512KiB", want: 512 * 1024},
		{in: "35MiB", want: 35 << 20},
		{in: "1GiB", want: 1 << 30},
		{in: "2TiB", want: 2 << 40},
		{in: "10MB", want: 10_000_000},
		{in: "1KB", want: 1000},
		{in: "3GB", want: 3_000_000_000},
		{in: "1024", want: 1024},
		{in: "1024B", want: 1024},
		{in: "0", want: 0},
		{in: "1.5KiB", want: 1536},
		{in: "2 MiB", want: 2 << 20},
		{in: "8mib", want: 8 << 20},
		{in: " 7kb ", want: 7000},
		{in: "", err: "invalid size"},
		{in: "abc", err: `invalid size "abc"`},
		{in: "KiB", err: `invalid size "KiB"`},
		{in: "-1", err: `invalid size "-1"`},
		{in: "-1MiB", err: `invalid size "-1MiB"`},
		{in: "+1", err: `invalid size "+1"`},
		{in: "1e3", err: `invalid size "1e3"`},
		{in: "0x10", err: `invalid size "0x10"`},
		{in: "1.5B", err: "not a whole number of bytes"},
		{in: "12 parsecs", err: `invalid size "12 parsecs"`},
		{in: "10000000TiB", err: "too large"},
		{in: "9223372036854775808", err: "too large"},
	}
	for _, tc := range parse {
		got, err := ParseByteSize(tc.in)
		switch {
		case tc.err != "":
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("ParseByteSize(%q) = %v, %v; want error containing %q", tc.in, got, err, tc.err)
			}
		case err != nil:
			t.Errorf("ParseByteSize(%q): %v", tc.in, err)
		case got != tc.want:
			t.Errorf("ParseByteSize(%q) = %d, want %d", tc.in, got, tc.want)
		}
	}

	format := []struct {
		in   ByteSize
		want string
	}{
		{0, "0B"}, {1, "1B"}, {1023, "1023B"}, {1024, "1KiB"}, {1536, "1536B"},
		{512 * KiB, "512KiB"}, {35 * MiB, "35MiB"}, {GiB, "1GiB"}, {3 * TiB, "3TiB"},
		{1000, "1KB"}, {10 * MB, "10MB"}, {1500 * MB, "1500MB"}, {2 * GB, "2GB"},
	}
	for _, tc := range format {
		if got := tc.in.String(); got != tc.want {
			t.Errorf("ByteSize(%d).String() = %q, want %q", int64(tc.in), got, tc.want)
		}
		back, err := ParseByteSize(tc.in.String())
		if err != nil || back != tc.in {
			t.Errorf("round trip of %d: %d, %v", int64(tc.in), back, err)
		}
	}

	// Plain yaml.v3 decoding uses UnmarshalYAML.
	var v struct {
		A, B ByteSize
	}
	if err := yaml.Unmarshal([]byte("a: 35MiB\nb: 2048\n"), &v); err != nil {
		t.Fatal(err)
	}
	if v.A != 35*MiB || v.B != 2048 {
		t.Errorf("yaml.Unmarshal: %+v", v)
	}
	if err := yaml.Unmarshal([]byte("a: lots\n"), &v); err == nil {
		t.Error("yaml.Unmarshal accepted an invalid size")
	}
	out, err := yaml.Marshal(struct{ A ByteSize }{512 * KiB})
	if err != nil || string(out) != "a: 512KiB\n" {
		t.Errorf("yaml.Marshal = %q, %v", out, err)
	}
}

func TestParseDuration(t *testing.T) {
	tests := []struct {
		in   string
		want time.Duration
		bad  bool
	}{
		{in: "30s", want: 30 * time.Second},
		{in: "5m", want: 5 * time.Minute},
		{in: "1h30m", want: 90 * time.Minute},
		{in: "7d", want: 168 * time.Hour},
		{in: "1d12h", want: 36 * time.Hour},
		{in: "0", want: 0},
		{in: "5 minutes", bad: true},
		{in: "60", bad: true},
		{in: "d", bad: true},
		{in: "1d-1h", bad: true},
		{in: "99999999999d", bad: true},
	}
	for _, tc := range tests {
		got, err := parseDuration(tc.in)
		if tc.bad {
			if err == nil {
				t.Errorf("parseDuration(%q) = %v, want an error", tc.in, got)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("parseDuration(%q) = %v, %v; want %v", tc.in, got, err, tc.want)
		}
	}
}

func TestSecretsAreRedacted(t *testing.T) {
	y := strings.Replace(minimalYAML, "client_secret: minimal-secret", "client_secret: hunter2-client\n"+
		"  svc:\n    kind: delegated\n    tenant_id: contoso.onmicrosoft.com\n    client_id: "+guidClient+"\n"+
		"    username: svc@contoso.nl\n    token_cache_key: "+redactedCacheKey, 1) + `  - name: pw
    address: pw@example.org
    imap:
      host: imap.example.org
      auth: password
      password: hunter2-imap
    folders: {import: INBOX, processed: Done, error: Failed}
nats:
  user: u
  password: hunter2-nats
`
	cfg, err := ParseImporter([]byte(y), noEnv)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.NATS.Password.Value() != "hunter2-nats" {
		t.Fatalf("nats password not loaded: %q", cfg.NATS.Password.Value())
	}
	if cfg.Identities["svc"].TokenCacheKey.Value() != redactedCacheKey {
		t.Fatalf("token cache key not loaded")
	}
	outputs := map[string]string{
		"%v":    fmt.Sprintf("%v", cfg),
		"%+v":   fmt.Sprintf("%+v", cfg),
		"%#v":   fmt.Sprintf("%#v", cfg),
		"%v *":  fmt.Sprintf("%v", *cfg),
		"%+v *": fmt.Sprintf("%+v", *cfg),
		"%#v *": fmt.Sprintf("%#v", *cfg),
		"%s":    fmt.Sprintf("%s", cfg.NATS.Password),
		"%q":    fmt.Sprintf("%q", cfg.NATS.Password),
		"%x":    fmt.Sprintf("%x", cfg.NATS.Password),
	}
	j, err := json.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	outputs["json"] = string(j)
	yy, err := yaml.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	outputs["yaml"] = string(yy)
	for format, out := range outputs {
		if strings.Contains(out, "hunter2") {
			t.Errorf("%s reveals a secret: %s", format, out)
		}
		if !strings.Contains(out, "[redacted]") && !strings.Contains(out, fmt.Sprintf("%x", "[redacted]")) {
			t.Errorf("%s shows no redaction marker: %s", format, out)
		}
	}
	if s := Secret("").String(); s != "" {
		t.Errorf("empty secret prints as %q", s)
	}
}

// redactedCacheKey is a valid token cache key (unpadded base64 of 32
// bytes) that contains "hunter2", for tests that look for leaks.
const redactedCacheKey = "hunter2hunter2hunter2hunter2hunter2hunter2A"

func exampleOptions() LoadOptions {
	return LoadOptions{
		LookupEnv: noEnv,
		ReadFile: fakeFiles(map[string]string{
			"/var/run/secrets/mailpipe/client-secret":   "example-client-secret\n",
			"/var/run/secrets/mailpipe/token-cache-key": testCacheKey + "\n",
		}),
	}
}

const examplePath = "../../configs/importer.example.yaml"

func TestExampleConfigLoads(t *testing.T) {
	cfg, err := LoadImporterWith(examplePath, exampleOptions())
	if err != nil {
		t.Fatalf("example config: %v", err)
	}
	if len(cfg.Mailboxes) != 4 {
		t.Fatalf("mailboxes = %d, want 4", len(cfg.Mailboxes))
	}
	m0, m1 := cfg.Mailboxes[0], cfg.Mailboxes[1]
	if m0.IMAP.Host != "outlook.office365.com" || m0.IMAP.Port != 993 || m0.IMAP.Auth != "xoauth2" {
		t.Errorf("first mailbox imap = %+v", m0.IMAP)
	}
	if m0.IMAP.Username != m0.Address {
		t.Errorf("username %q, want the address %q", m0.IMAP.Username, m0.Address)
	}
	if m0.Folders.Import != "Postvak IN/Algemeen/Import" || m0.Folders.Processed != "Postvak IN/Algemeen/Verwerkt" || m0.Folders.Error != "Postvak IN/Algemeen/Fout" {
		t.Errorf("first mailbox folders = %+v", m0.Folders)
	}
	if !m1.Folders.IncludeSubfolders {
		t.Error("second mailbox does not include subfolders")
	}
	if m1.IMAP.Host != m0.IMAP.Host || m1.IMAP.FetchBatch == m0.IMAP.FetchBatch {
		t.Errorf("second mailbox imap (merged) = %+v", m1.IMAP)
	}
	id, ok := cfg.Identities[m0.Identity]
	if !ok {
		t.Fatalf("identity %q not defined", m0.Identity)
	}
	if id.ClientSecret.Value() != "example-client-secret" {
		t.Errorf("client secret = %q", id.ClientSecret.Value())
	}
	if id.ClientSecretFile != "/var/run/secrets/mailpipe/client-secret" {
		t.Errorf("client_secret_file = %q", id.ClientSecretFile)
	}

	// The Graph mailboxes: app-only, and delegated with every graph default.
	m2, m3 := cfg.Mailboxes[2], cfg.Mailboxes[3]
	if m2.Source != "graph" || cfg.Identities[m2.Identity].Kind != "app" {
		t.Errorf("third mailbox: source %q, identity %q", m2.Source, m2.Identity)
	}
	if m2.Folders.Import != "Postvak IN/Algemeen/Import" {
		t.Errorf("third mailbox import folder = %q", m2.Folders.Import)
	}
	if m2.IMAP != (IMAP{}) || m3.IMAP != (IMAP{}) {
		t.Errorf("graph mailboxes got imap settings: %+v %+v", m2.IMAP, m3.IMAP)
	}
	wantGraph := Graph{
		BaseURL: "https://graph.microsoft.com/v1.0", Discovery: "delta", PageSize: 200,
		MaxConcurrency: 4, RequestBudget: 10000, BudgetWindow: 10 * time.Minute, Timeout: 60 * time.Second,
	}
	if m2.Graph != wantGraph || m3.Graph != wantGraph {
		t.Errorf("graph settings:\n got %+v\n and %+v\nwant %+v", m2.Graph, m3.Graph, wantGraph)
	}
	del := cfg.Identities[m3.Identity]
	if del.Kind != "delegated" || del.Username == "" || del.ClientSecret != "" {
		t.Errorf("delegated identity = %+v", del)
	}
	if del.TokenCacheKey.Value() != testCacheKey || del.TokenCacheKeyFile != "/var/run/secrets/mailpipe/token-cache-key" {
		t.Errorf("token cache key %q from %q", del.TokenCacheKey.Value(), del.TokenCacheKeyFile)
	}
	if cfg.Bus.TokenBucket != "mailpipe-tokens" {
		t.Errorf("bus.token_bucket = %q", cfg.Bus.TokenBucket)
	}

	if cfg.Log.Level != "info" || cfg.NATS.URL == "" {
		t.Errorf("env defaults not applied: level %q, url %q", cfg.Log.Level, cfg.NATS.URL)
	}

	// With the variables set they are used.
	opts := exampleOptions()
	opts.LookupEnv = envMap(map[string]string{"MAILPIPE_LOG_LEVEL": "debug", "MAILPIPE_NATS_URL": ""})
	cfg, err = LoadImporterWith(examplePath, opts)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Log.Level != "debug" {
		t.Errorf("log.level = %q, want debug from the environment", cfg.Log.Level)
	}
}

// TestExampleConfigDocumentsEveryKey checks that every configuration key
// appears in the example, set or in a comment.
func TestExampleConfigDocumentsEveryKey(t *testing.T) {
	data, err := os.ReadFile(examplePath)
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
	walk(reflect.TypeFor[Importer]())
	if len(keys) < 50 {
		t.Fatalf("found only %d keys; the walk is broken", len(keys))
	}
	for _, k := range keys {
		re := regexp.MustCompile(`(?m)^[ \t]*(#[ \t]*)?(- )?` + regexp.QuoteMeta(k) + `:`)
		if !re.Match(data) {
			t.Errorf("example does not document %q", k)
		}
	}
}

func TestGraphDefaults(t *testing.T) {
	cfg, err := ParseImporter([]byte(graphYAML), noEnv)
	if err != nil {
		t.Fatal(err)
	}
	m := cfg.Mailboxes[0]
	want := Graph{
		BaseURL:        "https://graph.microsoft.com/v1.0",
		Discovery:      "delta",
		PageSize:       200,
		MaxConcurrency: 4,
		RequestBudget:  10000,
		BudgetWindow:   10 * time.Minute,
		Timeout:        60 * time.Second,
	}
	if m.Graph != want {
		t.Errorf("graph = %+v\nwant %+v", m.Graph, want)
	}
	// IMAP defaults (port, security, auth, username, ...) stay away from a
	// graph mailbox.
	if m.IMAP != (IMAP{}) {
		t.Errorf("imap of a graph mailbox = %+v, want it empty", m.IMAP)
	}
	if m.PollInterval != DefaultPollInterval || m.MaxMessageSize != DefaultMaxMessageSize {
		t.Errorf("poll_interval %s, max_message_size %s", m.PollInterval, m.MaxMessageSize)
	}

	// Explicit values are kept.
	y := strings.Replace(graphYAML, "    identity: contoso\n", `    identity: contoso
    graph:
      base_url: https://127.0.0.1:8443/v1.0
      discovery: list
      page_size: 1
      max_concurrency: 1
      request_budget: 1
      budget_window: 1s
      timeout: 1ms
      disable_batch: true
`, 1)
	cfg, err = ParseImporter([]byte(y), noEnv)
	if err != nil {
		t.Fatal(err)
	}
	want = Graph{
		BaseURL: "https://127.0.0.1:8443/v1.0", Discovery: "list", PageSize: 1, MaxConcurrency: 1,
		RequestBudget: 1, BudgetWindow: time.Second, Timeout: time.Millisecond, DisableBatch: true,
	}
	if got := cfg.Mailboxes[0].Graph; got != want {
		t.Errorf("graph = %+v\nwant %+v", got, want)
	}

	// ApplyDefaults on a configuration built in code.
	c := Importer{
		Identities: map[string]Identity{"c": {TenantID: guidTenant, ClientID: guidClient, ClientSecret: "s"}},
		Mailboxes: []Mailbox{{
			Name: "m", Address: "m@example.com", Source: "graph", Identity: "c",
			Folders: Folders{Import: "Inbox", Processed: "Done", Error: "Failed"},
		}},
	}
	c.ApplyDefaults()
	if err := c.Validate(); err != nil {
		t.Fatalf("Validate: %v", err)
	}
	if c.Mailboxes[0].Graph.BaseURL != DefaultGraphBaseURL || c.Mailboxes[0].IMAP != (IMAP{}) {
		t.Errorf("defaults in code: %+v", c.Mailboxes[0])
	}
}

func TestGraphValidation(t *testing.T) {
	// YAML cases: graphYAML with the mailbox's "identity: contoso" line
	// replaced by these lines.
	yamlCases := []struct {
		name     string
		mailbox  string
		problems []string
	}{
		{name: "valid", mailbox: "    identity: contoso\n"},
		{
			name:     "no identity",
			mailbox:  "",
			problems: []string{"mailboxes[0].identity: required with source graph: name an entry of identities"},
		},
		{
			name:     "unknown identity",
			mailbox:  "    identity: fabrikam\n",
			problems: []string{`mailboxes[0].identity: unknown identity "fabrikam" (defined: contoso)`},
		},
		{
			name:     "imap settings on a graph mailbox",
			mailbox:  "    identity: contoso\n    imap:\n      host: outlook.office365.com\n      port: 993\n",
			problems: []string{"mailboxes[0].imap: not used with source graph (found host, port)"},
		},
		{
			name:     "imap tls on a graph mailbox",
			mailbox:  "    identity: contoso\n    imap:\n      tls: {ca_file: /ca.pem}\n",
			problems: []string{"mailboxes[0].imap: not used with source graph (found tls)"},
		},
		{
			name:     "empty imap block is fine",
			mailbox:  "    identity: contoso\n    imap: {}\n",
			problems: nil,
		},
		{
			name: "every graph setting wrong",
			mailbox: `    identity: contoso
    graph:
      base_url: http://graph.microsoft.com/v1.0
      discovery: poll
      page_size: 1001
      max_concurrency: 5
      request_budget: -1
      budget_window: 500ms
      timeout: -1s
`,
			problems: []string{
				`mailboxes[0].graph.base_url: "http://graph.microsoft.com/v1.0" must use https`,
				`mailboxes[0].graph.discovery: "poll" is not one of delta, list`,
				"mailboxes[0].graph.page_size: must be between 1 and 1000, got 1001",
				"mailboxes[0].graph.max_concurrency: must be between 1 and 4, got 5: Exchange allows at most 4 concurrent requests per mailbox",
				"mailboxes[0].graph.request_budget: must be at least 1, got -1",
				"mailboxes[0].graph.budget_window: must be at least 1s, got 500ms",
				"mailboxes[0].graph.timeout: must be positive, got -1s",
			},
		},
		{
			name:    "lower bounds",
			mailbox: "    identity: contoso\n    graph: {page_size: -1, max_concurrency: -4}\n",
			problems: []string{
				"mailboxes[0].graph.page_size: must be between 1 and 1000, got -1",
				"mailboxes[0].graph.max_concurrency: must be between 1 and 4, got -4",
			},
		},
		{
			name:    "folder rules apply to graph mailboxes",
			mailbox: "    identity: contoso\n    folders:\n      import: Inbox\n      include_subfolders: true\n      processed: Inbox/Done\n      error: Inbox\n",
			problems: []string{
				`mailboxes[0].folders.processed: "Inbox/Done" lies inside the import folder "Inbox"`,
				`mailboxes[0].folders.error: must differ from the import folder "Inbox"`,
			},
		},
		{
			name:     "poll interval applies to graph mailboxes",
			mailbox:  "    identity: contoso\n    poll_interval: 10ms\n",
			problems: []string{"mailboxes[0].poll_interval: must be at least 1s, got 10ms"},
		},
		{
			name:     "unknown graph key",
			mailbox:  "    identity: contoso\n    graph:\n      pagesize: 10\n",
			problems: []string{`mailboxes[0].graph.pagesize: unknown key (did you mean "page_size"?)`},
		},
	}
	for _, tc := range yamlCases {
		t.Run(tc.name, func(t *testing.T) {
			y := graphYAML
			if strings.Contains(tc.mailbox, "folders:") {
				// The case brings its own folders.
				y = y[:strings.Index(y, "    folders:\n")]
			}
			y = strings.Replace(y, "    identity: contoso\n", tc.mailbox, 1)
			cfg, err := ParseImporter([]byte(y), noEnv)
			if tc.problems == nil {
				if err != nil {
					t.Fatalf("unexpected error: %v", err)
				}
				if cfg.Mailboxes[0].IMAP != (IMAP{}) {
					t.Errorf("imap = %+v", cfg.Mailboxes[0].IMAP)
				}
				return
			}
			assertProblems(t, err, tc.problems)
			var ve *ValidationError
			if errors.As(err, &ve) {
				for _, p := range ve.Problems {
					if p.Line == 0 {
						t.Errorf("problem without a line: %v", p)
					}
				}
			}
		})
	}

	// A graph block on an imap mailbox is an error too.
	y := strings.Replace(minimalYAML, "    imap:\n", "    graph:\n      page_size: 50\n      disable_batch: true\n    imap:\n", 1)
	_, err := ParseImporter([]byte(y), noEnv)
	assertProblems(t, err, []string{"mailboxes[0].graph: not used with source imap (found page_size, disable_batch)"})

	// base_url forms.
	urls := []struct {
		url     string
		problem string // "" for valid
	}{
		{url: "https://graph.microsoft.com/v1.0"},
		{url: "https://graph.microsoft.com/beta"},
		{url: "https://graph.microsoft.us/v1.0"},
		{url: "https://dod-graph.microsoft.us/v1.0"},
		{url: "https://microsoftgraph.chinacloudapi.cn/v1.0"},
		{url: "https://127.0.0.1:8443/v1.0"},
		{url: "https://[::1]:8443/beta"},
		{url: "https://localhost/v1.0"},
		{url: "https://proxy.example.com/graph/v1.0"},
		{url: "http://127.0.0.1:8080/v1.0", problem: `"http://127.0.0.1:8080/v1.0" must use https`},
		{url: "graph.microsoft.com/v1.0", problem: `"graph.microsoft.com/v1.0" must use https`},
		{url: "https:///v1.0", problem: `"https:///v1.0" has no host`},
		{url: "https://:8443/v1.0", problem: `"https://:8443/v1.0" has no host`},
		{url: "https://graph.microsoft.com", problem: `"https://graph.microsoft.com" must end in the API version /v1.0 or /beta`},
		{url: "https://graph.microsoft.com/", problem: `"https://graph.microsoft.com/" must end in the API version /v1.0 or /beta`},
		{url: "https://graph.microsoft.com/v1.0/", problem: `"https://graph.microsoft.com/v1.0/" must end in the API version /v1.0 or /beta, without a trailing '/'`},
		{url: "https://graph.microsoft.com/v2.0", problem: `"https://graph.microsoft.com/v2.0" must end in the API version`},
		{url: "https://graph.microsoft.com/v1.0?x=1", problem: `"https://graph.microsoft.com/v1.0?x=1" must not have a query or fragment`},
		{url: "https://graph.microsoft.com/v1.0#f", problem: `"https://graph.microsoft.com/v1.0#f" must not have a query or fragment`},
		{url: "https://graph.microsoft.com:99999/v1.0", problem: `"https://graph.microsoft.com:99999/v1.0" has an invalid port`},
		{url: "https://user:hunter2@graph.microsoft.com/v1.0", problem: "must not contain a user name or password"},
		{url: "https://gra ph.microsoft.com/v1.0", problem: "is not a valid URL"},
	}
	for _, tc := range urls {
		cfg, err := ParseImporter([]byte(graphYAML), noEnv)
		if err != nil {
			t.Fatal(err)
		}
		cfg.Mailboxes[0].Graph.BaseURL = tc.url
		err = cfg.Validate()
		if tc.problem == "" {
			if err != nil {
				t.Errorf("base_url %q: %v", tc.url, err)
			}
			continue
		}
		got := problemsOf(t, err)
		if want := "mailboxes[0].graph.base_url: " + tc.problem; len(got) != 1 || !strings.HasPrefix(got[0], want) {
			t.Errorf("base_url %q: problems %q, want one starting with %q", tc.url, got, want)
		}
		if strings.Contains(err.Error(), "hunter2") {
			t.Errorf("base_url %q: error reveals the password: %v", tc.url, err)
		}
	}
}

func TestIdentityKinds(t *testing.T) {
	const idPath = "identities.contoso"
	tests := []struct {
		name     string
		yaml     string
		files    map[string]string
		check    func(t *testing.T, c *Importer)
		problems []string
	}{
		{
			name: "delegated, valid",
			yaml: delegatedYAML,
			check: func(t *testing.T, c *Importer) {
				id := c.Identities["contoso"]
				if id.Kind != "delegated" || id.ExpiryWarning != 720*time.Hour || id.GraphMaxConcurrency != 16 {
					t.Errorf("identity = %+v", id)
				}
				key, err := DecodeTokenCacheKey(id.TokenCacheKey)
				if err != nil || len(key) != 32 || key[31] != 31 {
					t.Errorf("DecodeTokenCacheKey = %v, %v", key, err)
				}
			},
		},
		{
			name:  "delegated, key from a file",
			yaml:  strings.Replace(delegatedYAML, "token_cache_key: "+testCacheKey, "token_cache_key_file: /s/key", 1),
			files: map[string]string{"/s/key": testCacheKey + "\n"},
			check: func(t *testing.T, c *Importer) {
				if got := c.Identities["contoso"].TokenCacheKey.Value(); got != testCacheKey {
					t.Errorf("token cache key = %q", got)
				}
			},
		},
		{
			name:  "delegated, key and key file",
			yaml:  strings.Replace(delegatedYAML, "token_cache_key: "+testCacheKey, "token_cache_key: "+testCacheKey+"\n    token_cache_key_file: /s/key", 1),
			files: map[string]string{"/s/key": testCacheKey},
			problems: []string{
				idPath + ".token_cache_key_file: cannot be combined with " + idPath + ".token_cache_key",
			},
		},
		{
			name:     "delegated, key file missing",
			yaml:     strings.Replace(delegatedYAML, "token_cache_key: "+testCacheKey, "token_cache_key_file: /s/nokey", 1),
			problems: []string{idPath + `.token_cache_key_file: cannot read "/s/nokey": file does not exist`},
		},
		{
			name:  "delegated, key file with a short key",
			yaml:  strings.Replace(delegatedYAML, "token_cache_key: "+testCacheKey, "token_cache_key_file: /s/key", 1),
			files: map[string]string{"/s/key": "aHVudGVyMi1zaG9ydA==\n"}, // "hunter2-short"
			problems: []string{
				idPath + ".token_cache_key_file: token cache key decodes to 13 bytes, want 32",
			},
		},
		{
			name: "delegated, no key",
			yaml: strings.Replace(delegatedYAML, "    token_cache_key: "+testCacheKey+"\n", "", 1),
			problems: []string{
				idPath + ".token_cache_key: required with kind delegated (or set token_cache_key_file)",
			},
		},
		{
			name: "delegated, key not base64",
			yaml: strings.Replace(delegatedYAML, testCacheKey, "hunter2!hunter2!hunter2!hunter2!hunter2!hunter2!", 1),
			problems: []string{
				idPath + ".token_cache_key: token cache key is not valid base64",
			},
		},
		{
			name: "delegated, hex key",
			yaml: strings.Replace(delegatedYAML, testCacheKey, strings.Repeat("0123456789abcdef", 4), 1),
			problems: []string{
				idPath + ".token_cache_key: token cache key decodes to 48 bytes, want 32; it looks like hex",
			},
		},
		{
			name: "delegated, username missing",
			yaml: strings.Replace(delegatedYAML, "    username: svc-mailpipe@contoso.nl\n", "", 1),
			problems: []string{
				idPath + ".username: required with kind delegated",
			},
		},
		{
			name: "delegated, username not a UPN",
			yaml: strings.Replace(delegatedYAML, "username: svc-mailpipe@contoso.nl", `username: 'CONTOSO\svc-mailpipe'`, 1),
			problems: []string{
				idPath + `.username: "CONTOSO\\svc-mailpipe" is not a user principal name (name@domain)`,
			},
		},
		{
			name: "delegated with credentials of a confidential client",
			yaml: strings.Replace(delegatedYAML, "    username:", `    client_secret: hunter2-delegated
    certificate_file: /c.pem
    private_key_file: /k.pem
    secret_expires: "2027-01-01"
    username:`, 1),
			problems: []string{
				idPath + ".client_secret: not used with kind delegated: delegated sign-in uses a public client",
				idPath + ".certificate_file: not used with kind delegated: delegated sign-in uses a public client",
				idPath + ".private_key_file: not used with kind delegated: delegated sign-in uses a public client",
				idPath + ".secret_expires: not used with kind delegated",
			},
		},
		{
			name:  "delegated with a client secret file",
			yaml:  strings.Replace(delegatedYAML, "    username:", "    client_secret_file: /s/secret\n    username:", 1),
			files: map[string]string{"/s/secret": "hunter2-file"},
			problems: []string{
				idPath + ".client_secret_file: not used with kind delegated: delegated sign-in uses a public client",
			},
		},
		{
			name: "unknown kind",
			yaml: strings.Replace(delegatedYAML, "kind: delegated", "kind: user", 1),
			problems: []string{
				idPath + `.kind: "user" is not one of app, delegated`,
			},
		},
		{
			name: "app with delegated settings",
			yaml: strings.Replace(minimalYAML, "    client_secret: minimal-secret\n",
				"    client_secret: minimal-secret\n    username: svc@contoso.nl\n    token_cache_key: "+redactedCacheKey+"\n", 1),
			problems: []string{
				idPath + ".username: only used with kind delegated (kind is app)",
				idPath + ".token_cache_key: only used with kind delegated (kind is app)",
			},
		},
		{
			name:  "app with a token cache key file",
			yaml:  strings.Replace(minimalYAML, "    client_secret: minimal-secret\n", "    client_secret: minimal-secret\n    token_cache_key_file: /s/key\n", 1),
			files: map[string]string{"/s/key": testCacheKey},
			problems: []string{
				idPath + ".token_cache_key_file: only used with kind delegated (kind is app)",
			},
		},
		{
			name: "app, still exactly one credential",
			yaml: strings.Replace(minimalYAML, "    client_secret: minimal-secret\n", "    kind: app\n", 1),
			problems: []string{
				idPath + ": needs a credential: client_secret, client_secret_file or certificate_file",
			},
		},
		{
			name: "expiry warning and graph concurrency bounds",
			yaml: strings.Replace(minimalYAML, "    client_secret: minimal-secret\n",
				"    client_secret: minimal-secret\n    expiry_warning: -1h\n    graph_max_concurrency: 1001\n", 1),
			problems: []string{
				idPath + ".expiry_warning: must be positive, got -1h0m0s",
				idPath + ".graph_max_concurrency: must be between 1 and 1000, got 1001",
			},
		},
		{
			name:     "negative graph concurrency",
			yaml:     strings.Replace(delegatedYAML, "    username:", "    graph_max_concurrency: -1\n    username:", 1),
			problems: []string{idPath + ".graph_max_concurrency: must be between 1 and 1000, got -1"},
		},
		{
			name: "delegated identity for an imap mailbox is accepted",
			yaml: strings.Replace(delegatedYAML, "    source: graph\n", "    imap: {host: outlook.office365.com}\n", 1),
			check: func(t *testing.T, c *Importer) {
				if c.Mailboxes[0].Source != "imap" {
					t.Errorf("source = %q", c.Mailboxes[0].Source)
				}
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := ParseImporterWith([]byte(tc.yaml), LoadOptions{LookupEnv: noEnv, ReadFile: fakeFiles(tc.files)})
			if tc.problems != nil {
				assertProblems(t, err, tc.problems)
				for _, secret := range []string{"hunter2", "aHVudGVy", testCacheKey, "0123456789abcdef"} {
					if strings.Contains(err.Error(), secret) {
						t.Errorf("error reveals a secret (%q): %v", secret, err)
					}
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			tc.check(t, cfg)
		})
	}
}

func TestDecodeTokenCacheKey(t *testing.T) {
	raw := make([]byte, 32)
	for i := range raw {
		raw[i] = byte(0xf0 + i) // bytes that give '+' '/' in std and '-' '_' in URL base64
	}
	for name, s := range map[string]string{
		"std":        base64.StdEncoding.EncodeToString(raw),
		"std raw":    base64.RawStdEncoding.EncodeToString(raw),
		"url":        base64.URLEncoding.EncodeToString(raw),
		"url raw":    base64.RawURLEncoding.EncodeToString(raw),
		"line break": base64.StdEncoding.EncodeToString(raw)[:20] + "\n" + base64.StdEncoding.EncodeToString(raw)[20:],
	} {
		got, err := DecodeTokenCacheKey(Secret(s))
		if err != nil || !bytes.Equal(got, raw) {
			t.Errorf("%s (%s): %x, %v", name, s, got, err)
		}
	}
	if !strings.ContainsAny(base64.StdEncoding.EncodeToString(raw), "+/") || !strings.ContainsAny(base64.URLEncoding.EncodeToString(raw), "-_") {
		t.Fatal("test key does not exercise both alphabets")
	}
	for _, tc := range []struct{ key, err string }{
		{"", "token cache key is empty"},
		{"hunter2 hunter2", "not valid base64"},
		{base64.StdEncoding.EncodeToString([]byte("hunter2-sixteen!")), "decodes to 16 bytes, want 32"},
		{base64.StdEncoding.EncodeToString(make([]byte, 64)), "decodes to 64 bytes, want 32"},
	} {
		_, err := DecodeTokenCacheKey(Secret(tc.key))
		if err == nil || !strings.Contains(err.Error(), tc.err) {
			t.Errorf("DecodeTokenCacheKey(%q) = %v, want an error containing %q", tc.key, err, tc.err)
			continue
		}
		if tc.key != "" && strings.Contains(err.Error(), tc.key) || strings.Contains(err.Error(), "hunter2") {
			t.Errorf("error reveals the key: %v", err)
		}
	}
}

func TestTokenCacheKeyFileIsRelativeToConfig(t *testing.T) {
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "secrets"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "secrets", "token-cache-key"), []byte(testCacheKey+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	y := strings.Replace(delegatedYAML, "token_cache_key: "+testCacheKey, "token_cache_key_file: secrets/token-cache-key", 1) +
		"    graph:\n      ca_file: certs/graph-ca.pem\n"
	path := filepath.Join(dir, "importer.yaml")
	if err := os.WriteFile(path, []byte(y), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Chdir(t.TempDir())
	cfg, err := LoadImporter(path)
	if err != nil {
		t.Fatal(err)
	}
	id := cfg.Identities["contoso"]
	if id.TokenCacheKey.Value() != testCacheKey {
		t.Errorf("token cache key = %q", id.TokenCacheKey.Value())
	}
	if want := filepath.Join(dir, "secrets", "token-cache-key"); id.TokenCacheKeyFile != want {
		t.Errorf("token_cache_key_file = %q, want %q", id.TokenCacheKeyFile, want)
	}
	if want := filepath.Join(dir, "certs", "graph-ca.pem"); cfg.Mailboxes[0].Graph.CAFile != want {
		t.Errorf("graph.ca_file = %q, want %q", cfg.Mailboxes[0].Graph.CAFile, want)
	}
}
