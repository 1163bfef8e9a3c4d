package postgres

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/cleanroom-ci/cleanroom/coordinator/store"
)

var _ store.Porter = (*Store)(nil)

// Export streams the whole store (store.Porter) from one REPEATABLE READ,
// read-only transaction, so the rows are one snapshot even while
// coordinators write (they should be stopped for a move). Blobs are read
// after the rows, each through OpenBlob: they are content-addressed and
// only a sweep removes them.
func (s *Store) Export(ctx context.Context, fn func(store.Record) error) error {
	c := store.ExportCounter{}
	var digests []string
	err := pgx.BeginTxFunc(ctx, s.pool, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly}, func(tx pgx.Tx) error {
		var schema int
		if err := tx.QueryRow(ctx, `SELECT COALESCE(MAX(version), 0) FROM schema_version`).Scan(&schema); err != nil {
			return fmt.Errorf("exporting: reading schema version: %w", err)
		}
		if err := fn(store.Record{Kind: store.RecordHeader, Header: &store.PortHeader{Format: store.PortFormat,
			Version: store.PortVersion, Backend: "postgres", Schema: schema}}); err != nil {
			return err
		}
		steps := []struct {
			what, query string
			emit        func(pgx.Rows) error
		}{
			{"tokens", `SELECT ` + tokenCols + ` FROM tokens ORDER BY created_at, id`, func(row pgx.Rows) error {
				t, err := scanToken(row)
				if err != nil {
					return err
				}
				return fn(c.Count(store.Record{Kind: store.RecordToken, Token: &t}))
			}},
			{"runners", `SELECT ` + runnerCols + ` FROM runners ORDER BY created_at, id`, func(row pgx.Rows) error {
				r, err := scanRunner(row)
				if err != nil {
					return err
				}
				return fn(c.Count(store.Record{Kind: store.RecordRunner, Runner: &r}))
			}},
			{"jobs", `SELECT ` + jobCols + ` FROM jobs ORDER BY seq`, func(row pgx.Rows) error {
				j, err := scanJob(row)
				if err != nil {
					return err
				}
				return fn(c.Count(store.Record{Kind: store.RecordJob, Job: &j}))
			}},
			{"logs", `SELECT l.job_id, l.off, l.data FROM log_chunks l JOIN jobs j ON j.id = l.job_id ORDER BY j.seq, l.off`, func(row pgx.Rows) error {
				var id string
				var off int64
				var data []byte
				if err := row.Scan(&id, &off, &data); err != nil {
					return err
				}
				return store.ChunkLog(id, off, data, c, fn)
			}},
			{"egress events", `SELECT id, job_id, runner_id, seq, event FROM egress ORDER BY id`, func(row pgx.Rows) error {
				var e store.EgressExport
				var raw string
				if err := row.Scan(&e.Cursor, &e.JobID, &e.RunnerID, &e.Seq, &raw); err != nil {
					return err
				}
				if err := json.Unmarshal([]byte(raw), &e.Event); err != nil {
					return fmt.Errorf("decoding egress event %d: %w", e.Cursor, err)
				}
				return fn(c.Count(store.Record{Kind: store.RecordEgress, Egress: &e}))
			}},
			{"artifacts", `SELECT job_id, name, kind, sha256, size, created_at FROM artifacts ORDER BY job_id, name`, func(row pgx.Rows) error {
				var id string
				var a store.Artifact
				var created int64
				if err := row.Scan(&id, &a.Name, &a.Kind, &a.SHA256, &a.Size, &created); err != nil {
					return err
				}
				a.CreatedAt = time.Unix(0, created).UTC()
				return fn(c.Count(store.Record{Kind: store.RecordArtifact, Artifact: &store.ArtifactExport{JobID: id, Artifact: a}}))
			}},
			{"blob references", `SELECT source_sha256 FROM jobs WHERE source_sha256 IS NOT NULL UNION SELECT sha256 FROM artifacts`, func(row pgx.Rows) error {
				var d string
				if err := row.Scan(&d); err != nil {
					return err
				}
				digests = append(digests, d)
				return nil
			}},
		}
		for _, st := range steps {
			rows, err := tx.Query(ctx, st.query)
			if err != nil {
				return fmt.Errorf("exporting %s: %w", st.what, err)
			}
			if err := eachRow(rows, st.emit); err != nil {
				return fmt.Errorf("exporting %s: %w", st.what, err)
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	slices.Sort(digests)
	missing, err := store.ExportBlobs(ctx, s, digests, c, fn)
	if err != nil {
		return err
	}
	return fn(c.End(missing))
}

// eachRow calls fn on each row, then closes rows.
func eachRow(rows pgx.Rows, fn func(pgx.Rows) error) error {
	defer rows.Close()
	for rows.Next() {
		if err := fn(rows); err != nil {
			return err
		}
	}
	return rows.Err()
}

// Import loads an export (store.Porter) into this database, which must
// hold no state: everything, blobs included, in one transaction that
// holds the tables against writers (a coordinator started too early
// waits), committed only when the stream's end record is read. A failed
// import leaves the database as it was and can be run again.
func (s *Store) Import(ctx context.Context, next func() (store.Record, bool, error)) error {
	return pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `LOCK TABLE tokens, runners, jobs, log_chunks, egress, egress_cursor, artifacts IN SHARE ROW EXCLUSIVE MODE`); err != nil {
			return fmt.Errorf("importing: locking the tables: %w", err)
		}
		var n int64
		if err := tx.QueryRow(ctx, `SELECT (SELECT COUNT(*) FROM tokens) + (SELECT COUNT(*) FROM runners) +
			(SELECT COUNT(*) FROM jobs) + (SELECT COUNT(*) FROM log_chunks) + (SELECT COUNT(*) FROM egress) +
			(SELECT COUNT(*) FROM artifacts)`).Scan(&n); err != nil {
			return fmt.Errorf("importing: checking the target is empty: %w", err)
		}
		if n > 0 {
			return fmt.Errorf("importing: the database holds %d rows already: %w", n, store.ErrTargetNotEmpty)
		}
		im := &importer{s: s, tx: tx}
		// Cursors continue the target's counter (never reused).
		if err := tx.QueryRow(ctx, `SELECT last FROM egress_cursor`).Scan(&im.cursor); err != nil {
			return fmt.Errorf("importing: reading the egress cursor: %w", err)
		}
		return store.ImportRecords(ctx, next, im)
	})
}

