package mailjob

import (
	"context"
	"errors"
	"reflect"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
)

func TestStatusRoundTrip(t *testing.T) {
	js := embedded(t)
	senderStreams(t, js)
	ctx := testCtx(t)
	at := time.Date(2026, 3, 2, 8, 15, 4, 123456789, time.UTC)
	events := []*StatusEvent{
		{JobID: "erp:inv.42", Type: StatusAccepted, Time: at, Attempt: 1, From: "billing@example.com",
			Correlation: map[string]string{"document": "INV-42"}},
		{JobID: "erp:inv.42", Type: StatusFailed, Time: at, Attempt: 1, From: "billing@example.com", Permanent: false,
			Reason: "Graph answered 429 (retry after 2.128 s)", ReasonCode: ReasonThrottled, Correlation: map[string]string{"document": "INV-42"}},
		{JobID: "erp:inv.42", Type: StatusSent, Time: at, Attempt: 2, From: "billing@example.com",
			InternetMessageID: "<AM0PR01MB1234.mailpipe@example.com>", Correlation: map[string]string{"document": "INV-42"}},
		{JobID: "other", Type: StatusFailed, Time: at, Attempt: 3, Permanent: true,
			Reason: "403 ErrorSendAsDenied", ReasonCode: ReasonSendAsDenied},
	}
	for i, ev := range events {
		res, err := PublishStatus(ctx, js, ev, WithStream(DefaultStatusStream))
		if err != nil {
			t.Fatal(err)
		}
		if res.Duplicate || res.Stream != DefaultStatusStream || res.Subject != StatusSubject("", ev.JobID) {
			t.Errorf("event %d: %+v", i, res)
		}
		s, _ := js.Stream(ctx, DefaultStatusStream)
		raw, err := s.GetMsg(ctx, res.Sequence)
		if err != nil {
			t.Fatal(err)
		}
		for k, want := range map[string]string{
			HeaderSpecVersion: "1.0", HeaderType: "com.mailpipe.job.status.v1", HeaderID: ev.ID(), HeaderMsgID: ev.ID(),
			HeaderCESubject: ev.JobID, HeaderJobID: ev.JobID, HeaderStatus: string(ev.Type),
			HeaderTime: "2026-03-02T08:15:04.123456789Z", HeaderDataContentType: "application/json",
		} {
			if got := raw.Header.Get(k); got != want {
				t.Errorf("event %d: header %s = %q, want %q", i, k, got, want)
			}
		}
		if i == 0 && raw.Header.Get(HeaderSource) != "/mailpipe/sender/billing_example_com" {
			t.Errorf("ce-source %q", raw.Header.Get(HeaderSource))
		}
		got, err := ParseStatusHeaders(raw.Header, raw.Data)
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(got, ev) {
			t.Errorf("event %d:\n got %+v\nwant %+v", i, got, ev)
		}
		// Published again (a sender retrying): stored once.
		if res2, err := PublishStatus(ctx, js, ev); err != nil || !res2.Duplicate {
			t.Errorf("event %d again: %+v %v", i, res2, err)
		}
	}
	if events[0].ID() != "erp:inv.42/accepted/1" || events[0].Final() || events[1].Final() || !events[2].Final() || !events[3].Final() {
		t.Error("ID or Final")
	}

	// Look-up by subject, as a producer without a watch would do.
	s, _ := js.Stream(ctx, DefaultStatusStream)
	last, err := s.GetLastMsgForSubject(ctx, StatusSubject("", "erp:inv.42"))
	if err != nil {
		t.Fatal(err)
	}
	if ev, err := ParseStatusHeaders(last.Header, last.Data); err != nil || ev.Type != StatusSent || ev.Attempt != 2 {
		t.Errorf("last event: %+v %v", ev, err)
	}

	if _, err := PublishStatus(ctx, js, &StatusEvent{JobID: "x", Type: StatusFailed}); err == nil {
		t.Error("failed event without reason published")
	}
	if _, err := PublishStatus(ctx, js, &StatusEvent{JobID: "bad id", Type: StatusSent}); err == nil {
		t.Error("bad job id published")
	}
}

