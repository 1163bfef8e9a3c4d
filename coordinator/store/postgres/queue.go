package postgres

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/cleanroom-ci/cleanroom/api"
	"github.com/cleanroom-ci/cleanroom/coordinator/store"
)

// querier is a pool or a transaction.
type querier interface {
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
}

func mustJSON(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		panic(fmt.Sprintf("encoding %T: %v", v, err))
	}
	return string(b)
}

// collect scans every row with scan.
func collect[T any](rows pgx.Rows, scan func(pgx.Row) (T, error)) ([]T, error) {
	defer rows.Close()
	var out []T
	for rows.Next() {
		v, err := scan(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, v)
	}
	return out, rows.Err()
}

// --- tokens ------------------------------------------------------------------

// CreateToken stores a token's hash and limits.
func (s *Store) CreateToken(ctx context.Context, t store.Token) error {
	_, err := s.pool.Exec(ctx, `INSERT INTO tokens (id, kind, hash, created_at, expires_at, uses_left, note, team) VALUES ($1,$2,$3,$4,$5,$6,$7,$8)`,
		t.ID, t.Kind, t.Hash, nanos(t.CreatedAt), nullNanos(t.ExpiresAt), t.UsesLeft, text(t.Note), text(t.Team))
	if err != nil {
		return fmt.Errorf("creating token: %w", err)
	}
	return nil
}

const tokenCols = `id, kind, hash, created_at, expires_at, uses_left, revoked_at, note, team`

func scanToken(row pgx.Row) (store.Token, error) {
	var t store.Token
	var exp, revoked *int64
	var created int64
	if err := row.Scan(&t.ID, &t.Kind, &t.Hash, &created, &exp, &t.UsesLeft, &revoked, &t.Note, &t.Team); err != nil {
		return t, err
	}
	t.CreatedAt = time.Unix(0, created).UTC()
	t.ExpiresAt = fromNanos(exp)
	t.RevokedAt = fromNanos(revoked)
	return t, nil
}

// ListTokens lists every token, oldest first.
func (s *Store) ListTokens(ctx context.Context) ([]store.Token, error) {
	rows, err := s.pool.Query(ctx, `SELECT `+tokenCols+` FROM tokens ORDER BY created_at, id`)
	if err != nil {
		return nil, fmt.Errorf("listing tokens: %w", err)
	}
	out, err := collect(rows, scanToken)
	if err != nil {
		return nil, fmt.Errorf("listing tokens: %w", err)
	}
	return out, nil
}

// RevokeToken marks a token revoked.
func (s *Store) RevokeToken(ctx context.Context, id string, now time.Time) (store.Token, error) {
	t, err := scanToken(s.pool.QueryRow(ctx, `UPDATE tokens SET revoked_at = COALESCE(revoked_at, $1) WHERE id = $2 RETURNING `+tokenCols, nanos(now), id))
	if errors.Is(err, pgx.ErrNoRows) {
		return t, fmt.Errorf("revoking token %s: %w", id, store.ErrNotFound)
	}
	if err != nil {
		return t, fmt.Errorf("revoking token %s: %w", id, err)
	}
	return t, nil
}

// checkToken verifies a token; forUpdate locks its row (a registration
// consumes a use).
func checkToken(ctx context.Context, q querier, kind, id string, hash []byte, now time.Time, forUpdate bool) (store.Token, error) {
	lock := ""
	if forUpdate {
		lock = " FOR UPDATE"
	}
	t, err := scanToken(q.QueryRow(ctx, `SELECT `+tokenCols+` FROM tokens WHERE id = $1`+lock, text(id)))
	if errors.Is(err, pgx.ErrNoRows) {
		return t, fmt.Errorf("looking up token %s: %w", id, store.ErrTokenInvalid)
	}
	if err != nil {
		return t, fmt.Errorf("looking up token %s: %w", id, err)
	}
	return t, store.CheckToken(t, kind, id, hash, now)
}

