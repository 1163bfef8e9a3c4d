package buildexec

import (
	"context"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/cleanroom-ci/cleanroom/api"
	"github.com/cleanroom-ci/cleanroom/sandbox"
)

func TestLimitsForLetsJobsAskForLessNeverMore(t *testing.T) {
	e := &Executor{cfg: Config{Limits: sandbox.Limits{MemoryBytes: 2 << 30, CPUs: 2, Pids: 1024, DiskBytes: 4 << 30}}}
	got, err := e.limitsFor(api.Resources{Memory: 1 << 30, CPUs: 1, PIDs: 256})
	if err != nil {
		t.Fatal(err)
	}
	if got.MemoryBytes != 1<<30 || got.CPUs != 1 || got.Pids != 256 || got.DiskBytes != 4<<30 {
		t.Errorf("limits = %+v", got)
	}
	_, err = e.limitsFor(api.Resources{Memory: 8 << 30, CPUs: 16, PIDs: 1 << 20, Disk: 1 << 40})
	if err == nil {
		t.Fatal("a job raised its limits above the runner's")
	}
	for _, want := range []string{"resources.memory", "resources.cpus", "resources.pids", "resources.disk"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not name %s", err, want)
		}
	}
}

func TestCollectArtifactsNeverLeavesTheWorkspace(t *testing.T) {
	ws := t.TempDir()
	secret := filepath.Join(t.TempDir(), "host-secret")
	if err := os.WriteFile(secret, []byte("host file"), 0o600); err != nil {
		t.Fatal(err)
	}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.MkdirAll(filepath.Join(ws, "dist", "sub"), 0o755))
	must(os.WriteFile(filepath.Join(ws, "dist", "a.js"), []byte("a"), 0o644))
	must(os.WriteFile(filepath.Join(ws, "dist", "sub", "b.js"), []byte("b"), 0o644))
	must(os.Symlink(secret, filepath.Join(ws, "dist", "leak")))
	must(os.Symlink("/etc", filepath.Join(ws, "dist", "etc")))
	must(os.Symlink(secret, filepath.Join(ws, "toplink")))

	out := t.TempDir()
	arts, err := collectArtifacts(context.Background(), ws, []string{"dist/", "toplink", "nothing/*"}, out, ArtifactLimits{MaxBytes: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, a := range arts {
		names = append(names, a.Name)
		b, _ := os.ReadFile(a.Path)
		if string(b) == "host file" {
			t.Errorf("artifact %s carries a host file through a symlink", a.Name)
		}
	}
	sort.Strings(names)
	if strings.Join(names, ",") != "dist/a.js,dist/sub/b.js" {
		t.Errorf("artifacts = %v, want the two regular files only", names)
	}
	for _, bad := range []string{"../x", "/etc/passwd", ".."} {
		if _, err := collectArtifacts(context.Background(), ws, []string{bad}, t.TempDir(), ArtifactLimits{MaxBytes: 1 << 20}); err == nil {
			t.Errorf("pattern %q accepted", bad)
		}
	}
}

func TestSandboxIDFitsTheSandboxAlphabet(t *testing.T) {
	if got := sandboxID("j-ABC_12.x"); got != "j-abc-12-x" {
		t.Errorf("sandboxID = %q", got)
	}
}

func TestNewRefusesAnIncompleteConfig(t *testing.T) {
	_, err := New(Config{Registries: []string{"ftp://x"}})
	if err == nil {
		t.Fatal("incomplete config accepted")
	}
	for _, want := range []string{"registry", "signing key", "secret store", "containerd"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %s", err, want)
		}
	}
}
