// Package bus connects mailpipe to NATS JetStream: it starts an embedded
// server or connects to a cluster, creates the streams, object store and
// state bucket, and publishes imported mail with the header contract of
// docs/messages.md (header names in pkg/mailmsg).
package bus

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/mailpipe/mailpipe/internal/config"
)

const (
	defaultConnectTimeout = 10 * time.Second
	embeddedReadyTimeout  = 30 * time.Second
	drainTimeout          = 30 * time.Second
	maxReconnectDelay     = 30 * time.Second
)

// Conn is a connection to NATS, possibly to a server embedded in this
// process.
type Conn struct {
	nc     *nats.Conn
	js     jetstream.JetStream
	ns     *server.Server // nil unless embedded
	log    *zap.Logger
	closed chan struct{}
	once   sync.Once
}

// Connect connects to NATS as cfg says. With cfg.URL empty it starts an
// embedded JetStream server storing in cfg.Embedded.StoreDir, reachable by
// other processes only when cfg.Embedded.Listen is set. Otherwise it
// connects to cfg.URL (a comma-separated list is accepted) and reconnects
// forever with a capped exponential backoff.
func Connect(ctx context.Context, cfg config.NATS, log *zap.Logger) (*Conn, error) {
	if log == nil {
		log = zap.NewNop()
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	c := &Conn{log: log, closed: make(chan struct{})}
	opts := []nats.Option{
		nats.Name("mailpipe"),
		nats.MaxReconnects(-1),
		nats.CustomReconnectDelay(reconnectDelay),
		// Publishes made while reconnecting are buffered up to this size,
		// then fail fast (and are retried by the importer).
		nats.ReconnectBufSize(32 << 20),
		nats.DisconnectErrHandler(func(nc *nats.Conn, err error) {
			if err != nil {
				log.Warn("nats disconnected", zap.Error(err))
			} else if !nc.IsClosed() && !nc.IsDraining() {
				log.Warn("nats disconnected")
			}
		}),
		nats.ReconnectHandler(func(nc *nats.Conn) {
			log.Info("nats reconnected", zap.String("url", nc.ConnectedUrlRedacted()))
		}),
		nats.ClosedHandler(func(*nats.Conn) {
			c.once.Do(func() { close(c.closed) })
		}),
		nats.ErrorHandler(func(_ *nats.Conn, sub *nats.Subscription, err error) {
			f := []zap.Field{zap.Error(err)}
			if sub != nil {
				f = append(f, zap.String("subject", sub.Subject))
			}
			log.Error("nats asynchronous error", f...)
		}),
	}
	timeout := cfg.ConnectTimeout
	if timeout <= 0 {
		timeout = defaultConnectTimeout
	}
	opts = append(opts, nats.Timeout(timeout))

	url := strings.TrimSpace(cfg.URL)
	if url == "" {
		ns, err := startEmbedded(cfg.Embedded, log)
		if err != nil {
			return nil, err
		}
		c.ns = ns
		// Our own connection is in-process even when the server listens:
		// no TCP, no loopback copies.
		opts = append(opts, nats.InProcessServer(ns))
	} else {
		auth, err := authOptions(cfg)
		if err != nil {
			return nil, err
		}
		opts = append(opts, auth...)
	}

	nc, err := nats.Connect(url, opts...)
	if err != nil {
		if c.ns != nil {
			c.ns.Shutdown()
			c.ns.WaitForShutdown()
		}
		if url == "" {
			return nil, fmt.Errorf("bus: connect to embedded NATS server: %w", err)
		}
		return nil, fmt.Errorf("bus: connect to nats.url %s: %w", redactURL(url), err)
	}
	c.nc = nc
	c.js, err = jetstream.New(nc)
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("bus: jetstream: %w", err)
	}
	if c.ns != nil {
		log.Info("embedded nats server started", zap.String("store_dir", cfg.Embedded.StoreDir), zap.String("listen", c.ClientURL()))
	} else {
		log.Info("nats connected", zap.String("url", nc.ConnectedUrlRedacted()), zap.String("server", nc.ConnectedServerName()))
	}
	return c, nil
}

func reconnectDelay(attempts int) time.Duration {
	d := maxReconnectDelay
	if attempts < 10 {
		d = min(maxReconnectDelay, 250*time.Millisecond<<attempts)
	}
	// Up to 20% jitter so that many importers do not reconnect in lockstep.
	return d - time.Duration(rand.Int64N(int64(d)/5+1))
}

func authOptions(cfg config.NATS) ([]nats.Option, error) {
	var opts []nats.Option
	if cfg.CredentialsFile != "" {
		opts = append(opts, nats.UserCredentials(cfg.CredentialsFile))
	}
	if cfg.NKeySeedFile != "" {
		o, err := nats.NkeyOptionFromSeed(cfg.NKeySeedFile)
		if err != nil {
			return nil, fmt.Errorf("bus: nats.nkey_seed_file: %w", err)
		}
		opts = append(opts, o)
	}
	if cfg.User != "" {
		pw := cfg.Password.Value()
		if pw == "" && cfg.PasswordFile != "" {
			b, err := os.ReadFile(cfg.PasswordFile)
			if err != nil {
				return nil, fmt.Errorf("bus: nats.password_file: %w", err)
			}
			pw = strings.TrimRight(string(b), "\r\n")
		}
		opts = append(opts, nats.UserInfo(cfg.User, pw))
	}
	t := cfg.TLS
	if t.CAFile != "" || t.CertFile != "" || t.ServerName != "" {
		opts = append(opts, nats.Secure(&tls.Config{MinVersion: tls.VersionTLS12, ServerName: t.ServerName}))
		if t.CAFile != "" {
			opts = append(opts, nats.RootCAs(t.CAFile))
		}
		if t.CertFile != "" {
			key := t.KeyFile
			if key == "" {
				key = t.CertFile
			}
			opts = append(opts, nats.ClientCert(t.CertFile, key))
		}
	}
	return opts, nil
}

