// Package postgres owns the PostgreSQL implementation of store.Store, for
// several coordinators sharing one database: the schema and its
// migrations (applied under an advisory lock), claims with FOR UPDATE SKIP
// LOCKED, fenced writes under the job's row lock, egress cursors that
// become visible in order, logs and blobs stored in chunks, and wake-ups
// between coordinators with LISTEN/NOTIFY. State decisions are
// store.Transition's and store.Fits', as in the SQLite store: the SQL only
// loads, locks and writes. It uses github.com/jackc/pgx/v5.
//
// Times are stored as BIGINT Unix nanoseconds, exactly as the SQLite store
// keeps them (timestamptz would round to microseconds), and JSON documents
// as TEXT: PostgreSQL's jsonb refuses the \u0000 escape, which an agent's
// egress report or a submitted spec may carry.
package postgres

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/cleanroom-ci/cleanroom/coordinator/store"
)

// Options tune a Store.
type Options struct {
	// Log bounds the stored log per job (zero: store.LogLimits defaults).
	Log store.LogLimits
	// Now stamps applied migrations and stored blobs (sweeps compare it
	// with their olderThan); nil means time.Now. Every decision by time
	// takes the caller's now.
	Now func() time.Time
	// MaxConns bounds the connection pool (0: 16). Listen uses one more
	// connection of its own. Blob uploads, which hold a connection and a
	// transaction for as long as their client takes to send, may use at
	// most a quarter of it (at least one).
	MaxConns int32
}

// Store is the PostgreSQL store. Create it with Open.
type Store struct {
	pool *pgxpool.Pool
	log  store.LogLimits
	now  func() time.Time
	// uploads holds a token per PutBlob in progress: slow uploads (a
	// client trickling a source or an artifact) wait here, holding no
	// connection, instead of taking the whole pool from claims,
	// heartbeats and log appends.
	uploads chan struct{}
}

var _ store.Store = (*Store)(nil)

// Open connects to the database named by dsn (a postgres:// URL or a
// key=value string, as libpq takes) and applies pending migrations.
func Open(ctx context.Context, dsn string, opts Options) (_ *Store, retErr error) {
	pool, err := openPool(ctx, dsn, opts)
	if err != nil {
		return nil, err
	}
	defer func() {
		if retErr != nil {
			pool.Close()
		}
	}()
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if _, err := store.Migrate(ctx, migrationDB{pool}, migrations, opts.Now(), false); err != nil {
		return nil, err
	}
	return &Store{pool: pool, log: opts.Log.WithDefaults(), now: opts.Now,
		uploads: make(chan struct{}, max(1, pool.Config().MaxConns/4))}, nil
}

func openPool(ctx context.Context, dsn string, opts Options) (*pgxpool.Pool, error) {
	cfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		return nil, fmt.Errorf("parsing PostgreSQL DSN: %w", redact(err))
	}
	cfg.MaxConns = 16
	if opts.MaxConns > 0 {
		cfg.MaxConns = opts.MaxConns
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("connecting to PostgreSQL: %w", err)
	}
	if err := pool.Ping(ctx); err != nil {
		pool.Close()
		return nil, fmt.Errorf("connecting to PostgreSQL %s:%d/%s: %w", cfg.ConnConfig.Host, cfg.ConnConfig.Port, cfg.ConnConfig.Database, err)
	}
	return pool, nil
}

// redact drops the DSN (with its password) that a parse error may quote.
func redact(err error) error {
	var pe *pgconn.ParseConfigError
	if errors.As(err, &pe) {
		return errors.New("invalid DSN (not shown: it may hold a password)")
	}
	return err
}

// Migrate brings the database at dsn to SchemaVersion and says what it did;
// with dryRun it only reports. Open migrates by itself: this is
// `cleanroom server migrate`.
func Migrate(ctx context.Context, dsn string, now time.Time, dryRun bool) (store.MigrationPlan, error) {
	pool, err := openPool(ctx, dsn, Options{MaxConns: 1})
	if err != nil {
		return store.MigrationPlan{}, err
	}
	defer pool.Close()
	return store.Migrate(ctx, migrationDB{pool}, migrations, now, dryRun)
}

