package config

import (
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"
)

// Size units. KB/MB/GB/TB are decimal, KiB/MiB/GiB/TiB binary.
const (
	KiB ByteSize = 1 << 10
	MiB ByteSize = 1 << 20
	GiB ByteSize = 1 << 30
	TiB ByteSize = 1 << 40

	KB ByteSize = 1e3
	MB ByteSize = 1e6
	GB ByteSize = 1e9
	TB ByteSize = 1e12
)

var byteUnits = []struct {
	suffix string
	size   ByteSize
}{
	// Longest suffixes first so that "KiB" is not read as "B".
	{"kib", KiB}, {"mib", MiB}, {"gib", GiB}, {"tib", TiB},
	{"kb", KB}, {"mb", MB}, {"gb", GB}, {"tb", TB},
	{"b", 1},
}

// ParseByteSize parses a size such as 512KiB, 35MiB, 1.5GiB, 10MB, 1024 or
// 1024B. Units are case-insensitive; a blank may separate number and unit.
func ParseByteSize(s string) (ByteSize, error) {
	in := strings.TrimSpace(s)
	if in == "" {
		return 0, errors.New("invalid size: empty")
	}
	num, mult := in, ByteSize(1)
	lower := strings.ToLower(in)
	for _, u := range byteUnits {
		if strings.HasSuffix(lower, u.suffix) {
			num, mult = strings.TrimSpace(in[:len(in)-len(u.suffix)]), u.size
			break
		}
	}
	bad := func() error {
		return fmt.Errorf("invalid size %q (use e.g. 512KiB, 35MiB, 1GiB, 10MB or a number of bytes)", s)
	}
	if num == "" || num[0] == '+' || num[0] == '-' {
		return 0, bad()
	}
	if n, err := strconv.ParseInt(num, 10, 64); err == nil {
		if n > math.MaxInt64/int64(mult) {
			return 0, fmt.Errorf("size %q is too large", s)
		}
		return ByteSize(n) * mult, nil
	}
	f, err := strconv.ParseFloat(num, 64)
	if err != nil || math.IsNaN(f) || math.IsInf(f, 0) || strings.ContainsAny(num, "xXpPeE_") {
		return 0, bad()
	}
	v := f * float64(mult)
	if v >= math.MaxInt64 {
		return 0, fmt.Errorf("size %q is too large", s)
	}
	if v != math.Trunc(v) {
		return 0, fmt.Errorf("size %q is not a whole number of bytes", s)
	}
	return ByteSize(v), nil
}

// String renders the size with the largest unit that represents it exactly:
// 512KiB, 35MiB, 10MB, 2GB, 1536B.
func (b ByteSize) String() string {
	if b == 0 {
		return "0B"
	}
	for _, u := range []struct {
		suffix string
		size   ByteSize
	}{
		// Largest unit first; a binary unit is larger than its decimal one.
		{"TiB", TiB}, {"TB", TB}, {"GiB", GiB}, {"GB", GB},
		{"MiB", MiB}, {"MB", MB}, {"KiB", KiB}, {"KB", KB},
	} {
		if b%u.size == 0 {
			return strconv.FormatInt(int64(b/u.size), 10) + u.suffix
		}
	}
	return strconv.FormatInt(int64(b), 10) + "B"
}

// Int64 returns the size in bytes.
func (b ByteSize) Int64() int64 { return int64(b) }

// UnmarshalYAML accepts a number of bytes or a string with a unit.
func (b *ByteSize) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.ScalarNode {
		return fmt.Errorf("expected a size, got %s", describeNode(n))
	}
	v, err := ParseByteSize(n.Value)
	if err != nil {
		return err
	}
	*b = v
	return nil
}

// MarshalYAML writes the size as String does.
func (b ByteSize) MarshalYAML() (any, error) { return b.String(), nil }

// MarshalText redacts the secret, so that encoding a configuration as JSON or
// YAML (e.g. to log the effective settings) does not reveal it.
func (s Secret) MarshalText() ([]byte, error) { return []byte(s.String()), nil }
