package graphfake

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"fmt"
	"slices"
	"strings"
	"time"
)

// Well-known folder names (mailFolder resource type).
const (
	WellKnownRoot         = "msgfolderroot"
	WellKnownInbox        = "inbox"
	WellKnownDrafts       = "drafts"
	WellKnownSentItems    = "sentitems"
	WellKnownDeletedItems = "deleteditems"
	WellKnownArchive      = "archive"
	WellKnownJunkEmail    = "junkemail"
	WellKnownOutbox       = "outbox"
)

var wellKnownOrder = []string{WellKnownInbox, WellKnownDrafts, WellKnownSentItems, WellKnownDeletedItems,
	WellKnownArchive, WellKnownJunkEmail, WellKnownOutbox}

// EnglishFolderNames are the default display names of the well-known folders.
var EnglishFolderNames = map[string]string{
	WellKnownRoot:         "Top of Information Store",
	WellKnownInbox:        "Inbox",
	WellKnownDrafts:       "Drafts",
	WellKnownSentItems:    "Sent Items",
	WellKnownDeletedItems: "Deleted Items",
	WellKnownArchive:      "Archive",
	WellKnownJunkEmail:    "Junk Email",
	WellKnownOutbox:       "Outbox",
}

// DutchFolderNames are the display names of a mailbox whose language is Dutch.
var DutchFolderNames = map[string]string{
	WellKnownInbox:        "Postvak IN",
	WellKnownDrafts:       "Concepten",
	WellKnownSentItems:    "Verzonden items",
	WellKnownDeletedItems: "Verwijderde items",
	WellKnownArchive:      "Archief",
	WellKnownJunkEmail:    "Ongewenste e-mail",
	WellKnownOutbox:       "Postvak UIT",
}

// GermanFolderNames are the display names of a mailbox whose language is German.
var GermanFolderNames = map[string]string{
	WellKnownInbox:        "Posteingang",
	WellKnownDrafts:       "Entwürfe",
	WellKnownSentItems:    "Gesendete Elemente",
	WellKnownDeletedItems: "Gelöschte Elemente",
	WellKnownArchive:      "Archiv",
	WellKnownJunkEmail:    "Junk-E-Mail",
	WellKnownOutbox:       "Postausgang",
}

// MailboxOptions configure AddMailbox.
type MailboxOptions struct {
	// DisplayName of the user or shared mailbox (default: the address).
	DisplayName string
	// ID is the directory object id (a GUID); default: derived from the
	// address. /users/{id} works with it as well as with the address.
	ID string
	// FolderNames override display names of well-known folders, keyed by
	// well-known name (e.g. DutchFolderNames: "Postvak IN" for inbox).
	FolderNames map[string]string
	// Inactive makes Graph answer 404 MailboxNotEnabledForRESTAPI (a user
	// without an Exchange Online mailbox, or a soft-deleted one).
	Inactive bool
}

type mailbox struct {
	id          string
	address     string
	displayName string
	inactive    bool
	hash        []byte // for ids
	root        *folder
	folders     map[string]*folder // by id
	wellKnown   map[string]*folder
	folderSeq   uint64
	byRest      map[string]*message
	byImm       map[string]*message
	fullAccess  map[string]bool // lower-case user
	sendAs      map[string]bool
	sendOnBeh   map[string]bool
	sendTimes   []time.Time // submissions, for the per-minute limit
}

type folder struct {
	id        string
	name      string
	wellKnown string
	parent    *folder
	children  []*folder
	hidden    bool
	msgs      map[uint64]*message
}

type message struct {
	key      uint64
	immID    string
	restID   string
	folder   *folder
	raw      []byte // never modified in place: replaced as a whole
	received time.Time
	created  time.Time
	modified time.Time
	version  int
	isRead   bool
	isDraft  bool
	meta     msgMeta
	ext      []extProp
	atts     []*attachment
	draft    *draftData // JSON-created draft: the MIME is built from it
	mimeBase []byte     // MIME-created draft: the MIME as given
}

type extProp struct{ ID, Value string }

type attachment struct {
	id          string
	name        string
	contentType string
	isInline    bool
	contentID   string
	data        []byte
	modified    time.Time
}

