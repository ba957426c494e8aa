package graph

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptrace"
	"net/url"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/mailpipe/mailpipe/internal/auth"
	"github.com/mailpipe/mailpipe/internal/outbound"
	"github.com/mailpipe/mailpipe/internal/throttle"
	"github.com/mailpipe/mailpipe/pkg/mailjob"
)

// JobIDProperty is the id of the named extended property (a string in
// mailpipe's own property set) that marks every draft the Transport
// creates, and so the mail sent from it, with the id of its job. Find a
// job's mail in Outlook's data with
// $filter=singleValueExtendedProperties/any(ep: ep/id eq '<JobIDProperty>' and ep/value eq '<job id>').
const JobIDProperty = "String {8c1f5a3e-6b2d-4e97-a0c4-3d5e7f9b1a26} Name MailpipeJobId"

const (
	// maxRequestBody: Graph refuses request bodies over 4 MB; stay under
	// 4,000,000 bytes whichever megabyte is meant.
	maxRequestBody = 4_000_000
	// maxInlineAttachment: files up to this size are attached with one
	// POST of their base64 content (about 3.87 MB of JSON); larger ones
	// through an upload session. Microsoft's threshold is "under 3 MB".
	maxInlineAttachment = 2_900_000
	// uploadChunk is the size of a PUT to an upload session: a multiple
	// of 320 KiB, under 4 MB.
	uploadChunk = 10 * (320 << 10)
	// maxChunkRetries: a PUT that failed with 5xx or a broken connection
	// is sent again (from where the session says it stands) this often.
	maxChunkRetries = 2
	// maxMarked: messages with a job's marker looked at (more than one
	// exists only after concurrent attempts of the job).
	maxMarked = 10
)

// TransportOptions configure NewTransport.
type TransportOptions struct {
	// BaseURL of Graph (default DefaultBaseURL; a national cloud's, or a
	// loopback test server's).
	BaseURL string
	// CAFile adds certificates to the system roots (a TLS-inspecting
	// proxy). Not used with HTTPClient.
	CAFile string
	// HTTPClient, when set, provides the transport (its Timeout is not
	// used).
	HTTPClient *http.Client
	// Tokens yields access tokens for Graph: app-only with scope
	// https://<graph host>/.default and the application permissions
	// Mail.Send and Mail.ReadWrite (drafts and attachments: sending
	// exactly once needs them), or delegated (Delegated true) with
	// Mail.Send.Shared and Mail.ReadWrite, the signed-in account having
	// Send As or Send on Behalf on the mailboxes it sends as.
	Tokens auth.TokenSource
	// Delegated says Tokens are delegated: drafts are then built in the
	// signed-in account's own mailbox (/me) with from set to the job's
	// mailbox. (Graph refuses upload sessions for large attachments in
	// another user's mailbox with delegated permissions.)
	Delegated bool
	// App is the throttle shared by every mailbox of the identity (the
	// importer's Sources may share it); nil gives the Transport its own.
	App *throttle.App
	// MaxConcurrency caps requests in flight per mailbox (default and
	// maximum throttle.DefaultMailboxConcurrency).
	MaxConcurrency int
	// Timeout bounds each request once it may start (default 60s).
	Timeout time.Duration
	Logger  *zap.Logger
}

// Transport sends mail through Microsoft Graph as drafts that are then
// sent, so that a retry finds what an earlier attempt did. It implements
// outbound.Transport and is safe for concurrent use.
//
// Send, for a job:
//
//  1. looks in Sent Items for a message with the job's Internet
//     Message-ID (outbound.MessageID): found, the job was sent
//     (AlreadySent);
//  2. looks in the whole mailbox for messages carrying JobIDProperty with
//     the job id: one that is no longer a draft was submitted by an
//     earlier attempt (in the Outbox, or moved out of Sent Items):
//     AlreadySent. A draft whose attachments are all there (crash
//     between building and sending) is sent as it is; an incomplete one
//     is deleted and built again (an interrupted upload cannot be
//     resumed from another process);
//  3. creates the draft (POST messages) with from, the recipients,
//     subject, body, X- headers, importance, the Message-ID and the
//     marker; attachments that the job carries inline and that come
//     first go with it;
//  4. adds the other attachments: up to 2.9 MB with one POST each,
//     larger ones through an upload session, read from the object store
//     one 3.125 MiB chunk at a time (PUTs without Authorization header;
//     a failed PUT is resumed where the session says it stands); no
//     request body exceeds 4 MB. An object's size comes from its
//     reference, or from the reader's Size() int64 method if it has one;
//     content of unknown size over 2.9 MB is spooled to a temporary file
//     first. Content longer or shorter than its size fails the job with
//     attachment_mismatch; the opener's errors wrapping
//     outbound.ErrAttachmentNotFound or ErrAttachmentMismatch fail it
//     with attachment_not_found or attachment_mismatch;
//  5. sends the draft (POST messages/{id}/send, 202): Exchange moves it
//     to Sent Items, where step 1 of a later attempt finds it.
//
// Send makes one attempt and never waits for a retry: a 429 returns
// Throttled with Graph's Retry-After (fractions kept), and pauses the
// mailbox's throttle for every request. The SDK's retry handler is not in
// the pipeline. A failure of the final send whose outcome is unknown (no
// answer, timeout, a broken connection or a 5xx after the request was
// written) is Ambiguous: the next attempt finds the mail or the draft.
//
// What the lookups cannot catch: two attempts of one job running at the
// same time (each may build and send a draft: the sender must run one
// attempt of a job at a time), and a sent copy that is gone for good (a
// hard delete, a retention policy) before a retry.
//
// Graph has one body per message: with both text and HTML the HTML is
// sent and the text dropped (clients that want plain text get the
// alternative Exchange derives from the HTML when it converts the message
// to MIME, if any). A job's save_to_sent_items=false cannot be honoured:
// a sent draft always goes to Sent Items, and that copy is what makes a
// retry safe; the Transport keeps it (and logs at debug level).
//
// With delegated tokens the drafts live in the signed-in account's
// mailbox and the sent copy lands in its Sent Items; Exchange puts one in
// the shared mailbox's Sent Items too when the mailbox has
// MessageCopyForSentAsEnabled (Send As) or MessageCopyForSendOnBehalfEnabled
// (Send on Behalf) set. Only from is set: Exchange fills sender with the
// shared mailbox (Send As) or the account (Send on Behalf).
type Transport struct {
	base      *url.URL
	tokens    auth.TokenSource
	delegated bool
	app       *throttle.App
	conc      int
	rt        http.RoundTripper
	timeout   time.Duration
	log       *zap.Logger

	mu      sync.Mutex
	clients map[string]*client
	account string // delegated: the signed-in account, once known
}

