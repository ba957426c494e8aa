package mailjob

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"
	"unicode/utf8"
)

// schemaValidator implements the JSON Schema (draft 2020-12) keywords the
// mailpipe schemas use, and refuses schemas that use others, so that a
// new keyword cannot be silently ignored by these tests. "format" is an
// annotation, as in the specification's default.
type schemaValidator struct {
	t    testing.TB
	root map[string]any
	res  map[string]*regexp.Regexp
}

var annotationKeywords = map[string]bool{
	"$schema": true, "$id": true, "$defs": true, "$comment": true, "title": true,
	"description": true, "default": true, "examples": true, "format": true,
}

func newSchemaValidator(t testing.TB, schema []byte) *schemaValidator {
	t.Helper()
	var root map[string]any
	if err := json.Unmarshal(schema, &root); err != nil {
		t.Fatalf("schema is not JSON: %v", err)
	}
	if root["$schema"] != "https://json-schema.org/draft/2020-12/schema" {
		t.Fatalf("schema declares %v, want draft 2020-12", root["$schema"])
	}
	return &schemaValidator{t: t, root: root, res: map[string]*regexp.Regexp{}}
}

// validate returns the instance locations and keywords that fail.
func (sv *schemaValidator) validate(instance any) []string {
	return sv.check(sv.root, instance, "")
}

