package sqlite_test

import (
	"context"
	"fmt"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/cleanroom-ci/cleanroom/api"
	"github.com/cleanroom-ci/cleanroom/coordinator/store"
	"github.com/cleanroom-ci/cleanroom/coordinator/store/sqlite"
)

func openStore(t *testing.T) *sqlite.Store {
	t.Helper()
	s, err := sqlite.Open(context.Background(), filepath.Join(t.TempDir(), "c.db"), sqlite.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// runningJob creates job id and claims it for runner r; the fence writes
// under its lease.
func runningJob(t *testing.T, s *sqlite.Store, id string) store.Fence {
	t.Helper()
	ctx := context.Background()
	j := store.Job{Job: api.Job{ID: id, MaxAttempts: 3, CreatedAt: time.Now(), Spec: api.JobSpec{Build: api.Build{Script: "x"}}}}
	if err := s.CreateJob(ctx, j); err != nil {
		t.Fatal(err)
	}
	cs, err := s.ClaimJobs(ctx, store.Runner{Runner: api.Runner{ID: "r"}}, nil, 1, time.Minute, time.Now())
	if err != nil || len(cs) != 1 || cs[0].Job.ID != id {
		t.Fatalf("claiming %s: %v %v", id, cs, err)
	}
	return store.Fence{JobID: id, RunnerID: "r", Token: cs[0].Token}
}

func events(n int, tag string) []api.EgressEvent {
	evs := make([]api.EgressEvent, n)
	for i := range evs {
		evs[i] = api.EgressEvent{Time: time.Now().UTC(), Proto: "tcp", Dst: fmt.Sprintf("%s:%d", tag, i), Verdict: api.VerdictDeny}
	}
	return evs
}

func records(t *testing.T, s *sqlite.Store, f store.EgressFilter) []api.EgressRecord {
	t.Helper()
	var out []api.EgressRecord
	if err := s.QueryEgressRecords(context.Background(), f, func(r api.EgressRecord) error { out = append(out, r); return nil }); err != nil {
		t.Fatal(err)
	}
	return out
}

func after(n int64) store.EgressFilter {
	return store.EgressFilter{EgressFilter: api.EgressFilter{After: &n}}
}

// Cursors increase with every stored event, a retried batch gets none, and
// the cursors of purged events are never handed out again.
func TestEgressCursorsIncreaseAndAreNeverReused(t *testing.T) {
	ctx := context.Background()
	s := openStore(t)
	f := runningJob(t, s, "j-a")
	if err := s.AddEgress(ctx, f, 0, events(3, "a")); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 2; i++ { // a retried batch, and one overlapping the first
		if err := s.AddEgress(ctx, f, 2, events(3, "b")); err != nil {
			t.Fatal(err)
		}
	}
	recs := records(t, s, after(0))
	if len(recs) != 5 {
		t.Fatalf("%d events stored, want 5 (3 + 2 new of the retried batch)", len(recs))
	}
	for i := 1; i < len(recs); i++ {
		if recs[i].Cursor <= recs[i-1].Cursor {
			t.Fatalf("cursor %d after %d", recs[i].Cursor, recs[i-1].Cursor)
		}
	}
	if recs[2].Dst != "a:2" || recs[3].Dst != "b:1" {
		t.Fatalf("events 3 and 4 are %s, %s; want a:2 (stored first) and b:1", recs[2].Dst, recs[3].Dst)
	}
	if got := records(t, s, after(recs[2].Cursor)); len(got) != 2 || got[0].Cursor != recs[3].Cursor {
		t.Fatalf("after %d: %+v", recs[2].Cursor, got)
	}
	last := recs[len(recs)-1].Cursor

	// Purge the job that holds the highest cursors, then store more.
	if _, err := s.Finish(ctx, f, api.StateSucceeded, 0, "", "", 0, time.Now().Add(-time.Hour)); err != nil {
		t.Fatal(err)
	}
	if ids, err := s.PurgeFinished(ctx, time.Now(), 10); err != nil || len(ids) != 1 {
		t.Fatalf("purging: %v %v", ids, err)
	}
	g := runningJob(t, s, "j-b")
	if err := s.AddEgress(ctx, g, 0, events(1, "c")); err != nil {
		t.Fatal(err)
	}
	got := records(t, s, after(0))
	if len(got) != 1 || got[0].Cursor <= last {
		t.Fatalf("after a purge the next event got cursor %d, want more than %d", got[0].Cursor, last)
	}
}

// A reader polling "after the last cursor I saw" while several writers add
// batches concurrently ends with exactly the stored events, in order: a
// cursor never becomes visible before a smaller one.
func TestEgressReaderAfterCursorMissesNothingUnderConcurrentWriters(t *testing.T) {
	ctx := context.Background()
	s := openStore(t)
	const writers, batches, size = 4, 30, 10
	var fences []store.Fence
	for w := 0; w < writers; w++ {
		fences = append(fences, runningJob(t, s, fmt.Sprintf("j-%d", w)))
	}
	var wg sync.WaitGroup
	errs := make(chan error, writers)
	for _, f := range fences {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for b := 0; b < batches; b++ {
				if err := s.AddEgress(ctx, f, int64(b*size), events(size, f.JobID)); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	var seen []int64
	var cur int64
	for finished := false; !finished; {
		select {
		case <-done:
			finished = true // one more read after the last write
		default:
		}
		for _, r := range records(t, s, after(cur)) {
			seen = append(seen, r.Cursor)
			cur = r.Cursor
		}
	}
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	all := records(t, s, after(0))
	if len(all) != writers*batches*size || len(seen) != len(all) {
		t.Fatalf("reader saw %d events, store has %d, want %d", len(seen), len(all), writers*batches*size)
	}
	for i, r := range all {
		if seen[i] != r.Cursor {
			t.Fatalf("event %d: reader saw cursor %d, store has %d", i, seen[i], r.Cursor)
		}
	}
}

// Filters apply to a cursor query, and the submitter filter keeps another
// token's jobs out.
func TestEgressAfterCursorKeepsFilters(t *testing.T) {
	ctx := context.Background()
	s := openStore(t)
	f := runningJob(t, s, "j-a")
	evs := events(4, "a")
	evs[1].Verdict, evs[3].Verdict = api.VerdictAllow, api.VerdictAllow
	if err := s.AddEgress(ctx, f, 0, evs); err != nil {
		t.Fatal(err)
	}
	q := after(0)
	q.Verdict, q.Limit = api.VerdictAllow, 1
	if got := records(t, s, q); len(got) != 1 || got[0].Dst != "a:1" {
		t.Fatalf("first allowed event: %+v", got)
	}
	q.Limit, q.Submitter = 0, "crs-other"
	if got := records(t, s, q); len(got) != 0 {
		t.Fatalf("another submitter's query got %d events", len(got))
	}
}