// egressBatch is how many egress events go to the database in one COPY.
const egressBatch = 1000

// importer writes records in the import's transaction.
type importer struct {
	s      *Store
	tx     pgx.Tx
	cursor int64
	egress [][]any
}

func (im *importer) PutBlob(ctx context.Context, digest string, size int64, r io.Reader) error {
	_, _, err := im.s.putBlobTx(ctx, im.tx, r, size, digest)
	return err
}

// flushEgress copies the buffered egress events and moves the cursor
// counter past them.
func (im *importer) flushEgress(ctx context.Context) error {
	if len(im.egress) == 0 {
		return nil
	}
	if _, err := im.tx.CopyFrom(ctx, pgx.Identifier{"egress"},
		[]string{"id", "job_id", "runner_id", "seq", "time", "verdict", "rule", "dst", "domain", "event"},
		pgx.CopyFromRows(im.egress)); err != nil {
		return fmt.Errorf("importing egress events: %w", err)
	}
	im.egress = im.egress[:0]
	if _, err := im.tx.Exec(ctx, `UPDATE egress_cursor SET last = $1`, im.cursor); err != nil {
		return fmt.Errorf("importing: numbering egress events: %w", err)
	}
	return nil
}

func (im *importer) Apply(ctx context.Context, r store.Record) error {
	if r.Kind != store.RecordEgress {
		if err := im.flushEgress(ctx); err != nil {
			return err
		}
	}
	tx := im.tx
	var what string
	var err error
	switch r.Kind {
	case store.RecordHeader, store.RecordEnd:
		return nil
	case store.RecordToken:
		t := r.Token
		what = "token " + t.ID
		_, err = tx.Exec(ctx, `INSERT INTO tokens (`+tokenCols+`) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9)`,
			t.ID, t.Kind, t.Hash, nanos(t.CreatedAt), nullNanos(t.ExpiresAt), t.UsesLeft, nullNanos(t.RevokedAt), text(t.Note), text(t.Team))
	case store.RecordRunner:
		rn := r.Runner
		what = "runner " + rn.ID
		_, err = tx.Exec(ctx, `INSERT INTO runners (`+runnerCols+`) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9)`,
			rn.ID, text(rn.Name), rn.TokenHash, rn.PublicKey, mustJSON(rn.Labels), rn.Concurrency, nanos(rn.CreatedAt),
			nullNanos(rn.LastSeen), nullNanos(rn.RevokedAt))
	case store.RecordJob:
		j := r.Job
		what = "job " + j.ID
		var src, runner *string
		var leaseExp *int64
		if j.Source.SHA256 != "" {
			src = &j.Source.SHA256
		}
		if j.RunnerID != "" {
			runner = &j.RunnerID
		}
		if !j.LeaseExpires.IsZero() {
			n := nanos(j.LeaseExpires)
			leaseExp = &n
		}
		// seq (an identity) is assigned in stream order: the queue's order.
		_, err = tx.Exec(ctx, `INSERT INTO jobs (`+jobCols+`, source_sha256, labels, resources)
			VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13,$14,$15,$16,$17,$18,$19,$20,$21,$22,$23,$24)`,
			j.ID, j.State, mustJSON(j.Spec), mustJSON(j.Source), nanos(j.CreatedAt), nullNanos(j.StartedAt), nullNanos(j.FinishedAt),
			runner, j.LeaseToken, leaseExp, j.Attempts, j.MaxAttempts, j.Cancel, j.ExitCode, text(j.Reason), j.LogOffset, j.LogSize,
			j.LogTruncated, text(j.Submitter), text(j.Team), text(j.FailureClass), src, mustJSON(j.Spec.Labels), mustJSON(j.Spec.Resources))
	case store.RecordLog:
		l := r.Log
		what = fmt.Sprintf("log of job %s at %d", l.JobID, l.Offset)
		_, err = tx.Exec(ctx, `INSERT INTO log_chunks (job_id, off, data) VALUES ($1,$2,$3)`, l.JobID, l.Offset, l.Data)
	case store.RecordEgress:
		e := r.Egress
		im.cursor++
		ev := e.Event
		im.egress = append(im.egress, []any{im.cursor, e.JobID, text(e.RunnerID), e.Seq, nanos(ev.Time), text(ev.Verdict),
			text(ev.Rule), text(ev.Dst), text(strings.TrimRight(ev.Domain, ".")), mustJSON(ev)})
		if len(im.egress) >= egressBatch {
			return im.flushEgress(ctx)
		}
		return nil
	case store.RecordArtifact:
		a := r.Artifact
		what = fmt.Sprintf("artifact %s of job %s", a.Artifact.Name, a.JobID)
		_, err = tx.Exec(ctx, `INSERT INTO artifacts (job_id, name, kind, sha256, size, created_at) VALUES ($1,$2,$3,$4,$5,$6)`,
			a.JobID, text(a.Artifact.Name), text(a.Artifact.Kind), text(a.Artifact.SHA256), a.Artifact.Size, nanos(a.Artifact.CreatedAt))
	default:
		return fmt.Errorf("importing: unexpected %s record", r.Kind)
	}
	if err != nil {
		return fmt.Errorf("importing %s: %w", what, err)
	}
	return nil
}
