package config

import (
	"maps"
	"net"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/mailpipe/mailpipe/pkg/mailjob"
)

// Sender is the configuration of cmd/sender: the workers that take
// outbound mail jobs (docs/jobs.md) from JetStream and send them as the
// allow-listed shared mailboxes.
type Sender struct {
	Log        Log                 `yaml:"log"`
	NATS       NATS                `yaml:"nats"`
	Identities map[string]Identity `yaml:"identities"`
	Streams    SenderStreams       `yaml:"streams"`
	Consumer   Consumer            `yaml:"consumer"`
	Limits     JobLimits           `yaml:"limits"`
	// Mailboxes is the allow-list: a job whose from is not here is
	// refused (sender_not_allowed) and nothing is sent.
	Mailboxes []SenderMailbox `yaml:"mailboxes"`
	// ShutdownTimeout bounds how long sends in progress may take after
	// SIGTERM before they are abandoned.
	ShutdownTimeout time.Duration `yaml:"shutdown_timeout"`
	// HTTPListen is the metrics/health listen address; empty disables it.
	HTTPListen string `yaml:"http_listen"`
}

// SenderStreams names the streams and buckets of the outbound contract
// (docs/jobs.md). The sender creates or updates them at start-up.
type SenderStreams struct {
	// Jobs is the work-queue stream producers publish jobs to, on
	// <subject_prefix>.<mailbox token>.
	Jobs Stream `yaml:"jobs"`
	// Status keeps the status events, on <subject_prefix>.<job token>.
	Status Stream `yaml:"status"`
	// DeadLetter keeps the jobs the sender gave up on.
	DeadLetter Stream `yaml:"dead_letter"`
	// AttachmentBucket is the object store bucket for large attachments
	// (its TTL is jobs.max_age).
	AttachmentBucket string `yaml:"attachment_bucket"`
	// StateBucket is a KV bucket holding the state of every job
	// (job.<id>) and the sending-rate windows of the mailboxes
	// (rate.<mailbox token>), shared by all replicas.
	StateBucket string `yaml:"state_bucket"`
	// TokenBucket holds the encrypted token caches of delegated
	// identities (the importer's bucket can be shared).
	TokenBucket string `yaml:"token_bucket"`
}

// Consumer configures the durable pull consumers on the jobs stream.
type Consumer struct {
	// Durable is the consumer name prefix: each allow-listed mailbox has
	// the consumer <durable>_<mailbox token>, and jobs on other subjects
	// are refused through <durable>-rejects.
	Durable string `yaml:"durable"`
	// MaxAckPending bounds the jobs of one mailbox handed out and not yet
	// acknowledged, over all replicas.
	MaxAckPending int `yaml:"max_ack_pending"`
	// AckWait: a job not acknowledged (or kept alive with a progress
	// heartbeat) for this long is handed to another replica.
	AckWait time.Duration `yaml:"ack_wait"`
	// MaxDeliver is the number of send attempts of a job: after the last
	// one failed for a transient reason the job fails with
	// attempts_exhausted. Deliveries that only waited for the mailbox's
	// rate window do not count.
	MaxDeliver int `yaml:"max_deliver"`
	// Backoff is the wait before attempt n+1 after a transient failure of
	// attempt n (the last value repeats).
	Backoff []time.Duration `yaml:"backoff"`
}

// JobLimits are the limits a job must respect beyond its format
// (mailjob.Limits).
type JobLimits struct {
	MaxRecipients  int      `yaml:"max_recipients"`
	MaxAttachments int      `yaml:"max_attachments"`
	MaxTotalSize   ByteSize `yaml:"max_total_size"`
	MaxInlineSize  ByteSize `yaml:"max_inline_size"`
	MaxJobSize     ByteSize `yaml:"max_job_size"`
}

// Mailjob returns the limits in the form pkg/mailjob validates with.
func (l JobLimits) Mailjob() mailjob.Limits {
	return mailjob.Limits{
		MaxRecipients:  l.MaxRecipients,
		MaxAttachments: l.MaxAttachments,
		MaxTotalSize:   int64(l.MaxTotalSize),
		MaxInlineSize:  int(l.MaxInlineSize),
		MaxJobSize:     int(l.MaxJobSize),
	}
}

