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
	setDefault(&b.LargeMessageThreshold, DefaultLargeMessageThreshold)
	setDefault(&b.MaxInFlight, DefaultMaxInFlight)
	setDefault(&b.PublishTimeout, DefaultPublishTimeout)

	setDefault(&c.ShutdownTimeout, DefaultShutdownTimeout)

	for name, id := range c.Identities {
		setDefault(&id.AuthorityHost, DefaultAuthorityHost)
		c.Identities[name] = id
	}

	for i := range c.Mailboxes {
		m := &c.Mailboxes[i]
		setDefault(&m.Source, DefaultSource)
		setDefault(&m.PollInterval, DefaultPollInterval)
		setDefault(&m.MaxMessageSize, DefaultMaxMessageSize)
		setDefault(&m.IMAP.Security, DefaultIMAPSecurity)
		if m.IMAP.Security == "starttls" || m.IMAP.Security == "insecure" {
			setDefault(&m.IMAP.Port, DefaultIMAPPortPlain)
		} else {
			setDefault(&m.IMAP.Port, DefaultIMAPPortTLS)
		}
		setDefault(&m.IMAP.Auth, DefaultIMAPAuth)
		setDefault(&m.IMAP.Username, m.Address)
		setDefault(&m.IMAP.Timeout, DefaultIMAPTimeout)
		setDefault(&m.IMAP.FetchBatch, DefaultFetchBatch)
	}
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