// path of f from the root, with display names ("Inbox/General").
func (f *folder) path() string {
	var parts []string
	for x := f; x != nil && x.parent != nil; x = x.parent {
		parts = append(parts, x.name)
	}
	slices.Reverse(parts)
	return strings.Join(parts, "/")
}

func (f *folder) child(name string, includeHidden bool) *folder {
	for _, c := range f.children {
		if (includeHidden || !c.hidden) && strings.EqualFold(c.name, name) {
			return c
		}
	}
	return nil
}

func derivedGUID(name string) string {
	h := sha256.Sum256([]byte(name))
	b := h[:16]
	b[6] = (b[6] & 0x0f) | 0x50
	b[8] = (b[8] & 0x3f) | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}

func randomBytes(n int) []byte {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic("graphfake: crypto/rand: " + err.Error())
	}
	return b
}

func randomToken() string { return base64.RawURLEncoding.EncodeToString(randomBytes(18)) }

func randomGUID() string {
	b := randomBytes(16)
	b[6] = (b[6] & 0x0f) | 0x40
	b[8] = (b[8] & 0x3f) | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}

// Id layouts: EWS-like binary blobs in URL-safe base64, as Graph's REST ids
// ("AAMkA...") and immutable ids ("AAkALg...") look.
var (
	restPrefix   = []byte{0x00, 0x03, 0x24, 0x00}
	immPrefix    = []byte{0x00, 0x09, 0x00, 0x2e, 0x00, 0x00}
	folderPrefix = []byte{0x00, 0x03, 0x2e, 0x00}
)

func makeID(prefix, hash, tail []byte) string {
	b := make([]byte, 0, len(prefix)+len(hash)+len(tail)+3)
	b = append(b, prefix...)
	b = append(b, hash...)
	b = append(b, tail...)
	b = append(b, 0x00, 0x00, 0x00)
	return base64.URLEncoding.EncodeToString(b)
}

func (mb *mailbox) newRestID() string { return makeID(restPrefix, mb.hash, randomBytes(22)) }

func (mb *mailbox) newImmID() string { return makeID(immPrefix, mb.hash, randomBytes(22)) }

func (mb *mailbox) newFolderID() string {
	mb.folderSeq++
	var n [8]byte
	binary.BigEndian.PutUint64(n[:], mb.folderSeq)
	h := sha256.Sum256(append([]byte(mb.id+":folder:"), n[:]...))
	return makeID(folderPrefix, mb.hash, h[:14])
}

// validID reports whether s is shaped like an id (URL-safe or standard
// base64 of a blob); other strings give ErrorInvalidIdMalformed.
func validID(s string) bool {
	if len(s) < 16 {
		return false
	}
	if _, err := base64.URLEncoding.DecodeString(s); err == nil {
		return true
	}
	if _, err := base64.StdEncoding.DecodeString(s); err == nil {
		return true
	}
	return false
}

func newMailbox(address string, opts MailboxOptions) *mailbox {
	id := strings.ToLower(strings.TrimSpace(opts.ID))
	if id == "" {
		id = derivedGUID("user:" + strings.ToLower(address))
	}
	h := sha256.Sum256([]byte(id))
	mb := &mailbox{
		id:          id,
		address:     address,
		displayName: opts.DisplayName,
		inactive:    opts.Inactive,
		hash:        h[:12],
		folders:     map[string]*folder{},
		wellKnown:   map[string]*folder{},
		byRest:      map[string]*message{},
		byImm:       map[string]*message{},
		fullAccess:  map[string]bool{},
		sendAs:      map[string]bool{},
		sendOnBeh:   map[string]bool{},
	}
	if mb.displayName == "" {
		mb.displayName = address
	}
	name := func(wk string) string {
		if n := opts.FolderNames[wk]; n != "" {
			return n
		}
		return EnglishFolderNames[wk]
	}
	mb.root = &folder{id: mb.newFolderID(), name: name(WellKnownRoot), wellKnown: WellKnownRoot, msgs: map[uint64]*message{}}
	mb.folders[mb.root.id] = mb.root
	mb.wellKnown[WellKnownRoot] = mb.root
	for _, wk := range wellKnownOrder {
		f := mb.addFolder(mb.root, name(wk))
		f.wellKnown = wk
		mb.wellKnown[wk] = f
	}
	return mb
}

