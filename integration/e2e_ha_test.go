package integration

// This file sorts before e2e_test.go on purpose: go test runs files in name
// order, and TestNoResidueAfterAllScenarios there must run last.

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cleanroom-ci/cleanroom/api"
	"github.com/cleanroom-ci/cleanroom/coordinator/store/postgres/pgtest"
	"github.com/cleanroom-ci/cleanroom/integration/harness"
	"github.com/cleanroom-ci/cleanroom/internal/lab"
)

// numberedBuild is a build that prints n numbered lines ("L000E"…, which
// its command line does not contain), each followed by one connection to
// a forbidden port (22000+i, denied and audited), pausing every ms between.
func numberedBuild(n int, every time.Duration) string {
	return fmt.Sprintf(`node -e 'const net=require("net");let i=0;function next(){if(i>=%d)return;const k=i++;`+
		`console.log("L"+String(k).padStart(3,"0")+"E");const s=net.connect(22000+k,"%s");s.on("error",()=>{});s.on("connect",()=>s.destroy());`+
		`setTimeout(next,%d)}next()'`, n, lab.ForbiddenIP, every.Milliseconds())
}

// lineMark is numberedBuild's line i.
func lineMark(i int) string { return fmt.Sprintf("L%03dE", i) }

// checkCompleteRun checks that a numberedBuild job of n lines succeeded in
// one attempt with each line in its stored log exactly once and, in its
// stored audit trail, exactly one denied tcp event for each of its n
// connections and none for any other forbidden port.
func checkCompleteRun(ctx context.Context, t *testing.T, e *harness.Env, id string, n int) {
	t.Helper()
	j := waitTerminal(ctx, t, e, id, 2*time.Minute)
	log := jobLog(ctx, t, e, id)
	if j.State != api.StateSucceeded || j.Attempts != 1 {
		t.Fatalf("job %s: %s (%s) after %d attempt(s), want succeeded in one; log:\n%s", id, j.State, j.Reason, j.Attempts, log)
	}
	for i := range n {
		if c := strings.Count(log, lineMark(i)+"\n"); c != 1 {
			t.Errorf("line %s is in the stored log %d times, want once", lineMark(i), c)
		}
	}
	if t.Failed() {
		t.Fatalf("log:\n%s", log)
	}
	raw, events := egress(ctx, t, e, "--job", id)
	per := map[int]int{}
	for _, ev := range events {
		host, port, ok := splitDst(ev.Dst)
		if !ok || host != lab.ForbiddenIP.String() || ev.Proto != "tcp" {
			continue
		}
		if ev.Verdict != api.VerdictDeny || port < 22000 || port >= 22000+n {
			t.Errorf("unexpected event: %+v", ev)
			continue
		}
		per[port-22000]++
	}
	for i := range n {
		if per[i] != 1 {
			t.Errorf("the denied connection to port %d is stored %d times, want once", 22000+i, per[i])
		}
	}
	if t.Failed() {
		t.Fatalf("egress --job %s:\n%s", id, raw)
	}
}

// haSet starts two coordinators (on addrs, in the lab host namespace) on a
// fresh database of the PostgreSQL server at server, and one agent that
// knows both; both stop when the test ends. The agent is named after the
// run, so the residue check can attribute its sandboxes.
//
// The HA scenarios run on coordinators of their own, not on the suite's:
// a kill would leave the suite's coordinators one short for the scenarios
// after it, and the suite's agents claim through its second coordinator
// (AgentsLastFirst) while the kill must hit the one both the agent and the
// CLI use first.
func haSet(ctx context.Context, t *testing.T, e *harness.Env, name, server string, addrs []string, leaseTTL time.Duration) (*harness.Env, *harness.Agent) {
	t.Helper()
	ha, err := e.Coordinators(ctx, harness.CoordinatorOptions{Name: name + "-", Addrs: addrs, Postgres: server, LeaseTTL: leaseTTL})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := ha.Close(); err != nil {
			t.Errorf("closing the %s coordinators: %v", name, err)
		}
	})
	agentName := "e2e-" + runTag + "-" + name
	suite.mu.Lock()
	suite.agentNames = append(suite.agentNames, agentName)
	suite.mu.Unlock()
	a, err := ha.AddAgent(ctx, harness.AgentOptions{Name: agentName})
	if err != nil {
		t.Fatal(err)
	}
	return ha, a
}

