package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/cleanroom-ci/cleanroom/coordinator/store"
	"github.com/cleanroom-ci/cleanroom/coordinator/store/postgres"
	"github.com/cleanroom-ci/cleanroom/coordinator/store/sqlite"
)

// newMigrateStoreCmd is `cleanroom server migrate-store`: a stopped
// coordinator's whole state copied into a new store and verified.
func newMigrateStoreCmd() *cobra.Command {
	var from, to string
	cmd := &cobra.Command{
		Use:   "migrate-store --from DATA_DIR --to postgres://…",
		Short: "Copy a stopped coordinator's whole state into an empty store (SQLite to PostgreSQL) and verify it",
		Long: `Copy every token (hashes included), runner, job (in every state, leases and
fencing tokens included), log, egress event, artifact record and referenced blob
of a SQLite coordinator into an empty store, then verify the target by reading it
back: the same counts, every record equal, a log of the same sha256 per job, the
egress events in the same order and every blob re-hashed.

--from is the coordinator's data directory (or its cleanroom.db). The coordinator
must be stopped: its data directory lock is taken for the whole copy. --to is a
PostgreSQL URL or another SQLite data directory; it must hold no state yet. The
rows are imported in one transaction: a copy that fails leaves the target empty
and can be run again. Egress events get new cursors in the same order (followers
resume by time, not by an old cursor). Blobs nothing refers to are not copied.

Progress goes to stderr, the verification table to stdout; the exit code is 0
only when every line of it is OK. See docs/operations.md.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if from == "" || to == "" {
				return usagef("migrate-store: --from and --to are both required")
			}
			return moveStore(cmd.Context(), from, to, cmd.OutOrStdout(), cmd.ErrOrStderr())
		},
	}
	cmd.Flags().StringVar(&from, "from", "", "the stopped coordinator's data directory (or its cleanroom.db)")
	cmd.Flags().StringVar(&to, "to", "", "the target: postgres://user:pass@host/db, or a SQLite data directory")
	return cmd
}

// portStore is a store that exports, imports and can be verified.
type portStore interface {
	store.PortTarget
	Close() error
}

func moveStore(ctx context.Context, from, to string, stdout, stderr io.Writer) (retErr error) {
	src, srcDesc, closeSrc, err := openSQLiteDir(ctx, from, false)
	if err != nil {
		return err
	}
	defer closeSrc()
	dst, dstDesc, closeDst, err := openMoveTarget(ctx, to)
	if err != nil {
		return err
	}
	defer closeDst()
	fmt.Fprintf(stderr, "copying %s to %s\n", srcDesc, dstDesc)
	rep, err := store.Copy(ctx, src, dst, store.CopyOptions{Progress: func(p store.CopyProgress) {
		switch {
		case p.Done && p.Bytes > 0:
			fmt.Fprintf(stderr, "%s %s: %d (%d bytes)\n", p.Phase, p.Kind, p.Count, p.Bytes)
		case p.Done:
			fmt.Fprintf(stderr, "%s %s: %d\n", p.Phase, p.Kind, p.Count)
		default:
			fmt.Fprintf(stderr, "%s %s: %d so far (%d bytes)\n", p.Phase, p.Kind, p.Count, p.Bytes)
		}
	}})
	if errors.Is(err, store.ErrTargetNotEmpty) {
		return withExit(exitRefused, fmt.Errorf("migrate-store: %s already holds state; the target must be a new, empty store: %w", dstDesc, err))
	}
	if err != nil {
		return err
	}
	printPortReport(stdout, rep)
	for _, d := range rep.MissingBlobs {
		fmt.Fprintf(stderr, "warning: blob %s is referred to but was not in the source (lost before the copy)\n", d)
	}
	if !rep.OK() {
		return fmt.Errorf("migrate-store: the target differs from the source (see the table): do not start coordinators on it; empty it and run again")
	}
	fmt.Fprintf(stderr, "verified: %s holds everything %s held\n", dstDesc, srcDesc)
	return nil
}

// printPortReport prints Copy's verification table.
func printPortReport(w io.Writer, rep store.Report) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "RESOURCE\tSOURCE\tTARGET\tBYTES\tSHA256 (SOURCE)\tSHA256 (TARGET)\tCHECK")
	for _, r := range rep.Resources {
		check := "OK"
		if !r.OK() {
			check = "DIFFERS"
		}
		bytes := "-"
		if r.Name == store.ResLogs || r.Name == store.ResBlobs {
			bytes = strconv.FormatInt(r.Bytes, 10)
		}
		fmt.Fprintf(tw, "%s\t%d\t%d\t%s\t%.16s\t%.16s\t%s\n", r.Name, r.Source, r.Target, bytes, r.Digest, r.TargetDigest, check)
	}
	tw.Flush()
	for _, r := range rep.Resources {
		for _, p := range r.Problems {
			fmt.Fprintf(w, "%s: %s\n", r.Name, p)
		}
	}
}

// openMoveTarget opens the store migrate-store copies into.
func openMoveTarget(ctx context.Context, to string) (portStore, string, func(), error) {
	if kind, _ := storeKind(to); kind == "postgres" {
		s, err := postgres.Open(ctx, to, postgres.Options{})
		if err != nil {
			return nil, "", nil, fmt.Errorf("migrate-store: opening %s: %w", describeStore(to, ""), err)
		}
		return s, describeStore(to, ""), func() { s.Close() }, nil
	}
	return openSQLiteDir(ctx, to, true)
}

// openSQLiteDir opens the SQLite store of a data directory (or of a
// cleanroom.db in one) after taking the directory's lock, so that no
// coordinator runs on it meanwhile. create allows a new directory (the
// target); a source must exist.
func openSQLiteDir(ctx context.Context, path string, create bool) (_ portStore, desc string, closeFn func(), retErr error) {
	dir, db := path, sqlitePath(path)
	if st, err := os.Stat(path); err == nil && !st.IsDir() {
		dir, db = filepath.Dir(path), path
	}
	if !create {
		if _, err := os.Stat(db); err != nil {
			return nil, "", nil, usagef("migrate-store: no coordinator database at %s: %v", db, err)
		}
	} else if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, "", nil, fmt.Errorf("migrate-store: creating %s: %w", dir, err)
	}
	unlock, err := lockDataDir(dir)
	var inUse *dataDirInUseError
	if errors.As(err, &inUse) {
		return nil, "", nil, withExit(exitRefused, fmt.Errorf("migrate-store: %s is in use by a running coordinator (pid %s holds %s): stop it first, the copy must see a store nobody writes to",
			dir, inUse.pid, inUse.path))
	}
	if err != nil {
		return nil, "", nil, err
	}
	defer func() {
		if retErr != nil {
			unlock()
		}
	}()
	s, err := sqlite.Open(ctx, db, sqlite.Options{})
	if err != nil {
		return nil, "", nil, fmt.Errorf("migrate-store: opening %s: %w", db, err)
	}
	return s, "SQLite " + db, func() { s.Close(); unlock() }, nil
}