var _ outbound.Transport = (*Transport)(nil)

// NewTransport validates the options and returns a Transport. It sends
// nothing.
func NewTransport(opts TransportOptions) (*Transport, error) {
	if opts.Tokens == nil {
		return nil, errors.New("graph transport: a token source is required")
	}
	raw := strings.TrimRight(strings.TrimSpace(opts.BaseURL), "/")
	if raw == "" {
		raw = DefaultBaseURL
	}
	base, err := url.Parse(raw)
	if err != nil || base.Host == "" || (base.Scheme != "https" && !isLoopback(base.Hostname())) {
		return nil, fmt.Errorf("graph transport: base URL %q: want an https URL such as %s", opts.BaseURL, DefaultBaseURL)
	}
	hc := opts.HTTPClient
	if hc == nil {
		if hc, err = newHTTPClient(opts.CAFile); err != nil {
			return nil, fmt.Errorf("graph transport: %w", err)
		}
	}
	rt := hc.Transport
	if rt == nil {
		rt = http.DefaultTransport
	}
	log := opts.Logger
	if log == nil {
		log = zap.NewNop()
	}
	app := opts.App
	if app == nil {
		app = throttle.NewApp(throttle.AppOptions{Name: "graph-send"})
	}
	conc := opts.MaxConcurrency
	if conc <= 0 || conc > throttle.DefaultMailboxConcurrency {
		conc = throttle.DefaultMailboxConcurrency
	}
	timeout := opts.Timeout
	if timeout <= 0 {
		timeout = defaultTimeout
	}
	return &Transport{
		base: base, tokens: opts.Tokens, delegated: opts.Delegated, app: app, conc: conc, rt: rt,
		timeout: timeout, log: log, clients: map[string]*client{},
	}, nil
}

// Close releases idle connections. The Transport may be used again.
func (t *Transport) Close() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, c := range t.clients {
		c.closeIdle()
	}
	return nil
}

