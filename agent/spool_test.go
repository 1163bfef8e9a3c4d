package agent_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cleanroom-ci/cleanroom/agent"
	"github.com/cleanroom-ci/cleanroom/api"
	"github.com/cleanroom-ci/cleanroom/coordinator"
	"github.com/cleanroom-ci/cleanroom/internal/testutil"
)

// waitResult waits until the fake holds a result for job id.
func waitResult(t *testing.T, f *fakeCoordinator, id string) fakeJob {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		j := f.job(id)
		if len(j.results) > 0 {
			return j
		}
		if time.Now().After(deadline) {
			t.Fatalf("no result for %s; %d log bytes so far", id, len(j.log))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// spoolOf is the log spool of the job whose workspace is ws.
func spoolOf(ws string) string {
	return filepath.Join(filepath.Dir(filepath.Dir(ws)), "spool", filepath.Base(ws), "log")
}

// flood is an executor that writes total bytes of "y\n" in 64 KiB writes,
// as fast as `yes`, and records after every write the largest size its
// spool file has had.
func flood(total int, peak *atomic.Int64) agent.Executor {
	return agent.ExecutorFunc(func(ctx context.Context, job *api.Job, ws string, out io.Writer, rep agent.Reporter) (agent.Result, error) {
		buf := bytes.Repeat([]byte("y\n"), 32<<10)
		for n := 0; n < total; n += len(buf) {
			if k, err := out.Write(buf); k != len(buf) || err != nil {
				return agent.Result{}, fmt.Errorf("write took %d of %d bytes: %v", k, len(buf), err)
			}
			fi, err := os.Stat(spoolOf(ws))
			if err != nil {
				return agent.Result{}, err
			}
			if fi.Size() > peak.Load() {
				peak.Store(fi.Size())
			}
		}
		return agent.Result{}, nil
	})
}

// checkCapped checks that log is limit bytes of the agent's header and the
// flood's output, then the store's truncation marker.
func checkCapped(t *testing.T, log []byte, limit int64) {
	t.Helper()
	marker := api.LogTruncatedMarker(limit)
	if int64(len(log)) != limit+int64(len(marker)) || !bytes.HasSuffix(log, []byte(marker)) {
		t.Fatalf("log has %d bytes ending %q, want %d bytes then the marker %q", len(log), log[max(0, len(log)-120):], limit, marker)
	}
	start := bytes.Index(log, []byte("y\ny\n"))
	out := log[start:limit]
	if start <= 0 || !bytes.Equal(out, bytes.Repeat([]byte("y\n"), len(out)/2+1)[:len(out)]) {
		t.Fatalf("log before the marker is not the header then the build's output: starts %q", log[:min(len(log), 200)])
	}
}

// A build that prints far more than the coordinator keeps: the agent's
// spool never holds more than the lease's cap plus the marker, the
// coordinator receives exactly the cap and the marker (so it commits no
// writes it would drop), and the job still finishes.
func TestAFloodOfOutputIsCappedInTheAgentsSpool(t *testing.T) {
	for _, tc := range []struct {
		name       string
		leaseLimit int64
		want       int64
		total      int
	}{
		{"cap from the lease", 1 << 20, 1 << 20, 64 << 20},
		{"no cap in the lease (older coordinator): 16 MiB", 0, api.DefaultLogLimit, 24 << 20},
	} {
		t.Run(tc.name, func(t *testing.T) {
			testutil.CheckGoroutines(t)
			f := newFakeCoordinator(5 * time.Second)
			f.logLimit = tc.leaseLimit
			f.add(t, "j1", map[string]string{"package.json": "{}"})
			var peak atomic.Int64
			_, stop := runFakeAgent(t, f, flood(tc.total, &peak))
			j := waitResult(t, f, "j1")
			if err := stop(); err != nil {
				t.Fatal(err)
			}
			marker := int64(len(api.LogTruncatedMarker(tc.want)))
			if p := peak.Load(); p > tc.want+marker || p < tc.want {
				t.Errorf("spool peaked at %d bytes, want the cap %d plus the %d-byte marker (less than a %d-byte chunk)", p, tc.want, marker, 256<<10)
			}
			checkCapped(t, j.log, tc.want)
			if r := j.results[0]; r.State != api.StateSucceeded || r.LogSize != int64(len(j.log)) {
				t.Fatalf("result = %+v, want succeeded with log size %d", r, len(j.log))
			}
			if n, most := j.calls["AppendLog"], int(tc.want/(256<<10))+8; n > most {
				t.Errorf("%d log appends for a %d-byte cap, want at most %d", n, tc.want, most)
			}
		})
	}
}

// Against a real coordinator with max_log 1 MiB: the lease carries the cap,
// and the log the agent capped is stored as the coordinator itself cuts it.
func TestACappedLogIsStoredAsTheCoordinatorCutsIt(t *testing.T) {
	testutil.CheckGoroutines(t)
	const limit = 1 << 20
	e := newEnv(t, 5*time.Second, func(c *coordinator.Config) { c.MaxLog = limit })
	cfg := e.register("flood", 1, nil)
	var peak atomic.Int64
	_, stop := e.runAgent(cfg, flood(16<<20, &peak), nil)
	defer stop()
	j := e.upload(map[string]string{"package.json": "{}"}, spec)
	got := e.waitState(j.ID, 20*time.Second, api.StateSucceeded, api.StateFailed)
	log := e.logOf(j.ID)
	if got.State != api.StateSucceeded || got.LogSize != int64(len(log)) {
		t.Fatalf("job = %+v with %d log bytes", got, len(log))
	}
	checkCapped(t, []byte(log), limit)
	if p := peak.Load(); p > limit+int64(len(api.LogTruncatedMarker(limit))) {
		t.Fatalf("spool peaked at %d bytes", p)
	}
}

// A spool that cannot be written (a full disk) fails the job with a reason
// that says so, and stops it: the audit trail would be incomplete.
func TestASpoolWriteErrorFailsTheJob(t *testing.T) {
	for _, tc := range []struct {
		name, file string
		after      int64
		runs       bool // whether the executor runs at all
	}{
		{"log spool full", "log", 4 << 10, true},
		{"egress spool full", "egress.jsonl", 0, true},
		{"egress spool not created", "egress.jsonl", -1, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			testutil.CheckGoroutines(t)
			defer agent.FailSpool(tc.file, tc.after)()
			f := newFakeCoordinator(5 * time.Second)
			f.add(t, "j1", map[string]string{"package.json": "{}"})
			causes := make(chan error, 1)
			ex := agent.ExecutorFunc(func(ctx context.Context, job *api.Job, ws string, out io.Writer, rep agent.Reporter) (agent.Result, error) {
				for range 8 {
					io.WriteString(out, strings.Repeat("output ", 256)+"\n")
				}
				rep.Event(api.EgressEvent{Proto: "dns", Domain: "exfil.example", Verdict: api.VerdictDeny})
				select {
				case <-ctx.Done():
					causes <- context.Cause(ctx)
					return agent.Result{ExitCode: 143}, nil
				case <-time.After(5 * time.Second):
					causes <- nil
					return agent.Result{}, nil
				}
			})
			_, stop := runFakeAgent(t, f, ex)
			j := waitResult(t, f, "j1")
			if err := stop(); err != nil {
				t.Fatal(err)
			}
			if tc.runs {
				if cause := waitFor(t, causes, "the executor"); !errors.Is(cause, agent.ErrSpool) {
					t.Errorf("job ran on after the spool failed (cause %v), want it canceled with ErrSpool", cause)
				}
			}
			r := j.results[0]
			if r.State != api.StateFailed || r.Class != api.ClassInfrastructure || !strings.Contains(r.Reason, agent.ErrSpool.Error()) || !strings.Contains(r.Reason, "no space left on device") {
				t.Fatalf("result = %+v, want failed because the spool could not be written", r)
			}
		})
	}
}

// A job that reports a flood of egress events has every one delivered once,
// in order, and the agent keeps in memory only the events not yet
// acknowledged.
func TestAcknowledgedEgressEventsLeaveMemory(t *testing.T) {
	f := newFakeCoordinator(time.Minute)
	f.add(t, "j-flood", map[string]string{"package.json": "{}"})
	const total = 5000
	var pendingAfter atomic.Int64
	pendingAfter.Store(-1)
	runFakeAgent(t, f, agent.ExecutorFunc(func(ctx context.Context, job *api.Job, ws string, out io.Writer, rep agent.Reporter) (agent.Result, error) {
		for i := range total {
			rep.Event(api.EgressEvent{Proto: "tcp", Dst: fmt.Sprintf("10.0.0.9:%d", i), Verdict: api.VerdictDeny, Rule: "default-deny"})
		}
		deadline := time.Now().Add(10 * time.Second)
		for len(f.job("j-flood").events) < total && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
		pendingAfter.Store(int64(agent.PendingEvents(rep)))
		return agent.Result{State: api.StateSucceeded}, nil
	}))
	j := waitResult(t, f, "j-flood")
	if len(j.events) != total {
		t.Fatalf("coordinator holds %d events, want %d", len(j.events), total)
	}
	for i, ev := range j.events {
		if ev.Dst != fmt.Sprintf("10.0.0.9:%d", i) {
			t.Fatalf("event %d is %s: out of order or duplicated", i, ev.Dst)
		}
	}
	if n := pendingAfter.Load(); n != 0 {
		t.Errorf("%d acknowledged events still held in memory", n)
	}
}
