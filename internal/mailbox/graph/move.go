package graph

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/mailpipe/mailpipe/internal/mailbox"
	"github.com/mailpipe/mailpipe/internal/throttle"
)

// maxBatchRounds bounds how often items of one $batch that were throttled
// or failed with a server error are sent again.
const maxBatchRounds = 8

type batchRequest struct {
	ID      string            `json:"id"`
	Method  string            `json:"method"`
	URL     string            `json:"url"`
	Headers map[string]string `json:"headers,omitempty"`
	Body    any               `json:"body,omitempty"`
}

type batchItem struct {
	ID      string            `json:"id"`
	Status  int               `json:"status"`
	Headers map[string]string `json:"headers"`
	Body    json.RawMessage   `json:"body"`
}

type batchResponse struct {
	Responses []batchItem `json:"responses"`
}

func (it batchItem) header(name string) string {
	for k, v := range it.Headers {
		if strings.EqualFold(k, name) {
			return v
		}
	}
	return ""
}

// apiError returns the item's answer as an *apiError.
func (it batchItem) apiError() *apiError {
	h := http.Header{}
	for k, v := range it.Headers {
		h.Set(k, v)
	}
	return parseAPIError(http.MethodPost, it.Status, h, it.Body)
}

// mover is the state of one Move call.
type mover struct {
	s     *Source
	dest  mailbox.Dest
	df    folder
	dpath string
	refs  []mailbox.Ref
	from  []folder
	mu    sync.Mutex
	moved map[folder][]string
	n     int
}

func (m *mover) done(i int) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.moved == nil {
		m.moved = map[folder][]string{}
	}
	m.moved[m.from[i]] = append(m.moved[m.from[i]], m.refs[i].ID)
	m.n++
}

// Move moves the messages to the processed or error folder with POST
// messages/{id}/move (immutable ids), 20 to a $batch unless graph.
// disable_batch is set. Messages no longer in their folder are skipped;
// items throttled inside a batch are sent again after their Retry-After.
// A 404 for a message that may have been moved already (a retry after a
// lost answer) is settled by looking the message up: in the destination it
// counts as moved, elsewhere as moved by someone else, and still in its
// folder it is a NotFound error. A missing destination is a NotFound error
// and moves nothing.
func (s *Source) Move(ctx context.Context, refs []mailbox.Ref, dest mailbox.Dest) error {
	if len(refs) == 0 {
		return nil
	}
	df, dpath, err := s.destFolder(ctx, dest)
	if err != nil {
		return err
	}
	todo, from, err := s.stillThere(ctx, refs)
	if err != nil {
		return err
	}
	m := &mover{s: s, dest: dest, df: df, dpath: dpath, refs: todo, from: from}
	if s.cfg.Graph.DisableBatch {
		err = m.each(ctx)
	} else {
		for start := 0; start < len(todo) && err == nil; start += batchLimit {
			var idx []int
			for i := start; i < min(start+batchLimit, len(todo)); i++ {
				idx = append(idx, i)
			}
			err = m.batch(ctx, idx)
		}
	}
	for f, ids := range m.moved {
		s.handled(ctx, f, ids)
	}
	if m.n > 0 {
		s.stats.moved.Add(int64(m.n))
		if f := s.metrics.Moved; f != nil {
			f(s.cfg.Name, dest, m.n)
		}
	}
	return err
}

func (m *mover) op() string { return "move to " + m.dest.String() + " folder " + m.dpath }

func (m *mover) moveURL(id string) string {
	return "/users/" + url.PathEscape(m.s.user) + "/messages/" + url.PathEscape(id) + "/move"
}