func (mb *mailbox) addFolder(parent *folder, name string) *folder {
	f := &folder{id: mb.newFolderID(), name: name, parent: parent, msgs: map[uint64]*message{}}
	parent.children = append(parent.children, f)
	mb.folders[f.id] = f
	return f
}

// folderByKey resolves a folder id or well-known name (case-insensitive).
func (mb *mailbox) folderByKey(key string) *folder {
	if f := mb.folders[key]; f != nil {
		return f
	}
	return mb.wellKnown[strings.ToLower(key)]
}

// resolvePath walks a seeding path such as "Postvak IN/Algemeen/Import";
// with create, missing folders are made.
func (mb *mailbox) resolvePath(path string, create bool) (*folder, error) {
	segs := strings.Split(strings.Trim(path, "/"), "/")
	if len(segs) == 0 || segs[0] == "" {
		return nil, fmt.Errorf("graphfake: empty folder path")
	}
	var f *folder
	first := segs[0]
	switch {
	case strings.EqualFold(first, mb.root.name) || strings.EqualFold(first, WellKnownRoot):
		f = mb.root
	case mb.root.child(first, true) != nil:
		f = mb.root.child(first, true)
	case mb.wellKnown[strings.ToLower(first)] != nil:
		f = mb.wellKnown[strings.ToLower(first)]
	default:
		return nil, fmt.Errorf("graphfake: mailbox %s: %q is not a folder under the root or a well-known folder", mb.address, first)
	}
	for _, s := range segs[1:] {
		c := f.child(s, true)
		if c == nil {
			if !create {
				return nil, fmt.Errorf("graphfake: mailbox %s: no folder %q", mb.address, path)
			}
			c = mb.addFolder(f, s)
		}
		f = c
	}
	return f, nil
}

// sorted gives the messages of f by receivedDateTime, newest first unless
// asc (ties by insertion order).
func (f *folder) sorted(asc bool) []*message {
	out := make([]*message, 0, len(f.msgs))
	for _, m := range f.msgs {
		out = append(out, m)
	}
	sortMessages(out, asc)
	return out
}

func sortMessages(ms []*message, asc bool) {
	slices.SortFunc(ms, func(a, b *message) int {
		c := a.received.Compare(b.received)
		if c == 0 {
			c = cmpU64(a.key, b.key)
		}
		if !asc {
			c = -c
		}
		return c
	})
}

func cmpU64(a, b uint64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// insert puts a new message into f.
func (s *Server) insert(mb *mailbox, f *folder, m *message) {
	s.nextKey++
	m.key = s.nextKey
	m.immID = mb.newImmID()
	m.restID = mb.newRestID()
	m.folder = f
	if m.created.IsZero() {
		m.created = time.Now().UTC()
	}
	m.modified = m.created
	f.msgs[m.key] = m
	mb.byRest[m.restID] = m
	mb.byImm[m.immID] = m
}

// move puts m into dst. Its REST id changes (the old one becomes stale);
// its immutable id stays.
func (mb *mailbox) move(m *message, dst *folder) {
	delete(m.folder.msgs, m.key)
	delete(mb.byRest, m.restID)
	m.restID = mb.newRestID()
	mb.byRest[m.restID] = m
	m.folder = dst
	dst.msgs[m.key] = m
	m.touch()
}

func (mb *mailbox) remove(m *message) {
	delete(m.folder.msgs, m.key)
	delete(mb.byRest, m.restID)
	delete(mb.byImm, m.immID)
	m.folder = nil
}

func (m *message) touch() {
	m.version++
	m.modified = time.Now().UTC()
}

// lookup finds a message by REST or immutable id (exact, case-sensitive).
func (mb *mailbox) lookup(id string) *message {
	if m := mb.byRest[id]; m != nil {
		return m
	}
	return mb.byImm[id]
}

func (m *message) idFor(immutable bool) string {
	if immutable {
		return m.immID
	}
	return m.restID
}

// ---- Seeding and inspection API ----

func (s *Server) mailboxLocked(address string) *mailbox {
	a := strings.ToLower(strings.TrimSpace(address))
	if mb := s.mailboxes[a]; mb != nil {
		return mb
	}
	return s.byObjectID[a]
}

func (s *Server) mustMailbox(address string) *mailbox {
	mb := s.mailboxLocked(address)
	if mb == nil {
		panic(fmt.Sprintf("graphfake: no mailbox %q (AddMailbox first)", address))
	}
	return mb
}

func (s *Server) mustFolder(mb *mailbox, path string, create bool) *folder {
	f, err := mb.resolvePath(path, create)
	if err != nil {
		panic(err.Error())
	}
	return f
}

// AddMailbox creates a user or shared mailbox with the well-known folders
// and returns its directory object id. Adding an existing address replaces
// nothing and returns the existing id.
func (s *Server) AddMailbox(address string, opts MailboxOptions) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if mb := s.mailboxLocked(address); mb != nil {
		return mb.id
	}
	mb := newMailbox(address, opts)
	s.mailboxes[strings.ToLower(address)] = mb
	s.byObjectID[mb.id] = mb
	return mb.id
}

