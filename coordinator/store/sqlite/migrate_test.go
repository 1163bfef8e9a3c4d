package sqlite

import (
	"context"
	"database/sql"
	"path/filepath"
	"testing"
)

// A database written by the first schema (jobs without a submitter) opens,
// migrates, and keeps its jobs: they belong to no submit token.
func TestVersion1DatabaseMigratesAndKeepsItsJobs(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "cleanroom.db")
	db, err := sql.Open("sqlite", "file:"+path)
	if err != nil {
		t.Fatal(err)
	}
	for _, q := range []string{
		`CREATE TABLE schema_version (version INTEGER NOT NULL, applied_at INTEGER NOT NULL)`,
		migrations[0],
		`INSERT INTO schema_version VALUES (1, 0)`,
		`INSERT INTO jobs (id, state, spec, source, created_at, max_attempts) VALUES ('j-old', 'succeeded', '{"build":"x"}', '{"kind":"git"}', 0, 3)`,
	} {
		if _, err := db.ExecContext(ctx, q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	db.Close()

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
