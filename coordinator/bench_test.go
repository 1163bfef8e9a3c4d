package coordinator_test

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cleanroom-ci/cleanroom/api"
	"github.com/cleanroom-ci/cleanroom/coordinator"
	"github.com/cleanroom-ci/cleanroom/coordinator/store"
	"github.com/cleanroom-ci/cleanroom/coordinator/store/sqlite"
)

// BenchmarkMetricsScrape1000Jobs times one GET /metrics (store counts,
// every histogram, Go and process collectors, text encoding) with 1,000
// jobs in the store: 700 queued, 100 running, 200 finished. Target: < 20 ms.
func BenchmarkMetricsScrape1000Jobs(b *testing.B) {
	ctx := context.Background()
	dir := b.TempDir()
	st, err := sqlite.Open(ctx, filepath.Join(dir, "cleanroom.db"), sqlite.Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer st.Close()
	now := time.Now()
	for i := 0; i < 1000; i++ {
		j := store.Job{Job: api.Job{ID: fmt.Sprintf("j-%04d", i), MaxAttempts: 3, CreatedAt: now,
			Spec: api.JobSpec{Build: api.Build{Script: "npm run build"}}}}
		if err := st.CreateJob(ctx, j); err != nil {
			b.Fatal(err)
		}
	}
	claims, err := st.ClaimJobs(ctx, store.Runner{Runner: api.Runner{ID: "r-1"}}, nil, 300, time.Hour, now)
	if err != nil || len(claims) != 300 {
		b.Fatalf("claiming: %d %v", len(claims), err)
	}
	for _, c := range claims[:200] {
		if _, err := st.Finish(ctx, store.Fence{JobID: c.Job.ID, RunnerID: "r-1", Token: c.Token}, api.StateSucceeded, 0, "", 0, now); err != nil {
			b.Fatal(err)
		}
	}
	srv, err := coordinator.New(ctx, coordinator.Config{DataDir: dir, AdminToken: coordinator.NewAdminToken(), Store: st})
	if err != nil {
		b.Fatal(err)
	}
	defer srv.Close()
	h := srv.Handler()
	req := httptest.NewRequest(http.MethodGet, "/metrics", nil)
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	for _, series := range []string{`cleanroom_jobs{state="queued"} 700`, `cleanroom_jobs{state="running"} 100`, `cleanroom_jobs{state="succeeded"} 200`} {
		if !strings.Contains(rec.Body.String(), series+"\n") {
			b.Fatalf("/metrics lacks %s", series)
		}
	}
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code != http.StatusOK {
			b.Fatalf("GET /metrics: %d", rec.Code)
		}
	}
}
