package postgres_test

import (
	"context"
	"sync"
	"testing"

	"github.com/cleanroom-ci/cleanroom/coordinator/store"
	"github.com/cleanroom-ci/cleanroom/coordinator/store/postgres"
	"github.com/cleanroom-ci/cleanroom/coordinator/store/postgres/pgtest"
	"github.com/cleanroom-ci/cleanroom/coordinator/store/storetest"
)

var ctx = context.Background()

func open(t *testing.T, dsn string) *postgres.Store {
	t.Helper()
	s, err := postgres.Open(ctx, dsn, postgres.Options{Log: storetest.LogLimits})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// TestConformance runs the store conformance suite against PostgreSQL, a
// new database per test, with a second handle for the cross-coordinator
// tests.
func TestConformance(t *testing.T) {
	var mu sync.Mutex
	dsns := map[store.Store]string{}
	storetest.RunBackend(t, storetest.Backend{
		Open: func(t *testing.T) store.Store {
			dsn := pgtest.NewDatabase(t)
			s := open(t, dsn)
			mu.Lock()
			dsns[s] = dsn
			mu.Unlock()
			return s
		},
		OpenAgain: func(t *testing.T, first store.Store) store.Store {
			mu.Lock()
			dsn := dsns[first]
			mu.Unlock()
			return open(t, dsn)
		},
	})
}
