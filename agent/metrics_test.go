package agent_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/cleanroom-ci/cleanroom/agent"
	"github.com/cleanroom-ci/cleanroom/api"
	itestutil "github.com/cleanroom-ci/cleanroom/internal/testutil"
)

// checkedExec runs a job that logs, reports an egress event and leaves an
// artifact, blocking until release is closed; its readiness check fails
// while imageMissing is set.
type checkedExec struct {
	started      chan struct{}
	release      chan struct{}
	imageMissing atomic.Bool
	checks       atomic.Int64
}

func (e *checkedExec) Run(ctx context.Context, job *api.Job, ws string, out io.Writer, rep agent.Reporter) (agent.Result, error) {
	io.WriteString(out, "building\n")
	rep.Event(api.EgressEvent{Proto: "tcp", Dst: "10.0.0.9:80", Verdict: api.VerdictDeny, Rule: "default-deny"})
	art := filepath.Join(ws, "dist.tgz")
	if err := os.WriteFile(art, []byte("0123456789"), 0o600); err != nil {
		return agent.Result{}, err
	}
	close(e.started)
	<-e.release
	return agent.Result{Artifacts: []agent.Artifact{{Name: "dist.tgz", Path: art}}}, nil
}

func (e *checkedExec) ReadyChecks() []agent.ReadyCheck {
	return []agent.ReadyCheck{{Name: "image", Check: func(context.Context) error {
		e.checks.Add(1)
		if e.imageMissing.Load() {
			return errors.New("image cleanroom.local/node:22 not found")
		}
		return nil
	}}}
}

// httpGet returns status and body of url.
func httpGet(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestMetricsListenerReportsJobsUploadsAndReadiness(t *testing.T) {
	itestutil.CheckGoroutines(t)
	f := newFakeCoordinator(5 * time.Second)
	f.add(t, "j1", map[string]string{"package.json": "{}"})
	ex := &checkedExec{started: make(chan struct{}), release: make(chan struct{})}
	ex.imageMissing.Store(true)
	cfg := &agent.Config{Coordinator: "http://fake.invalid", RunnerID: "r-fake", Name: "fake", DataDir: filepath.Join(t.TempDir(), "data"), Concurrency: 2}
	cfg.SetDefaults()
	m := agent.NewMetrics()
	a, err := agent.New(cfg, ex, nil, agent.WithCoordinator(f), agent.WithMetrics(m))
	if err != nil {
		t.Fatal(err)
	}
	a.ClaimWait = 200 * time.Millisecond
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	base := "http://" + ln.Addr().String()
	srvCtx, stopSrv := context.WithCancel(context.Background())
	srvDone := make(chan error, 1)
	go func() { srvDone <- a.ServeMetrics(srvCtx, ln) }()
	defer func() {
		stopSrv()
		if err := <-srvDone; err != nil {
			t.Errorf("ServeMetrics: %v", err)
		}
	}()

	readyz := func() (int, map[string]string) {
		code, body := httpGet(t, base+"/readyz")
		var r struct{ Failed map[string]string }
		if err := json.Unmarshal([]byte(body), &r); err != nil {
			t.Fatalf("decoding /readyz %q: %v", body, err)
		}
		return code, r.Failed
	}
	if code, failed := readyz(); code != http.StatusServiceUnavailable || failed["job_loop"] != "not started" || !strings.Contains(failed["image"], "not found") {
		t.Errorf("before Run: %d %v, want 503 naming the job loop and the image", code, failed)
	}
	ex.imageMissing.Store(false)
	if code, failed := readyz(); code != http.StatusServiceUnavailable || failed["image"] == "" || ex.checks.Load() != 1 {
		t.Errorf("within the cache TTL: %d %v after %d checks, want the cached failure and one check", code, failed, ex.checks.Load())
	}
	if code, _ := httpGet(t, base+"/healthz"); code != http.StatusOK {
		t.Errorf("/healthz: %d", code)
	}

	ctx, cancel := context.WithCancel(context.Background())
	runDone := make(chan error, 1)
	go func() { runDone <- a.Run(ctx) }()
	<-ex.started
	_, body := httpGet(t, base+"/metrics")
	s := itestutil.ParseMetrics(t, body)
	if s["cleanroom_agent_jobs_running"] != 1 || s["cleanroom_agent_slots"] != 2 {
		t.Errorf("while the job runs: jobs_running %v, slots %v, want 1 and 2", s["cleanroom_agent_jobs_running"], s["cleanroom_agent_slots"])
	}
	m.ObserveIsolation("network", "setup", 30*time.Millisecond, false)
	m.ObserveIsolation("sandbox", "setup", time.Second, true)
	m.GCRemoved("namespaces", 2)
	close(ex.release)
	deadline := time.Now().Add(10 * time.Second)
	for len(f.job("j1").results) == 0 {
		if time.Now().After(deadline) {
			t.Fatal("no result")
		}
		time.Sleep(20 * time.Millisecond)
	}
	_, body = httpGet(t, base+"/metrics")
	s = itestutil.ParseMetrics(t, body)
	logBytes := float64(len(f.job("j1").log))
	for name, want := range map[string]float64{
		"cleanroom_agent_jobs_running":                                                0,
		`cleanroom_agent_uploaded_bytes_total{kind="artifact"}`:                       10,
		`cleanroom_agent_uploaded_bytes_total{kind="log"}`:                            logBytes,
		"cleanroom_agent_egress_events_posted_total":                                  1,
		`cleanroom_agent_isolation_duration_seconds_count{op="setup",part="network"}`: 1,
		`cleanroom_agent_isolation_failures_total{op="setup",part="sandbox"}`:         1,
		`cleanroom_agent_isolation_failures_total{op="setup",part="network"}`:         0,
		`cleanroom_agent_gc_removed_total{kind="namespaces"}`:                         2,
	} {
		if got, ok := s[name]; !ok || got != want {
			t.Errorf("%s = %v (present %v), want %v", name, got, ok, want)
		}
	}
	if strings.Contains(body, "j1") {
		t.Error("/metrics names the job")
	}
	problems, err := testutil.GatherAndLint(m.Gatherer())
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("lint: %s: %s", p.Metric, p.Text)
	}

	time.Sleep(agent.ReadyCacheTTL) // let the image check run again
	if code, failed := readyz(); code != http.StatusOK {
		t.Errorf("running with the image present: %d %v, want 200", code, failed)
	}
	cancel()
	if err := <-runDone; err != nil {
		t.Fatal(err)
	}
	if code, failed := readyz(); code != http.StatusServiceUnavailable || failed["job_loop"] != "stopped" {
		t.Errorf("after Run: %d %v, want 503 with the job loop stopped", code, failed)
	}
}

func TestConfigRefusesABadMetricsListen(t *testing.T) {
	cfg := agent.Config{MetricsListen: "9101"}
	cfg.SetDefaults()
	err := cfg.Validate()
	var fe api.FieldErrors
	if !errors.As(err, &fe) || !strings.Contains(err.Error(), "metrics_listen") {
		t.Fatalf("Validate = %v, want a metrics_listen field error", err)
	}
}
