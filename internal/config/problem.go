package config

import (
	"fmt"
	"strings"
)

// Problem is one thing wrong with a configuration.
type Problem struct {
	// Path is the key path, e.g. mailboxes[1].imap.host; empty for problems
	// that concern the file as a whole.
	Path string
	// Msg says what is wrong. It never contains a secret value.
	Msg string
	// Line is the 1-based line in the YAML text the problem was found at,
	// or 0 when unknown (e.g. for Validate on a config built in code).
	Line int
}

// String renders the problem as "path: message", with " (line N)" appended
// when the line is known.
func (p Problem) String() string {
	var b strings.Builder
	if p.Path != "" {
		b.WriteString(p.Path)
		b.WriteString(": ")
	} else if p.Line > 0 {
		fmt.Fprintf(&b, "line %d: ", p.Line)
	}
	b.WriteString(p.Msg)
	if p.Path != "" && p.Line > 0 {
		fmt.Fprintf(&b, " (line %d)", p.Line)
	}
	return b.String()
}

// ValidationError lists every problem found in a configuration.
type ValidationError struct {
	Problems []Problem
}

// Error renders a summary line followed by one problem per line.
func (e *ValidationError) Error() string {
	var b strings.Builder
	if len(e.Problems) == 1 {
		b.WriteString("invalid configuration (1 problem):")
	} else {
		fmt.Fprintf(&b, "invalid configuration (%d problems):", len(e.Problems))
	}
	for _, p := range e.Problems {
		b.WriteString("\n  ")
		b.WriteString(p.String())
	}
	return b.String()
}

// problems collects Problems.
type problems []Problem

func (ps *problems) add(path, format string, args ...any) {
	*ps = append(*ps, Problem{Path: path, Msg: fmt.Sprintf(format, args...)})
}

func (ps *problems) addLine(line int, path, format string, args ...any) {
	*ps = append(*ps, Problem{Path: path, Msg: fmt.Sprintf(format, args...), Line: line})
}

// dedupe drops repeated problems (a key inside a merged anchor is seen once
// per use) while keeping the order.
func dedupe(ps []Problem) []Problem {
	seen := make(map[Problem]bool, len(ps))
	out := ps[:0]
	for _, p := range ps {
		if !seen[p] {
			seen[p] = true
			out = append(out, p)
		}
	}
	return out
}

// joinKey appends a mapping key to a path.
func joinKey(path, key string) string {
	if !simpleKey(key) {
		key = fmt.Sprintf("%q", key)
		if path == "" {
			return "[" + key + "]"
		}
		return path + "[" + key + "]"
	}
	if path == "" {
		return key
	}
	return path + "." + key
}

func joinIndex(path string, i int) string {
	return fmt.Sprintf("%s[%d]", path, i)
}

func simpleKey(k string) bool {
	if k == "" {
		return false
	}
	for _, r := range k {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '_' || r == '-') {
			return false
		}
	}
	return true
}

// parentPath strips the last element of a key path ("a.b[2]" -> "a.b",
// "a.b" -> "a"); it returns "" for a top-level key.
func parentPath(p string) string {
	if strings.HasSuffix(p, "]") {
		if i := strings.LastIndexByte(p, '['); i >= 0 {
			return p[:i]
		}
		return ""
	}
	if i := strings.LastIndexByte(p, '.'); i >= 0 {
		return p[:i]
	}
	return ""
}
