package store

import (
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/cleanroom-ci/cleanroom/api"
)

var (
	t0  = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	ttl = time.Minute
)

func tp(t time.Time) *time.Time { return &t }
func ip(n int) *int             { return &n }

func queued() Job {
	return Job{Job: api.Job{ID: "j", State: api.StateQueued, MaxAttempts: 3, CreatedAt: t0}}
}

// running is a job on runner r with token 2 after attempt 1 of 3, its lease
// ending at t0+ttl, with 10 bytes of log.
func running() Job {
	j := queued()
	j.State, j.RunnerID, j.Attempts, j.StartedAt = api.StateRunning, "r", 1, tp(t0)
	j.LeaseToken, j.LeaseExpires, j.LogOffset = 2, t0.Add(ttl), 10
	return j
}

func with(j Job, f func(*Job)) Job { f(&j); return j }

var lease = Fence{JobID: "j", RunnerID: "r", Token: 2}

func TestTransition(t *testing.T) {
	later := t0.Add(2 * ttl)
	type want struct {
		job     Job
		changed bool
		note    string // substring of Effect.Note
		err     error  // errors.Is target
	}
	unchanged := func(j Job) want { return want{job: j} }
	cases := []struct {
		name string
		job  Job
		ev   Event
		want want
	}{
		// claim
		{"claim leases a queued job with a new token and one more attempt", queued(),
			Event{Kind: EventClaim, Fence: Fence{RunnerID: "r2"}, Now: t0, TTL: ttl},
			want{job: with(queued(), func(j *Job) {
				j.State, j.RunnerID, j.LeaseToken, j.Attempts = api.StateRunning, "r2", 1, 1
				j.LeaseExpires, j.StartedAt = t0.Add(ttl), tp(t0)
			}), changed: true}},
		{"claim after a re-queue bumps the token and clears the reason", with(queued(), func(j *Job) {
			j.LeaseToken, j.Attempts, j.Reason = 4, 1, "lease expired"
		}), Event{Kind: EventClaim, Fence: Fence{RunnerID: "r"}, Now: later, TTL: ttl},
			want{job: with(queued(), func(j *Job) {
				j.State, j.RunnerID, j.LeaseToken, j.Attempts = api.StateRunning, "r", 5, 2
				j.LeaseExpires, j.StartedAt = later.Add(ttl), tp(later)
			}), changed: true}},
		{"claim of a running job is refused", running(), Event{Kind: EventClaim, Fence: Fence{RunnerID: "r2"}, Now: t0, TTL: ttl},
			want{job: running(), err: ErrConflict}},
		{"claim of a canceled job is refused", with(queued(), func(j *Job) { j.State = api.StateCanceled }),
			Event{Kind: EventClaim, Now: t0}, want{job: with(queued(), func(j *Job) { j.State = api.StateCanceled }), err: ErrConflict}},

		// release
		{"release re-queues without counting the attempt", running(), Event{Kind: EventRelease, Fence: lease},
			want{job: with(running(), func(j *Job) {
				j.State, j.RunnerID, j.LeaseExpires, j.Attempts = api.StateQueued, "", time.Time{}, 0
			}), changed: true}},
		{"release with a stale token is refused", running(), Event{Kind: EventRelease, Fence: Fence{JobID: "j", RunnerID: "r", Token: 1}},
			want{job: running(), err: ErrStaleLease}},

		// heartbeat
		{"heartbeat renews the lease from now", running(), Event{Kind: EventHeartbeat, Fence: lease, Now: later, TTL: ttl},
			want{job: with(running(), func(j *Job) { j.LeaseExpires = later.Add(ttl) }), changed: true}},
		{"heartbeat after expiry but before the reaper still renews", running(), Event{Kind: EventHeartbeat, Fence: lease, Now: later.Add(time.Hour), TTL: ttl},
			want{job: with(running(), func(j *Job) { j.LeaseExpires = later.Add(time.Hour + ttl) }), changed: true}},
		{"heartbeat with an old token is refused", running(), Event{Kind: EventHeartbeat, Fence: Fence{JobID: "j", RunnerID: "r", Token: 1}, Now: t0, TTL: ttl},
			want{job: running(), err: ErrStaleLease}},
		{"heartbeat from another runner is refused", running(), Event{Kind: EventHeartbeat, Fence: Fence{JobID: "j", RunnerID: "x", Token: 2}, Now: t0, TTL: ttl},
			want{job: running(), err: ErrStaleLease}},
		{"heartbeat of a queued job is refused", queued(), Event{Kind: EventHeartbeat, Fence: Fence{JobID: "j", RunnerID: "", Token: 0}, Now: t0, TTL: ttl},
			want{job: queued(), err: ErrStaleLease}},

		// finish
		{"finish records the result and ends the lease", running(),
			Event{Kind: EventFinish, Fence: lease, Now: later, Result: Result{State: api.StateFailed, ExitCode: 2, Reason: "exit 2", LogSize: 10}},
			want{job: with(running(), func(j *Job) {
				j.State, j.ExitCode, j.Reason, j.FinishedAt, j.LeaseExpires = api.StateFailed, ip(2), "exit 2", tp(later), time.Time{}
			}), changed: true}},
		{"finish with a log shorter than received is accepted", running(),
			Event{Kind: EventFinish, Fence: lease, Now: later, Result: Result{State: api.StateSucceeded, LogSize: 3}},
			want{job: with(running(), func(j *Job) {
				j.State, j.ExitCode, j.FinishedAt, j.LeaseExpires = api.StateSucceeded, ip(0), tp(later), time.Time{}
			}), changed: true}},
		{"finish with more log than received is an offset error", running(),
			Event{Kind: EventFinish, Fence: lease, Now: later, Result: Result{State: api.StateSucceeded, LogSize: 11}},
			want{job: running(), err: ErrConflict}},
		{"finish under a stale token is refused", running(),
			Event{Kind: EventFinish, Fence: Fence{JobID: "j", RunnerID: "r", Token: 1}, Now: later, Result: Result{State: api.StateSucceeded}},
			want{job: running(), err: ErrStaleLease}},
		{"a retried identical result is no change", with(running(), func(j *Job) { j.State = api.StateSucceeded }),
			Event{Kind: EventFinish, Fence: lease, Now: later, Result: Result{State: api.StateSucceeded}},
			unchanged(with(running(), func(j *Job) { j.State = api.StateSucceeded }))},
		{"a different result for a finished job conflicts", with(running(), func(j *Job) { j.State = api.StateSucceeded }),
			Event{Kind: EventFinish, Fence: lease, Now: later, Result: Result{State: api.StateFailed}},
			want{job: with(running(), func(j *Job) { j.State = api.StateSucceeded }), err: ErrConflict}},
		{"a result for a job lost under an older lease is stale", with(running(), func(j *Job) { j.State, j.LeaseToken = api.StateLost, 3 }),
			Event{Kind: EventFinish, Fence: lease, Now: later, Result: Result{State: api.StateLost}},
			want{job: with(running(), func(j *Job) { j.State, j.LeaseToken = api.StateLost, 3 }), err: ErrStaleLease}},

		// cancel
		{"cancel of a queued job ends it at once", queued(), Event{Kind: EventCancel, Now: later},
			want{job: with(queued(), func(j *Job) {
				j.State, j.Cancel, j.FinishedAt, j.Reason = api.StateCanceled, true, tp(later), "canceled before it started"
			}), changed: true}},
		{"cancel of a running job flags it", running(), Event{Kind: EventCancel, Now: later},
			want{job: with(running(), func(j *Job) { j.Cancel = true }), changed: true}},
		{"a second cancel of a running job is no change", with(running(), func(j *Job) { j.Cancel = true }), Event{Kind: EventCancel, Now: later},
			unchanged(with(running(), func(j *Job) { j.Cancel = true }))},
		{"cancel of a finished job is no change", with(running(), func(j *Job) { j.State = api.StateSucceeded }), Event{Kind: EventCancel, Now: later},
			unchanged(with(running(), func(j *Job) { j.State = api.StateSucceeded }))},

		// lease expiry
		{"an expired lease with attempts left re-queues", running(), Event{Kind: EventExpire, Now: later},
			want{job: with(running(), func(j *Job) {
				j.State, j.RunnerID, j.LeaseExpires = api.StateQueued, "", time.Time{}
				j.Reason = "lease expired on runner r; re-queued (attempt 1 of 3 done)"
			}), changed: true, note: "[cleanroom: lease expired on runner r; re-queued (attempt 1 of 3 done)]"}},
		{"an expired lease on the last attempt is lost", with(running(), func(j *Job) { j.Attempts = 3 }), Event{Kind: EventExpire, Now: later},
			want{job: with(running(), func(j *Job) {
				j.Attempts, j.State, j.FinishedAt, j.LeaseExpires = 3, api.StateLost, tp(later), time.Time{}
				j.Reason = "lease expired on runner r after 3 of 3 attempts"
			}), changed: true, note: "after 3 of 3 attempts"}},
		{"an expired lease of a job asked to cancel is canceled", with(running(), func(j *Job) { j.Cancel = true }), Event{Kind: EventExpire, Now: later},
			want{job: with(running(), func(j *Job) {
				j.Cancel, j.State, j.FinishedAt, j.LeaseExpires = true, api.StateCanceled, tp(later), time.Time{}
				j.Reason = "canceled; runner r stopped renewing its lease"
			}), changed: true, note: "stopped renewing"}},
		{"a lease ending exactly now has not expired", running(), Event{Kind: EventExpire, Now: t0.Add(ttl)},
			want{job: running(), err: ErrConflict}},
		{"a queued job has no lease to expire", queued(), Event{Kind: EventExpire, Now: later},
			want{job: queued(), err: ErrConflict}},

		// extend and revoke
		{"extend moves an earlier lease end", running(), Event{Kind: EventExtend, Now: later},
			want{job: with(running(), func(j *Job) { j.LeaseExpires = later }), changed: true}},
		{"extend keeps a later lease end", running(), Event{Kind: EventExtend, Now: t0},
			unchanged(running())},
		{"revoke ends the lease just before now", running(), Event{Kind: EventRevoke, Now: t0},
			want{job: with(running(), func(j *Job) { j.LeaseExpires = t0.Add(-time.Nanosecond) }), changed: true}},
		{"revoke leaves a queued job alone", queued(), Event{Kind: EventRevoke, Now: t0}, unchanged(queued())},

		{"an unknown event is refused", running(), Event{Kind: 99}, want{job: running(), err: ErrConflict}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before := tc.job
			got, eff, err := Transition(tc.job, tc.ev)
			if tc.want.err != nil {
				if !errors.Is(err, tc.want.err) {
					t.Fatalf("error = %v, want %v", err, tc.want.err)
				}
				if eff.Changed {
					t.Errorf("an error reports a change")
				}
				return
			}
			if err != nil {
				t.Fatalf("error = %v", err)
			}
			if eff.Changed != tc.want.changed {
				t.Errorf("changed = %v, want %v", eff.Changed, tc.want.changed)
			}
			if !strings.Contains(eff.Note, tc.want.note) || (tc.want.note == "") != (eff.Note == "") {
				t.Errorf("note = %q, want it to contain %q", eff.Note, tc.want.note)
			}
			if !reflect.DeepEqual(got, tc.want.job) {
				t.Errorf("job =\n%+v\nwant\n%+v", got, tc.want.job)
			}
			if !reflect.DeepEqual(tc.job, before) {
				t.Errorf("Transition changed its input")
			}
		})
	}
}