func (sv *schemaValidator) check(schema any, inst any, path string) []string {
	switch s := schema.(type) {
	case bool:
		if s {
			return nil
		}
		return []string{path + ": false schema"}
	case map[string]any:
		var errs []string
		fail := func(kw string, format string, args ...any) {
			errs = append(errs, fmt.Sprintf("%s: %s: %s", path, kw, fmt.Sprintf(format, args...)))
		}
		keys := make([]string, 0, len(s))
		for k := range s {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, kw := range keys {
			val := s[kw]
			switch kw {
			case "$ref":
				errs = append(errs, sv.check(sv.ref(val.(string)), inst, path)...)
			case "type":
				if !hasType(inst, val.(string)) {
					fail(kw, "%s is not %s", typeName(inst), val)
				}
			case "enum":
				if !slices.ContainsFunc(val.([]any), func(e any) bool { return reflect.DeepEqual(e, inst) }) {
					fail(kw, "%v not in %v", inst, val)
				}
			case "const":
				if !reflect.DeepEqual(val, inst) {
					fail(kw, "%v is not %v", inst, val)
				}
			case "properties":
				if o, ok := inst.(map[string]any); ok {
					for name, sub := range val.(map[string]any) {
						if v, ok := o[name]; ok {
							errs = append(errs, sv.check(sub, v, field(path, name))...)
						}
					}
				}
			case "required":
				if o, ok := inst.(map[string]any); ok {
					for _, name := range val.([]any) {
						if _, ok := o[name.(string)]; !ok {
							fail(kw, "%s missing", name)
						}
					}
				}
			case "additionalProperties":
				if o, ok := inst.(map[string]any); ok {
					props, _ := s["properties"].(map[string]any)
					for name, v := range o {
						if _, declared := props[name]; !declared {
							errs = append(errs, sv.check(val, v, key(path, name))...)
						}
					}
				}
			case "propertyNames":
				if o, ok := inst.(map[string]any); ok {
					for name := range o {
						errs = append(errs, sv.check(val, name, key(path, name))...)
					}
				}
			case "maxProperties", "minProperties":
				if o, ok := inst.(map[string]any); ok {
					if n := float64(len(o)); (kw == "maxProperties" && n > val.(float64)) || (kw == "minProperties" && n < val.(float64)) {
						fail(kw, "%v properties", n)
					}
				}
			case "items":
				if a, ok := inst.([]any); ok {
					for i, v := range a {
						errs = append(errs, sv.check(val, v, index(path, i))...)
					}
				}
			case "maxItems", "minItems":
				if a, ok := inst.([]any); ok {
					if n := float64(len(a)); (kw == "maxItems" && n > val.(float64)) || (kw == "minItems" && n < val.(float64)) {
						fail(kw, "%v items", n)
					}
				}
			case "maxLength", "minLength":
				if str, ok := inst.(string); ok {
					if n := float64(utf8.RuneCountInString(str)); (kw == "maxLength" && n > val.(float64)) || (kw == "minLength" && n < val.(float64)) {
						fail(kw, "%v characters", n)
					}
				}
			case "pattern":
				if str, ok := inst.(string); ok && !sv.re(val.(string)).MatchString(str) {
					fail(kw, "%q does not match", str)
				}
			case "minimum", "maximum":
				if n, ok := inst.(float64); ok {
					if (kw == "minimum" && n < val.(float64)) || (kw == "maximum" && n > val.(float64)) {
						fail(kw, "%v", n)
					}
				}
			case "allOf":
				for _, sub := range val.([]any) {
					errs = append(errs, sv.check(sub, inst, path)...)
				}
			case "anyOf", "oneOf":
				n := 0
				for _, sub := range val.([]any) {
					if len(sv.check(sub, inst, path)) == 0 {
						n++
					}
				}
				if n == 0 || (kw == "oneOf" && n > 1) {
					fail(kw, "%d subschemas match", n)
				}
			case "not":
				if len(sv.check(val, inst, path)) == 0 {
					fail(kw, "matches")
				}
			case "if":
				branch := "else"
				if len(sv.check(val, inst, path)) == 0 {
					branch = "then"
				}
				if sub, ok := s[branch]; ok {
					errs = append(errs, sv.check(sub, inst, path)...)
				}
			case "then", "else":
				// with "if"
			default:
				if !annotationKeywords[kw] {
					sv.t.Fatalf("the schema uses %q, which this test's validator does not implement", kw)
				}
			}
		}
		return errs
	}
	sv.t.Fatalf("schema at %s is a %T", path, schema)
	return nil
}

func (sv *schemaValidator) ref(r string) any {
	name, ok := strings.CutPrefix(r, "#/$defs/")
	if !ok {
		sv.t.Fatalf("unsupported $ref %q", r)
	}
	def, ok := sv.root["$defs"].(map[string]any)[name]
	if !ok {
		sv.t.Fatalf("$ref %q: no such definition", r)
	}
	return def
}

func (sv *schemaValidator) re(p string) *regexp.Regexp {
	if re, ok := sv.res[p]; ok {
		return re
	}
	re, err := regexp.Compile(p)
	if err != nil {
		sv.t.Fatalf("pattern %q: %v", p, err)
	}
	sv.res[p] = re
	return re
}

func hasType(v any, typ string) bool {
	switch typ {
	case "object":
		_, ok := v.(map[string]any)
		return ok
	case "array":
		_, ok := v.([]any)
		return ok
	case "string":
		_, ok := v.(string)
		return ok
	case "boolean":
		_, ok := v.(bool)
		return ok
	case "number":
		_, ok := v.(float64)
		return ok
	case "integer":
		n, ok := v.(float64)
		return ok && n == math.Trunc(n)
	case "null":
		return v == nil
	}
	panic("unknown type " + typ)
}

func typeName(v any) string {
	switch v.(type) {
	case map[string]any:
		return "object"
	case []any:
		return "array"
	case string:
		return "string"
	case bool:
		return "boolean"
	case float64:
		return "number"
	case nil:
		return "null"
	}
	return fmt.Sprintf("%T", v)
}

// schemaAccepts reports whether the JSON data is valid under the schema.
// Data that is not JSON is not valid.
func schemaAccepts(sv *schemaValidator, data []byte) (bool, []string) {
	var inst any
	if err := json.Unmarshal(data, &inst); err != nil {
		return false, []string{err.Error()}
	}
	errs := sv.validate(inst)
	return len(errs) == 0, errs
}

type expectation struct {
	Paths         []string `json:"paths"`
	SchemaRejects bool     `json:"schema_rejects"`
	Note          string   `json:"note"`
}

// TestCorpus checks the Go validation and the JSON Schema against the
// corpus in testdata/jobs: valid jobs pass both; each invalid job is
// refused by the Go validation with exactly the expected problem paths,
// and by the schema unless the rule is one a schema cannot express
// (schema_rejects false: configurable limits, internationalized domains,
// case-insensitive header names, ...).
func TestCorpus(t *testing.T) {
	sv := newSchemaValidator(t, Schema())
	valid, err := filepath.Glob("testdata/jobs/valid/*.json")
	if err != nil || len(valid) < 5 {
		t.Fatalf("valid corpus: %v %v", valid, err)
	}
	for _, f := range valid {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := ValidateJSON(data, DefaultLimits); err != nil {
			t.Errorf("%s: Go: %v", f, err)
		}
		if ok, errs := schemaAccepts(sv, data); !ok {
			t.Errorf("%s: schema: %v", f, errs)
		}
	}

	var expect map[string]expectation
	data, err := os.ReadFile("testdata/jobs/invalid/expect.json")
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(data, &expect); err != nil {
		t.Fatal(err)
	}
	invalid, _ := filepath.Glob("testdata/jobs/invalid/*.json")
	for _, f := range invalid {
		name := filepath.Base(f)
		if name == "expect.json" {
			continue
		}
		e, ok := expect[name]
		if !ok {
			t.Errorf("%s is not in expect.json", name)
			continue
		}
		delete(expect, name)
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		_, err = ValidateJSON(data, DefaultLimits)
		probs := problemsOf(t, err)
		if len(probs) == 0 {
			t.Errorf("%s: Go accepts it", name)
			continue
		}
		got := make([]string, len(probs))
		for i, p := range probs {
			got[i] = p.Path
		}
		want := slices.Clone(e.Paths)
		slices.Sort(got)
		slices.Sort(want)
		if !slices.Equal(got, want) {
			t.Errorf("%s: problem paths %q, want %q; problems: %v", name, got, want, probs)
		}
		for _, p := range probs {
			if strings.TrimSpace(p.Reason) == "" {
				t.Errorf("%s: %s has no reason", name, p.Path)
			}
		}
		ok, errs := schemaAccepts(sv, data)
		if e.SchemaRejects && ok {
			t.Errorf("%s: the schema accepts it", name)
		}
		if !e.SchemaRejects && !ok {
			t.Errorf("%s: the schema rejects it (%v): set schema_rejects", name, errs)
		}
	}
	for name := range expect {
		t.Errorf("expect.json names %s, which does not exist", name)
	}
}

// TestSchemaMatchesStructure checks that the Job type, the strict parser's
// structure and the schema have the same fields, kinds and required
// lists.
func TestSchemaMatchesStructure(t *testing.T) {
	sv := newSchemaValidator(t, Schema())
	var walk func(path string, sh *shape, schema map[string]any, typ reflect.Type)
	walk = func(path string, sh *shape, schema map[string]any, typ reflect.Type) {
		if r, ok := schema["$ref"].(string); ok {
			schema = sv.ref(r).(map[string]any)
		}
		label := path
		if label == "" {
			label = "(job)"
		}
		wantType := map[kind]string{kString: "string", kBool: "boolean", kInt: "integer", kObject: "object",
			kArray: "array", kStringMap: "object"}[sh.kind]
		if got, _ := schema["type"].(string); got != wantType && !(path == "importance" && schema["enum"] != nil) {
			t.Errorf("%s: schema type %q, parser expects %q", label, got, wantType)
		}
		for typ.Kind() == reflect.Pointer || typ.Kind() == reflect.Slice {
			typ = typ.Elem()
		}
		switch sh.kind {
		case kObject:
			if schema["additionalProperties"] != false {
				t.Errorf("%s: schema allows additional properties", label)
			}
			props, _ := schema["properties"].(map[string]any)
			var req []string
			for _, r := range schema["required"].([]any) {
				req = append(req, r.(string))
			}
			goFields := jsonFields(typ)
			var shapeNames, shapeReq []string
			for _, f := range sh.fields {
				shapeNames = append(shapeNames, f.name)
				if f.required {
					shapeReq = append(shapeReq, f.name)
				}
				sub, ok := props[f.name].(map[string]any)
				if !ok {
					t.Errorf("%s: the schema lacks %s", label, f.name)
					continue
				}
				ft, ok := goFields[f.name]
				if !ok {
					t.Errorf("%s: the Go type %s lacks %s", label, typ, f.name)
					continue
				}
				walk(field(path, f.name), f.shape, sub, ft)
			}
			if !sameSet(shapeNames, mapKeys(props)) {
				t.Errorf("%s: schema properties %v, parser fields %v", label, mapKeys(props), shapeNames)
			}
			if !sameSet(shapeNames, mapKeys(goFields)) {
				t.Errorf("%s: Go fields %v, parser fields %v", label, mapKeys(goFields), shapeNames)
			}
			if !sameSet(req, shapeReq) {
				t.Errorf("%s: schema requires %v, parser requires %v", label, req, shapeReq)
			}
		case kArray:
			walk(index(path, 0), sh.elem, schema["items"].(map[string]any), typ)
		case kStringMap:
			if ap, ok := schema["additionalProperties"].(map[string]any); !ok || ap["type"] != "string" {
				t.Errorf("%s: schema values are not strings", label)
			}
			if typ.Kind() != reflect.Map || typ.Elem().Kind() != reflect.String {
				t.Errorf("%s: Go type %s is not a map of strings", label, typ)
			}
		}
	}
	walk("", jobShape, sv.root, reflect.TypeFor[Job]())
}

func jsonFields(typ reflect.Type) map[string]reflect.Type {
	out := map[string]reflect.Type{}
	for i := range typ.NumField() {
		f := typ.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if name != "" && name != "-" {
			out[name] = f.Type
		}
	}
	return out
}

func mapKeys[V any](m map[string]V) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

func sameSet(a, b []string) bool {
	a, b = slices.Clone(a), slices.Clone(b)
	slices.Sort(a)
	slices.Sort(b)
	return slices.Equal(a, b)
}

// TestGoOutputMatchesSchema checks that what Publish would send is valid
// under the schema, and that it parses back to the same job.
func TestGoOutputMatchesSchema(t *testing.T) {
	sv := newSchemaValidator(t, Schema())
	for _, j := range []*Job{validJob(), minimalJob()} {
		data, err := json.Marshal(j)
		if err != nil {
			t.Fatal(err)
		}
		if ok, errs := schemaAccepts(sv, data); !ok {
			t.Errorf("%s: %v\n%s", j.JobID, errs, data)
		}
		back, err := ValidateJSON(data, DefaultLimits)
		if err != nil {
			t.Fatalf("%s: %v", j.JobID, err)
		}
		if !reflect.DeepEqual(back, j) {
			t.Errorf("round trip:\n got %+v\nwant %+v", back, j)
		}
	}
}

func TestStatusSchema(t *testing.T) {
	sv := newSchemaValidator(t, StatusSchema())
	now := time.Date(2026, 3, 2, 8, 15, 4, 0, time.UTC)
	for _, ev := range []StatusEvent{
		{JobID: "a.b", Type: StatusAccepted, Time: now, Attempt: 1, From: "billing@example.com"},
		{JobID: "a.b", Type: StatusSent, Time: now, Attempt: 1, InternetMessageID: "<x@example.com>", Correlation: map[string]string{"k": "v"}},
		{JobID: "a.b", Type: StatusFailed, Time: now, Attempt: 2, Reason: "429", ReasonCode: ReasonThrottled},
		{JobID: "a.b", Type: StatusFailed, Time: now, Attempt: 3, Permanent: true, Reason: "no", ReasonCode: ReasonSendAsDenied},
	} {
		data, err := json.Marshal(ev)
		if err != nil {
			t.Fatal(err)
		}
		if ok, errs := schemaAccepts(sv, data); !ok {
			t.Errorf("%s: %v", data, errs)
		}
		if ev.Type == StatusFailed && !bytes.Contains(data, []byte(`"permanent":`)) {
			t.Errorf("failed event without permanent: %s", data)
		}
		if ev.Type != StatusFailed && bytes.Contains(data, []byte(`"permanent"`)) {
			t.Errorf("%s event with permanent: %s", ev.Type, data)
		}
	}
	if ok, _ := schemaAccepts(sv, []byte(`{"job_id":"a","type":"failed","time":"2026-03-02T08:15:04Z","attempt":1}`)); ok {
		t.Error("failed event without reason accepted")
	}
}

// TestSchemaValidatorSelfCheck makes sure the test validator rejects what
// it should, so that TestCorpus cannot pass by accepting everything.
func TestSchemaValidatorSelfCheck(t *testing.T) {
	sv := newSchemaValidator(t, []byte(`{"$schema":"https://json-schema.org/draft/2020-12/schema",
		"type":"object","additionalProperties":false,"required":["a"],
		"properties":{"a":{"type":"integer","minimum":1},"b":{"type":"array","maxItems":1,"items":{"type":"string","pattern":"^x"}},
		"c":{"type":"object","propertyNames":{"pattern":"^k"},"additionalProperties":{"type":"string","maxLength":2}},
		"d":{"oneOf":[{"const":1},{"type":"integer"}]},"e":{"not":{"enum":["bad"]}}},
		"if":{"properties":{"a":{"const":2}}},"then":{"required":["b"]}}`))
	for doc, want := range map[string]bool{
		`{"a":1}`:                 true,
		`{"a":1.5}`:               false,
		`{"a":0}`:                 false,
		`{}`:                      false,
		`{"a":1,"z":1}`:           false,
		`{"a":1,"b":["y"]}`:       false,
		`{"a":1,"b":["x","x"]}`:   false,
		`{"a":1,"c":{"j":"v"}}`:   false,
		`{"a":1,"c":{"k":"vvv"}}`: false,
		`{"a":1,"c":{"k":"vv"}}`:  true,
		`{"a":1,"d":1}`:           false,
		`{"a":1,"d":2}`:           true,
		`{"a":1,"e":"bad"}`:       false,
		`{"a":2}`:                 false,
		`{"a":2,"b":["x"]}`:       true,
	} {
		if ok, errs := schemaAccepts(sv, []byte(doc)); ok != want {
			t.Errorf("%s: valid %v, want %v (%v)", doc, ok, want, errs)
		}
	}
}
