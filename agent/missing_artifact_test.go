package agent_test

import (
	"context"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cleanroom-ci/cleanroom/agent"
	"github.com/cleanroom-ci/cleanroom/api"
	"github.com/cleanroom-ci/cleanroom/coordinator"
	"github.com/cleanroom-ci/cleanroom/internal/testutil"
)

// The signed provenance lists every artifact, so one the coordinator does
// not end up holding fails the job, with a reason naming it and why: here
// one the coordinator refuses as too large (413) and a symlink, which is
// never read. The others are still uploaded.
func TestAMissingArtifactFailsTheJob(t *testing.T) {
	testutil.CheckGoroutines(t)
	e := newEnv(t, 5*time.Second, func(c *coordinator.Config) { c.MaxArtifact = 1 << 10 })
	cfg := e.register("a1", 1, nil)
	ex := agent.ExecutorFunc(func(ctx context.Context, job *api.Job, ws string, out io.Writer, rep agent.Reporter) (agent.Result, error) {
		os.WriteFile(filepath.Join(ws, "app.js"), []byte("built"), 0o644)
		os.WriteFile(filepath.Join(ws, "big.bin"), make([]byte, 4<<10), 0o644)
		os.Symlink("/etc/passwd", filepath.Join(ws, "link"))
		return agent.Result{Artifacts: []agent.Artifact{
			{Name: "dist/app.js", Path: filepath.Join(ws, "app.js")},
			{Name: "dist/big.bin", Path: filepath.Join(ws, "big.bin")},
			{Name: "evil", Path: filepath.Join(ws, "link")},
		}}, nil
	})
	_, stop := e.runAgent(cfg, ex, nil)
	defer stop()
	j := e.upload(map[string]string{"package.json": `{"name":"app"}`}, spec)
	got := e.waitState(j.ID, 10*time.Second, api.StateSucceeded, api.StateFailed)
	if got.State != api.StateFailed || got.FailureClass != api.ClassInfrastructure ||
		!strings.Contains(got.Reason, "artifact dist/big.bin not uploaded") || !strings.Contains(got.Reason, "HTTP 413") ||
		!strings.Contains(got.Reason, "artifact evil not uploaded") || !strings.Contains(got.Reason, "not a regular file") {
		t.Fatalf("job = %s (%q, class %q), want failed (infrastructure) naming dist/big.bin (413) and evil (a symlink)", got.State, got.Reason, got.FailureClass)
	}
	if log := e.logOf(j.ID); !strings.Contains(log, "artifact dist/big.bin not uploaded") || !strings.Contains(log, "artifact evil not uploaded") {
		t.Fatalf("log = %q", log)
	}
	arts, _ := e.admin.ListArtifacts(context.Background(), j.ID)
	if len(arts) != 1 || arts[0].Name != "dist/app.js" {
		t.Fatalf("artifacts = %+v, want dist/app.js only", arts)
	}
}
