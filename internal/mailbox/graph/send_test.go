package graph_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mailpipe/mailpipe/internal/mailbox/graph"
	"github.com/mailpipe/mailpipe/internal/outbound"
	"github.com/mailpipe/mailpipe/internal/testenv/graphfake"
	"github.com/mailpipe/mailpipe/internal/throttle"
	"github.com/mailpipe/mailpipe/pkg/mailjob"
)

const (
	sendTokApp      = "h.send-app.s"  // Mail.ReadWrite, Mail.Send
	sendTokSendOnly = "h.send-only.s" // Mail.Send alone
	sendUser        = "svc-send@contoso.test"
	customer        = "customer@example.test"
)

// sendTokDelegated is a delegated token of sendUser, JWT-shaped so that
// the transport can read the account's name from it.
var sendTokDelegated = "eyJhbGciOiJub25lIn0." +
	base64.RawURLEncoding.EncodeToString([]byte(`{"upn":"`+sendUser+`"}`)) + ".sig"

func sendClaims() map[string]graphfake.Claims {
	return map[string]graphfake.Claims{
		sendTokApp:      {Audience: graphfake.ResourceGraph, AppID: appID, Roles: []string{"Mail.ReadWrite", "Mail.Send"}},
		sendTokSendOnly: {Audience: graphfake.ResourceGraph, AppID: appID, Roles: []string{"Mail.Send"}},
		sendTokDelegated: {Audience: graphfake.ResourceGraph, AppID: appID, UPN: sendUser,
			Scopes: []string{"Mail.ReadWrite", "Mail.Send.Shared"}},
	}
}

// wire sits under the transport's pipeline and sees every request as it
// goes out.
type wire struct {
	base http.RoundTripper
	// acked counts body bytes of PUTs Graph answered with success.
	acked atomic.Int64

	mu        sync.Mutex
	maxBody   int64
	unsized   int // requests with a body of unknown length
	authOnPut int
	puts      int
	asks      int // GETs of an upload session's state
}

func (w *wire) RoundTrip(req *http.Request) (*http.Response, error) {
	w.mu.Lock()
	if req.Body != nil && req.Body != http.NoBody && req.ContentLength < 0 {
		w.unsized++
	}
	w.maxBody = max(w.maxBody, req.ContentLength)
	if req.Method == http.MethodGet && strings.Contains(req.URL.Path, "AttachmentSessions") {
		w.asks++
	}
	if req.Method == http.MethodPut {
		w.puts++
		if req.Header.Get("Authorization") != "" {
			w.authOnPut++
		}
	}
	w.mu.Unlock()
	resp, err := w.base.RoundTrip(req)
	if err == nil && req.Method == http.MethodPut && resp.StatusCode < 300 {
		w.acked.Add(req.ContentLength)
	}
	return resp, err
}

type sendEnv struct {
	t    *testing.T
	g    *graphfake.Server
	tr   *graph.Transport
	w    *wire
	from string
}

var sendBoxes atomic.Int64

// newSendEnv starts a fake with a shared mailbox to send as (and the
// delegated account's mailbox) and a Transport using tok.
func newSendEnv(t *testing.T, tok string) *sendEnv {
	t.Helper()
	g, err := graphfake.Start(graphfake.Options{ValidateToken: graphfake.StaticTokens(sendClaims())})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(g.Close)
	from := fmt.Sprintf("billing%d@contoso.test", sendBoxes.Add(1))
	g.AddMailbox(from, graphfake.MailboxOptions{DisplayName: "Billing"})
	g.AddMailbox(sendUser, graphfake.MailboxOptions{DisplayName: "Send service"})
	w := &wire{base: g.HTTPClient().Transport}
	tr, err := graph.NewTransport(graph.TransportOptions{
		BaseURL: g.BaseURL(), HTTPClient: &http.Client{Transport: w}, Tokens: staticTokens{tok},
		Delegated: tok == sendTokDelegated, App: throttle.NewApp(throttle.AppOptions{Name: "send-test"}),
		Timeout: 30 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tr.Close() })
	return &sendEnv{t: t, g: g, tr: tr, w: w, from: from}
}

func (e *sendEnv) job(id string) *mailjob.Job {
	return &mailjob.Job{
		JobID:   id,
		From:    e.from,
		To:      []mailjob.Recipient{{Address: customer, Name: "Customer, Accounts Payable"}},
		Subject: "Invoice " + id,
		Text:    "Please find the invoice attached.",
	}
}

func (e *sendEnv) send(job *mailjob.Job, att outbound.Attachments) (outbound.Result, error) {
	e.t.Helper()
	return e.tr.Send(ctxOf(e.t), job, att)
}