// CheckToken verifies a token without consuming a use.
func (s *Store) CheckToken(ctx context.Context, kind, id string, hash []byte, now time.Time) (store.Token, error) {
	return checkToken(ctx, s.pool, kind, id, hash, now, false)
}

// --- runners -----------------------------------------------------------------

// RegisterRunner consumes a registration token use and creates the runner.
// The token's row lock orders concurrent registrations with one token; the
// unique index on active names settles two registrations of one name with
// different tokens.
func (s *Store) RegisterRunner(ctx context.Context, regID string, regHash []byte, r store.Runner, now time.Time) error {
	return s.inTx(ctx, func(tx pgx.Tx) error {
		t, err := checkToken(ctx, tx, api.TokenRegistration, regID, regHash, now, true)
		if err != nil {
			return err
		}
		if t.UsesLeft != nil {
			if _, err := tx.Exec(ctx, `UPDATE tokens SET uses_left = uses_left - 1 WHERE id = $1`, regID); err != nil {
				return fmt.Errorf("consuming registration token: %w", err)
			}
		}
		_, err = tx.Exec(ctx, `INSERT INTO runners (id, name, token_hash, public_key, labels, concurrency, created_at) VALUES ($1,$2,$3,$4,$5,$6,$7)`,
			r.ID, text(r.Name), r.TokenHash, r.PublicKey, mustJSON(r.Labels), r.Concurrency, nanos(r.CreatedAt))
		var pe *pgconn.PgError
		if errors.As(err, &pe) && pe.Code == "23505" {
			return fmt.Errorf("registering runner %q: name in use: %w", r.Name, store.ErrConflict)
		}
		if err != nil {
			return fmt.Errorf("registering runner %q: %w", r.Name, err)
		}
		return nil
	})
}

const runnerCols = `id, name, token_hash, public_key, labels, concurrency, created_at, last_seen, revoked_at`

// runnerReadCols are runnerCols (what the record stream keeps) and the
// runner's last claim report.
const runnerReadCols = runnerCols + `, claim_at, claim_open_until, claim_report`

// scanFunc makes a function a pgx.Row.
type scanFunc func(dest ...any) error

func (f scanFunc) Scan(dest ...any) error { return f(dest...) }

// scanRunnerClaim scans runnerReadCols.
func scanRunnerClaim(row pgx.Row) (store.Runner, error) {
	var at, until *int64
	var report *string
	r, err := scanRunner(scanFunc(func(dest ...any) error { return row.Scan(append(dest, &at, &until, &report)...) }))
	if err != nil || at == nil {
		return r, err
	}
	c := &store.ClaimReport{At: time.Unix(0, *at).UTC()}
	if until != nil {
		c.OpenUntil = time.Unix(0, *until).UTC()
	}
	if report != nil {
		if err := json.Unmarshal([]byte(*report), c); err != nil {
			return r, fmt.Errorf("decoding runner %s's claim report: %w", r.ID, err)
		}
	}
	r.LastClaim = c
	return r, nil
}

func scanRunner(row pgx.Row) (store.Runner, error) {
	var r store.Runner
	var labels string
	var created int64
	var seen, revoked *int64
	if err := row.Scan(&r.ID, &r.Name, &r.TokenHash, &r.PublicKey, &labels, &r.Concurrency, &created, &seen, &revoked); err != nil {
		return r, err
	}
	if err := json.Unmarshal([]byte(labels), &r.Labels); err != nil {
		return r, fmt.Errorf("decoding runner labels: %w", err)
	}
	r.CreatedAt = time.Unix(0, created).UTC()
	r.LastSeen = fromNanos(seen)
	r.RevokedAt = fromNanos(revoked)
	return r, nil
}

func (s *Store) runnerWhere(ctx context.Context, where string, arg string) (store.Runner, error) {
	r, err := scanRunnerClaim(s.pool.QueryRow(ctx, `SELECT `+runnerReadCols+` FROM runners WHERE `+where, text(arg)))
	if errors.Is(err, pgx.ErrNoRows) {
		return r, fmt.Errorf("looking up runner %v: %w", arg, store.ErrNotFound)
	}
	if err != nil {
		return r, fmt.Errorf("looking up runner %v: %w", arg, err)
	}
	return r, nil
}