// clientFor returns the client of the mailbox whose data the requests
// touch (the from mailbox; with delegated tokens the account's own), with
// that mailbox's throttle.
func (t *Transport) clientFor(from string) (*client, error) {
	key := strings.ToLower(from)
	if t.delegated {
		key = "me"
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if c, ok := t.clients[key]; ok {
		return c, nil
	}
	lim := t.app.Mailbox(key, throttle.MailboxOptions{MaxConcurrency: t.conc})
	c, err := newClient(clientOptions{base: t.base, tokens: t.tokens, lim: lim, transport: t.rt, timeout: t.timeout,
		log: t.log.With(zap.String("mailbox", from))})
	if err != nil {
		return nil, err
	}
	t.clients[key] = c
	return c, nil
}

// accountName names the identity for messages: the signed-in account
// (from its token's claims) or the app.
func (t *Transport) accountName() string {
	if !t.delegated {
		return "the app"
	}
	t.mu.Lock()
	acct := t.account
	t.mu.Unlock()
	if acct != "" {
		return acct
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if tok, err := t.tokens.Token(ctx); err == nil {
		acct = tokenAccount(tok.Value)
	}
	if acct == "" {
		return "the signed-in account"
	}
	t.mu.Lock()
	t.account = acct
	t.mu.Unlock()
	return acct
}

// tokenAccount reads the account name from a JWT access token's claims
// (without verifying it: it is only used in messages).
func tokenAccount(tok string) string {
	parts := strings.Split(tok, ".")
	if len(parts) != 3 {
		return ""
	}
	b, err := base64.RawURLEncoding.DecodeString(strings.TrimRight(parts[1], "="))
	if err != nil {
		return ""
	}
	var c struct {
		UPN               string `json:"upn"`
		PreferredUsername string `json:"preferred_username"`
		UniqueName        string `json:"unique_name"`
	}
	if json.Unmarshal(b, &c) != nil {
		return ""
	}
	for _, s := range []string{c.UPN, c.PreferredUsername, c.UniqueName} {
		if s != "" {
			return s
		}
	}
	return ""
}

// Send sends the job's mail as job.From, once: see Transport. Errors are
// *outbound.Error.
func (t *Transport) Send(ctx context.Context, job *mailjob.Job, att outbound.Attachments) (outbound.Result, error) {
	if job == nil || job.JobID == "" || strings.TrimSpace(job.From) == "" {
		return outbound.Result{}, &outbound.Error{Kind: outbound.Permanent, ReasonCode: mailjob.ReasonInvalidJob,
			Err: errors.New("graph transport: a job needs job_id and from")}
	}
	op, err := t.newOp(job.From, job, att)
	if err != nil {
		return outbound.Result{}, err
	}
	res, err := op.run(ctx)
	res.Requests = int(op.requests.Load())
	if err != nil {
		op.log.Debug("send failed", zap.Int("requests", res.Requests), zap.Error(err))
	} else {
		op.log.Debug("sent", zap.Bool("already_sent", res.AlreadySent), zap.String("internet_message_id", res.InternetMessageID),
			zap.Int("requests", res.Requests))
	}
	return res, err
}

// CheckSendAs tests what can be tested without sending: an access token,
// and reading the Drafts folder the Transport would build drafts in (the
// mailbox's own with app-only tokens: it exists, the app may access it,
// and the app has a mail permission; the account's own with delegated
// tokens). It cannot test the right to send (Mail.Send, Send As or Send on
// Behalf), nor with app-only tokens the right to create drafts: the
// answer says so. Errors are *outbound.Error.
func (t *Transport) CheckSendAs(ctx context.Context, mailbox string) (string, error) {
	mailbox = strings.TrimSpace(mailbox)
	if mailbox == "" {
		return "", &outbound.Error{Kind: outbound.Permanent, ReasonCode: mailjob.ReasonInvalidJob, Err: errors.New("graph transport: no mailbox to check")}
	}
	op, err := t.newOp(mailbox, nil, nil)
	if err != nil {
		return "", err
	}
	if _, err := t.tokens.Token(ctx); err != nil {
		return "", op.fail("get an access token for "+t.base.Host, err)
	}
	if _, err := op.do(ctx, call{op: "check", method: http.MethodGet, tmpl: "/mailFolders/drafts{?%24select}",
		query: map[string]string{"%24select": "id"}}); err != nil {
		return "", op.fail("read the Drafts folder", err)
	}
	if t.delegated {
		acct := t.accountName()
		return fmt.Sprintf("access token for %s: ok; %s can use the Drafts folder of its own mailbox, where drafts are built. "+
			"Cannot verify Send As without sending: %s needs Send As or Send on Behalf on %s and the delegated permission "+
			"Mail.Send.Shared; a job will fail with send_as_denied if it is missing. Whether %s exists is not tested either",
			t.base.Host, acct, acct, mailbox, mailbox), nil
	}
	return fmt.Sprintf("access token for %s: ok; mailbox %s exists and the app may read its Drafts folder. "+
		"Not tested, as that needs a write or a send: creating drafts (application permission Mail.ReadWrite) "+
		"and sending (Mail.Send); a job will fail with send_as_denied if either is missing", t.base.Host, mailbox), nil
}

// sendOp is one Send (or CheckSendAs).
type sendOp struct {
	t    *Transport
	cl   *client
	job  *mailjob.Job
	att  outbound.Attachments
	from string
	root string // URL template of the mailbox the drafts are in
	mid  string
	log  *zap.Logger

	requests atomic.Int64
}

func (t *Transport) newOp(from string, job *mailjob.Job, att outbound.Attachments) (*sendOp, error) {
	from = strings.TrimSpace(from)
	cl, err := t.clientFor(from)
	if err != nil {
		return nil, &outbound.Error{Kind: outbound.Transient, ReasonCode: mailjob.ReasonInternal, Err: err}
	}
	op := &sendOp{t: t, cl: cl, job: job, att: att, from: from, root: "/users/{user}", log: t.log.With(zap.String("from", from))}
	if t.delegated {
		op.root = "/me"
	}
	if job != nil {
		op.mid = outbound.MessageID(job.JobID, from)
		op.log = op.log.With(zap.String("job_id", job.JobID))
	}
	return op, nil
}

// do sends one request below the drafts' mailbox; a 401 is sent again
// once with a new token (the request was not executed).
func (op *sendOp) do(ctx context.Context, c call) (*response, error) {
	params := map[string]string{"user": op.from}
	for k, v := range c.params {
		params[k] = v
	}
	c.params = params
	c.tmpl = op.root + c.tmpl
	refreshed := false
	for {
		op.requests.Add(1)
		res, err := op.cl.send(ctx, c)
		if err != nil {
			return nil, err
		}
		if res.apiErr == nil {
			return res.response, nil
		}
		if res.apiErr.Status == http.StatusUnauthorized && !refreshed {
			refreshed = true
			op.t.tokens.Invalidate()
			continue
		}
		return nil, res.apiErr
	}
}

// run is Send's flow (see Transport).
func (op *sendOp) run(ctx context.Context) (outbound.Result, error) {
	res := outbound.Result{InternetMessageID: op.mid}
	if !op.job.SavesToSentItems() {
		op.log.Debug("save_to_sent_items false is not honoured: a sent draft stays in Sent Items, where a retry looks for it")
	}
	found, err := op.findSent(ctx)
	if err != nil {
		return res, op.fail("look for an earlier send in Sent Items", err)
	}
	if found {
		res.AlreadySent = true
		return res, nil
	}
	marked, err := op.findMarked(ctx)
	if err != nil {
		return res, op.fail("look for drafts of an earlier attempt", err)
	}
	var drafts []markedMessage
	for _, m := range marked {
		if m.IsDraft {
			drafts = append(drafts, m)
			continue
		}
		res.AlreadySent = true
		if m.InternetMessageID != "" {
			res.InternetMessageID = m.InternetMessageID
		}
	}
	if res.AlreadySent {
		// Drafts besides a submitted copy come from a concurrent
		// attempt: deleting them keeps it from sending a second copy.
		for _, d := range drafts {
			if err := op.deleteDraft(ctx, d.ID); err != nil {
				op.log.Warn("could not delete a leftover draft of a sent job", zap.String("draft", d.ID), zap.Error(err))
			}
		}
		return res, nil
	}
	draftID := ""
	for _, d := range drafts {
		if draftID == "" {
			complete, err := op.complete(ctx, d.ID)
			if err != nil {
				return res, op.fail("list the attachments of the draft of an earlier attempt", err)
			}
			if complete {
				op.log.Debug("sending the complete draft of an earlier attempt", zap.String("draft", d.ID))
				draftID = d.ID
				if d.InternetMessageID != "" {
					res.InternetMessageID = d.InternetMessageID
				}
				continue
			}
		}
		op.log.Debug("deleting the incomplete draft of an earlier attempt", zap.String("draft", d.ID))
		if err := op.deleteDraft(ctx, d.ID); err != nil {
			return res, op.fail("delete the incomplete draft of an earlier attempt", err)
		}
	}
	if draftID == "" {
		id, mid, err := op.build(ctx)
		if err != nil {
			return res, err
		}
		draftID = id
		if mid != "" {
			res.InternetMessageID = mid
		}
	}
	return res, op.submit(ctx, draftID)
}

// findSent looks for the job's Message-ID in Sent Items.
func (op *sendOp) findSent(ctx context.Context) (bool, error) {
	r, err := op.do(ctx, call{op: "lookup", method: http.MethodGet,
		tmpl:  "/mailFolders/sentitems/messages{?%24filter,%24select,%24top}",
		query: map[string]string{"%24filter": "internetMessageId eq " + odataQuote(op.mid), "%24select": "id", "%24top": "1"}})
	if err != nil {
		return false, err
	}
	var page struct {
		Value []struct {
			ID string `json:"id"`
		} `json:"value"`
	}
	if err := decode(r, &page); err != nil {
		return false, err
	}
	return len(page.Value) > 0, nil
}

type markedMessage struct {
	ID                string `json:"id"`
	IsDraft           bool   `json:"isDraft"`
	InternetMessageID string `json:"internetMessageId"`
}

// findMarked lists the messages of the mailbox (any folder) that carry
// the job's marker.
func (op *sendOp) findMarked(ctx context.Context) ([]markedMessage, error) {
	filter := "singleValueExtendedProperties/any(ep: ep/id eq " + odataQuote(JobIDProperty) +
		" and ep/value eq " + odataQuote(op.job.JobID) + ")"
	r, err := op.do(ctx, call{op: "lookup", method: http.MethodGet, tmpl: "/messages{?%24filter,%24select,%24top}",
		query: map[string]string{"%24filter": filter, "%24select": "id,isDraft,internetMessageId", "%24top": itoa(maxMarked)}})
	if err != nil {
		return nil, err
	}
	var page struct {
		Value []markedMessage `json:"value"`
	}
	if err := decode(r, &page); err != nil {
		return nil, err
	}
	return page.Value, nil
}

// complete reports whether a draft has all the job's attachments (by
// name). An attachment appears only once it is whole, and the Transport
// adds nothing else, so a draft with as many attachments of the same
// names is the one an earlier attempt finished building.
func (op *sendOp) complete(ctx context.Context, id string) (bool, error) {
	r, err := op.do(ctx, call{op: "lookup", method: http.MethodGet, tmpl: "/messages/{id}/attachments{?%24select}",
		params: map[string]string{"id": id}, query: map[string]string{"%24select": "id,name"}})
	if err != nil {
		return false, err
	}
	var page struct {
		Value []struct {
			Name string `json:"name"`
		} `json:"value"`
	}
	if err := decode(r, &page); err != nil {
		return false, err
	}
	if len(page.Value) != len(op.job.Attachments) {
		return false, nil
	}
	want := map[string]int{}
	for _, a := range op.job.Attachments {
		want[a.Filename]++
	}
	for _, a := range page.Value {
		if want[a.Name]--; want[a.Name] < 0 {
			return false, nil
		}
	}
	return true, nil
}

func (op *sendOp) deleteDraft(ctx context.Context, id string) error {
	_, err := op.do(ctx, call{op: "delete", method: http.MethodDelete, tmpl: "/messages/{id}", params: map[string]string{"id": id}})
	if isItemNotFound(err) {
		return nil
	}
	return err
}

// Graph's JSON for drafts and attachments.
type (
	gAddress struct {
		Address string `json:"address"`
		Name    string `json:"name,omitempty"`
	}
	gRecipient struct {
		EmailAddress gAddress `json:"emailAddress"`
	}
	gBody struct {
		ContentType string `json:"contentType"`
		Content     string `json:"content"`
	}
	gHeader struct {
		Name  string `json:"name"`
		Value string `json:"value"`
	}
	gProperty struct {
		ID    string `json:"id"`
		Value string `json:"value"`
	}
	gFileAttachment struct {
		ODataType    string `json:"@odata.type"`
		Name         string `json:"name"`
		ContentType  string `json:"contentType,omitempty"`
		ContentBytes string `json:"contentBytes"`
		IsInline     bool   `json:"isInline"`
		ContentID    string `json:"contentId,omitempty"`
	}
	gDraft struct {
		Subject           string            `json:"subject"`
		Body              gBody             `json:"body"`
		From              *gRecipient       `json:"from,omitempty"`
		To                []gRecipient      `json:"toRecipients,omitempty"`
		Cc                []gRecipient      `json:"ccRecipients,omitempty"`
		Bcc               []gRecipient      `json:"bccRecipients,omitempty"`
		ReplyTo           []gRecipient      `json:"replyTo,omitempty"`
		Headers           []gHeader         `json:"internetMessageHeaders,omitempty"`
		Importance        string            `json:"importance,omitempty"`
		InternetMessageID string            `json:"internetMessageId"`
		Properties        []gProperty       `json:"singleValueExtendedProperties"`
		Attachments       []gFileAttachment `json:"attachments,omitempty"`
	}
	gAttachmentItem struct {
		AttachmentType string `json:"attachmentType"`
		Name           string `json:"name"`
		Size           int64  `json:"size"`
		ContentType    string `json:"contentType,omitempty"`
		IsInline       bool   `json:"isInline"`
		ContentID      string `json:"contentId,omitempty"`
	}
)

func recipients(rs []mailjob.Recipient) []gRecipient {
	var out []gRecipient
	for _, r := range rs {
		out = append(out, gRecipient{EmailAddress: gAddress{Address: r.Address, Name: r.Name}})
	}
	return out
}

// draft is the job as a Graph message, without attachments.
func (op *sendOp) draft() *gDraft {
	j := op.job
	d := &gDraft{
		Subject:           j.Subject,
		Body:              gBody{ContentType: "text", Content: j.Text},
		From:              &gRecipient{EmailAddress: gAddress{Address: j.From}},
		To:                recipients(j.To),
		Cc:                recipients(j.Cc),
		Bcc:               recipients(j.Bcc),
		ReplyTo:           recipients(j.ReplyTo),
		InternetMessageID: op.mid,
		Properties:        []gProperty{{ID: JobIDProperty, Value: j.JobID}},
	}
	if j.HTML != "" {
		// One body per Graph message: the HTML one, the text is dropped.
		d.Body = gBody{ContentType: "html", Content: j.HTML}
	}
	if j.Importance != "" {
		d.Importance = string(j.Importance)
	}
	names := make([]string, 0, len(j.Headers))
	for k := range j.Headers {
		names = append(names, k)
	}
	sort.Strings(names)
	for _, k := range names {
		d.Headers = append(d.Headers, gHeader{Name: k, Value: j.Headers[k]})
	}
	return d
}

func fileAttachment(a *mailjob.Attachment, b64 string) gFileAttachment {
	return gFileAttachment{ODataType: "#microsoft.graph.fileAttachment", Name: a.Filename, ContentType: a.ContentType,
		ContentBytes: b64, IsInline: a.Inline, ContentID: a.ContentID}
}

// jsonSize is the length of v in JSON plus extra bytes of base64 content
// left out of v (base64 needs no escaping).
func jsonSize(v any, extra int) int {
	b, err := json.Marshal(v)
	if err != nil {
		return maxRequestBody + 1
	}
	return len(b) + extra
}

// inJob reports whether a is content carried in the job small enough to
// go with one POST.
func inJob(a *mailjob.Attachment) bool {
	return a.Object == nil && base64.StdEncoding.DecodedLen(len(a.ContentBase64)) <= maxInlineAttachment
}

// build creates the draft and adds the attachments; it returns the
// draft's id and the Message-ID Graph stored.
func (op *sendOp) build(ctx context.Context) (string, string, error) {
	atts := op.job.Attachments
	d := op.draft()
	bare := jsonSize(d, 0)
	if bare > maxRequestBody {
		return "", "", op.permanent(mailjob.ReasonMessageTooLarge, "create the draft: the message without attachments is %d bytes of JSON; Graph takes at most 4 MB per request", bare)
	}
	// Attachments carried in the job that come first go with the draft
	// (in order) while the request stays under the limit.
	size, n := bare, 0
	for n < len(atts) && inJob(&atts[n]) {
		meta := fileAttachment(&atts[n], "")
		add := jsonSize(meta, len(atts[n].ContentBase64)) + 1
		if size+add > maxRequestBody {
			break
		}
		size += add
		d.Attachments = append(d.Attachments, fileAttachment(&atts[n], atts[n].ContentBase64))
		n++
	}
	r, err := op.do(ctx, call{op: "create", method: http.MethodPost, tmpl: "/messages", body: d})
	if err != nil {
		return "", "", op.fail("create the draft", err)
	}
	var created struct {
		ID                string `json:"id"`
		InternetMessageID string `json:"internetMessageId"`
	}
	if err := decode(r, &created); err != nil || created.ID == "" {
		if err == nil {
			err = errors.New("no id in the answer")
		}
		return "", "", op.fail("create the draft", err)
	}
	op.log.Debug("draft created", zap.String("draft", created.ID), zap.Int("attachments_with_it", n))
	for i := n; i < len(atts); i++ {
		if err := op.attach(ctx, created.ID, &atts[i]); err != nil {
			return "", "", err
		}
	}
	return created.ID, created.InternetMessageID, nil
}

// attach adds one attachment to the draft.
func (op *sendOp) attach(ctx context.Context, id string, a *mailjob.Attachment) error {
	if a.Object == nil {
		if inJob(a) {
			return op.postAttachment(ctx, id, a, a.ContentBase64)
		}
		data, err := base64.StdEncoding.DecodeString(a.ContentBase64)
		if err != nil {
			return op.permanent(mailjob.ReasonInvalidJob, "attachment %q: content_base64 is not valid base64", a.Filename)
		}
		return op.upload(ctx, id, a, bytes.NewReader(data), int64(len(data)))
	}
	if op.att == nil {
		return &outbound.Error{Kind: outbound.Transient, ReasonCode: mailjob.ReasonInternal,
			Err: fmt.Errorf("attachment %q refers to an object but the sender gave no way to open objects", a.Filename)}
	}
	rc, err := op.att(ctx, *a.Object)
	if err != nil {
		return op.attachmentErr(a, err)
	}
	defer rc.Close()
	var r io.Reader = rc
	size := a.Object.Size
	if sz, ok := rc.(interface{ Size() int64 }); ok && size <= 0 {
		size = sz.Size()
	}
	if size <= 0 {
		var cleanup func()
		if r, size, cleanup, err = measure(rc); err != nil {
			return op.attachmentErr(a, err)
		}
		defer cleanup()
	}
	if size <= maxInlineAttachment {
		data := make([]byte, size)
		if err := readExactly(r, data, true); err != nil {
			return op.attachmentErr(a, err)
		}
		return op.postAttachment(ctx, id, a, base64.StdEncoding.EncodeToString(data))
	}
	return op.upload(ctx, id, a, r, size)
}

// errShort and errLong describe content that is not as long as its
// reference says.
var (
	errShort = fmt.Errorf("the content is shorter than its size: %w", outbound.ErrAttachmentMismatch)
	errLong  = fmt.Errorf("the content is longer than its size: %w", outbound.ErrAttachmentMismatch)
)

// readExactly fills p from r; with last it also makes sure r ends there
// (reading to the end lets the opener's reader check the SHA-256).
func readExactly(r io.Reader, p []byte, last bool) error {
	if _, err := io.ReadFull(r, p); err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return errShort
		}
		return err
	}
	if !last {
		return nil
	}
	var one [1]byte
	switch _, err := io.ReadFull(r, one[:]); {
	case err == nil:
		return errLong
	case errors.Is(err, io.EOF):
		return nil
	default:
		return err
	}
}

