// Package devmail is a local development mailbox: an in-process IMAP server
// that behaves like Exchange Online as far as mailpipe is concerned.
//
// It accepts SASL XOAUTH2 with tokens checked by a caller-supplied function
// (so it works with any local token issuer), and optionally PLAIN/LOGIN for
// users with a password. Like Exchange it uses "/" as the hierarchy
// delimiter, treats folder names case-insensitively, advertises IMAP4rev1,
// SASL-IR, UIDPLUS, MOVE, IDLE, NAMESPACE, LITERAL+ and CHILDREN, and
// answers a rejected XOAUTH2 token with an error challenge before the
// tagged NO.
//
// Mail lives in memory only; it is gone when the server is closed.
package devmail

import (
	"bytes"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapserver"
	"go.uber.org/zap"
)

// Options configures a development mailbox server.
type Options struct {
	// Addr is the TCP address to listen on. Default 127.0.0.1:0 (a free
	// loopback port; read it back with Server.Addr).
	Addr string
	// TLSConfig, when set, makes the listener speak implicit TLS (like
	// outlook.office365.com:993). It must carry a certificate. When nil the
	// listener is plaintext and authentication is allowed without TLS.
	TLSConfig *tls.Config
	// Users are the mailboxes that exist. A user with an empty Password can
	// only log in with XOAUTH2.
	Users []User
	// ValidateToken checks an XOAUTH2 bearer token and returns the mailbox
	// address it grants access to. XOAUTH2 succeeds when that address equals
	// the SASL user= field (case-insensitively) and the mailbox exists. When
	// nil, XOAUTH2 is not offered.
	ValidateToken func(token string) (email string, err error)
	// Logger receives connection and authentication events. Default: no
	// logging.
	Logger *zap.Logger
}

// User is one mailbox.
type User struct {
	Address  string
	Password string
}

// Server is a running development mailbox server.
type Server struct {
	log           *zap.Logger
	validateToken func(string) (string, error)
	passwordAuth  bool

	ln   net.Listener
	imap *imapserver.Server
	done chan struct{}

	mu       sync.Mutex
	accounts map[string]*account // keyed by lower-case address

	closeOnce sync.Once
	closeErr  error
}

// Start creates the mailboxes in opts.Users (each with INBOX and the usual
// Exchange default folders) and starts serving IMAP on opts.Addr.
func Start(opts Options) (*Server, error) {
	addr := opts.Addr
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	log := opts.Logger
	if log == nil {
		log = zap.NewNop()
	}
	if cfg := opts.TLSConfig; cfg != nil && len(cfg.Certificates) == 0 && cfg.GetCertificate == nil && cfg.GetConfigForClient == nil {
		return nil, errors.New("devmail: TLSConfig has no certificate")
	}

	s := &Server{
		log:           log,
		validateToken: opts.ValidateToken,
		accounts:      make(map[string]*account),
		done:          make(chan struct{}),
	}
	for _, u := range opts.Users {
		if !validAddress(u.Address) {
			return nil, fmt.Errorf("devmail: invalid user address %q", u.Address)
		}
		key := strings.ToLower(u.Address)
		if s.accounts[key] != nil {
			return nil, fmt.Errorf("devmail: duplicate user %q", u.Address)
		}
		acct, err := newAccount(u.Address, u.Password)
		if err != nil {
			return nil, err
		}
		s.accounts[key] = acct
		if u.Password != "" {
			s.passwordAuth = true
		}
	}

	s.imap = imapserver.New(&imapserver.Options{
		NewSession: s.newSession,
		Caps: imap.CapSet{
			imap.CapIMAP4rev1:   {},
			imap.CapNamespace:   {},
			imap.CapUIDPlus:     {},
			imap.CapMove:        {},
			imap.CapIdle:        {},
			imap.CapLiteralPlus: {},
			imap.CapChildren:    {},
		},
		Logger:       zap.NewStdLog(log.Named("imapserver")),
		InsecureAuth: opts.TLSConfig == nil,
	})

	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("devmail: listen: %w", err)
	}
	if opts.TLSConfig != nil {
		ln = tls.NewListener(ln, opts.TLSConfig)
	}
	s.ln = ln

	go func() {
		defer close(s.done)
		if err := s.imap.Serve(ln); err != nil && !errors.Is(err, net.ErrClosed) {
			s.log.Debug("devmail: serve ended", zap.Error(err))
		}
	}()
	s.log.Info("devmail: listening", zap.String("addr", ln.Addr().String()), zap.Bool("tls", opts.TLSConfig != nil))
	return s, nil
}

// Addr is the address the server listens on, as host:port.
func (s *Server) Addr() string {
	return s.ln.Addr().String()
}

// Close stops listening and closes all client connections. It is safe to
// call more than once.
func (s *Server) Close() error {
	s.closeOnce.Do(func() {
		err := s.imap.Close()
		// imapserver only closes listeners that Serve registered; close
		// ours too in case Close raced with the start of Serve.
		if lerr := s.ln.Close(); lerr != nil && !errors.Is(lerr, net.ErrClosed) && err == nil {
			err = lerr
		}
		<-s.done
		if err != nil && !errors.Is(err, net.ErrClosed) {
			s.closeErr = err
		}
	})
	return s.closeErr
}

// CreateFolder creates a folder for user, with any missing parent folders.
// path is "/"-separated, e.g. "Postvak IN/Algemeen/Import"; names may hold
// any Unicode characters. Creating a folder that exists is not an error.
func (s *Server) CreateFolder(user, path string) error {
	acct, err := s.account(user)
	if err != nil {
		return err
	}
	if _, err := acct.create(path); err != nil && !isAlreadyExists(err) {
		return fmt.Errorf("devmail: create folder %q for %s: %w", path, user, err)
	}
	return nil
}

// Append stores raw (an RFC 5322 message, CRLF line endings) in folder of
// user's mailbox with received as its arrival time (INTERNALDATE; zero
// means now). The folder must exist; clients that IDLE on it are notified.
func (s *Server) Append(user, folder string, raw []byte, received time.Time) error {
	acct, err := s.account(user)
	if err != nil {
		return err
	}
	name, ok := acct.lookup(folder)
	if !ok {
		return fmt.Errorf("devmail: append for %s: no folder %q", user, folder)
	}
	_, err = acct.user.Append(name, bytes.NewReader(raw), &imap.AppendOptions{Time: received})
	if err != nil {
		return fmt.Errorf("devmail: append to %q for %s: %w", folder, user, err)
	}
	return nil
}

// Count returns the number of messages in folder of user's mailbox.
func (s *Server) Count(user, folder string) (int, error) {
	acct, err := s.account(user)
	if err != nil {
		return 0, err
	}
	name, ok := acct.lookup(folder)
	if !ok {
		return 0, fmt.Errorf("devmail: count for %s: no folder %q", user, folder)
	}
	data, err := acct.user.Status(name, &imap.StatusOptions{NumMessages: true})
	if err != nil {
		return 0, fmt.Errorf("devmail: count %q for %s: %w", folder, user, err)
	}
	return int(*data.NumMessages), nil
}

func (s *Server) account(user string) (*account, error) {
	if acct := s.lookupAccount(user); acct != nil {
		return acct, nil
	}
	return nil, fmt.Errorf("devmail: no mailbox for user %q", user)
}

func (s *Server) lookupAccount(user string) *account {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.accounts[strings.ToLower(user)]
}

func validAddress(addr string) bool {
	at := strings.LastIndexByte(addr, '@')
	return at > 0 && at < len(addr)-1 && !strings.ContainsAny(addr, " \t\r\n\x00\x01")
}