// Runner returns a runner by id, revoked or not.
func (s *Store) Runner(ctx context.Context, id string) (store.Runner, error) {
	return s.runnerWhere(ctx, `id = $1`, id)
}

// RunnerByName returns the active runner with that name, else the most
// recently revoked one.
func (s *Store) RunnerByName(ctx context.Context, name string) (store.Runner, error) {
	return s.runnerWhere(ctx, `name = $1 ORDER BY revoked_at IS NULL DESC, created_at DESC LIMIT 1`, name)
}

// ListRunners lists all runners, oldest first.
func (s *Store) ListRunners(ctx context.Context) ([]store.Runner, error) {
	rows, err := s.pool.Query(ctx, `SELECT `+runnerReadCols+` FROM runners ORDER BY created_at`)
	if err != nil {
		return nil, fmt.Errorf("listing runners: %w", err)
	}
	out, err := collect(rows, scanRunnerClaim)
	if err != nil {
		return nil, fmt.Errorf("listing runners: %w", err)
	}
	return out, nil
}

// RevokeRunner revokes a runner and expires its leases.
func (s *Store) RevokeRunner(ctx context.Context, id string, now time.Time) (store.Runner, error) {
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		var found bool
		if err := tx.QueryRow(ctx, `SELECT true FROM runners WHERE id = $1 FOR UPDATE`, text(id)).Scan(&found); errors.Is(err, pgx.ErrNoRows) {
			return fmt.Errorf("revoking runner %s: %w", id, store.ErrNotFound)
		} else if err != nil {
			return fmt.Errorf("revoking runner %s: %w", id, err)
		}
		if _, err := tx.Exec(ctx, `UPDATE runners SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL`, nanos(now), id); err != nil {
			return fmt.Errorf("revoking runner %s: %w", id, err)
		}
		list, err := runningTx(ctx, tx, `runner_id = $1 ORDER BY seq FOR UPDATE`, id)
		if err != nil {
			return fmt.Errorf("expiring leases of runner %s: %w", id, err)
		}
		for _, j := range list {
			if _, _, err := transitionTx(ctx, tx, j, store.Event{Kind: store.EventRevoke, Now: now}); err != nil {
				return fmt.Errorf("expiring leases of runner %s: %w", id, err)
			}
		}
		return nil
	})
	if err != nil {
		return store.Runner{}, err
	}
	return s.Runner(ctx, id)
}

// TouchRunner records that the runner was seen.
func (s *Store) TouchRunner(ctx context.Context, id string, now time.Time) error {
	if _, err := s.pool.Exec(ctx, `UPDATE runners SET last_seen = $1 WHERE id = $2`, nanos(now), text(id)); err != nil {
		return fmt.Errorf("touching runner %s: %w", id, err)
	}
	return nil
}

// ReportClaim records a claim's report and that the runner was seen.
func (s *Store) ReportClaim(ctx context.Context, id string, c store.ClaimReport, now time.Time) error {
	_, err := s.pool.Exec(ctx, `UPDATE runners SET last_seen = $1, claim_at = $1, claim_open_until = $2, claim_report = $3 WHERE id = $4`,
		nanos(now), nanos(c.OpenUntil), mustJSON(c), text(id))
	if err != nil {
		return fmt.Errorf("recording runner %s's claim: %w", id, err)
	}
	return nil
}

// CloseClaim ends the claim open until openUntil, if it is still the last.
func (s *Store) CloseClaim(ctx context.Context, id string, openUntil, now time.Time) error {
	_, err := s.pool.Exec(ctx, `UPDATE runners SET claim_open_until = LEAST($1, claim_open_until) WHERE id = $2 AND claim_open_until = $3`,
		nanos(now), text(id), nanos(openUntil))
	if err != nil {
		return fmt.Errorf("closing runner %s's claim: %w", id, err)
	}
	return nil
}