// batch moves refs[idx] with $batch, sending throttled items again.
func (m *mover) batch(ctx context.Context, idx []int) error {
	s := m.s
	pending := idx
	var lookups []settle
	for round := 1; len(pending) > 0; round++ {
		reqs := make([]batchRequest, len(pending))
		for k, i := range pending {
			reqs[k] = batchRequest{
				ID: itoa(i), Method: http.MethodPost, URL: m.moveURL(m.refs[i].ID),
				Headers: map[string]string{"Content-Type": "application/json", "Prefer": preferImmutable},
				Body:    map[string]string{"destinationId": m.df.id},
			}
		}
		// Moves by immutable id may run twice: the outer request is
		// sent again after a 5xx too.
		resp, err := s.c.do(ctx, call{
			op: "move", method: http.MethodPost, tmpl: "/$batch", units: len(reqs), retry5xx: true,
			body: map[string]any{"requests": reqs},
		})
		if err != nil {
			return m.fail(err, m.refs[pending[0]].Folder)
		}
		var br batchResponse
		if err := decode(resp, &br); err != nil {
			return s.classify(m.op(), m.refs[pending[0]].Folder, err)
		}
		byID := make(map[string]batchItem, len(br.Responses))
		for _, it := range br.Responses {
			byID[it.ID] = it
		}
		var retry []int
		var wait time.Duration
		var firstErr error
		// The pause this answer asks for: the longest Retry-After of its
		// items, and a backoff if a 429/5xx item came without one. The
		// items of one answer are one failure, not one each: counted one
		// by one, a single answer with a few 503 items would grow the
		// backoff to many seconds (up to a minute).
		var hintStatus, bareStatus int
		var hint string
		var hinted time.Duration
		for _, i := range pending {
			it, ok := byID[itoa(i)]
			switch {
			case !ok:
				retry = append(retry, i)
			case it.Status >= 200 && it.Status < 300:
				m.done(i)
			case it.Status == http.StatusTooManyRequests || isServerBusy(it.Status) ||
				it.Status == http.StatusFailedDependency:
				// Each item counts and is throttled on its own; the
				// pause applies to every request to the mailbox.
				if it.Status == http.StatusTooManyRequests {
					s.stats.throttled.Add(1)
				}
				if it.Status != http.StatusFailedDependency {
					ra := it.header("Retry-After")
					if d, ok := throttle.ParseRetryAfter(ra, time.Now()); !ok {
						bareStatus = it.Status
					} else if hintStatus == 0 || d > hinted {
						hintStatus, hint, hinted = it.Status, ra, d
					}
				}
				retry = append(retry, i)
			default:
				ae := it.apiError()
				if m.settleable(ae) {
					lookups = append(lookups, settle{i, ae})
					continue
				}
				if firstErr == nil {
					firstErr = m.fail(ae, m.refs[i].Folder)
				}
			}
		}
		if bareStatus != 0 {
			wait = s.c.lim.Observe(bareStatus, "")
		}
		if hintStatus != 0 {
			wait = max(wait, s.c.lim.Observe(hintStatus, hint))
		}
		if firstErr != nil {
			return firstErr
		}
		if len(retry) > 0 && round >= maxBatchRounds {
			k := mailbox.Transient
			if wait > 0 {
				k = mailbox.Throttled
			}
			return &mailbox.Error{Kind: k, Op: m.op(), Mailbox: s.cfg.Name, Folder: m.refs[retry[0]].Folder, RetryAfter: max(wait, time.Second),
				Err: fmt.Errorf("%d of %d moves still throttled or failing after %d rounds", len(retry), len(idx), round)}
		}
		if len(retry) > 0 {
			s.log.Debug("batch items throttled; sending them again after the pause", zap.Int("items", len(retry)), zap.Duration("pause", wait))
		}
		pending = retry
	}
	for _, l := range lookups {
		if err := m.settle(ctx, l.i, l.cause); err != nil {
			return err
		}
	}
	return nil
}

// settle is a move that failed in a way that may mean it happened already.
type settle struct {
	i     int
	cause error
}

// settleable reports failures of a move that are worth a look-up: a 404
// (the message is not where the request expected it, e.g. moved by an
// earlier attempt whose answer was lost) or another refusal of the move
// itself (a move repeated after a lost answer may be refused as one to
// the folder the message is in). Authentication, permission, throttling
// and a missing destination are not.
func (m *mover) settleable(err error) bool {
	var ae *apiError
	if !errors.As(err, &ae) {
		return false
	}
	r := ruleFor(ae.Status, ae.Code)
	if r.hint == hintDestination || r.hint == hintMailbox {
		return false
	}
	switch r.kind {
	case mailbox.NotFound, mailbox.Permanent:
		return true
	}
	return false
}