func (e *sendEnv) mustSend(job *mailjob.Job, att outbound.Attachments) outbound.Result {
	e.t.Helper()
	res, err := e.send(job, att)
	if err != nil {
		e.t.Fatalf("send %s: %v", job.JobID, err)
	}
	return res
}

// checkWire asserts what every test's requests must respect.
func (e *sendEnv) checkWire() {
	e.t.Helper()
	e.w.mu.Lock()
	defer e.w.mu.Unlock()
	if e.w.maxBody > 4_000_000 || e.w.unsized > 0 {
		e.t.Errorf("largest request body %d bytes, %d of unknown length", e.w.maxBody, e.w.unsized)
	}
	if e.w.authOnPut > 0 {
		e.t.Errorf("%d PUTs to upload sessions carried an Authorization header", e.w.authOnPut)
	}
}

func wantErr(t *testing.T, err error, kind outbound.Kind, reason string, contains ...string) *outbound.Error {
	t.Helper()
	var oe *outbound.Error
	if !errors.As(err, &oe) {
		t.Fatalf("want a %s %s *outbound.Error, got %T %v", kind, reason, err, err)
	}
	if oe.Kind != kind || oe.ReasonCode != reason {
		t.Fatalf("want %s (%s), got %v", kind, reason, err)
	}
	for _, c := range contains {
		if !strings.Contains(strings.ToLower(err.Error()), strings.ToLower(c)) {
			t.Errorf("error does not mention %q: %v", c, err)
		}
	}
	return oe
}

// gen is deterministic content of any size, produced as it is read.
func genByte(seed uint64, i int64) byte {
	x := (uint64(i) + seed) * 0x9E3779B97F4A7C15
	return byte(x>>56) ^ byte(x>>23)
}

func genBytes(seed uint64, size int64) []byte {
	b := make([]byte, size)
	for i := range b {
		b[i] = genByte(seed, int64(i))
	}
	return b
}

type genReader struct {
	seed   uint64
	size   int64
	off    int64
	onRead func(off int64)
	closed *atomic.Int64
}

func (g *genReader) Read(p []byte) (int, error) {
	if g.off >= g.size {
		return 0, io.EOF
	}
	n := int(min(int64(len(p)), g.size-g.off, 64<<10))
	for i := range n {
		p[i] = genByte(g.seed, g.off+int64(i))
	}
	g.off += int64(n)
	if g.onRead != nil {
		g.onRead(g.off)
	}
	return n, nil
}

func (g *genReader) Close() error {
	if g.closed != nil {
		g.closed.Add(1)
	}
	return nil
}

// store is a stand-in for the object store.
type store struct {
	mu      sync.Mutex
	objects map[string]*genReader // templates by name
	opened  atomic.Int64
	closed  atomic.Int64
	open    func(ctx context.Context, ref mailjob.ObjectRef) error
}

func newStore() *store { return &store{objects: map[string]*genReader{}} }

// put adds an object of size bytes; the ref says refSize.
func (s *store) put(name string, seed uint64, size, refSize int64) mailjob.ObjectRef {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.objects[name] = &genReader{seed: seed, size: size}
	return mailjob.ObjectRef{Bucket: "attachments", Name: name, Size: refSize}
}

func (s *store) opener(onRead func(off int64)) outbound.Attachments {
	return func(ctx context.Context, ref mailjob.ObjectRef) (io.ReadCloser, error) {
		s.opened.Add(1)
		if s.open != nil {
			if err := s.open(ctx, ref); err != nil {
				return nil, err
			}
		}
		s.mu.Lock()
		o := s.objects[ref.Name]
		s.mu.Unlock()
		if o == nil {
			return nil, fmt.Errorf("object %s: %w", ref.Name, outbound.ErrAttachmentNotFound)
		}
		r := &genReader{seed: o.seed, size: o.size, onRead: onRead, closed: &s.closed}
		if strings.HasPrefix(ref.Name, "sized-") {
			return sizedReader{r}, nil
		}
		return r, nil
	}
}

// sizedReader tells its size, as an object store's reader can.
type sizedReader struct{ *genReader }

func (s sizedReader) Size() int64 { return s.size }

func sum(b []byte) [32]byte { return sha256.Sum256(b) }

