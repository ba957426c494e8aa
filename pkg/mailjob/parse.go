package mailjob

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"regexp"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// ErrNotJob is returned by ParseJobMsg for a message that is not a mailpipe
// job: no CloudEvents headers or another ce-type.
var ErrNotJob = errors.New("mailjob: not a mailpipe job message")

// The JSON structure of a job, for strict parsing. It mirrors the JSON
// Schema (a test checks that they agree).
type kind uint8

const (
	kString kind = iota + 1
	kBool
	kInt
	kObject
	kArray
	kStringMap // an object with any keys and string values
)

type shape struct {
	kind   kind
	fields []fieldShape // kObject
	elem   *shape       // kArray
	format func(string) string
}

type fieldShape struct {
	name     string
	required bool
	shape    *shape
}

func (s *shape) field(name string) *fieldShape {
	for i := range s.fields {
		if s.fields[i].name == name {
			return &s.fields[i]
		}
	}
	return nil
}

var (
	stringShape = &shape{kind: kString}
	// Optional strings that must not be empty when present (the schema
	// says so; in Go the empty string means absent).
	nonEmptyShape   = &shape{kind: kString, format: nonEmpty}
	importanceShape = &shape{kind: kString, format: func(s string) string {
		if s != string(ImportanceLow) && s != string(ImportanceNormal) && s != string(ImportanceHigh) {
			return fmt.Sprintf("must be low, normal or high, not %q", s)
		}
		return ""
	}}
	boolShape       = &shape{kind: kBool}
	recipientsShape = &shape{kind: kArray, elem: &shape{kind: kObject, fields: []fieldShape{
		{"address", true, stringShape},
		{"name", false, stringShape},
	}}}
	objectRefShape = &shape{kind: kObject, fields: []fieldShape{
		{"bucket", true, stringShape},
		{"name", true, stringShape},
		{"size", false, &shape{kind: kInt}},
		{"sha256", false, nonEmptyShape},
	}}
	attachmentShape = &shape{kind: kObject, fields: []fieldShape{
		{"filename", true, stringShape},
		{"content_type", true, stringShape},
		{"content_id", false, nonEmptyShape},
		{"inline", false, boolShape},
		{"content_base64", false, nonEmptyShape},
		{"object", false, objectRefShape},
	}}
	jobShape = &shape{kind: kObject, fields: []fieldShape{
		{"job_id", true, stringShape},
		{"from", true, stringShape},
		{"sender_profile", false, nonEmptyShape},
		{"to", false, recipientsShape},
		{"cc", false, recipientsShape},
		{"bcc", false, recipientsShape},
		{"reply_to", false, recipientsShape},
		{"subject", true, stringShape},
		{"text", false, stringShape},
		{"html", false, stringShape},
		{"attachments", false, &shape{kind: kArray, elem: attachmentShape}},
		{"headers", false, &shape{kind: kStringMap}},
		{"save_to_sent_items", false, boolShape},
		{"importance", false, importanceShape},
		{"correlation", false, &shape{kind: kStringMap}},
		{"created_at", false, &shape{kind: kString, format: dateTimeProblem}},
	}}
)

var dateTimeRe = regexp.MustCompile(`^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,9})?(Z|[+-][0-9]{2}:[0-9]{2})$`)

func nonEmpty(s string) string {
	if s == "" {
		return "must not be empty (leave the field out instead)"
	}
	return ""
}

func dateTimeProblem(s string) string {
	if !dateTimeRe.MatchString(s) {
		return "must be an RFC 3339 date-time such as 2026-03-02T08:15:04Z"
	}
	if _, err := time.Parse(time.RFC3339Nano, s); err != nil {
		return "is not a valid date-time (" + strings.TrimPrefix(err.Error(), "parsing time ") + ")"
	}
	return ""
}

// ParseJob decodes a job strictly: fields the format does not define,
// values of the wrong type (null included), repeated keys and missing
// required fields are errors with their JSON path, all of them listed in a
// *ValidationError. It does not apply the content rules and limits: call
// Validate (ParseJobMsg does both).
//
// On a *ValidationError the returned job holds what could be decoded (its
// job_id and correlation, for example, for a status event); it is nil
// when data is not JSON.
func ParseJob(data []byte) (*Job, error) {
	job, probs := parseJob(data)
	if len(probs) > 0 {
		return job, &ValidationError{Problems: probs}
	}
	return job, nil
}

