package graphfake

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/url"
	"strings"
	"sync"
)

// MaxBatchRequests is Graph's limit of requests in one $batch.
const MaxBatchRequests = 20

// batchParallelism: Outlook runs at most 4 items of a batch at once.
const batchParallelism = 4

type batchItem struct {
	ID        string            `json:"id"`
	Method    string            `json:"method"`
	URL       string            `json:"url"`
	Headers   map[string]string `json:"headers"`
	Body      json.RawMessage   `json:"body"`
	DependsOn []string          `json:"dependsOn"`
}

type batchResponse struct {
	ID      string            `json:"id"`
	Status  int               `json:"status"`
	Headers map[string]string `json:"headers,omitempty"`
	Body    any               `json:"body,omitempty"`
}

// recorder captures a batch item's answer.
type recorder struct {
	h      http.Header
	status int
	buf    bytes.Buffer
}

func (r *recorder) Header() http.Header { return r.h }

func (r *recorder) WriteHeader(code int) {
	if r.status == 0 {
		r.status = code
	}
}

func (r *recorder) Write(b []byte) (int, error) {
	if r.status == 0 {
		r.status = http.StatusOK
	}
	return r.buf.Write(b)
}

func (s *Server) serveBatch(w http.ResponseWriter, r *http.Request, claims Claims) {
	max := s.lim.limits().MaxRequestBody
	body, err := io.ReadAll(io.LimitReader(r.Body, max+1))
	if err != nil {
		s.writeError(w, errBadRequest("Could not read the request body."))
		return
	}
	if int64(len(body)) > max {
		s.writeError(w, errTooLarge())
		return
	}
	var in struct {
		Requests []batchItem `json:"requests"`
	}
	if err := json.Unmarshal(body, &in); err != nil || in.Requests == nil {
		s.writeError(w, errBadRequest("Invalid batch payload format."))
		return
	}
	if len(in.Requests) == 0 {
		s.writeError(w, errBadRequest("Invalid batch payload format: the batch contains no requests."))
		return
	}
	if len(in.Requests) > MaxBatchRequests {
		s.writeError(w, errBadRequest(fmt.Sprintf("Too many requests in the batch: %d. The maximum is %d.", len(in.Requests), MaxBatchRequests)))
		return
	}
	byID := map[string]int{}
	for i, it := range in.Requests {
		k := strings.ToLower(it.ID)
		if it.ID == "" || it.Method == "" || it.URL == "" {
			s.writeError(w, errBadRequest("Invalid batch payload format: every request needs id, method and url."))
			return
		}
		if _, dup := byID[k]; dup {
			s.writeError(w, errBadRequest(fmt.Sprintf("Request ids must be unique within a batch: '%s'.", it.ID)))
			return
		}
		byID[k] = i
	}
	for _, it := range in.Requests {
		for _, d := range it.DependsOn {
			if _, ok := byID[strings.ToLower(d)]; !ok {
				s.writeError(w, errBadRequest(fmt.Sprintf("Request '%s' depends on an unknown request '%s'.", it.ID, d)))
				return
			}
		}
	}
	if cyclic(in.Requests, byID) {
		s.writeError(w, errBadRequest("The dependsOn graph of the batch has a cycle."))
		return
	}

	n := len(in.Requests)
	done := make([]chan struct{}, n)
	results := make([]*batchResponse, n)
	for i := range done {
		done[i] = make(chan struct{})
	}
	sem := make(chan struct{}, batchParallelism)
	var mu sync.Mutex
	var order []*batchResponse
	var wg sync.WaitGroup
	for i, it := range in.Requests {
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer close(done[i])
			var res *batchResponse
			for _, d := range it.DependsOn {
				j := byID[strings.ToLower(d)]
				<-done[j]
				if results[j].Status >= 400 {
					res = &batchResponse{ID: it.ID, Status: http.StatusFailedDependency,
						Headers: map[string]string{"Content-Type": "application/json"},
						Body: ErrorBody{Error: ErrorDetail{Code: "FailedDependency",
							Message: fmt.Sprintf("The request depends on request '%s', which failed.", results[j].ID)}}}
					break
				}
			}
			if res == nil {
				sem <- struct{}{}
				res = s.runItem(r, claims, it)
				<-sem
			}
			results[i] = res
			mu.Lock()
			order = append(order, res)
			mu.Unlock()
		}()
	}
	wg.Wait()
	writeJSON(w, http.StatusOK, map[string]any{"responses": order})
}

