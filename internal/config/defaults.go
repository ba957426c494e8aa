package config

import "time"

// Defaults. Zero values in a loaded configuration are replaced by these.
const (
	DefaultLogLevel              = "info"
	DefaultLogFormat             = "json"
	DefaultNATSConnectTimeout    = 10 * time.Second
	DefaultEmbeddedStoreDir      = "./data/nats"
	DefaultStreamName            = "MAILPIPE_INBOUND"
	DefaultStreamSubjectPrefix   = "mailpipe.inbound"
	DefaultStreamMaxAge          = 7 * 24 * time.Hour
	DefaultDeadLetterName        = "MAILPIPE_DEADLETTER"
	DefaultDeadLetterPrefix      = "mailpipe.deadletter"
	DefaultDeadLetterMaxAge      = 30 * 24 * time.Hour
	DefaultDuplicateWindow       = 24 * time.Hour
	DefaultStreamReplicas        = 1
	DefaultStreamStorage         = "file"
	DefaultObjectBucket          = "mailpipe-bodies"
	DefaultStateBucket           = "mailpipe-state"
	DefaultTokenBucket           = "mailpipe-tokens"
	DefaultLargeMessageThreshold = 512 * KiB
	DefaultMaxInFlight           = 256
	DefaultPublishTimeout        = 30 * time.Second
	DefaultShutdownTimeout       = 30 * time.Second
	DefaultSource                = "imap"
	DefaultPollInterval          = 60 * time.Second
	// DefaultMaxMessageSize is Exchange Online's default maximum message size.
	DefaultMaxMessageSize = 35 * MiB
	DefaultIMAPPortTLS    = 993
	// DefaultIMAPPortPlain is used with security starttls or insecure.
	DefaultIMAPPortPlain = 143
	DefaultIMAPSecurity  = "tls"
	DefaultIMAPAuth      = "xoauth2"
	DefaultIMAPTimeout   = 60 * time.Second
	DefaultFetchBatch    = 200
	DefaultAuthorityHost = "login.microsoftonline.com"

	DefaultIdentityKind = "app"
	// DefaultExpiryWarning: warn this long before a secret or certificate
	// expires (30 days).
	DefaultExpiryWarning = 30 * 24 * time.Hour
	// DefaultGraphMaxConcurrency caps an app's Graph requests in flight
	// across all its mailboxes in one process.
	DefaultGraphMaxConcurrency = 16

	DefaultGraphBaseURL   = "https://graph.microsoft.com/v1.0"
	DefaultGraphDiscovery = "delta"
	DefaultGraphPageSize  = 200
	// DefaultGraphMailboxConcurrency is Exchange's MailboxConcurrency limit:
	// at most 4 requests in flight per app and mailbox.
	DefaultGraphMailboxConcurrency = 4
	// DefaultGraphRequestBudget per DefaultGraphBudgetWindow is Exchange's
	// limit of 10,000 requests per 10 minutes per app and mailbox.
	DefaultGraphRequestBudget = 10000
	DefaultGraphBudgetWindow  = 10 * time.Minute
	DefaultGraphTimeout       = 60 * time.Second
)

// ApplyDefaults fills every unset (zero) setting with its default. The
// loaders call it; call it yourself before Validate on a configuration built
// in code.
func (c *Importer) ApplyDefaults() {
	setDefault(&c.Log.Level, DefaultLogLevel)
	setDefault(&c.Log.Format, DefaultLogFormat)

	setDefault(&c.NATS.ConnectTimeout, DefaultNATSConnectTimeout)
	setDefault(&c.NATS.Embedded.StoreDir, DefaultEmbeddedStoreDir)

	b := &c.Bus
	b.Stream.applyDefaults(DefaultStreamName, DefaultStreamSubjectPrefix, DefaultStreamMaxAge)
	b.DeadLetter.applyDefaults(DefaultDeadLetterName, DefaultDeadLetterPrefix, DefaultDeadLetterMaxAge)
	setDefault(&b.ObjectBucket, DefaultObjectBucket)
	setDefault(&b.StateBucket, DefaultStateBucket)
	setDefault(&b.TokenBucket, DefaultTokenBucket)
	setDefault(&b.LargeMessageThreshold, DefaultLargeMessageThreshold)
	setDefault(&b.MaxInFlight, DefaultMaxInFlight)
	setDefault(&b.PublishTimeout, DefaultPublishTimeout)

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
		setDefault(&m.Source, DefaultSource)
		setDefault(&m.PollInterval, DefaultPollInterval)
		setDefault(&m.MaxMessageSize, DefaultMaxMessageSize)
		// Each source's defaults apply only to its own block, so that the
		// other block stays empty (and setting it is reported).
		switch m.Source {
		case "imap":
			m.IMAP.applyDefaults(m.Address)
		case "graph":
			m.Graph.applyDefaults()
		}
	}
}

func (im *IMAP) applyDefaults(address string) {
	setDefault(&im.Security, DefaultIMAPSecurity)
	if im.Security == "starttls" || im.Security == "insecure" {
		setDefault(&im.Port, DefaultIMAPPortPlain)
	} else {
		setDefault(&im.Port, DefaultIMAPPortTLS)
	}
	setDefault(&im.Auth, DefaultIMAPAuth)
	setDefault(&im.Username, address)
	setDefault(&im.Timeout, DefaultIMAPTimeout)
	setDefault(&im.FetchBatch, DefaultFetchBatch)
}

func (g *Graph) applyDefaults() {
	setDefault(&g.BaseURL, DefaultGraphBaseURL)
	setDefault(&g.Discovery, DefaultGraphDiscovery)
	setDefault(&g.PageSize, DefaultGraphPageSize)
	setDefault(&g.MaxConcurrency, DefaultGraphMailboxConcurrency)
	setDefault(&g.RequestBudget, DefaultGraphRequestBudget)
	setDefault(&g.BudgetWindow, DefaultGraphBudgetWindow)
	setDefault(&g.Timeout, DefaultGraphTimeout)
}

func (s *Stream) applyDefaults(name, prefix string, maxAge time.Duration) {
	setDefault(&s.Name, name)
	setDefault(&s.SubjectPrefix, prefix)
	setDefault(&s.Replicas, DefaultStreamReplicas)
	setDefault(&s.MaxAge, maxAge)
	setDefault(&s.DuplicateWindow, DefaultDuplicateWindow)
	setDefault(&s.Storage, DefaultStreamStorage)
}

func setDefault[T comparable](p *T, v T) {
	var zero T
	if *p == zero {
		*p = v
	}
}
