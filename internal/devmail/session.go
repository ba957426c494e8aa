package devmail

import (
	"crypto/subtle"
	"strings"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapserver"
	"github.com/emersion/go-imap/v2/imapserver/imapmemserver"
	"github.com/emersion/go-sasl"
	"go.uber.org/zap"
)

// session is one IMAP connection. Before authentication UserSession is nil;
// imapserver checks the connection state before calling any method that
// needs it.
type session struct {
	srv  *Server
	log  *zap.Logger
	acct *account

	*imapmemserver.UserSession
}

var (
	_ imapserver.SessionSASL      = (*session)(nil)
	_ imapserver.SessionIMAP4rev2 = (*session)(nil)
)

func (s *Server) newSession(conn *imapserver.Conn) (imapserver.Session, *imapserver.GreetingData, error) {
	log := s.log
	if nc := conn.NetConn(); nc != nil {
		log = log.With(zap.String("remote", nc.RemoteAddr().String()))
	}
	return &session{srv: s, log: log}, nil, nil
}

func (s *session) Close() error {
	return s.UserSession.Close()
}

func (s *session) loggedIn(acct *account, mech string) {
	s.acct = acct
	s.UserSession = imapmemserver.NewUserSession(acct.user)
	s.log = s.log.With(zap.String("user", acct.address))
	s.log.Info("devmail: authenticated", zap.String("mechanism", mech))
}

// checkPassword returns the account if username/password match a user with a
// password.
func (s *session) checkPassword(username, password string) *account {
	acct := s.srv.lookupAccount(username)
	if acct == nil || acct.password == "" {
		return nil
	}
	if subtle.ConstantTimeCompare([]byte(password), []byte(acct.password)) != 1 {
		return nil
	}
	return acct
}

// Login implements the LOGIN command. Exchange answers failures with a bare
// "NO LOGIN failed."
func (s *session) Login(username, password string) error {
	acct := s.checkPassword(username, password)
	if acct == nil {
		s.log.Info("devmail: LOGIN failed", zap.String("user", username))
		return errLoginFailed
	}
	s.loggedIn(acct, "LOGIN command")
	return nil
}

func (s *session) AuthenticateMechanisms() []string {
	var mechs []string
	if s.srv.passwordAuth {
		mechs = append(mechs, sasl.Plain, sasl.Login)
	}
	if s.srv.validateToken != nil {
		mechs = append(mechs, mechXOAuth2)
	}
	return mechs
}

func (s *session) Authenticate(mech string) (sasl.Server, error) {
	switch {
	case mech == sasl.Plain && s.srv.passwordAuth:
		return &plainServer{auth: s.authPassword(mech)}, nil
	case mech == sasl.Login && s.srv.passwordAuth:
		return &loginServer{auth: s.authPassword(mech)}, nil
	case mech == mechXOAuth2 && s.srv.validateToken != nil:
		return &xoauth2Server{auth: s.authToken}, nil
	default:
		return nil, &imap.Error{
			Type: imap.StatusResponseTypeNo,
			Text: "Unsupported authentication mechanism.",
		}
	}
}

func (s *session) authPassword(mech string) func(username, password string) bool {
	return func(username, password string) bool {
		acct := s.checkPassword(username, password)
		if acct == nil {
			s.log.Info("devmail: AUTHENTICATE failed", zap.String("mechanism", mech), zap.String("user", username))
			return false
		}
		s.loggedIn(acct, mech)
		return true
	}
}

func (s *session) authToken(username, token string) bool {
	email, err := s.srv.validateToken(token)
	if err != nil {
		s.log.Info("devmail: XOAUTH2 token rejected", zap.String("user", username), zap.Error(err))
		return false
	}
	if !strings.EqualFold(email, username) {
		s.log.Info("devmail: XOAUTH2 token is for another user", zap.String("user", username), zap.String("token_user", email))
		return false
	}
	acct := s.srv.lookupAccount(username)
	if acct == nil {
		s.log.Info("devmail: XOAUTH2 for a user without mailbox", zap.String("user", username))
		return false
	}
	s.loggedIn(acct, mechXOAuth2)
	return true
}