func parseJob(data []byte) (*Job, []Problem) {
	if len(bytes.TrimSpace(data)) == 0 {
		return nil, []Problem{{Reason: "the job is empty: a JSON object was expected"}}
	}
	if !utf8.Valid(data) {
		return nil, []Problem{{Reason: "the job is not valid UTF-8"}}
	}
	p := &parser{dec: json.NewDecoder(bytes.NewReader(data))}
	p.dec.UseNumber()
	err := p.value("", jobShape)
	if err == nil {
		if _, terr := p.dec.Token(); terr != io.EOF {
			err = errors.New("unexpected data after the job object")
		}
	}
	if err != nil {
		return nil, []Problem{{Reason: fmt.Sprintf("the job is not valid JSON: %v (near byte %d)", err, p.dec.InputOffset())}}
	}
	if len(p.problems) > 0 && p.problems[0].Path == "" {
		return nil, p.problems // not an object
	}

	// Decode what can be decoded: type errors were reported above and
	// leave their fields empty. created_at is decoded separately because a
	// bad time would stop json.Unmarshal.
	var w struct {
		Job
		CreatedAt json.RawMessage `json:"created_at"`
	}
	_ = json.Unmarshal(data, &w)
	job := &w.Job
	var s string
	if json.Unmarshal(w.CreatedAt, &s) == nil && dateTimeProblem(s) == "" {
		job.CreatedAt, _ = time.Parse(time.RFC3339Nano, s)
	}
	return job, p.problems
}

type parser struct {
	dec      *json.Decoder
	problems []Problem
}

func (p *parser) add(path, format string, args ...any) {
	p.problems = append(p.problems, Problem{Path: path, Reason: fmt.Sprintf(format, args...)})
}

// value reads one value that should have shape s. It returns an error only
// for broken JSON.
func (p *parser) value(path string, s *shape) error {
	tok, err := p.dec.Token()
	if err != nil {
		return err
	}
	switch t := tok.(type) {
	case json.Delim:
		switch {
		case t == '{' && s.kind == kObject:
			return p.object(path, s)
		case t == '{' && s.kind == kStringMap:
			return p.stringMap(path)
		case t == '[' && s.kind == kArray:
			return p.array(path, s)
		case t == '{':
			p.typeErr(path, s, "an object")
		default:
			p.typeErr(path, s, "an array")
		}
		return p.skipRest()
	case string:
		if s.kind != kString {
			p.typeErr(path, s, "a string")
		} else if s.format != nil {
			if reason := s.format(t); reason != "" {
				p.add(path, "%s", reason)
			}
		}
	case json.Number:
		if s.kind != kInt {
			p.typeErr(path, s, "a number")
		} else if _, err := strconv.ParseInt(string(t), 10, 64); err != nil {
			p.add(path, "must be a whole number of bytes, not %s", t)
		}
	case bool:
		if s.kind != kBool {
			p.typeErr(path, s, "true or false")
		}
	case nil:
		p.typeErr(path, s, "null")
	}
	return nil
}

func (p *parser) typeErr(path string, s *shape, got string) {
	want := map[kind]string{
		kString: "a string", kBool: "true or false", kInt: "a whole number",
		kObject: "an object", kArray: "an array", kStringMap: "an object",
	}[s.kind]
	if path == "" {
		p.add("", "the job must be a JSON object, not %s", got)
		return
	}
	p.add(path, "must be %s, not %s", want, got)
}

func (p *parser) object(path string, s *shape) error {
	seen := map[string]bool{}
	for p.dec.More() {
		tok, err := p.dec.Token()
		if err != nil {
			return err
		}
		name := tok.(string)
		f := s.field(name)
		if f == nil {
			p.add(key(path, name), "unknown field%s", suggest(s, name))
			if err := p.skipValue(); err != nil {
				return err
			}
			continue
		}
		fp := field(path, name)
		if seen[name] {
			p.add(fp, "appears more than once")
		}
		seen[name] = true
		if err := p.value(fp, f.shape); err != nil {
			return err
		}
	}
	if _, err := p.dec.Token(); err != nil { // '}'
		return err
	}
	for _, f := range s.fields {
		if f.required && !seen[f.name] {
			p.add(field(path, f.name), "required")
		}
	}
	return nil
}

func (p *parser) stringMap(path string) error {
	seen := map[string]bool{}
	for p.dec.More() {
		tok, err := p.dec.Token()
		if err != nil {
			return err
		}
		k := tok.(string)
		kp := key(path, k)
		if seen[k] {
			p.add(kp, "appears more than once")
		}
		seen[k] = true
		if err := p.value(kp, stringShape); err != nil {
			return err
		}
	}
	_, err := p.dec.Token() // '}'
	return err
}

func (p *parser) array(path string, s *shape) error {
	for i := 0; p.dec.More(); i++ {
		if err := p.value(index(path, i), s.elem); err != nil {
			return err
		}
	}
	_, err := p.dec.Token() // ']'
	return err
}