func TestSendSmallJob(t *testing.T) {
	e := newSendEnv(t, sendTokApp)
	job := e.job("erp-invoice-2026-0142")
	job.Cc = []mailjob.Recipient{{Address: "cc@example.test"}}
	job.Bcc = []mailjob.Recipient{{Address: "audit@example.test"}}
	job.ReplyTo = []mailjob.Recipient{{Address: "ap@contoso.test", Name: "AP"}}
	job.Importance = mailjob.ImportanceHigh
	job.Attachments = []mailjob.Attachment{mailjob.InlineAttachment("note.txt", "text/plain", []byte("small note"))}
	res := e.mustSend(job, nil)
	mid := outbound.MessageID(job.JobID, job.From)
	if res.AlreadySent || res.InternetMessageID != mid {
		t.Fatalf("result %+v, want Message-ID %s", res, mid)
	}
	// Sent Items lookup, marker lookup, draft (with the small attachment), send.
	if res.Requests != 4 {
		t.Errorf("%d requests, want 4", res.Requests)
	}
	si := e.g.SentItems(e.from)
	if len(si) != 1 || len(e.g.Submitted()) != 1 {
		t.Fatalf("%d in Sent Items, %d submitted", len(si), len(e.g.Submitted()))
	}
	m := si[0]
	if m.InternetMessageID != mid || m.From != e.from || m.Subject != job.Subject ||
		strings.Join(m.To, ",") != customer || strings.Join(m.Cc, ",") != "cc@example.test" ||
		strings.Join(m.Bcc, ",") != "audit@example.test" || m.ExtendedProperties[graph.JobIDProperty] != job.JobID {
		t.Fatalf("sent %+v", m)
	}
	if len(m.Attachments) != 1 || string(m.Attachments[0].Data) != "small note" || m.Attachments[0].ContentType != "text/plain" {
		t.Fatalf("attachments %+v", m.Attachments)
	}
	raw := string(m.Raw)
	for _, want := range []string{"Importance: high", `Reply-To: "AP" <ap@contoso.test>`, "Please find the invoice attached."} {
		if !strings.Contains(raw, want) {
			t.Errorf("sent MIME lacks %q:\n%.1500s", want, raw)
		}
	}
	if n := e.g.Count(e.from, "Drafts"); n != 0 {
		t.Errorf("%d drafts left", n)
	}
	e.checkWire()
}

func TestSendTwiceSendsOnce(t *testing.T) {
	e := newSendEnv(t, sendTokApp)
	job := e.job("outbox-7")
	first := e.mustSend(job, nil)
	second := e.mustSend(job, nil)
	if first.AlreadySent || !second.AlreadySent || second.InternetMessageID != first.InternetMessageID {
		t.Fatalf("first %+v, second %+v", first, second)
	}
	if second.Requests != 1 {
		t.Errorf("the second send made %d requests, want 1 (the Sent Items lookup)", second.Requests)
	}
	if len(e.g.SentItems(e.from)) != 1 || len(e.g.Submitted()) != 1 {
		t.Fatalf("%d in Sent Items, %d submitted", len(e.g.SentItems(e.from)), len(e.g.Submitted()))
	}
	// A copy moved out of Sent Items is still found (by its marker).
	if _, ok := e.g.MoveMessage(e.from, e.g.SentItems(e.from)[0].ImmutableID, "Archive"); !ok {
		t.Fatal("move")
	}
	third := e.mustSend(job, nil)
	if !third.AlreadySent || len(e.g.Submitted()) != 1 {
		t.Fatalf("third %+v, %d submitted", third, len(e.g.Submitted()))
	}
}