func TestParseStatusErrors(t *testing.T) {
	h := func() nats.Header {
		return nats.Header{HeaderSpecVersion: {"1.0"}, HeaderType: {TypeStatus}}
	}
	ok := []byte(`{"job_id":"a","type":"sent","time":"2026-03-02T08:15:04Z","attempt":1,"future_field":{"x":1}}`)
	ev, err := ParseStatusHeaders(h(), ok)
	if err != nil || ev.JobID != "a" || ev.Type != StatusSent {
		t.Fatalf("%+v %v (unknown fields must be ignored)", ev, err)
	}
	wrongType := h()
	wrongType.Set(HeaderType, TypeJob)
	if _, err := ParseStatusHeaders(wrongType, ok); !errors.Is(err, ErrNotStatus) {
		t.Errorf("job as status: %v", err)
	}
	if _, err := ParseStatusHeaders(nil, ok); !errors.Is(err, ErrNotStatus) {
		t.Errorf("no headers: %v", err)
	}
	for _, data := range []string{`{`, `{"type":"sent"}`, `{"job_id":"a"}`, `{"job_id":"a","type":"sent","time":"yesterday"}`} {
		if _, err := ParseStatusHeaders(h(), []byte(data)); err == nil {
			t.Errorf("%s accepted", data)
		}
	}
}

func TestWatchStatus(t *testing.T) {
	js := embedded(t)
	senderStreams(t, js)
	ctx := testCtx(t)
	pub := func(ev StatusEvent) {
		t.Helper()
		if _, err := PublishStatus(ctx, js, &ev); err != nil {
			t.Fatal(err)
		}
	}
	const id = "inv.42"
	// History before the watch starts, including a job whose id shares
	// the subject token.
	pub(StatusEvent{JobID: id, Type: StatusAccepted, Attempt: 1})
	pub(StatusEvent{JobID: "inv_42", Type: StatusSent, Attempt: 1})

	ch, err := WatchStatus(ctx, js, id)
	if err != nil {
		t.Fatal(err)
	}
	next := func() (StatusEvent, bool) {
		t.Helper()
		select {
		case ev, ok := <-ch:
			return ev, ok
		case <-time.After(10 * time.Second):
			t.Fatal("no event")
		}
		return StatusEvent{}, false
	}
	if ev, ok := next(); !ok || ev.Type != StatusAccepted || ev.JobID != id || ev.Sequence != 1 {
		t.Errorf("first event %+v %v", ev, ok)
	}
	pub(StatusEvent{JobID: id, Type: StatusFailed, Attempt: 1, Reason: "503", ReasonCode: ReasonGraphUnavailable})
	if ev, ok := next(); !ok || ev.Type != StatusFailed || ev.Permanent || ev.Final() {
		t.Errorf("second event %+v %v", ev, ok)
	}
	pub(StatusEvent{JobID: id, Type: StatusAccepted, Attempt: 2})
	pub(StatusEvent{JobID: id, Type: StatusSent, Attempt: 2, InternetMessageID: "<m@example.com>"})
	pub(StatusEvent{JobID: id, Type: StatusSent, Attempt: 3}) // after the final event: not delivered
	if ev, ok := next(); !ok || ev.Type != StatusAccepted || ev.Attempt != 2 {
		t.Errorf("third event %+v %v", ev, ok)
	}
	if ev, ok := next(); !ok || ev.Type != StatusSent || ev.InternetMessageID != "<m@example.com>" {
		t.Errorf("fourth event %+v %v", ev, ok)
	}
	if ev, ok := next(); ok {
		t.Errorf("channel open after the final event: %+v", ev)
	}

	// Ending the context closes the channel.
	wctx, cancel := context.WithCancel(ctx)
	ch, err = WatchStatus(wctx, js, "nothing-yet", WithStream(DefaultStatusStream))
	if err != nil {
		t.Fatal(err)
	}
	cancel()
	if ev, ok := next(); ok {
		t.Errorf("event after cancel: %+v", ev)
	}

	// No status stream.
	if _, err := WatchStatus(ctx, embedded(t), id); !errors.Is(err, ErrNoStream) {
		t.Errorf("no stream: %v", err)
	}
}
