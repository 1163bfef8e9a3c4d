package sqlite_test

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"path/filepath"
	"testing"
	"time"

	"github.com/cleanroom-ci/cleanroom/api"
	"github.com/cleanroom-ci/cleanroom/coordinator/store"
	"github.com/cleanroom-ci/cleanroom/coordinator/store/sqlite"
)

func TestOpenMigratesOnceAndReopens(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "db", "cleanroom.db")
	for i := 0; i < 2; i++ {
		s, err := sqlite.Open(ctx, path, sqlite.Options{})
		if err != nil {
			t.Fatalf("open %d: %v", i, err)
		}
		v, err := s.Version(ctx)
		if err != nil || v != sqlite.SchemaVersion {
			t.Fatalf("open %d: version %d (%v), want %d", i, v, err, sqlite.SchemaVersion)
		}
		s.Close()
	}
}

func TestClaimIsAtomicUnderConcurrentClaimers(t *testing.T) {
	ctx := context.Background()
	s, err := sqlite.Open(ctx, filepath.Join(t.TempDir(), "c.db"), sqlite.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	const jobs = 40
	for i := 0; i < jobs; i++ {
		j := store.Job{Job: api.Job{ID: "j-" + string(rune('A'+i)), MaxAttempts: 3, CreatedAt: time.Now(),
			Spec: api.JobSpec{Build: api.Build{Script: "x"}}}}
		if err := s.CreateJob(ctx, j); err != nil {
			t.Fatal(err)
		}
	}
	seen := make(chan string, jobs*2)
	errs := make(chan error, 8)
	for w := 0; w < 8; w++ {
		go func() {
			r := store.Runner{Runner: api.Runner{ID: "r"}}
			for {
				cs, err := s.ClaimJobs(ctx, r, nil, 2, time.Minute, time.Now())
				if err != nil {
					errs <- err
					return
				}
				if len(cs) == 0 {
					errs <- nil
					return
				}
				for _, c := range cs {
					seen <- c.Job.ID
				}
			}
		}()
	}
	for w := 0; w < 8; w++ {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	close(seen)
	got := map[string]int{}
	for id := range seen {
		got[id]++
	}
	if len(got) != jobs {
		t.Fatalf("claimed %d distinct jobs, want %d", len(got), jobs)
	}
	for id, n := range got {
		if n != 1 {
			t.Fatalf("job %s claimed %d times", id, n)
		}
	}
	_, err = s.Job(ctx, "j-none")
	if !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("missing job: %v", err)
	}
}

func TestStatsCountsJobsByStateAndRunnersOnline(t *testing.T) {
	ctx := context.Background()
	s, err := sqlite.Open(ctx, filepath.Join(t.TempDir(), "s.db"), sqlite.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	now := time.Now()
	hash := []byte("0123456789abcdef0123456789abcdef")
	if err := s.CreateToken(ctx, store.Token{ID: "reg", Kind: api.TokenRegistration, Hash: hash, CreatedAt: now}); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"idle", "busy", "gone", "revoked"} {
		r := store.Runner{Runner: api.Runner{ID: "r-" + name, Name: name, Concurrency: 1, CreatedAt: now}, TokenHash: hash, PublicKey: []byte("k")}
		if err := s.RegisterRunner(ctx, "reg", hash, r, now); err != nil {
			t.Fatal(err)
		}
	}
	for i := 0; i < 3; i++ {
		j := store.Job{Job: api.Job{ID: fmt.Sprintf("j-%d", i), MaxAttempts: 3, CreatedAt: now, Spec: api.JobSpec{Build: api.Build{Script: "x"}}}}
		if err := s.CreateJob(ctx, j); err != nil {
			t.Fatal(err)
		}
	}
	// busy claims one job long ago and renews its lease by heartbeats only;
	// idle claimed (nothing) just now; gone was seen long ago; revoked is.
	old := now.Add(-time.Hour)
	cs, err := s.ClaimJobs(ctx, store.Runner{Runner: api.Runner{ID: "r-busy"}}, nil, 1, time.Minute, old)
	if err != nil || len(cs) != 1 {
		t.Fatalf("claim: %v %v", cs, err)
	}
	if _, err := s.Heartbeat(ctx, store.Fence{JobID: cs[0].Job.ID, RunnerID: "r-busy", Token: cs[0].Token}, time.Minute, now); err != nil {
		t.Fatal(err)
	}
	for id, seen := range map[string]time.Time{"r-busy": old, "r-gone": old, "r-idle": now, "r-revoked": now} {
		if err := s.TouchRunner(ctx, id, seen); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.RevokeRunner(ctx, "r-revoked", now); err != nil {
		t.Fatal(err)
	}

	st, err := s.Stats(ctx, now.Add(-time.Minute), now)
	if err != nil {
		t.Fatal(err)
	}
	if want := map[string]int{api.StateQueued: 2, api.StateRunning: 1}; !maps.Equal(st.Jobs, want) {
		t.Errorf("jobs by state = %v, want %v", st.Jobs, want)
	}
	if st.RunnersOnline != 2 {
		t.Errorf("runners online = %d, want 2 (idle: seen; busy: holds a live lease)", st.RunnersOnline)
	}
}

func TestReadyFailsOnAClosedStore(t *testing.T) {
	ctx := context.Background()
	s, err := sqlite.Open(ctx, filepath.Join(t.TempDir(), "r.db"), sqlite.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Ready(ctx); err != nil {
		t.Fatalf("ready on an open store: %v", err)
	}
	s.Close()
	if err := s.Ready(ctx); err == nil {
		t.Fatal("ready on a closed store: no error")
	}
}