// GrantFullAccess gives user (a UPN) Full Access to mailbox, as
// Add-MailboxPermission -AccessRights FullAccess does: delegated tokens of
// user with Mail.ReadWrite.Shared may then use /users/{mailbox}.
func (s *Server) GrantFullAccess(user, mailbox string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.mustMailbox(mailbox).fullAccess[strings.ToLower(user)] = true
}

// RevokeFullAccess removes a Full Access grant.
func (s *Server) RevokeFullAccess(user, mailbox string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.mustMailbox(mailbox).fullAccess, strings.ToLower(user))
}

// GrantSendAs gives user Send As on mailbox: delegated sends with from set
// to mailbox are then allowed.
func (s *Server) GrantSendAs(user, mailbox string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.mustMailbox(mailbox).sendAs[strings.ToLower(user)] = true
}

// GrantSendOnBehalf gives user Send on Behalf on mailbox (the sent message
// has from = mailbox and sender = user).
func (s *Server) GrantSendOnBehalf(user, mailbox string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.mustMailbox(mailbox).sendOnBeh[strings.ToLower(user)] = true
}

// RestrictApp limits an app's application permissions to the given
// mailboxes, as an ApplicationAccessPolicy (RestrictAccess) does: other
// mailboxes answer 403 ErrorAccessDenied. With no mailboxes the restriction
// is lifted.
func (s *Server) RestrictApp(appID string, mailboxes ...string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	key := strings.ToLower(appID)
	if len(mailboxes) == 0 {
		delete(s.appPolicy, key)
		return
	}
	allowed := map[string]bool{}
	for _, a := range mailboxes {
		allowed[s.mustMailbox(a).id] = true
	}
	s.appPolicy[key] = allowed
}

func (s *Server) appMayAccess(appID string, mb *mailbox) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	allowed, ok := s.appPolicy[strings.ToLower(appID)]
	return !ok || allowed[mb.id]
}

func (s *Server) hasFullAccess(user string, mb *mailbox) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return mb.fullAccess[strings.ToLower(user)]
}

// CreateFolderPath makes the folders of path (missing ones only) and returns
// the id of the last. The first segment is a folder directly under the root
// by display name ("Postvak IN" when the inbox is localized), a well-known
// name ("inbox"), or the root itself ("msgfolderroot" or its display name).
// It panics on an unknown mailbox or first segment.
func (s *Server) CreateFolderPath(mailbox, path string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	mb := s.mustMailbox(mailbox)
	return s.mustFolder(mb, path, true).id
}

// SetFolderHidden sets a folder's isHidden (hidden folders are listed only
// with includeHiddenFolders=true).
func (s *Server) SetFolderHidden(mailbox, path string, hidden bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.mustFolder(s.mustMailbox(mailbox), path, false).hidden = hidden
}

