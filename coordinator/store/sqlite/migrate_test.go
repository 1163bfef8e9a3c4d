package sqlite

import (
	"context"
	"database/sql"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/cleanroom-ci/cleanroom/api"
	"github.com/cleanroom-ci/cleanroom/coordinator/store"
	"github.com/cleanroom-ci/cleanroom/coordinator/store/storetest"
)

// oldDatabase writes a database at schema version, as that build left it,
// runs the statements of rows on it, and returns its path.
func oldDatabase(t *testing.T, version int, rows ...string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "cleanroom.db")
	db, err := sql.Open("sqlite", "file:"+path)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	qs := []string{`CREATE TABLE schema_version (version INTEGER NOT NULL, applied_at INTEGER NOT NULL)`}
	for v := 1; v <= version; v++ {
		qs = append(qs, migrations[v-1].SQL, fmt.Sprintf(`INSERT INTO schema_version VALUES (%d, 0)`, v))
	}
	for _, q := range append(qs, rows...) {
		if _, err := db.Exec(q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	return path
}

// A database written by the first schema (jobs without a submitter) opens,
// migrates, and keeps its jobs: they belong to no submit token.
func TestVersion1DatabaseMigratesAndKeepsItsJobs(t *testing.T) {
	ctx := context.Background()
	path := oldDatabase(t, 1,
		`INSERT INTO jobs (id, state, spec, source, created_at, max_attempts) VALUES ('j-old', 'succeeded', '{"build":"x"}', '{"kind":"git"}', 0, 3)`)
	s, err := Open(ctx, path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if v, err := s.Version(ctx); err != nil || v != SchemaVersion {
		t.Fatalf("version %d %v, want %d", v, err, SchemaVersion)
	}
	j, err := s.Job(ctx, "j-old")
	if err != nil || j.Submitter != "" || j.State != "succeeded" {
		t.Fatalf("old job after migration: %+v %v", j, err)
	}
}

// A version 2 database's egress events keep their ids as cursors, and after
// the migration an id is never handed out again, even when the event that
// had the highest one is deleted (as a purge does).
func TestVersion2EgressIDsBecomeCursorsNeverReused(t *testing.T) {
	ctx := context.Background()
	path := oldDatabase(t, 2,
		`INSERT INTO jobs (id, state, spec, source, created_at, max_attempts) VALUES ('j-old', 'succeeded', '{"build":"x"}', '{"kind":"git"}', 0, 3)`,
		`INSERT INTO egress (id, job_id, runner_id, seq, time, verdict, event) VALUES
			(7, 'j-old', 'r-1', 0, 1, 'deny', '{"job":"j-old","proto":"tcp","verdict":"deny","process":null}'),
			(9, 'j-old', 'r-1', 1, 2, 'allow', '{"job":"j-old","proto":"dns","verdict":"allow","process":null}')`)
	s, err := Open(ctx, path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	var cursors []int64
	zero := int64(0)
	err = s.QueryEgressRecords(ctx, store.EgressFilter{EgressFilter: api.EgressFilter{After: &zero}}, func(r api.EgressRecord) error {
		cursors = append(cursors, r.Cursor)
		return nil
	})
	if err != nil || len(cursors) != 2 || cursors[0] != 7 || cursors[1] != 9 {
		t.Fatalf("cursors after migration %v (%v), want [7 9]", cursors, err)
	}
	if _, err := s.db.ExecContext(ctx, `DELETE FROM egress WHERE id = 9`); err != nil {
		t.Fatal(err)
	}
	if _, err := s.db.ExecContext(ctx, `INSERT INTO egress (job_id, runner_id, seq, time, verdict, event) VALUES ('j-old', 'r-1', 2, 3, 'deny', '{}')`); err != nil {
		t.Fatal(err)
	}
	var id int64
	if err := s.db.QueryRowContext(ctx, `SELECT MAX(id) FROM egress`).Scan(&id); err != nil || id != 10 {
		t.Fatalf("the next event got id %d (%v), want 10", id, err)
	}
}

// A database ahead of or behind this build is not ready.
func TestReadyRequiresTheCurrentSchemaVersion(t *testing.T) {
	ctx := context.Background()
	s, err := Open(ctx, filepath.Join(t.TempDir(), "cleanroom.db"), Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, err := s.db.ExecContext(ctx, `DELETE FROM schema_version WHERE version = ?`, SchemaVersion); err != nil {
		t.Fatal(err)
	}
	if err := s.Ready(ctx); err == nil {
		t.Fatal("ready with a migration missing: no error")
	}
}

// A version 3 database's tokens and jobs migrate with no team (so a secret
// restricted to teams is refused to their jobs), and a token and a job
// written afterwards keep theirs.
func TestVersion3TokensAndJobsMigrateWithoutTeamAndKeepNewOnes(t *testing.T) {
	ctx := context.Background()
	path := oldDatabase(t, 3,
		`INSERT INTO tokens (id, kind, hash, created_at) VALUES ('t-old', 'submit', x'00', 0)`,
		`INSERT INTO jobs (id, state, spec, source, created_at, max_attempts, submitter) VALUES ('j-old', 'queued', '{"build":"x"}', '{"kind":"git"}', 0, 3, 't-old')`)
	s, err := Open(ctx, path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if j, err := s.Job(ctx, "j-old"); err != nil || j.Team != "" || j.Submitter != "t-old" {
		t.Fatalf("old job after migration: %+v %v", j, err)
	}
	now := time.Unix(100, 0).UTC()
	if err := s.CreateToken(ctx, store.Token{ID: "t-web", Kind: api.TokenSubmit, Hash: []byte{1}, CreatedAt: now, Team: "web"}); err != nil {
		t.Fatal(err)
	}
	if err := s.CreateJob(ctx, store.Job{Job: api.Job{ID: "j-web", CreatedAt: now, MaxAttempts: 1, Submitter: "t-web", Team: "web"}}); err != nil {
		t.Fatal(err)
	}
	teams := map[string]string{}
	ts, err := s.ListTokens(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, tk := range ts {
		teams[tk.ID] = tk.Team
	}
	if teams["t-old"] != "" || teams["t-web"] != "web" {
		t.Fatalf("token teams %v", teams)
	}
	if j, err := s.Job(ctx, "j-web"); err != nil || j.Team != "web" {
		t.Fatalf("new job: %+v %v", j, err)
	}
}

// A version 6 database's runners migrate with no claim report, until they
// claim again.
func TestVersion6RunnersMigrateWithoutAClaimReport(t *testing.T) {
	ctx := context.Background()
	path := oldDatabase(t, 6,
		`INSERT INTO runners (id, name, token_hash, public_key, created_at, last_seen) VALUES ('r-old', 'old', x'00', x'00', 0, 5)`)
	s, err := Open(ctx, path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	storetest.RunnerMigratedWithoutClaim(t, s, "r-old", time.Unix(0, 5))
}