func TestTransitionOffsetErrorSaysWhatWasReceived(t *testing.T) {
	_, _, err := Transition(running(), Event{Kind: EventFinish, Fence: lease, Now: t0, Result: Result{State: api.StateSucceeded, LogSize: 99}})
	var oe *OffsetError
	if !errors.As(err, &oe) || oe.Expected != 10 {
		t.Fatalf("error = %v, want an OffsetError expecting 10", err)
	}
}

// TestTransitionNeverLetsAStaleFenceWrite runs every fenced event with every
// wrong fence against every state: none may change the job.
func TestTransitionNeverLetsAStaleFenceWrite(t *testing.T) {
	bad := []Fence{{JobID: "j", RunnerID: "r", Token: 1}, {JobID: "j", RunnerID: "r", Token: 3}, {JobID: "j", RunnerID: "x", Token: 2}}
	for _, state := range []string{api.StateQueued, api.StateRunning, api.StateSucceeded, api.StateFailed, api.StateCanceled, api.StateLost} {
		for _, kind := range []EventKind{EventRelease, EventHeartbeat, EventFinish} {
			for _, f := range bad {
				j := with(running(), func(j *Job) { j.State = state })
				got, eff, err := Transition(j, Event{Kind: kind, Fence: f, Now: t0.Add(time.Hour), TTL: ttl, Result: Result{State: api.StateSucceeded}})
				if err == nil || eff.Changed || !reflect.DeepEqual(got, j) {
					t.Errorf("%s of a %s job with fence %+v: err %v, changed %v", kind, state, f, err, eff.Changed)
				}
			}
		}
	}
}

