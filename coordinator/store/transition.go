package store

import (
	"crypto/subtle"
	"fmt"
	"time"

	"github.com/cleanroom-ci/cleanroom/api"
)

// EventKind is what happens to a job's lease.
type EventKind int

// The events of a job's life. Each names the Queue method that applies it.
const (
	// EventClaim leases a queued job to Event.Fence.RunnerID (ClaimJobs):
	// a new fencing token, one more attempt, lease until Now+TTL.
	EventClaim EventKind = iota + 1
	// EventRelease undoes a claim whose answer never reached the runner
	// (ReleaseClaim): queued again, the attempt not counted.
	EventRelease
	// EventHeartbeat renews the lease until Now+TTL (Heartbeat).
	EventHeartbeat
	// EventFinish records the runner's result (Finish).
	EventFinish
	// EventCancel cancels a queued job or flags a running one
	// (RequestCancel).
	EventCancel
	// EventExpire ends a lease that expired before Now (ReapExpired):
	// canceled if cancel was requested, lost after the last attempt,
	// otherwise queued again.
	EventExpire
	// EventExtend moves an earlier lease end to Now (ExtendLeases).
	EventExtend
	// EventRevoke ends the lease of a revoked runner's job at once
	// (RevokeRunner), so the next reap at or after Now takes it.
	EventRevoke
)

func (k EventKind) String() string {
	switch k {
	case EventClaim:
		return "claim"
	case EventRelease:
		return "release"
	case EventHeartbeat:
		return "heartbeat"
	case EventFinish:
		return "finish"
	case EventCancel:
		return "cancel"
	case EventExpire:
		return "expire"
	case EventExtend:
		return "extend"
	case EventRevoke:
		return "revoke"
	}
	return fmt.Sprintf("event(%d)", int(k))
}

// Event is one input to Transition.
type Event struct {
	Kind EventKind
	// Fence is the lease the caller presents (release, heartbeat, finish);
	// for a claim only RunnerID, the claimer.
	Fence Fence
	// Now is the coordinator's clock; TTL the lease length (claim,
	// heartbeat).
	Now time.Time
	TTL time.Duration
	// Result is the outcome reported by Finish.
	Result Result
}

// Result is what a runner reports at the end of a job.
type Result struct {
	State    string
	ExitCode int
	Reason   string
	// Class is the failure class of a failed result (api.FailureClass*).
	Class string
	// LogSize is how much log the runner sent; more than the store
	// received is an *OffsetError.
	LogSize int64
}

// Effect says what a backend must write after Transition.
type Effect struct {
	// Changed is false when the job stays as it was (a retried result, a
	// cancel of a finished job): nothing to write.
	Changed bool
	// Note, when set, is appended to the job's log (ReapExpired's line).
	Note string
}

// CheckFence verifies that f is j's current lease: running, on f's runner,
// with f's token (ErrStaleLease otherwise). It does not look at the lease's
// end: an expired lease stays valid until the reaper takes the job.
func CheckFence(j Job, f Fence) error {
	if j.State != api.StateRunning || j.RunnerID != f.RunnerID || j.LeaseToken != f.Token {
		return fmt.Errorf("checking lease of job %s (token %d, current %d, state %s): %w",
			f.JobID, f.Token, j.LeaseToken, j.State, ErrStaleLease)
	}
	return nil
}

// Fits reports whether a runner with labels and capacity (nil: any) may
// claim a job with jobLabels and resources: every job label is the
// runner's, and no resource exceeds the capacity.
func Fits(labels map[string]string, capacity *api.Resources, jobLabels map[string]string, resources api.Resources) bool {
	for k, v := range jobLabels {
		if rv, ok := labels[k]; !ok || rv != v {
			return false
		}
	}
	return capacity == nil || len(resources.Over(*capacity)) == 0
}

