package agent

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/cleanroom-ci/cleanroom/api"
)

// jobRun is the state of one claimed job on this agent.
type jobRun struct {
	a      *Agent
	job    api.Job
	lease  api.Lease
	log    hclog.Logger
	ws     string
	spool  string
	cancel context.CancelCauseFunc
	// reporting is set once the result is being sent: the job ending under
	// a waiting heartbeat is then expected, not a lost lease.
	reporting atomic.Bool
	// spoolErr is the first spool write error (spoolFailed): the job fails.
	spoolErr atomic.Pointer[error]
}

// runJob carries one claim from workspace to result. Whatever happens, the
// workspace and spool are removed at the end.
func (a *Agent) runJob(hardCtx context.Context, c api.Claim) {
	jr := &jobRun{a: a, job: c.Job, lease: c.Lease, log: a.log.With("job", c.Job.ID, "attempt", c.Job.Attempts)}
	name := c.Job.ID + "-" + strconv.FormatInt(c.Lease.Token, 10)
	jr.ws = filepath.Join(a.wsRoot(), name)
	jr.spool = filepath.Join(a.spoolRoot(), name)
	jr.log.Info("job started", "source", c.Job.Source.Kind)
	defer func() {
		for _, d := range []string{jr.ws, jr.spool} {
			if err := removeAll(d); err != nil {
				jr.log.Error("removing job directory", "dir", d, "error", err)
			}
		}
	}()

	jobCtx, cancel := context.WithCancelCause(hardCtx)
	defer cancel(nil)
	jr.cancel = cancel

	// Heartbeats run until the result is reported, so the lease outlives the
	// log flush.
	hbCtx, stopHB := context.WithCancel(context.WithoutCancel(hardCtx))
	hbDone := make(chan struct{})
	go func() { defer close(hbDone); jr.heartbeat(hbCtx) }()
	defer func() { stopHB(); <-hbDone }()

	// Reporting after the job may take a while if the coordinator is down,
	// but never forever, and only briefly after StopNow.
	reportCtx, stopReport := context.WithTimeout(context.WithoutCancel(hardCtx), a.ReportTimeout)
	defer stopReport()
	go func() {
		select {
		case <-a.stopNow:
			sleep(reportCtx, 5*time.Second)
			stopReport()
		case <-reportCtx.Done():
		}
	}()

	logs, err := newLogShipper(jr, filepath.Join(jr.spool, "log"))
	events, evSpoolErr := newEventShipper(jr)
	if err == nil {
		err = evSpoolErr
	}
	var res Result
	if err == nil {
		res = jr.execute(jobCtx, logs, events)
	} else {
		res = Result{State: api.StateFailed, ExitCode: -1, Reason: err.Error(), Class: api.ClassInfrastructure}
	}
	res.Reason = jr.redact(res.Reason)

	if res.Scratch != "" {
		defer func() {
			if err := removeAll(res.Scratch); err != nil {
				jr.log.Error("removing job scratch directory", "dir", res.Scratch, "error", err)
			}
		}()
	}
	// Upload what the executor produced unless the lease is gone. The
	// signed provenance lists every artifact: one the coordinator does not
	// have fails the job.
	if context.Cause(jobCtx) != ErrLeaseLost && context.Cause(jobCtx) != ErrRevoked {
		if failed := jr.uploadArtifacts(reportCtx, res.Artifacts, logs); len(failed) > 0 {
			res.fail(jr.redact(strings.Join(failed, "; ")))
		}
	}
	var logSize int64
	var flushErr error
	if logs != nil {
		logSize, flushErr = logs.close(reportCtx)
	}
	evErr := events.close(reportCtx)
	if err := jr.spoolError(); err != nil {
		res.fail(jr.redact(err.Error()))
	}
	switch cause := context.Cause(jobCtx); {
	case cause == ErrLeaseLost || cause == ErrRevoked:
		jr.log.Warn("job abandoned: no result reported", "cause", cause)
		return
	case flushErr != nil:
		jr.log.Error("log not delivered; result not reported (the lease will expire)", "error", flushErr)
		return
	case evErr != nil:
		jr.log.Error("egress events not all delivered", "error", evErr)
	}
	jr.reporting.Store(true)
	err = a.retry(reportCtx, "reporting result", func() error {
		return a.client.Result(reportCtx, jr.job.ID, api.ResultRequest{Token: jr.lease.Token, State: res.State,
			ExitCode: res.ExitCode, Reason: res.Reason, Class: res.Class, LogSize: logSize})
	})
	if err != nil {
		jr.log.Error("reporting result", "error", err)
		return
	}
	jr.log.Info("job finished", "state", res.State, "exit_code", res.ExitCode, "class", res.Class, "reason", res.Reason)
}

