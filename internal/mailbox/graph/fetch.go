package graph

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"sync"

	"go.uber.org/zap"

	"github.com/mailpipe/mailpipe/internal/mailbox"
)

// spoolMem: bodies up to this size are held in memory while they wait for
// the callback; larger ones go to a temporary file, so a 30 MB message
// costs at most this much memory.
const spoolMem = 1 << 20

type fetchResult struct {
	sp   *spool
	err  error
	gone bool // 404: deleted (or moved out of the mailbox) meanwhile
}

// Fetch streams the raw MIME of the messages (GET messages/{id}/$value),
// up to 4 downloads at a time, calling fn in the order of refs, one at a
// time, with the exact size. Messages no longer in their folder (moved by
// another worker or by this Source, or deleted) are skipped. A download
// that fails with a server error (a 504 on a large message, say) does not
// stop the others: Fetch delivers what it can and returns the first such
// error at the end; authentication and throttling errors, a canceled
// context and errors of fn stop it (fn's as is).
func (s *Source) Fetch(ctx context.Context, refs []mailbox.Ref, fn func(*mailbox.Message) error) error {
	if len(refs) == 0 {
		return nil
	}
	todo, folders, err := s.stillThere(ctx, refs)
	if err != nil || len(todo) == 0 {
		return err
	}

	dctx, cancel := context.WithCancel(ctx)
	results := make([]chan fetchResult, len(todo))
	for i := range results {
		results[i] = make(chan fetchResult, 1)
	}
	// A slot is taken before a download starts and given back when the
	// callback is done with it: at most window bodies are downloading or
	// waiting in spools.
	slots := make(chan struct{}, s.window)
	var wg sync.WaitGroup
	producerDone := make(chan struct{})
	go func() {
		defer close(producerDone)
		for i := range todo {
			select {
			case slots <- struct{}{}:
			case <-dctx.Done():
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				results[i] <- s.download(dctx, todo[i])
			}()
		}
	}()
	consumed := 0
	defer func() {
		cancel()
		<-producerDone
		wg.Wait()
		for i := consumed; i < len(results); i++ {
			select {
			case r := <-results[i]:
				if r.sp != nil {
					r.sp.close()
				}
			default:
			}
		}
	}()

	var firstErr error
	failed := 0
	for i, ref := range todo {
		var res fetchResult
		select {
		case res = <-results[i]:
		case <-ctx.Done():
			return s.ctxErr("fetch", ref.Folder, ctx.Err())
		}
		consumed = i + 1
		if res.err != nil {
			<-slots
			if res.gone {
				s.log.Debug("message gone before it was fetched; skipped", zap.String("id", ref.ID))
				s.stats.skipped.Add(1)
				s.handled(ctx, folders[i], []string{ref.ID})
				continue
			}
			if ctx.Err() != nil {
				return s.ctxErr("fetch", ref.Folder, ctx.Err())
			}
			if !perMessage(res.err) {
				return res.err
			}
			failed++
			s.stats.fetchFailure.Add(1)
			s.log.Warn("cannot fetch message; going on with the others", zap.String("id", ref.ID), zap.String("folder", ref.Folder), zap.Error(res.err))
			if firstErr == nil {
				firstErr = res.err
			}
			continue
		}
		err := fn(&mailbox.Message{Ref: ref, Size: res.sp.size, Body: res.sp.reader()})
		res.sp.close()
		<-slots
		if err != nil {
			return err
		}
		s.stats.fetched.Add(1)
		s.stats.fetchedBytes.Add(res.sp.size)
		if f := s.metrics.Fetched; f != nil {
			f(s.cfg.Name, res.sp.size)
		}
	}
	if failed > 1 {
		var me *mailbox.Error
		if errors.As(firstErr, &me) {
			c := *me
			c.Err = fmt.Errorf("%w (and %d more messages failed)", me.Err, failed-1)
			return &c
		}
	}
	return firstErr
}

// perMessage reports errors that concern one message only, after which
// the others are still worth fetching.
func perMessage(err error) bool {
	switch mailbox.KindOf(err) {
	case mailbox.Transient, mailbox.Permanent:
	default:
		return false
	}
	var ae *apiError
	return errors.As(err, &ae) || errors.Is(err, errTimeout)
}

// download fetches one message's MIME into a spool.
func (s *Source) download(ctx context.Context, ref mailbox.Ref) fetchResult {
	resp, err := s.c.do(ctx, call{
		op: "fetch", method: http.MethodGet, stream: true, accept: "*/*",
		// A 504 on $value is the server timing out on a large message
		// (about 30s): trying again at once would only time out again.
		retry5xx: true, no504Retry: true,
		tmpl:   "/users/{user}/messages/{id}/$value",
		params: map[string]string{"user": s.user, "id": ref.ID},
	})
	if err != nil {
		if isItemNotFound(err) {
			return fetchResult{err: err, gone: true}
		}
		return fetchResult{err: s.classify("fetch", ref.Folder, fmt.Errorf("message %s: %w", ref.ID, err))}
	}
	sp, err := spoolBody(resp.stream)
	resp.stream.Close()
	if err == nil && resp.size >= 0 && sp.size != resp.size {
		sp.close()
		err = fmt.Errorf("body has %d bytes, Content-Length said %d", sp.size, resp.size)
	}
	if err != nil {
		return fetchResult{err: s.classify("fetch", ref.Folder, fmt.Errorf("message %s: read body: %w", ref.ID, err))}
	}
	return fetchResult{sp: sp}
}

// spool holds one body: in memory when small, else in a temporary file.
type spool struct {
	mem  []byte
	f    *os.File
	size int64
}

func spoolBody(r io.Reader) (*spool, error) {
	head, err := io.ReadAll(io.LimitReader(r, spoolMem+1))
	if err != nil {
		return nil, err
	}
	if len(head) <= spoolMem {
		return &spool{mem: head, size: int64(len(head))}, nil
	}
	f, err := os.CreateTemp("", "mailpipe-graph-*.eml")
	if err != nil {
		return nil, fmt.Errorf("spool: %w", err)
	}
	sp := &spool{f: f}
	if _, err := f.Write(head); err != nil {
		sp.close()
		return nil, fmt.Errorf("spool: %w", err)
	}
	n, err := io.Copy(f, r)
	if err != nil {
		sp.close()
		return nil, err
	}
	sp.size = int64(len(head)) + n
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		sp.close()
		return nil, fmt.Errorf("spool: %w", err)
	}
	return sp, nil
}

// reader returns the body; only Read is exposed.
func (sp *spool) reader() io.Reader {
	if sp.f != nil {
		return struct{ io.Reader }{sp.f}
	}
	return bytes.NewReader(sp.mem)
}

func (sp *spool) close() {
	if sp.f != nil {
		sp.f.Close()
		os.Remove(sp.f.Name())
		sp.f = nil
	}
	sp.mem = nil
}
