package buildexec

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/cleanroom-ci/cleanroom/api"
	"github.com/cleanroom-ci/cleanroom/gateway"
	"github.com/cleanroom-ci/cleanroom/netpolicy"
	"github.com/cleanroom-ci/cleanroom/secrets"
	"github.com/cleanroom-ci/cleanroom/supplychain"
)

// The registry phases: the job's registry gateway is the only thing its
// sandbox reaches. registry hands the gateway the lockfile's tarballs and
// has it check them before anything exists (release age, sha1 policy,
// upstreams reachable with their credentials), then prefetch them into the
// shared cache while the network and sandbox are made; serve waits for the
// prefetch, starts the job's endpoint on the host end of its veth and
// writes the npmrc naming it. No credential is in the sandbox: the gateway
// adds the agent's upstream credentials.

// prefetch is the gateway's prefetch of a job's tarballs, running in the
// background while isolate makes the network and the sandbox.
type prefetch struct {
	cancel context.CancelFunc
	done   chan struct{}
	err    error
	took   time.Duration
}

// registry: the gateway checks the job's lockfile (a refusal makes
// nothing), then prefetches it in the background.
func (r *jobRun) registry(ctx context.Context) error {
	cfg := r.e.cfg
	if cfg.DataDir != "" {
		a, err := netpolicy.OpenAuditFile(filepath.Join(cfg.DataDir, "egress.jsonl"))
		if err != nil {
			return failed(1, "registry gateway events cannot be audited: %v", err)
		}
		r.gwAudit = a
	}
	r.gwJob = gateway.Job{
		Job: r.job.ID, Runner: cfg.RunnerID, Sandbox: "cr-" + r.runID,
		Entries:       gatewayEntries(r.lf),
		MinReleaseAge: r.job.Spec.MinReleaseAge.D(),
		OnEvent:       r.gatewayEvent,
		Redact:        r.e.matcher.RedactString,
	}
	if err := r.e.gateway.Check(ctx, r.gwJob); err != nil {
		return gatewayError("the registry gateway refused the lockfile", err)
	}
	pctx, cancel := context.WithCancel(ctx)
	p := &prefetch{cancel: cancel, done: make(chan struct{})}
	r.prefetch = p
	go func() {
		defer close(p.done)
		start := time.Now()
		p.err = r.e.gateway.Prefetch(pctx, r.gwJob, nil)
		p.took = time.Since(start)
	}()
	return nil
}

// gatewayEvent delivers one of the gateway's events as netpolicy's sink
// does the network's: to the agent's local audit log (the same file, one
// writer type), then to the coordinator. A failed write ends the job
// through the watcher: nothing runs unaudited.
func (r *jobRun) gatewayEvent(ev api.EgressEvent) {
	if r.gwAudit != nil {
		if err := r.gwAudit.Append(netpolicy.Event(ev)); err != nil {
			r.gwAuditOnce.Do(func() { r.gwAuditFailed <- err })
		}
	}
	r.rep.Event(ev)
}

// stopPrefetch ends a prefetch still running (the job ended before serve)
// and waits for it.
func (r *jobRun) stopPrefetch() {
	if r.prefetch != nil {
		r.prefetch.cancel()
		<-r.prefetch.done
	}
}

