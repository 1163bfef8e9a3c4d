package coordinator

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"sort"
	"strings"

	"github.com/cleanroom-ci/cleanroom/api"
	"github.com/cleanroom-ci/cleanroom/coordinator/store"
)

// runnerState is one online runner as the queue sees it.
type runnerState struct {
	name    string
	labels  map[string]string
	running int
	// waiting: a claim of the runner is open now, on any coordinator of
	// the store; it has free slots.
	waiting bool
	// claim is what the runner said with its last claim (nil: none yet).
	claim *store.ClaimReport
}

// onlineRunners are the runners not revoked that claimed within the online
// window, have a claim open, or hold a running job (an agent with every
// slot busy does not claim). What they said with their last claims comes
// from the store (store.ClaimReport), so every coordinator on it answers
// "why is this job still queued" and GET /v1/policy the same, whichever
// coordinator each runner long-polls.
func (s *Server) onlineRunners(ctx context.Context) ([]runnerState, error) {
	runners, err := s.store.ListRunners(ctx)
	if err != nil {
		return nil, err
	}
	running, err := s.store.ListJobs(ctx, store.JobFilter{State: api.StateRunning})
	if err != nil {
		return nil, err
	}
	busy := map[string]int{}
	for _, j := range running {
		busy[j.RunnerID]++
	}
	now := s.now()
	since := now.Add(-s.cfg.RunnerOnlineWindow)
	var out []runnerState
	for _, r := range runners {
		waiting := r.LastClaim.OpenAt(now)
		if r.RevokedAt != nil || busy[r.ID] == 0 && !waiting && (r.LastSeen == nil || r.LastSeen.Before(since)) {
			continue
		}
		out = append(out, runnerState{name: r.Name, labels: r.Labels, running: busy[r.ID], waiting: waiting, claim: r.LastClaim})
	}
	return out, nil
}

// queuedReason says why a queued job with spec is not claimed by any of
// runners, or "" when one of them is about to take it.
func queuedReason(spec api.JobSpec, runners []runnerState) string {
	if len(runners) == 0 {
		return "no runner is online"
	}
	var labelled []runnerState
	for _, r := range runners {
		if hasLabels(r.labels, spec.Labels) {
			labelled = append(labelled, r)
		}
	}
	if len(labelled) == 0 {
		return fmt.Sprintf("no runner online has labels %s (%d online)", labelString(spec.Labels), len(runners))
	}
	var fit []runnerState
	var over []string
	for _, r := range labelled {
		if r.claim == nil || r.claim.Capacity == nil {
			fit = append(fit, r)
			continue
		}
		if o := spec.Resources.Over(*r.claim.Capacity); len(o) > 0 {
			over = append(over, r.name+": "+strings.Join(o, ", "))
			continue
		}
		fit = append(fit, r)
	}
	with := ""
	if len(spec.Labels) > 0 {
		with = " with labels " + labelString(spec.Labels)
	}
	if len(fit) == 0 {
		return fmt.Sprintf("no runner online%s has the resources it asks for (%s)", with, strings.Join(over, "; "))
	}
	jobs := 0
	for _, r := range fit {
		if r.waiting {
			return ""
		}
		jobs += r.running
	}
	return fmt.Sprintf("all %d runner(s) that can take it%s are busy (%d job(s) running)", len(fit), with, jobs)
}

func hasLabels(have, want map[string]string) bool {
	for k, v := range want {
		if have[k] != v {
			return false
		}
	}
	return true
}

func labelString(l map[string]string) string {
	var kv []string
	for k, v := range l {
		kv = append(kv, k+"="+v)
	}
	sort.Strings(kv)
	return strings.Join(kv, ",")
}

// withQueuedReason fills j.QueuedReason for a queued job.
func (s *Server) withQueuedReason(ctx context.Context, j api.Job) (api.Job, error) {
	if j.State != api.StateQueued {
		return j, nil
	}
	runners, err := s.onlineRunners(ctx)
	if err != nil {
		return j, err
	}
	j.QueuedReason = queuedReason(j.Spec, runners)
	return j, nil
}

// handlePolicy answers GET /v1/policy: the union of the registries the
// online runners reported with their last claims, on any coordinator of
// the store.
func (s *Server) handlePolicy(w http.ResponseWriter, r *http.Request) error {
	runners, err := s.onlineRunners(r.Context())
	if err != nil {
		return err
	}
	p := api.Policy{Registries: []string{}}
	for _, rs := range runners {
		if rs.claim == nil {
			continue
		}
		for _, reg := range rs.claim.Registries {
			if !slices.Contains(p.Registries, reg) {
				p.Registries = append(p.Registries, reg)
			}
		}
	}
	sort.Strings(p.Registries)
	writeJSON(w, http.StatusOK, p)
	return nil
}
