package config

import (
	"encoding/base64"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/url"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode"
)

var (
	mailboxNameRe = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]{0,63}$`)
	guidRe        = regexp.MustCompile(`^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$`)
	dnsLabelRe    = regexp.MustCompile(`^[a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?$`)
	bucketNameRe  = regexp.MustCompile(`^[a-zA-Z0-9_-]+$`)
)

// Validate checks a configuration with defaults applied and returns a
// *ValidationError listing every problem, or nil.
func (c *Importer) Validate() error {
	if ps := c.validate(); len(ps) > 0 {
		return &ValidationError{Problems: ps}
	}
	return nil
}

func (c *Importer) validate() []Problem {
	var ps problems
	c.validateLog(&ps)
	c.validateNATS(&ps)
	c.validateBus(&ps)
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

func (c *Importer) validateLog(ps *problems) {
	oneOf(ps, "log.level", c.Log.Level, "debug", "info", "warn", "error")
	oneOf(ps, "log.format", c.Log.Format, "json", "console")
}

func (c *Importer) validateNATS(ps *problems) {
	n := &c.NATS
	if n.URL != "" {
		for i, u := range strings.Split(n.URL, ",") {
			checkNATSURL(ps, "nats.url", i+1, strings.TrimSpace(u))
		}
	} else {
		if n.Embedded.StoreDir == "" {
			ps.add("nats.embedded.store_dir", "required when nats.url is empty (embedded server)")
		}
		if n.Embedded.Listen != "" {
			checkListen(ps, "nats.embedded.listen", n.Embedded.Listen)
		}
	}
	var methods []string
	if n.CredentialsFile != "" {
		methods = append(methods, "credentials_file")
	}
	if n.NKeySeedFile != "" {
		methods = append(methods, "nkey_seed_file")
	}
	hasPassword := n.Password != "" || n.PasswordFile != ""
	if n.User != "" || hasPassword {
		methods = append(methods, "user/password")
	}
	if len(methods) > 1 {
		ps.add("nats", "set at most one of credentials_file, nkey_seed_file and user/password (found %s)", strings.Join(methods, ", "))
	}
	if n.User != "" && !hasPassword {
		ps.add("nats.user", "needs nats.password or nats.password_file")
	}
	if n.User == "" && hasPassword {
		ps.add("nats.password", "needs nats.user")
	}
	checkTLS(ps, "nats.tls", n.TLS)
	positive(ps, "nats.connect_timeout", n.ConnectTimeout)
}

func checkNATSURL(ps *problems, path string, n int, raw string) {
	if raw == "" {
		ps.add(path, "entry %d is empty", n)
		return
	}
	s := raw
	if !strings.Contains(s, "://") {
		s = "nats://" + s
	}
	// The URL may hold a user and password: do not quote it.
	u, err := url.Parse(s)
	if err != nil {
		ps.add(path, "entry %d is not a valid URL", n)
		return
	}
	switch u.Scheme {
	case "nats", "tls", "ws", "wss":
	default:
		ps.add(path, "entry %d has scheme %q; use nats, tls, ws or wss", n, u.Scheme)
		return
	}
	if u.Hostname() == "" {
		ps.add(path, "entry %d has no host", n)
	}
	if p := u.Port(); p != "" {
		if v, err := strconv.Atoi(p); err != nil || v < 1 || v > 65535 {
			ps.add(path, "entry %d has an invalid port", n)
		}
	}
}

func (c *Importer) validateBus(ps *problems) {
	b := &c.Bus
	b.Stream.validate(ps, "bus.stream")
	b.DeadLetter.validate(ps, "bus.dead_letter")
	s, dl := b.Stream, b.DeadLetter
	if s.Name != "" && s.Name == dl.Name {
		ps.add("bus.dead_letter.name", "must differ from bus.stream.name (both are %q)", s.Name)
	}
	if s.SubjectPrefix != "" && dl.SubjectPrefix != "" {
		switch {
		case s.SubjectPrefix == dl.SubjectPrefix:
			ps.add("bus.dead_letter.subject_prefix", "must differ from bus.stream.subject_prefix (both are %q)", s.SubjectPrefix)
		case subjectWithin(dl.SubjectPrefix, s.SubjectPrefix), subjectWithin(s.SubjectPrefix, dl.SubjectPrefix):
			ps.add("bus.dead_letter.subject_prefix", "%q overlaps bus.stream.subject_prefix %q; the two streams' subjects must be disjoint", dl.SubjectPrefix, s.SubjectPrefix)
		}
	}
	checkBucket(ps, "bus.object_bucket", b.ObjectBucket)
	checkBucket(ps, "bus.state_bucket", b.StateBucket)
	checkBucket(ps, "bus.token_bucket", b.TokenBucket)
	if t := b.TokenBucket; t != "" {
		if t == b.StateBucket {
			ps.add("bus.token_bucket", "must differ from bus.state_bucket (both are %q)", t)
		}
		if t == b.ObjectBucket {
			ps.add("bus.token_bucket", "must differ from bus.object_bucket (both are %q)", t)
		}
	}
	if t := b.LargeMessageThreshold; t < KiB || t > 8*MiB {
		ps.add("bus.large_message_threshold", "must be between 1KiB and 8MiB, got %s", t)
	}
	if b.MaxInFlight < 1 || b.MaxInFlight > 10000 {
		ps.add("bus.max_in_flight", "must be between 1 and 10000, got %d", b.MaxInFlight)
	}
	positive(ps, "bus.publish_timeout", b.PublishTimeout)
}

func (s Stream) validate(ps *problems, path string) {
	checkStreamName(ps, path+".name", s.Name)
	checkSubjectPrefix(ps, path+".subject_prefix", s.SubjectPrefix)
	if s.Replicas < 1 || s.Replicas > 5 {
		ps.add(path+".replicas", "must be between 1 and 5, got %d", s.Replicas)
	}
	positive(ps, path+".max_age", s.MaxAge)
	positive(ps, path+".duplicate_window", s.DuplicateWindow)
	if s.MaxAge > 0 && s.DuplicateWindow > s.MaxAge {
		ps.add(path+".duplicate_window", "%s is longer than max_age %s", s.DuplicateWindow, s.MaxAge)
	}
	oneOf(ps, path+".storage", s.Storage, "file", "memory")
	if s.MaxBytes < 0 {
		ps.add(path+".max_bytes", "must not be negative")
	}
}

func checkStreamName(ps *problems, path, name string) {
	if name == "" {
		ps.add(path, "required")
		return
	}
	if len(name) > 255 {
		ps.add(path, "longer than 255 characters")
	}
	if strings.IndexFunc(name, func(r rune) bool {
		return unicode.IsSpace(r) || !unicode.IsPrint(r) || strings.ContainsRune(`.*>/\`, r)
	}) >= 0 {
		ps.add(path, "%q is not a valid stream name (no blanks, '.', '*', '>', '/' or '\\')", name)
	}
}

func checkSubjectPrefix(ps *problems, path, s string) {
	if s == "" {
		ps.add(path, "required")
		return
	}
	switch {
	case strings.ContainsAny(s, "*>"):
		ps.add(path, "%q must not contain wildcards ('*', '>')", s)
	case strings.IndexFunc(s, func(r rune) bool { return unicode.IsSpace(r) || !unicode.IsPrint(r) }) >= 0:
		ps.add(path, "%q must not contain blanks or control characters", s)
	case slices.Contains(strings.Split(s, "."), ""):
		ps.add(path, "%q is not a valid subject (empty token)", s)
	case strings.HasPrefix(s, "$"):
		ps.add(path, "%q starts with $, which is reserved for NATS itself", s)
	}
}

// subjectWithin reports whether subject s equals prefix p or lies below it.
func subjectWithin(s, p string) bool {
	return s == p || strings.HasPrefix(s, p+".")
}

func checkBucket(ps *problems, path, name string) {
	if name == "" {
		ps.add(path, "required")
	} else if !bucketNameRe.MatchString(name) {
		ps.add(path, "%q is not a valid bucket name (letters, digits, '_' and '-')", name)
	}
}

func (id Identity) validate(ps *problems, path, name string) {
	if name == "" {
		ps.add(path, "identity name must not be empty")
	}
	switch {
	case id.TenantID == "":
		ps.add(path+".tenant_id", "required")
	case !guidRe.MatchString(id.TenantID) && !isDomainName(id.TenantID):
		ps.add(path+".tenant_id", "%q is neither a GUID nor a domain name such as contoso.onmicrosoft.com", id.TenantID)
	}
	switch {
	case id.ClientID == "":
		ps.add(path+".client_id", "required")
	case !guidRe.MatchString(id.ClientID):
		ps.add(path+".client_id", "%q is not a GUID (the app registration's Application (client) ID)", id.ClientID)
	}
	switch id.Kind {
	case "app":
		id.validateApp(ps, path)
	case "delegated":
		id.validateDelegated(ps, path)
	default:
		oneOf(ps, path+".kind", id.Kind, "app", "delegated")
	}
	if id.AuthorityHost != "" {
		checkHostPort(ps, path+".authority_host", id.AuthorityHost, "login.microsoftonline.com")
	}
	positive(ps, path+".expiry_warning", id.ExpiryWarning)
	if n := id.GraphMaxConcurrency; n < 1 || n > 1000 {
		ps.add(path+".graph_max_concurrency", "must be between 1 and 1000, got %d", n)
	}
}

// validateApp checks an identity of kind app (client credentials).
func (id Identity) validateApp(ps *problems, path string) {
	hasSecret := id.ClientSecret != "" || id.ClientSecretFile != ""
	hasCert := id.CertificateFile != ""
	switch {
	case hasSecret && hasCert:
		ps.add(path, "set either a client secret (client_secret or client_secret_file) or certificate_file, not both")
	case !hasSecret && !hasCert:
		ps.add(path, "needs a credential: client_secret, client_secret_file or certificate_file")
	}
	if id.PrivateKeyFile != "" && !hasCert {
		ps.add(path+".private_key_file", "only used together with certificate_file")
	}
	if id.SecretExpires != "" {
		if _, err := time.Parse(time.DateOnly, id.SecretExpires); err != nil {
			ps.add(path+".secret_expires", "%q is not a date in the form YYYY-MM-DD", id.SecretExpires)
		}
	}
	const onlyDelegated = "only used with kind delegated (kind is app)"
	if id.Username != "" {
		ps.add(path+".username", onlyDelegated)
	}
	if key := secretKey(id.TokenCacheKey, id.TokenCacheKeyFile, "token_cache_key"); key != "" {
		ps.add(path+"."+key, onlyDelegated)
	}
}

// validateDelegated checks an identity of kind delegated: a public client
// whose service account signs in with the device code flow.
func (id Identity) validateDelegated(ps *problems, path string) {
	const publicClient = "not used with kind delegated: delegated sign-in uses a public client"
	if key := secretKey(id.ClientSecret, id.ClientSecretFile, "client_secret"); key != "" {
		ps.add(path+"."+key, publicClient)
	}
	if id.CertificateFile != "" {
		ps.add(path+".certificate_file", publicClient)
	}
	if id.PrivateKeyFile != "" {
		ps.add(path+".private_key_file", publicClient)
	}
	if id.SecretExpires != "" {
		ps.add(path+".secret_expires", "not used with kind delegated: a public client has no secret that expires")
	}
	switch {
	case id.Username == "":
		ps.add(path+".username", "required with kind delegated: the service account's user principal name, e.g. svc-mailpipe@contoso.onmicrosoft.com")
	case !isEmailAddress(id.Username):
		ps.add(path+".username", "%q is not a user principal name (name@domain)", id.Username)
	}
	key := secretKey(id.TokenCacheKey, id.TokenCacheKeyFile, "token_cache_key")
	switch {
	case key == "":
		ps.add(path+".token_cache_key", "required with kind delegated (or set token_cache_key_file): base64 of %d random bytes, e.g. from `openssl rand -base64 %d`", TokenCacheKeySize, TokenCacheKeySize)
	case id.TokenCacheKey != "":
		// Empty when token_cache_key_file could not be read (reported
		// already) or Validate runs on a configuration built in code.
		if _, err := DecodeTokenCacheKey(id.TokenCacheKey); err != nil {
			ps.add(path+"."+key, "%v", err)
		}
	}
}

// secretKey names the key a secret was given with: name+"_file" when file
// is set, name when only the value is, "" when neither is.
func secretKey(value Secret, file, name string) string {
	switch {
	case file != "":
		return name + "_file"
	case value != "":
		return name
	}
	return ""
}

// TokenCacheKeySize is the size in bytes of a decoded token cache key
// (256 bits).
const TokenCacheKeySize = 32

// DecodeTokenCacheKey decodes a token cache key: base64 in the standard or
// URL alphabet, with or without padding, of exactly TokenCacheKeySize bytes.
// The error never contains the key.
func DecodeTokenCacheKey(key Secret) ([]byte, error) {
	s := key.Value()
	if s == "" {
		return nil, errors.New("token cache key is empty")
	}
	var (
		b   []byte
		err error
	)
	for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.RawStdEncoding, base64.URLEncoding, base64.RawURLEncoding} {
		if b, err = enc.DecodeString(s); err == nil {
			break
		}
	}
	if err != nil {
		return nil, fmt.Errorf("token cache key is not valid base64 (make one with `openssl rand -base64 %d`)", TokenCacheKeySize)
	}
	if len(b) != TokenCacheKeySize {
		hint := ""
		if len(s) == 2*TokenCacheKeySize && strings.Trim(strings.ToLower(s), "0123456789abcdef") == "" {
			hint = "; it looks like hex, but base64 is needed"
		}
		return nil, fmt.Errorf("token cache key decodes to %d bytes, want %d%s (make one with `openssl rand -base64 %d`)", len(b), TokenCacheKeySize, hint, TokenCacheKeySize)
	}
	return b, nil
}

// checkIdentityRef checks that name (at path) names an entry of
// identities (sorted names); need, when not empty, is the problem reported
// for an empty name.
func checkIdentityRef(ps *problems, path, name string, identities []string, need string) {
	switch {
	case name == "":
		if need != "" {
			ps.add(path, "%s", need)
		}
	case !slices.Contains(identities, name):
		if len(identities) == 0 {
			ps.add(path, "unknown identity %q (no identities are defined)", name)
		} else {
			ps.add(path, "unknown identity %q (defined: %s)", name, strings.Join(identities, ", "))
		}
	}
}

// checkMailboxName checks the name of mailboxes[i] (at path): required,
// usable in subjects and metrics, unique (firstUse maps names to the index
// that used them first).
func checkMailboxName(ps *problems, path, name string, i int, firstUse map[string]int) {
	switch {
	case name == "":
		ps.add(path, "required")
	case !mailboxNameRe.MatchString(name):
		ps.add(path, "%q must be 1-64 characters of a-z, 0-9, '_' and '-', starting with a letter or digit", name)
	default:
		if j, dup := firstUse[name]; dup {
			ps.add(path, "duplicate name %q (also used by mailboxes[%d])", name, j)
		} else {
			firstUse[name] = i
		}
	}
}

func (c *Importer) validateMailboxes(ps *problems) {
	if len(c.Mailboxes) == 0 {
		ps.add("mailboxes", "at least one mailbox is required")
		return
	}
	names := slices.Sorted(maps.Keys(c.Identities))
	firstUse := make(map[string]int)
	for i, m := range c.Mailboxes {
		path := joinIndex("mailboxes", i)
		checkMailboxName(ps, path+".name", m.Name, i, firstUse)
		switch {
		case m.Address == "":
			ps.add(path+".address", "required")
		case !isEmailAddress(m.Address):
			ps.add(path+".address", "%q is not an e-mail address", m.Address)
		}

		needIdentity := ""
		switch m.Source {
		case "imap":
			if m.IMAP.Auth == "xoauth2" {
				needIdentity = "required with imap.auth xoauth2: name an entry of identities"
			}
			m.IMAP.validate(ps, path+".imap")
			if keys := setKeys(m.Graph); len(keys) > 0 {
				ps.add(path+".graph", "not used with source imap (found %s)", strings.Join(keys, ", "))
			}
		case "graph":
			needIdentity = "required with source graph: name an entry of identities"
			m.Graph.validate(ps, path+".graph")
			if keys := setKeys(m.IMAP); len(keys) > 0 {
				ps.add(path+".imap", "not used with source graph (found %s)", strings.Join(keys, ", "))
			}
		default:
			ps.add(path+".source", "%q is not one of imap, graph", m.Source)
		}
		checkIdentityRef(ps, path+".identity", m.Identity, names, needIdentity)

		m.Folders.validate(ps, path+".folders")
		if m.PollInterval < time.Second {
			ps.add(path+".poll_interval", "must be at least 1s, got %s", m.PollInterval)
		}
		if m.MaxMessageSize <= 0 {
			ps.add(path+".max_message_size", "must be positive")
		}
	}
}

func (im IMAP) validate(ps *problems, path string) {
	switch {
	case im.Host == "":
		ps.add(path+".host", "required")
	case strings.Contains(im.Host, "/"):
		ps.add(path+".host", "%q must be a host name, without scheme or path", im.Host)
	default:
		if _, _, err := net.SplitHostPort(im.Host); err == nil {
			ps.add(path+".host", "%q must not include a port; set imap.port", im.Host)
		}
	}
	if im.Port < 1 || im.Port > 65535 {
		ps.add(path+".port", "must be between 1 and 65535, got %d", im.Port)
	}
	oneOf(ps, path+".security", im.Security, "tls", "starttls", "insecure")
	hasPassword := im.Password != "" || im.PasswordFile != ""
	switch im.Auth {
	case "xoauth2":
		if hasPassword {
			key := "password"
			if im.PasswordFile != "" {
				key = "password_file"
			}
			ps.add(path+"."+key, "only used with auth password (auth is xoauth2)")
		}
	case "password":
		if !hasPassword {
			ps.add(path+".password", "required with auth password (or set password_file)")
		}
	default:
		ps.add(path+".auth", "%q is not one of xoauth2, password", im.Auth)
	}
	checkTLS(ps, path+".tls", im.TLS)
	positive(ps, path+".timeout", im.Timeout)
	if im.FetchBatch < 1 || im.FetchBatch > 5000 {
		ps.add(path+".fetch_batch", "must be between 1 and 5000, got %d", im.FetchBatch)
	}
}

func (g Graph) validate(ps *problems, path string) {
	checkGraphBaseURL(ps, path+".base_url", g.BaseURL)
	oneOf(ps, path+".discovery", g.Discovery, "delta", "list")
	if g.PageSize < 1 || g.PageSize > 1000 {
		ps.add(path+".page_size", "must be between 1 and 1000, got %d", g.PageSize)
	}
	if g.MaxConcurrency < 1 || g.MaxConcurrency > 4 {
		ps.add(path+".max_concurrency", "must be between 1 and 4, got %d: Exchange allows at most 4 concurrent requests per mailbox", g.MaxConcurrency)
	}
	if g.RequestBudget < 1 {
		ps.add(path+".request_budget", "must be at least 1, got %d", g.RequestBudget)
	}
	if g.BudgetWindow < time.Second {
		ps.add(path+".budget_window", "must be at least 1s, got %s", g.BudgetWindow)
	}
	positive(ps, path+".timeout", g.Timeout)
}

// checkGraphBaseURL accepts an https URL with a host whose path ends in the
// API version, e.g. https://graph.microsoft.com/v1.0.
func checkGraphBaseURL(ps *problems, path, raw string) {
	const example = "e.g. https://graph.microsoft.com/v1.0"
	if raw == "" {
		ps.add(path, "required (%s)", example)
		return
	}
	u, err := url.Parse(raw)
	if err != nil {
		ps.add(path, "is not a valid URL (%s)", example)
		return
	}
	if u.User != nil {
		// Do not quote it: it holds a user name or password.
		ps.add(path, "must not contain a user name or password")
		return
	}
	switch {
	case u.Scheme != "https":
		ps.add(path, "%q must use https (%s)", raw, example)
	case u.Host == "" || u.Hostname() == "":
		ps.add(path, "%q has no host (%s)", raw, example)
	case u.RawQuery != "" || u.Fragment != "" || strings.HasSuffix(raw, "?") || strings.HasSuffix(raw, "#"):
		ps.add(path, "%q must not have a query or fragment (%s)", raw, example)
	case !strings.HasSuffix(u.Path, "/v1.0") && !strings.HasSuffix(u.Path, "/beta"):
		ps.add(path, "%q must end in the API version /v1.0 or /beta, without a trailing '/' (%s)", raw, example)
	default:
		if p := u.Port(); p != "" {
			if v, err := strconv.Atoi(p); err != nil || v < 1 || v > 65535 {
				ps.add(path, "%q has an invalid port", raw)
			}
		}
	}
}

// setKeys lists the yaml keys of the fields of struct v that are set (not
// zero), for reporting a settings block that does not apply.
func setKeys(v any) []string {
	rv := reflect.ValueOf(v)
	var keys []string
	for i := range rv.NumField() {
		if name := yamlName(rv.Type().Field(i)); name != "" && !rv.Field(i).IsZero() {
			keys = append(keys, name)
		}
	}
	return keys
}

func (f Folders) validate(ps *problems, path string) {
	imp := checkFolder(ps, path+".import", f.Import)
	for _, o := range []struct{ key, name string }{{"processed", f.Processed}, {"error", f.Error}} {
		name := checkFolder(ps, path+"."+o.key, o.name)
		if imp == "" || name == "" {
			continue
		}
		switch {
		case name == imp:
			ps.add(path+"."+o.key, "must differ from the import folder %q", f.Import)
		case f.IncludeSubfolders && strings.HasPrefix(name, imp+"/"):
			ps.add(path+"."+o.key, "%q lies inside the import folder %q and include_subfolders is true: its messages would be imported again", o.name, f.Import)
		}
	}
}

// checkFolder reports a missing or malformed folder name and returns it in a
// form fit for comparison ("" when unusable).
func checkFolder(ps *problems, path, name string) string {
	if strings.TrimSpace(name) == "" {
		ps.add(path, "required")
		return ""
	}
	n := strings.Trim(name, "/")
	segs := strings.Split(n, "/")
	if n == "" || slices.Contains(segs, "") {
		ps.add(path, "%q has an empty folder name between '/' separators", name)
		return ""
	}
	// INBOX is case-insensitive in IMAP (RFC 3501).
	if strings.EqualFold(segs[0], "INBOX") {
		segs[0] = "INBOX"
	}
	return strings.Join(segs, "/")
}

func checkTLS(ps *problems, path string, t TLS) {
	if t.KeyFile != "" && t.CertFile == "" {
		ps.add(path+".key_file", "only used together with cert_file")
	}
}

func checkListen(ps *problems, path, addr string) {
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		ps.add(path, "%q is not host:port (e.g. :9090 or 127.0.0.1:9090)", addr)
		return
	}
	if v, err := strconv.Atoi(port); err != nil || v < 0 || v > 65535 {
		ps.add(path, "%q has an invalid port", addr)
	}
}

// checkHostPort accepts "host" or "host:port", without scheme or path.
func checkHostPort(ps *problems, path, s, example string) {
	if strings.ContainsAny(s, "/@ ") {
		ps.add(path, "%q must be a host name such as %s, without scheme or path", s, example)
		return
	}
	host := s
	if h, port, err := net.SplitHostPort(s); err == nil {
		host = h
		if v, err := strconv.Atoi(port); err != nil || v < 1 || v > 65535 {
			ps.add(path, "%q has an invalid port", s)
			return
		}
	}
	if host == "" || strings.ContainsAny(host, "/:@ ") {
		ps.add(path, "%q must be a host name such as %s, without scheme or path", s, example)
	}
}

func positive(ps *problems, path string, d time.Duration) {
	if d <= 0 {
		ps.add(path, "must be positive, got %s", d)
	}
}

func oneOf(ps *problems, path, v string, allowed ...string) {
	if v == "" {
		ps.add(path, "required (one of %s)", strings.Join(allowed, ", "))
	} else if !slices.Contains(allowed, v) {
		ps.add(path, "%q is not one of %s", v, strings.Join(allowed, ", "))
	}
}

// isDomainName reports whether s is a DNS name with at least two labels.
func isDomainName(s string) bool {
	s = strings.TrimSuffix(s, ".")
	if len(s) > 253 {
		return false
	}
	labels := strings.Split(s, ".")
	if len(labels) < 2 {
		return false
	}
	for _, l := range labels {
		if !dnsLabelRe.MatchString(l) {
			return false
		}
	}
	// The top-level domain is not all digits (that would be an IP address).
	return strings.IndexFunc(labels[len(labels)-1], func(r rune) bool { return r < '0' || r > '9' }) >= 0
}

// isEmailAddress is a plain local@domain check: enough to catch a display
// name, a missing domain or a typo, not a full RFC 5322 parser.
func isEmailAddress(s string) bool {
	local, domain, ok := strings.Cut(s, "@")
	if !ok || local == "" || len(local) > 64 || strings.Contains(domain, "@") {
		return false
	}
	if strings.IndexFunc(local, func(r rune) bool {
		return unicode.IsSpace(r) || !unicode.IsPrint(r) || strings.ContainsRune(`<>()[],;:"\`, r)
	}) >= 0 {
		return false
	}
	return isDomainName(domain)
}
