package throttle

import (
	"math"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// MaxRetryAfter bounds a server's Retry-After: a longer value is taken as
// this long (a garbled or hostile header must not stop a mailbox for days).
const MaxRetryAfter = time.Hour

// ParseRetryAfter reads a Retry-After header: delay-seconds, which Graph
// sends with a fraction ("2.128" is 2.128s, not 2s), or an HTTP date
// (relative to now; a past date is 0). ok is false for an empty or
// unreadable value.
func ParseRetryAfter(v string, now time.Time) (d time.Duration, ok bool) {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0, false
	}
	if isDecimal(v) {
		f, err := strconv.ParseFloat(v, 64)
		if err != nil || math.IsNaN(f) || math.IsInf(f, 0) || f < 0 {
			return 0, false
		}
		if f >= MaxRetryAfter.Seconds() {
			return MaxRetryAfter, true
		}
		return time.Duration(math.Round(f * float64(time.Second))), true
	}
	t, err := http.ParseTime(v)
	if err != nil {
		return 0, false
	}
	d = t.Sub(now)
	if d < 0 {
		d = 0
	}
	return min(d, MaxRetryAfter), true
}

// isDecimal reports whether v is digits with at most one '.', so that
// ParseFloat's other syntaxes (hex, exponents, "Inf", underscores) are not
// accepted.
func isDecimal(v string) bool {
	digits, dots := 0, 0
	for _, c := range v {
		switch {
		case c >= '0' && c <= '9':
			digits++
		case c == '.':
			dots++
		default:
			return false
		}
	}
	return digits > 0 && dots <= 1
}
