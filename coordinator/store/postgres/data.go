package postgres

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/cleanroom-ci/cleanroom/api"
	"github.com/cleanroom-ci/cleanroom/coordinator/store"
)

// --- logs --------------------------------------------------------------------

// appendTx appends data at the end of j's log (j read under its row lock),
// honouring the cap (store.LogLimits.Keep). The caller has checked offsets.
func (s *Store) appendTx(ctx context.Context, tx pgx.Tx, j store.Job, data []byte) error {
	keep, truncated := s.log.Keep(j.LogSize, j.LogTruncated, data)
	var stmts []stmt
	if len(keep) > 0 {
		stmts = append(stmts, stmt{`INSERT INTO log_chunks (job_id, off, data) VALUES ($1,$2,$3)`, []any{j.ID, j.LogSize, keep}})
	}
	stmts = append(stmts, stmt{`UPDATE jobs SET log_offset = $1, log_stored = $2, log_truncated = $3 WHERE id = $4`,
		[]any{j.LogOffset + int64(len(data)), j.LogSize + int64(len(keep)), truncated, j.ID}})
	if _, err := execBatch(ctx, tx, stmts...); err != nil {
		return fmt.Errorf("storing log chunk of job %s: %w", j.ID, err)
	}
	return nil
}

// AppendLog stores a chunk idempotently, under the job's row lock.
func (s *Store) AppendLog(ctx context.Context, f store.Fence, offset int64, data []byte) (int64, error) {
	var next int64
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		j, err := checkLeaseTx(ctx, tx, f, " FOR UPDATE")
		if err != nil {
			return err
		}
		fresh, err := store.FreshLog(j.LogOffset, offset, data)
		if err != nil || len(fresh) == 0 {
			next = j.LogOffset
			return err
		}
		next = j.LogOffset + int64(len(fresh))
		return s.appendTx(ctx, tx, j, fresh)
	})
	return next, err
}

// ReadLog returns stored log bytes from offset.
func (s *Store) ReadLog(ctx context.Context, jobID string, offset int64, maxBytes int) ([]byte, error) {
	rows, err := s.pool.Query(ctx, `SELECT off, data FROM log_chunks WHERE job_id = $1 AND off + length(data) > $2 ORDER BY off`, text(jobID), offset)
	if err != nil {
		return nil, fmt.Errorf("reading log of job %s: %w", jobID, err)
	}
	defer rows.Close()
	c := store.LogCollector{Offset: offset, Max: maxBytes}
	for more := true; more && rows.Next(); {
		var off int64
		var data []byte
		if err := rows.Scan(&off, &data); err != nil {
			return nil, fmt.Errorf("reading log of job %s: %w", jobID, err)
		}
		more = c.Add(off, data)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("reading log of job %s: %w", jobID, err)
	}
	return c.Bytes(), nil
}

// --- egress ------------------------------------------------------------------