func TestSendLargeAttachments(t *testing.T) {
	e := newSendEnv(t, sendTokApp)
	st := newStore()
	const big = 20 << 20
	small := st.put("scan.pdf", 1, 2<<20, 2<<20) // size known
	large := st.put("archive.zip", 2, big, big)
	job := e.job("big-1")
	job.Attachments = []mailjob.Attachment{
		mailjob.InlineAttachment("cover.txt", "text/plain", []byte("cover")),
		mailjob.ObjectAttachment("scan.pdf", "application/pdf", small),
		mailjob.ObjectAttachment("archive.zip", "application/zip", large),
	}

	// The transport may not read further ahead than one chunk (under
	// 4 MiB) of what Graph acknowledged, and the live heap must not grow
	// by the size of the attachment.
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	baseHeap := ms.HeapAlloc
	var maxAhead, maxHeap atomic.Int64
	var lastSample atomic.Int64
	uploadedBefore := int64(-1)
	onRead := func(off int64) {
		if uploadedBefore < 0 {
			return
		}
		ahead := off - (e.w.acked.Load() - uploadedBefore)
		if ahead > maxAhead.Load() {
			maxAhead.Store(ahead)
		}
		if off-lastSample.Load() >= 2<<20 {
			lastSample.Store(off)
			runtime.GC()
			var ms runtime.MemStats
			runtime.ReadMemStats(&ms)
			if d := int64(ms.HeapAlloc) - int64(baseHeap); d > maxHeap.Load() {
				maxHeap.Store(d)
			}
		}
	}
	opener := st.opener(onRead)
	wrapped := func(ctx context.Context, ref mailjob.ObjectRef) (io.ReadCloser, error) {
		if ref.Name == "archive.zip" {
			uploadedBefore = e.w.acked.Load()
			lastSample.Store(0)
		} else {
			uploadedBefore = -1
		}
		return opener(ctx, ref)
	}
	res := e.mustSend(job, wrapped)
	if res.AlreadySent {
		t.Fatal("already sent")
	}
	si := e.g.SentItems(e.from)
	if len(si) != 1 {
		t.Fatalf("%d in Sent Items", len(si))
	}
	atts := si[0].Attachments
	if len(atts) != 3 {
		t.Fatalf("%d attachments", len(atts))
	}
	want := [][]byte{[]byte("cover"), genBytes(1, 2<<20), genBytes(2, big)}
	for i, a := range atts {
		if a.Name != job.Attachments[i].Filename || sum(a.Data) != sum(want[i]) {
			t.Errorf("attachment %d: %s, %d bytes, want %s, %d bytes, intact", i, a.Name, len(a.Data), job.Attachments[i].Filename, len(want[i]))
		}
	}
	if st.opened.Load() != 2 || st.closed.Load() != 2 {
		t.Errorf("objects opened %d, closed %d", st.opened.Load(), st.closed.Load())
	}
	if maxAhead.Load() > 4<<20 {
		t.Errorf("read %d bytes ahead of the upload", maxAhead.Load())
	}
	// Loose: the fake itself holds the 20 MB it received.
	if maxHeap.Load() > 64<<20 {
		t.Errorf("live heap grew by %d MiB while uploading 20 MiB", maxHeap.Load()>>20)
	}
	t.Logf("requests %d, read ahead at most %d KiB, live heap growth at most %d MiB", res.Requests, maxAhead.Load()>>10, maxHeap.Load()>>20)
	e.w.mu.Lock()
	puts := e.w.puts
	e.w.mu.Unlock()
	if puts != 7 { // 20 MiB in chunks of 3.125 MiB
		t.Errorf("%d PUTs", puts)
	}
	e.checkWire()
}

// Objects whose reference gives no size: the reader's Size method, or a
// spool.
func TestSendObjectsOfUnknownSize(t *testing.T) {
	e := newSendEnv(t, sendTokApp)
	st := newStore()
	job := e.job("unsized-1")
	job.Attachments = []mailjob.Attachment{
		mailjob.ObjectAttachment("log.txt", "text/plain", st.put("log.txt", 3, 3500000, 0)),             // spooled
		mailjob.ObjectAttachment("data.csv", "text/csv", st.put("sized-data.csv", 6, 3300000, 0)),       // the reader tells
		mailjob.ObjectAttachment("small.txt", "text/plain", st.put("small.txt", 8, 1000, 0)),            // read in memory
		mailjob.ObjectAttachment("sized-small.txt", "text/plain", st.put("sized-small.txt", 9, 900, 0)), // the reader tells
	}
	e.mustSend(job, st.opener(nil))
	atts := e.g.SentItems(e.from)[0].Attachments
	want := [][]byte{genBytes(3, 3500000), genBytes(6, 3300000), genBytes(8, 1000), genBytes(9, 900)}
	if len(atts) != len(want) {
		t.Fatalf("%d attachments", len(atts))
	}
	for i, a := range atts {
		if sum(a.Data) != sum(want[i]) {
			t.Errorf("attachment %s not intact", a.Name)
		}
	}
	e.w.mu.Lock()
	puts := e.w.puts
	e.w.mu.Unlock()
	if puts != 4 {
		t.Errorf("%d PUTs, want 2 per large file", puts)
	}
	e.checkWire()
}

func TestSendHTMLWithInlineImage(t *testing.T) {
	e := newSendEnv(t, sendTokApp)
	png := genBytes(9, 5000)
	job := e.job("html-1")
	job.Text = "plain text only version"
	job.HTML = `<p>Our logo: <img src="cid:logo@mailpipe"></p>`
	img := mailjob.InlineAttachment("logo.png", "image/png", png)
	img.Inline, img.ContentID = true, "logo@mailpipe"
	job.Attachments = []mailjob.Attachment{img}
	e.mustSend(job, nil)
	m := e.g.SentItems(e.from)[0]
	if len(m.Attachments) != 1 || !m.Attachments[0].IsInline || m.Attachments[0].ContentID != "logo@mailpipe" ||
		!bytes.Equal(m.Attachments[0].Data, png) {
		t.Fatalf("attachments %+v", m.Attachments)
	}
	raw := string(m.Raw)
	if !strings.Contains(raw, "text/html") || !strings.Contains(raw, `cid:logo@mailpipe`) || strings.Contains(raw, "plain text only") {
		t.Fatalf("body: want the HTML only:\n%.2000s", raw)
	}
}

