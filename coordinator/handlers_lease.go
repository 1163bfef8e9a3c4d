package coordinator

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/cleanroom-ci/cleanroom/api"
	"github.com/cleanroom-ci/cleanroom/coordinator/store"
)

// fence builds the lease of a runner request from the job id in the path and
// the token in LeaseHeader (or tok when the body carried it).
func fence(r *http.Request, tok int64) (store.Fence, error) {
	p := principalFrom(r.Context())
	f := store.Fence{JobID: r.PathValue("id"), RunnerID: p.runner.ID, Token: tok}
	if tok == 0 {
		v, err := strconv.ParseInt(r.Header.Get(api.LeaseHeader), 10, 64)
		if err != nil || v <= 0 {
			return f, api.FieldErrors{{Field: api.LeaseHeader, Message: "required: the lease's fencing token"}}
		}
		f.Token = v
	}
	return f, nil
}

// lease is what a runner is told of its lease with a claim and every
// heartbeat, including the log cap it spools up to.
func (s *Server) lease(j store.Job) api.Lease {
	return api.Lease{Token: j.LeaseToken, Expires: j.LeaseExpires, TTL: api.Duration(s.cfg.LeaseTTL), LogOffset: j.LogOffset,
		LogLimit: s.cfg.MaxLog}
}

func (s *Server) handleClaim(w http.ResponseWriter, r *http.Request) error {
	var req api.ClaimRequest
	if err := decodeJSON(w, r, 64<<10, &req); err != nil {
		return err
	}
	if err := req.Validate(); err != nil {
		return err
	}
	start := time.Now()
	p := principalFrom(r.Context())
	wait := min(max(req.Wait.D(), 0), s.cfg.MaxClaimWait)
	now := s.now()
	report := store.ClaimReport{OpenUntil: now.Add(wait), Capacity: req.Capacity, Registries: req.Registries}
	if err := s.store.ReportClaim(r.Context(), p.runner.ID, report, now); err != nil {
		return err
	}
	wt := &waiter{ctx: r.Context(), runner: p.runner, slots: req.Slots, capacity: req.Capacity, ch: make(chan claimResult, 1)}
	s.disp.add(wt)
	timer := time.NewTimer(wait)
	defer timer.Stop()
	var res claimResult
	select {
	case res = <-wt.ch:
	case <-timer.C:
	case <-r.Context().Done():
	case <-s.stopCtx.Done():
	}
	if res.claims == nil && res.err == nil && !s.disp.remove(wt) {
		res = <-wt.ch // the dispatcher picked us meanwhile
	}
	s.closeClaim(r.Context(), p.runner.ID, report.OpenUntil)
	if res.err != nil {
		return res.err
	}
	if r.Context().Err() != nil {
		s.release(res.claims)
		return nil
	}
	out := api.ClaimResponse{Claims: []api.Claim{}}
	for _, c := range res.claims {
		out.Claims = append(out.Claims, api.Claim{Job: c.Job.Job, Lease: s.lease(c.Job)})
		s.log.Info("job claimed", "job", c.Job.ID, "runner", p.runner.ID, "attempt", c.Job.Attempts, "token", c.Token)
	}
	s.metrics.claimed(time.Since(start), res.claims, s.now())
	writeJSON(w, http.StatusOK, out)
	return nil
}

// closeClaim tells the store that a claim open until openUntil ended now,
// before the response goes out, when it ended early (it got jobs, its
// caller left, the coordinator stops): otherwise every coordinator would
// count the runner as waiting with free slots until then. A claim that
// waited its whole time costs no second write.
func (s *Server) closeClaim(ctx context.Context, runnerID string, openUntil time.Time) {
	now := s.now()
	if !now.Before(openUntil) {
		return
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if err := s.store.CloseClaim(ctx, runnerID, openUntil, now); err != nil {
		s.log.Warn("closing a claim", "runner", runnerID, "error", err)
	}
}

func (s *Server) handleHeartbeat(w http.ResponseWriter, r *http.Request) error {
	var req api.HeartbeatRequest
	if err := decodeJSON(w, r, 4<<10, &req); err != nil {
		return err
	}
	f, err := fence(r, req.Token)
	if err != nil {
		return err
	}
	changed := s.hub.wait(store.ChangeJob(f.JobID))
	j, err := s.store.Heartbeat(r.Context(), f, s.cfg.LeaseTTL, s.now())
	if err != nil {
		return err
	}
	if wait := min(req.Wait.D(), s.cfg.LeaseTTL/2); !j.Cancel && wait > 0 {
		t := time.NewTimer(wait)
		select {
		case <-changed:
			if j2, err := s.store.CheckLease(r.Context(), f); err == nil {
				j.Cancel = j2.Cancel
			} else if errors.Is(err, store.ErrStaleLease) {
				t.Stop()
				return err
			}
		case <-t.C:
		case <-r.Context().Done():
		}
		t.Stop()
	}
	writeJSON(w, http.StatusOK, api.HeartbeatResponse{Cancel: j.Cancel, Lease: s.lease(j)})
	return nil
}

func (s *Server) handleResult(w http.ResponseWriter, r *http.Request) error {
	var req api.ResultRequest
	if err := decodeJSON(w, r, 64<<10, &req); err != nil {
		return err
	}
	if err := req.Validate(); err != nil {
		return err
	}
	if len(req.Reason) > 4096 || !utf8.ValidString(req.Reason) {
		req.Reason = strings.ToValidUTF8(req.Reason[:min(len(req.Reason), 4096)], "?")
	}
	f, err := fence(r, req.Token)
	if err != nil {
		return err
	}
	j, err := s.store.Finish(r.Context(), f, req.State, req.ExitCode, req.Reason, req.Class, req.LogSize, s.now())
	if err != nil {
		return err
	}
	s.changed(store.ChangeJob(j.ID), store.ChangeLog(j.ID))
	s.log.Info("job finished", "job", j.ID, "state", j.State, "exit_code", req.ExitCode, "class", req.Class, "runner", f.RunnerID)
	writeJSON(w, http.StatusOK, j.Job)
	return nil
}

func (s *Server) handleSource(w http.ResponseWriter, r *http.Request) error {
	f, err := fence(r, 0)
	if err != nil {
		return err
	}
	j, err := s.store.CheckLease(r.Context(), f)
	if err != nil {
		return err
	}
	if j.Source.Kind != api.SourceUpload {
		return fmt.Errorf("job %s has a %s source, nothing uploaded: %w", j.ID, j.Source.Kind, store.ErrNotFound)
	}
	return s.serveBlob(w, r, j.Source.SHA256, "application/gzip", j.ID+".tar.gz")
}
