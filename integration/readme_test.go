package integration

import (
	"bufio"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cleanroom-ci/cleanroom/integration/harness"
	"github.com/cleanroom-ci/cleanroom/internal/lab"
	"github.com/cleanroom-ci/cleanroom/internal/testutil"
)

// quickstartBlocks returns the README's ```sh quickstart blocks, in order.
func quickstartBlocks(t *testing.T, readme string) []string {
	t.Helper()
	f, err := os.Open(readme)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var blocks []string
	var cur []string
	in := false
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		switch {
		case !in && strings.TrimSpace(line) == "```sh quickstart":
			in, cur = true, nil
		case in && strings.TrimSpace(line) == "```":
			in = false
			blocks = append(blocks, strings.Join(cur, "\n"))
		case in:
			cur = append(cur, line)
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	if in || len(blocks) == 0 {
		t.Fatalf("README: %d quickstart blocks, last one unterminated: %v", len(blocks), in)
	}
	return blocks
}

// quickstartSubstitutions are the only changes made to the README's blocks
// for the lab, each required to apply: the coordinator's data dir and the
// agent's config go under the test's folder instead of the host's /var/lib
// and /etc, and the internal registry is the lab's Verdaccio (whose name the
// lab has no DNS for, hence --host). Everything else runs verbatim, as root,
// inside the lab's host network namespace (nsenter --net, as the harness
// runs the agent), with the CLI config in a fresh XDG_CONFIG_HOME; background
// processes the blocks start are stopped (SIGTERM) when the script ends.
func quickstartSubstitutions(dir string) [][2]string {
	return [][2]string{
		{"/var/lib/cleanroom", filepath.Join(dir, "var/lib/cleanroom")},
		{"/etc/cleanroom", filepath.Join(dir, "etc/cleanroom")},
		{"https://npm.internal.example/", harness.RegistryURL + " --host " + lab.RegistryName + "=" + lab.RegistryIP.String()},
	}
}

// TestReadmeQuickstart runs the README's quickstart blocks, as a new user
// copies them, from `make build` to the job's egress log, so the README
// cannot drift from what works.
func TestReadmeQuickstart(t *testing.T) {
	testutil.RequiresRoot(t)
	addr := testutil.ContainerdAddress(t)
	repo, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	script := strings.Join(quickstartBlocks(t, filepath.Join(repo, "README.md")), "\n")
	for _, s := range quickstartSubstitutions(dir) {
		if !strings.Contains(script, s[0]) {
			t.Fatalf("README quickstart no longer contains %q: update quickstartSubstitutions", s[0])
		}
		script = strings.ReplaceAll(script, s[0], s[1])
	}
	// Stop what the blocks started in the background (the coordinator and
	// the agent) when the script ends, pass or fail, and wait for them.
	script = "trap 'kill $(jobs -p) 2>/dev/null; wait' EXIT\n" + script

	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	var progress testutil.SyncBuffer
	e, err := harness.Start(ctx, harness.Options{Bin: "unused", Repo: repo, Containerd: addr, Name: "readme",
		NoCoordinator: true, Progress: &progress})
	if err != nil {
		t.Fatalf("starting the lab: %v", err)
	}
	defer func() {
		if err := e.Close(); err != nil {
			t.Errorf("closing the lab: %v", err)
		}
	}()

	cmd := exec.CommandContext(ctx, "nsenter", "--net="+e.Lab.HostNSPath(), "--", "bash", "-euo", "pipefail", "-c", script)
	cmd.Dir = repo
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "CLEANROOM_URL=") && !strings.HasPrefix(kv, "CLEANROOM_TOKEN=") && !strings.HasPrefix(kv, "XDG_CONFIG_HOME=") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.Env = append(cmd.Env, "XDG_CONFIG_HOME="+filepath.Join(dir, "config"), "CLEANROOM_CONTAINERD_ADDRESS="+addr, "NO_COLOR=1")
	out, err := cmd.CombinedOutput()
	t.Logf("quickstart script:\n%s\noutput:\n%s", script, out)
	if err != nil {
		t.Fatalf("the README quickstart failed: %v", err)
	}
	for _, want := range []string{
		"logged in to http://127.0.0.1:7070",
		"(from config file " + filepath.Join(dir, "config", "cleanroom", "config.yaml") + ")",
		"OK   containerd",
		"OK   registry " + harness.RegistryURL,
		"registered runner build-01",
		"artifact(s)",
		"VERDICT",
		// The job reached the registry only through its gateway, which
		// served the lockfile's tarballs (an http event each).
		"(registry gateway)",
		"GET typescript@5.6.3 200",
	} {
		if !strings.Contains(string(out), want) {
			t.Errorf("the quickstart's output lacks %q", want)
		}
	}
}