func TestSendCustomHeaders(t *testing.T) {
	e := newSendEnv(t, sendTokApp)
	job := e.job("hdr-1")
	job.Headers = map[string]string{"X-Erp-Document": "INV-2026-0142", "x-tenant": "acme"}
	e.mustSend(job, nil)
	got := map[string]string{}
	for _, h := range e.g.SentItems(e.from)[0].Headers {
		got[h.Name] = h.Value
	}
	if got["X-Erp-Document"] != "INV-2026-0142" || got["x-tenant"] != "acme" {
		t.Fatalf("headers %v", got)
	}
	// A header Exchange refuses (job validation keeps these out).
	bad := e.job("hdr-2")
	bad.Headers = map[string]string{"In-Reply-To": "<a@b>"}
	_, err := e.send(bad, nil)
	wantErr(t, err, outbound.Permanent, mailjob.ReasonInvalidJob, "X-")
}

// A crash while the draft is being built: the next attempt deletes the
// incomplete draft, builds it again and sends once.
func TestSendAfterCrashWhileBuilding(t *testing.T) {
	e := newSendEnv(t, sendTokApp)
	st := newStore()
	ref := st.put("big.bin", 4, 5<<20, 5<<20)
	job := e.job("crash-1")
	job.Attachments = []mailjob.Attachment{
		mailjob.InlineAttachment("a.txt", "text/plain", []byte("a")),
		mailjob.ObjectAttachment("big.bin", "application/octet-stream", ref),
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	crash := st.opener(func(off int64) {
		if off > 3<<20 {
			cancel() // the process dies in the middle of the upload
		}
	})
	if _, err := e.tr.Send(ctx, job, crash); err == nil {
		t.Fatal("send survived the crash")
	}
	drafts := e.g.Messages(e.from, "Drafts")
	if len(drafts) != 1 || len(e.g.Submitted()) != 0 {
		t.Fatalf("%d drafts, %d submitted", len(drafts), len(e.g.Submitted()))
	}
	res := e.mustSend(job, st.opener(nil))
	if res.AlreadySent {
		t.Fatal("already sent")
	}
	if _, ok := e.g.MessageInfo(e.from, drafts[0].ImmutableID); ok {
		t.Error("the incomplete draft is still there")
	}
	si := e.g.SentItems(e.from)
	if len(si) != 1 || len(e.g.Submitted()) != 1 || e.g.Count(e.from, "Drafts") != 0 {
		t.Fatalf("%d in Sent Items, %d submitted, %d drafts", len(si), len(e.g.Submitted()), e.g.Count(e.from, "Drafts"))
	}
	if len(si[0].Attachments) != 2 || sum(si[0].Attachments[1].Data) != sum(genBytes(4, 5<<20)) {
		t.Fatalf("attachments %d", len(si[0].Attachments))
	}
	e.checkWire()
}

// A failure between building and sending: the next attempt sends the
// complete draft as it is.
func TestSendReusesCompleteDraft(t *testing.T) {
	e := newSendEnv(t, sendTokApp)
	st := newStore()
	ref := st.put("big.bin", 5, 4<<20, 4<<20)
	job := e.job("reuse-1")
	job.Attachments = []mailjob.Attachment{mailjob.ObjectAttachment("big.bin", "application/octet-stream", ref)}
	if err := e.g.InjectFault(graphfake.Fault{Method: http.MethodPost, Path: `/send$`, Status: http.StatusTooManyRequests, RetryAfter: "0.05"}); err != nil {
		t.Fatal(err)
	}
	_, err := e.send(job, st.opener(nil))
	wantErr(t, err, outbound.Throttled, mailjob.ReasonThrottled)
	drafts := e.g.Messages(e.from, "Drafts")
	if len(drafts) != 1 || st.opened.Load() != 1 {
		t.Fatalf("%d drafts, %d opened", len(drafts), st.opened.Load())
	}
	res := e.mustSend(job, st.opener(nil))
	// Sent Items, marker, the draft's attachments, send.
	if res.Requests != 4 || st.opened.Load() != 1 {
		t.Errorf("%d requests, object opened %d times", res.Requests, st.opened.Load())
	}
	si := e.g.SentItems(e.from)
	if len(si) != 1 || si[0].ImmutableID != drafts[0].ImmutableID || len(e.g.Submitted()) != 1 {
		t.Fatalf("sent items %d (want the draft %s), %d submitted", len(si), drafts[0].ImmutableID, len(e.g.Submitted()))
	}
}

// The final send fails after Graph accepted it (a gateway timeout, a
// dropped connection): Ambiguous, and the next attempt finds the mail.
func TestSendAmbiguous(t *testing.T) {
	for _, tc := range []struct {
		name  string
		fault graphfake.Fault
	}{
		{"504 after the send", graphfake.Fault{Status: http.StatusGatewayTimeout, Applied: true}},
		{"connection dropped after the send", graphfake.Fault{Applied: true, Drop: true}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newSendEnv(t, sendTokApp)
			job := e.job("amb-1")
			f := tc.fault
			f.Method, f.Path = http.MethodPost, `/send$`
			if err := e.g.InjectFault(f); err != nil {
				t.Fatal(err)
			}
			_, err := e.send(job, nil)
			wantErr(t, err, outbound.Ambiguous, mailjob.ReasonGraphUnavailable, "may have been sent")
			if len(e.g.Submitted()) != 1 {
				t.Fatalf("%d submitted", len(e.g.Submitted()))
			}
			res := e.mustSend(job, nil)
			if !res.AlreadySent || res.InternetMessageID != outbound.MessageID(job.JobID, job.From) || len(e.g.Submitted()) != 1 {
				t.Fatalf("retry %+v, %d submitted", res, len(e.g.Submitted()))
			}
		})
	}
	t.Run("504 before the send", func(t *testing.T) {
		e := newSendEnv(t, sendTokApp)
		job := e.job("amb-2")
		if err := e.g.InjectFault(graphfake.Fault{Method: http.MethodPost, Path: `/send$`, Status: http.StatusGatewayTimeout}); err != nil {
			t.Fatal(err)
		}
		_, err := e.send(job, nil)
		wantErr(t, err, outbound.Ambiguous, mailjob.ReasonGraphUnavailable)
		res := e.mustSend(job, nil)
		if res.AlreadySent || len(e.g.Submitted()) != 1 || len(e.g.SentItems(e.from)) != 1 {
			t.Fatalf("retry %+v, %d submitted", res, len(e.g.Submitted()))
		}
	})
}

