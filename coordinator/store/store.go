// Package store owns the contract of the coordinator's persistent state:
// per-resource interfaces (tokens, runners, the job queue with its leases
// and fencing tokens, logs, egress events, artifact metadata, retention and
// health) composed into Store, Transition, the pure job state machine
// every backend applies, and the record stream that moves a store's whole
// state between backends (Porter, Copy). Every state change that must be
// atomic (a claim, a fenced write, a re-queue) is one call here, so a
// second implementation (PostgreSQL, with FOR UPDATE SKIP LOCKED) can
// follow the SQLite one without touching the HTTP layer; package storetest
// checks that it does.
package store

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/cleanroom-ci/cleanroom/api"
)

// Sentinel errors. Each is of one of the api error classes (errors.Is
// matches both), which is all the HTTP layer needs to choose a status.
var (
	// ErrNotFound: no such job, runner, token or artifact (api.ErrNotFound).
	ErrNotFound = api.WithClass(errors.New("not found"), api.ErrNotFound)
	// ErrStaleLease: the fencing token is not the job's current one, or the
	// job is no longer running on that runner (api.ErrConflict).
	ErrStaleLease = api.WithClass(errors.New("stale lease"), api.ErrConflict)
	// ErrTokenInvalid: a registration or submit token that is unknown,
	// expired, used up or revoked (api.ErrUnauthorized).
	ErrTokenInvalid = api.WithClass(errors.New("token invalid"), api.ErrUnauthorized)
	// ErrConflict: the request contradicts the current state, e.g. a runner
	// name already in use or a different result for a finished job
	// (api.ErrConflict).
	ErrConflict = api.WithClass(errors.New("conflict"), api.ErrConflict)
	// ErrDigestMismatch: the bytes of a blob received do not have the
	// declared sha256 (api.ErrInvalid).
	ErrDigestMismatch = api.WithClass(errors.New("sha256 mismatch"), api.ErrInvalid)
	// ErrExists: CreateJob was given the id of a job already stored
	// (api.ErrConflict). A submit retried with the same idempotency key
	// derives the same id, so this is how a retry finds its first attempt.
	ErrExists = api.WithClass(errors.New("already exists"), api.ErrConflict)
)

// OffsetError is returned by AppendLog for a chunk that starts after the
// stored end (a gap) and by Finish when the log is incomplete; Expected is
// the offset the coordinator wants next. It matches ErrConflict.
type OffsetError struct{ Expected int64 }

func (e *OffsetError) Error() string {
	return fmt.Sprintf("log offset gap: expected offset %d", e.Expected)
}

// Unwrap makes an OffsetError an ErrConflict (and so an api.ErrConflict).
func (e *OffsetError) Unwrap() error { return ErrConflict }

// Token is a registration or submit token; only its sha256 is stored.
type Token struct {
	ID        string
	Kind      string
	Hash      []byte
	CreatedAt time.Time
	ExpiresAt *time.Time
	// UsesLeft is nil for unlimited.
	UsesLeft  *int
	RevokedAt *time.Time
	Note      string
	// Team (submit tokens only) is copied onto every job the token submits.
	Team string
}

// Runner is a registered agent.
type Runner struct {
	api.Runner
	TokenHash []byte
	PublicKey []byte
	// LastClaim is what the runner said with its last claim, on whichever
	// coordinator it claimed (nil before its first). It is not part of the
	// record stream (Porter): runners report again with their next claim.
	LastClaim *ClaimReport
}

// ClaimReport is what a runner says with each claim, kept with the runner
// so that every coordinator on the store answers "why is this job still
// queued" and GET /v1/policy alike, whichever coordinator the runner
// long-polls.
type ClaimReport struct {
	// At is when the claim arrived (set by ReportClaim from its now).
	At time.Time `json:"-"`
	// OpenUntil is when the claim's long-poll ends at the latest: until
	// then the runner waits with free slots. CloseClaim moves it to the
	// time a claim ended early (it got jobs, or its caller left).
	OpenUntil time.Time `json:"-"`
	// Capacity is the resources one job may use on the runner (nil: the
	// runner did not say). Backends keep Capacity and Registries as the
	// report's JSON, At and OpenUntil in columns of their own.
	Capacity *api.Resources `json:"capacity,omitempty"`
	// Registries are the npm registries the runner's egress policy allows.
	Registries []string `json:"registries,omitempty"`
}

// OpenAt reports whether the claim is still waiting at now: the runner has
// a free slot and takes the next job that fits it.
func (c *ClaimReport) OpenAt(now time.Time) bool { return c != nil && now.Before(c.OpenUntil) }

