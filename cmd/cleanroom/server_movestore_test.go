package main

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cleanroom-ci/cleanroom/api"
	"github.com/cleanroom-ci/cleanroom/coordinator/store"
	"github.com/cleanroom-ci/cleanroom/coordinator/store/postgres"
	"github.com/cleanroom-ci/cleanroom/coordinator/store/postgres/pgtest"
	"github.com/cleanroom-ci/cleanroom/coordinator/store/sqlite"
)

// fillDataDir stores a token, a runner, a running job with a log and an
// egress event, and a blob in the SQLite store of dir.
func fillDataDir(t *testing.T, dir string) {
	t.Helper()
	ctx := context.Background()
	s, err := sqlite.Open(ctx, filepath.Join(dir, "cleanroom.db"), sqlite.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	digest, _, err := s.PutBlob(ctx, strings.NewReader("source tarball"), 100, "")
	if err != nil {
		t.Fatal(err)
	}
	steps := []func() error{
		func() error {
			return s.CreateToken(ctx, store.Token{ID: "reg", Kind: api.TokenRegistration, Hash: []byte("h"), CreatedAt: now})
		},
		func() error {
			return s.RegisterRunner(ctx, "reg", []byte("h"), store.Runner{Runner: api.Runner{ID: "r1", Name: "host", CreatedAt: now}, TokenHash: []byte("t"), PublicKey: []byte("k")}, now)
		},
		func() error {
			return s.CreateJob(ctx, store.Job{Job: api.Job{ID: "j1", MaxAttempts: 2, CreatedAt: now, Source: api.Source{Kind: "tar", SHA256: digest}}})
		},
	}
	for _, step := range steps {
		if err := step(); err != nil {
			t.Fatal(err)
		}
	}
	cs, err := s.ClaimJobs(ctx, store.Runner{Runner: api.Runner{ID: "r1"}}, nil, 1, time.Minute, now)
	if err != nil || len(cs) != 1 {
		t.Fatalf("claiming: %v %v", cs, err)
	}
	f := store.Fence{JobID: "j1", RunnerID: "r1", Token: cs[0].Token}
	if _, err := s.AppendLog(ctx, f, 0, []byte("npm ci\n")); err != nil {
		t.Fatal(err)
	}
	if err := s.AddEgress(ctx, f, 0, []api.EgressEvent{{Time: now, Proto: "tcp", Dst: "10.0.0.1:443", Verdict: api.VerdictDeny}}); err != nil {
		t.Fatal(err)
	}
}

func migrateStoreCmd(t *testing.T, args ...string) (*exec.Cmd, *bytes.Buffer, *bytes.Buffer) {
	return cliCmd(t, "", "", append([]string{"server", "migrate-store"}, args...)...)
}

func TestMigrateStoreCopiesVerifiesAndRefusesARunningSourceOrAFullTarget(t *testing.T) {
	from, to := t.TempDir(), filepath.Join(t.TempDir(), "new")
	fillDataDir(t, from)

	// A coordinator holds the source's lock: refused, nothing copied.
	unlock, err := lockDataDir(from)
	if err != nil {
		t.Fatal(err)
	}
	cmd, _, stderr := migrateStoreCmd(t, "--from", from, "--to", to)
	err = cmd.Run()
	unlock()
	if code := exitOf(t, err); code != exitRefused || !strings.Contains(stderr.String(), "in use by a running coordinator (pid "+strconv.Itoa(os.Getpid())) {
		t.Fatalf("a source in use: exit %d, stderr %s", code, stderr)
	}

	cmd, stdout, stderr := migrateStoreCmd(t, "--from", from, "--to", to)
	if err := cmd.Run(); err != nil {
		t.Fatalf("migrate-store: %v\nstdout %s\nstderr %s", err, stdout, stderr)
	}
	for _, want := range []string{"tokens", "runners", "jobs", "logs", "egress events", "artifacts", "blobs"} {
		if !regexpLine(stdout.String(), want+` +\d+ +\d+ .* OK$`) {
			t.Errorf("no OK line for %s in\n%s", want, stdout)
		}
	}
	if !strings.Contains(stderr.String(), "copy jobs: 1") || !strings.Contains(stderr.String(), "verified:") {
		t.Errorf("progress on stderr:\n%s", stderr)
	}
	s, err := sqlite.Open(context.Background(), filepath.Join(to, "cleanroom.db"), sqlite.Options{})
	if err != nil {
		t.Fatal(err)
	}
	j, err := s.Job(context.Background(), "j1")
	s.Close()
	if err != nil || j.State != api.StateRunning || j.LogSize != 7 {
		t.Fatalf("the copied job: %+v %v", j, err)
	}

	// Again into the same target: it holds state now.
	cmd, _, stderr = migrateStoreCmd(t, "--from", from, "--to", to)
	if code := exitOf(t, cmd.Run()); code != exitRefused || !strings.Contains(stderr.String(), "already holds state") {
		t.Fatalf("a target with state: exit %d, stderr %s", code, stderr)
	}
	// A source without a database is a usage error, not a new empty store.
	cmd, _, stderr = migrateStoreCmd(t, "--from", t.TempDir(), "--to", t.TempDir())
	if code := exitOf(t, cmd.Run()); code != exitUsage || !strings.Contains(stderr.String(), "no coordinator database") {
		t.Fatalf("a source without a database: exit %d, stderr %s", code, stderr)
	}
}

// TestMigrateStoreToPostgres moves a data directory into PostgreSQL.
func TestMigrateStoreToPostgres(t *testing.T) {
	dsn := pgtest.NewDatabase(t)
	from := t.TempDir()
	fillDataDir(t, from)
	cmd, stdout, stderr := migrateStoreCmd(t, "--from", from, "--to", dsn)
	if err := cmd.Run(); err != nil {
		t.Fatalf("migrate-store: %v\nstdout %s\nstderr %s", err, stdout, stderr)
	}
	if strings.Contains(stdout.String()+stderr.String(), dsn) {
		t.Error("the DSN (with its password) was printed")
	}
	for _, want := range []string{"tokens", "jobs", "logs", "egress events", "blobs"} {
		if !regexpLine(stdout.String(), want+` +\d+ +\d+ .* OK$`) {
			t.Errorf("no OK line for %s in\n%s", want, stdout)
		}
	}
	s, err := postgres.Open(context.Background(), dsn, postgres.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if j, err := s.Job(context.Background(), "j1"); err != nil || j.State != api.StateRunning || j.LogSize != 7 {
		t.Fatalf("the copied job: %+v %v", j, err)
	}
}

func regexpLine(s, re string) bool {
	for _, l := range strings.Split(s, "\n") {
		if regexp.MustCompile(re).MatchString(l) {
			return true
		}
	}
	return false
}
