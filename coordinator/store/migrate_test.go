package store

import (
	"context"
	"strings"
	"testing"
	"time"
)

// fakeMigrationDB is a database at version with a record of what Migrate
// did to it.
type fakeMigrationDB struct {
	version   int
	applied   []int
	committed bool
}

func (f *fakeMigrationDB) BeginMigration(context.Context) (MigrationTx, error) { return f, nil }
func (f *fakeMigrationDB) Version(context.Context) (int, error)                { return f.version, nil }
func (f *fakeMigrationDB) Apply(_ context.Context, m Migration, _ time.Time) error {
	f.applied = append(f.applied, m.Version)
	return nil
}
func (f *fakeMigrationDB) Commit(context.Context) error   { f.committed = true; return nil }
func (f *fakeMigrationDB) Rollback(context.Context) error { return nil }

func TestMigrateAppliesOnlyPendingAndRefusesNewerOrMisnumbered(t *testing.T) {
	ms := []Migration{{Version: 1}, {Version: 2}, {Version: 3}}
	ctx := context.Background()
	db := &fakeMigrationDB{version: 1}
	plan, err := Migrate(ctx, db, ms, time.Time{}, true)
	if err != nil || plan.Current != 1 || plan.Target != 3 || len(plan.Pending) != 2 || plan.Applied || len(db.applied) != 0 || db.committed {
		t.Fatalf("dry run: %+v %v, applied %v", plan, err, db.applied)
	}
	plan, err = Migrate(ctx, db, ms, time.Time{}, false)
	if err != nil || !plan.Applied || len(db.applied) != 2 || db.applied[0] != 2 || db.applied[1] != 3 || !db.committed {
		t.Fatalf("migrate: %+v %v, applied %v", plan, err, db.applied)
	}
	if _, err := Migrate(ctx, &fakeMigrationDB{version: 4}, ms, time.Time{}, false); err == nil || !strings.Contains(err.Error(), "version 4, this build knows 3") {
		t.Fatalf("a newer database: %v", err)
	}
	if _, err := Migrate(ctx, &fakeMigrationDB{}, []Migration{{Version: 1}, {Version: 3}}, time.Time{}, false); err == nil {
		t.Fatal("a gap in the versions: no error")
	}
}
