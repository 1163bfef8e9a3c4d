package coordinator_test

import (
	"context"
	"io"
	"net/http"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	promtest "github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/cleanroom-ci/cleanroom/api"
	"github.com/cleanroom-ci/cleanroom/coordinator"
	"github.com/cleanroom-ci/cleanroom/coordinator/store/sqlite"
	"github.com/cleanroom-ci/cleanroom/internal/testutil"
)

// getBody fetches path with an optional bearer token and returns status and body.
func (c *coord) getBody(path, token string) (int, string) {
	c.t.Helper()
	resp := c.get(context.Background(), token, path, 0)
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// scrape reads /metrics into series → value.
func (c *coord) scrape() map[string]float64 {
	c.t.Helper()
	code, body := c.getBody("/metrics", "")
	if code != http.StatusOK {
		c.t.Fatalf("GET /metrics: %d %s", code, body)
	}
	return testutil.ParseMetrics(c.t, body)
}

// want checks that each series has the value given.
func want(t *testing.T, got map[string]float64, series map[string]float64) {
	t.Helper()
	for s, v := range series {
		if g, ok := got[s]; !ok || g != v {
			t.Errorf("%s = %v (present %v), want %v", s, g, ok, v)
		}
	}
}

func TestMetricsFollowJobsClaimsEgressAndExpiries(t *testing.T) {
	checkGoroutines(t)
	c := startCoord(t, withTTL(time.Second))
	ctx := context.Background()

	m := c.scrape()
	want(t, m, map[string]float64{
		`cleanroom_jobs{state="queued"}`: 0, `cleanroom_queue_depth`: 0, `cleanroom_runners_online`: 0,
		`cleanroom_egress_events_total{rule="default-deny",verdict="deny"}`: 0,
	})
	info := false
	for s, v := range m {
		info = info || strings.HasPrefix(s, `cleanroom_build_info{commit="`) && strings.Contains(s, `goversion="`+runtime.Version()+`"`) && v == 1
	}
	if !info {
		t.Error("no cleanroom_build_info")
	}

	runner, runnerID := c.Register("build-1", nil)
	j1, j2 := c.Submit(nil), c.Submit(nil)
	want(t, c.scrape(), map[string]float64{`cleanroom_jobs{state="queued"}`: 2, `cleanroom_queue_depth`: 2})

	cl, ok := claimOne(t, runner, time.Second)
	if !ok || cl.Job.ID != j1.ID {
		t.Fatalf("claim: %+v", cl)
	}
	events := []api.EgressEvent{
		{Proto: "tcp", Dst: "10.0.0.9:80", Verdict: api.VerdictDeny, Rule: "default-deny"},
		{Proto: "tcp", Dst: "10.0.0.9:81", Verdict: api.VerdictDeny, Rule: "default-deny"},
		{Proto: "dns", Domain: "registry.test", Verdict: api.VerdictAllow, Rule: "dns-allow"},
		{Proto: "tcp", Verdict: api.VerdictDeny, Rule: "made-up-by-the-agent-" + j1.ID},
	}
	if err := runner.PostEgress(ctx, j1.ID, cl.Lease.Token, 0, events); err != nil {
		t.Fatal(err)
	}
	m = c.scrape()
	want(t, m, map[string]float64{
		`cleanroom_jobs{state="queued"}`: 1, `cleanroom_jobs{state="running"}`: 1, `cleanroom_queue_depth`: 1,
		`cleanroom_runners_online`:                                                    1,
		`cleanroom_queue_wait_seconds_count`:                                          1,
		`cleanroom_claim_duration_seconds_count{outcome="job"}`:                       1,
		`cleanroom_egress_events_total{rule="default-deny",verdict="deny"}`:           2,
		`cleanroom_egress_events_total{rule="dns-allow",verdict="allow"}`:             1,
		`cleanroom_egress_events_total{rule="other",verdict="deny"}`:                  1,
		`cleanroom_http_requests_total{code="200",route="POST /v1/jobs/claim"}`:       1,
		`cleanroom_http_requests_total{code="200",route="POST /v1/jobs/{id}/egress"}`: 1,
	})
	if m[`cleanroom_store_operation_duration_seconds_count{operation="claim_jobs"}`] < 1 {
		t.Errorf("no claim_jobs store operation timed")
	}

	if err := runner.Result(ctx, j1.ID, api.ResultRequest{Token: cl.Lease.Token, State: api.StateSucceeded}); err != nil {
		t.Fatal(err)
	}
	// j2 is claimed and abandoned: its lease expires and it is queued again.
	cl2, ok := claimOne(t, runner, time.Second)
	if !ok || cl2.Job.ID != j2.ID {
		t.Fatalf("second claim: %+v", cl2)
	}
	deadline := time.Now().Add(10 * time.Second)
	for c.scrape()[`cleanroom_lease_expiries_total{state="queued"}`] != 1 {
		if time.Now().After(deadline) {
			t.Fatal("lease expiry not counted")
		}
		time.Sleep(100 * time.Millisecond)
	}
	c.getBody("/v1/nothing-here", "")
	m = c.scrape()
	want(t, m, map[string]float64{
		`cleanroom_jobs{state="succeeded"}`: 1, `cleanroom_jobs{state="queued"}`: 1, `cleanroom_jobs{state="running"}`: 0,
		`cleanroom_queue_wait_seconds_count`:                          2,
		`cleanroom_http_requests_total{code="404",route="unmatched"}`: 1,
	})

	// No job, runner or token identifies itself in a label.
	_, body := c.getBody("/metrics", "")
	for _, id := range []string{j1.ID, j2.ID, runnerID} {
		if strings.Contains(body, id) {
			t.Errorf("/metrics names %s", id)
		}
	}
	problems, err := promtest.GatherAndLint(c.srv.Gatherer())
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("lint: %s: %s", p.Metric, p.Text)
	}
}

