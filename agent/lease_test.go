package agent_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cleanroom-ci/cleanroom/agent"
	"github.com/cleanroom-ci/cleanroom/api"
	"github.com/cleanroom-ci/cleanroom/internal/testutil"
)

// runUntilCanceled is an executor that writes a line and a file to upload,
// says it started, and waits until its job is canceled. It sends the cause of
// the cancellation on causes and returns the file as an artifact.
func runUntilCanceled(started chan<- struct{}, causes chan<- error) agent.Executor {
	return agent.ExecutorFunc(func(ctx context.Context, job *api.Job, ws string, out io.Writer, rep agent.Reporter) (agent.Result, error) {
		fmt.Fprintln(out, "started")
		p := filepath.Join(ws, "app.js")
		os.WriteFile(p, []byte("built"), 0o644)
		close(started)
		<-ctx.Done()
		causes <- context.Cause(ctx)
		return agent.Result{ExitCode: 143, Artifacts: []agent.Artifact{{Name: "app.js", Path: p}}}, nil
	})
}

func waitFor[T any](t *testing.T, c <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-c:
		return v
	case <-time.After(10 * time.Second):
		t.Fatalf("timed out waiting for %s", what)
		panic("unreachable")
	}
}

// A job whose lease ends under it (another runner has it, or this runner was
// removed) is canceled at once, and neither its artifacts nor its result are
// sent. A lost lease costs only that job; a revoked runner's agent stops.
func TestAJobWhoseLeaseEndsIsCanceledAndNotReported(t *testing.T) {
	for _, tc := range []struct {
		name   string
		end    func(*fakeCoordinator)
		cause  error
		runErr error // nil: the agent keeps claiming until it is stopped
	}{
		{"lease lost (409)", func(f *fakeCoordinator) { f.loseLease("j1") }, agent.ErrLeaseLost, nil},
		{"runner revoked (401)", (*fakeCoordinator).revoke, agent.ErrRevoked, agent.ErrRevoked},
	} {
		t.Run(tc.name, func(t *testing.T) {
			testutil.CheckGoroutines(t)
			f := newFakeCoordinator(600 * time.Millisecond)
			f.add(t, "j1", map[string]string{"package.json": "{}"})
			started, causes := make(chan struct{}), make(chan error, 1)
			done, stop := runFakeAgent(t, f, runUntilCanceled(started, causes))

			waitFor(t, started, "the job to start")
			tc.end(f)
			if cause := waitFor(t, causes, "the job to be canceled"); !errors.Is(cause, tc.cause) {
				t.Fatalf("job canceled with %v, want %v", cause, tc.cause)
			}
			if tc.runErr != nil {
				if err := waitFor(t, done, "the agent to stop by itself"); !errors.Is(err, tc.runErr) {
					t.Fatalf("Run = %v, want %v", err, tc.runErr)
				}
			} else {
				select {
				case err := <-done:
					t.Fatalf("agent stopped (%v) after losing one job's lease; it must keep claiming", err)
				case <-time.After(300 * time.Millisecond):
				}
				if err := stop(); err != nil {
					t.Fatalf("Run = %v", err)
				}
			}
			j := f.job("j1")
			if n, m := j.calls["Result"], j.calls["UploadArtifact"]; n != 0 || m != 0 {
				t.Fatalf("the agent sent %d results and %d artifacts after the lease ended, want none", n, m)
			}
		})
	}
}

func TestRetriedLogAppendsStoreEachByteOnce(t *testing.T) {
	testutil.CheckGoroutines(t)
	f := newFakeCoordinator(5 * time.Second)
	f.logFaults = []fault{
		{err: status(http.StatusServiceUnavailable)},            // refused: nothing stored
		{err: errors.New("connection reset"), afterStore: true}, // stored, answer lost
		{err: status(http.StatusBadGateway), afterStore: true},  // stored, proxy failed
	}
	f.add(t, "j1", map[string]string{"package.json": "{}"})
	var lines []string
	for i := range 6 {
		lines = append(lines, fmt.Sprintf("line %d of the build\n", i))
	}
	ex := agent.ExecutorFunc(func(ctx context.Context, job *api.Job, ws string, out io.Writer, rep agent.Reporter) (agent.Result, error) {
		for _, l := range lines {
			io.WriteString(out, l)
			time.Sleep(80 * time.Millisecond) // past the batching pause: one chunk a line
		}
		return agent.Result{}, nil
	})
	_, stop := runFakeAgent(t, f, ex)
	deadline := time.Now().Add(10 * time.Second)
	for len(f.job("j1").results) == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("no result; log so far %q", f.job("j1").log)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	j := f.job("j1")
	log := string(j.log)
	if len(j.mismatches) > 0 {
		t.Errorf("resent log bytes differ from the stored ones: %v", j.mismatches)
	}
	if n := j.calls["AppendLog"]; n < 4 {
		t.Errorf("%d log appends, want the 3 failures and their retries", n)
	}
	if !strings.HasPrefix(log, string(api.RecordMarker)+api.AgentPrefix+"job j1") || !strings.HasSuffix(log, strings.Join(lines, "")) {
		t.Fatalf("log = %q, want the agent's header, then every line in order", log)
	}
	for _, l := range lines {
		if n := strings.Count(log, l); n != 1 {
			t.Errorf("log has %q %d times, want once", l, n)
		}
	}
	if r := j.results[0]; r.State != api.StateSucceeded || r.LogSize != int64(len(log)) {
		t.Fatalf("result = %+v, want succeeded with log size %d", r, len(log))
	}
}
