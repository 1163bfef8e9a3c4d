package sqlite

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"time"

	"github.com/cleanroom-ci/cleanroom/coordinator/store"
)

var _ store.Porter = (*Store)(nil)

// Export streams the whole store (store.Porter) from one transaction, so
// the records are a consistent snapshot; while it runs, writers wait
// (the coordinator should be stopped anyway). Blobs are read from the blob
// directory after the rows: they are content-addressed and only the
// collector removes them.
func (s *Store) Export(ctx context.Context, fn func(store.Record) error) error {
	c := store.ExportCounter{}
	var digests []string
	err := s.inTx(ctx, func(tx *sql.Tx) error {
		var schema int
		if err := tx.QueryRowContext(ctx, `SELECT COALESCE(MAX(version), 0) FROM schema_version`).Scan(&schema); err != nil {
			return fmt.Errorf("exporting: reading schema version: %w", err)
		}
		if err := fn(store.Record{Kind: store.RecordHeader, Header: &store.PortHeader{Format: store.PortFormat,
			Version: store.PortVersion, Backend: "sqlite", Schema: schema}}); err != nil {
			return err
		}
		steps := []struct {
			what, query string
			emit        func(scanner) error
		}{
			{"tokens", `SELECT ` + tokenCols + ` FROM tokens ORDER BY created_at, id`, func(sc scanner) error {
				t, err := scanToken(sc)
				if err != nil {
					return err
				}
				return fn(c.Count(store.Record{Kind: store.RecordToken, Token: &t}))
			}},
			{"runners", `SELECT ` + runnerCols + ` FROM runners ORDER BY created_at, id`, func(sc scanner) error {
				r, err := scanRunner(sc)
				if err != nil {
					return err
				}
				return fn(c.Count(store.Record{Kind: store.RecordRunner, Runner: &r}))
			}},
			{"jobs", `SELECT ` + jobCols + ` FROM jobs ORDER BY seq`, func(sc scanner) error {
				j, err := scanJob(sc)
				if err != nil {
					return err
				}
				return fn(c.Count(store.Record{Kind: store.RecordJob, Job: &j}))
			}},
			{"logs", `SELECT l.job_id, l.off, l.data FROM log_chunks l JOIN jobs j ON j.id = l.job_id ORDER BY j.seq, l.off`, func(sc scanner) error {
				var id string
				var off int64
				var data []byte
				if err := sc.Scan(&id, &off, &data); err != nil {
					return err
				}
				return store.ChunkLog(id, off, data, c, fn)
			}},
			{"egress events", `SELECT id, job_id, runner_id, seq, event FROM egress ORDER BY id`, func(sc scanner) error {
				var e store.EgressExport
				var raw string
				if err := sc.Scan(&e.Cursor, &e.JobID, &e.RunnerID, &e.Seq, &raw); err != nil {
					return err
				}
				if err := json.Unmarshal([]byte(raw), &e.Event); err != nil {
					return fmt.Errorf("decoding egress event %d: %w", e.Cursor, err)
				}
				return fn(c.Count(store.Record{Kind: store.RecordEgress, Egress: &e}))
			}},
			{"artifacts", `SELECT job_id, name, kind, sha256, size, created_at FROM artifacts ORDER BY job_id, name`, func(sc scanner) error {
				var id string
				var a store.Artifact
				var created int64
				if err := sc.Scan(&id, &a.Name, &a.Kind, &a.SHA256, &a.Size, &created); err != nil {
					return err
				}
				a.CreatedAt = time.Unix(0, created).UTC()
				return fn(c.Count(store.Record{Kind: store.RecordArtifact, Artifact: &store.ArtifactExport{JobID: id, Artifact: a}}))
			}},
			{"blob references", `SELECT json_extract(source, '$.sha256') FROM jobs WHERE json_extract(source, '$.sha256') IS NOT NULL
				UNION SELECT sha256 FROM artifacts`, func(sc scanner) error {
				var d string
				if err := sc.Scan(&d); err != nil {
					return err
				}
				digests = append(digests, d)
				return nil
			}},
		}
		for _, st := range steps {
			if err := eachRow(ctx, tx, st.query, st.emit); err != nil {
				return fmt.Errorf("exporting %s: %w", st.what, err)
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	slices.Sort(digests)
	missing, err := store.ExportBlobs(ctx, s.Dir, digests, c, fn)
	if err != nil {
		return err
	}
	return fn(c.End(missing))
}

// eachRow runs query and calls fn on each row.
func eachRow(ctx context.Context, tx *sql.Tx, query string, fn func(scanner) error) error {
	rows, err := tx.QueryContext(ctx, query)
	if err != nil {
		return err
	}
	defer rows.Close()
	for rows.Next() {
		if err := fn(rows); err != nil {
			return err
		}
	}
	return rows.Err()
}

// Import loads an export (store.Porter) into this store, which must be
// empty: every row in one transaction, committed only when the stream's
// end record is read, so a failed import leaves the database as it was and
// can be run again. Blobs go to the blob directory as they come (verified
// against their digest); after a failed import, those nothing refers to
// are removed by the next collection.
func (s *Store) Import(ctx context.Context, next func() (store.Record, bool, error)) error {
	return s.inTx(ctx, func(tx *sql.Tx) error {
		var n int64
		if err := tx.QueryRowContext(ctx, `SELECT (SELECT COUNT(*) FROM tokens) + (SELECT COUNT(*) FROM runners) +
			(SELECT COUNT(*) FROM jobs) + (SELECT COUNT(*) FROM log_chunks) + (SELECT COUNT(*) FROM egress) +
			(SELECT COUNT(*) FROM artifacts)`).Scan(&n); err != nil {
			return fmt.Errorf("importing: checking the target is empty: %w", err)
		}
		if n > 0 {
			return fmt.Errorf("importing: the database holds %d rows already: %w", n, store.ErrTargetNotEmpty)
		}
		return store.ImportRecords(ctx, next, importer{s, tx})
	})
}

// importer writes records in the import's transaction.
type importer struct {
	s  *Store
	tx *sql.Tx
}

func (im importer) PutBlob(ctx context.Context, digest string, size int64, r io.Reader) error {
	_, _, err := im.s.Dir.PutBlob(ctx, r, size, digest)
	return err
}

func (im importer) Apply(ctx context.Context, r store.Record) error {
	var what string
	var err error
	switch r.Kind {
	case store.RecordHeader, store.RecordEnd:
		return nil
	case store.RecordToken:
		t := r.Token
		what = "token " + t.ID
		var uses any
		if t.UsesLeft != nil {
			uses = *t.UsesLeft
		}
		_, err = im.tx.ExecContext(ctx, `INSERT INTO tokens (`+tokenCols+`) VALUES (?,?,?,?,?,?,?,?,?)`,
			t.ID, t.Kind, t.Hash, nanos(t.CreatedAt), nullNanos(t.ExpiresAt), uses, nullNanos(t.RevokedAt), t.Note, t.Team)
	case store.RecordRunner:
		rn := r.Runner
		what = "runner " + rn.ID
		_, err = im.tx.ExecContext(ctx, `INSERT INTO runners (`+runnerCols+`) VALUES (?,?,?,?,?,?,?,?,?)`,
			rn.ID, rn.Name, rn.TokenHash, rn.PublicKey, mustJSON(rn.Labels), rn.Concurrency, nanos(rn.CreatedAt),
			nullNanos(rn.LastSeen), nullNanos(rn.RevokedAt))
	case store.RecordJob:
		j := r.Job
		what = "job " + j.ID
		runner, leaseExp, exit := nullableJobCols(*j)
		// seq is assigned in stream order: the queue's order.
		_, err = im.tx.ExecContext(ctx, `INSERT INTO jobs (`+jobCols+`, labels) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)`,
			j.ID, j.State, mustJSON(j.Spec), mustJSON(j.Source), nanos(j.CreatedAt), nullNanos(j.StartedAt), nullNanos(j.FinishedAt),
			runner, j.LeaseToken, leaseExp, j.Attempts, j.MaxAttempts, j.Cancel, exit, j.Reason, j.LogOffset, j.LogSize,
			j.LogTruncated, j.Submitter, j.Team, j.FailureClass, mustJSON(j.Spec.Labels))
	case store.RecordLog:
		l := r.Log
		what = fmt.Sprintf("log of job %s at %d", l.JobID, l.Offset)
		_, err = im.tx.ExecContext(ctx, `INSERT INTO log_chunks (job_id, off, data) VALUES (?,?,?)`, l.JobID, l.Offset, l.Data)
	case store.RecordEgress:
		e := r.Egress
		what = fmt.Sprintf("egress event %d of job %s", e.Seq, e.JobID)
		// The id (the cursor) is the target's next: the same order.
		_, err = im.tx.ExecContext(ctx, `INSERT INTO egress (job_id, runner_id, seq, time, verdict, event) VALUES (?,?,?,?,?,?)`,
			e.JobID, e.RunnerID, e.Seq, nanos(e.Event.Time), e.Event.Verdict, mustJSON(e.Event))
	case store.RecordArtifact:
		a := r.Artifact
		what = fmt.Sprintf("artifact %s of job %s", a.Artifact.Name, a.JobID)
		_, err = im.tx.ExecContext(ctx, `INSERT INTO artifacts (job_id, name, kind, sha256, size, created_at) VALUES (?,?,?,?,?,?)`,
			a.JobID, a.Artifact.Name, a.Artifact.Kind, a.Artifact.SHA256, a.Artifact.Size, nanos(a.Artifact.CreatedAt))
	default:
		return fmt.Errorf("importing: unexpected %s record", r.Kind)
	}
	if err != nil {
		return fmt.Errorf("importing %s: %w", what, err)
	}
	return nil
}