// measure finds the size of content whose reference does not give it:
// small content is read into memory, larger content spooled to a
// temporary file.
func measure(r io.Reader) (io.Reader, int64, func(), error) {
	nop := func() {}
	buf, err := io.ReadAll(io.LimitReader(r, maxInlineAttachment+1))
	if err != nil {
		return nil, 0, nop, err
	}
	if len(buf) <= maxInlineAttachment {
		return bytes.NewReader(buf), int64(len(buf)), nop, nil
	}
	f, err := os.CreateTemp("", "mailpipe-attachment-*")
	if err != nil {
		return nil, 0, nop, fmt.Errorf("spool an attachment of unknown size: %w", err)
	}
	cleanup := func() {
		f.Close()
		os.Remove(f.Name())
	}
	n, err := io.Copy(f, io.MultiReader(bytes.NewReader(buf), r))
	if err == nil {
		_, err = f.Seek(0, io.SeekStart)
	}
	if err != nil {
		cleanup()
		return nil, 0, nop, fmt.Errorf("spool an attachment of unknown size: %w", err)
	}
	return f, n, cleanup, nil
}

func (op *sendOp) postAttachment(ctx context.Context, id string, a *mailjob.Attachment, b64 string) error {
	fa := fileAttachment(a, b64)
	if n := jsonSize(fileAttachment(a, ""), len(b64)); n > maxRequestBody {
		return op.permanent(mailjob.ReasonMessageTooLarge, "attachment %q: %d bytes of JSON; Graph takes at most 4 MB per request", a.Filename, n)
	}
	_, err := op.do(ctx, call{op: "attach", method: http.MethodPost, tmpl: "/messages/{id}/attachments",
		params: map[string]string{"id": id}, body: fa})
	if err != nil {
		return op.fail(fmt.Sprintf("attach %q", a.Filename), err)
	}
	return nil
}

