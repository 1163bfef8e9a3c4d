package registry

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cleanroom-ci/cleanroom/internal/testutil"
)

// testCacheDir is the shared cache the tests install into: $CLEANROOM_CACHE or
// the default, so repeated runs reuse the Verdaccio install and tarballs.
func testCacheDir(t *testing.T) string {
	t.Helper()
	return CacheDir()
}

// examplesDir is the repository's examples folder.
func examplesDir(t *testing.T) string {
	t.Helper()
	d, err := filepath.Abs(filepath.Join("..", "..", "examples"))
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// needNode skips when the host has no node/npm: the harness runs Verdaccio
// with the host's node.
func needNode(t *testing.T) {
	t.Helper()
	testutil.RequiresCommands(t, "node", "npm")
}

// startSeeded installs, starts a loopback registry seeded with the example
// packages, and stops it when the test ends, checking that nothing is left.
func startSeeded(t *testing.T) *Registry {
	t.Helper()
	needNode(t)
	ctx := context.Background()
	in, err := Install(ctx, testCacheDir(t))
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	r, err := Start(ctx, Options{Install: in})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("verdaccio ready on %s in %v", r.URL, time.Since(start).Round(time.Millisecond))
	t.Cleanup(func() { stopAndCheck(t, r) })
	start = time.Now()
	if err := r.SeedExamples(ctx, examplesDir(t)); err != nil {
		t.Fatal(err)
	}
	t.Logf("seeded examples in %v", time.Since(start).Round(time.Millisecond))
	return r
}

// stopAndCheck stops r and fails if its process group or folder survive.
func stopAndCheck(t *testing.T, r *Registry) {
	t.Helper()
	if err := r.Stop(); err != nil {
		t.Errorf("Stop: %v", err)
	}
	if err := syscall.Kill(-r.PID, 0); !errors.Is(err, syscall.ESRCH) {
		t.Errorf("verdaccio process group %d still exists after Stop (kill 0: %v)", r.PID, err)
	}
	if _, err := os.Stat(r.Dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("registry folder %s still exists after Stop", r.Dir)
	}
}

// npm runs npm in dir with only the given userconfig and fails the test on
// error, returning the combined output.
func npm(t *testing.T, dir string, args ...string) string {
	t.Helper()
	cmd := exec.Command("npm", args...)
	cmd.Dir = dir
	cmd.Env = append(npmEnv(), "NO_COLOR=1")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("npm %s: %v\n%s", strings.Join(args, " "), err, tail(out, 4000))
	}
	return string(out)
}

// copyFiles copies the named files (relative paths) from src to dst.
func copyFiles(t *testing.T, src, dst string, names ...string) {
	t.Helper()
	for _, n := range names {
		b, err := os.ReadFile(filepath.Join(src, n))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.MkdirAll(filepath.Dir(filepath.Join(dst, n)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dst, n), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}
