package postgres

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/cleanroom-ci/cleanroom/api"
	"github.com/cleanroom-ci/cleanroom/coordinator/store"
	"github.com/cleanroom-ci/cleanroom/coordinator/store/postgres/pgtest"
	"github.com/cleanroom-ci/cleanroom/coordinator/store/storetest"
)

// Two coordinators starting together on a new database: one applies the
// migrations under the advisory lock, the other waits and finds them done.
func TestConcurrentOpensMigrateOnce(t *testing.T) {
	ctx := context.Background()
	dsn := pgtest.NewDatabase(t)
	var wg sync.WaitGroup
	errs := make([]error, 4)
	for i := range errs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s, err := Open(ctx, dsn, Options{})
			if err == nil {
				err = s.Ready(ctx)
				s.Close()
			}
			errs[i] = err
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("open %d: %v", i, err)
		}
	}
	plan, err := Migrate(ctx, dsn, time.Now(), true)
	if err != nil || plan.Current != SchemaVersion || len(plan.Pending) != 0 {
		t.Fatalf("after the opens: %+v %v", plan, err)
	}
}

// A dry run reports the pending migrations and applies nothing; a real
// run applies them; a database ahead of this build is refused, and one
// behind it is not ready.
func TestMigrateDryRunThenApplyAndVersionChecks(t *testing.T) {
	ctx := context.Background()
	dsn := pgtest.NewDatabase(t)
	plan, err := Migrate(ctx, dsn, time.Now(), true)
	if err != nil || plan.Current != 0 || plan.Target != SchemaVersion || len(plan.Pending) != SchemaVersion || plan.Applied {
		t.Fatalf("dry run on an empty database: %+v %v", plan, err)
	}
	if plan, err = Migrate(ctx, dsn, time.Now(), true); err != nil || plan.Current != 0 {
		t.Fatalf("a dry run applied something: %+v %v", plan, err)
	}
	if plan, err = Migrate(ctx, dsn, time.Now(), false); err != nil || !plan.Applied || len(plan.Pending) != SchemaVersion {
		t.Fatalf("migrating: %+v %v", plan, err)
	}
	s, err := Open(ctx, dsn, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, err := s.pool.Exec(ctx, `INSERT INTO schema_version VALUES ($1, 0)`, SchemaVersion+1); err != nil {
		t.Fatal(err)
	}
	if err := s.Ready(ctx); err == nil {
		t.Error("ready at a version this build does not know")
	}
	if _, err := Open(ctx, dsn, Options{}); err == nil {
		t.Error("opened a database ahead of this build")
	}
	if _, err := s.pool.Exec(ctx, `DELETE FROM schema_version WHERE version >= $1`, SchemaVersion); err != nil {
		t.Fatal(err)
	}
	if err := s.Ready(ctx); err == nil {
		t.Error("ready with a migration missing")
	}
}

// A blob is stored as BlobChunkSize rows, not one value.
func TestBlobsAreStoredInChunks(t *testing.T) {
	ctx := context.Background()
	s, err := Open(ctx, pgtest.NewDatabase(t), Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	data := bytes.Repeat([]byte("0123456789abcdef"), (5*BlobChunkSize/2)/16)
	d, _, err := s.PutBlob(ctx, bytes.NewReader(data), int64(len(data)), "")
	if err != nil {
		t.Fatal(err)
	}
	var n int
	var largest int
	if err := s.pool.QueryRow(ctx, `SELECT count(*), max(length(data)) FROM blob_chunks c JOIN blobs b ON b.id = c.blob_id WHERE b.sha256 = $1`, d).Scan(&n, &largest); err != nil {
		t.Fatal(err)
	}
	if n != 3 || largest != BlobChunkSize {
		t.Fatalf("2.5 chunks of data stored as %d rows of at most %d bytes, want 3 of %d", n, largest, BlobChunkSize)
	}
	if _, _, err := s.PutBlob(ctx, bytes.NewReader(data), int64(len(data)), ""); err != nil {
		t.Fatal(err)
	}
	if err := s.pool.QueryRow(ctx, `SELECT count(*) FROM blob_chunks`).Scan(&n); err != nil || n != 3 {
		t.Fatalf("after storing the same blob again: %d chunks (%v), want 3", n, err)
	}
}

// When the listening connection is cut (here terminated by the server, as a
// restart would), Listen connects again, delivers ChangeAll, and hears
// later publishes.
func TestListenReconnectsAndDeliversChangeAll(t *testing.T) {
	ctx := context.Background()
	dsn := pgtest.NewDatabase(t)
	s, err := Open(ctx, dsn, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	lctx, stop := context.WithCancel(ctx)
	defer stop()
	heard := make(chan string, 100)
	done := make(chan error, 1)
	go func() { done <- s.Listen(lctx, func(k string) { heard <- k }) }()
	await := func(key string, publish bool) {
		t.Helper()
		deadline := time.After(15 * time.Second)
		for {
			if publish {
				if err := s.Publish(ctx, key); err != nil {
					t.Fatal(err)
				}
			}
			select {
			case k := <-heard:
				if k == key {
					return
				}
			case <-time.After(50 * time.Millisecond):
			case <-deadline:
				t.Fatalf("%s not heard within 15s", key)
			}
		}
	}
	await("before", true)
	admin, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close(ctx)
	var killed int
	if err := admin.QueryRow(ctx, `SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
		WHERE datname = current_database() AND query LIKE 'LISTEN %'`).Scan(&killed); err != nil || killed != 1 {
		t.Fatalf("terminating the listener's connection: %d (%v)", killed, err)
	}
	await(store.ChangeAll, false)
	await("after", true)
	stop()
	if err := <-done; err != context.Canceled {
		t.Fatalf("Listen returned %v", err)
	}
}

// A claim reads the queue a page at a time: jobs the runner fits are found
// behind more than a page of jobs it does not, in queue order, and a claim
// stops reading once it has its jobs.
func TestClaimFindsFittingJobsPastTheFirstPage(t *testing.T) {
	ctx := context.Background()
	s, err := Open(ctx, pgtest.NewDatabase(t), Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	now := time.Now()
	add := func(id string, labels map[string]string) {
		t.Helper()
		j := store.Job{Job: api.Job{ID: id, MaxAttempts: 1, CreatedAt: now, Spec: api.JobSpec{Labels: labels, Build: api.Build{Script: "true"}}}}
		if err := s.CreateJob(ctx, j); err != nil {
			t.Fatal(err)
		}
	}
	for i := range claimPage + claimPage/2 {
		add(fmt.Sprintf("gpu-%03d", i), map[string]string{"gpu": "yes"})
	}
	for i := range 3 {
		add(fmt.Sprintf("any-%d", i), nil)
	}
	r := store.Runner{Runner: api.Runner{ID: "r-cpu"}}
	var got []string
	for _, want := range []int{2, 1, 0} {
		claims, err := s.ClaimJobs(ctx, r, nil, 2, time.Minute, now)
		if err != nil || len(claims) != want {
			t.Fatalf("claim: %d jobs (%v), want %d", len(claims), err, want)
		}
		for _, c := range claims {
			got = append(got, c.Job.ID)
		}
	}
	if want := []string{"any-0", "any-1", "any-2"}; !slices.Equal(got, want) {
		t.Fatalf("claimed %v, want %v", got, want)
	}
}

// Uploads whose clients send nothing (a trickling source, a stalled
// artifact) hold a connection each for as long as they last; they may take
// only part of the pool, so claims, heartbeats and log appends still get
// connections.
func TestStalledUploadsLeaveConnectionsForEverythingElse(t *testing.T) {
	ctx := context.Background()
	s := openSmallPool(t, 4)
	var wg sync.WaitGroup
	var writers []*io.PipeWriter
	for i := 0; i < 8; i++ {
		pr, pw := io.Pipe()
		writers = append(writers, pw)
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, _, _ = s.PutBlob(ctx, pr, 1<<20, "")
		}()
	}
	defer func() {
		for _, pw := range writers {
			pw.CloseWithError(errors.New("client gone"))
		}
		wg.Wait()
	}()
	time.Sleep(200 * time.Millisecond) // the uploads start and stall
	for i := 0; i < 3; i++ {
		qctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		_, err := s.Stats(qctx, time.Now(), time.Now())
		cancel()
		if err != nil {
			t.Fatalf("a query while uploads stall: %v", err)
		}
	}
}

// A client reading egress events slowly holds no connection while it
// reads: with a pool of one, the coordinator still answers other queries
// while an export waits on its client, and the export sends every event
// once, in order, across its batches.
func TestSlowEgressReaderHoldsNoConnection(t *testing.T) {
	ctx := context.Background()
	s := openSmallPool(t, 1)
	n := egressPage + 3
	for i := 1; i <= n; i++ {
		if _, err := s.pool.Exec(ctx, `INSERT INTO egress (id, job_id, runner_id, seq, time, verdict, event) VALUES ($1, 'j-1', 'r-1', $1, $2, 'deny', $3)`,
			i, int64(n-i/2), fmt.Sprintf(`{"verdict":"deny","rule":"%d"}`, i)); err != nil {
			t.Fatal(err)
		}
	}
	for _, after := range []*int64{nil, new(int64)} {
		waiting, release := make(chan struct{}), make(chan struct{})
		var got []int64
		done := make(chan error, 1)
		go func() {
			done <- s.QueryEgressRecords(ctx, store.EgressFilter{EgressFilter: api.EgressFilter{After: after}}, func(r api.EgressRecord) error {
				if len(got) == 0 {
					close(waiting)
					<-release
				}
				got = append(got, r.Cursor)
				return nil
			})
		}()
		<-waiting
		qctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		_, err := s.Stats(qctx, time.Now(), time.Now())
		cancel()
		close(release)
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		if err != nil {
			t.Fatalf("a query while an export waits on its client: %v", err)
		}
		seen := map[int64]bool{}
		for _, c := range got {
			seen[c] = true
		}
		if len(got) != n || len(seen) != n {
			t.Errorf("after %v: %d events (%d distinct), want %d", after, len(got), len(seen), n)
		}
	}
}

// openSmallPool opens a new database with a pool of maxConns connections.
func openSmallPool(t *testing.T, maxConns int32) *Store {
	t.Helper()
	s, err := Open(context.Background(), pgtest.NewDatabase(t), Options{MaxConns: maxConns})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// A version 1 database's runners migrate with no claim report, until they
// claim again.
func TestVersion1RunnersMigrateWithoutAClaimReport(t *testing.T) {
	ctx := context.Background()
	dsn := pgtest.NewDatabase(t)
	pool, err := openPool(ctx, dsn, Options{MaxConns: 1})
	if err != nil {
		t.Fatal(err)
	}
	_, err = store.Migrate(ctx, migrationDB{pool}, migrations[:1], time.Now(), false)
	if err == nil {
		_, err = pool.Exec(ctx, `INSERT INTO runners (id, name, token_hash, public_key, created_at, last_seen) VALUES ('r-old', 'old', '\x00', '\x00', 0, 5)`)
	}
	pool.Close()
	if err != nil {
		t.Fatal(err)
	}
	s, err := Open(ctx, dsn, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	storetest.RunnerMigratedWithoutClaim(t, s, "r-old", time.Unix(0, 5))
}