// SenderMailbox is one allow-listed mailbox jobs may be sent as.
type SenderMailbox struct {
	// Name labels the mailbox in logs and metrics ([a-z0-9_-]); default:
	// the local part of the address.
	Name    string `yaml:"name"`
	Address string `yaml:"address"`
	// Identity names an entry of identities: the credentials sending as
	// this mailbox (Mail.Send / Mail.Send.Shared for graph, SMTP.SendAsApp
	// / SMTP.Send for smtp with xoauth2).
	Identity string `yaml:"identity"`
	// Transport is graph (default) or smtp; only the matching block may be
	// set.
	Transport string    `yaml:"transport"`
	Graph     SendGraph `yaml:"graph"`
	SMTP      SMTP      `yaml:"smtp"`
	// Profiles are the named sender profiles a job may choose with
	// sender_profile; each sends as this mailbox (its from address is
	// fixed) with its own credentials.
	Profiles []SenderProfile `yaml:"profiles"`
	// Rate is the mailbox's sending limit, shared by all replicas.
	Rate Rate `yaml:"rate"`
	// MaxConcurrency bounds the sends in progress for this mailbox in one
	// replica.
	MaxConcurrency int `yaml:"max_concurrency"`
}

// SendGraph configures sending through Microsoft Graph.
type SendGraph struct {
	// BaseURL: https://graph.microsoft.com/v1.0 (default), a national
	// cloud, or a test server.
	BaseURL string `yaml:"base_url"`
	// CAFile adds trusted roots (tests, TLS-inspecting proxies).
	CAFile string `yaml:"ca_file"`
	// Timeout bounds one request (uploads: lack of progress for this long).
	Timeout time.Duration `yaml:"timeout"`
}

// SMTP configures sending through SMTP submission (smtp.office365.com).
type SMTP struct {
	Host string `yaml:"host"`
	Port int    `yaml:"port"`
	// Security is starttls (default, port 587), tls (implicit TLS, port
	// 465) or insecure (plain text; local test servers only).
	Security string `yaml:"security"`
	// Auth is xoauth2 (default: a token of the mailbox's identity),
	// password or none (local test servers only).
	Auth string `yaml:"auth"`
	// Username is the login: by default the mailbox address, or with a
	// delegated identity its service account (the token's owner, who
	// sends as the mailbox with Send As).
	Username     string `yaml:"username"`
	Password     Secret `yaml:"password"`
	PasswordFile string `yaml:"password_file"`
	TLS          TLS    `yaml:"tls"`
	// Timeout bounds every network operation.
	Timeout time.Duration `yaml:"timeout"`
}

// SenderProfile is a named set of credentials for one mailbox.
type SenderProfile struct {
	// Name is what a job gives as sender_profile: 1-64 characters
	// a-z 0-9 _ -, starting with a letter or digit.
	Name string `yaml:"name"`
	// Identity names an entry of identities; default: the mailbox's.
	Identity string `yaml:"identity"`
}

// Rate is a mailbox's sending limit: Exchange Online allows 30 messages
// per minute and 10,000 recipients per 24 hours (sliding) per mailbox.
type Rate struct {
	MessagesPerMinute int `yaml:"messages_per_minute"`
	RecipientsPerDay  int `yaml:"recipients_per_day"`
	// MessageWindow and RecipientWindow are the lengths of the two sliding
	// windows (default 1m and 24h). Shorter windows are for tests.
	MessageWindow   time.Duration `yaml:"message_window"`
	RecipientWindow time.Duration `yaml:"recipient_window"`
}

// Sender defaults.
const (
	DefaultSenderJobsPrefix      = mailjob.DefaultJobsPrefix
	DefaultSenderStatusPrefix    = mailjob.DefaultStatusPrefix
	DefaultSenderDeadPrefix      = mailjob.DefaultDeadLetterPrefix
	DefaultSenderJobsStream      = mailjob.DefaultJobsStream
	DefaultSenderStatusStream    = mailjob.DefaultStatusStream
	DefaultSenderDeadStream      = mailjob.DefaultDeadLetterStream
	DefaultAttachmentBucket      = mailjob.DefaultAttachmentBucket
	DefaultSenderStateBucket     = "mailpipe-outbound-state"
	DefaultSenderJobsMaxAge      = 7 * 24 * time.Hour
	DefaultSenderStatusMaxAge    = 30 * 24 * time.Hour
	DefaultSenderDurable         = "mailpipe-sender"
	DefaultSenderMaxAckPending   = 64
	DefaultSenderAckWait         = 2 * time.Minute
	DefaultSenderMaxDeliver      = 10
	DefaultTransport             = "graph"
	DefaultSMTPSecurity          = "starttls"
	DefaultSMTPPortStartTLS      = 587
	DefaultSMTPPortTLS           = 465
	DefaultSMTPPortInsecure      = 25
	DefaultSMTPAuth              = "xoauth2"
	DefaultSMTPTimeout           = 60 * time.Second
	DefaultMessagesPerMinute     = 30
	DefaultRecipientsPerDay      = 10000
	DefaultMessageWindow         = time.Minute
	DefaultRecipientWindow       = 24 * time.Hour
	DefaultSenderMaxConcurrency  = 4
	MaxExchangeRecipientsPerMail = 1000
)

