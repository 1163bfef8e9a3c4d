package main

import (
	"context"
	"fmt"
	"io"
	"path/filepath"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/spf13/cobra"

	"github.com/cleanroom-ci/cleanroom/coordinator/store"
	"github.com/cleanroom-ci/cleanroom/coordinator/store/postgres"
	"github.com/cleanroom-ci/cleanroom/coordinator/store/sqlite"
)

// storeKind tells which backend a --store value names: "" or "sqlite" is
// the SQLite database in the data directory, a postgres:// or
// postgresql:// URL is PostgreSQL.
func storeKind(v string) (string, error) {
	switch {
	case v == "" || v == "sqlite":
		return "sqlite", nil
	case strings.HasPrefix(v, "postgres://"), strings.HasPrefix(v, "postgresql://"):
		return "postgres", nil
	}
	return "", fmt.Errorf("--store: want sqlite (the default) or a postgres:// URL")
}

// sqlitePath is the SQLite database of a data directory.
func sqlitePath(dataDir string) string { return filepath.Join(dataDir, "cleanroom.db") }

// describeStore names a store for logs and the migrate report, without
// the DSN's password.
func describeStore(v, dataDir string) string {
	if kind, _ := storeKind(v); kind == "sqlite" {
		return "sqlite " + sqlitePath(dataDir)
	}
	cfg, err := pgx.ParseConfig(v)
	if err != nil {
		return "postgres (invalid DSN)"
	}
	return fmt.Sprintf("postgres %s@%s:%d/%s", cfg.User, cfg.Host, cfg.Port, cfg.Database)
}

// openServerStore opens the PostgreSQL store a --store URL names; for
// SQLite it returns nil, and the coordinator opens the database in its data
// directory itself.
func openServerStore(ctx context.Context, c serverConfig) (store.Store, error) {
	kind, err := storeKind(c.Store)
	if err != nil || kind == "sqlite" {
		return nil, err
	}
	st, err := postgres.Open(ctx, c.Store, postgres.Options{Log: store.LogLimits{MaxBytes: int64(c.MaxLog)}})
	if err != nil {
		return nil, fmt.Errorf("opening store %s: %w", describeStore(c.Store, c.DataDir), err)
	}
	return st, nil
}

// migrateStore applies (or with dryRun only plans) the store's pending
// migrations and prints what it found and did.
func migrateStore(ctx context.Context, w io.Writer, storeArg, dataDir string, dryRun bool) error {
	kind, err := storeKind(storeArg)
	if err != nil {
		return err
	}
	var plan store.MigrationPlan
	if kind == "sqlite" {
		plan, err = sqlite.Migrate(ctx, sqlitePath(dataDir), time.Now(), dryRun)
	} else {
		plan, err = postgres.Migrate(ctx, storeArg, time.Now(), dryRun)
	}
	fmt.Fprintf(w, "store:          %s\n", describeStore(storeArg, dataDir))
	if err != nil {
		return err
	}
	fmt.Fprintf(w, "schema version: %d (this build: %d)\n", plan.Current, plan.Target)
	if len(plan.Pending) == 0 {
		fmt.Fprintln(w, "up to date: nothing to apply")
		return nil
	}
	fmt.Fprintln(w, "pending migrations:")
	for _, m := range plan.Pending {
		fmt.Fprintf(w, "  %3d  %s\n", m.Version, m.Note)
	}
	if plan.Applied {
		fmt.Fprintf(w, "applied %d migration(s): now at version %d\n", len(plan.Pending), plan.Target)
	} else {
		fmt.Fprintln(w, "dry run: nothing applied (run `cleanroom server migrate` to apply)")
	}
	return nil
}

// newServerMigrateCmd is `cleanroom server migrate`.
func newServerMigrateCmd() *cobra.Command {
	var configPath string
	var dryRun bool
	c := serverConfig{DataDir: "/var/lib/cleanroom"}
	cmd := &cobra.Command{
		Use:   "migrate",
		Short: "Apply the store's pending schema migrations (--dry-run: only show them)",
		Long: `Show the store's schema version and this build's, and apply the migrations
in between in one transaction (PostgreSQL: under an advisory lock, so
coordinators starting meanwhile wait for it). A coordinator also applies them
when it starts; run this first to see and apply them on their own, e.g. before
rolling a new version out to several coordinators. With --dry-run nothing is
changed.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if configPath != "" {
				fc, err := readServerConfig(configPath)
				if err != nil {
					return err
				}
				mergeServerConfig(cmd, &c, fc) // only store and data_dir matter here
			}
			return migrateStore(cmd.Context(), cmd.OutOrStdout(), c.Store, c.DataDir, dryRun)
		},
	}
	f := cmd.Flags()
	f.StringVar(&configPath, "config", "", "the server's YAML config file (its store and data_dir)")
	f.StringVar(&c.Store, "store", "", storeFlagHelp)
	f.StringVar(&c.DataDir, "data-dir", c.DataDir, "data directory (the SQLite store's)")
	f.BoolVar(&dryRun, "dry-run", false, "only show the current and target versions and the pending migrations")
	return cmd
}

const storeFlagHelp = "where state lives: sqlite (the default: DATA_DIR/cleanroom.db, blobs in DATA_DIR/blobs) or a postgres:// URL (everything in PostgreSQL, shared by several coordinators)"