// --- jobs --------------------------------------------------------------------

const jobCols = `id, state, spec, source, created_at, started_at, finished_at, runner_id, lease_token,
	lease_expires, attempts, max_attempts, cancel_requested, exit_code, reason, log_offset, log_stored, log_truncated, submitter, team, failure_class`

func scanJob(row pgx.Row) (store.Job, error) {
	var j store.Job
	var spec, source string
	var created int64
	var started, finished, leaseExp *int64
	var runner *string
	if err := row.Scan(&j.ID, &j.State, &spec, &source, &created, &started, &finished, &runner, &j.LeaseToken,
		&leaseExp, &j.Attempts, &j.MaxAttempts, &j.Cancel, &j.ExitCode, &j.Reason, &j.LogOffset, &j.LogSize, &j.LogTruncated, &j.Submitter, &j.Team, &j.FailureClass); err != nil {
		return j, err
	}
	if err := json.Unmarshal([]byte(spec), &j.Spec); err != nil {
		return j, fmt.Errorf("decoding job spec: %w", err)
	}
	if err := json.Unmarshal([]byte(source), &j.Source); err != nil {
		return j, fmt.Errorf("decoding job source: %w", err)
	}
	j.CreatedAt = time.Unix(0, created).UTC()
	j.StartedAt = fromNanos(started)
	j.FinishedAt = fromNanos(finished)
	if runner != nil {
		j.RunnerID = *runner
	}
	if leaseExp != nil {
		j.LeaseExpires = time.Unix(0, *leaseExp).UTC()
	}
	return j, nil
}

// CreateJob inserts a queued job.
func (s *Store) CreateJob(ctx context.Context, j store.Job) error {
	var src *string
	if j.Source.SHA256 != "" {
		src = &j.Source.SHA256
	}
	tag, err := s.pool.Exec(ctx, `INSERT INTO jobs (id, state, spec, source, source_sha256, labels, resources, created_at, max_attempts, submitter, team)
		VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11) ON CONFLICT (id) DO NOTHING`,
		j.ID, api.StateQueued, mustJSON(j.Spec), mustJSON(j.Source), src, mustJSON(j.Spec.Labels), mustJSON(j.Spec.Resources),
		nanos(j.CreatedAt), j.MaxAttempts, text(j.Submitter), text(j.Team))
	if err != nil {
		return fmt.Errorf("creating job: %w", err)
	}
	if tag.RowsAffected() == 0 {
		return fmt.Errorf("creating job %s: %w", j.ID, store.ErrExists)
	}
	return nil
}

// jobTx loads a job; lock is "", " FOR UPDATE" or " FOR SHARE".
func jobTx(ctx context.Context, q querier, id, lock string) (store.Job, error) {
	j, err := scanJob(q.QueryRow(ctx, `SELECT `+jobCols+` FROM jobs WHERE id = $1`+lock, text(id)))
	if errors.Is(err, pgx.ErrNoRows) {
		return j, fmt.Errorf("looking up job %s: %w", id, store.ErrNotFound)
	}
	if err != nil {
		return j, fmt.Errorf("looking up job %s: %w", id, err)
	}
	return j, nil
}

// Job returns one job.
func (s *Store) Job(ctx context.Context, id string) (store.Job, error) {
	return jobTx(ctx, s.pool, id, "")
}

// ListJobs lists jobs, newest first.
func (s *Store) ListJobs(ctx context.Context, f store.JobFilter) ([]store.Job, error) {
	var w where
	if f.State != "" {
		w.add("state = " + w.arg(f.State))
	}
	if f.Submitter != "" {
		w.add("submitter = " + w.arg(text(f.Submitter)))
	}
	if f.Runner != "" {
		w.add("runner_id = " + w.arg(text(f.Runner)))
	}
	q := `SELECT ` + jobCols + ` FROM jobs` + w.sql() + ` ORDER BY seq DESC`
	q += w.page(f.Limit, f.Offset)
	rows, err := s.pool.Query(ctx, q, w.args...)
	if err != nil {
		return nil, fmt.Errorf("listing jobs: %w", err)
	}
	out, err := collect(rows, scanJob)
	if err != nil {
		return nil, fmt.Errorf("listing jobs: %w", err)
	}
	return out, nil
}