// A coordinator killed with SIGKILL in the middle of a job — the one the
// agent and the CLI talk to — costs nothing: the agent's heartbeats, log
// chunks and egress batches go on through the other coordinator, and the
// job ends there in one attempt with every log line and every denied
// connection stored exactly once.
func TestCoordinatorKilledMidJobJobFinishesThroughTheOther(t *testing.T) {
	e := env(t)
	server := pgtest.ServerDSN(t) // skipped without PostgreSQL, failed in CI
	ctx := timeout(t, 4*time.Minute)
	ha, _ := haSet(ctx, t, e, "corekill", server, []string{"127.0.0.1:7090", "127.0.0.1:7091"}, 10*time.Second)

	const n = 60
	dir := minimalProject(t, map[string]any{"build": numberedBuild(n, 150*time.Millisecond), "timeout": "3m"})
	id := submit(ctx, t, ha, dir)
	waitLog(ctx, t, ha, id, lineMark(10)+"\n", time.Minute)
	pid := ha.CoordinatorProcs[0].Cmd.Process.Pid
	if err := ha.KillCoordinator(0); err != nil {
		t.Fatal(err)
	}
	killed := time.Now()
	if log := jobLog(ctx, t, ha, id); strings.Contains(log, lineMark(n-1)) {
		t.Fatalf("the job had already ended when the coordinator was killed: the test proves nothing; log:\n%s", log)
	}
	checkCompleteRun(ctx, t, ha, id, n)
	t.Logf("coordinator %s (PID %d) killed mid-job; the job ended on %s %s later", ha.URLs[0], pid, ha.URLs[1], time.Since(killed).Round(100*time.Millisecond))
}

// PostgreSQL's postmaster killed with SIGKILL in the middle of a job, then
// started again: the coordinators and the agent, never restarted, recover
// on their own — the job ends in one attempt with its whole log and audit
// trail, and a job submitted afterwards is claimed and runs (the
// coordinators' LISTEN connection is back). It runs on a PostgreSQL
// cluster of its own (scripts/postgres.sh with its own work folder), the
// only one it ever kills.
func TestPostgresKilledMidJobEverythingRecovers(t *testing.T) {
	e := env(t)
	pgtest.ServerDSN(t) // skipped without PostgreSQL, failed in CI
	ctx := timeout(t, 5*time.Minute)

	work := fmt.Sprintf("/var/tmp/cleanroom-pg-e2e-%s-%s", runTag, randHex(3))
	pg := func(arg string) (string, error) {
		cmd := exec.CommandContext(context.WithoutCancel(ctx), filepath.Join(suite.repo, "scripts", "postgres.sh"), arg)
		cmd.Dir = suite.repo
		cmd.Env = append(os.Environ(), "CLEANROOM_POSTGRES_WORK="+work)
		out, err := cmd.CombinedOutput()
		if err != nil {
			return "", fmt.Errorf("scripts/postgres.sh %s: %v: %s", arg, err, out)
		}
		lines := strings.Split(strings.TrimSpace(string(out)), "\n")
		return lines[len(lines)-1], nil
	}
	server, err := pg("start")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if _, err := pg("stop"); err != nil {
			t.Errorf("stopping the test's PostgreSQL: %v", err)
		}
		if err := os.RemoveAll(work); err != nil {
			t.Error(err)
		}
	})
	// Leases outlive the outage: the point is that nothing is lost, not
	// that a job is re-run.
	ha, a := haSet(ctx, t, e, "pgkill", server, []string{"127.0.0.1:7080", "127.0.0.1:7081"}, 30*time.Second)
	procs := append([]*harness.Proc{a.Proc}, ha.CoordinatorProcs...)

	const n = 60
	dir := minimalProject(t, map[string]any{"build": numberedBuild(n, 150*time.Millisecond), "timeout": "3m"})
	id := submit(ctx, t, ha, dir)
	waitLog(ctx, t, ha, id, lineMark(10)+"\n", time.Minute)

	pidFile := filepath.Join(work, "data", "postmaster.pid")
	b, err := os.ReadFile(pidFile)
	if err != nil {
		t.Fatal(err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(strings.SplitN(string(b), "\n", 2)[0]))
	if err != nil || pid <= 1 {
		t.Fatalf("no postmaster PID in %s: %q", pidFile, b)
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatalf("killing our postmaster %d: %v", pid, err)
	}
	killed := time.Now()
	// Down for a while (the agent's reports fail meanwhile), then started
	// again; its backends may take a moment to notice their postmaster is
	// gone and free the shared memory a new one needs.
	sleepCtx(ctx, 2*time.Second)
	for {
		again, err := pg("start")
		if err == nil {
			if again != server {
				t.Fatalf("the restarted PostgreSQL has another DSN (port): %s", again)
			}
			break
		}
		if time.Since(killed) > time.Minute {
			t.Fatalf("PostgreSQL does not start again: %v", err)
		}
		sleepCtx(ctx, 500*time.Millisecond)
	}
	t.Logf("postmaster %d killed, PostgreSQL up again after %s", pid, time.Since(killed).Round(100*time.Millisecond))

	checkCompleteRun(ctx, t, ha, id, n)
	// The same processes take the next job: claims, wake-ups and reports
	// work again without a restart.
	dir2 := minimalProject(t, map[string]any{"build": numberedBuild(3, 10*time.Millisecond), "timeout": "2m"})
	checkCompleteRun(ctx, t, ha, submit(ctx, t, ha, dir2), 3)
	for _, p := range procs {
		if p.Exited() {
			t.Errorf("%s exited during the outage: %s", p.Name, p.Output())
		}
	}
}
