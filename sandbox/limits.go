package sandbox

import (
	"fmt"
	"strconv"
	"strings"
)

// ParseSize parses a human size: a byte count, or a number with a unit
// k/m/g/t (powers of 1024; "Ki", "Mi", "KB", "MiB" … are accepted too).
// Zero, negative or unparseable sizes are errors naming the input.
func ParseSize(s string) (int64, error) {
	in := strings.TrimSpace(s)
	if in == "" {
		return 0, fmt.Errorf("size %q: empty", s)
	}
	num := in
	mult := int64(1)
	lower := strings.ToLower(in)
	for _, u := range []struct {
		suffix string
		mult   int64
	}{
		{"tib", 1 << 40}, {"gib", 1 << 30}, {"mib", 1 << 20}, {"kib", 1 << 10},
		{"tb", 1 << 40}, {"gb", 1 << 30}, {"mb", 1 << 20}, {"kb", 1 << 10},
		{"ti", 1 << 40}, {"gi", 1 << 30}, {"mi", 1 << 20}, {"ki", 1 << 10},
		{"t", 1 << 40}, {"g", 1 << 30}, {"m", 1 << 20}, {"k", 1 << 10}, {"b", 1},
	} {
		if strings.HasSuffix(lower, u.suffix) {
			num = strings.TrimSpace(in[:len(in)-len(u.suffix)])
			mult = u.mult
			break
		}
	}
	f, err := strconv.ParseFloat(num, 64)
	if err != nil {
		return 0, fmt.Errorf("size %q: not a number with an optional unit (k, m, g, t)", s)
	}
	if f <= 0 {
		return 0, fmt.Errorf("size %q: must be greater than zero", s)
	}
	v := f * float64(mult)
	if v > 1<<62 {
		return 0, fmt.Errorf("size %q: too large", s)
	}
	return int64(v), nil
}
