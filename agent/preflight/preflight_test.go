package preflight_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cleanroom-ci/cleanroom/agent"
	"github.com/cleanroom-ci/cleanroom/agent/preflight"
	"github.com/cleanroom-ci/cleanroom/internal/testutil"
)

// testNS creates a network namespace for the test (ip_forward is 0 in a
// new one) and removes it at the end. The root namespace is never touched.
func testNS(t *testing.T) string {
	t.Helper()
	name := fmt.Sprintf("crlab-check-%d", time.Now().UnixNano()%1e9)
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add: %v: %s", err, out)
	}
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", name).Run() })
	return "/run/netns/" + name
}

// brokenHostConfig is a config whose host lacks three prerequisites, each
// faked honestly: ip_forward off in the (test) namespace the veths would
// live in, an image containerd does not have, and a data dir that cannot be
// created (its parent is a file).
func brokenHostConfig(t *testing.T) *agent.Config {
	t.Helper()
	file := filepath.Join(t.TempDir(), "not-a-dir")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := &agent.Config{Coordinator: "http://127.0.0.1:7070", RunnerID: "r", RunnerToken: "t", Name: "check",
		SigningKey: "/k", DataDir: filepath.Join(file, "data"), Image: "cleanroom.test/absent:1"}
	cfg.Containerd.Address = testutil.ContainerdAddress(t)
	cfg.Network.HostNetNS = testNS(t)
	cfg.Network.StateDir = t.TempDir()
	cfg.SetDefaults()
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	return cfg
}

// TestCheckNamesEachMissingPrerequisiteAndItsFix: each faked gap fails
// with its own fix; what the host does have passes.
func TestCheckNamesEachMissingPrerequisiteAndItsFix(t *testing.T) {
	testutil.RequiresRoot(t)
	cfg := brokenHostConfig(t)
	rep := preflight.Run(context.Background(), cfg, preflight.Options{})
	byName := map[string]preflight.Result{}
	for _, r := range rep {
		byName[r.Name] = r
	}
	for name, fix := range map[string]string{
		"ip_forward": "nsenter --net=" + cfg.Network.HostNetNS + " sysctl -w net.ipv4.ip_forward=1",
		"image":      "cleanroom image build --ref cleanroom.test/absent:1",
		"data dir":   "set data_dir",
	} {
		r, ok := byName[name]
		if !ok || !r.Failed || !strings.Contains(r.Fix, fix) {
			t.Errorf("%s: %+v, want a failure whose fix says %q", name, r, fix)
		}
		if !strings.HasPrefix(r.String(), "FAIL "+name+": ") || !strings.Contains(r.String(), " — fix: ") {
			t.Errorf("%s printed as %q", name, r.String())
		}
	}
	for _, name := range []string{"root", "containerd", "network state dir", "iptables", "runc"} {
		if r := byName[name]; r.Failed || !strings.HasPrefix(r.String(), "OK   "+name) {
			t.Errorf("%s: %q, want OK", name, r.String())
		}
	}
	if n := len(rep.Failed(true)); n < 3 {
		t.Errorf("%d failures, want at least 3:\n%v", n, rep)
	}
}

// TestCheckPassesWhatIsThere: ip_forward on in the test namespace, the
// data dir writable: those checks pass.
func TestCheckPassesWhatIsThere(t *testing.T) {
	testutil.RequiresRoot(t)
	cfg := brokenHostConfig(t)
	if out, err := exec.Command("nsenter", "--net="+cfg.Network.HostNetNS, "sysctl", "-qw", "net.ipv4.ip_forward=1").CombinedOutput(); err != nil {
		t.Fatalf("sysctl in the test namespace: %v: %s", err, out)
	}
	cfg.DataDir = t.TempDir()
	for _, r := range preflight.Run(context.Background(), cfg, preflight.Options{}) {
		if (r.Name == "ip_forward" || r.Name == "data dir") && r.Failed {
			t.Errorf("%s", r)
		}
	}
}

// TestReachFailsFastForAClosedPort: a registry nobody listens for fails
// within the timeout.
func TestReachFailsFastForAClosedPort(t *testing.T) {
	testutil.RequiresRoot(t)
	ns := testNS(t)
	if out, err := exec.Command("ip", "-n", filepath.Base(ns), "link", "set", "lo", "up").CombinedOutput(); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	start := time.Now()
	err := preflight.Reach(context.Background(), ns, map[string]string{"npm.internal": "127.0.0.1"}, "npm.internal:4873", time.Second)
	if err == nil || time.Since(start) > 3*time.Second {
		t.Fatalf("Reach = %v after %v", err, time.Since(start))
	}
}
