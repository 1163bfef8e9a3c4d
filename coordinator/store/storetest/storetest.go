// Package storetest owns the store conformance suite: the behaviour every
// store.Store backend must show (tokens, runners, claims with labels and
// capacity, fencing, lease expiry, cancel, logs with offsets and the
// truncation marker, egress with cursors, artifacts and blob references,
// retention), run against a real backend with Run. A backend's own tests
// keep only what is its own (schema migrations, query plans).
package storetest

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/cleanroom-ci/cleanroom/api"
	"github.com/cleanroom-ci/cleanroom/coordinator/store"
)

// LogLimits are the log limits the store under test must be opened with,
// small enough to test the truncation marker.
var LogLimits = store.LogLimits{MaxBytes: 256, Marker: "\n[log truncated]\n"}

// T0 is the suite's clock origin: every decision by time is made at T0 plus
// some offset, passed as now.
var T0 = time.Date(2026, 3, 4, 5, 6, 7, 0, time.UTC)

// TTL is the lease length the suite claims with.
const TTL = time.Minute

// Run runs the conformance suite on a backend that opens one handle per
// database (RunBackend has the cross-handle tests).
func Run(t *testing.T, open func(t *testing.T) store.Store) {
	RunBackend(t, Backend{Open: open})
}

// Backend is a store backend under test.
type Backend struct {
	// Open must return a new, empty store opened with LogLimits, and close
	// it when the test ends (t.Cleanup); a second Close must be harmless.
	Open func(t *testing.T) store.Store
	// OpenAgain opens a second handle on the database of a store Open
	// returned (a second coordinator on the same database), closed when
	// the test ends. Nil skips the tests that need one, with
	// NoSecondHandle as the reason.
	OpenAgain      func(t *testing.T, first store.Store) store.Store
	NoSecondHandle string
}

// RunBackend runs the conformance suite.
func RunBackend(t *testing.T, b Backend) {
	open := b.Open
	for _, tc := range []struct {
		name string
		fn   func(*testing.T, store.Store)
	}{
		{"ReadyUntilClosed", testReadyUntilClosed},
		{"Tokens", testTokens},
		{"Runners", testRunners},
		{"ClaimReportsAreTheRunnersLastClaim", testClaimReports},
		{"CreateJobRefusesATakenIDEvenConcurrently", testCreateJobExists},
		{"ClaimMatchesLabelsAndCapacityOldestFirst", testClaimMatches},
		{"ClaimIsAtomicUnderConcurrentClaimers", testClaimAtomic},
		{"StaleFencesAreRefused", testFencing},
		{"ReleaseClaimDoesNotCountTheAttempt", testReleaseClaim},
		{"LeaseExpiryRequeuesThenLoses", testLeaseExpiry},
		{"RevokedRunnersLeasesExpireNow", testRevokeRunner},
		{"ExtendLeasesMovesOnlyEarlierEnds", testExtendLeases},
		{"Cancel", testCancel},
		{"FinishChecksTheLogAndIsRetryable", testFinish},
		{"StatsCountsJobsByStateAndRunnersOnline", testStats},
		{"ListJobsFiltersByRunnerAndPages", testListJobs},
		{"LogAppendIsIdempotentByOffset", testLogAppend},
		{"LogTruncatesOnceAtTheCap", testLogTruncation},
		{"EgressRetriesAreNotRenumbered", testEgressRetries},
		{"EgressCursorsIncreaseAndAreNeverReused", testEgressCursors},
		{"EgressReaderAfterCursorMissesNothingUnderConcurrentWriters", testEgressConcurrentReader},
		{"EgressAfterCursorKeepsFilters", testEgressCursorFilters},
		{"QueryEgressMatchesRuleDestinationDomainAndPages", testQueryEgress},
		{"ArtifactsAndBlobRefs", testArtifacts},
		{"PurgeFinishedDeletesOnlyOldFinishedJobs", testPurge},
		{"BlobPutOpenAndRepeat", testBlobPut},
		{"BlobRefusesMismatchAndTooLarge", testBlobRefused},
		{"BlobSeeksAcrossChunks", testBlobSeek},
		{"BlobSweepRespectsKeepAndAge", testBlobSweep},
		{"ChangesReachListenersOnTheSameHandle", testChangesSameHandle},
	} {
		t.Run(tc.name, func(t *testing.T) { tc.fn(t, open(t)) })
	}
	t.Run("ChangesReachAnotherHandleOnTheSameDatabase", func(t *testing.T) {
		if b.OpenAgain == nil {
			t.Skip(b.NoSecondHandle)
		}
		first := open(t)
		testChangesAcrossHandles(t, first, b.OpenAgain(t, first))
	})
}

var ctx = context.Background()

func at(d time.Duration) time.Time { return T0.Add(d) }

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// newJob is a queued job with id, created at T0.
func newJob(id string) store.Job {
	return store.Job{Job: api.Job{ID: id, MaxAttempts: 3, CreatedAt: T0, Spec: api.JobSpec{Build: api.Build{Script: "x"}}}}
}

func createJobs(t *testing.T, s store.Store, jobs ...store.Job) {
	t.Helper()
	for _, j := range jobs {
		must(t, s.CreateJob(ctx, j))
	}
}

func runner(id string) store.Runner { return store.Runner{Runner: api.Runner{ID: id}} }

// claim claims up to n jobs for runner id at now.
func claim(t *testing.T, s store.Store, id string, n int, now time.Time) []store.Claim {
	t.Helper()
	cs, err := s.ClaimJobs(ctx, runner(id), nil, n, TTL, now)
	must(t, err)
	return cs
}

func fence(c store.Claim) store.Fence {
	return store.Fence{JobID: c.Job.ID, RunnerID: c.Job.RunnerID, Token: c.Token}
}

// runningJob creates job id and claims it for runner r at T0.
func runningJob(t *testing.T, s store.Store, id string) store.Fence {
	t.Helper()
	createJobs(t, s, newJob(id))
	cs := claim(t, s, "r", 1, T0)
	if len(cs) != 1 || cs[0].Job.ID != id {
		t.Fatalf("claiming %s: %+v", id, cs)
	}
	return fence(cs[0])
}

func job(t *testing.T, s store.Store, id string) store.Job {
	t.Helper()
	j, err := s.Job(ctx, id)
	must(t, err)
	return j
}

func readLog(t *testing.T, s store.Store, id string) string {
	t.Helper()
	b, err := s.ReadLog(ctx, id, 0, 1<<20)
	must(t, err)
	return string(b)
}

func events(n int, tag string) []api.EgressEvent {
	evs := make([]api.EgressEvent, n)
	for i := range evs {
		evs[i] = api.EgressEvent{Time: T0.Add(time.Duration(i) * time.Millisecond), Proto: "tcp", Dst: fmt.Sprintf("%s:%d", tag, i), Verdict: api.VerdictDeny}
	}
	return evs
}

func records(t *testing.T, s store.Store, f store.EgressFilter) []api.EgressRecord {
	t.Helper()
	var out []api.EgressRecord
	must(t, s.QueryEgressRecords(ctx, f, func(r api.EgressRecord) error { out = append(out, r); return nil }))
	return out
}

func after(n int64) store.EgressFilter {
	return store.EgressFilter{EgressFilter: api.EgressFilter{After: &n}}
}