var chunkPool = sync.Pool{New: func() any { b := make([]byte, uploadChunk); return &b }}

// upload attaches size bytes of r through an upload session, one chunk in
// memory at a time.
func (op *sendOp) upload(ctx context.Context, id string, a *mailjob.Attachment, r io.Reader, size int64) error {
	step := fmt.Sprintf("upload attachment %q", a.Filename)
	res, err := op.do(ctx, call{op: "upload", method: http.MethodPost, tmpl: "/messages/{id}/attachments/createUploadSession",
		params: map[string]string{"id": id},
		body: map[string]any{"AttachmentItem": gAttachmentItem{AttachmentType: "file", Name: a.Filename, Size: size,
			ContentType: a.ContentType, IsInline: a.Inline, ContentID: a.ContentID}}})
	if err != nil {
		return op.fail(step+": create the upload session", err)
	}
	var sess struct {
		UploadURL string `json:"uploadUrl"`
	}
	if err := decode(res, &sess); err != nil {
		return op.fail(step+": create the upload session", err)
	}
	u, err := url.Parse(sess.UploadURL)
	if err != nil || u.Host == "" || (u.Scheme != "https" && !isLoopback(u.Hostname())) {
		return op.fail(step, fmt.Errorf("the upload session's URL is not an https URL (%d characters)", len(sess.UploadURL)))
	}
	bp := chunkPool.Get().(*[]byte)
	defer chunkPool.Put(bp)
	var off int64
	for off < size {
		n := min(int64(uploadChunk), size-off)
		chunk := (*bp)[:n]
		if err := readExactly(r, chunk, off+n == size); err != nil {
			return op.attachmentErr(a, err)
		}
		if err := op.putChunk(ctx, sess.UploadURL, chunk, off, size); err != nil {
			return op.fail(fmt.Sprintf("%s (bytes %d-%d of %d)", step, off, off+n-1, size), err)
		}
		off += n
	}
	op.log.Debug("attachment uploaded", zap.String("name", a.Filename), zap.Int64("size", size))
	return nil
}

