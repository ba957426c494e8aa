package graphfake_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/mailpipe/mailpipe/internal/devidp"
	"github.com/mailpipe/mailpipe/internal/testenv/graphfake"
)

const (
	tenant   = "contoso.onmicrosoft.com"
	appID    = "7f1a8c2e-3b4d-4e5f-8a9b-0c1d2e3f4a5b"
	shared   = "invoices@contoso.test"
	svcUser  = "svc-import@contoso.test"
	other    = "someone@contoso.test"
	graphAud = devidp.ResourceGraph
)

// env is a fake Graph with a devidp issuing its tokens.
type env struct {
	t      testing.TB
	idp    *devidp.Server
	g      *graphfake.Server
	client *http.Client
	app    string // app-only token: Mail.ReadWrite, Mail.Send
}

// validator maps devidp's validation onto graphfake.Claims; the scp claim
// (delegated tokens) is read from the verified token.
func validator(idp *devidp.Server) func(string) (graphfake.Claims, error) {
	return func(tok string) (graphfake.Claims, error) {
		c, err := idp.Validate(tok, "")
		if errors.Is(err, devidp.ErrTokenExpired) {
			return graphfake.Claims{}, fmt.Errorf("%w: %v", graphfake.ErrTokenExpired, err)
		}
		if err != nil {
			return graphfake.Claims{}, err
		}
		mc := jwt.MapClaims{}
		if _, _, err := jwt.NewParser().ParseUnverified(tok, mc); err != nil {
			return graphfake.Claims{}, err
		}
		scp, _ := mc["scp"].(string)
		return graphfake.Claims{Audience: c.Audience, AppID: c.AppID, TenantID: c.TenantID, UPN: c.UPN,
			Roles: c.Roles, Scopes: strings.Fields(scp), ExpiresAt: c.ExpiresAt}, nil
	}
}

