// Package testutil owns the helpers shared by the project's tests: gating
// root-only tests, finding the containerd instance the test run started,
// checking that a test leaves no goroutines behind, reading /metrics, and a
// buffer safe to read while something writes to it.
//
// Root tests are never skipped silently in CI: when CI=true (as .ci/run sets)
// and the process is not root, RequiresRoot fails the test instead of skipping.
package testutil

import (
	"bytes"
	"os"
	"os/exec"
	"runtime"
	"sync"
	"testing"
	"time"
)

// RequiresRoot gates a test that needs root (namespaces, iptables, containerd).
// Outside CI it skips with a reason; inside CI (CI=true) a missing root is a
// failure, because CI runs as root and a skip there would hide a broken setup.
func RequiresRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("test requires root, and CI must run it: run make test as root")
	}
	t.Skip("test requires root (run with sudo or via make test as root)")
}

// Unavailable ends a test whose prerequisite the host lacks (a kernel
// feature, a cgroup hierarchy): outside CI it skips with reason; with
// CI=true it fails, since CI's hosts have it and a skip would hide a broken
// setup.
func Unavailable(t testing.TB, reason string) {
	t.Helper()
	if os.Getenv("CI") == "true" {
		t.Fatalf("%s, and CI must run this test", reason)
	}
	t.Skip(reason)
}

// ContainerdAddress returns the containerd socket the tests should use:
// $CLEANROOM_CONTAINERD_ADDRESS (set by make test for its private instance),
// else /run/containerd/containerd.sock when present. It fails the test when
// neither is available, since every caller needs a real daemon.
func ContainerdAddress(t testing.TB) string {
	t.Helper()
	if a := os.Getenv("CLEANROOM_CONTAINERD_ADDRESS"); a != "" {
		return a
	}
	const def = "/run/containerd/containerd.sock"
	if _, err := os.Stat(def); err == nil {
		return def
	}
	t.Fatal("no containerd: set CLEANROOM_CONTAINERD_ADDRESS or run via make test, which starts a private containerd")
	return ""
}

// Image returns the node image reference tests run sandboxes from:
// $CLEANROOM_TEST_IMAGE (set by make test after make image), else the default
// reference that `cleanroom image build` imports.
func Image() string {
	if v := os.Getenv("CLEANROOM_TEST_IMAGE"); v != "" {
		return v
	}
	return "cleanroom.local/node:22"
}

// RequiresCommands gates a test on programs being on PATH (node, npm, …).
// Like RequiresRoot it fails instead of skipping when CI=true: CI installs
// them, so their absence there is a broken setup, not a reason to skip.
func RequiresCommands(t testing.TB, names ...string) {
	t.Helper()
	for _, n := range names {
		if _, err := exec.LookPath(n); err != nil {
			if os.Getenv("CI") == "true" {
				t.Fatalf("%s is not on PATH, and CI must run this test (make deps installs it)", n)
			}
			t.Skipf("%s is not on PATH", n)
		}
	}
}

// goroutineSettle is how long CheckGoroutines waits for goroutines to end.
var goroutineSettle = 5 * time.Second

// CheckGoroutines fails t when goroutines started during the test are still
// running at its end. Call it first in the test: the check is registered with
// t.Cleanup, so it runs after every cleanup registered later (servers
// stopped, agents drained), and waits up to 5s for goroutines that are on
// their way out before it prints every stack.
func CheckGoroutines(t testing.TB) {
	t.Helper()
	before := runtime.NumGoroutine()
	t.Cleanup(func() {
		deadline := time.Now().Add(goroutineSettle)
		for {
			n := runtime.NumGoroutine()
			if n <= before {
				return
			}
			if time.Now().After(deadline) {
				buf := make([]byte, 1<<20)
				buf = buf[:runtime.Stack(buf, true)]
				t.Errorf("goroutine leak: %d before, %d after\n%s", before, n, buf)
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
	})
}

// SyncBuffer is a bytes.Buffer safe to read while a process or a command
// writes to it.
type SyncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *SyncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *SyncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
