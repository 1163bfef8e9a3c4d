package store

import (
	"context"
	"fmt"
	"time"
)

// Migration is one step of a backend's schema: Version n turns a database
// at version n-1 into version n. A backend keeps its migrations in one
// ordered list, Version 1 first, and never edits one that has shipped.
type Migration struct {
	Version int
	// Note says what the step does (printed by `cleanroom server migrate`).
	Note string
	SQL  string
}

// MigrationDB is what Migrate needs of a backend: its migration lock and
// one transaction over its schema_version table.
type MigrationDB interface {
	// BeginMigration takes the backend's migration lock (held until the
	// transaction ends), so two coordinators starting together apply each
	// migration once and the second one finds it done, and ensures the
	// version table exists.
	BeginMigration(ctx context.Context) (MigrationTx, error)
}

// MigrationTx is the transaction in which Migrate reads the version and
// applies what is pending; Rollback after Commit is harmless.
type MigrationTx interface {
	// Version is the highest version applied (0 for a new database).
	Version(ctx context.Context) (int, error)
	// Apply runs m's SQL and records m.Version as applied at appliedAt.
	Apply(ctx context.Context, m Migration, appliedAt time.Time) error
	Commit(ctx context.Context) error
	Rollback(ctx context.Context) error
}

// MigrationPlan is what Migrate found, and did unless it was a dry run.
type MigrationPlan struct {
	// Current is the database's version before, Target this build's.
	Current, Target int
	// Pending are the migrations from Current to Target, in order.
	Pending []Migration
	// Applied is true when Pending were applied (not a dry run).
	Applied bool
}

// Migrate brings db to the last of migrations (a dry run only reads the
// version) in one transaction under db's lock. A database at a version
// newer than this build knows is an error: an older coordinator must not
// write to a schema it does not understand.
func Migrate(ctx context.Context, db MigrationDB, migrations []Migration, now time.Time, dryRun bool) (_ MigrationPlan, retErr error) {
	plan := MigrationPlan{Target: len(migrations)}
	for i, m := range migrations {
		if m.Version != i+1 {
			return plan, fmt.Errorf("checking migrations: migration %d has version %d", i+1, m.Version)
		}
	}
	tx, err := db.BeginMigration(ctx)
	if err != nil {
		return plan, fmt.Errorf("starting migration: %w", err)
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
	if plan.Current, err = tx.Version(ctx); err != nil {
		return plan, fmt.Errorf("reading schema version: %w", err)
	}
	if plan.Current > plan.Target {
		return plan, fmt.Errorf("checking schema version: database is at version %d, this build knows %d", plan.Current, plan.Target)
	}
	plan.Pending = migrations[plan.Current:]
	if dryRun {
		return plan, nil
	}
	for _, m := range plan.Pending {
		if err := tx.Apply(ctx, m, now); err != nil {
			return plan, fmt.Errorf("applying migration %d (%s): %w", m.Version, m.Note, err)
		}
	}
	if err := tx.Commit(ctx); err != nil {
		return plan, fmt.Errorf("committing migrations: %w", err)
	}
	plan.Applied = true
	return plan, nil
}

// CheckVersion is Ready's schema check: the database must be at exactly
// this build's version.
func CheckVersion(current, target int) error {
	if current != target {
		return fmt.Errorf("checking schema version: database is at version %d, this build needs %d", current, target)
	}
	return nil
}