// claimScan bounds how many queued jobs one claim looks at (as the
// SQLite store's), and claimPage how many it reads at a time: a claim
// usually finds its jobs in the first page, so it neither transfers nor
// decodes the rest of a long queue.
const claimScan, claimPage = 1000, 32

// ClaimJobs leases up to max matching queued jobs in one transaction. It
// reads the oldest queued jobs' labels and resources without locking, a
// page at a time, keeps those store.Fits admits, and locks them one by
// one with FOR UPDATE SKIP LOCKED: a job another coordinator is claiming
// at that moment is skipped, not waited for, and one claimed meanwhile is
// no longer queued.
func (s *Store) ClaimJobs(ctx context.Context, r store.Runner, capacity *api.Resources, max int, ttl time.Duration, now time.Time) ([]store.Claim, error) {
	if max <= 0 {
		return nil, nil
	}
	var claims []store.Claim
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		claims = nil
		ev := store.Event{Kind: store.EventClaim, Fence: store.Fence{RunnerID: r.ID}, Now: now, TTL: ttl}
		after := int64(0)
		for scanned := 0; scanned < claimScan && len(claims) < max; {
			page := min(claimPage, claimScan-scanned)
			ids, last, n, err := fittingQueued(ctx, tx, r, capacity, after, page)
			if err != nil {
				return err
			}
			scanned, after = scanned+n, last
			for _, id := range ids {
				if len(claims) == max {
					break
				}
				j, err := jobTx(ctx, tx, id, " AND state = 'queued' FOR UPDATE SKIP LOCKED")
				if errors.Is(err, store.ErrNotFound) {
					continue // being claimed, or claimed, by another
				} else if err != nil {
					return err
				}
				next, _, err := transitionTx(ctx, tx, j, ev)
				if err != nil {
					return err
				}
				claims = append(claims, store.Claim{Job: next, Token: next.LeaseToken})
			}
			if n < page {
				break // the end of the queue
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return claims, nil
}

// fittingQueued reads up to limit queued jobs after seq after, oldest
// first, without locking, and returns the ids of those r fits, the last
// seq read and how many it read.
func fittingQueued(ctx context.Context, tx pgx.Tx, r store.Runner, capacity *api.Resources, after int64, limit int) (ids []string, last int64, n int, err error) {
	rows, err := tx.Query(ctx, `SELECT seq, id, labels, resources FROM jobs WHERE state = 'queued' AND seq > $1 ORDER BY seq LIMIT $2`, after, limit)
	if err != nil {
		return nil, 0, 0, fmt.Errorf("finding queued jobs: %w", err)
	}
	last = after
	var seq int64
	var id, labels, res string
	_, err = pgx.ForEachRow(rows, []any{&seq, &id, &labels, &res}, func() error {
		n++
		last = seq
		var jl map[string]string
		if err := json.Unmarshal([]byte(labels), &jl); err != nil {
			return fmt.Errorf("decoding labels of job %s: %w", id, err)
		}
		var jr api.Resources
		if capacity != nil {
			if err := json.Unmarshal([]byte(res), &jr); err != nil {
				return fmt.Errorf("decoding resources of job %s: %w", id, err)
			}
		}
		if store.Fits(r.Labels, capacity, jl, jr) {
			ids = append(ids, id)
		}
		return nil
	})
	if err != nil {
		return nil, 0, 0, fmt.Errorf("finding queued jobs: %w", err)
	}
	return ids, last, n, nil
}

// ReleaseClaim undoes a claim whose answer never reached the runner; a
// fence that is no longer current (or a job gone) is no error.
func (s *Store) ReleaseClaim(ctx context.Context, f store.Fence) error {
	return s.inTx(ctx, func(tx pgx.Tx) error {
		j, err := jobTx(ctx, tx, f.JobID, " FOR UPDATE")
		if errors.Is(err, store.ErrNotFound) {
			return nil
		} else if err != nil {
			return err
		}
		_, _, err = transitionTx(ctx, tx, j, store.Event{Kind: store.EventRelease, Fence: f})
		if errors.Is(err, store.ErrStaleLease) {
			return nil
		}
		return err
	})
}

// transitionTx applies store.Transition to j (read under its row lock) and
// writes the fields it changed, conditional on the state and lease token
// read; more are the transaction's other writes, sent in the same round
// trip after the update (alone when the transition changes nothing).
func transitionTx(ctx context.Context, tx pgx.Tx, j store.Job, ev store.Event, more ...stmt) (store.Job, store.Effect, error) {
	next, eff, err := store.Transition(j, ev)
	if err != nil {
		return next, eff, err
	}
	if !eff.Changed {
		_, err := execBatch(ctx, tx, more...)
		return next, eff, err
	}
	var runner *string
	if next.RunnerID != "" {
		runner = &next.RunnerID
	}
	var leaseExp *int64
	if !next.LeaseExpires.IsZero() {
		n := nanos(next.LeaseExpires)
		leaseExp = &n
	}
	update := stmt{`UPDATE jobs SET state = $1, runner_id = $2, lease_token = $3, lease_expires = $4, attempts = $5,
		cancel_requested = $6, started_at = $7, finished_at = $8, exit_code = $9, reason = $10, failure_class = $11
		WHERE id = $12 AND state = $13 AND lease_token = $14`, []any{
		next.State, runner, next.LeaseToken, leaseExp, next.Attempts, next.Cancel, nullNanos(next.StartedAt), nullNanos(next.FinishedAt),
		next.ExitCode, text(next.Reason), text(next.FailureClass), j.ID, j.State, j.LeaseToken}}
	tags, err := execBatch(ctx, tx, append([]stmt{update}, more...)...)
	if err != nil {
		return j, store.Effect{}, fmt.Errorf("applying %s to job %s: %w", ev.Kind, j.ID, err)
	}
	if tags[0].RowsAffected() != 1 {
		return j, store.Effect{}, fmt.Errorf("applying %s to job %s: changed meanwhile: %w", ev.Kind, j.ID, store.ErrConflict)
	}
	return next, eff, nil
}

// stmt is one statement of a batch.
type stmt struct {
	sql  string
	args []any
}

// execBatch sends stmts in one round trip (a pipeline: each still runs
// on its own, in order, in tx) and returns their command tags; the first
// error ends it, and PostgreSQL then aborts the transaction.
func execBatch(ctx context.Context, tx pgx.Tx, stmts ...stmt) ([]pgconn.CommandTag, error) {
	switch len(stmts) {
	case 0:
		return nil, nil
	case 1:
		tag, err := tx.Exec(ctx, stmts[0].sql, stmts[0].args...)
		return []pgconn.CommandTag{tag}, err
	}
	var b pgx.Batch
	for _, s := range stmts {
		b.Queue(s.sql, s.args...)
	}
	br := tx.SendBatch(ctx, &b)
	tags := make([]pgconn.CommandTag, 0, len(stmts))
	for range stmts {
		tag, err := br.Exec()
		if err != nil {
			br.Close()
			return nil, err
		}
		tags = append(tags, tag)
	}
	return tags, br.Close()
}

// checkLeaseTx loads the job under lock and verifies the fence is its
// current lease.
func checkLeaseTx(ctx context.Context, q querier, f store.Fence, lock string) (store.Job, error) {
	j, err := jobTx(ctx, q, f.JobID, lock)
	if err != nil {
		return j, err
	}
	return j, store.CheckFence(j, f)
}

// CheckLease verifies the fence.
func (s *Store) CheckLease(ctx context.Context, f store.Fence) (store.Job, error) {
	return checkLeaseTx(ctx, s.pool, f, "")
}

// Heartbeat renews a lease.
func (s *Store) Heartbeat(ctx context.Context, f store.Fence, ttl time.Duration, now time.Time) (store.Job, error) {
	var j store.Job
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		var err error
		if j, err = jobTx(ctx, tx, f.JobID, " FOR UPDATE"); err != nil {
			return err
		}
		touch := stmt{`UPDATE runners SET last_seen = $1 WHERE id = $2`, []any{nanos(now), f.RunnerID}}
		j, _, err = transitionTx(ctx, tx, j, store.Event{Kind: store.EventHeartbeat, Fence: f, Now: now, TTL: ttl}, touch)
		return err
	})
	return j, err
}