func TestMetricsTokenAndSwitch(t *testing.T) {
	checkGoroutines(t)
	c := startCoord(t, func(cfg *coordinator.Config) { cfg.MetricsToken = "scrape-secret" })
	if code, _ := c.getBody("/metrics", ""); code != http.StatusUnauthorized {
		t.Errorf("without the token: %d, want 401", code)
	}
	if code, _ := c.getBody("/metrics", c.Admin); code != http.StatusUnauthorized {
		t.Errorf("with the admin token: %d, want 401", code)
	}
	if code, body := c.getBody("/metrics", "scrape-secret"); code != http.StatusOK || !strings.Contains(body, "cleanroom_jobs") {
		t.Errorf("with the token: %d", code)
	}
	off := startCoord(t, func(cfg *coordinator.Config) { cfg.DisableMetrics = true })
	if code, _ := off.getBody("/metrics", ""); code != http.StatusNotFound {
		t.Errorf("disabled: %d, want 404", code)
	}
}

func TestHealthzAndReadyz(t *testing.T) {
	checkGoroutines(t)
	c := startCoord(t)
	for _, p := range []string{"/healthz", "/v1/healthz", "/readyz"} {
		if code, body := c.getBody(p, ""); code != http.StatusOK {
			t.Errorf("GET %s: %d %s", p, code, body)
		}
	}
}

func TestReadyzFailsWhenTheStoreIsClosed(t *testing.T) {
	checkGoroutines(t)
	st, err := sqlite.Open(context.Background(), filepath.Join(t.TempDir(), "c.db"), sqlite.Options{})
	if err != nil {
		t.Fatal(err)
	}
	c := startCoord(t, func(cfg *coordinator.Config) { cfg.Store = st })
	if code, _ := c.getBody("/readyz", ""); code != http.StatusOK {
		t.Fatalf("ready with an open store: %d", code)
	}
	st.Close()
	code, body := c.getBody("/readyz", "")
	if code != http.StatusServiceUnavailable || !strings.Contains(body, "store") {
		t.Fatalf("ready with a closed store: %d %s, want 503 naming the store", code, body)
	}
	if code, _ := c.getBody("/healthz", ""); code != http.StatusOK {
		t.Errorf("alive with a closed store: %d, want 200 (alive, not ready)", code)
	}
}