// Close closes the pool (a second Close is harmless).
func (s *Store) Close() error {
	s.pool.Close()
	return nil
}

// migrationLockKey is the pg_advisory_xact_lock key of migrations (an
// arbitrary constant: "cleanroom" in ASCII, truncated to 8 bytes).
const migrationLockKey = 0x636c65616e726f6f

// migrationDB runs store.Migrate on PostgreSQL. The lock is a transaction
// advisory lock taken first in the migration's transaction: a second
// coordinator starting at the same time waits for it, then reads the
// version the first one committed and finds nothing pending. (A session
// lock, pg_advisory_lock, would outlive a transaction that failed on a
// pooled connection; the transaction lock ends with it, and PostgreSQL's
// DDL is transactional, so the whole migration commits or not at all.)
type migrationDB struct{ pool *pgxpool.Pool }

type migrationTx struct{ tx pgx.Tx }

func (m migrationDB) BeginMigration(ctx context.Context) (store.MigrationTx, error) {
	tx, err := m.pool.Begin(ctx)
	if err != nil {
		return nil, err
	}
	for _, q := range []string{
		`SELECT pg_advisory_xact_lock(` + strconv.FormatInt(migrationLockKey, 10) + `)`,
		`CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY, applied_at BIGINT NOT NULL)`,
	} {
		if _, err := tx.Exec(ctx, q); err != nil {
			_ = tx.Rollback(context.WithoutCancel(ctx))
			return nil, fmt.Errorf("preparing migration: %w", err)
		}
	}
	return migrationTx{tx}, nil
}

func (m migrationTx) Version(ctx context.Context) (int, error) {
	var v int
	err := m.tx.QueryRow(ctx, `SELECT COALESCE(MAX(version), 0) FROM schema_version`).Scan(&v)
	return v, err
}

func (m migrationTx) Apply(ctx context.Context, mg store.Migration, appliedAt time.Time) error {
	if _, err := m.tx.Exec(ctx, mg.SQL); err != nil {
		return err
	}
	_, err := m.tx.Exec(ctx, `INSERT INTO schema_version (version, applied_at) VALUES ($1, $2)`, mg.Version, nanos(appliedAt))
	return err
}

func (m migrationTx) Commit(ctx context.Context) error { return m.tx.Commit(ctx) }

func (m migrationTx) Rollback(ctx context.Context) error {
	if err := m.tx.Rollback(ctx); err != nil && !errors.Is(err, pgx.ErrTxClosed) {
		return err
	}
	return nil
}