// RequestCancel cancels or flags a job.
func (s *Store) RequestCancel(ctx context.Context, id string, now time.Time) (store.Job, error) {
	return s.apply(ctx, id, store.Event{Kind: store.EventCancel, Fence: store.Fence{JobID: id}, Now: now})
}

// Finish records a job's result.
func (s *Store) Finish(ctx context.Context, f store.Fence, state string, exitCode int, reason, class string, logSize int64, now time.Time) (store.Job, error) {
	return s.apply(ctx, f.JobID, store.Event{Kind: store.EventFinish, Fence: f, Now: now,
		Result: store.Result{State: state, ExitCode: exitCode, Reason: reason, Class: class, LogSize: logSize}})
}

// apply locks one job, applies ev and returns the job as stored after it.
func (s *Store) apply(ctx context.Context, id string, ev store.Event) (store.Job, error) {
	var j store.Job
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		var err error
		if j, err = jobTx(ctx, tx, id, " FOR UPDATE"); err != nil {
			return err
		}
		j, _, err = transitionTx(ctx, tx, j, ev)
		return err
	})
	return j, err
}

// runningTx lists the running jobs matching where (after "state =
// 'running' AND", with its ORDER BY and lock).
func runningTx(ctx context.Context, tx pgx.Tx, where string, args ...any) ([]store.Job, error) {
	rows, err := tx.Query(ctx, `SELECT `+jobCols+` FROM jobs WHERE state = 'running' AND `+where, args...)
	if err != nil {
		return nil, fmt.Errorf("finding running jobs: %w", err)
	}
	out, err := collect(rows, scanJob)
	if err != nil {
		return nil, fmt.Errorf("finding running jobs: %w", err)
	}
	return out, nil
}

