package config

import (
	"errors"
	"fmt"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

var (
	durationType = reflect.TypeFor[time.Duration]()
	byteSizeType = reflect.TypeFor[ByteSize]()
	secretType   = reflect.TypeFor[Secret]()
)

// maxNodes bounds the work of walking a document, so that a small file with
// nested aliases cannot make the loader spin.
const maxNodes = 1_000_000

// decoder walks a yaml.Node tree against a Go value, setting fields as it
// goes, and records every unknown key and type error with its key path
// instead of stopping at the first.
type decoder struct {
	problems problems
	// lines maps each key path seen to its line, so that later validation
	// problems can point into the file.
	lines map[string]int
	nodes int
}

func newDecoder() *decoder {
	return &decoder{lines: make(map[string]int)}
}

func (d *decoder) fail(n *yaml.Node, path, format string, args ...any) {
	d.problems.addLine(n.Line, path, format, args...)
}

func (d *decoder) decode(n *yaml.Node, v reflect.Value, path string) {
	if d.nodes++; d.nodes > maxNodes {
		if d.nodes == maxNodes+1 {
			d.fail(n, path, "document too complex (too many nodes after expanding aliases)")
		}
		return
	}
	for n.Kind == yaml.AliasNode {
		n = n.Alias
	}
	if n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null" {
		return // "key:" or "key: null" leaves the zero value
	}
	switch v.Type() {
	case durationType:
		if n.Kind != yaml.ScalarNode {
			d.fail(n, path, "expected a duration, got %s", describeNode(n))
			return
		}
		dur, err := parseDuration(n.Value)
		if err != nil {
			d.fail(n, path, "invalid duration %q (use a number with a unit, e.g. 30s, 5m, 1h30m, 7d)", n.Value)
			return
		}
		v.SetInt(int64(dur))
		return
	case byteSizeType:
		if n.Kind != yaml.ScalarNode {
			d.fail(n, path, "expected a size, got %s", describeNode(n))
			return
		}
		b, err := ParseByteSize(n.Value)
		if err != nil {
			d.fail(n, path, "%v", err)
			return
		}
		v.SetInt(int64(b))
		return
	}
	switch v.Kind() {
	case reflect.Struct:
		d.decodeStruct(n, v, path)
	case reflect.Map:
		d.decodeMap(n, v, path)
	case reflect.Slice:
		d.decodeSlice(n, v, path)
	case reflect.String:
		if n.Kind != yaml.ScalarNode {
			// Never echo the value: it may be a secret.
			d.fail(n, path, "expected a string, got %s", describeNode(n))
			return
		}
		v.SetString(n.Value)
	case reflect.Bool:
		var b bool
		err := errors.New("not a scalar")
		if n.Kind == yaml.ScalarNode {
			if err = n.Decode(&b); err != nil && n.ShortTag() == "!!str" {
				b, err = strconv.ParseBool(n.Value)
			}
		}
		if err != nil {
			if n.Kind == yaml.ScalarNode {
				d.fail(n, path, "invalid boolean %q (use true or false)", n.Value)
			} else {
				d.fail(n, path, "expected true or false, got %s", describeNode(n))
			}
			return
		}
		v.SetBool(b)
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		var i int64
		err := errors.New("not an integer")
		if n.Kind == yaml.ScalarNode {
			switch n.ShortTag() {
			case "!!int":
				err = n.Decode(&i)
			case "!!str": // a quoted number, e.g. "${PORT}"
				i, err = strconv.ParseInt(strings.TrimSpace(n.Value), 10, 64)
			}
			// Other tags (!!float, !!bool) are no integers; yaml.v3 would
			// truncate 1.5 to 1.
		}
		switch {
		case err != nil && n.Kind == yaml.ScalarNode:
			d.fail(n, path, "invalid integer %q", n.Value)
		case err != nil:
			d.fail(n, path, "expected an integer, got %s", describeNode(n))
		case v.OverflowInt(i):
			d.fail(n, path, "integer %d is out of range", i)
		default:
			v.SetInt(i)
		}
	default:
		d.fail(n, path, "cannot decode into %s", v.Type())
	}
}

