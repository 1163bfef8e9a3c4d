package testutil

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

// recorder stands in for a test: it keeps the cleanups and the errors
// instead of running and reporting them.
type recorder struct {
	testing.TB
	cleanups []func()
	errs     []string
}

func (r *recorder) Helper()          {}
func (r *recorder) Cleanup(f func()) { r.cleanups = append(r.cleanups, f) }
func (r *recorder) Errorf(format string, args ...any) {
	r.errs = append(r.errs, fmt.Sprintf(format, args...))
}

func (r *recorder) runCleanups() {
	for i := len(r.cleanups) - 1; i >= 0; i-- {
		r.cleanups[i]()
	}
}

func TestCheckGoroutinesReportsAGoroutineLeftRunning(t *testing.T) {
	defer func(d time.Duration) { goroutineSettle = d }(goroutineSettle)
	goroutineSettle = 200 * time.Millisecond
	r := &recorder{TB: t}
	CheckGoroutines(r)
	stop := make(chan struct{})
	defer close(stop)
	go func() { <-stop }()
	r.runCleanups()
	if len(r.errs) != 1 || !strings.Contains(r.errs[0], "goroutine leak") || !strings.Contains(r.errs[0], "TestCheckGoroutinesReportsAGoroutineLeftRunning") {
		t.Fatalf("errors = %q, want one leak report with the leaked goroutine's stack", r.errs)
	}
}

func TestCheckGoroutinesWaitsForGoroutinesOnTheirWayOut(t *testing.T) {
	r := &recorder{TB: t}
	CheckGoroutines(r)
	go func() { time.Sleep(100 * time.Millisecond) }()
	r.runCleanups()
	if len(r.errs) != 0 {
		t.Fatalf("errors = %q, want none: the goroutine ended within the settle time", r.errs)
	}
}
