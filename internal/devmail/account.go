package devmail

import (
	"errors"
	"sort"
	"strings"
	"sync"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapserver"
	"github.com/emersion/go-imap/v2/imapserver/imapmemserver"
)

// delim is the hierarchy delimiter, as on Exchange Online.
const delim = '/'

// defaultFolders are created in every mailbox, as Exchange Online lists them
// (with their special-use attributes, which Exchange sends in LIST without
// advertising SPECIAL-USE).
var defaultFolders = []struct {
	name string
	attr imap.MailboxAttr
}{
	{"Archive", imap.MailboxAttrArchive},
	{"Deleted Items", imap.MailboxAttrTrash},
	{"Drafts", imap.MailboxAttrDrafts},
	{"Junk Email", imap.MailboxAttrJunk},
	{"Outbox", ""},
	{"Sent Items", imap.MailboxAttrSent},
}

// account is one mailbox user. Messages live in an imapmemserver.User; the
// account keeps the folder list next to it because imapmemserver neither
// exposes its folder names nor knows about hierarchy (CHILDREN, creating
// parents, renaming or deleting a subtree) or case-insensitive names.
// Every folder change goes through the account.
type account struct {
	address  string
	password string // empty: XOAUTH2 only
	user     *imapmemserver.User

	mu      sync.Mutex
	folders map[string]*folder // canonical name → folder

	// copyMu serialises COPY and MOVE: imapmemserver locks the source and
	// then the destination mailbox, so two opposite moves could deadlock.
	copyMu sync.Mutex
}

type folder struct {
	specialUse imap.MailboxAttr
	subscribed bool
}

func newAccount(address, password string) (*account, error) {
	a := &account{
		address:  address,
		password: password,
		user:     imapmemserver.NewUser(address, ""),
		folders:  make(map[string]*folder),
	}
	if _, err := a.create("INBOX"); err != nil {
		return nil, err
	}
	for _, f := range defaultFolders {
		if _, err := a.create(f.name); err != nil {
			return nil, err
		}
		a.folders[f.name].specialUse = f.attr
	}
	return a, nil
}

var (
	errNoSuchFolder = &imap.Error{
		Type: imap.StatusResponseTypeNo,
		Code: imap.ResponseCodeNonExistent,
		Text: "The specified folder could not be found in the store.",
	}
	errAlreadyExists = &imap.Error{
		Type: imap.StatusResponseTypeNo,
		Code: imap.ResponseCodeAlreadyExists,
		Text: "Mailbox already exists.",
	}
	errBadName = &imap.Error{
		Type: imap.StatusResponseTypeNo,
		Code: imap.ResponseCodeCannot,
		Text: "Invalid mailbox name.",
	}
)

func isAlreadyExists(err error) bool {
	var imapErr *imap.Error
	return errors.As(err, &imapErr) && imapErr.Code == imap.ResponseCodeAlreadyExists
}

// lookup returns the canonical spelling of an existing folder name, which
// is matched case-insensitively as on Exchange.
func (a *account) lookup(name string) (string, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.lookupLocked(name)
}

func (a *account) lookupLocked(name string) (string, bool) {
	name = strings.TrimRight(name, string(delim))
	if _, ok := a.folders[name]; ok {
		return name, true
	}
	for k := range a.folders {
		if strings.EqualFold(k, name) {
			return k, true
		}
	}
	return name, false
}

// resolve maps a client-supplied name to the stored folder name; unknown
// names are returned unchanged so that imapmemserver reports them.
func (a *account) resolve(name string) string {
	name, _ = a.lookup(name)
	return name
}

// splitPath validates a "/"-separated folder path and returns its segments.
func splitPath(name string) ([]string, error) {
	name = strings.TrimRight(name, string(delim))
	if name == "" {
		return nil, errBadName
	}
	parts := strings.Split(name, string(delim))
	for _, p := range parts {
		if p == "" || strings.ContainsAny(p, "*%\r\n\x00") || strings.TrimSpace(p) == "" {
			return nil, errBadName
		}
	}
	if strings.EqualFold(parts[0], "INBOX") {
		parts[0] = "INBOX"
	}
	return parts, nil
}

// create creates name and any missing parents and returns its canonical
// name. Existing parents keep their spelling. It returns errAlreadyExists
// (with the canonical name) if name exists.
func (a *account) create(name string) (string, error) {
	parts, err := splitPath(name)
	if err != nil {
		return "", err
	}
	a.mu.Lock()
	defer a.mu.Unlock()

	var path string
	for i, p := range parts {
		if i == 0 {
			path = p
		} else {
			path += string(delim) + p
		}
		if existing, ok := a.lookupLocked(path); ok {
			path = existing
			if i == len(parts)-1 {
				return path, errAlreadyExists
			}
			continue
		}
		if err := a.user.Create(path, nil); err != nil {
			return "", err
		}
		_ = a.user.Subscribe(path)
		a.folders[path] = &folder{subscribed: true}
	}
	return path, nil
}

// subtreeLocked returns the descendants of name, deepest first.
func (a *account) subtreeLocked(name string) []string {
	prefix := name + string(delim)
	var l []string
	for k := range a.folders {
		if strings.HasPrefix(k, prefix) {
			l = append(l, k)
		}
	}
	sort.Slice(l, func(i, j int) bool { return l[i] > l[j] })
	return l
}

