package coordinator_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cleanroom-ci/cleanroom/api"
	"github.com/cleanroom-ci/cleanroom/coordinator"
	"github.com/cleanroom-ci/cleanroom/coordinator/store"
	"github.com/cleanroom-ci/cleanroom/coordinator/store/postgres"
	"github.com/cleanroom-ci/cleanroom/coordinator/store/postgres/pgtest"
	"github.com/cleanroom-ci/cleanroom/coordinator/store/sqlite"
)

// startPair runs two coordinators on one SQLite store, as two coordinators
// on one database: they share state and wake-ups (store.Changes), and the
// same admin token.
func startPair(t *testing.T) (a, b *coord) {
	t.Helper()
	return startPairOn(t, "sqlite")
}

// startPairOn runs two coordinators on one store of kind: "sqlite" (one
// handle shared by both) or "postgres" (a new database on the test server,
// each coordinator with its own connections, as two processes).
func startPairOn(t *testing.T, kind string) (a, b *coord) {
	t.Helper()
	ctx := context.Background()
	var open func() store.Store
	switch kind {
	case "sqlite":
		st, err := sqlite.Open(ctx, filepath.Join(t.TempDir(), "shared.db"), sqlite.Options{})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { st.Close() }) // after both coordinators stopped
		open = func() store.Store { return st }
	case "postgres":
		dsn := pgtest.NewDatabase(t)
		open = func() store.Store {
			st, err := postgres.Open(ctx, dsn, postgres.Options{})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { st.Close() })
			return st
		}
	default:
		t.Fatalf("unknown store kind %q", kind)
	}
	a = startCoord(t, func(cfg *coordinator.Config) { cfg.Store = open() })
	b = startCoord(t, func(cfg *coordinator.Config) { cfg.Store = open(); cfg.AdminToken = a.Admin })
	b.Admin = a.Admin
	return a, b
}

// What a runner reports with its claims through coordinator B (capacity,
// registries; whether its claim is still open) is what coordinator A
// answers with: GET /v1/policy on A lists the registries (the CLI's
// lockfile gate), and a queued job's reason on A names the runner.
func TestRunnerClaimingThroughOneCoordinatorIsKnownToTheOther(t *testing.T) {
	for _, kind := range []string{"sqlite", "postgres"} {
		t.Run(kind, func(t *testing.T) {
			checkGoroutines(t)
			a, b := startPairOn(t, kind)
			ctx := context.Background()
			runner, _ := b.Register("small", nil)
			claim := func() []api.Claim { t.Helper(); return claimAsSmall(t, runner) }
			reason := func(j api.Job, want string) {
				t.Helper()
				got, err := a.AdminClient().GetJob(ctx, j.ID)
				if err != nil {
					t.Fatal(err)
				}
				if !strings.Contains(got.QueuedReason, want) {
					t.Errorf("queued_reason on A = %q, want %q", got.QueuedReason, want)
				}
			}
			if p, err := a.AdminClient().Policy(ctx); err != nil || len(p.Registries) != 0 {
				t.Fatalf("policy on A before any claim = %+v %v, want none", p, err)
			}
			claim()
			if p, err := a.AdminClient().Policy(ctx); err != nil || !slices.Equal(p.Registries, []string{"http://registry.test:4873/"}) {
				t.Fatalf("policy on A = %+v %v, want the registry the runner reported to B", p, err)
			}
			spec, src := gitSpec()
			spec.Resources.Memory = 4 << 30
			big, err := a.AdminClient().SubmitGit(ctx, spec, src)
			if err != nil {
				t.Fatal(err)
			}
			reason(big, "no runner online has the resources it asks for (small: resources.memory 4GiB > 1GiB)")

			a.Submit(nil)
			if got := claim(); len(got) != 1 {
				t.Fatalf("claimed %d jobs through B, want the one that fits", len(got))
			}
			// The claim on B ended with a job: A must not count the runner
			// as waiting until the claim's wait is over.
			reason(a.Submit(nil), "all 1 runner(s) that can take it are busy (1 job(s) running)")
		})
	}
}

