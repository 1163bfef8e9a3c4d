package postgres_test

import (
	"path/filepath"
	"testing"

	"github.com/cleanroom-ci/cleanroom/coordinator/store/postgres"
	"github.com/cleanroom-ci/cleanroom/coordinator/store/postgres/pgtest"
	"github.com/cleanroom-ci/cleanroom/coordinator/store/sqlite"
	"github.com/cleanroom-ci/cleanroom/coordinator/store/storetest"
)

func openPortPG(t *testing.T) storetest.PortStore {
	t.Helper()
	s, err := postgres.Open(ctx, pgtest.NewDatabase(t), postgres.Options{Log: storetest.PortLogLimits})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func openPortSQLite(t *testing.T) storetest.PortStore {
	t.Helper()
	s, err := sqlite.Open(ctx, filepath.Join(t.TempDir(), "c.db"), sqlite.Options{Log: storetest.PortLogLimits})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// TestPortSQLiteToPostgres moves a whole SQLite store into PostgreSQL (the
// move docs/operations.md describes).
func TestPortSQLiteToPostgres(t *testing.T) {
	pgtest.ServerDSN(t)
	storetest.RunPort(t, openPortSQLite, openPortPG)
}

// TestPortPostgresToSQLite moves it back: PostgreSQL's Export keeps
// everything too.
func TestPortPostgresToSQLite(t *testing.T) {
	pgtest.ServerDSN(t)
	storetest.RunPort(t, openPortPG, openPortSQLite)
}