func startEmbedded(cfg config.Embedded, log *zap.Logger) (*server.Server, error) {
	if cfg.StoreDir == "" {
		return nil, errors.New("bus: nats.embedded.store_dir must be set when nats.url is empty")
	}
	if err := os.MkdirAll(cfg.StoreDir, 0o750); err != nil {
		return nil, fmt.Errorf("bus: nats.embedded.store_dir: %w", err)
	}
	opts := &server.Options{
		ServerName: "mailpipe-embedded",
		JetStream:  true,
		StoreDir:   cfg.StoreDir,
		NoSigs:     true,
	}
	if cfg.Listen == "" {
		opts.DontListen = true
	} else {
		host, port, err := net.SplitHostPort(cfg.Listen)
		if err != nil {
			return nil, fmt.Errorf("bus: nats.embedded.listen %q: %w", cfg.Listen, err)
		}
		p, err := strconv.Atoi(port)
		if err != nil {
			return nil, fmt.Errorf("bus: nats.embedded.listen %q: bad port", cfg.Listen)
		}
		opts.Host, opts.Port = host, p
	}
	ns, err := server.NewServer(opts)
	if err != nil {
		return nil, fmt.Errorf("bus: embedded nats server: %w", err)
	}
	ns.SetLogger(&serverLogger{log.Named("nats-server").WithOptions(zap.AddCallerSkip(1)).Sugar()}, false, false)
	ns.Start()
	if !ns.ReadyForConnections(embeddedReadyTimeout) {
		ns.Shutdown()
		ns.WaitForShutdown()
		return nil, fmt.Errorf("bus: embedded nats server not ready after %s (store_dir %s, listen %q)", embeddedReadyTimeout, cfg.StoreDir, cfg.Listen)
	}
	return ns, nil
}

// serverLogger sends the embedded server's log to zap.
type serverLogger struct{ s *zap.SugaredLogger }

func (l *serverLogger) Noticef(format string, v ...any) { l.s.Debugf(format, v...) }
func (l *serverLogger) Warnf(format string, v ...any)   { l.s.Warnf(format, v...) }
func (l *serverLogger) Fatalf(format string, v ...any)  { l.s.Errorf(format, v...) }
func (l *serverLogger) Errorf(format string, v ...any)  { l.s.Errorf(format, v...) }
func (l *serverLogger) Debugf(format string, v ...any)  { l.s.Debugf(format, v...) }
func (l *serverLogger) Tracef(format string, v ...any)  { l.s.Debugf(format, v...) }

// JetStream returns a JetStream context on the connection.
func (c *Conn) JetStream() jetstream.JetStream { return c.js }

// NC returns the underlying NATS connection.
func (c *Conn) NC() *nats.Conn { return c.nc }

// Embedded reports whether the server runs in this process.
func (c *Conn) Embedded() bool { return c.ns != nil }

// ClientURL is the URL other clients (demo consumers, the nats CLI) can
// connect to: the embedded server's listen URL, or the URL connected to.
// It is "" for an embedded server that does not listen: use
// InProcessOption for in-process clients then.
func (c *Conn) ClientURL() string {
	if c.ns != nil {
		if c.ns.Addr() == nil {
			return ""
		}
		return c.ns.ClientURL()
	}
	return c.nc.ConnectedUrlRedacted()
}

// InProcessOption returns the option that connects another nats.Conn of this
// process to the embedded server, or nil when the server is not embedded.
func (c *Conn) InProcessOption() nats.Option {
	if c.ns == nil {
		return nil
	}
	return nats.InProcessServer(c.ns)
}

// Close drains the connection (pending publishes are flushed and
// acknowledged) and shuts an embedded server down.
func (c *Conn) Close() {
	if c.nc != nil {
		if err := c.nc.Drain(); err == nil {
			select {
			case <-c.closed:
			case <-time.After(drainTimeout):
				c.log.Warn("nats drain timed out")
			}
		}
		c.nc.Close()
	}
	if c.ns != nil {
		c.ns.Shutdown()
		c.ns.WaitForShutdown()
		c.log.Info("embedded nats server stopped")
	}
}

func redactURL(u string) string {
	// user:password@host → user:xxxxx@host for every URL of the list.
	parts := strings.Split(u, ",")
	for i, p := range parts {
		if at := strings.LastIndex(p, "@"); at >= 0 {
			scheme := ""
			rest := p
			if j := strings.Index(p, "://"); j >= 0 && j < at {
				scheme, rest = p[:j+3], p[j+3:]
				at -= j + 3
			}
			userinfo := rest[:at]
			if k := strings.Index(userinfo, ":"); k >= 0 {
				userinfo = userinfo[:k] + ":xxxxx"
			}
			parts[i] = scheme + userinfo + rest[at:]
		}
	}
	return strings.Join(parts, ",")
}