// execute fetches the source and runs the executor, and turns the outcome
// (including cancel, timeout and shutdown) into a Result.
func (jr *jobRun) execute(jobCtx context.Context, logs *logShipper, events *eventShipper) Result {
	a := jr.a
	jr.say(logs, "job %s attempt %d on runner %s (%s)", jr.job.ID, jr.job.Attempts, a.cfg.Name, a.cfg.RunnerID)
	for _, d := range []string{jr.ws, jr.spool} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return Result{State: api.StateFailed, ExitCode: -1, Reason: fmt.Sprintf("creating %s: %v", d, err), Class: api.ClassInfrastructure}
		}
	}
	timeout := jr.job.Spec.Timeout.D()
	if timeout <= 0 {
		timeout = a.cfg.DefaultTimeout.D()
	}
	runCtx, stop := context.WithTimeoutCause(jobCtx, timeout, ErrTimedOut)
	defer stop()

	var res Result
	var err error
	if err = a.fetchSource(runCtx, &jr.job, jr.lease.Token, jr.ws, jr.spool, logs, events); err != nil {
		jr.say(logs, "%v", err)
		res = Result{State: api.StateFailed, ExitCode: -1, Reason: err.Error(), Class: api.ClassInfrastructure}
	} else {
		res, err = a.exec.Run(runCtx, &jr.job, jr.ws, logs, events)
		if err != nil {
			res.State, res.Reason, res.Class = api.StateFailed, err.Error(), api.ClassInfrastructure
			if res.ExitCode == 0 {
				res.ExitCode = -1
			}
		}
	}
	switch cause := context.Cause(runCtx); {
	case errors.Is(cause, ErrCanceledByUser):
		res.State, res.Reason, res.Class = api.StateCanceled, "canceled on request", api.ClassCanceled
	case errors.Is(cause, ErrTimedOut):
		res.State, res.Reason, res.Class = api.StateFailed, fmt.Sprintf("timed out after %s", timeout), api.ClassTimeout
	case errors.Is(cause, ErrShutdown):
		// Canceled, but not on anyone's request: cleanroom did not finish it.
		res.State, res.Reason, res.Class = api.StateCanceled, "agent shutting down", api.ClassInfrastructure
	case errors.Is(cause, ErrSpool):
		res.Class = api.ClassInfrastructure // the agent's spool failed the job (runJob says why)
	}
	if res.State == "" {
		res.State = api.StateSucceeded
		if res.ExitCode != 0 {
			res.State = api.StateFailed
		}
	}
	switch {
	case res.State == api.StateSucceeded:
		res.Class = ""
	case res.Class == "" && res.State == api.StateCanceled:
		res.Class = api.ClassCanceled
	case res.Class == "":
		res.Class = api.ClassBuild // the executor's failure with the build's exit code
	}
	if res.State != api.StateSucceeded {
		jr.say(logs, "job %s: %s", res.State, res.Reason)
	}
	return res
}

// say writes a line of the job loop's own to the job's log, redacted and
// framed as the agent's (api.AgentLine), so the build cannot imitate it.
func (jr *jobRun) say(logs io.Writer, format string, args ...any) {
	io.WriteString(logs, api.AgentLine(jr.redact(fmt.Sprintf(format, args...))))
}

// redact removes secrets from a line of the job loop's own, when the
// executor knows any (StringRedactor).
func (jr *jobRun) redact(s string) string {
	if r, ok := jr.a.exec.(StringRedactor); ok {
		return r.RedactString(s)
	}
	return s
}