func (d *decoder) decodeStruct(n *yaml.Node, v reflect.Value, path string) {
	if n.Kind != yaml.MappingNode {
		d.fail(n, path, "expected a mapping, got %s", describeNode(n))
		return
	}
	fields := yamlFields(v.Type())
	d.eachPair(n, path, func(k, val *yaml.Node) {
		kp := joinKey(path, k.Value)
		i, ok := fields[k.Value]
		if !ok {
			msg := "unknown key"
			if s := suggestKey(k.Value, v.Type()); s != "" {
				msg += fmt.Sprintf(" (did you mean %q?)", s)
			}
			d.fail(k, kp, "%s", msg)
			return
		}
		d.lines[kp] = k.Line
		d.decode(val, v.Field(i), kp)
	})
}

func (d *decoder) decodeMap(n *yaml.Node, v reflect.Value, path string) {
	if n.Kind != yaml.MappingNode {
		d.fail(n, path, "expected a mapping, got %s", describeNode(n))
		return
	}
	if v.Type().Key().Kind() != reflect.String {
		d.fail(n, path, "cannot decode into %s", v.Type())
		return
	}
	if v.IsNil() {
		v.Set(reflect.MakeMap(v.Type()))
	}
	d.eachPair(n, path, func(k, val *yaml.Node) {
		kp := joinKey(path, k.Value)
		d.lines[kp] = k.Line
		elem := reflect.New(v.Type().Elem()).Elem()
		d.decode(val, elem, kp)
		v.SetMapIndex(reflect.ValueOf(k.Value).Convert(v.Type().Key()), elem)
	})
}

func (d *decoder) decodeSlice(n *yaml.Node, v reflect.Value, path string) {
	if n.Kind != yaml.SequenceNode {
		d.fail(n, path, "expected a list, got %s", describeNode(n))
		return
	}
	s := reflect.MakeSlice(v.Type(), len(n.Content), len(n.Content))
	for i, item := range n.Content {
		ip := joinIndex(path, i)
		d.lines[ip] = item.Line
		d.decode(item, s.Index(i), ip)
	}
	v.Set(s)
}

// eachPair calls fn for every key/value of a mapping, first for the keys
// brought in by merge keys (<<: *anchor) so that explicit keys override
// them, and reports keys given twice.
func (d *decoder) eachPair(n *yaml.Node, path string, fn func(k, v *yaml.Node)) {
	seen := make(map[string]int)
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, val := n.Content[i], n.Content[i+1]
		if !isMergeKey(k) {
			continue
		}
		for val.Kind == yaml.AliasNode {
			val = val.Alias
		}
		switch val.Kind {
		case yaml.MappingNode:
			d.eachPair(val, path, fn)
		case yaml.SequenceNode:
			// Earlier entries win, so apply them last.
			for j := len(val.Content) - 1; j >= 0; j-- {
				src := val.Content[j]
				for src.Kind == yaml.AliasNode {
					src = src.Alias
				}
				if src.Kind != yaml.MappingNode {
					d.fail(src, path, "merge (<<) needs a mapping or a list of mappings")
					continue
				}
				d.eachPair(src, path, fn)
			}
		default:
			d.fail(val, path, "merge (<<) needs a mapping or a list of mappings")
		}
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, val := n.Content[i], n.Content[i+1]
		if isMergeKey(k) {
			continue
		}
		for k.Kind == yaml.AliasNode {
			k = k.Alias
		}
		if k.Kind != yaml.ScalarNode {
			d.fail(k, path, "mapping keys must be strings, got %s", describeNode(k))
			continue
		}
		if first, dup := seen[k.Value]; dup {
			d.fail(k, joinKey(path, k.Value), "duplicate key (first given on line %d)", first)
			continue
		}
		seen[k.Value] = k.Line
		fn(k, val)
	}
}

func isMergeKey(k *yaml.Node) bool {
	return k.Kind == yaml.ScalarNode && k.Value == "<<" && k.ShortTag() == "!!merge"
}