// Job is a job with the coordinator-side fields the API does not show.
type Job struct {
	api.Job
	LeaseToken   int64
	LeaseExpires time.Time
	// LogOffset is the next byte offset expected from the agent; LogStored
	// is how many bytes are kept (less once the cap truncated the log).
	LogOffset    int64
	LogTruncated bool
}

// Claim is a job handed to a runner with its new fencing token. The job's
// LogOffset is where this attempt's log starts (after earlier attempts).
type Claim struct {
	Job   Job
	Token int64
}

// Fence identifies a write made under a lease.
type Fence struct {
	JobID    string
	RunnerID string
	Token    int64
}

// JobFilter selects jobs for ListJobs.
type JobFilter struct {
	State string
	// Submitter, when set, keeps only jobs submitted with that token.
	Submitter string
	// Runner, when set, keeps only jobs claimed (last) by that runner id.
	Runner string
	Limit  int
	// Offset skips that many matching jobs (paging, newest first).
	Offset int
}

// EgressFilter selects egress events for QueryEgress.
type EgressFilter struct {
	api.EgressFilter
	// Submitter, when set, keeps only events of jobs submitted with that
	// token (what a submit token may read).
	Submitter string
	// Match narrows by fields inside the event (the console's explorer).
	Match EgressMatch
	// Offset skips that many matching events (paging, oldest first).
	Offset int
}

// EgressMatch selects events by what they record. Zero fields match all.
type EgressMatch struct {
	// Rule is a rule name (default-deny, dns-refused, ...), exactly.
	Rule string
	// Dst is a destination "host:port" exactly, or a host (IPv4 or IPv6,
	// without brackets) on any port.
	Dst string
	// Domain is a queried name or any name under it ("example.com" matches
	// "a.example.com."); a trailing dot is ignored.
	Domain string
}

// Reaped is a job whose lease expired: re-queued, or lost after its last
// attempt.
type Reaped struct {
	JobID string
	State string
}

// Artifact is the metadata of a stored artifact; its bytes live in the blob
// directory under their sha256.
type Artifact = api.Artifact

// LogLimits bounds what AppendLog keeps per job.
type LogLimits struct {
	// MaxBytes is the per-job cap; past it a truncation marker is stored
	// once and later bytes are acknowledged but dropped.
	MaxBytes int64
	// Marker is the text stored when the cap is reached.
	Marker string
}

// Stats is what the coordinator's metrics read from the store at each
// scrape, in one cheap query each.
type Stats struct {
	// Jobs counts jobs by state (states with none are absent).
	Jobs map[string]int
	// RunnersOnline counts runners not revoked that were seen at or after
	// the given time or hold an unexpired lease.
	RunnersOnline int
}

// The store is split per resource, as containerd's core stores are: each
// interface below is one resource's whole contract, a consumer takes only
// the ones it uses (the console reads, the metrics collector needs Health,
// the dispatcher and reaper the Queue), and Store composes them for a
// backend to implement. A backend proves it keeps the contract by passing
// the conformance suite in package storetest. State decisions (who may
// claim, renew, finish, cancel or lose a job) are Transition's, a pure
// function; a backend loads the job, asks Transition and writes the result.
// Every method that decides by time takes now: the store never reads a
// clock.

// Health is what readiness checks and the metrics collector read.
type Health interface {
	// Ready checks with one short query that the store answers and that
	// its schema is the one this build migrates to (the coordinator's
	// /readyz).
	Ready(ctx context.Context) error
	// Stats counts jobs by state and the runners online: seen at or after
	// seenSince, or holding a lease that has not expired at now (an agent
	// whose slots are all busy claims nothing, but its heartbeats keep its
	// leases).
	Stats(ctx context.Context, seenSince, now time.Time) (Stats, error)
}

// Tokens stores registration, submit and admin tokens.
type Tokens interface {
	CreateToken(ctx context.Context, t Token) error
	// ListTokens lists every token, oldest first (hashes included; callers
	// must not expose them).
	ListTokens(ctx context.Context) ([]Token, error)
	// RevokeToken marks a token revoked (keeping the first revocation
	// time) and returns it; ErrNotFound if there is none.
	RevokeToken(ctx context.Context, id string, now time.Time) (Token, error)
	// CheckToken verifies a token of kind by id and secret hash (compared in
	// constant time): known, not expired, not revoked, uses left. It does not
	// consume a use (submit tokens).
	CheckToken(ctx context.Context, kind, id string, hash []byte, now time.Time) (Token, error)
}

// RunnerReader reads registered runners.
type RunnerReader interface {
	Runner(ctx context.Context, id string) (Runner, error)
	RunnerByName(ctx context.Context, name string) (Runner, error)
	ListRunners(ctx context.Context) ([]Runner, error)
}