// Transition is the job state machine: given a job as stored and an event,
// it returns the job as it must be stored next, or the error the caller
// gets (ErrStaleLease for a fence that is not the current lease,
// ErrConflict for an event the state refuses, *OffsetError for a result
// past the received log). It reads no clock and no database; backends load
// the job, call it and write the fields it changed (state, runner, lease
// token and end, attempts, cancel flag, start, finish, exit code, reason)
// in the same transaction, conditional on the state and lease token they
// read.
func Transition(j Job, ev Event) (Job, Effect, error) {
	changed := Effect{Changed: true}
	switch ev.Kind {
	case EventClaim:
		if j.State != api.StateQueued {
			return j, Effect{}, fmt.Errorf("claiming job %s: %s: %w", j.ID, j.State, ErrConflict)
		}
		now := ev.Now.UTC()
		j.State = api.StateRunning
		j.RunnerID = ev.Fence.RunnerID
		j.LeaseToken++
		j.LeaseExpires = ev.Now.Add(ev.TTL).UTC()
		j.Attempts++
		j.StartedAt = &now
		j.Reason = ""
		return j, changed, nil

	case EventRelease:
		if err := CheckFence(j, ev.Fence); err != nil {
			return j, Effect{}, err
		}
		j.State = api.StateQueued
		j.RunnerID = ""
		j.LeaseExpires = time.Time{}
		j.Attempts--
		return j, changed, nil

	case EventHeartbeat:
		if err := CheckFence(j, ev.Fence); err != nil {
			return j, Effect{}, err
		}
		j.LeaseExpires = ev.Now.Add(ev.TTL).UTC()
		return j, changed, nil

	case EventFinish:
		f, r := ev.Fence, ev.Result
		if api.Terminal(j.State) && j.RunnerID == f.RunnerID && j.LeaseToken == f.Token {
			if j.State == r.State {
				return j, Effect{}, nil // a retried result
			}
			return j, Effect{}, fmt.Errorf("finishing job %s: already %s: %w", j.ID, j.State, ErrConflict)
		}
		if err := CheckFence(j, f); err != nil {
			return j, Effect{}, err
		}
		if r.LogSize > j.LogOffset {
			return j, Effect{}, &OffsetError{Expected: j.LogOffset}
		}
		j = finish(j, r.State, r.Reason, &r.ExitCode, ev.Now)
		j.FailureClass = r.Class
		return j, changed, nil

	case EventCancel:
		switch j.State {
		case api.StateQueued:
			j.Cancel = true
			return finish(j, api.StateCanceled, "canceled before it started", j.ExitCode, ev.Now), changed, nil
		case api.StateRunning:
			if j.Cancel {
				return j, Effect{}, nil
			}
			j.Cancel = true
			return j, changed, nil
		}
		return j, Effect{}, nil

	case EventExpire:
		if j.State != api.StateRunning || !j.LeaseExpires.Before(ev.Now) {
			return j, Effect{}, fmt.Errorf("expiring lease of job %s: %s until %s: %w", j.ID, j.State, j.LeaseExpires, ErrConflict)
		}
		var state, reason string
		switch {
		case j.Cancel:
			state, reason = api.StateCanceled, fmt.Sprintf("canceled; runner %s stopped renewing its lease", j.RunnerID)
		case j.Attempts >= j.MaxAttempts:
			state, reason = api.StateLost, fmt.Sprintf("lease expired on runner %s after %d of %d attempts", j.RunnerID, j.Attempts, j.MaxAttempts)
		default:
			state, reason = api.StateQueued, fmt.Sprintf("lease expired on runner %s; re-queued (attempt %d of %d done)", j.RunnerID, j.Attempts, j.MaxAttempts)
		}
		note := "\n" + api.Record("[cleanroom: "+reason+"]")
		if api.Terminal(state) {
			return finish(j, state, reason, j.ExitCode, ev.Now), Effect{Changed: true, Note: note}, nil
		}
		j.State, j.Reason, j.RunnerID, j.LeaseExpires = state, reason, "", time.Time{}
		return j, Effect{Changed: true, Note: note}, nil

	case EventExtend:
		if j.State != api.StateRunning || !j.LeaseExpires.Before(ev.Now) {
			return j, Effect{}, nil
		}
		j.LeaseExpires = ev.Now.UTC()
		return j, changed, nil

	case EventRevoke:
		if j.State != api.StateRunning {
			return j, Effect{}, nil
		}
		j.LeaseExpires = ev.Now.Add(-time.Nanosecond).UTC()
		return j, changed, nil
	}
	return j, Effect{}, fmt.Errorf("applying %s to job %s: unknown event: %w", ev.Kind, j.ID, ErrConflict)
}

// finish ends j in a terminal state at now; the runner stays recorded, the
// lease ends.
func finish(j Job, state, reason string, exitCode *int, now time.Time) Job {
	t := now.UTC()
	j.State, j.Reason, j.ExitCode, j.FinishedAt = state, reason, exitCode, &t
	j.LeaseExpires = time.Time{}
	return j
}

// CheckToken decides whether t, the stored token with id, admits a request
// presenting hash as a token of kind at now: the secret matches (compared
// in constant time), the kind is right, and it is not revoked, expired or
// used up (ErrTokenInvalid otherwise). Backends load the token and ask.
func CheckToken(t Token, kind, id string, hash []byte, now time.Time) error {
	switch {
	case subtle.ConstantTimeCompare(t.Hash, hash) != 1:
		return fmt.Errorf("checking token %s: wrong secret: %w", id, ErrTokenInvalid)
	case t.Kind != kind:
		return fmt.Errorf("checking token %s: a %s token, not %s: %w", id, t.Kind, kind, ErrTokenInvalid)
	case t.RevokedAt != nil:
		return fmt.Errorf("checking token %s: revoked: %w", id, ErrTokenInvalid)
	case t.ExpiresAt != nil && !now.Before(*t.ExpiresAt):
		return fmt.Errorf("checking token %s: expired: %w", id, ErrTokenInvalid)
	case t.UsesLeft != nil && *t.UsesLeft <= 0:
		return fmt.Errorf("checking token %s: used up: %w", id, ErrTokenInvalid)
	}
	return nil
}
