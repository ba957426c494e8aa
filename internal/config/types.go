// Package config loads mailpipe's YAML configuration: strict (unknown keys are
// errors), with ${ENV} expansion, secrets inline or as *_file paths, defaults,
// and a validation pass that reports every problem with its key path.
package config

import "time"

// Importer is the configuration of cmd/importer.
type Importer struct {
	Log        Log                 `yaml:"log"`
	NATS       NATS                `yaml:"nats"`
	Bus        Bus                 `yaml:"bus"`
	Identities map[string]Identity `yaml:"identities"`
	Mailboxes  []Mailbox           `yaml:"mailboxes"`
	// ShutdownTimeout bounds how long in-flight work may take after SIGTERM.
	ShutdownTimeout time.Duration `yaml:"shutdown_timeout"`
	// Metrics/health HTTP listen address; empty disables it.
	HTTPListen string `yaml:"http_listen"`
}

// Log selects the zap configuration.
type Log struct {
	Level  string `yaml:"level"`  // debug, info, warn, error
	Format string `yaml:"format"` // json (default) or console
}

// NATS says how to reach NATS. With an empty URL an embedded JetStream server
// is started with its store on disk.
type NATS struct {
	URL             string        `yaml:"url"`
	CredentialsFile string        `yaml:"credentials_file"`
	NKeySeedFile    string        `yaml:"nkey_seed_file"`
	User            string        `yaml:"user"`
	Password        Secret        `yaml:"password"`
	PasswordFile    string        `yaml:"password_file"`
	TLS             TLS           `yaml:"tls"`
	ConnectTimeout  time.Duration `yaml:"connect_timeout"`
	Embedded        Embedded      `yaml:"embedded"`
}

// Embedded configures the in-process NATS server used when nats.url is empty.
type Embedded struct {
	StoreDir string `yaml:"store_dir"`
	// Listen, when set (e.g. 127.0.0.1:4222), lets other processes connect.
	Listen string `yaml:"listen"`
}

// TLS holds client TLS settings.
type TLS struct {
	CAFile     string `yaml:"ca_file"`
	CertFile   string `yaml:"cert_file"`
	KeyFile    string `yaml:"key_file"`
	ServerName string `yaml:"server_name"`
}

// Bus configures the JetStream streams, object store and state bucket.
type Bus struct {
	Stream     Stream `yaml:"stream"`
	DeadLetter Stream `yaml:"dead_letter"`
	// ObjectBucket stores bodies larger than LargeMessageThreshold.
	ObjectBucket string `yaml:"object_bucket"`
	// StateBucket is a KV bucket for folder state (UIDVALIDITY, Graph
	// delta links).
	StateBucket string `yaml:"state_bucket"`
	// TokenBucket is a KV bucket holding the encrypted MSAL token caches of
	// delegated identities, shared by all replicas.
	TokenBucket string `yaml:"token_bucket"`
	// LargeMessageThreshold: bodies above it go to the object store.
	LargeMessageThreshold ByteSize `yaml:"large_message_threshold"`
	// MaxInFlight bounds unacknowledged publishes per mailbox.
	MaxInFlight int `yaml:"max_in_flight"`
	// PublishTimeout bounds the wait for one PubAck.
	PublishTimeout time.Duration `yaml:"publish_timeout"`
}

// Stream is a JetStream stream created or updated at start-up.
type Stream struct {
	Name          string        `yaml:"name"`
	SubjectPrefix string        `yaml:"subject_prefix"` // subjects are <prefix>.<mailbox>
	Replicas      int           `yaml:"replicas"`
	MaxAge        time.Duration `yaml:"max_age"`
	// DuplicateWindow is the Nats-Msg-Id dedup window; must be <= MaxAge and
	// longer than the longest time a message can sit published-but-unmoved.
	DuplicateWindow time.Duration `yaml:"duplicate_window"`
	Storage         string        `yaml:"storage"` // file or memory
	MaxBytes        ByteSize      `yaml:"max_bytes"`
}

// Identity is an Entra ID app registration (client credentials).
type Identity struct {
	TenantID         string `yaml:"tenant_id"`
	ClientID         string `yaml:"client_id"`
	ClientSecret     Secret `yaml:"client_secret"`
	ClientSecretFile string `yaml:"client_secret_file"`
	// CertificateFile is a PEM file with the certificate and, unless
	// PrivateKeyFile is set, its RSA private key.
	CertificateFile string `yaml:"certificate_file"`
	PrivateKeyFile  string `yaml:"private_key_file"`
	// AuthorityHost: login.microsoftonline.com (default), login.microsoftonline.us,
	// login.chinacloudapi.cn, or a test host:port.
	AuthorityHost string `yaml:"authority_host"`
	// CAFile adds trusted roots for the token endpoint (tests, proxies).
	CAFile string `yaml:"ca_file"`
	// SecretExpires is the client secret's expiry date (YYYY-MM-DD), for warnings.
	SecretExpires string `yaml:"secret_expires"`
	// ExpiryWarning: `check` and `auth status` warn when the secret or
	// certificate expires within this long (default 30d).
	ExpiryWarning time.Duration `yaml:"expiry_warning"`

	// Kind is "app" (client credentials: secret or certificate; default)
	// or "delegated" (a service account signed in once with the device
	// code flow, `importer auth login`; a public client needs no secret).
	Kind string `yaml:"kind"`
	// Username is the delegated service account (UPN), used to pick the
	// account from the token cache and shown by `auth status`.
	Username string `yaml:"username"`
	// TokenCacheKey (base64 of 32 bytes) encrypts the delegated token cache
	// at rest in the token bucket. Required for kind delegated.
	TokenCacheKey     Secret `yaml:"token_cache_key"`
	TokenCacheKeyFile string `yaml:"token_cache_key_file"`
	// GraphMaxConcurrency caps Graph requests in flight for this app across
	// all its mailboxes in one process (default 16).
	GraphMaxConcurrency int `yaml:"graph_max_concurrency"`
}