// delete removes a folder and everything below it, as Exchange does.
func (a *account) delete(name string) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	name, ok := a.lookupLocked(name)
	if !ok {
		return errNoSuchFolder
	}
	if name == "INBOX" || a.folders[name].specialUse != "" {
		return &imap.Error{
			Type: imap.StatusResponseTypeNo,
			Code: imap.ResponseCodeCannot,
			Text: "Special folders cannot be deleted.",
		}
	}
	for _, sub := range append(a.subtreeLocked(name), name) {
		if err := a.user.Delete(sub); err != nil {
			return err
		}
		delete(a.folders, sub)
	}
	return nil
}

// rename renames a folder together with its subtree, creating missing
// parents of the new name.
func (a *account) rename(oldName, newName string) error {
	parts, err := splitPath(newName)
	if err != nil {
		return err
	}
	newName = strings.Join(parts, string(delim))

	a.mu.Lock()
	oldName, ok := a.lookupLocked(oldName)
	if !ok {
		a.mu.Unlock()
		return errNoSuchFolder
	}
	if oldName == "INBOX" || a.folders[oldName].specialUse != "" {
		a.mu.Unlock()
		return &imap.Error{
			Type: imap.StatusResponseTypeNo,
			Code: imap.ResponseCodeCannot,
			Text: "Special folders cannot be renamed.",
		}
	}
	if existing, ok := a.lookupLocked(newName); ok && existing != oldName {
		a.mu.Unlock()
		return errAlreadyExists
	}
	if strings.HasPrefix(strings.ToLower(newName), strings.ToLower(oldName)+string(delim)) {
		a.mu.Unlock()
		return &imap.Error{
			Type: imap.StatusResponseTypeNo,
			Code: imap.ResponseCodeCannot,
			Text: "A folder cannot be moved into itself.",
		}
	}
	a.mu.Unlock()

	if len(parts) > 1 {
		parent := strings.Join(parts[:len(parts)-1], string(delim))
		if _, err := a.create(parent); err != nil && !isAlreadyExists(err) {
			return err
		}
	}

	a.mu.Lock()
	defer a.mu.Unlock()
	// Parents first, so that children never end up without a parent.
	subtree := a.subtreeLocked(oldName)
	sort.Strings(subtree)
	for _, from := range append([]string{oldName}, subtree...) {
		to := newName + strings.TrimPrefix(from, oldName)
		if err := a.user.Rename(from, to, nil); err != nil {
			return err
		}
		a.folders[to] = a.folders[from]
		delete(a.folders, from)
	}
	return nil
}

func (a *account) setSubscribed(name string, on bool) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	name, ok := a.lookupLocked(name)
	if !ok {
		return errNoSuchFolder
	}
	var err error
	if on {
		err = a.user.Subscribe(name)
	} else {
		err = a.user.Unsubscribe(name)
	}
	if err != nil {
		return err
	}
	a.folders[name].subscribed = on
	return nil
}

// list implements LIST and LSUB with CHILDREN attributes.
func (a *account) list(w *imapserver.ListWriter, ref string, patterns []string, options *imap.ListOptions) error {
	if len(patterns) == 0 {
		// LIST "" "": report the delimiter.
		return w.WriteList(&imap.ListData{
			Attrs: []imap.MailboxAttr{imap.MailboxAttrNoSelect},
			Delim: delim,
		})
	}

	a.mu.Lock()
	var l []imap.ListData
	for name, f := range a.folders {
		if options.SelectSubscribed && !f.subscribed {
			continue
		}
		if options.SelectSpecialUse && f.specialUse == "" {
			continue
		}
		if !matchAny(name, ref, patterns) {
			continue
		}
		data := imap.ListData{Mailbox: name, Delim: delim}
		if len(a.subtreeLocked(name)) > 0 {
			data.Attrs = append(data.Attrs, imap.MailboxAttrHasChildren)
		} else {
			data.Attrs = append(data.Attrs, imap.MailboxAttrHasNoChildren)
		}
		if f.specialUse != "" {
			data.Attrs = append(data.Attrs, f.specialUse)
		}
		if options.ReturnSubscribed && f.subscribed {
			data.Attrs = append(data.Attrs, imap.MailboxAttrSubscribed)
		}
		l = append(l, data)
	}
	a.mu.Unlock()

	sort.Slice(l, func(i, j int) bool {
		if (l[i].Mailbox == "INBOX") != (l[j].Mailbox == "INBOX") {
			return l[i].Mailbox == "INBOX"
		}
		return l[i].Mailbox < l[j].Mailbox
	})
	for i := range l {
		if options.ReturnStatus != nil {
			status, err := a.user.Status(l[i].Mailbox, options.ReturnStatus)
			if err != nil {
				continue // deleted meanwhile
			}
			l[i].Status = status
		}
		if err := w.WriteList(&l[i]); err != nil {
			return err
		}
	}
	return nil
}

func matchAny(name, ref string, patterns []string) bool {
	for _, pattern := range patterns {
		if name == "INBOX" && ref == "" && strings.EqualFold(pattern, "INBOX") {
			return true
		}
		if imapserver.MatchList(name, delim, ref, pattern) {
			return true
		}
	}
	return false
}