// Folder commands: names are resolved case-insensitively and hierarchy is
// kept consistent by the account.

func (s *session) Create(name string, options *imap.CreateOptions) error {
	_, err := s.acct.create(name)
	return err
}

func (s *session) Delete(name string) error {
	return s.acct.delete(name)
}

func (s *session) Rename(oldName, newName string, options *imap.RenameOptions) error {
	return s.acct.rename(oldName, newName)
}

func (s *session) Subscribe(name string) error {
	return s.acct.setSubscribed(name, true)
}

func (s *session) Unsubscribe(name string) error {
	return s.acct.setSubscribed(name, false)
}

func (s *session) List(w *imapserver.ListWriter, ref string, patterns []string, options *imap.ListOptions) error {
	return s.acct.list(w, ref, patterns, options)
}

func (s *session) Select(name string, options *imap.SelectOptions) (*imap.SelectData, error) {
	return s.UserSession.Select(s.acct.resolve(name), options)
}

func (s *session) Status(name string, options *imap.StatusOptions) (*imap.StatusData, error) {
	return s.UserSession.Status(s.acct.resolve(name), options)
}

func (s *session) Append(name string, r imap.LiteralReader, options *imap.AppendOptions) (*imap.AppendData, error) {
	return s.UserSession.Append(s.acct.resolve(name), r, options)
}

// Copy returns no COPYUID when nothing matched: imapmemserver would return
// empty UID sets, which cannot be encoded and break the connection.
func (s *session) Copy(numSet imap.NumSet, dest string) (*imap.CopyData, error) {
	s.acct.copyMu.Lock()
	defer s.acct.copyMu.Unlock()
	data, err := s.UserSession.Copy(numSet, s.acct.resolve(dest))
	if err != nil {
		return nil, err
	}
	if len(data.SourceUIDs) == 0 {
		return nil, nil
	}
	return data, nil
}

// Move is COPY, then flagging and expunging exactly the copied messages.
// imapmemserver's own MOVE writes its EXPUNGE responses directly and also
// queues them for this session, so the client gets one extra EXPUNGE with a
// mistranslated sequence number (moving message 2 of 3 reports 3 and then 2
// as expunged), and a MOVE that matches nothing breaks the connection on an
// empty COPYUID. Here the expunges reach the client once, through the update
// queue, after the untagged OK [COPYUID ...].
func (s *session) Move(w *imapserver.MoveWriter, numSet imap.NumSet, dest string) error {
	s.acct.copyMu.Lock()
	defer s.acct.copyMu.Unlock()
	data, err := s.UserSession.Copy(numSet, s.acct.resolve(dest))
	if err != nil {
		return err
	}
	if len(data.SourceUIDs) == 0 {
		return nil
	}
	flags := &imap.StoreFlags{Op: imap.StoreFlagsAdd, Silent: true, Flags: []imap.Flag{imap.FlagDeleted}}
	if err := s.UserSession.Store(nil, data.SourceUIDs, flags, &imap.StoreOptions{}); err != nil {
		return err
	}
	uids := data.SourceUIDs
	if err := s.UserSession.Expunge(&imapserver.ExpungeWriter{}, &uids); err != nil {
		return err
	}
	return w.WriteCopyData(data)
}

// idlePollInterval bounds how late an IDLE client hears of a change.
const idlePollInterval = 100 * time.Millisecond

// Idle polls the mailbox's update queue. imapmemserver's Idle only wakes up
// for updates queued after it started; imapserver sends "+ idling" before
// calling it, so a message appended right after a client saw the
// continuation could go unreported for the whole IDLE.
func (s *session) Idle(w *imapserver.UpdateWriter, stop <-chan struct{}) error {
	t := time.NewTicker(idlePollInterval)
	defer t.Stop()
	for {
		if err := s.UserSession.Poll(w, true); err != nil {
			return err
		}
		select {
		case <-stop:
			return nil
		case <-t.C:
		}
	}
}

var errLoginFailed = &imap.Error{
	Type: imap.StatusResponseTypeNo,
	Text: "LOGIN failed.",
}