// putResult is the answer to a PUT of a chunk.
type putResult struct {
	done bool  // 201: the attachment is complete
	next int64 // the next byte the session expects; -1 if not said
}

// putChunk uploads data as bytes start.. of total. After a 5xx or a broken
// connection it asks the session where it stands and sends the rest of
// the chunk again (at most maxChunkRetries times).
func (op *sendOp) putChunk(ctx context.Context, uploadURL string, data []byte, start, total int64) error {
	for retries := 0; ; retries++ {
		end := start + int64(len(data))
		pr, err := op.put(ctx, uploadURL, data, start, total)
		if err == nil {
			switch {
			case pr.done || pr.next < 0 || pr.next == end:
				return nil
			case pr.next > start && pr.next < end:
				data, start = data[pr.next-start:], pr.next
				continue
			default:
				return fmt.Errorf("the upload session expects byte %d, but the chunk sent was bytes %d-%d", pr.next, start, end-1)
			}
		}
		if retries >= maxChunkRetries || !chunkRetryable(ctx, err) {
			return err
		}
		var ae *apiError
		if !errors.As(err, &ae) {
			// The throttle pauses after 503/504 itself; not after a
			// broken connection.
			op.cl.lim.Pause(throttle.Backoff(retries+1, jitter()))
		}
		next, serr := op.sessionState(ctx, uploadURL)
		if serr != nil {
			op.log.Debug("could not ask the upload session where it stands", zap.Error(serr))
			return err
		}
		switch {
		case next == end:
			return nil // taken; the answer was lost
		case next >= start && next < end:
			op.log.Debug("resending a chunk", zap.Int64("from", next), zap.Error(err))
			data, start = data[next-start:], next
		default:
			return fmt.Errorf("%w; the upload session now expects byte %d, outside the chunk (bytes %d-%d)", err, next, start, end-1)
		}
	}
}