// DefaultSenderBackoff is the wait before each retry after a transient
// failure.
var DefaultSenderBackoff = []time.Duration{
	10 * time.Second, 30 * time.Second, time.Minute, 2 * time.Minute, 5 * time.Minute,
	10 * time.Minute, 15 * time.Minute, 30 * time.Minute, time.Hour,
}

// LoadSender reads, expands, decodes, completes and validates the sender
// configuration at path. Relative *_file paths are taken relative to the
// directory of path.
func LoadSender(path string) (*Sender, error) {
	return LoadSenderWith(path, LoadOptions{})
}

// LoadSenderWith is LoadSender with options.
func LoadSenderWith(path string, opts LoadOptions) (*Sender, error) {
	return loadFile[Sender](path, opts)
}

// ParseSender is LoadSender for YAML text: lookupEnv (nil for
// os.LookupEnv) resolves ${VAR}, and relative *_file paths are read
// relative to the working directory.
func ParseSender(data []byte, lookupEnv func(string) (string, bool)) (*Sender, error) {
	return ParseSenderWith(data, LoadOptions{LookupEnv: lookupEnv})
}

// ParseSenderWith is ParseSender with options; the steps are those of
// ParseImporterWith (substitute ${VAR}, decode strictly, resolve and read
// *_file secrets, apply defaults, validate), every problem in one
// *ValidationError.
func ParseSenderWith(data []byte, opts LoadOptions) (*Sender, error) {
	return parseDocument[Sender](data, opts)
}

// secretPairs lists every X / X_file pair of the sender configuration.
func (c *Sender) secretPairs() []secretPair {
	pairs := []secretPair{{
		path: "nats", valueKey: "password", fileKey: "password_file",
		value: &c.NATS.Password, file: &c.NATS.PasswordFile,
	}}
	for _, name := range slices.Sorted(maps.Keys(c.Identities)) {
		id := c.Identities[name]
		path := joinKey("identities", name)
		pairs = append(pairs, secretPair{
			path: path, valueKey: "client_secret", fileKey: "client_secret_file",
			value: &id.ClientSecret, file: &id.ClientSecretFile,
			writeBack: func() { c.Identities[name] = id },
		}, secretPair{
			path: path, valueKey: "token_cache_key", fileKey: "token_cache_key_file",
			value: &id.TokenCacheKey, file: &id.TokenCacheKeyFile,
			writeBack: func() { c.Identities[name] = id },
		})
	}
	for i := range c.Mailboxes {
		s := &c.Mailboxes[i].SMTP
		pairs = append(pairs, secretPair{
			path: joinIndex("mailboxes", i) + ".smtp", valueKey: "password", fileKey: "password_file",
			value: &s.Password, file: &s.PasswordFile,
		})
	}
	return pairs
}

