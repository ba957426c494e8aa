package sender

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// Phases of a job in the state bucket.
const (
	// PhaseAccepted: the job passed validation and the allow-list and waits
	// for its (next) attempt.
	PhaseAccepted = "accepted"
	// PhaseSending: a replica (Holder) is sending it; Heartbeat is renewed
	// while the attempt runs.
	PhaseSending = "sending"
	// PhaseAmbiguous: the last attempt may or may not have sent the mail;
	// the next one must look before sending again (or, for a transport
	// that cannot look, the job fails).
	PhaseAmbiguous = "ambiguous"
	// PhaseSent: the mail was sent (final).
	PhaseSent = "sent"
	// PhaseFailed: the sender gave up (final).
	PhaseFailed = "failed"
)

// JobState is the value of a job's key (JobKey) in the state bucket. Every
// change is a compare-and-set on the key's revision, so that two replicas
// never start an attempt of one job at the same time.
type JobState struct {
	Phase string `json:"state"`
	// Seq is the stream sequence of the job message: a job published again
	// with the same id after the duplicate window is another message, and a
	// new job.
	Seq  uint64 `json:"seq"`
	From string `json:"from,omitempty"`
	// Attempt counts the send attempts started (numbering the status
	// events); Failures those that failed transiently or ambiguously
	// (bounded by consumer.max_deliver).
	Attempt   int       `json:"attempt"`
	Failures  int       `json:"failures,omitempty"`
	Holder    string    `json:"holder,omitempty"`
	Started   time.Time `json:"started,omitzero"`
	Heartbeat time.Time `json:"heartbeat,omitzero"`
	// MessageID is the Internet Message-ID of the sent mail.
	MessageID  string    `json:"internet_message_id,omitempty"`
	ReasonCode string    `json:"reason_code,omitempty"`
	Reason     string    `json:"reason,omitempty"`
	Updated    time.Time `json:"updated"`
}

// Final reports whether the job is sent or failed for good.
func (s *JobState) Final() bool { return s.Phase == PhaseSent || s.Phase == PhaseFailed }

// JobKey is the state bucket key of a job: "job." followed by the job id
// with '.' replaced by '/' and ':' by '=' (KV keys allow neither empty
// tokens nor ':'; neither '/' nor '=' occurs in a job id, so the mapping
// is one-to-one). "erp.inv:42" becomes "job.erp/inv=42".
func JobKey(jobID string) string {
	return "job." + strings.NewReplacer(".", "/", ":", "=").Replace(jobID)
}

// errConflict is a lost compare-and-set: another replica changed the key.
var errConflict = errors.New("state changed by another replica")

// revision identifies the version of a key that was read.
type revision struct {
	rev     uint64
	created time.Time // server time of the revision
}

type stateStore struct {
	kv jetstream.KeyValue
}

// get reads a job's state; nil when there is none.
func (s stateStore) get(ctx context.Context, jobID string) (*JobState, revision, error) {
	e, err := s.kv.Get(ctx, JobKey(jobID))
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil, revision{}, nil
	}
	if err != nil {
		return nil, revision{}, fmt.Errorf("read job state %s: %w", JobKey(jobID), err)
	}
	var st JobState
	if err := json.Unmarshal(e.Value(), &st); err != nil {
		return nil, revision{}, fmt.Errorf("job state %s is not readable: %w", JobKey(jobID), err)
	}
	return &st, revision{rev: e.Revision(), created: e.Created()}, nil
}

// write stores st if the key is still at rev (0: if it does not exist),
// returning errConflict otherwise.
func (s stateStore) write(ctx context.Context, jobID string, st *JobState, rev uint64) (uint64, error) {
	st.Updated = time.Now().UTC()
	data, err := json.Marshal(st)
	if err != nil {
		return 0, err
	}
	key := JobKey(jobID)
	var n uint64
	if rev == 0 {
		n, err = s.kv.Create(ctx, key, data)
	} else {
		n, err = s.kv.Update(ctx, key, data, rev)
	}
	if isCASConflict(err) {
		return 0, fmt.Errorf("write job state %s: %w", key, errConflict)
	}
	if err != nil {
		return 0, fmt.Errorf("write job state %s: %w", key, err)
	}
	return n, nil
}

// put stores st whatever the key holds (the outcome of a send is the
// truth, even if another replica took the job over meanwhile).
func (s stateStore) put(ctx context.Context, jobID string, st *JobState) (uint64, error) {
	st.Updated = time.Now().UTC()
	data, err := json.Marshal(st)
	if err != nil {
		return 0, err
	}
	n, err := s.kv.Put(ctx, JobKey(jobID), data)
	if err != nil {
		return 0, fmt.Errorf("write job state %s: %w", JobKey(jobID), err)
	}
	return n, nil
}

func isCASConflict(err error) bool {
	if err == nil {
		return false
	}
	if errors.Is(err, jetstream.ErrKeyExists) || errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
		return true
	}
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) &&
		(apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence || apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant)
}