func chunkRetryable(ctx context.Context, err error) bool {
	if ctx.Err() != nil || isTokenError(err) || isTLSError(err) {
		return false
	}
	var ae *apiError
	if errors.As(err, &ae) {
		return ae.Status >= 500 || ae.Status == http.StatusRequestTimeout
	}
	return true
}

// uploadRequest sends a request to an upload session's pre-authenticated
// URL: no Authorization header (the request does not go through the SDK's
// authentication provider), through the mailbox's throttle. Errors never
// contain the URL (it carries a token).
func (op *sendOp) uploadRequest(ctx context.Context, method, uploadURL string, body []byte, header http.Header) (*http.Response, []byte, error) {
	rctx := context.WithValue(ctx, reqInfoKey{}, reqInfo{op: "upload"})
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(rctx, method, uploadURL, rd)
	if err != nil {
		return nil, nil, errors.New("bad upload session URL")
	}
	for k, v := range header {
		req.Header[k] = v
	}
	op.requests.Add(1)
	resp, err := op.cl.http.Do(req)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return nil, nil, fmt.Errorf("%s to the upload session: %w", method, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxErrorBody))
	if err != nil {
		return nil, nil, fmt.Errorf("%s to the upload session: reading the answer: %w", method, err)
	}
	if resp.StatusCode >= 300 {
		return resp, nil, parseAPIError(method, resp.StatusCode, resp.Header, b)
	}
	return resp, b, nil
}

func (op *sendOp) put(ctx context.Context, uploadURL string, data []byte, start, total int64) (putResult, error) {
	h := http.Header{}
	h.Set("Content-Type", "application/octet-stream")
	h.Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", start, start+int64(len(data))-1, total))
	resp, body, err := op.uploadRequest(ctx, http.MethodPut, uploadURL, data, h)
	if err != nil {
		return putResult{}, err
	}
	if resp.StatusCode == http.StatusCreated {
		return putResult{done: true}, nil
	}
	return putResult{next: nextExpected(body)}, nil
}

// sessionState asks an upload session for the next byte it expects.
func (op *sendOp) sessionState(ctx context.Context, uploadURL string) (int64, error) {
	_, body, err := op.uploadRequest(ctx, http.MethodGet, uploadURL, nil, nil)
	if err != nil {
		return 0, err
	}
	n := nextExpected(body)
	if n < 0 {
		return 0, errors.New("the upload session did not say which byte it expects")
	}
	return n, nil
}

// nextExpected reads nextExpectedRanges ("N", "N-" or "N-M"; Outlook
// sends one value) from an upload session's answer; -1 if absent.
func nextExpected(body []byte) int64 {
	var s struct {
		Next  []string `json:"nextExpectedRanges"`
		NextO []string `json:"NextExpectedRanges"`
	}
	if json.Unmarshal(body, &s) != nil {
		return -1
	}
	r := append(s.Next, s.NextO...)
	if len(r) == 0 {
		return -1
	}
	first, _, _ := strings.Cut(r[0], "-")
	n, err := strconv.ParseInt(strings.TrimSpace(first), 10, 64)
	if err != nil || n < 0 {
		return -1
	}
	return n
}

// submit sends the draft. A failure after the request may have reached
// Graph is Ambiguous.
func (op *sendOp) submit(ctx context.Context, id string) error {
	var written atomic.Bool
	trace := &httptrace.ClientTrace{
		WroteHeaders: func() { written.Store(true) },
		WroteRequest: func(httptrace.WroteRequestInfo) { written.Store(true) },
	}
	_, err := op.do(httptrace.WithClientTrace(ctx, trace), call{op: "send", method: http.MethodPost, tmpl: "/messages/{id}/send",
		params: map[string]string{"id": id}})
	if err == nil {
		return nil
	}
	var ae *apiError
	switch {
	case errors.As(err, &ae):
		if ae.Status < 500 && ae.Status != http.StatusRequestTimeout {
			return op.fail("send the draft", err) // refused: not sent
		}
	case isTokenError(err) || !written.Load():
		return op.fail("send the draft", err) // never left
	}
	return &outbound.Error{Kind: outbound.Ambiguous, ReasonCode: mailjob.ReasonGraphUnavailable,
		Err: fmt.Errorf("send as %s: send the draft: %w (the mail may have been sent: the next attempt looks for it before sending)", op.from, err)}
}

// attachmentErr classifies a failure of the object store or of content
// that does not match its reference.
func (op *sendOp) attachmentErr(a *mailjob.Attachment, err error) error {
	var oe *outbound.Error
	if errors.As(err, &oe) {
		return err
	}
	e := &outbound.Error{Kind: outbound.Transient, ReasonCode: mailjob.ReasonInternal}
	switch {
	case errors.Is(err, outbound.ErrAttachmentNotFound):
		e.Kind, e.ReasonCode = outbound.Permanent, mailjob.ReasonAttachmentNotFound
	case errors.Is(err, outbound.ErrAttachmentMismatch):
		e.Kind, e.ReasonCode = outbound.Permanent, mailjob.ReasonAttachmentMismatch
	}
	where := ""
	if a.Object != nil {
		where = fmt.Sprintf(" (object %s in bucket %s)", a.Object.Name, a.Object.Bucket)
	}
	e.Err = fmt.Errorf("attachment %q%s: %w", a.Filename, where, err)
	return e
}

func (op *sendOp) permanent(reason, format string, args ...any) error {
	return &outbound.Error{Kind: outbound.Permanent, ReasonCode: reason,
		Err: fmt.Errorf("send as %s: "+format, append([]any{op.from}, args...)...)}
}

