package sqlite_test

import (
	"context"
	"errors"
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