// Mailbox is one mailbox and folder set to import from.
type Mailbox struct {
	// Name identifies the mailbox in subjects, logs and metrics: [a-z0-9_-].
	Name    string `yaml:"name"`
	Address string `yaml:"address"`
	// Source is imap or graph; only the matching block (IMAP or Graph) may
	// be set.
	Source string `yaml:"source"`
	// Identity names an entry of identities (needed for xoauth2 and for
	// source graph).
	Identity       string        `yaml:"identity"`
	IMAP           IMAP          `yaml:"imap"`
	Graph          Graph         `yaml:"graph"`
	Folders        Folders       `yaml:"folders"`
	PollInterval   time.Duration `yaml:"poll_interval"`
	MaxMessageSize ByteSize      `yaml:"max_message_size"`
}

// Folders names the import folder and where handled mail goes. Paths use "/"
// as separator whatever the server's delimiter.
type Folders struct {
	Import            string `yaml:"import"`
	IncludeSubfolders bool   `yaml:"include_subfolders"`
	Processed         string `yaml:"processed"`
	Error             string `yaml:"error"`
}

// IMAP configures the IMAP source.
type IMAP struct {
	Host     string `yaml:"host"`
	Port     int    `yaml:"port"`
	Security string `yaml:"security"` // tls (default), starttls, insecure
	Auth     string `yaml:"auth"`     // xoauth2 (default) or password
	// Username defaults to the mailbox address (for a shared mailbox with
	// XOAUTH2 this is the shared address).
	Username     string `yaml:"username"`
	Password     Secret `yaml:"password"`
	PasswordFile string `yaml:"password_file"`
	TLS          TLS    `yaml:"tls"`
	// Timeout bounds every network operation (dial, command, one fetch item).
	Timeout time.Duration `yaml:"timeout"`
	// FetchBatch is how many messages one UID FETCH / UID MOVE covers.
	FetchBatch int `yaml:"fetch_batch"`
}

// Graph configures the Microsoft Graph source (Mail.ReadWrite app-only, or
// Mail.ReadWrite.Shared delegated for a shared mailbox the service account
// has Full Access to).
type Graph struct {
	// BaseURL: https://graph.microsoft.com/v1.0 (default),
	// https://graph.microsoft.us/v1.0, https://dod-graph.microsoft.us/v1.0,
	// https://microsoftgraph.chinacloudapi.cn/v1.0, or a test server.
	BaseURL string `yaml:"base_url"`
	// CAFile adds trusted roots (tests, TLS-inspecting proxies).
	CAFile string `yaml:"ca_file"`
	// Discovery is "delta" (default: per-folder delta query, the delta link
	// kept in the state bucket) or "list" (full listing each poll).
	Discovery string `yaml:"discovery"`
	// PageSize for listings and delta pages (1..1000, default 200).
	PageSize int `yaml:"page_size"`
	// MaxConcurrency: requests in flight for this mailbox (1..4, default 4,
	// Exchange's MailboxConcurrency limit).
	MaxConcurrency int `yaml:"max_concurrency"`
	// RequestBudget requests per BudgetWindow for this mailbox (default
	// 10000 per 10m, Exchange's limit per app and mailbox).
	RequestBudget int           `yaml:"request_budget"`
	BudgetWindow  time.Duration `yaml:"budget_window"`
	// Timeout bounds one request (default 60s); downloads of raw MIME are
	// bounded by lack of progress for this long instead.
	Timeout time.Duration `yaml:"timeout"`
	// DisableBatch turns off $batch for moves (on by default).
	DisableBatch bool `yaml:"disable_batch"`
}

// Secret is a string never printed by fmt or logged.
type Secret string

// String redacts the secret.
func (s Secret) String() string {
	if s == "" {
		return ""
	}
	return "[redacted]"
}

// GoString redacts the secret for %#v.
func (s Secret) GoString() string { return s.String() }

// Value returns the secret itself.
func (s Secret) Value() string { return string(s) }

// ByteSize is a size in bytes written as 512KiB, 35MiB, 1GB or a number.
type ByteSize int64
