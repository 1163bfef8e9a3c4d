package agent_test

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cleanroom-ci/cleanroom/agent"
	"github.com/cleanroom-ci/cleanroom/api"
	"github.com/cleanroom-ci/cleanroom/coordinator"
	"github.com/cleanroom-ci/cleanroom/coordinator/store/postgres"
	"github.com/cleanroom-ci/cleanroom/coordinator/store/postgres/pgtest"
)

// Two coordinators, each with its own connections to one PostgreSQL
// database (as two processes), eight agents with four slots each, half
// knowing A first and half B, and 500 short jobs submitted to both: every
// job runs exactly once — the executor counts its runs per job id — and
// succeeds in one attempt.
func TestFiveHundredJobsOnTwoCoordinatorsRunExactlyOnce(t *testing.T) {
	dsn := pgtest.NewDatabase(t)
	ctx := context.Background()
	dir := t.TempDir()
	admin := coordinator.NewAdminToken()
	coord := func(name string) *killable {
		st, err := postgres.Open(ctx, dsn, postgres.Options{})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { st.Close() }) // after the coordinator stopped
		return startKillable(t, coordinator.Config{DataDir: filepath.Join(dir, name), AdminToken: admin, Store: st})
	}
	a, b := coord("a"), coord("b")
	tr := &http.Transport{MaxIdleConnsPerHost: 64}
	t.Cleanup(tr.CloseIdleConnections)
	hc := &http.Client{Transport: tr}
	adminA, adminB := api.NewClient(a.URL, admin), api.NewClient(b.URL, admin)
	adminA.HTTP, adminB.HTTP = hc, hc

	const agents, slots, jobs = 8, 4, 500
	var mu sync.Mutex
	runs := map[string]int{}
	var ran atomic.Int64
	ex := agent.ExecutorFunc(func(ctx context.Context, job *api.Job, ws string, out io.Writer, rep agent.Reporter) (agent.Result, error) {
		mu.Lock()
		runs[job.ID]++
		mu.Unlock()
		fmt.Fprintf(out, "job %s\n", job.ID)
		ran.Add(1)
		return agent.Result{}, nil
	})
	tok, err := adminA.CreateToken(ctx, api.TokenRequest{Uses: agents, Expires: api.Duration(time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	runCtx, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	t.Cleanup(func() { stop(); wg.Wait() }) // before the coordinators stop
	for i := range agents {
		urls := a.URL + "," + b.URL
		if i%2 == 1 {
			urls = b.URL + "," + a.URL
		}
		cfgPath := filepath.Join(dir, fmt.Sprintf("agent-%d", i), "agent.yaml")
		if _, err := agent.Register(ctx, agent.RegisterOptions{URL: urls, Token: tok.Token, Name: fmt.Sprintf("scale-%d", i),
			ConfigPath: cfgPath, HTTP: hc}); err != nil {
			t.Fatal(err)
		}
		cfg, err := agent.LoadConfig(cfgPath)
		if err != nil {
			t.Fatal(err)
		}
		cfg.Concurrency = slots
		ag, err := agent.New(cfg, ex, nil)
		if err != nil {
			t.Fatal(err)
		}
		ag.Client().HTTP = hc
		ag.ClaimWait = 2 * time.Second
		wg.Add(1)
		go func() { defer wg.Done(); ag.Run(runCtx) }()
	}

	data := tarGz(t, []entry{{name: "package.json", typ: tar.TypeReg, body: "{}"}})
	sum := sha256.Sum256(data)
	start := time.Now()
	ids := make([]string, jobs)
	errs := make(chan error, jobs)
	var sub sync.WaitGroup
	for w := range 4 {
		sub.Add(1)
		go func() {
			defer sub.Done()
			for i := w; i < jobs; i += 4 {
				c := adminA
				if i%2 == 1 {
					c = adminB
				}
				j, err := c.SubmitUpload(ctx, spec, hex.EncodeToString(sum[:]), bytes.NewReader(data))
				if err != nil {
					errs <- fmt.Errorf("submit %d: %w", i, err)
					return
				}
				ids[i] = j.ID
			}
		}()
	}
	sub.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(3 * time.Minute); ran.Load() < jobs && time.Now().Before(deadline); {
		time.Sleep(20 * time.Millisecond)
	}
	countRuns := func() (distinct, twice int) {
		mu.Lock()
		defer mu.Unlock()
		for _, n := range runs {
			if n > 1 {
				twice++
			}
		}
		return len(runs), twice
	}
	if distinct, twice := countRuns(); ran.Load() < jobs || twice > 0 {
		t.Fatalf("%d runs of %d distinct jobs (%d ran more than once) within 3 minutes, want each of the %d once", ran.Load(), distinct, twice, jobs)
	}

	// Every job ends succeeded in one attempt (the result may still be on
	// its way for the last ones).
	deadline := time.Now().Add(time.Minute)
	runners := map[string]int{}
	for _, id := range ids {
		for {
			j, err := adminB.GetJob(ctx, id)
			if err != nil {
				t.Fatal(err)
			}
			if api.Terminal(j.State) {
				if j.State != api.StateSucceeded || j.Attempts != 1 {
					t.Errorf("job %s: %s (%s) after %d attempt(s), want succeeded in one", id, j.State, j.Reason, j.Attempts)
				}
				runners[j.RunnerID]++
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("job %s still %s", id, j.State)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	took := time.Since(start)
	// A run past the 500th would come late: give it a moment to show.
	time.Sleep(time.Second)
	mu.Lock()
	defer mu.Unlock()
	if len(runs) != jobs {
		t.Errorf("%d distinct jobs ran, want %d", len(runs), jobs)
	}
	for _, id := range ids {
		if runs[id] != 1 {
			t.Errorf("job %s ran %d times, want once", id, runs[id])
		}
	}
	if len(runners) != agents {
		t.Errorf("jobs per runner %v: want all %d agents to have run some", runners, agents)
	}
	t.Logf("%d jobs on 2 coordinators and %d agents × %d slots in %s (%.0f jobs/s); per runner %v",
		jobs, agents, slots, took.Round(10*time.Millisecond), float64(jobs)/took.Seconds(), runners)
}
