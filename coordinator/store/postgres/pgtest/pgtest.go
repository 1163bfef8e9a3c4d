// Package pgtest owns the tests' access to PostgreSQL: the server named by
// CLEANROOM_TEST_POSTGRES (scripts/postgres.sh starts a private one, and
// scripts/test.sh exports its DSN), and a new database per test, so runs
// and tests never see each other's data.
package pgtest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"net/url"
	"os"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// EnvDSN is the variable naming the test server: a DSN (postgres:// URL)
// of a role that may CREATE DATABASE.
const EnvDSN = "CLEANROOM_TEST_POSTGRES"

// ServerDSN returns the test server's DSN. Without one the test is skipped,
// except in CI (CI=true), where it fails: CI must run the PostgreSQL tests.
func ServerDSN(t testing.TB) string {
	t.Helper()
	dsn := os.Getenv(EnvDSN)
	if dsn == "" {
		if os.Getenv("CI") == "true" {
			t.Fatalf("%s is not set: CI runs the PostgreSQL tests (scripts/test.sh starts scripts/postgres.sh)", EnvDSN)
		}
		t.Skipf("%s is not set (scripts/postgres.sh start prints a DSN)", EnvDSN)
	}
	return dsn
}

// NewDatabase creates an empty database on the test server, drops it
// (closing its connections) when the test ends, and returns its DSN.
func NewDatabase(t testing.TB) string {
	t.Helper()
	server := ServerDSN(t)
	u, err := url.Parse(server)
	if err != nil || (u.Scheme != "postgres" && u.Scheme != "postgresql") {
		t.Fatalf("%s must be a postgres:// URL", EnvDSN)
	}
	var b [6]byte
	_, _ = rand.Read(b[:])
	name := "cleanroom_test_" + hex.EncodeToString(b[:])
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	admin, err := pgx.Connect(ctx, server)
	if err != nil {
		t.Fatalf("connecting to the test PostgreSQL: %v", err)
	}
	defer admin.Close(ctx)
	if _, err := admin.Exec(ctx, `CREATE DATABASE `+name); err != nil {
		t.Fatalf("creating test database: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		admin, err := pgx.Connect(ctx, server)
		if err != nil {
			t.Errorf("connecting to drop test database %s: %v", name, err)
			return
		}
		defer admin.Close(ctx)
		if _, err := admin.Exec(ctx, `DROP DATABASE IF EXISTS `+name+` WITH (FORCE)`); err != nil {
			t.Errorf("dropping test database %s: %v", name, err)
		}
	})
	u.Path = "/" + name
	return u.String()
}
