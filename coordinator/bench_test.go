package coordinator_test

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cleanroom-ci/cleanroom/api"
	"github.com/cleanroom-ci/cleanroom/coordinator"
	"github.com/cleanroom-ci/cleanroom/coordinator/store"
	"github.com/cleanroom-ci/cleanroom/coordinator/store/sqlite"
)

// benchStore opens a real SQLite store in a fresh folder (the coordinator's
// data dir), closed when b ends.
func benchStore(b *testing.B) (dir string, st *sqlite.Store) {
	b.Helper()
	dir = b.TempDir()
	st, err := sqlite.Open(context.Background(), filepath.Join(dir, "cleanroom.db"), sqlite.Options{})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { st.Close() })
	return dir, st
}

// BenchmarkMetricsScrape1000Jobs times one GET /metrics (store counts,
// every histogram, Go and process collectors, text encoding) with 1,000
// jobs in the store: 700 queued, 100 running, 200 finished. Target: < 20 ms.
func BenchmarkMetricsScrape1000Jobs(b *testing.B) {
	ctx := context.Background()
	dir, st := benchStore(b)
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
		if _, err := st.Finish(ctx, store.Fence{JobID: c.Job.ID, RunnerID: "r-1", Token: c.Token}, api.StateSucceeded, 0, "", "", 0, now); err != nil {
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

// The console's benchmarks run the real handler (coordinator.Server's, with
// its sessions and security headers) on the real SQLite store, through
// httptest: what a page costs on the server, without the network.

// benchConsole is a coordinator on the SQLite store in dir and a signed-in
// admin session on its console.
type benchConsole struct {
	h      http.Handler
	cookie *http.Cookie
}

func newBenchConsole(b *testing.B, dir string, st *sqlite.Store) *benchConsole {
	b.Helper()
	admin := coordinator.NewAdminToken()
	srv, err := coordinator.New(context.Background(), coordinator.Config{DataDir: dir, AdminToken: admin, Store: st})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { srv.Close() })
	c := &benchConsole{h: srv.Handler()}
	req := httptest.NewRequest(http.MethodPost, "http://console.test/ui/signin", strings.NewReader(url.Values{"token": {admin}}.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Sec-Fetch-Site", "same-origin")
	rec := httptest.NewRecorder()
	c.h.ServeHTTP(rec, req)
	for _, ck := range rec.Result().Cookies() {
		if ck.Name == "cleanroom_session" {
			c.cookie = ck
		}
	}
	if rec.Code != http.StatusSeeOther || c.cookie == nil {
		b.Fatalf("signing in: %d %s", rec.Code, rec.Body)
	}
	return c
}

// get renders path and returns the page; anything but 200 fails b.
func (c *benchConsole) get(b *testing.B, path string) string {
	req := httptest.NewRequest(http.MethodGet, "http://console.test"+path, nil)
	req.AddCookie(c.cookie)
	rec := httptest.NewRecorder()
	c.h.ServeHTTP(rec, req)
	if rec.Code != http.StatusOK {
		b.Fatalf("GET %s: %d %s", path, rec.Code, rec.Body)
	}
	return rec.Body.String()
}

// medianLoop runs fn under b.Loop and also reports the median iteration in
// milliseconds (ms-median/op): the machines are shared, and the mean moves
// with whatever else runs.
func medianLoop(b *testing.B, fn func()) {
	var took []time.Duration
	for b.Loop() {
		start := time.Now()
		fn()
		took = append(took, time.Since(start))
	}
	slices.Sort(took)
	b.ReportMetric(float64(took[len(took)/2].Microseconds())/1000, "ms-median/op")
}

// benchEvent is event i of a synthetic egress history shaped like a fleet's:
// 70% allowed (registry connections and DNS answers), 30% denied — default
// deny to assorted destinations, refused DNS queries (a tenth of them under
// exfil.example, as a malicious dependency's would be), the metadata
// address; one event in 20,000 is a query under rare.example.
func benchEvent(i int, at time.Time, job, runner string) api.EgressEvent {
	e := api.EgressEvent{Time: at, Runner: runner, Job: job, Sandbox: "cr-" + job + "-1", Proto: "tcp",
		Src: fmt.Sprintf("10.88.%d.2:%d", i%250, 30000+i%30000)}
	switch r := i % 100; {
	case i%20000 == 7:
		e.Proto, e.Dst, e.Domain, e.Verdict, e.Rule = "dns", "10.88.0.1:53", fmt.Sprintf("c%d.rare.example.", i), api.VerdictDeny, "dns-refused"
	case r < 50:
		e.Dst, e.Verdict, e.Rule = "10.231.254.2:4873", api.VerdictAllow, "allow-registry"
	case r < 70:
		e.Proto, e.Dst, e.Domain, e.Answer, e.Verdict, e.Rule = "dns", "10.88.0.1:53", "registry.cleanroom.test.", "10.231.254.2", api.VerdictAllow, "dns-allow"
	case r < 90:
		e.Dst, e.Verdict, e.Rule = fmt.Sprintf("203.0.113.%d:%d", i%200, []int{80, 443, 4444, 22}[i%4]), api.VerdictDeny, "default-deny"
	case r < 98:
		domain := fmt.Sprintf("t%d.telemetry.vendor.example.", i%1000)
		if r == 90 {
			domain = fmt.Sprintf("%x.exfil.example.", i*2654435761)
		}
		e.Proto, e.Dst, e.Domain, e.Verdict, e.Rule = "dns", "10.88.0.1:53", domain, api.VerdictDeny, "dns-refused"
	default:
		e.Dst, e.Verdict, e.Rule = "169.254.169.254:80", api.VerdictDeny, "metadata-deny"
	}
	return e
}

// seedEgress writes n events straight into the store's egress table, in one
// transaction with one prepared statement, as AddEgress stores them (the
// same columns, the event as JSON): 1,000,000 take seconds this way, where
// a batch per job through the API would take minutes. Events are 500 per
// job, over 20 runners, one every 10 ms from start.
func seedEgress(b *testing.B, path string, n int, start time.Time) {
	b.Helper()
	ctx := context.Background()
	db, err := sql.Open("sqlite", "file:"+path+"?_pragma=busy_timeout(10000)&_pragma=journal_mode(WAL)&_pragma=synchronous(OFF)")
	if err != nil {
		b.Fatal(err)
	}
	defer db.Close()
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		b.Fatal(err)
	}
	defer tx.Rollback()
	ins, err := tx.PrepareContext(ctx, `INSERT INTO egress (job_id, runner_id, seq, time, verdict, event) VALUES (?,?,?,?,?,?)`)
	if err != nil {
		b.Fatal(err)
	}
	defer ins.Close()
	for i := range n {
		job, runner := fmt.Sprintf("j-%016x", i/500), fmt.Sprintf("r-%012x", i/500%20)
		at := start.Add(time.Duration(i) * 10 * time.Millisecond)
		e := benchEvent(i, at, job, runner)
		raw, err := json.Marshal(e)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := ins.ExecContext(ctx, job, runner, i%500, at.UnixNano(), e.Verdict, string(raw)); err != nil {
			b.Fatalf("seeding event %d: %v", i, err)
		}
	}
	if err := tx.Commit(); err != nil {
		b.Fatal(err)
	}
}

// BenchmarkConsoleJobPage5000Events renders the page of a finished job with
// 5,000 egress events (30% denied) and a 256 KiB log, server-side: the job,
// its log, its events (the page lists the first 1,000 and links the rest
// to the explorer), its denied count and its artifacts. Target: < 100 ms.
func BenchmarkConsoleJobPage5000Events(b *testing.B) {
	ctx := context.Background()
	dir, st := benchStore(b)
	now := time.Now().UTC()
	job := store.Job{Job: api.Job{ID: "j-00000000000000aa", MaxAttempts: 3, CreatedAt: now,
		Spec: api.JobSpec{Build: api.Build{Script: "npm run build"}}}}
	if err := st.CreateJob(ctx, job); err != nil {
		b.Fatal(err)
	}
	claims, err := st.ClaimJobs(ctx, store.Runner{Runner: api.Runner{ID: "r-000000000001"}}, nil, 1, time.Hour, now)
	if err != nil || len(claims) != 1 {
		b.Fatalf("claiming: %d %v", len(claims), err)
	}
	f := store.Fence{JobID: job.ID, RunnerID: "r-000000000001", Token: claims[0].Token}
	line := strings.Repeat("npm notice a line of build output, redacted as stored ", 2) + "\n"
	logData := []byte(strings.Repeat(line, 256<<10/len(line)))
	if _, err := st.AppendLog(ctx, f, 0, logData); err != nil {
		b.Fatal(err)
	}
	const events = 5000
	for first := 0; first < events; first += 500 {
		batch := make([]api.EgressEvent, 500)
		for i := range batch {
			batch[i] = benchEvent(first+i, now.Add(time.Duration(first+i)*time.Millisecond), job.ID, f.RunnerID)
		}
		if err := st.AddEgress(ctx, f, int64(first), batch); err != nil {
			b.Fatal(err)
		}
	}
	if _, err := st.Finish(ctx, f, api.StateSucceeded, 0, "", "", int64(len(logData)), now.Add(time.Minute)); err != nil {
		b.Fatal(err)
	}
	c := newBenchConsole(b, dir, st)
	page := c.get(b, "/ui/jobs/"+job.ID)
	if n := strings.Count(page, `<tr class="deny`); n < 250 {
		b.Fatalf("the job page shows %d denied rows", n)
	}
	b.ReportAllocs()
	b.ResetTimer()
	medianLoop(b, func() { c.get(b, "/ui/jobs/"+job.ID) })
}

// BenchmarkConsoleExplorer1MEvents filters 1,000,000 stored egress events
// in the console's explorer and renders its first page (200 events), by
// verdict, rule, domain and all three; "rare" is a domain with 50 events in
// the million, the worst case for a filter that must look at every event.
// Target: < 200 ms a page.
func BenchmarkConsoleExplorer1MEvents(b *testing.B) {
	dir, st := benchStore(b)
	const n = 1_000_000
	t0 := time.Now()
	seedEgress(b, filepath.Join(dir, "cleanroom.db"), n, time.Now().UTC().Add(-n*10*time.Millisecond))
	b.Logf("seeded %d events in %.1fs", n, time.Since(t0).Seconds())
	c := newBenchConsole(b, dir, st)
	for _, tc := range []struct {
		name  string
		query string
		rows  int
	}{
		{"verdict=deny", "verdict=deny", 200},
		{"rule=metadata-deny", "rule=metadata-deny", 200},
		{"domain=exfil.example", "domain=exfil.example", 200},
		{"deny+dns-refused+exfil.example", "verdict=deny&rule=dns-refused&domain=exfil.example", 200},
		{"domain=rare.example", "domain=rare.example", 50},
		{"deny+rare.example", "verdict=deny&domain=rare.example", 50},
		{"dns-refused+rare.example", "rule=dns-refused&domain=rare.example", 50},
	} {
		b.Run(tc.name, func(b *testing.B) {
			path := "/ui/egress?" + tc.query
			if got := strings.Count(c.get(b, path), `<tr class="deny`); got != tc.rows {
				b.Fatalf("%s: %d rows, want %d", path, got, tc.rows)
			}
			b.ResetTimer()
			medianLoop(b, func() { c.get(b, path) })
		})
	}
}
