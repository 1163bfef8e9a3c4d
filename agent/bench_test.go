package agent_test

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/cleanroom-ci/cleanroom/agent"
	"github.com/cleanroom-ci/cleanroom/api"
)

// BenchmarkSubmitToClaim measures submit → claimed by an idle runner that is
// already long-polling (the agent's own claim call): 200 jobs one after the
// other, each timed from just before the submit request to the claim answer
// arriving. Reports the median and p95; the target is a median under 50 ms.
// Run with -benchtime=1x.
func BenchmarkSubmitToClaim(b *testing.B) {
	e := newEnv(b, 30*time.Second)
	cfg := e.register("bench", 1, nil)
	runner := api.NewClient(e.URL, cfg.RunnerToken)
	ctx := context.Background()
	const jobs = 200
	var lat []time.Duration
	for b.Loop() {
		lat = lat[:0]
		for i := 0; i < jobs; i++ {
			got := make(chan time.Time, 1)
			go func() {
				resp, err := runner.Claim(ctx, api.ClaimRequest{Slots: 1, Wait: api.Duration(10 * time.Second)})
				if err != nil || len(resp.Claims) != 1 {
					b.Errorf("claim: %v %+v", err, resp)
				}
				got <- time.Now()
			}()
			time.Sleep(5 * time.Millisecond) // the claim is waiting: the runner is idle
			start := time.Now()
			spec, src := api.JobSpec{Build: api.Build{Script: "true"}}, api.Source{Kind: api.SourceGit, URL: "https://git.example/x.git", Commit: fmt.Sprintf("%040x", i)}
			if _, err := e.admin.SubmitGit(ctx, spec, src); err != nil {
				b.Fatal(err)
			}
			lat = append(lat, (<-got).Sub(start))
		}
	}
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "ms-median")
	b.ReportMetric(float64(lat[len(lat)*95/100].Microseconds())/1000, "ms-p95")
	b.ReportMetric(float64(lat[len(lat)-1].Microseconds())/1000, "ms-max")
}

// BenchmarkThroughput4Agents measures jobs submitted + claimed + run +
// finished per second with 4 real agents (one slot each, a no-op executor)
// on loopback. Each job carries a small uploaded tarball, so the agents'
// download, sha256 check, extraction, log upload, result and workspace
// removal are all included. Run with -benchtime=1x.
func BenchmarkThroughput4Agents(b *testing.B) {
	e := newEnv(b, 30*time.Second)
	noop := agent.ExecutorFunc(func(ctx context.Context, job *api.Job, ws string, out io.Writer, rep agent.Reporter) (agent.Result, error) {
		io.WriteString(out, "ok\n")
		return agent.Result{}, nil
	})
	for i := 0; i < 4; i++ {
		e.runAgent(e.register(fmt.Sprintf("tp%d", i), 1, nil), noop, nil)
	}
	data := tarGz(b, []entry{{name: "package.json", typ: tar.TypeReg, body: `{"name":"bench"}`}, {name: "src/index.js", typ: tar.TypeReg, body: "1"}})
	h := sha256.Sum256(data)
	digest := hex.EncodeToString(h[:])
	ctx := context.Background()
	const jobs = 200
	var rate float64
	for b.Loop() {
		start := time.Now()
		ids := make(chan string, jobs)
		var wg sync.WaitGroup
		for w := 0; w < 4; w++ { // 4 concurrent submitters
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 0; i < jobs/4; i++ {
					j, err := e.admin.SubmitUpload(ctx, api.JobSpec{Build: api.Build{Script: "true"}}, digest, bytes.NewReader(data))
					if err != nil {
						b.Error(err)
						return
					}
					ids <- j.ID
				}
			}()
		}
		wg.Wait()
		close(ids)
		for id := range ids {
			e.waitStateFast(id, 60*time.Second)
		}
		rate = jobs / time.Since(start).Seconds()
	}
	b.ReportMetric(rate, "jobs/s")
}

// waitStateFast polls a job until it succeeded.
func (e *env) waitStateFast(id string, timeout time.Duration) {
	deadline := time.Now().Add(timeout)
	for {
		j, err := e.admin.GetJob(context.Background(), id)
		if err == nil && j.State == api.StateSucceeded {
			return
		}
		if err == nil && api.Terminal(j.State) {
			e.t.Fatalf("job %s ended %s: %s", id, j.State, j.Reason)
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("job %s still %s", id, j.State)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
