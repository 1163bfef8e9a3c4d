package integration

import (
	"strings"
	"testing"
	"time"

	"github.com/cleanroom-ci/cleanroom/api"
	"github.com/cleanroom-ci/cleanroom/integration/harness"
)

// A build cannot make the agent write more to the host than its artifact
// budget: a 64 GiB sparse file (no space used in the 4 GiB workspace) and
// 100,000 small files are both refused before anything is copied, and the
// job fails naming the budget.
func TestArtifactBudgetRefusesSparseAndManyFiles(t *testing.T) {
	e := env(t)
	agentFor(t, e, "main", harness.AgentOptions{Labels: "lane=" + laneMain})
	ctx := timeout(t, 4*time.Minute)
	for _, tc := range []struct {
		name, build, want string
	}{
		{"sparse 64G", "mkdir -p dist && truncate -s 64G dist/x && ls -ls dist", "artifacts.max_bytes"},
		{"100000 files", "mkdir -p dist && cd dist && seq 1 100000 | xargs touch && ls | wc -l", "artifacts.max_files"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := minimalProject(t, map[string]any{"build": tc.build, "artifacts": []string{"dist/"}, "timeout": "3m",
				"labels": map[string]any{"lane": laneMain}})
			id := submit(ctx, t, e, dir)
			j := waitTerminal(ctx, t, e, id, 3*time.Minute)
			log := jobLog(ctx, t, e, id)
			if j.State != api.StateFailed || !strings.Contains(j.Reason, tc.want) {
				t.Fatalf("job %s: state %s, reason %q; want failed naming %s; log:\n%s", id, j.State, j.Reason, tc.want, log)
			}
			if !strings.Contains(log, "build step done") {
				t.Errorf("the build did not finish (the budget must refuse the artifacts, not the build); log:\n%s", log)
			}
			if arts := strings.TrimSpace(cli(ctx, t, e, "artifacts", id, "--json")); arts != "" && arts != "[]" && arts != "null" {
				t.Errorf("artifacts of a refused job: %s (want none)", arts)
			}
			assertSandboxGone(ctx, t, e, id)
		})
	}
}
