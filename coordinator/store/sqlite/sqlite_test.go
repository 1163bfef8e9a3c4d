package sqlite_test

import (
	"context"
	"path/filepath"
	"testing"

	"github.com/cleanroom-ci/cleanroom/coordinator/store"
	"github.com/cleanroom-ci/cleanroom/coordinator/store/sqlite"
	"github.com/cleanroom-ci/cleanroom/coordinator/store/storetest"
)

// TestConformance runs the store conformance suite against SQLite.
func TestConformance(t *testing.T) {
	storetest.RunBackend(t, storetest.Backend{
		Open: func(t *testing.T) store.Store { return openTemp(t, storetest.LogLimits) },
		// One coordinator process owns a SQLite file (the server's data
		// directory lock): its wake-ups are store.LocalChanges, within
		// one handle, so a second handle hears nothing by design.
		NoSecondHandle: "SQLite's Changes are per process (store.LocalChanges): one coordinator per database file",
	})
}

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

// openTemp opens a new store in a temporary directory, closed at the end.
func openTemp(t *testing.T, limits store.LogLimits) *sqlite.Store {
	s, err := sqlite.Open(context.Background(), filepath.Join(t.TempDir(), "c.db"), sqlite.Options{Log: limits})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func openPort(t *testing.T) storetest.PortStore { return openTemp(t, storetest.PortLogLimits) }

// TestPortSQLiteToSQLite moves a whole store from one SQLite database to
// another.
func TestPortSQLiteToSQLite(t *testing.T) {
	storetest.RunPort(t, openPort, openPort)
}
