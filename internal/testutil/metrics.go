package testutil

import (
	"bufio"
	"strconv"
	"strings"
	"testing"
)

// ParseMetrics reads a Prometheus text exposition into series → value, a
// series written as exposed, e.g. `cleanroom_jobs{state="queued"}` (labels
// sorted by name), so tests can check that counters moved.
func ParseMetrics(t testing.TB, exposition string) map[string]float64 {
	t.Helper()
	out := map[string]float64{}
	sc := bufio.NewScanner(strings.NewReader(exposition))
	for sc.Scan() {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if i < 0 || err != nil {
			t.Fatalf("parsing metrics line %q: %v", line, err)
		}
		out[line[:i]] = v
	}
	return out
}