// migrations are applied in order by store.Migrate; never edit one that
// has shipped.
var migrations = []store.Migration{
	{Version: 1, Note: "tokens, runners, jobs, log chunks, egress events with their cursor counter, artifacts and blobs", SQL: `
	CREATE TABLE tokens (
		id TEXT PRIMARY KEY, kind TEXT NOT NULL, hash BYTEA NOT NULL,
		created_at BIGINT NOT NULL, expires_at BIGINT, uses_left INTEGER,
		revoked_at BIGINT, note TEXT NOT NULL DEFAULT '', team TEXT NOT NULL DEFAULT '');
	CREATE TABLE runners (
		id TEXT PRIMARY KEY, name TEXT NOT NULL, token_hash BYTEA NOT NULL,
		public_key BYTEA NOT NULL, labels TEXT NOT NULL DEFAULT '{}',
		concurrency INTEGER NOT NULL DEFAULT 1, created_at BIGINT NOT NULL,
		last_seen BIGINT, revoked_at BIGINT);
	CREATE UNIQUE INDEX runners_active_name ON runners(name) WHERE revoked_at IS NULL;
	CREATE TABLE jobs (
		seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, id TEXT NOT NULL UNIQUE,
		state TEXT NOT NULL, spec TEXT NOT NULL, source TEXT NOT NULL, source_sha256 TEXT,
		labels TEXT NOT NULL DEFAULT '{}', resources TEXT NOT NULL DEFAULT '{}',
		created_at BIGINT NOT NULL, started_at BIGINT, finished_at BIGINT, runner_id TEXT,
		lease_token BIGINT NOT NULL DEFAULT 0, lease_expires BIGINT,
		attempts INTEGER NOT NULL DEFAULT 0, max_attempts INTEGER NOT NULL,
		cancel_requested BOOLEAN NOT NULL DEFAULT false, exit_code INTEGER,
		reason TEXT NOT NULL DEFAULT '', log_offset BIGINT NOT NULL DEFAULT 0,
		log_stored BIGINT NOT NULL DEFAULT 0, log_truncated BOOLEAN NOT NULL DEFAULT false,
		submitter TEXT NOT NULL DEFAULT '', team TEXT NOT NULL DEFAULT '',
		failure_class TEXT NOT NULL DEFAULT '');
	CREATE INDEX jobs_state ON jobs(state, seq);
	CREATE INDEX jobs_submitter ON jobs(submitter, seq);
	CREATE INDEX jobs_runner ON jobs(runner_id, seq);
	CREATE INDEX jobs_finished ON jobs(finished_at) WHERE finished_at IS NOT NULL;
	CREATE INDEX jobs_source ON jobs(source_sha256) WHERE source_sha256 IS NOT NULL;
	CREATE TABLE log_chunks (
		job_id TEXT NOT NULL, off BIGINT NOT NULL, data BYTEA NOT NULL,
		PRIMARY KEY (job_id, off));
	CREATE TABLE egress (
		id BIGINT PRIMARY KEY, job_id TEXT NOT NULL, runner_id TEXT NOT NULL,
		seq BIGINT NOT NULL, time BIGINT NOT NULL, verdict TEXT NOT NULL,
		rule TEXT NOT NULL DEFAULT '', dst TEXT NOT NULL DEFAULT '', domain TEXT NOT NULL DEFAULT '',
		event TEXT NOT NULL, UNIQUE (job_id, seq));
	CREATE INDEX egress_time ON egress(time, id);
	CREATE INDEX egress_runner ON egress(runner_id, time);
	CREATE INDEX egress_verdict ON egress(verdict, time);
	CREATE INDEX egress_rule ON egress(rule, time);
	CREATE TABLE egress_cursor (one BOOLEAN PRIMARY KEY DEFAULT true CHECK (one), last BIGINT NOT NULL);
	INSERT INTO egress_cursor (last) VALUES (0);
	CREATE TABLE artifacts (
		job_id TEXT NOT NULL, name TEXT NOT NULL, kind TEXT NOT NULL,
		sha256 TEXT NOT NULL, size BIGINT NOT NULL, created_at BIGINT NOT NULL,
		PRIMARY KEY (job_id, name));
	CREATE INDEX artifacts_sha256 ON artifacts(sha256);
	CREATE SEQUENCE blob_ids;
	CREATE TABLE blobs (
		id BIGINT PRIMARY KEY, sha256 TEXT NOT NULL UNIQUE, size BIGINT NOT NULL,
		chunk_size INTEGER NOT NULL, created_at BIGINT NOT NULL);
	CREATE INDEX blobs_created ON blobs(created_at);
	CREATE TABLE blob_chunks (
		blob_id BIGINT NOT NULL, n INTEGER NOT NULL, data BYTEA NOT NULL,
		PRIMARY KEY (blob_id, n));
	ALTER TABLE blob_chunks ALTER COLUMN data SET STORAGE EXTERNAL;`},
	{Version: 2, Note: "runners keep what they reported with their last claim", SQL: `
	ALTER TABLE runners ADD COLUMN claim_at BIGINT, ADD COLUMN claim_open_until BIGINT, ADD COLUMN claim_report TEXT;`},
}

// SchemaVersion is the version this build migrates to.
var SchemaVersion = len(migrations)

