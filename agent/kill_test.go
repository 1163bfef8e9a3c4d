package agent_test

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cleanroom-ci/cleanroom/agent"
	"github.com/cleanroom-ci/cleanroom/api"
	"github.com/cleanroom-ci/cleanroom/internal/testutil"
)

const childEnv = "CLEANROOM_TEST_AGENT_CONFIG"

// TestMain lets the test binary double as an agent process for the SIGKILL
// test: with childEnv set it runs an agent whose jobs block forever.
func TestMain(m *testing.M) {
	if path := os.Getenv(childEnv); path != "" {
		os.Exit(childAgent(path))
	}
	os.Exit(m.Run())
}

func childAgent(path string) int {
	cfg, err := agent.LoadConfig(path)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	a, err := agent.New(cfg, blocking(nil), nil)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	if err := a.Run(context.Background()); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

func TestKilledAgentsJobIsRequeuedAndRunOnceByAnother(t *testing.T) {
	testutil.CheckGoroutines(t)
	e := newEnv(t, time.Second)
	victim := e.register("victim", 1, nil)
	survivor := e.register("survivor", 1, nil)

	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"="+filepath.Join(e.dir, "victim", "agent.yaml"))
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	killed := false
	t.Cleanup(func() {
		if !killed {
			cmd.Process.Kill()
			cmd.Wait()
		}
	})
	j := e.upload(map[string]string{"a": "b"}, spec)
	running := e.waitState(j.ID, 10*time.Second, api.StateRunning)
	if running.RunnerID != victim.RunnerID {
		t.Fatalf("job runs on %s, want the victim", running.RunnerID)
	}
	time.Sleep(200 * time.Millisecond) // the child is inside the executor
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	cmd.Wait()
	killed = true

	var runs atomic.Int32
	ex := agent.ExecutorFunc(func(ctx context.Context, job *api.Job, ws string, out io.Writer, rep agent.Reporter) (agent.Result, error) {
		runs.Add(1)
		fmt.Fprintln(out, "second attempt")
		return agent.Result{}, nil
	})
	e.runAgent(survivor, ex, nil)
	got := e.waitState(j.ID, 15*time.Second, api.StateSucceeded, api.StateFailed, api.StateLost)
	if got.State != api.StateSucceeded || got.RunnerID != survivor.RunnerID || got.Attempts != 2 || runs.Load() != 1 {
		t.Fatalf("job = %+v, survivor runs = %d", got, runs.Load())
	}
	log := e.logOf(j.ID)
	if !strings.Contains(log, "lease expired on runner "+victim.RunnerID) || !strings.Contains(log, "second attempt") {
		t.Fatalf("log = %q", log)
	}
}