// heartbeat renews the lease until ctx ends. Each request long-polls so a
// cancel arrives at once; a 409 means the lease is gone.
func (jr *jobRun) heartbeat(ctx context.Context) {
	a := jr.a
	ttl := jr.lease.TTL.D()
	if ttl <= 0 {
		ttl = 30 * time.Second
	}
	wait := min(ttl/3, 10*time.Second)
	bo := backoff{min: 100 * time.Millisecond, max: max(ttl/6, 200*time.Millisecond)}
	canceled := false
	for ctx.Err() == nil {
		start := time.Now()
		w := wait
		if canceled {
			w = 0
		}
		resp, err := a.client.Heartbeat(ctx, jr.job.ID, api.HeartbeatRequest{Token: jr.lease.Token, Wait: api.Duration(w)})
		switch {
		case err == nil:
			bo.reset()
			if resp.Cancel && !canceled {
				canceled = true
				jr.log.Info("cancel requested")
				jr.cancel(ErrCanceledByUser)
			}
			if el := time.Since(start); el < wait/2 {
				sleep(ctx, wait/2-el)
			}
		case ctx.Err() != nil:
			return
		case (errors.Is(err, api.ErrConflict) || errors.Is(err, api.ErrNotFound)) && jr.reporting.Load():
			return // the job ended with our own result
		case errors.Is(err, api.ErrConflict), errors.Is(err, api.ErrNotFound):
			jr.log.Warn("lease lost: another runner has the job or it ended", "error", err)
			jr.cancel(ErrLeaseLost)
			return
		case errors.Is(err, api.ErrUnauthorized):
			jr.log.Error("runner token refused", "error", err)
			jr.cancel(ErrRevoked)
			return
		default:
			d := bo.next()
			jr.log.Warn("heartbeat failed; retrying", "error", err, "in", d)
			sleep(ctx, d)
		}
	}
}

// uploadArtifacts sends each artifact file with its sha256 and returns why
// each artifact that could not be hashed (a missing or non-regular file) or
// uploaded (after retries) is missing, naming it. Those are noted in the log
// too, and the others are still sent.
func (jr *jobRun) uploadArtifacts(ctx context.Context, arts []Artifact, logs *logShipper) (failed []string) {
	for _, art := range arts {
		kind := art.Kind
		if kind == "" {
			kind = api.KindFile
		}
		digest, err := art.SHA256, checkRegular(art.Path)
		if err == nil && digest == "" {
			digest, err = fileSHA256(art.Path)
		}
		if err != nil {
			jr.say(logs, "artifact %s not uploaded: %v", art.Name, err)
			failed = append(failed, fmt.Sprintf("artifact %s not uploaded: %v", art.Name, err))
			continue
		}
		err = jr.a.retry(ctx, "uploading artifact", func() error {
			f, err := os.Open(art.Path)
			if err != nil {
				return err
			}
			defer f.Close()
			_, err = jr.a.client.UploadArtifact(ctx, jr.job.ID, jr.lease.Token, art.Name, kind, digest, f)
			return err
		})
		if err != nil {
			jr.say(logs, "artifact %s not uploaded: %v", art.Name, err)
			jr.log.Error("uploading artifact", "name", art.Name, "error", err)
			failed = append(failed, fmt.Sprintf("artifact %s not uploaded: %v", art.Name, err))
		}
	}
	return failed
}

// fail makes the result failed for reason, which goes before an earlier
// failure's reason; an exit code of 0 becomes -1 (the agent failed the job,
// not the build). A job that had succeeded fails as infrastructure (its
// artifacts or log could not be delivered); an earlier failure keeps its
// class, which says why the job first failed.
func (r *Result) fail(reason string) {
	if r.State != api.StateSucceeded && r.Reason != "" {
		reason += "; " + r.Reason
	}
	if r.State == api.StateSucceeded || r.Class == "" {
		r.Class = api.ClassInfrastructure
	}
	r.State, r.Reason = api.StateFailed, reason
	if r.ExitCode == 0 {
		r.ExitCode = -1
	}
}

// checkRegular refuses symlinks and special files as artifacts.
func checkRegular(path string) error {
	fi, err := os.Lstat(path)
	if err != nil {
		return fmt.Errorf("reading artifact: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("reading artifact %s: not a regular file", path)
	}
	return nil
}

// fileSHA256 hashes a regular file.
func fileSHA256(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", fmt.Errorf("reading artifact: %w", err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", fmt.Errorf("hashing artifact %s: %w", path, err)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// removeAll removes dir, first making read-only directories writable (npm
// and builds leave some behind).
func removeAll(dir string) error {
	if err := os.RemoveAll(dir); err == nil {
		return nil
	}
	_ = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			_ = os.Chmod(p, 0o700)
		}
		return nil
	})
	if err := os.RemoveAll(dir); err != nil {
		return fmt.Errorf("removing %s: %w", dir, err)
	}
	return nil
}