func TestSendDelegatedSendAs(t *testing.T) {
	e := newSendEnv(t, sendTokDelegated)
	job := e.job("deleg-1")
	_, err := e.send(job, nil)
	wantErr(t, err, outbound.Auth, mailjob.ReasonSendAsDenied, "neither Send As nor Send on Behalf", sendUser, "mailbox "+e.from)
	if len(e.g.Submitted()) != 0 {
		t.Fatal("sent without the right")
	}
	// The administrator grants Send on Behalf; the next attempt sends the
	// draft built in the account's own mailbox.
	e.g.GrantSendOnBehalf(sendUser, e.from)
	res := e.mustSend(job, nil)
	if res.AlreadySent {
		t.Fatal("already sent")
	}
	sub := e.g.Submitted()
	if len(sub) != 1 || sub[0].From != e.from || sub[0].Sender != sendUser || sub[0].Mailbox != sendUser {
		t.Fatalf("submitted %+v", sub)
	}
	if len(e.g.SentItems(sendUser)) != 1 || e.g.Count(sendUser, "Drafts") != 0 {
		t.Fatal("the sent copy is not in the account's Sent Items")
	}
	if again := e.mustSend(job, nil); !again.AlreadySent {
		t.Fatal("sent twice")
	}
	// Send As: from and sender are the shared mailbox.
	e.g.GrantSendAs(sendUser, e.from)
	e.mustSend(e.job("deleg-2"), nil)
	if last := e.g.Submitted()[1]; last.From != e.from || last.Sender != e.from {
		t.Fatalf("send as: %+v", last)
	}
	msg, err := e.tr.CheckSendAs(ctxOf(t), e.from)
	if err != nil || !strings.Contains(msg, "Cannot verify Send As without sending") || !strings.Contains(msg, "send_as_denied") {
		t.Fatalf("check: %q, %v", msg, err)
	}
}

func TestSendThrottled(t *testing.T) {
	e := newSendEnv(t, sendTokApp)
	if err := e.g.InjectFault(graphfake.Fault{Method: http.MethodPost, Path: `/messages$`, Status: http.StatusTooManyRequests, RetryAfter: "2.128"}); err != nil {
		t.Fatal(err)
	}
	_, err := e.send(e.job("thr-1"), nil)
	oe := wantErr(t, err, outbound.Throttled, mailjob.ReasonThrottled)
	if oe.RetryAfter != 2128*time.Millisecond {
		t.Fatalf("RetryAfter %s, want 2.128s", oe.RetryAfter)
	}
	if len(e.g.Submitted()) != 0 || e.g.Count(e.from, "Drafts") != 0 {
		t.Fatal("throttled request had effects")
	}
}