func cyclic(items []batchItem, byID map[string]int) bool {
	state := make([]int, len(items)) // 0 new, 1 visiting, 2 done
	var visit func(i int) bool
	visit = func(i int) bool {
		switch state[i] {
		case 1:
			return true
		case 2:
			return false
		}
		state[i] = 1
		for _, d := range items[i].DependsOn {
			if visit(byID[strings.ToLower(d)]) {
				return true
			}
		}
		state[i] = 2
		return false
	}
	for i := range items {
		if visit(i) {
			return true
		}
	}
	return false
}

// runItem serves one batch item with the batch's credentials; it counts
// against the limits like a request of its own.
func (s *Server) runItem(outer *http.Request, claims Claims, it batchItem) *batchResponse {
	res := &batchResponse{ID: it.ID}
	u := strings.TrimSpace(it.URL)
	if pu, err := url.Parse(u); err == nil && pu.IsAbs() {
		u = strings.TrimPrefix(pu.RequestURI(), "/v1.0")
	}
	if !strings.HasPrefix(u, "/") {
		u = "/" + u
	}
	pu, err := url.Parse(u)
	if err != nil {
		return itemError(res, errBadRequest("Invalid request URL."))
	}
	if strings.EqualFold(strings.Trim(pu.Path, "/"), "$batch") {
		return itemError(res, errBadRequest("A batch request cannot contain another batch request."))
	}
	var body []byte
	hdr := http.Header{}
	for k, v := range it.Headers {
		hdr.Set(k, v)
	}
	if len(it.Body) > 0 && string(it.Body) != "null" {
		ct := hdr.Get("Content-Type")
		if ct == "" {
			return itemError(res, errBadRequest("Content-Type header must be specified for a request with a body."))
		}
		mt, _, _ := mime.ParseMediaType(ct)
		var str string
		if strings.HasSuffix(mt, "json") {
			body = it.Body
		} else if json.Unmarshal(it.Body, &str) == nil {
			// Non-JSON bodies are base64 strings.
			if b, err := base64.StdEncoding.DecodeString(str); err == nil {
				body = b
			} else {
				body = []byte(str)
			}
		} else {
			body = it.Body
		}
	}
	req, err := http.NewRequestWithContext(outer.Context(), strings.ToUpper(it.Method), "https://"+outer.Host+"/v1.0"+u, bytes.NewReader(body))
	if err != nil {
		return itemError(res, errBadRequest("Invalid request."))
	}
	req.Header = hdr
	req.Header.Set("Authorization", outer.Header.Get("Authorization"))
	req.Host = outer.Host
	rec := &recorder{h: http.Header{}}
	rec.h.Set("request-id", randomGUID())
	rec.h.Set("client-request-id", rec.h.Get("request-id"))
	s.serveCall(rec, req, pu.Path, &claims, true)
	res.Status = rec.status
	if res.Status == 0 {
		res.Status = http.StatusOK
	}
	res.Headers = map[string]string{}
	for k, v := range rec.h {
		switch strings.ToLower(k) {
		case "request-id", "client-request-id":
			continue
		}
		res.Headers[k] = strings.Join(v, ", ")
	}
	if rec.buf.Len() > 0 {
		mt, _, _ := mime.ParseMediaType(rec.h.Get("Content-Type"))
		if strings.HasSuffix(mt, "json") {
			res.Body = json.RawMessage(rec.buf.Bytes())
		} else {
			res.Body = base64.StdEncoding.EncodeToString(rec.buf.Bytes())
		}
	}
	return res
}

func itemError(res *batchResponse, e *gErr) *batchResponse {
	res.Status = e.status
	res.Headers = map[string]string{"Content-Type": "application/json"}
	res.Body = ErrorBody{Error: ErrorDetail{Code: e.code, Message: e.msg}}
	return res
}