// AddEgress stores events under the lease, skipping sequence numbers
// already stored.
//
// Cursors: a sequence (or an identity column) hands out its numbers when a
// transaction asks, not when it commits, so two concurrent batches may
// commit as 11 then 10, and a follower that read 11 would never see 10.
// Instead the cursor counter is one row, egress_cursor, updated in the
// inserting transaction: its row lock makes the egress writers of all
// coordinators take turns from the moment they number their events until
// they commit, so cursors become visible in order; they never repeat, even
// after a purge, because the counter only grows. Only egress writes queue
// on that row (a batch is one INSERT of all its events), and they hold the
// job's row FOR SHARE first, so a reap or a finish cannot slip between the
// lease check and the insert.
func (s *Store) AddEgress(ctx context.Context, f store.Fence, firstSeq int64, events []api.EgressEvent) error {
	if len(events) == 0 {
		_, err := s.CheckLease(ctx, f)
		return err
	}
	seqs := make([]int64, len(events))
	times := make([]int64, len(events))
	verdicts := make([]string, len(events))
	rules := make([]string, len(events))
	dsts := make([]string, len(events))
	domains := make([]string, len(events))
	docs := make([]string, len(events))
	for i, e := range events {
		seqs[i] = firstSeq + int64(i)
		times[i] = nanos(e.Time)
		verdicts[i] = text(e.Verdict)
		rules[i] = text(e.Rule)
		dsts[i] = text(e.Dst)
		domains[i] = text(strings.TrimRight(e.Domain, "."))
		docs[i] = mustJSON(e)
	}
	return s.inTx(ctx, func(tx pgx.Tx) error {
		if _, err := checkLeaseTx(ctx, tx, f, " FOR SHARE"); err != nil {
			return err
		}
		var last int64
		if err := tx.QueryRow(ctx, `SELECT last FROM egress_cursor FOR UPDATE`).Scan(&last); err != nil {
			return fmt.Errorf("numbering egress events: %w", err)
		}
		tag, err := tx.Exec(ctx, `INSERT INTO egress (id, job_id, runner_id, seq, time, verdict, rule, dst, domain, event)
			SELECT $1 + row_number() OVER (ORDER BY e.seq), $2, $3, e.seq, e.time, e.verdict, e.rule, e.dst, e.domain, e.event
			FROM unnest($4::bigint[], $5::bigint[], $6::text[], $7::text[], $8::text[], $9::text[], $10::text[])
				AS e(seq, time, verdict, rule, dst, domain, event)
			WHERE NOT EXISTS (SELECT 1 FROM egress x WHERE x.job_id = $2 AND x.seq = e.seq)`,
			last, f.JobID, text(f.RunnerID), seqs, times, verdicts, rules, dsts, domains, docs)
		if err != nil {
			return fmt.Errorf("storing egress events: %w", err)
		}
		if n := tag.RowsAffected(); n > 0 {
			if _, err := tx.Exec(ctx, `UPDATE egress_cursor SET last = $1`, last+n); err != nil {
				return fmt.Errorf("numbering egress events: %w", err)
			}
		}
		return nil
	})
}

// QueryEgress streams matching events like QueryEgressRecords, without
// their cursors.
func (s *Store) QueryEgress(ctx context.Context, f store.EgressFilter, fn func(api.EgressEvent) error) error {
	return s.QueryEgressRecords(ctx, f, func(r api.EgressRecord) error { return fn(r.EgressEvent) })
}

// QueryEgressRecords streams matching events with their cursors: after
// f.After in cursor order when it is set, else oldest first by event time.
// Events are read egressPage at a time, and fn is called with no
// connection held: a client reading slowly (fn writes to it) must not keep
// one of the pool's connections, and a snapshot, for as long as it likes.
func (s *Store) QueryEgressRecords(ctx context.Context, f store.EgressFilter, fn func(api.EgressRecord) error) error {
	type row struct {
		rec  api.EgressRecord
		time int64
	}
	var last *row
	for sent := 0; ; {
		var w where
		if f.After != nil {
			w.add("id > " + w.arg(*f.After))
		}
		if f.Submitter != "" {
			w.add("job_id IN (SELECT id FROM jobs WHERE submitter = " + w.arg(text(f.Submitter)) + ")")
		}
		if f.Job != "" {
			w.add("job_id = " + w.arg(text(f.Job)))
		}
		if f.Runner != "" {
			w.add("runner_id = " + w.arg(text(f.Runner)))
		}
		if f.Verdict != "" {
			w.add("verdict = " + w.arg(text(f.Verdict)))
		}
		if !f.Since.IsZero() {
			w.add("time >= " + w.arg(nanos(f.Since)))
		}
		if !f.Until.IsZero() {
			w.add("time < " + w.arg(nanos(f.Until)))
		}
		egressMatch(f.Match, &w)
		offset := f.Offset
		if last != nil { // the next batch starts after the last event sent
			offset = 0
			if f.After != nil {
				w.add("id > " + w.arg(last.rec.Cursor))
			} else {
				w.add("(time, id) > (" + w.arg(last.time) + ", " + w.arg(last.rec.Cursor) + ")")
			}
		}
		q := `SELECT id, time, event FROM egress` + w.sql()
		if f.After != nil {
			q += ` ORDER BY id`
		} else {
			q += ` ORDER BY time, id`
		}
		n := egressPage
		if f.Limit > 0 {
			n = min(n, f.Limit-sent)
		}
		q += w.page(n, offset)
		rows, err := s.pool.Query(ctx, q, w.args...)
		if err != nil {
			return fmt.Errorf("querying egress events: %w", err)
		}
		var batch []row
		var raw string
		var r row
		_, err = pgx.ForEachRow(rows, []any{&r.rec.Cursor, &r.time, &raw}, func() error {
			r.rec.EgressEvent = api.EgressEvent{}
			if err := json.Unmarshal([]byte(raw), &r.rec.EgressEvent); err != nil {
				return fmt.Errorf("decoding egress event %d: %w", r.rec.Cursor, err)
			}
			batch = append(batch, r)
			return nil
		})
		if err != nil {
			return fmt.Errorf("querying egress events: %w", err)
		}
		for _, b := range batch {
			if err := fn(b.rec); err != nil {
				return err
			}
		}
		sent += len(batch)
		if len(batch) < n || (f.Limit > 0 && sent >= f.Limit) {
			return nil
		}
		last = &batch[len(batch)-1]
	}
}