// fail classifies a failed step as an *outbound.Error.
func (op *sendOp) fail(step string, err error) error {
	var oe *outbound.Error
	if errors.As(err, &oe) {
		return err
	}
	e := &outbound.Error{Kind: outbound.Transient, ReasonCode: mailjob.ReasonGraphUnavailable}
	hint := ""
	var ae *apiError
	var te *auth.Error
	switch {
	case errors.As(err, &ae):
		e.Kind, e.ReasonCode, hint = op.classify(ae)
		if e.Kind == outbound.Throttled {
			e.RetryAfter = ae.RetryAfter
			if e.RetryAfter <= 0 {
				e.RetryAfter = time.Second
			}
		}
	case errors.As(err, &te):
		e.ReasonCode = mailjob.ReasonAuthFailed
		if te.Permanent {
			e.Kind = outbound.Auth
		}
	case isTLSError(err):
		hint = fmt.Sprintf("the TLS certificate of %s is not trusted: a TLS-inspecting proxy needs its CA in the CA file", op.t.base.Host)
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		e.ReasonCode = mailjob.ReasonInternal
	}
	if hint != "" {
		e.Err = fmt.Errorf("send as %s: %s: %w; %s", op.from, step, err, hint)
	} else {
		e.Err = fmt.Errorf("send as %s: %s: %w", op.from, step, err)
	}
	return e
}

// classify maps a Graph error answer to a kind, a reason code and a hint.
func (op *sendOp) classify(ae *apiError) (outbound.Kind, string, string) {
	code := strings.ToLower(ae.Code)
	switch code {
	case "errorsendasdenied":
		return outbound.Auth, mailjob.ReasonSendAsDenied, op.hintSendAs()
	case "errorinvaliduser", "mailboxnotenabledforrestapi", "mailboxnotsupportedforrestapi", "errornonexistentmailbox",
		"request_resourcenotfound":
		return outbound.Permanent, mailjob.ReasonMailboxNotFound, op.hintMailbox()
	case "invalidinternetmessageheader":
		return outbound.Permanent, mailjob.ReasonInvalidJob, "Exchange takes only custom headers named X-..."
	case "errorinvalidrecipients", "errorinvalidrecipientsinternal", "errorrecipientnotfound":
		return outbound.Permanent, mailjob.ReasonRecipientRejected, ""
	case "errormessagesizeexceeded", "errorattachmentsizelimitexceeded", "requestentitytoolarge":
		return outbound.Permanent, mailjob.ReasonMessageTooLarge, "the mailbox's maximum send size (35 MB by default, measured encoded) is too small for it"
	case "errorserverbusy", "applicationthrottled", "errorexceededmessagelimit":
		return outbound.Throttled, mailjob.ReasonThrottled, ""
	case "errormessagesubmissionblocked":
		return outbound.Auth, mailjob.ReasonSendAsDenied, fmt.Sprintf("Exchange blocks submissions from %s (a restricted sender: an administrator must release it)", op.from)
	case "invalidauthenticationtoken":
		return outbound.Auth, mailjob.ReasonAuthFailed, op.hintToken()
	case "erroraccessdenied", "authorization_requestdenied":
		return outbound.Auth, mailjob.ReasonSendAsDenied, op.hintPermission()
	}
	switch {
	case ae.Status == http.StatusTooManyRequests:
		return outbound.Throttled, mailjob.ReasonThrottled, ""
	case ae.Status == http.StatusRequestEntityTooLarge:
		return outbound.Permanent, mailjob.ReasonMessageTooLarge, ""
	case ae.Status == http.StatusUnauthorized:
		return outbound.Auth, mailjob.ReasonAuthFailed, op.hintToken()
	case ae.Status == http.StatusForbidden:
		return outbound.Auth, mailjob.ReasonSendAsDenied, op.hintPermission()
	case ae.Status >= 500, ae.Status == http.StatusRequestTimeout, ae.Status == http.StatusNotFound,
		ae.Status == http.StatusConflict, ae.Status == http.StatusFailedDependency:
		// A 404 here is the draft or the upload session gone from
		// under the attempt: the next one builds it again.
		return outbound.Transient, mailjob.ReasonGraphUnavailable, ""
	}
	// An unexpected refusal: retried until the sender gives up.
	return outbound.Transient, mailjob.ReasonInternal, ""
}

func (op *sendOp) hintSendAs() string {
	acct := op.t.accountName()
	if op.t.delegated {
		return fmt.Sprintf("%s has neither Send As nor Send on Behalf on mailbox %s: an Exchange administrator must grant one "+
			"(Add-RecipientPermission -Identity %s -Trustee %s -AccessRights SendAs, or Set-Mailbox %s -GrantSendOnBehalfTo @{Add=\"%s\"})",
			acct, op.from, op.from, acct, op.from, acct)
	}
	return fmt.Sprintf("Exchange refused to let the app send as %s although it sends from that mailbox itself; "+
		"check the scope of its RBAC for Applications role assignment or application access policy", op.from)
}

func (op *sendOp) hintPermission() string {
	if op.t.delegated {
		return fmt.Sprintf("%s needs the delegated permissions Mail.ReadWrite (drafts in its own mailbox) and Mail.Send.Shared, consented",
			op.t.accountName())
	}
	return fmt.Sprintf("the app needs the Microsoft Graph application permissions Mail.ReadWrite (drafts, attachments: sending exactly once "+
		"builds a draft) and Mail.Send, with admin consent, and access to %s if an application access policy or RBAC for Applications limits it",
		op.from)
}

func (op *sendOp) hintToken() string {
	host := op.t.base.Hostname()
	return fmt.Sprintf("the access token was rejected even after getting a new one: it must be a Microsoft Graph token for %s "+
		"(scope https://%s/.default), from the tenant of the mailbox", host, host)
}

func (op *sendOp) hintMailbox() string {
	return fmt.Sprintf("mailbox %s was not found or cannot be used over Graph: it must be an Exchange Online mailbox (not on-premises); "+
		"a user mailbox must be licensed", op.from)
}