// describeNode names the kind of a node for error messages without showing
// its value.
func describeNode(n *yaml.Node) string {
	for n.Kind == yaml.AliasNode {
		n = n.Alias
	}
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.ScalarNode:
		switch n.ShortTag() {
		case "!!int", "!!float":
			return "a number"
		case "!!bool":
			return "a boolean"
		default:
			return "a string"
		}
	}
	return "nothing"
}

// yamlFields maps the yaml key of each field of struct type t to its index.
func yamlFields(t reflect.Type) map[string]int {
	m := make(map[string]int, t.NumField())
	for i := range t.NumField() {
		if name := yamlName(t.Field(i)); name != "" {
			m[name] = i
		}
	}
	return m
}

func yamlName(f reflect.StructField) string {
	if !f.IsExported() {
		return ""
	}
	tag, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
	switch tag {
	case "-":
		return ""
	case "":
		return strings.ToLower(f.Name)
	}
	return tag
}

// suggestKey proposes a known key for an unknown one: a field of the same
// mapping that is spelt alike, or a field one level down that has exactly
// this name (e.g. "host" directly under a mailbox -> "imap.host").
func suggestKey(key string, t reflect.Type) string {
	norm := normalizeKey(key)
	best, bestDist := "", -1
	limit := min(2, max(1, len(key)/3))
	for i := range t.NumField() {
		name := yamlName(t.Field(i))
		if name == "" {
			continue
		}
		if normalizeKey(name) == norm {
			return name
		}
		if dist := editDistance(strings.ToLower(key), name); dist <= limit && (bestDist < 0 || dist < bestDist) {
			best, bestDist = name, dist
		}
	}
	if best != "" {
		return best
	}
	for i := range t.NumField() {
		f := t.Field(i)
		name := yamlName(f)
		if name == "" || f.Type.Kind() != reflect.Struct || f.Type == durationType {
			continue
		}
		for j := range f.Type.NumField() {
			if sub := yamlName(f.Type.Field(j)); sub != "" && normalizeKey(sub) == norm {
				return name + "." + sub
			}
		}
	}
	return ""
}

// normalizeKey folds case and drops separators, so that clientSecret,
// client-secret and client_secret compare equal.
func normalizeKey(s string) string {
	return strings.Map(func(r rune) rune {
		switch r {
		case '_', '-', ' ':
			return -1
		}
		if r >= 'A' && r <= 'Z' {
			return r + 'a' - 'A'
		}
		return r
	}, s)
}

// editDistance is the optimal string alignment distance: insertions,
// deletions, substitutions and transpositions of adjacent characters.
func editDistance(a, b string) int {
	ra, rb := []rune(a), []rune(b)
	prev2 := make([]int, len(rb)+1)
	prev := make([]int, len(rb)+1)
	cur := make([]int, len(rb)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(ra); i++ {
		cur[0] = i
		for j := 1; j <= len(rb); j++ {
			cost := 1
			if ra[i-1] == rb[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
			if i > 1 && j > 1 && ra[i-1] == rb[j-2] && ra[i-2] == rb[j-1] {
				cur[j] = min(cur[j], prev2[j-2]+1)
			}
		}
		prev2, prev, cur = prev, cur, prev2
	}
	return prev[len(rb)]
}

var daysPrefix = regexp.MustCompile(`^(\d+)d`)

// parseDuration is time.ParseDuration that also accepts a leading number of
// days: 7d, 30d, 1d12h.
func parseDuration(s string) (time.Duration, error) {
	s = strings.TrimSpace(s)
	var days time.Duration
	if m := daysPrefix.FindStringSubmatch(s); m != nil {
		n, err := strconv.ParseInt(m[1], 10, 32)
		if err != nil || n > 100_000 {
			return 0, fmt.Errorf("invalid duration %q", s)
		}
		days = time.Duration(n) * 24 * time.Hour
		s = s[len(m[0]):]
		if s == "" {
			return days, nil
		}
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, err
	}
	if days > 0 && d < 0 {
		return 0, fmt.Errorf("invalid duration %q", s)
	}
	return days + d, nil
}