// serve waits for the prefetch (an altered tarball fails the job here,
// before install), then starts the job's gateway endpoint on the host end
// of its veth and writes the npmrc that names it.
func (r *jobRun) serve(ctx context.Context) error {
	cfg := r.e.cfg
	start := time.Now()
	select {
	case <-r.prefetch.done:
	case <-ctx.Done():
		return failed(1, "waiting for the registry gateway's prefetch: %v", context.Cause(ctx))
	}
	if err := r.prefetch.err; err != nil {
		return gatewayError("the registry gateway could not provide the lockfile's tarballs", err)
	}
	// The wait is the part of the prefetch the network and sandbox did not
	// hide: with a cold cache it is the job's download time (the install
	// step then reads the cache), so benchmarks add it to the install step.
	r.log.say("registry gateway: %d tarball(s) of the lockfile verified against their integrity in the shared cache (%s; the job waited %s for it)",
		len(r.gwJob.Entries), r.prefetch.took.Round(time.Millisecond), time.Since(start).Round(time.Millisecond))
	ln, err := r.nw.ListenHostEnd(cfg.GatewayPort)
	if err != nil {
		return gatewayError("the registry gateway could not listen for the job", err)
	}
	js, err := r.e.gateway.Serve(ln, r.gwJob)
	if err != nil {
		ln.Close()
		return gatewayError("the registry gateway could not serve the job", err)
	}
	r.js = js
	url := js.URL()
	rc := secrets.NPMRC(url, cfg.GatewayScopes)
	if rc == nil {
		return failed(1, "writing job npmrc: the gateway's URL %q or a scope cannot be written safely", url)
	}
	if err := os.WriteFile(r.npmrc, rc, 0o400); err != nil {
		return fmt.Errorf("writing job npmrc: %w", err)
	}
	for _, kv := range secrets.RegistryEnv(url) {
		r.regEnv = append(r.regEnv, kv[0]+"="+kv[1])
	}
	r.log.say("registry: only through the gateway at %s (GET/HEAD of the lockfile's tarballs, verified; everything else refused and audited); the sandbox holds no registry credential", url)
	return nil
}

// gatewayFailed is the job's end when its gateway met an altered tarball
// or an upstream failure while serving it.
func (r *jobRun) gatewayFailed() *jobError {
	if r.js == nil {
		return nil
	}
	err := r.js.Failure()
	if err == nil {
		return nil
	}
	reason := "registry gateway: " + err.Error()
	return &jobError{reason: reason, exit: 1, say: reason + ": the job fails", class: api.ClassPolicy}
}

// gatewayError ends the job with what the gateway said: a refusal (the
// release-age or sha1 policy, an integrity mismatch) names each package
// and its rule and is the runner's policy (refused); anything else — an
// upstream that cannot be reached, a credential it does not accept, no
// listener — is cleanroom failing to provide the registry (infrastructure).
// Either way the job does not run.
func gatewayError(what string, err error) error {
	var re *gateway.RefusedError
	if errors.As(err, &re) && len(re.Refusals) > 0 {
		parts := make([]string, 0, len(re.Refusals))
		for _, f := range re.Refusals {
			parts = append(parts, fmt.Sprintf("%s@%s: %s: %s", f.Entry.Name, f.Entry.Version, f.Rule, f.Reason))
		}
		reason := fmt.Sprintf("%s: %s", what, strings.Join(parts, "; "))
		return &jobError{reason: reason, exit: 1, say: "refused: " + reason, class: api.ClassRefused}
	}
	if ie := (*gateway.IntegrityError)(nil); errors.As(err, &ie) {
		reason := fmt.Sprintf("%s: %s@%s: %s: %v", what, ie.Entry.Name, ie.Entry.Version, gateway.RuleIntegrityMismatch, ie)
		return &jobError{reason: reason, exit: 1, say: "refused: " + reason, class: api.ClassRefused}
	}
	reason := fmt.Sprintf("%s: %v", what, err)
	return &jobError{reason: reason, exit: 1, say: reason + "; the job does not run", class: api.ClassInfrastructure}
}

// gatewayEntries are the tarballs npm ci fetches for lf: every installed
// registry entry (links, workspace folders, bundled dependencies, file and
// git sources are not fetched from a registry).
func gatewayEntries(lf *supplychain.Lockfile) []gateway.Entry {
	out := make([]gateway.Entry, 0, len(lf.Packages))
	for _, p := range lf.Packages {
		if p.Link || p.InBundle || !strings.Contains("/"+p.Path, "/node_modules/") || !fromRegistry(p.Resolved) {
			continue
		}
		out = append(out, gateway.Entry{Name: p.Name, Version: p.Version, Resolved: p.Resolved, Integrity: p.Integrity})
	}
	return out
}

// fromRegistry: an http(s) resolved URL, or none (npm then asks the
// configured registry).
func fromRegistry(resolved string) bool {
	return resolved == "" || strings.HasPrefix(resolved, "https://") || strings.HasPrefix(resolved, "http://")
}