// Version returns the database's schema version.
func (s *Store) Version(ctx context.Context) (int, error) {
	var v int
	if err := s.pool.QueryRow(ctx, `SELECT COALESCE(MAX(version), 0) FROM schema_version`).Scan(&v); err != nil {
		return 0, fmt.Errorf("reading schema version: %w", err)
	}
	return v, nil
}

// Ready checks that the database answers and is at SchemaVersion.
func (s *Store) Ready(ctx context.Context) error {
	v, err := s.Version(ctx)
	if err != nil {
		return err
	}
	return store.CheckVersion(v, SchemaVersion)
}

// Stats counts jobs by state and the runners online.
func (s *Store) Stats(ctx context.Context, seenSince, now time.Time) (store.Stats, error) {
	st := store.Stats{Jobs: map[string]int{}}
	rows, err := s.pool.Query(ctx, `SELECT state, COUNT(*) FROM jobs GROUP BY state`)
	if err != nil {
		return st, fmt.Errorf("counting jobs: %w", err)
	}
	var state string
	var n int
	_, err = pgx.ForEachRow(rows, []any{&state, &n}, func() error { st.Jobs[state] = n; return nil })
	if err != nil {
		return st, fmt.Errorf("counting jobs: %w", err)
	}
	err = s.pool.QueryRow(ctx, `SELECT COUNT(*) FROM runners r WHERE r.revoked_at IS NULL AND (r.last_seen >= $1
		OR EXISTS (SELECT 1 FROM jobs j WHERE j.state = 'running' AND j.runner_id = r.id AND j.lease_expires >= $2))`,
		nanos(seenSince), nanos(now)).Scan(&st.RunnersOnline)
	if err != nil {
		return st, fmt.Errorf("counting runners online: %w", err)
	}
	return st, nil
}

// inTx runs fn in a READ COMMITTED transaction, again (up to 3 times) when
// PostgreSQL aborted it as a deadlock victim or a serialization failure;
// fn must set its results afresh on each run. Rows a transaction changes
// are locked first (FOR UPDATE, in seq order), so its reads and writes are
// atomic against the other coordinators.
func (s *Store) inTx(ctx context.Context, fn func(tx pgx.Tx) error) error {
	var err error
	for attempt := 0; attempt < 3; attempt++ {
		err = pgx.BeginFunc(ctx, s.pool, fn)
		var pe *pgconn.PgError
		if !errors.As(err, &pe) || (pe.Code != "40P01" && pe.Code != "40001") {
			return err
		}
	}
	return err
}

func nanos(t time.Time) int64 { return t.UnixNano() }

func nullNanos(t *time.Time) *int64 {
	if t == nil {
		return nil
	}
	n := t.UnixNano()
	return &n
}

func fromNanos(n *int64) *time.Time {
	if n == nil {
		return nil
	}
	t := time.Unix(0, *n).UTC()
	return &t
}

// text makes s storable in a TEXT column: PostgreSQL refuses NUL and
// invalid UTF-8, which SQLite would keep, in strings an agent sends
// (reasons, names, egress fields). Each is replaced by U+FFFD.
func text(s string) string {
	if utf8.ValidString(s) && !strings.Contains(s, "\x00") {
		return s
	}
	return strings.ReplaceAll(strings.ToValidUTF8(s, "\uFFFD"), "\x00", "\uFFFD")
}

// where collects the conditions and numbered arguments of a query.
type where struct {
	conds []string
	args  []any
}

// arg adds v and returns its placeholder.
func (w *where) arg(v any) string {
	w.args = append(w.args, v)
	return "$" + strconv.Itoa(len(w.args))
}

func (w *where) add(cond string) { w.conds = append(w.conds, cond) }

func (w *where) sql() string {
	if len(w.conds) == 0 {
		return ""
	}
	return " WHERE " + strings.Join(w.conds, " AND ")
}

// page appends LIMIT and OFFSET when set.
func (w *where) page(limit, offset int) string {
	q := ""
	if limit > 0 {
		q += " LIMIT " + w.arg(limit)
	}
	if offset > 0 {
		q += " OFFSET " + w.arg(offset)
	}
	return q
}