func TestSendRateLimitIsThrottled(t *testing.T) {
	e := newSendEnv(t, sendTokApp)
	e.g.SetLimits(graphfake.Limits{SendPerMinute: 1})
	e.mustSend(e.job("rate-1"), nil)
	_, err := e.send(e.job("rate-2"), nil)
	oe := wantErr(t, err, outbound.Throttled, mailjob.ReasonThrottled) // refused, not Ambiguous
	if oe.RetryAfter <= 0 || oe.RetryAfter > time.Minute {
		t.Fatalf("RetryAfter %s", oe.RetryAfter)
	}
	if len(e.g.Submitted()) != 1 {
		t.Fatalf("%d submitted", len(e.g.Submitted()))
	}
}

func TestSendTooLarge(t *testing.T) {
	t.Run("413 on an attachment", func(t *testing.T) {
		e := newSendEnv(t, sendTokApp)
		st := newStore()
		job := e.job("big-413")
		job.Attachments = []mailjob.Attachment{mailjob.ObjectAttachment("a.bin", "application/octet-stream", st.put("a.bin", 1, 1000, 1000))}
		if err := e.g.InjectFault(graphfake.Fault{Method: http.MethodPost, Path: `/attachments$`, Status: http.StatusRequestEntityTooLarge}); err != nil {
			t.Fatal(err)
		}
		_, err := e.send(job, st.opener(nil))
		wantErr(t, err, outbound.Permanent, mailjob.ReasonMessageTooLarge)
	})
	t.Run("over the mailbox's send size", func(t *testing.T) {
		e := newSendEnv(t, sendTokApp)
		e.g.SetLimits(graphfake.Limits{MaxSendSize: 4000})
		job := e.job("big-size")
		job.Text = strings.Repeat("long text ", 1000)
		_, err := e.send(job, nil)
		wantErr(t, err, outbound.Permanent, mailjob.ReasonMessageTooLarge) // at the send: refused, not Ambiguous
		if len(e.g.Submitted()) != 0 {
			t.Fatal("submitted")
		}
	})
}

func TestSendRefusals(t *testing.T) {
	e := newSendEnv(t, sendTokApp)
	t.Run("unknown mailbox", func(t *testing.T) {
		job := e.job("nobody-1")
		job.From = "nobody@contoso.test"
		_, err := e.send(job, nil)
		wantErr(t, err, outbound.Permanent, mailjob.ReasonMailboxNotFound, "nobody@contoso.test")
	})
	t.Run("no recipients", func(t *testing.T) {
		job := e.job("norcpt-1")
		job.To = nil
		_, err := e.send(job, nil)
		wantErr(t, err, outbound.Permanent, mailjob.ReasonRecipientRejected)
	})
	t.Run("object missing", func(t *testing.T) {
		job := e.job("missing-1")
		job.Attachments = []mailjob.Attachment{mailjob.ObjectAttachment("gone.pdf", "application/pdf", mailjob.ObjectRef{Bucket: "b", Name: "gone.pdf"})}
		_, err := e.send(job, newStore().opener(nil))
		wantErr(t, err, outbound.Permanent, mailjob.ReasonAttachmentNotFound, "gone.pdf")
	})
	t.Run("object shorter than its size", func(t *testing.T) {
		st := newStore()
		job := e.job("short-1")
		job.Attachments = []mailjob.Attachment{mailjob.ObjectAttachment("s.bin", "application/octet-stream", st.put("s.bin", 1, 4<<20-10, 4<<20))}
		_, err := e.send(job, st.opener(nil))
		wantErr(t, err, outbound.Permanent, mailjob.ReasonAttachmentMismatch, "shorter")
	})
	t.Run("object longer than its size", func(t *testing.T) {
		st := newStore()
		job := e.job("long-1")
		job.Attachments = []mailjob.Attachment{mailjob.ObjectAttachment("l.bin", "application/octet-stream", st.put("l.bin", 1, 1001, 1000))}
		_, err := e.send(job, st.opener(nil))
		wantErr(t, err, outbound.Permanent, mailjob.ReasonAttachmentMismatch, "longer")
	})
	t.Run("object store fails", func(t *testing.T) {
		st := newStore()
		st.open = func(context.Context, mailjob.ObjectRef) error { return errors.New("nats: timeout") }
		job := e.job("store-1")
		job.Attachments = []mailjob.Attachment{mailjob.ObjectAttachment("x.bin", "application/octet-stream", st.put("x.bin", 1, 10, 10))}
		_, err := e.send(job, st.opener(nil))
		wantErr(t, err, outbound.Transient, mailjob.ReasonInternal, "nats: timeout")
	})
	t.Run("app without Mail.ReadWrite", func(t *testing.T) {
		tr, err := graph.NewTransport(graph.TransportOptions{BaseURL: e.g.BaseURL(), HTTPClient: e.g.HTTPClient(), Tokens: staticTokens{sendTokSendOnly}})
		if err != nil {
			t.Fatal(err)
		}
		defer tr.Close()
		_, err = tr.Send(ctxOf(t), e.job("perm-1"), nil)
		wantErr(t, err, outbound.Auth, mailjob.ReasonSendAsDenied, "Mail.ReadWrite", "Mail.Send", e.from)
		_, err = tr.CheckSendAs(ctxOf(t), e.from)
		wantErr(t, err, outbound.Auth, mailjob.ReasonSendAsDenied, "Mail.ReadWrite")
	})
	if len(e.g.Submitted()) != 0 {
		t.Fatalf("%d submitted", len(e.g.Submitted()))
	}
}