// egressPage is how many events QueryEgressRecords reads at a time.
const egressPage = 500

// egressMatch adds the conditions of m on the event's rule, dst and domain
// columns (the domain kept without its trailing dot).
func egressMatch(m store.EgressMatch, w *where) {
	if m.Rule != "" {
		w.add("rule = " + w.arg(text(m.Rule)))
	}
	if m.Dst != "" {
		host := likeEscape(text(strings.Trim(m.Dst, "[]")))
		w.add(`(dst = ` + w.arg(text(m.Dst)) + ` OR dst LIKE ` + w.arg(host+":%") + ` ESCAPE '\' OR dst LIKE ` + w.arg("["+host+"]:%") + ` ESCAPE '\')`)
	}
	if d := text(strings.TrimSuffix(m.Domain, ".")); d != "" {
		w.add(`(domain = ` + w.arg(d) + ` OR domain LIKE ` + w.arg("%."+likeEscape(d)) + ` ESCAPE '\')`)
	}
}

// likeEscape escapes the LIKE wildcards of s (with ESCAPE '\').
func likeEscape(s string) string {
	return strings.NewReplacer(`\`, `\\`, `%`, `\%`, `_`, `\_`).Replace(s)
}

// CountEgress counts the events of each job with the verdict ("" any).
func (s *Store) CountEgress(ctx context.Context, jobIDs []string, verdict string) (map[string]int, error) {
	out := map[string]int{}
	if len(jobIDs) == 0 {
		return out, nil
	}
	ids := make([]string, len(jobIDs))
	for i, id := range jobIDs {
		ids[i] = text(id)
	}
	var w where
	w.add("job_id = ANY(" + w.arg(ids) + ")")
	if verdict != "" {
		w.add("verdict = " + w.arg(text(verdict)))
	}
	rows, err := s.pool.Query(ctx, `SELECT job_id, count(*) FROM egress`+w.sql()+` GROUP BY job_id`, w.args...)
	if err != nil {
		return nil, fmt.Errorf("counting egress events: %w", err)
	}
	var id string
	var n int
	if _, err := pgx.ForEachRow(rows, []any{&id, &n}, func() error { out[id] = n; return nil }); err != nil {
		return nil, fmt.Errorf("counting egress events: %w", err)
	}
	return out, nil
}

// --- artifacts ---------------------------------------------------------------

// AddArtifact records an artifact under the lease (the job's row held FOR
// SHARE until it is written).
func (s *Store) AddArtifact(ctx context.Context, f store.Fence, a store.Artifact) error {
	return s.inTx(ctx, func(tx pgx.Tx) error {
		if _, err := checkLeaseTx(ctx, tx, f, " FOR SHARE"); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `INSERT INTO artifacts (job_id, name, kind, sha256, size, created_at) VALUES ($1,$2,$3,$4,$5,$6)
			ON CONFLICT (job_id, name) DO UPDATE SET kind = EXCLUDED.kind, sha256 = EXCLUDED.sha256, size = EXCLUDED.size, created_at = EXCLUDED.created_at`,
			f.JobID, text(a.Name), text(a.Kind), text(a.SHA256), a.Size, nanos(a.CreatedAt)); err != nil {
			return fmt.Errorf("recording artifact %s: %w", a.Name, err)
		}
		return nil
	})
}

func scanArtifact(row pgx.Row) (store.Artifact, error) {
	var a store.Artifact
	var created int64
	if err := row.Scan(&a.Name, &a.Kind, &a.SHA256, &a.Size, &created); err != nil {
		return a, err
	}
	a.CreatedAt = time.Unix(0, created).UTC()
	return a, nil
}

// ListArtifacts lists a job's artifacts by name.
func (s *Store) ListArtifacts(ctx context.Context, jobID string) ([]store.Artifact, error) {
	rows, err := s.pool.Query(ctx, `SELECT name, kind, sha256, size, created_at FROM artifacts WHERE job_id = $1 ORDER BY name`, text(jobID))
	if err != nil {
		return nil, fmt.Errorf("listing artifacts of job %s: %w", jobID, err)
	}
	out, err := collect(rows, scanArtifact)
	if err != nil {
		return nil, fmt.Errorf("listing artifacts of job %s: %w", jobID, err)
	}
	return out, nil
}

// Artifact returns one artifact's metadata.
func (s *Store) Artifact(ctx context.Context, jobID, name string) (store.Artifact, error) {
	a, err := scanArtifact(s.pool.QueryRow(ctx, `SELECT name, kind, sha256, size, created_at FROM artifacts WHERE job_id = $1 AND name = $2`, text(jobID), text(name)))
	if errors.Is(err, pgx.ErrNoRows) {
		return a, fmt.Errorf("looking up artifact %s of job %s: %w", name, jobID, store.ErrNotFound)
	}
	if err != nil {
		return a, fmt.Errorf("looking up artifact %s of job %s: %w", name, jobID, err)
	}
	return a, nil
}

// --- retention ---------------------------------------------------------------

// PurgeFinished deletes jobs that ended before before, oldest first, with
// everything stored for them, in one transaction (SKIP LOCKED: two
// coordinators purging at once take different jobs).
func (s *Store) PurgeFinished(ctx context.Context, before time.Time, limit int) ([]string, error) {
	var ids []string
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		rows, err := tx.Query(ctx, `SELECT id FROM jobs WHERE state IN ('succeeded','failed','canceled','lost')
			AND finished_at IS NOT NULL AND finished_at < $1 ORDER BY finished_at LIMIT $2 FOR UPDATE SKIP LOCKED`, nanos(before), limit)
		if err != nil {
			return fmt.Errorf("finding finished jobs: %w", err)
		}
		if ids, err = pgx.CollectRows(rows, pgx.RowTo[string]); err != nil {
			return fmt.Errorf("finding finished jobs: %w", err)
		}
		for _, q := range []string{`DELETE FROM log_chunks WHERE job_id = ANY($1)`, `DELETE FROM egress WHERE job_id = ANY($1)`,
			`DELETE FROM artifacts WHERE job_id = ANY($1)`, `DELETE FROM jobs WHERE id = ANY($1)`} {
			if _, err := tx.Exec(ctx, q, ids); err != nil {
				return fmt.Errorf("purging jobs: %w", err)
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return ids, nil
}

// BlobRefs lists the digests that sources and artifacts still refer to.
func (s *Store) BlobRefs(ctx context.Context) (map[string]bool, error) {
	rows, err := s.pool.Query(ctx, `SELECT source_sha256 FROM jobs WHERE source_sha256 IS NOT NULL UNION SELECT sha256 FROM artifacts`)
	if err != nil {
		return nil, fmt.Errorf("listing blob references: %w", err)
	}
	refs := map[string]bool{}
	var d string
	if _, err := pgx.ForEachRow(rows, []any{&d}, func() error { refs[d] = true; return nil }); err != nil {
		return nil, fmt.Errorf("listing blob references: %w", err)
	}
	return refs, nil
}
