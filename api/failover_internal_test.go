package api

import (
	"slices"
	"testing"
	"time"
)

func TestEndpointsStickToTheLastWorkingOneAndTryFailedOnesLast(t *testing.T) {
	now := time.Unix(1000, 0)
	e := newEndpoints("http://a, http://b/ ,http://c,")
	e.now = func() time.Time { return now }
	if want := []string{"http://a", "http://b", "http://c"}; !slices.Equal(e.urls, want) {
		t.Fatalf("urls %q, want %q", e.urls, want)
	}
	check := func(what string, want ...int) {
		t.Helper()
		if got := e.order(); !slices.Equal(got, want) {
			t.Fatalf("%s: order %v, want %v", what, got, want)
		}
	}
	check("at start", 0, 1, 2)
	e.failed(0)
	check("a failed", 1, 2, 0)
	e.ok(2)
	check("c answered: c first, a (backed off) after b", 2, 1, 0)
	now = now.Add(600 * time.Millisecond)
	check("a's backoff over", 2, 0, 1)
	e.failed(0)
	now = now.Add(600 * time.Millisecond)
	check("a failed twice: backed off for 1s", 2, 1, 0)
	now = now.Add(500 * time.Millisecond)
	check("a's second backoff over", 2, 0, 1)
	e.failed(2)
	e.failed(0)
	e.failed(1)
	check("all failed: every one is still tried", 2, 0, 1)
	for range 20 {
		e.failed(1)
	}
	if d := e.until[1].Sub(now); d != maxEndpointBackoff {
		t.Fatalf("backoff after many failures %s, want the cap %s", d, maxEndpointBackoff)
	}
}