// ReapExpired re-queues or loses jobs whose lease expired. SKIP LOCKED:
// two coordinators reaping at once take different jobs, and a job locked
// by its heartbeat is left to it.
func (s *Store) ReapExpired(ctx context.Context, now time.Time) ([]store.Reaped, error) {
	var out []store.Reaped
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		out = nil
		list, err := runningTx(ctx, tx, `lease_expires < $1 ORDER BY seq FOR UPDATE SKIP LOCKED`, nanos(now))
		if err != nil {
			return fmt.Errorf("finding expired leases: %w", err)
		}
		for _, j := range list {
			next, eff, err := transitionTx(ctx, tx, j, store.Event{Kind: store.EventExpire, Now: now})
			if err != nil {
				return fmt.Errorf("reaping job %s: %w", j.ID, err)
			}
			if err := s.appendTx(ctx, tx, next, []byte(eff.Note)); err != nil {
				return err
			}
			out = append(out, store.Reaped{JobID: j.ID, State: next.State})
		}
		return nil
	})
	return out, err
}

// ExtendLeases gives every running lease at least until.
func (s *Store) ExtendLeases(ctx context.Context, until time.Time) error {
	return s.inTx(ctx, func(tx pgx.Tx) error {
		list, err := runningTx(ctx, tx, `lease_expires < $1 ORDER BY seq FOR UPDATE`, nanos(until))
		if err != nil {
			return fmt.Errorf("extending leases: %w", err)
		}
		for _, j := range list {
			if _, _, err := transitionTx(ctx, tx, j, store.Event{Kind: store.EventExtend, Now: until}); err != nil {
				return fmt.Errorf("extending leases: %w", err)
			}
		}
		return nil
	})
}