func newEnv(t testing.TB) *env {
	t.Helper()
	idp, err := devidp.Start(devidp.Options{Tenant: tenant})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(idp.Close)
	g, err := graphfake.Start(graphfake.Options{ValidateToken: validator(idp)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(g.Close)
	g.AddMailbox(shared, graphfake.MailboxOptions{DisplayName: "Invoices"})
	g.AddMailbox(svcUser, graphfake.MailboxOptions{DisplayName: "Import service"})
	g.AddMailbox(other, graphfake.MailboxOptions{})
	e := &env{t: t, idp: idp, g: g, client: g.HTTPClient()}
	e.app = e.appToken("Mail.ReadWrite", "Mail.Send")
	return e
}

// mint signs a token as devidp does, with extra claims.
func (e *env) mint(extra jwt.MapClaims) string {
	e.t.Helper()
	now := time.Now()
	c := jwt.MapClaims{
		"aud": graphAud,
		"iss": e.idp.Issuer(),
		"iat": now.Add(-5 * time.Minute).Unix(),
		"nbf": now.Add(-5 * time.Minute).Unix(),
		"exp": now.Add(time.Hour).Unix(),
		"tid": e.idp.TenantID(),
		"uti": "x",
		"ver": "1.0",
	}
	for k, v := range extra {
		c[k] = v
	}
	tok, err := jwt.NewWithClaims(jwt.SigningMethodHS256, c).SignedString(e.idp.HS256Key())
	if err != nil {
		e.t.Fatal(err)
	}
	return tok
}

func (e *env) appToken(roles ...string) string {
	return e.mint(jwt.MapClaims{"appid": appID, "idtyp": "app", "roles": roles})
}

func (e *env) userToken(upn string, scopes ...string) string {
	return e.mint(jwt.MapClaims{"appid": appID, "upn": upn, "scp": strings.Join(scopes, " ")})
}

// resp is an answer.
type resp struct {
	status int
	header http.Header
	body   []byte
	resp   *http.Response
}

func (r resp) json(t testing.TB) map[string]any {
	t.Helper()
	var v map[string]any
	if err := json.Unmarshal(r.body, &v); err != nil {
		t.Fatalf("status %d: body is not JSON: %v: %.300s", r.status, err, r.body)
	}
	return v
}

// errCode gives error.code and error.message.
func (r resp) errCode(t testing.TB) (string, string) {
	t.Helper()
	var v graphfake.ErrorBody
	if err := json.Unmarshal(r.body, &v); err != nil {
		t.Fatalf("status %d: not an error body: %.300s", r.status, r.body)
	}
	return v.Error.Code, v.Error.Message
}

// call does a request. url is absolute or relative to BaseURL. body: nil,
// []byte or a value marshalled as JSON. headers alternate name, value.
func (e *env) call(method, url, token string, body any, headers ...string) resp {
	e.t.Helper()
	if !strings.HasPrefix(url, "https://") {
		url = e.g.BaseURL() + url
	}
	var rd io.Reader
	ct := ""
	switch b := body.(type) {
	case nil:
	case []byte:
		rd = bytes.NewReader(b)
		ct = "text/plain"
	default:
		j, err := json.Marshal(b)
		if err != nil {
			e.t.Fatal(err)
		}
		rd = bytes.NewReader(j)
		ct = "application/json"
	}
	req, err := http.NewRequest(method, url, rd)
	if err != nil {
		e.t.Fatal(err)
	}
	if ct != "" {
		req.Header.Set("Content-Type", ct)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Add(headers[i], headers[i+1])
	}
	res, err := e.client.Do(req)
	if err != nil {
		e.t.Fatalf("%s %s: %v", method, url, err)
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		e.t.Fatalf("%s %s: reading body: %v", method, url, err)
	}
	return resp{status: res.StatusCode, header: res.Header, body: b, resp: res}
}

func (e *env) get(url string, headers ...string) resp {
	e.t.Helper()
	return e.call(http.MethodGet, url, e.app, nil, headers...)
}

func (e *env) post(url string, body any, headers ...string) resp {
	e.t.Helper()
	return e.call(http.MethodPost, url, e.app, body, headers...)
}

func expectStatus(t testing.TB, r resp, want int) {
	t.Helper()
	if r.status != want {
		t.Fatalf("status %d, want %d: %.500s", r.status, want, r.body)
	}
}

func expectError(t testing.TB, r resp, status int, code string) string {
	t.Helper()
	expectStatus(t, r, status)
	c, m := r.errCode(t)
	if c != code {
		t.Fatalf("error code %q (%s), want %q", c, m, code)
	}
	return m
}

func values(t testing.TB, v map[string]any) []map[string]any {
	t.Helper()
	raw, ok := v["value"].([]any)
	if !ok {
		t.Fatalf("no value array in %v", v)
	}
	out := make([]map[string]any, len(raw))
	for i, x := range raw {
		out[i] = x.(map[string]any)
	}
	return out
}

var msgSeq int

func mime(subject string) []byte {
	msgSeq++
	return []byte(fmt.Sprintf("From: Supplier <billing@supplier.test>\r\nTo: %s\r\nSubject: %s\r\n"+
		"Message-ID: <m%d@supplier.test>\r\nDate: Mon, 2 Jun 2025 10:00:00 +0000\r\n"+
		"Content-Type: text/plain; charset=utf-8\r\n\r\nInvoice body %d\r\n", shared, subject, msgSeq, msgSeq))
}

// seed puts n messages into folder, received a minute apart (the first
// oldest), and returns their ids in that order.
func (e *env) seed(mailbox, folder string, n int) []string {
	base := time.Date(2025, 6, 2, 10, 0, 0, 0, time.UTC)
	var ids []string
	for i := 0; i < n; i++ {
		ids = append(ids, e.g.AddMessage(mailbox, folder, mime(fmt.Sprintf("Invoice %03d", i)), base.Add(time.Duration(i)*time.Minute)))
	}
	return ids
}

func str(v any) string { s, _ := v.(string); return s }