// postSubmit posts a git submit with an idempotency key.
func postSubmit(t *testing.T, c *coord, token, key, script string) (int, api.Job) {
	t.Helper()
	body, _ := json.Marshal(map[string]any{"spec": map[string]any{"build": script},
		"source": map[string]any{"kind": "git", "url": "https://git.example/app.git", "commit": strings.Repeat("a", 40)}})
	req, _ := http.NewRequest(http.MethodPost, c.URL+"/v1/jobs", bytes.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set(api.IdempotencyKeyHeader, key)
	resp, err := (&http.Client{Transport: c.tr}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var j api.Job
	b, _ := io.ReadAll(resp.Body)
	json.Unmarshal(b, &j)
	return resp.StatusCode, j
}

// A submit repeated with its idempotency key — on the same coordinator or
// another one on the store — answers with the job the first created; the
// key does not reach another token's jobs or another build.
func TestSubmitWithAnIdempotencyKeyCreatesOneJobAcrossCoordinators(t *testing.T) {
	checkGoroutines(t)
	a, b := startPair(t)
	key := api.NewIdempotencyKey()
	code, first := postSubmit(t, a, a.Admin, key, "npm test")
	if code != http.StatusCreated || first.ID == "" {
		t.Fatalf("first submit: %d %+v", code, first)
	}
	for _, c := range []*coord{a, b} {
		code, again := postSubmit(t, c, a.Admin, key, "npm test")
		if code != http.StatusOK || again.ID != first.ID {
			t.Fatalf("repeated submit: %d %s, want 200 with %s", code, again.ID, first.ID)
		}
	}
	if code, _ := postSubmit(t, b, a.Admin, key, "npm run other"); code != http.StatusConflict {
		t.Fatalf("the key reused for another build: %d, want 409", code)
	}
	sub, err := a.AdminClient().CreateToken(context.Background(), api.TokenRequest{Kind: api.TokenSubmit})
	if err != nil {
		t.Fatal(err)
	}
	code, other := postSubmit(t, b, sub.Token, key, "npm test")
	if code != http.StatusCreated || other.ID == first.ID {
		t.Fatalf("the same key from another token: %d %s, want a job of its own", code, other.ID)
	}
	if code, _ := postSubmit(t, a, a.Admin, "short", "npm test"); code != http.StatusBadRequest {
		t.Fatalf("a malformed key: %d, want 400", code)
	}
	jobs, err := b.AdminClient().ListJobs(context.Background(), api.JobFilter{})
	if err != nil || len(jobs) != 2 {
		t.Fatalf("jobs stored: %d (%v), want 2", len(jobs), err)
	}
}

// A job submitted to coordinator A wakes a claim long-polling coordinator
// B at once (through the store's change notifications, not B's 2 s safety
// tick), and a log follow on B wakes for what the runner sends to A.
func TestCoordinatorsOnOneStoreWakeEachOther(t *testing.T) {
	checkGoroutines(t)
	a, b := startPair(t)
	runnerB, _ := b.Register("r1", nil)
	type claimed struct {
		c   api.Claim
		ok  bool
		err error
		at  time.Time
	}
	got := make(chan claimed, 1)
	go func() {
		resp, err := runnerB.Claim(context.Background(), api.ClaimRequest{Slots: 1, Wait: api.Duration(10 * time.Second)})
		var c claimed
		c.err, c.at = err, time.Now()
		if err == nil && len(resp.Claims) == 1 {
			c.c, c.ok = resp.Claims[0], true
		}
		got <- c
	}()
	time.Sleep(200 * time.Millisecond) // B's long-poll is parked
	submitted := time.Now()
	j := a.Submit(nil)
	var c claimed
	select {
	case c = <-got:
	case <-time.After(5 * time.Second):
		t.Fatal("the claim on B did not return")
	}
	if c.err != nil || !c.ok || c.c.Job.ID != j.ID {
		t.Fatalf("claim on B: %+v", c)
	}
	if d := c.at.Sub(submitted); d > 500*time.Millisecond {
		t.Fatalf("claim on B took %s after the submit on A, want a wake-up, not the safety tick", d)
	} else {
		t.Logf("submit on A → claim on B: %s", d)
	}

	// The runner moves to A; a follower of the log on B sees each chunk
	// and the end without polling.
	runnerA := a.client(runnerB.Token)
	pr, pw := io.Pipe()
	followed := make(chan error, 1)
	go func() {
		_, err := b.AdminClient().ReadLog(context.Background(), j.ID, 0, true, pw)
		pw.CloseWithError(err)
		followed <- err
	}()
	lease := c.c.Lease.Token
	var off int64
	buf := make([]byte, 64)
	for i, line := range []string{"one\n", "two\n"} {
		next, err := runnerA.AppendLog(context.Background(), j.ID, lease, off, []byte(line))
		if err != nil {
			t.Fatal(err)
		}
		off = next
		start := time.Now()
		n, err := io.ReadAtLeast(pr, buf, len(line))
		if err != nil || string(buf[:n]) != line {
			t.Fatalf("chunk %d on B: %q %v", i, buf[:n], err)
		}
		if d := time.Since(start); d > 500*time.Millisecond {
			t.Fatalf("chunk %d reached the follower on B after %s", i, d)
		}
	}
	if err := runnerA.Result(context.Background(), j.ID, api.ResultRequest{Token: lease, State: api.StateSucceeded, LogSize: off}); err != nil {
		t.Fatal(err)
	}
	go io.Copy(io.Discard, pr)
	select {
	case err := <-followed:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("the follow on B did not end with the job finished on A")
	}
}
