package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/cleanroom-ci/cleanroom/api"
)

// followOpts say how `submit --wait` and `logs -f` wait for a job.
type followOpts struct {
	json bool // the log to stderr, one result object to stdout
	raw  bool
	// retryFor bounds how long an unreachable coordinator is retried.
	retryFor time.Duration
	// waitTimeout bounds the whole wait (0: until the job ends).
	waitTimeout time.Duration
	// poll is how often a queued job's state is read (tests shorten it).
	poll time.Duration
}

func (o *followOpts) addFlags(cmd *cobra.Command) {
	f := cmd.Flags()
	f.DurationVar(&o.retryFor, "retry-for", 5*time.Minute, "with --wait/-f: how long to keep retrying an unreachable coordinator before giving up (exit 69)")
	f.DurationVar(&o.waitTimeout, "wait-timeout", 0, "with --wait/-f: give up waiting after this long (exit 75; the job goes on); 0: wait until it ends")
}

// result is the one JSON object `submit --wait --json` prints.
type result struct {
	ID       string `json:"id"`
	State    string `json:"state"`
	ExitCode *int   `json:"exit_code"`
	Reason   string `json:"reason,omitempty"`
	// FailureClass is the job's api.Job.FailureClass: "build" when the
	// exit code is the build's own.
	FailureClass string         `json:"failure_class,omitempty"`
	Artifacts    []api.Artifact `json:"artifacts"`
	// CleanroomExit is the exit code of the command (docs/cli.md).
	CleanroomExit int    `json:"cleanroom_exit"`
	Error         string `json:"error,omitempty"`
}

// followAndExit prints the job's log as it grows (to stdout, or stderr with
// o.json), says on stderr why it is still queued, retries an unreachable
// coordinator with backoff for o.retryFor, and turns the job's end into an
// exit code (jobExit).
func followAndExit(ctx context.Context, cl *api.Client, id string, o followOpts) error {
	out := os.Stdout
	if o.json {
		out = os.Stderr
	}
	w, done := logWriter(o.raw, out)
	defer done()
	j, err := follow(ctx, cl, id, o, w)
	if derr := done(); err == nil && derr != nil {
		err = fmt.Errorf("printing log of %s: %w", id, derr)
	}
	if err == nil {
		err = jobExit(j)
	}
	if o.json {
		res := result{ID: id, State: j.State, ExitCode: j.ExitCode, Reason: j.Reason, FailureClass: j.FailureClass, Artifacts: []api.Artifact{}, CleanroomExit: exitCode(err)}
		if err != nil {
			res.Error = err.Error()
		}
		if api.Terminal(j.State) {
			actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
			if arts, aerr := cl.ListArtifacts(actx, id); aerr == nil {
				res.Artifacts = arts
			}
			cancel()
		}
		if perr := printJSON(res); perr != nil && err == nil {
			err = perr
		}
	}
	return err
}

// follow streams the log until the job ends and returns it: the last state
// read, and an error if following stopped before the end.
func follow(ctx context.Context, cl *api.Client, id string, o followOpts, w io.Writer) (api.Job, error) {
	if o.waitTimeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, o.waitTimeout)
		defer cancel()
	}
	poll := o.poll
	if poll <= 0 {
		poll = time.Second
	}
	j := api.Job{ID: id}
	var off int64
	var said string
	var down time.Time // when the coordinator stopped answering
	delay := time.Duration(0)
	retry := func(err error) error {
		if !api.Retryable(err) || ctx.Err() != nil {
			return err
		}
		if down.IsZero() {
			down = time.Now()
			delay = time.Second
		} else {
			delay = min(2*delay, 15*time.Second)
		}
		if time.Since(down) >= o.retryFor {
			return withExit(exitUnreachable, fmt.Errorf("coordinator unreachable for %s, giving up (--retry-for %s); job %s goes on: %w",
				time.Since(down).Round(time.Second), o.retryFor, id, err))
		}
		fmt.Fprintf(os.Stderr, "cleanroom: coordinator unreachable (%v); retrying in %s\n", err, delay)
		return nil
	}
	for {
		if delay > 0 {
			if err := sleepCtx(ctx, delay); err != nil {
				return j, waitErr(ctx, j, o)
			}
		}
		got, err := cl.GetJob(ctx, id)
		if err != nil {
			if ctx.Err() != nil {
				return j, waitErr(ctx, j, o)
			}
			if err := retry(err); err != nil {
				return j, err
			}
			continue
		}
		if !down.IsZero() {
			fmt.Fprintln(os.Stderr, "cleanroom: coordinator reachable again")
			down, delay = time.Time{}, 0
		}
		j = got
		if j.State == api.StateQueued {
			if j.QueuedReason != said && j.QueuedReason != "" {
				fmt.Fprintf(os.Stderr, "cleanroom: job %s queued: %s\n", id, api.Printable(j.QueuedReason))
			}
			said = j.QueuedReason
			if err := sleepCtx(ctx, poll); err != nil {
				return j, waitErr(ctx, j, o)
			}
			continue
		}
		terminal := api.Terminal(j.State)
		n, err := cl.ReadLog(ctx, id, off, !terminal, w)
		off += n
		if err != nil {
			if ctx.Err() != nil {
				return j, waitErr(ctx, j, o)
			}
			if err := retry(err); err != nil {
				return j, err
			}
			continue
		}
		if terminal {
			return j, nil
		}
	}
}

// waitErr is why following stopped when ctx ended: --wait-timeout, or the
// command was interrupted.
func waitErr(ctx context.Context, j api.Job, o followOpts) error {
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		return withExit(exitTimeout, fmt.Errorf("job %s still %s after --wait-timeout %s (it goes on: cleanroom cancel %s stops it)",
			j.ID, j.State, o.waitTimeout, j.ID))
	}
	return ctx.Err()
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// classExits maps the failure class of a job that did not succeed to the
// exit code, and the word the message uses; the build's class (and none,
// from an agent older than classes) passes the build's exit code through.
var classExits = map[string]struct {
	code int
	word string
}{
	api.ClassRefused:        {exitRefused, "refused"},
	api.ClassPolicy:         {exitPolicy, "ended by policy"},
	api.ClassInfrastructure: {exitInternal, "failed in cleanroom"},
	api.ClassTimeout:        {exitTimeout, "timed out"},
	api.ClassCanceled:       {exitCanceled, "canceled"},
}

// jobExit turns a job's end into the command's exit: nil for success, the
// build's own exit code for a failed build, cleanroom's codes otherwise.
func jobExit(j api.Job) error {
	if ce, ok := classExits[j.FailureClass]; ok && j.State != api.StateSucceeded {
		return &exitError{code: ce.code, msg: fmt.Sprintf("job %s %s: %s", j.ID, ce.word, api.Printable(j.Reason))}
	}
	switch j.State {
	case api.StateSucceeded:
		return nil
	case api.StateCanceled:
		return &exitError{code: exitCanceled, msg: fmt.Sprintf("job %s canceled: %s", j.ID, api.Printable(j.Reason))}
	case api.StateLost:
		return &exitError{code: exitLost, msg: fmt.Sprintf("job %s lost: %s", j.ID, api.Printable(j.Reason))}
	case api.StateFailed:
		code := 1
		if j.ExitCode != nil && *j.ExitCode > 0 && *j.ExitCode < 256 {
			code = *j.ExitCode
		}
		return &exitError{code: code, msg: fmt.Sprintf("job %s failed: %s", j.ID, api.Printable(j.Reason))}
	}
	return withExit(exitInternal, fmt.Errorf("job %s ended in state %q", j.ID, j.State))
}
