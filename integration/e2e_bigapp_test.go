package integration

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cleanroom-ci/cleanroom/api"
	"github.com/cleanroom-ci/cleanroom/integration/harness"
)

// The real-world-sized example (examples/webapp: React, webpack 5, Babel,
// 373 packages) builds end to end in a sandbox from its lockfile exactly as
// the public registry produced it: the entries resolved on
// registry.npmjs.org pass the gate as registry_aliases of the internal
// registry and are installed from it; the build's artifacts, SBOM and
// provenance come back.
func TestWebappBuildsFromItsPublicLockfile(t *testing.T) {
	e := env(t)
	a := agentFor(t, e, "main", harness.AgentOptions{Labels: "lane=" + laneMain})
	ctx := timeout(t, 12*time.Minute)
	if err := e.SeedWebapp(ctx); err != nil {
		t.Fatal(err)
	}

	dir := copyExample(t, "webapp")
	lock, err := os.ReadFile(filepath.Join(dir, "package-lock.json"))
	if err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(string(lock), `"resolved": "https://registry.npmjs.org/`); n < 300 {
		t.Fatalf("the webapp lockfile has %d entries resolved at the public registry, want its 373 unchanged", n)
	}
	editSpec(t, dir, func(s map[string]any) { s["labels"] = map[string]any{"lane": laneMain} })
	id := submit(ctx, t, e, dir)
	j := waitTerminal(ctx, t, e, id, 10*time.Minute)
	log := jobLog(ctx, t, e, id)
	if j.State != api.StateSucceeded {
		t.Fatalf("job %s: state %s (%s), want succeeded; log:\n%s", id, j.State, j.Reason, log)
	}
	if j.RunnerID != a.RunnerID() {
		t.Errorf("job ran on runner %s, want %s", j.RunnerID, a.RunnerID())
	}
	if !strings.Contains(log, "compiled successfully") {
		t.Errorf("the log does not show webpack's success line; log:\n%s", log)
	}
	assertSandboxGone(ctx, t, e, id)

	out := filepath.Join(t.TempDir(), "artifacts")
	cli(ctx, t, e, "artifacts", id, "-o", out)
	files := listFiles(t, out)
	for _, want := range []string{"dist/index.html", "sbom.cdx.json", "provenance.intoto.jsonl"} {
		if !slices.Contains(files, want) {
			t.Fatalf("downloaded artifacts %v lack %s", files, want)
		}
	}
	var js, css int
	for _, f := range files {
		switch {
		case strings.HasPrefix(f, "dist/assets/") && strings.HasSuffix(f, ".js"):
			js++
		case strings.HasPrefix(f, "dist/assets/") && strings.HasSuffix(f, ".css"):
			css++
		}
	}
	if js == 0 || css == 0 {
		t.Errorf("dist/assets has %d .js and %d .css files, want both: %v", js, css, files)
	}
	html, err := os.ReadFile(filepath.Join(out, "dist", "index.html"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(html), `<div id="root">`) || !strings.Contains(string(html), "assets/main.") {
		t.Errorf("dist/index.html is not the built page:\n%s", html)
	}
	sbom, err := os.ReadFile(filepath.Join(out, "sbom.cdx.json"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"pkg:npm/react@18.3.1", "pkg:npm/webpack@5.101.0", "pkg:npm/%40babel/core@7.29.16"} {
		if !strings.Contains(string(sbom), want) {
			t.Errorf("the SBOM lacks %s", want)
		}
	}
}