// FolderID gives the id of an existing folder path.
func (s *Server) FolderID(mailbox, path string) (string, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	mb := s.mailboxLocked(mailbox)
	if mb == nil {
		return "", false
	}
	f, err := mb.resolvePath(path, false)
	if err != nil {
		return "", false
	}
	return f.id, true
}

// AddMessage delivers raw (RFC 5322) into the folder at folderPath (created
// if missing) as received at received, and returns its current (REST) id.
// raw is kept as given (not copied): do not modify it afterwards.
func (s *Server) AddMessage(mailbox, folderPath string, raw []byte, received time.Time) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	mb := s.mustMailbox(mailbox)
	f := s.mustFolder(mb, folderPath, true)
	if received.IsZero() {
		received = time.Now()
	}
	m := &message{raw: raw, received: received.UTC(), meta: parseMeta(raw)}
	m.created = m.received
	s.insert(mb, f, m)
	return m.restID
}

// Message describes a stored message (for assertions).
type Message struct {
	ID                string // current REST id (changes on move)
	ImmutableID       string
	FolderID          string
	FolderPath        string // display names from the root: "Inbox/General"
	InternetMessageID string
	Subject           string
	ReceivedDateTime  time.Time
	IsRead            bool
	IsDraft           bool
	Size              int
}

func (m *message) info() Message {
	return Message{
		ID:                m.restID,
		ImmutableID:       m.immID,
		FolderID:          m.folder.id,
		FolderPath:        m.folder.path(),
		InternetMessageID: m.meta.messageID,
		Subject:           m.meta.subject,
		ReceivedDateTime:  m.received,
		IsRead:            m.isRead,
		IsDraft:           m.isDraft,
		Size:              len(m.raw),
	}
}

// MessageInfo looks a message up by REST or immutable id.
func (s *Server) MessageInfo(mailbox, id string) (Message, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	mb := s.mailboxLocked(mailbox)
	if mb == nil {
		return Message{}, false
	}
	m := mb.lookup(id)
	if m == nil {
		return Message{}, false
	}
	return m.info(), true
}

// Messages lists the messages of a folder, oldest first.
func (s *Server) Messages(mailbox, folderPath string) []Message {
	s.mu.Lock()
	defer s.mu.Unlock()
	f := s.mustFolder(s.mustMailbox(mailbox), folderPath, false)
	var out []Message
	for _, m := range f.sorted(true) {
		out = append(out, m.info())
	}
	return out
}

// MoveMessage moves a message as a user in Outlook would (for delta tests)
// and returns its new REST id.
func (s *Server) MoveMessage(mailbox, id, folderPath string) (string, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	mb := s.mustMailbox(mailbox)
	m := mb.lookup(id)
	if m == nil {
		return "", false
	}
	mb.move(m, s.mustFolder(mb, folderPath, true))
	return m.restID, true
}

// DeleteMessage deletes a message as a user would (hard delete).
func (s *Server) DeleteMessage(mailbox, id string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	mb := s.mustMailbox(mailbox)
	m := mb.lookup(id)
	if m == nil {
		return false
	}
	mb.remove(m)
	return true
}

// MarkRead sets isRead (a change that delta reports as an update).
func (s *Server) MarkRead(mailbox, id string, read bool) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	m := s.mustMailbox(mailbox).lookup(id)
	if m == nil {
		return false
	}
	m.isRead = read
	m.touch()
	return true
}

// Count gives the number of messages in a folder (0 if it does not exist).
func (s *Server) Count(mailbox, folderPath string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	mb := s.mustMailbox(mailbox)
	f, err := mb.resolvePath(folderPath, false)
	if err != nil {
		return 0
	}
	return len(f.msgs)
}

// Bodies gives the raw MIME of the messages in a folder, oldest first. The
// slices are the stored ones: do not modify them.
func (s *Server) Bodies(mailbox, folderPath string) [][]byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	mb := s.mustMailbox(mailbox)
	f, err := mb.resolvePath(folderPath, false)
	if err != nil {
		return nil
	}
	var out [][]byte
	for _, m := range f.sorted(true) {
		out = append(out, m.raw)
	}
	return out
}