// each moves the refs one request each (graph.disable_batch), up to the
// fetch window at a time.
func (m *mover) each(ctx context.Context) error {
	s := m.s
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		wg       sync.WaitGroup
		mu       sync.Mutex
		firstErr error
	)
	sem := make(chan struct{}, s.window)
	for i := range m.refs {
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
		}
		if ctx.Err() != nil {
			break
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			err := m.one(ctx, i)
			if err != nil {
				mu.Lock()
				if firstErr == nil {
					firstErr = err
					cancel()
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return firstErr
}

func (m *mover) one(ctx context.Context, i int) error {
	s := m.s
	_, err := s.c.do(ctx, call{
		op: "move", method: http.MethodPost, retry5xx: true,
		tmpl:   "/users/{user}/messages/{id}/move",
		params: map[string]string{"user": s.user, "id": m.refs[i].ID},
		body:   map[string]string{"destinationId": m.df.id},
	})
	switch {
	case err == nil:
		m.done(i)
		return nil
	case m.settleable(err):
		return m.settle(ctx, i, err)
	default:
		return m.fail(err, m.refs[i].Folder)
	}
}

// fail classifies a move error; a missing destination drops the folder
// cache (it is looked up again next time) and names the folder.
func (m *mover) fail(err error, folder string) error {
	var ae *apiError
	if errors.As(err, &ae) && ruleFor(ae.Status, ae.Code).hint == hintDestination {
		m.s.folders.forget()
		return &mailbox.Error{Kind: mailbox.NotFound, Op: m.op(), Mailbox: m.s.cfg.Name, Folder: m.dpath,
			Err: fmt.Errorf("%w; %s", err, m.s.hint(hintDestination))}
	}
	return m.s.classify(m.op(), folder, err)
}

// settle looks up refs[i] by its immutable id after its move failed with
// cause: in the destination it counts as moved (an earlier attempt did it),
// elsewhere or gone as moved or deleted by someone else (not an error);
// still in its folder, cause is the error (a 404 then is a NotFound).
func (m *mover) settle(ctx context.Context, i int, cause error) error {
	s := m.s
	r := m.refs[i]
	resp, err := s.c.do(ctx, call{
		op: "lookup", method: http.MethodGet, retry5xx: true,
		tmpl:   "/users/{user}/messages/{id}{?%24select}",
		params: map[string]string{"user": s.user, "id": r.ID},
		query:  map[string]string{"%24select": "id,parentFolderId"},
	})
	if err != nil {
		if isItemNotFound(err) {
			s.log.Info("message to move is gone (deleted, or moved to another mailbox); nothing to do", zap.String("id", r.ID))
			m.skip(i)
			return nil
		}
		return m.fail(cause, r.Folder)
	}
	var msg struct {
		ParentFolderID string `json:"parentFolderId"`
	}
	if err := decode(resp, &msg); err != nil {
		return m.fail(cause, r.Folder)
	}
	switch msg.ParentFolderID {
	case m.df.id:
		// Moved by an earlier attempt whose answer was lost.
		m.done(i)
		return nil
	case m.from[i].id:
		if isItemNotFound(cause) {
			return s.errorf(mailbox.NotFound, m.op(), r.Folder, "moving message %s answered 404 but it is still in its folder", r.ID)
		}
		return m.fail(cause, r.Folder)
	default:
		s.log.Info("message to move was moved elsewhere meanwhile (by another client); leaving it there",
			zap.String("id", r.ID), zap.String("parent_folder_id", msg.ParentFolderID))
		m.skip(i)
		return nil
	}
}

// skip records that refs[i] left its folder without this move.
func (m *mover) skip(i int) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.moved == nil {
		m.moved = map[folder][]string{}
	}
	m.moved[m.from[i]] = append(m.moved[m.from[i]], m.refs[i].ID)
	m.s.stats.skipped.Add(1)
}