// ApplyDefaults fills every unset (zero) setting with its default. The
// loaders call it; call it yourself before Validate on a configuration
// built in code.
func (c *Sender) ApplyDefaults() {
	setDefault(&c.Log.Level, DefaultLogLevel)
	setDefault(&c.Log.Format, DefaultLogFormat)
	setDefault(&c.NATS.ConnectTimeout, DefaultNATSConnectTimeout)
	setDefault(&c.NATS.Embedded.StoreDir, DefaultEmbeddedStoreDir)

	s := &c.Streams
	s.Jobs.applyDefaults(DefaultSenderJobsStream, DefaultSenderJobsPrefix, DefaultSenderJobsMaxAge)
	s.Status.applyDefaults(DefaultSenderStatusStream, DefaultSenderStatusPrefix, DefaultSenderStatusMaxAge)
	s.DeadLetter.applyDefaults(DefaultSenderDeadStream, DefaultSenderDeadPrefix, DefaultSenderStatusMaxAge)
	setDefault(&s.AttachmentBucket, DefaultAttachmentBucket)
	setDefault(&s.StateBucket, DefaultSenderStateBucket)
	setDefault(&s.TokenBucket, DefaultTokenBucket)

	k := &c.Consumer
	setDefault(&k.Durable, DefaultSenderDurable)
	setDefault(&k.MaxAckPending, DefaultSenderMaxAckPending)
	setDefault(&k.AckWait, DefaultSenderAckWait)
	setDefault(&k.MaxDeliver, DefaultSenderMaxDeliver)
	if k.Backoff == nil {
		k.Backoff = slices.Clone(DefaultSenderBackoff)
	}

	l := &c.Limits
	setDefault(&l.MaxRecipients, mailjob.DefaultLimits.MaxRecipients)
	setDefault(&l.MaxAttachments, mailjob.DefaultLimits.MaxAttachments)
	setDefault(&l.MaxTotalSize, ByteSize(mailjob.DefaultLimits.MaxTotalSize))
	setDefault(&l.MaxInlineSize, ByteSize(mailjob.DefaultLimits.MaxInlineSize))
	setDefault(&l.MaxJobSize, ByteSize(mailjob.DefaultLimits.MaxJobSize))

	setDefault(&c.ShutdownTimeout, DefaultShutdownTimeout)

	for name, id := range c.Identities {
		setDefault(&id.AuthorityHost, DefaultAuthorityHost)
		setDefault(&id.Kind, DefaultIdentityKind)
		setDefault(&id.ExpiryWarning, DefaultExpiryWarning)
		setDefault(&id.GraphMaxConcurrency, DefaultGraphMaxConcurrency)
		c.Identities[name] = id
	}

	for i := range c.Mailboxes {
		m := &c.Mailboxes[i]
		if m.Name == "" {
			m.Name = defaultMailboxName(m.Address)
		}
		setDefault(&m.Transport, DefaultTransport)
		switch m.Transport {
		case "graph":
			setDefault(&m.Graph.BaseURL, DefaultGraphBaseURL)
			setDefault(&m.Graph.Timeout, DefaultGraphTimeout)
		case "smtp":
			// XOAUTH2 logs in as the account the token belongs to: the
			// mailbox itself (app-only), or the signed-in service account.
			login := m.Address
			if id, ok := c.Identities[m.Identity]; ok && id.Kind == "delegated" && id.Username != "" {
				login = id.Username
			}
			m.SMTP.applyDefaults(login)
		}
		for j := range m.Profiles {
			setDefault(&m.Profiles[j].Identity, m.Identity)
		}
		r := &m.Rate
		setDefault(&r.MessagesPerMinute, DefaultMessagesPerMinute)
		setDefault(&r.RecipientsPerDay, DefaultRecipientsPerDay)
		setDefault(&r.MessageWindow, DefaultMessageWindow)
		setDefault(&r.RecipientWindow, DefaultRecipientWindow)
		setDefault(&m.MaxConcurrency, DefaultSenderMaxConcurrency)
	}
}

func (s *SMTP) applyDefaults(login string) {
	setDefault(&s.Security, DefaultSMTPSecurity)
	switch s.Security {
	case "tls":
		setDefault(&s.Port, DefaultSMTPPortTLS)
	case "insecure":
		setDefault(&s.Port, DefaultSMTPPortInsecure)
	default:
		setDefault(&s.Port, DefaultSMTPPortStartTLS)
	}
	setDefault(&s.Auth, DefaultSMTPAuth)
	if s.Auth != "none" {
		setDefault(&s.Username, login)
	}
	setDefault(&s.Timeout, DefaultSMTPTimeout)
}

// defaultMailboxName is the local part of address made fit for a name:
// lower-cased, every character other than a-z 0-9 _ - replaced by '_'.
func defaultMailboxName(address string) string {
	local, _, _ := strings.Cut(address, "@")
	name := mailjob.MailboxToken(local)
	if len(name) > 64 {
		name = name[:64]
	}
	return name
}

