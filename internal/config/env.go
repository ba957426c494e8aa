package config

import (
	"strings"
)

// expandEnv substitutes environment variables in YAML text before it is
// parsed:
//
//	${VAR}            the value of VAR; an error when VAR is not set
//	${VAR:-default}   the value of VAR, or default when VAR is unset or empty
//	$$                a literal $
//
// A $ followed by anything else is kept as is. YAML comments are copied
// unchanged, so they may mention ${VAR} freely. The substituted text is
// YAML: quote values that may contain characters such as ": " or " #".
func expandEnv(text string, lookup func(string) (string, bool)) (string, []Problem) {
	var (
		out  strings.Builder
		errs problems
	)
	out.Grow(len(text))
	lineNo := 0
	for line := range strings.SplitAfterSeq(text, "\n") {
		lineNo++
		cut := commentStart(line)
		body, comment := line[:cut], line[cut:]
		for i := 0; i < len(body); i++ {
			c := body[i]
			if c != '$' || i+1 == len(body) {
				out.WriteByte(c)
				continue
			}
			switch body[i+1] {
			case '$':
				out.WriteByte('$')
				i++
			case '{':
				end := strings.IndexByte(body[i+2:], '}')
				if end < 0 {
					errs.addLine(lineNo, "", "unterminated ${ (missing })")
					out.WriteString(body[i:])
					i = len(body)
					continue
				}
				expr := body[i+2 : i+2+end]
				i += 2 + end
				name, def, hasDef := strings.Cut(expr, ":-")
				if !validEnvName(name) {
					errs.addLine(lineNo, "", "invalid variable reference ${%s} (want ${NAME} or ${NAME:-default}; write $$ for a literal $)", expr)
					continue
				}
				val, ok := lookup(name)
				switch {
				case hasDef && val == "":
					val = def
				case !ok:
					errs.addLine(lineNo, "", "environment variable %s is not set (give a default with ${%s:-value})", name, name)
					continue
				}
				if strings.ContainsAny(val, "\r\n") {
					errs.addLine(lineNo, "", "environment variable %s contains a line break, which cannot be substituted into YAML (use a *_file setting for such values)", name)
					continue
				}
				out.WriteString(val)
			default:
				out.WriteByte(c)
			}
		}
		out.WriteString(comment)
	}
	return out.String(), errs
}

func validEnvName(s string) bool {
	if s == "" {
		return false
	}
	for i, r := range s {
		switch {
		case r == '_', r >= 'A' && r <= 'Z', r >= 'a' && r <= 'z':
		case r >= '0' && r <= '9' && i > 0:
		default:
			return false
		}
	}
	return true
}

// commentStart returns the index at which a YAML comment starts in line, or
// len(line). A # starts a comment at the start of the line or after a blank,
// outside quoted scalars. Quotes are tracked within the line only, which is
// enough for configuration files.
func commentStart(line string) int {
	var quote byte
	for i := 0; i < len(line); i++ {
		c := line[i]
		switch {
		case quote == '"':
			if c == '\\' {
				i++
			} else if c == '"' {
				quote = 0
			}
		case quote == '\'':
			if c == '\'' {
				if i+1 < len(line) && line[i+1] == '\'' {
					i++ // '' is an escaped quote
				} else {
					quote = 0
				}
			}
		case c == '#':
			if i == 0 || line[i-1] == ' ' || line[i-1] == '\t' {
				return i
			}
		case c == '"' || c == '\'':
			// A quote opens a quoted scalar only where a scalar can start,
			// not inside a plain one (as in "it's").
			if i == 0 || strings.IndexByte(" \t[{,:", line[i-1]) >= 0 {
				quote = c
			}
		}
	}
	return len(line)
}