// Runners stores registered agents.
type Runners interface {
	RunnerReader
	// RegisterRunner consumes one use of the registration token and creates
	// the runner in the same transaction.
	RegisterRunner(ctx context.Context, regID string, regHash []byte, r Runner, now time.Time) error
	// RevokeRunner marks the runner revoked and expires the leases of its
	// running jobs (at now) so the reaper re-queues them.
	RevokeRunner(ctx context.Context, id string, now time.Time) (Runner, error)
	// TouchRunner records that the runner was seen at now.
	TouchRunner(ctx context.Context, id string, now time.Time) error
	// ReportClaim records a claim arriving at now: c becomes the runner's
	// LastClaim (with At = now) and the runner is seen at now, in one
	// write. An unknown runner is not an error (nothing is written).
	ReportClaim(ctx context.Context, id string, c ClaimReport, now time.Time) error
	// CloseClaim ends, at now, the claim ReportClaim recorded as open until
	// openUntil (it returned before its wait was over); a later claim that
	// replaced it (another OpenUntil) is left alone.
	CloseClaim(ctx context.Context, id string, openUntil, now time.Time) error
}

// JobReader reads jobs.
type JobReader interface {
	Job(ctx context.Context, id string) (Job, error)
	ListJobs(ctx context.Context, f JobFilter) ([]Job, error)
}

// Queue is the job queue with its leases: every method that changes a job's
// state applies Transition.
type Queue interface {
	JobReader
	// CreateJob stores a queued job. An id already stored (whatever its
	// state) is not replaced: nothing is written and the error matches
	// ErrExists, atomically, so that two coordinators creating the same id
	// at once store one job (a submit retried on another coordinator with
	// its idempotency key).
	CreateJob(ctx context.Context, j Job) error
	// ClaimJobs atomically leases up to max queued jobs whose labels are a
	// subset of the runner's and whose resources fit capacity (nil: any),
	// oldest first (see Fits).
	ClaimJobs(ctx context.Context, r Runner, capacity *api.Resources, max int, ttl time.Duration, now time.Time) ([]Claim, error)
	// ReleaseClaim puts a job just claimed back in the queue without
	// counting the attempt (the claimer's connection was gone).
	ReleaseClaim(ctx context.Context, f Fence) error
	// Heartbeat renews the lease and reports whether cancel was requested.
	Heartbeat(ctx context.Context, f Fence, ttl time.Duration, now time.Time) (Job, error)
	// CheckLease verifies f is the job's current lease.
	CheckLease(ctx context.Context, f Fence) (Job, error)
	// RequestCancel cancels a queued job at once, or flags a running one.
	RequestCancel(ctx context.Context, id string, now time.Time) (Job, error)
	// Finish records the result under the lease. logSize must not exceed
	// the log received (OffsetError otherwise). Repeating the same result is
	// not an error.
	Finish(ctx context.Context, f Fence, state string, exitCode int, reason, class string, logSize int64, now time.Time) (Job, error)
	// ReapExpired re-queues or loses running jobs whose lease ended before
	// now, appending Transition's note to each one's log.
	ReapExpired(ctx context.Context, now time.Time) ([]Reaped, error)
	// ExtendLeases moves every running lease to at least until, so the time
	// the coordinator was down does not count against agents.
	ExtendLeases(ctx context.Context, until time.Time) error
}

// LogReader reads stored job logs.
type LogReader interface {
	// ReadLog returns up to max stored bytes from offset.
	ReadLog(ctx context.Context, jobID string, offset int64, max int) ([]byte, error)
}

// Logs stores each job's log as the agent streams it.
type Logs interface {
	LogReader
	// AppendLog stores data at offset under the lease (idempotent; a gap is
	// an *OffsetError) and returns the next expected offset. Past the
	// store's LogLimits the bytes are acknowledged but not kept.
	AppendLog(ctx context.Context, f Fence, offset int64, data []byte) (int64, error)
}

// EgressReader queries stored egress events.
type EgressReader interface {
	// QueryEgress calls fn for each matching event, as QueryEgressRecords
	// but without the cursor.
	QueryEgress(ctx context.Context, f EgressFilter, fn func(api.EgressEvent) error) error
	// CountEgress counts the events of each of jobIDs with the verdict
	// ("" any); jobs without events are absent from the map.
	CountEgress(ctx context.Context, jobIDs []string, verdict string) (map[string]int, error)
	// QueryEgressRecords calls fn for each matching event with its cursor:
	// with f.After set, the events whose cursor is greater, in cursor
	// order; otherwise oldest first by event time.
	//
	// Every stored event gets a cursor when AddEgress stores it: an
	// integer greater than any cursor handed out before (never reused,
	// not even after the event is purged), and none for an event skipped
	// as already stored. Cursors must become readable in order: once a
	// reader sees cursor N, no event with a smaller cursor may appear
	// later, or a follower resuming after N would miss it.
	QueryEgressRecords(ctx context.Context, f EgressFilter, fn func(api.EgressRecord) error) error
}