// Validate checks a configuration with defaults applied and returns a
// *ValidationError listing every problem, or nil.
func (c *Sender) Validate() error {
	if ps := c.validate(); len(ps) > 0 {
		return &ValidationError{Problems: ps}
	}
	return nil
}

var (
	consumerNameRe  = regexp.MustCompile(`^[A-Za-z0-9_-]{1,64}$`)
	senderProfileRe = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]{0,63}$`)
)

func (c *Sender) validate() []Problem {
	var ps problems
	// The importer's checks of the sections both programs share.
	shared := &Importer{Log: c.Log, NATS: c.NATS}
	shared.validateLog(&ps)
	shared.validateNATS(&ps)
	c.validateStreams(&ps)
	c.validateConsumer(&ps)
	c.validateLimits(&ps)
	for _, name := range slices.Sorted(maps.Keys(c.Identities)) {
		c.Identities[name].validate(&ps, joinKey("identities", name), name)
	}
	c.validateMailboxes(&ps)
	positive(&ps, "shutdown_timeout", c.ShutdownTimeout)
	if c.HTTPListen != "" {
		checkListen(&ps, "http_listen", c.HTTPListen)
	}
	return ps
}

func (c *Sender) validateStreams(ps *problems) {
	s := &c.Streams
	streams := []struct {
		key string
		st  Stream
	}{{"streams.jobs", s.Jobs}, {"streams.status", s.Status}, {"streams.dead_letter", s.DeadLetter}}
	for _, x := range streams {
		x.st.validate(ps, x.key)
	}
	for i, a := range streams {
		for _, b := range streams[i+1:] {
			if a.st.Name != "" && a.st.Name == b.st.Name {
				ps.add(b.key+".name", "must differ from %s.name (both are %q)", a.key, a.st.Name)
			}
			p, q := a.st.SubjectPrefix, b.st.SubjectPrefix
			if p != "" && q != "" && (subjectWithin(p, q) || subjectWithin(q, p)) {
				ps.add(b.key+".subject_prefix", "%q overlaps %s.subject_prefix %q; the streams' subjects must be disjoint", q, a.key, p)
			}
		}
	}
	checkBucket(ps, "streams.attachment_bucket", s.AttachmentBucket)
	checkBucket(ps, "streams.state_bucket", s.StateBucket)
	checkBucket(ps, "streams.token_bucket", s.TokenBucket)
	if s.StateBucket != "" && s.StateBucket == s.TokenBucket {
		ps.add("streams.token_bucket", "must differ from streams.state_bucket (both are %q)", s.StateBucket)
	}
	if s.AttachmentBucket != "" && (s.AttachmentBucket == s.StateBucket || s.AttachmentBucket == s.TokenBucket) {
		ps.add("streams.attachment_bucket", "must differ from the state and token buckets (%q)", s.AttachmentBucket)
	}
}

func (c *Sender) validateConsumer(ps *problems) {
	k := c.Consumer
	if !consumerNameRe.MatchString(k.Durable) {
		ps.add("consumer.durable", "%q must be 1-64 characters of A-Z, a-z, 0-9, '_' and '-'", k.Durable)
	}
	if k.MaxAckPending < 1 || k.MaxAckPending > 10000 {
		ps.add("consumer.max_ack_pending", "must be between 1 and 10000, got %d", k.MaxAckPending)
	}
	if k.AckWait < time.Second {
		ps.add("consumer.ack_wait", "must be at least 1s, got %s", k.AckWait)
	}
	if k.MaxDeliver < 1 || k.MaxDeliver > 1000 {
		ps.add("consumer.max_deliver", "must be between 1 and 1000, got %d", k.MaxDeliver)
	}
	if len(k.Backoff) == 0 {
		ps.add("consumer.backoff", "at least one wait is required")
	}
	for i, d := range k.Backoff {
		switch {
		case d <= 0:
			ps.add(joinIndex("consumer.backoff", i), "must be positive, got %s", d)
		case c.Streams.Jobs.MaxAge > 0 && d >= c.Streams.Jobs.MaxAge:
			ps.add(joinIndex("consumer.backoff", i), "%s is not shorter than streams.jobs.max_age %s: the job would expire while waiting", d, c.Streams.Jobs.MaxAge)
		}
	}
}

// jobHeaderRoom is what a job message may carry in headers besides the
// job: the jobs stream accepts 1 MiB messages.
const (
	jobStreamMaxMsg = 1 << 20
	jobHeaderRoom   = 24 << 10
)

func (c *Sender) validateLimits(ps *problems) {
	l := c.Limits
	if l.MaxRecipients < 1 || l.MaxRecipients > MaxExchangeRecipientsPerMail {
		ps.add("limits.max_recipients", "must be between 1 and %d (Exchange Online refuses more recipients per message), got %d", MaxExchangeRecipientsPerMail, l.MaxRecipients)
	}
	if l.MaxAttachments < 1 || l.MaxAttachments > 1000 {
		ps.add("limits.max_attachments", "must be between 1 and 1000, got %d", l.MaxAttachments)
	}
	if l.MaxTotalSize < KiB || l.MaxTotalSize > 150*MiB {
		ps.add("limits.max_total_size", "must be between 1KiB and 150MiB (Exchange's largest message), got %s", l.MaxTotalSize)
	}
	if l.MaxJobSize < KiB || l.MaxJobSize > jobStreamMaxMsg-jobHeaderRoom {
		ps.add("limits.max_job_size", "must be between 1KiB and %s (a job is one NATS message of at most 1MiB, headers included), got %s", ByteSize(jobStreamMaxMsg-jobHeaderRoom), l.MaxJobSize)
	}
	switch {
	case l.MaxInlineSize < 1:
		ps.add("limits.max_inline_size", "must be positive, got %s", l.MaxInlineSize)
	case l.MaxJobSize > 0 && l.MaxInlineSize > l.MaxJobSize:
		ps.add("limits.max_inline_size", "%s is larger than limits.max_job_size %s", l.MaxInlineSize, l.MaxJobSize)
	}
}

func (c *Sender) validateMailboxes(ps *problems) {
	if len(c.Mailboxes) == 0 {
		ps.add("mailboxes", "at least one mailbox is required: the allow-list of addresses jobs may be sent as")
		return
	}
	idNames := slices.Sorted(maps.Keys(c.Identities))
	checkIdentity := func(path, name, need string) { checkIdentityRef(ps, path, name, idNames, need) }
	names := map[string]int{}
	addresses := map[string]int{}
	tokens := map[string]int{}
	for i, m := range c.Mailboxes {
		path := joinIndex("mailboxes", i)
		checkMailboxName(ps, path+".name", m.Name, i, names)
		switch {
		case m.Address == "":
			ps.add(path+".address", "required")
		case mailjob.AddressProblem(m.Address) != "":
			ps.add(path+".address", "%q is not a bare e-mail address: %s", m.Address, mailjob.AddressProblem(m.Address))
		default:
			lower := strings.ToLower(m.Address)
			tok := mailjob.MailboxToken(m.Address)
			switch j, dupAddr := addresses[lower]; {
			case dupAddr:
				ps.add(path+".address", "%q is listed twice (also mailboxes[%d])", m.Address, j)
			default:
				addresses[lower] = i
				if j, dup := tokens[tok]; dup {
					ps.add(path+".address", "%q and mailboxes[%d].address %q share the subject token %q (jobs of both would go to %s): the sender cannot tell them apart",
						m.Address, j, c.Mailboxes[j].Address, tok, mailjob.Subject(c.Streams.Jobs.SubjectPrefix, m.Address))
				} else {
					tokens[tok] = i
				}
			}
		}

		needIdentity := ""
		switch m.Transport {
		case "graph":
			needIdentity = "required with transport graph: name an entry of identities"
			checkGraphBaseURL(ps, path+".graph.base_url", m.Graph.BaseURL)
			positive(ps, path+".graph.timeout", m.Graph.Timeout)
			if keys := setKeys(m.SMTP); len(keys) > 0 {
				ps.add(path+".smtp", "not used with transport graph (found %s)", strings.Join(keys, ", "))
			}
		case "smtp":
			if m.SMTP.Auth == "xoauth2" {
				needIdentity = "required with smtp.auth xoauth2: name an entry of identities"
			}
			m.SMTP.validate(ps, path+".smtp")
			if keys := setKeys(m.Graph); len(keys) > 0 {
				ps.add(path+".graph", "not used with transport smtp (found %s)", strings.Join(keys, ", "))
			}
		default:
			ps.add(path+".transport", "%q is not one of graph, smtp", m.Transport)
		}
		checkIdentity(path+".identity", m.Identity, needIdentity)

		profiles := map[string]int{}
		for j, p := range m.Profiles {
			pp := joinIndex(path+".profiles", j)
			switch {
			case p.Name == "":
				ps.add(pp+".name", "required")
			case !senderProfileRe.MatchString(p.Name):
				ps.add(pp+".name", "%q must be 1-64 characters of a-z, 0-9, '_' and '-', starting with a letter or digit (what jobs give as sender_profile)", p.Name)
			default:
				if k, dup := profiles[p.Name]; dup {
					ps.add(pp+".name", "duplicate profile %q (also profiles[%d])", p.Name, k)
				}
				profiles[p.Name] = j
			}
			checkIdentity(pp+".identity", p.Identity, "")
		}

		r := m.Rate
		if r.MessagesPerMinute < 1 || r.MessagesPerMinute > DefaultMessagesPerMinute {
			ps.add(path+".rate.messages_per_minute", "must be between 1 and %d (Exchange Online's limit per mailbox), got %d", DefaultMessagesPerMinute, r.MessagesPerMinute)
		}
		if r.RecipientsPerDay < 1 || r.RecipientsPerDay > DefaultRecipientsPerDay {
			ps.add(path+".rate.recipients_per_day", "must be between 1 and %d (Exchange Online's limit per mailbox), got %d", DefaultRecipientsPerDay, r.RecipientsPerDay)
		} else if c.Limits.MaxRecipients > r.RecipientsPerDay {
			ps.add(path+".rate.recipients_per_day", "%d is below limits.max_recipients %d: a job with that many recipients could never be sent", r.RecipientsPerDay, c.Limits.MaxRecipients)
		}
		if r.MessageWindow < 100*time.Millisecond || r.MessageWindow > DefaultMessageWindow {
			ps.add(path+".rate.message_window", "must be between 100ms and 1m, got %s", r.MessageWindow)
		}
		if r.RecipientWindow < 100*time.Millisecond || r.RecipientWindow > DefaultRecipientWindow {
			ps.add(path+".rate.recipient_window", "must be between 100ms and 24h, got %s", r.RecipientWindow)
		}
		if m.MaxConcurrency < 1 || m.MaxConcurrency > 64 {
			ps.add(path+".max_concurrency", "must be between 1 and 64, got %d", m.MaxConcurrency)
		}
	}
}

func (s SMTP) validate(ps *problems, path string) {
	switch {
	case s.Host == "":
		ps.add(path+".host", "required (smtp.office365.com for Exchange Online)")
	case strings.ContainsAny(s.Host, "/ "):
		ps.add(path+".host", "%q must be a host name, without scheme or path", s.Host)
	default:
		if _, _, err := net.SplitHostPort(s.Host); err == nil {
			ps.add(path+".host", "%q must not include a port; set smtp.port", s.Host)
		}
	}
	if s.Port < 1 || s.Port > 65535 {
		ps.add(path+".port", "must be between 1 and 65535, got %d", s.Port)
	}
	oneOf(ps, path+".security", s.Security, "starttls", "tls", "insecure")
	hasPassword := s.Password != "" || s.PasswordFile != ""
	switch s.Auth {
	case "xoauth2", "none":
		if key := secretKey(s.Password, s.PasswordFile, "password"); key != "" {
			ps.add(path+"."+key, "only used with auth password (auth is %s)", s.Auth)
		}
		if s.Auth == "none" && s.Username != "" {
			ps.add(path+".username", "not used with auth none")
		}
	case "password":
		if !hasPassword {
			ps.add(path+".password", "required with auth password (or set password_file)")
		}
	default:
		ps.add(path+".auth", "%q is not one of xoauth2, password, none", s.Auth)
	}
	checkTLS(ps, path+".tls", s.TLS)
	positive(ps, path+".timeout", s.Timeout)
}

// Mailbox returns the allow-listed mailbox for address (compared without
// regard to case), and false when address is not allowed.
func (c *Sender) Mailbox(address string) (SenderMailbox, bool) {
	for _, m := range c.Mailboxes {
		if strings.EqualFold(m.Address, address) {
			return m, true
		}
	}
	return SenderMailbox{}, false
}

// Profile returns the profile called name of m.
func (m SenderMailbox) Profile(name string) (SenderProfile, bool) {
	for _, p := range m.Profiles {
		if p.Name == name {
			return p, true
		}
	}
	return SenderProfile{}, false
}