func TestFits(t *testing.T) {
	capacity := &api.Resources{CPUs: 2}
	cases := []struct {
		name      string
		labels    map[string]string
		capacity  *api.Resources
		jobLabels map[string]string
		res       api.Resources
		want      bool
	}{
		{"no labels fit anyone", map[string]string{"os": "linux"}, nil, nil, api.Resources{}, true},
		{"a subset of the runner's labels fits", map[string]string{"os": "linux", "arch": "arm64"}, nil, map[string]string{"arch": "arm64"}, api.Resources{}, true},
		{"a missing label does not fit", map[string]string{"os": "linux"}, nil, map[string]string{"arch": "arm64"}, api.Resources{}, false},
		{"a different value does not fit", map[string]string{"arch": "amd64"}, nil, map[string]string{"arch": "arm64"}, api.Resources{}, false},
		{"resources within capacity fit", nil, capacity, nil, api.Resources{CPUs: 2}, true},
		{"resources over capacity do not fit", nil, capacity, nil, api.Resources{CPUs: 3}, false},
		{"no capacity takes any size", nil, nil, nil, api.Resources{CPUs: 64}, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := Fits(tc.labels, tc.capacity, tc.jobLabels, tc.res); got != tc.want {
				t.Errorf("Fits = %v, want %v", got, tc.want)
			}
		})
	}
}