// Egress stores the egress events agents report.
type Egress interface {
	EgressReader
	// AddEgress stores events numbered firstSeq.. under the lease, as given
	// (the caller stamps runner and job from the lease); numbers already
	// stored are skipped.
	AddEgress(ctx context.Context, f Fence, firstSeq int64, events []api.EgressEvent) error
}

// ArtifactReader reads artifact metadata.
type ArtifactReader interface {
	ListArtifacts(ctx context.Context, jobID string) ([]Artifact, error)
	Artifact(ctx context.Context, jobID, name string) (Artifact, error)
}

// Artifacts stores artifact metadata (the bytes are blobs, kept outside the
// store under their sha256).
type Artifacts interface {
	ArtifactReader
	// AddArtifact records an artifact under the lease (replacing one of the
	// same name).
	AddArtifact(ctx context.Context, f Fence, a Artifact) error
}

// Retention deletes what is old and tells the blob collector what is still
// referenced.
type Retention interface {
	// PurgeFinished deletes up to limit jobs that ended before before
	// (succeeded, failed, canceled or lost), with their log, egress events
	// and artifact records, and returns their ids. Queued and running jobs
	// are never purged.
	PurgeFinished(ctx context.Context, before time.Time, limit int) ([]string, error)
	// BlobRefs returns the sha256 of every source and artifact a job in
	// the store still refers to.
	BlobRefs(ctx context.Context) (map[string]bool, error)
}

// Blob is a stored blob opened for reading: it seeks (HTTP range requests
// and http.ServeContent) and knows its size.
type Blob interface {
	io.ReadSeekCloser
	Size() int64
}

// Blobs stores content-addressed bytes (uploaded sources, artifacts) under
// their hex sha256. A backend streams them in and out (never whole in
// memory), so a 1 GiB artifact costs the coordinator a constant amount of
// memory whichever backend holds it.
type Blobs interface {
	// PutBlob stores r, at most limit bytes (more is api.ErrTooLarge), and
	// returns its sha256 and size; a non-empty want that differs from the
	// digest received is an api.ErrInvalid error and stores nothing.
	// Storing a blob that is already there is not an error.
	PutBlob(ctx context.Context, r io.Reader, limit int64, want string) (digest string, size int64, err error)
	// OpenBlob opens a stored blob (ErrNotFound if there is none).
	OpenBlob(ctx context.Context, digest string) (Blob, error)
	// SweepBlobs removes stored blobs (and abandoned partial uploads) that
	// keep does not name, when stored before olderThan: a source is stored
	// before the job that refers to it exists.
	SweepBlobs(ctx context.Context, keep map[string]bool, olderThan time.Time) (removed int, bytes int64, err error)
}

// Change keys published through Changes.
const (
	// ChangeQueue: a job was queued (submitted or re-queued); dispatchers
	// look for work.
	ChangeQueue = "queue"
	// ChangeAll: notifications may have been lost (a listener
	// reconnected); every waiter re-reads its state.
	ChangeAll = "*"
)

// ChangeLog and ChangeJob are the keys of one job's log and state.
func ChangeLog(jobID string) string { return "log:" + jobID }
func ChangeJob(jobID string) string { return "job:" + jobID }

// Changes carries wake-ups between the coordinators that share a store: a
// coordinator publishes the key of what it changed, and every coordinator
// on the store (itself included) receives it, so a long-poll or a log
// follow on coordinator B wakes for a submit or a log append on A.
// Delivery is a hint, not the data: a receiver re-reads the store, and a
// backend that may have lost notifications delivers ChangeAll.
type Changes interface {
	// Publish announces that key changed.
	Publish(ctx context.Context, key string) error
	// Listen calls fn for each key published (by any coordinator) until
	// ctx ends; fn must not block. It returns ctx's error, or an error if
	// it cannot listen at all.
	Listen(ctx context.Context, fn func(key string)) error
}

// Store is the coordinator's whole state, what a backend implements. All
// methods are safe for concurrent use.
type Store interface {
	Health
	Tokens
	Runners
	Queue
	Logs
	Egress
	Artifacts
	Retention
	Blobs
	Changes
	Close() error
}