// A chunk that fails is sent again from where the upload session says
// it stands: whether Graph had taken it or not.
func TestSendUploadChunkRetry(t *testing.T) {
	for _, tc := range []struct {
		name  string
		fault graphfake.Fault
	}{
		{"503, not taken", graphfake.Fault{Status: http.StatusServiceUnavailable}},
		{"503 after taking it", graphfake.Fault{Status: http.StatusServiceUnavailable, Applied: true}},
		{"connection dropped", graphfake.Fault{Drop: true}},
		{"connection dropped after taking it", graphfake.Fault{Drop: true, Applied: true}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newSendEnv(t, sendTokApp)
			st := newStore()
			const size = 8 << 20
			job := e.job("chunk-1")
			job.Attachments = []mailjob.Attachment{mailjob.ObjectAttachment("c.bin", "application/octet-stream", st.put("c.bin", 7, size, size))}
			f := tc.fault
			f.Method, f.Path = http.MethodPut, `AttachmentSessions`
			if err := e.g.InjectFault(f); err != nil {
				t.Fatal(err)
			}
			e.mustSend(job, st.opener(nil))
			si := e.g.SentItems(e.from)
			if len(si) != 1 || len(si[0].Attachments) != 1 || sum(si[0].Attachments[0].Data) != sum(genBytes(7, size)) {
				t.Fatalf("attachment not intact")
			}
			e.w.mu.Lock()
			asks, puts := e.w.asks, e.w.puts
			e.w.mu.Unlock()
			// 8 MiB: 3 chunks, one of them sent again unless Graph had it.
			wantPuts := 4
			if tc.fault.Applied {
				wantPuts = 3
			}
			if f := e.g.Stats().Faults; f != 1 || asks != 1 || puts != wantPuts {
				t.Errorf("%d faults, %d session state requests, %d PUTs (want 1, 1, %d)", f, asks, puts, wantPuts)
			}
			e.checkWire()
		})
	}
}

func TestCheckSendAs(t *testing.T) {
	e := newSendEnv(t, sendTokApp)
	msg, err := e.tr.CheckSendAs(ctxOf(t), e.from)
	if err != nil || !strings.Contains(msg, "Mail.Send") || !strings.Contains(msg, "Not tested") {
		t.Fatalf("%q, %v", msg, err)
	}
	_, err = e.tr.CheckSendAs(ctxOf(t), "nobody@contoso.test")
	wantErr(t, err, outbound.Permanent, mailjob.ReasonMailboxNotFound)
	if len(e.g.Submitted()) != 0 || e.g.Count(e.from, "Drafts") != 0 {
		t.Fatal("the check changed something")
	}
}

// The error of a failed upload never shows the pre-authenticated URL.
func TestSendUploadErrorHidesURL(t *testing.T) {
	e := newSendEnv(t, sendTokApp)
	st := newStore()
	job := e.job("url-1")
	job.Attachments = []mailjob.Attachment{mailjob.ObjectAttachment("u.bin", "application/octet-stream", st.put("u.bin", 1, 4<<20, 4<<20))}
	if err := e.g.InjectFault(graphfake.Fault{Method: http.MethodPut, Path: `AttachmentSessions`, Drop: true, Count: -1}); err != nil {
		t.Fatal(err)
	}
	_, err := e.send(job, st.opener(nil))
	wantErr(t, err, outbound.Transient, mailjob.ReasonGraphUnavailable)
	if strings.Contains(err.Error(), "authtoken") || strings.Contains(err.Error(), "AttachmentSessions") {
		t.Fatalf("the error shows the upload URL: %v", err)
	}
	b, _ := json.Marshal(err.Error())
	t.Logf("error: %s", b)
}