func (p *parser) skipValue() error {
	tok, err := p.dec.Token()
	if err != nil {
		return err
	}
	if d, ok := tok.(json.Delim); ok && (d == '{' || d == '[') {
		return p.skipRest()
	}
	return nil
}

// skipRest skips to the end of the object or array just opened.
func (p *parser) skipRest() error {
	for depth := 1; depth > 0; {
		tok, err := p.dec.Token()
		if err != nil {
			return err
		}
		if d, ok := tok.(json.Delim); ok {
			if d == '{' || d == '[' {
				depth++
			} else {
				depth--
			}
		}
	}
	return nil
}

// suggest names the field an unknown name probably meant ("contentType"
// for "content_type").
func suggest(s *shape, name string) string {
	norm := func(n string) string {
		return strings.NewReplacer("_", "", "-", "").Replace(strings.ToLower(n))
	}
	for _, f := range s.fields {
		if norm(f.name) == norm(name) {
			return fmt.Sprintf(" (did you mean %s?)", f.name)
		}
	}
	return ""
}

// ParseJobMsg reads a job message as the sender receives it: it checks
// the CloudEvents headers (ErrNotJob when they do not announce a job),
// parses the payload strictly (ParseJob), validates the job against limits
// and checks that the message agrees with the job: Nats-Msg-Id and ce-id
// equal job_id, and the subject's last token is MailboxToken(from) (so
// that NATS permissions on job subjects restrict who may send as which
// mailbox). Every problem is listed in one *ValidationError; the job is
// returned as far as it could be decoded.
func ParseJobMsg(msg jetstream.Msg, limits Limits) (*Job, error) {
	return ParseJobHeaders(msg.Subject(), msg.Headers(), msg.Data(), limits)
}

// ParseJobHeaders is ParseJobMsg for a message received some other way.
func ParseJobHeaders(subject string, h nats.Header, data []byte, limits Limits) (*Job, error) {
	if v := h.Get(HeaderSpecVersion); v != SpecVersion {
		return nil, fmt.Errorf("%w: %s is %q, want %q", ErrNotJob, HeaderSpecVersion, v, SpecVersion)
	}
	if v := h.Get(HeaderType); v != TypeJob {
		return nil, fmt.Errorf("%w: %s is %q, want %q", ErrNotJob, HeaderType, v, TypeJob)
	}
	job, v := validateJSON(data, limits)
	if job == nil {
		return nil, v.err()
	}
	if ct := h.Get(HeaderDataContentType); ct != "" && ct != ContentTypeJSON {
		v.add("", "%s is %q, want %q", HeaderDataContentType, ct, ContentTypeJSON)
	}
	if job.JobID != "" {
		switch id := h.Get(HeaderMsgID); {
		case id == "":
			v.add("job_id", "the %s header is missing: it must be the job_id (JetStream de-duplicates on it)", HeaderMsgID)
		case id != job.JobID:
			v.add("job_id", "%q differs from the %s header %q: they must be equal", job.JobID, HeaderMsgID, id)
		}
		if id := h.Get(HeaderID); id != "" && id != job.JobID {
			v.add("job_id", "%q differs from the %s header %q: they must be equal", job.JobID, HeaderID, id)
		}
	}
	if job.From != "" && subject != "" {
		tok := subject[strings.LastIndexByte(subject, '.')+1:]
		if want := MailboxToken(job.From); tok != want {
			v.add("from", "the job was published on %s, but jobs from %s belong on subjects ending in .%s", subject, job.From, want)
		}
	}
	return job, v.err()
}

// ValidateJSON is ParseJob followed by Validate: it lists the problems of
// both in one *ValidationError (leaving out what a structural problem
// already explains) and returns the job as far as it could be decoded.
func ValidateJSON(data []byte, limits Limits) (*Job, error) {
	job, v := validateJSON(data, limits)
	return job, v.err()
}

func validateJSON(data []byte, limits Limits) (*Job, *validator) {
	job, probs := parseJob(data)
	v := &validator{limits: limits.withDefaults(), problems: probs, skip: under(probs)}
	if job != nil {
		v.job(job)
	}
	return job, v
}

// under returns a function reporting paths equal to or inside the paths of
// probs.
func under(probs []Problem) func(string) bool {
	if len(probs) == 0 {
		return nil
	}
	return func(path string) bool {
		for _, p := range probs {
			if p.Path != "" && (path == p.Path || strings.HasPrefix(path, p.Path+".") || strings.HasPrefix(path, p.Path+"[")) {
				return true
			}
		}
		return false
	}
}
