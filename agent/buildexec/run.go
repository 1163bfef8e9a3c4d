package buildexec

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/cleanroom-ci/cleanroom/agent"
	"github.com/cleanroom-ci/cleanroom/api"
	"github.com/cleanroom-ci/cleanroom/attribution"
	"github.com/cleanroom-ci/cleanroom/gateway"
	"github.com/cleanroom-ci/cleanroom/netpolicy"
	"github.com/cleanroom-ci/cleanroom/sandbox"
	"github.com/cleanroom-ci/cleanroom/secrets"
	"github.com/cleanroom-ci/cleanroom/supplychain"
)

// jobRun is one execution of one job. newRun creates nothing that needs
// cleaning up; each phase records what it made, and teardown removes it.
type jobRun struct {
	e       *Executor
	job     *api.Job
	ws      string // the extracted source
	rep     agent.Reporter
	out     *secrets.Redactor // the job's log: every byte is redacted
	log     jobLog
	started time.Time
	// runID names this attempt's network and sandbox: a re-queued job may
	// land on this host while a lost earlier attempt's are still here.
	runID string
	// dir holds per-job files (npmrc, artifact copies, SBOM, provenance) in
	// the agent's scratch dir, which the agent removes once they are uploaded.
	dir string

	// What the phases decide and make, in order.
	lf        *supplychain.Lockfile
	plan      supplychain.ScriptPlan
	env       []string
	limits    sandbox.Limits
	netPolicy netpolicy.Policy
	gwJob     gateway.Job
	prefetch  *prefetch // the gateway's prefetch of the lockfile, running
	npmrc     string
	regEnv    []string // each step's npm registry settings: the gateway
	image     string
	nw        jobNetwork
	js        jobGateway // the job's gateway endpoint
	sb        jobSandbox
	attr      *attribution.Watch // fills the process of the network's events
	runCtx    context.Context    // the steps' context; canceled by a kill-mode violation
	cancelRun context.CancelCauseFunc
	arts      []agent.Artifact

	// gwAudit is the agent's local audit log for the gateway's events;
	// gwAuditFailed carries its first failed write to the watcher.
	gwAudit       *netpolicy.AuditFile
	gwAuditFailed chan error
	gwAuditOnce   sync.Once
}

// Causes with which the watcher ends a job's steps.
var (
	// errEgressViolation: a denied attempt, with on_violation kill.
	errEgressViolation = errors.New("egress violation")
	// errAuditStopped: the job's egress could no longer be audited.
	errAuditStopped = errors.New("egress audit stopped")
)

// jobError ends a job: the phase that returns it says why in one line.
// jobRun.result is the one place it becomes the job's result.
type jobError struct {
	reason string // the job's reason
	exit   int    // the exit code reported (a failed step's own)
	say    string // the job log's line about it ("" = the phase said it already)
	class  string // the failure class (api.ClassBuild...)
}

func (e *jobError) Error() string { return e.reason }

// refused ends a job before anything ran in it.
func refused(format string, args ...any) error {
	reason := fmt.Sprintf(format, args...)
	return &jobError{reason: reason, exit: 1, say: "refused: " + reason, class: api.ClassRefused}
}

// failed ends a job with reason, logged as is: cleanroom could not do its
// part (api.ClassInfrastructure).
func failed(exit int, format string, args ...any) error {
	reason := fmt.Sprintf(format, args...)
	return &jobError{reason: reason, exit: exit, say: reason, class: api.ClassInfrastructure}
}

type jobLog struct {
	w io.Writer
}

// say writes one of the agent's lines, framed as such (api.AgentLine).
func (l jobLog) say(format string, args ...any) {
	io.WriteString(l.w, api.AgentLine(fmt.Sprintf(format, args...)))
}

func (e *Executor) newRun(job *api.Job, ws string, out io.Writer, rep agent.Reporter) *jobRun {
	red := e.matcher.NewRedactor(out)
	return &jobRun{
		e: e, job: job, ws: ws, rep: rep, out: red, log: jobLog{red},
		started: time.Now().UTC(),
		runID:   fmt.Sprintf("%s-%d", job.ID, max(job.Attempts, 1)),
		dir:     filepath.Join(e.cfg.DataDir, "jobs", job.ID),

		gwAuditFailed: make(chan error, 1),
	}
}

// result turns a phase's error into the job's result. An error that is not
// a *jobError is a failure of the host side (a file that cannot be
// written): the job fails with it as its reason, as infrastructure.
func (r *jobRun) result(err error) agent.Result {
	var je *jobError
	if !errors.As(err, &je) {
		je = &jobError{reason: err.Error(), exit: 1, say: err.Error(), class: api.ClassInfrastructure}
	}
	if je.say != "" {
		r.log.say("%s", je.say)
	}
	return agent.Result{State: api.StateFailed, ExitCode: je.exit, Reason: je.reason, Class: je.class}
}

// gate: the lockfile must be present, valid and from the internal registry
// with integrity; the install-script policy decides which scripts run.
func (r *jobRun) gate(context.Context) error {
	cfg := r.e.cfg
	lf, err := supplychain.CheckLockfile(r.ws, supplychain.LockPolicy{Registries: cfg.Registries, RegistryAliases: cfg.RegistryAliases, AllowSHA1: cfg.AllowSHA1})
	if err != nil {
		r.log.say("lockfile gate: %v", err)
		var ge *supplychain.GateError
		if errors.As(err, &ge) {
			first := ge.Violations[0]
			return refused("lockfile rejected: %d violation(s), first: %s: %s %s", len(ge.Violations), api.Printable(first.Path), first.Rule, api.Printable(first.Value))
		}
		return refused("lockfile rejected: %v", err)
	}
	r.lf = lf
	var sha1Only []string
	for _, p := range lf.Packages {
		if p.SHA1Only() {
			sha1Only = append(sha1Only, p.Name+"@"+p.Version)
		}
	}
	if len(sha1Only) == 0 {
		r.log.say("lockfile %s: %d packages, every one from the internal registry (or a registry alias) with sha512 integrity", lf.File, len(lf.Packages))
	} else {
		r.log.say("lockfile %s: %d packages from the internal registry (or a registry alias); %d pinned by sha1 only, accepted by this runner's allow_sha1 (served only if the tarball matches that sha1 and the registry's sha512; marked in the SBOM): %s",
			lf.File, len(lf.Packages), len(sha1Only), strings.Join(sha1Only, ", "))
	}
	spec := r.job.Spec.InstallScripts
	r.plan = supplychain.PlanScripts(lf, supplychain.ScriptPolicy{
		AllowAll: spec.All || cfg.InstallScripts.All,
		Allow:    append(append([]string{}, cfg.InstallScripts.Allow...), spec.Allow...),
	})
	for _, p := range r.plan.Blocked {
		r.log.say("install scripts of %s@%s NOT run (not on the job's install_scripts allow-list)", p.Name, p.Version)
	}
	for _, p := range r.plan.Allowed {
		r.log.say("install scripts of %s@%s allowed (install_scripts of the job or this runner): they run inside the sandbox", p.Name, p.Version)
	}
	return nil
}

// secrets: deploy-scope or unknown names refuse the job; the environment is
// built from scratch; the job's resources must fit the runner's limits.
func (r *jobRun) secrets(context.Context) error {
	cfg := r.e.cfg
	for _, n := range r.job.Spec.Secrets {
		if slices.Contains(cfg.UpstreamSecrets, n) {
			return refused("secret %q is a registry credential of this runner: the registry gateway uses it upstream, it never enters a sandbox", n)
		}
	}
	granted, err := cfg.Secrets.Grant(r.job.Team, r.job.Spec.Secrets)
	if err != nil {
		return refused("%v", err)
	}
	// No registry in the sandbox's environment: the gateway's address is
	// known once the network exists, and each step gets it (serve).
	if r.env, err = secrets.BuildEnv(secrets.Base{NPMRC: "/run/cleanroom/npmrc"}, granted); err != nil {
		return refused("%v", err)
	}
	if r.limits, err = r.e.limitsFor(r.job.Spec.Resources); err != nil {
		return refused("%v", err)
	}
	if len(granted) > 0 {
		names := make([]string, len(granted))
		for i, s := range granted {
			names[i] = s.Name
		}
		r.log.say("build secrets granted: %s (redacted from all output)", strings.Join(names, ", "))
	}
	return nil
}

// policy narrows the runner's egress policy by the job's network spec:
// netpolicy.Policy.Narrow alone decides what the job may have.
func (r *jobRun) policy(context.Context) error {
	cfg := r.e.cfg
	want := r.job.Spec.Network
	v, err := api.ParseOnViolation(string(want.OnViolation))
	if err != nil { // an unknown value must not silently mean deny
		return refused("%v", err)
	}
	runner := netpolicy.Policy{Registries: cfg.Registries, Gateway: cfg.GatewayPort, Extra: cfg.Extra, Kill: cfg.OnViolation.Kill()}
	if r.netPolicy, err = runner.Narrow(netpolicy.Policy{Extra: want.Extra, Kill: v.Kill()}); err != nil {
		return refused("network policy: %v", err)
	}
	return nil
}

// files makes the job's directory. Its npmrc names the gateway, whose
// address exists only with the network: serve writes it, and the sandbox
// checks it is there before a step starts (sandbox.Options.PathsLater).
func (r *jobRun) files(context.Context) error {
	_ = os.RemoveAll(r.dir) // an earlier attempt of the same job on this agent
	if err := os.MkdirAll(r.dir, 0o700); err != nil {
		return fmt.Errorf("creating job dir: %w", err)
	}
	r.npmrc = filepath.Join(r.dir, "npmrc")
	return nil
}

// isolate makes the job's network and its sandbox. They are independent
// until a step runs (the container only names the namespace and
// resolv.conf, which the network makes at paths known in advance), so they
// are made concurrently. If either fails, the job does not run; whichever
// was made is torn down with the job.
func (r *jobRun) isolate(ctx context.Context) error {
	r.attr = r.e.cfg.Attribution.Watch(r.rep.Event, r.e.matcher.RedactString)
	netDone := make(chan error, 1)
	go func() { netDone <- r.network(ctx) }()
	sbErr := r.sandbox(r.runCtx)
	if err := <-netDone; err != nil {
		return err
	}
	if sbErr != nil {
		return sbErr
	}
	lim := r.limits
	user := "non-root user"
	if c := r.e.cfg.Sandbox; c != nil && c.UserNS() {
		user = "non-root user in a user namespace of its own (unprivileged host IDs)"
	}
	r.log.say("sandbox %s: image %s, memory %s, cpus %g, pids %d, no capabilities, read-only root, %s", r.sb.ID(), r.image, api.ByteSize(lim.MemoryBytes), lim.CPUs, lim.Pids, user)
	return nil
}

// network sets up the job's namespace, veth, rules, DNS responder and
// audit readers (fail closed: any part missing is an error).
func (r *jobRun) network(ctx context.Context) error {
	cfg := r.e.cfg
	mode := netpolicy.ModeDirect
	if cfg.Forward {
		mode = netpolicy.ModeForward
	}
	resolver := netpolicy.Resolver(netpolicy.SystemResolver{})
	if len(cfg.Hosts) > 0 {
		resolver = netpolicy.StaticResolver{Hosts: cfg.Hosts, Fallback: netpolicy.SystemResolver{}}
	}
	nw, err := r.e.networks.Setup(ctx, netpolicy.Config{
		ID: r.runID, Job: r.job.ID, Runner: cfg.RunnerID, HostNS: cfg.HostNS, Mode: mode, Masquerade: cfg.Masquerade,
		Policy: r.netPolicy, Resolver: resolver,
		StateDir: cfg.NetStateDir,
		Owner:    sandbox.ProcessOwner(),
		AuditLog: filepath.Join(cfg.DataDir, "egress.jsonl"),
		OnEvent:  func(ev netpolicy.Event) { r.attr.OnEvent(api.EgressEvent(ev)) },
		Redact:   r.e.matcher.RedactDomain,
		Logger:   cfg.Logger,
	})
	if err != nil {
		reason := fmt.Sprintf("network policy could not be enforced: %v", err)
		return &jobError{reason: reason, exit: 1, say: "network policy could not be enforced, so the job does not run: " + err.Error(), class: api.ClassInfrastructure}
	}
	r.nw = nw
	var dsts []string
	for _, d := range nw.Allowed() {
		name := d.Host
		if name == "" && d.Port == cfg.GatewayPort {
			name = "registry gateway"
		}
		for _, ip := range d.IPs {
			dsts = append(dsts, net.JoinHostPort(ip.String(), strconv.Itoa(d.Port))+" ("+name+")")
		}
	}
	onViolation := api.OnViolationDeny
	if r.netPolicy.Kill {
		onViolation = api.OnViolationKill
	}
	r.log.say("egress allowed only to: %s; DNS answers only those names; every attempt is audited (on_violation: %s)", strings.Join(dsts, ", "), onViolation)
	return nil
}

// sandbox creates the job's container, joined to the job's network.
func (r *jobRun) sandbox(ctx context.Context) error {
	cfg := r.e.cfg
	r.image = r.job.Spec.Image
	if r.image == "" {
		r.image = cfg.Image
	}
	sb, err := r.e.sandboxes.Create(ctx, sandbox.Options{
		JobID: sandboxID(r.runID), Image: r.image, Workspace: r.ws, NetNS: netpolicy.NetNSPathFor(r.runID), Env: r.env, Limits: r.limits,
		Mounts: []sandbox.Mount{
			{Source: netpolicy.ResolvConfPathFor(cfg.NetStateDir, r.runID), Destination: "/etc/resolv.conf"},
			{Source: r.npmrc, Destination: "/run/cleanroom/npmrc", BuildUser: true},
		},
		PathsLater: true,
		Labels:     map[string]string{sandbox.LabelJob: r.job.ID, "cleanroom.runner": cfg.RunnerID, "cleanroom.attempt": strconv.Itoa(max(r.job.Attempts, 1))},
	})
	if err != nil {
		return failed(1, "creating the sandbox: %v", err)
	}
	r.sb = sb
	return nil
}

// watch ends the job when its egress can no longer be audited (a reader,
// the DNS responder or the audit file failed: nothing may run unaudited, in
// any mode) and, when on_violation is kill, at the first denied attempt.
// Nothing runs before the sandbox exists, so nothing can happen before this
// watcher starts; the network's channels are buffered.
func (r *jobRun) watch(ctx context.Context) error {
	var violations <-chan netpolicy.Event
	if r.netPolicy.Kill {
		violations = r.nw.Violations()
	}
	stop := func(cause error) {
		r.cancelRun(cause)
		if err := r.sb.Kill(ctx); err != nil {
			r.e.cfg.Logger.Error("killing the sandbox", "job", r.job.ID, "cause", cause, "error", err)
		}
	}
	auditFailed := r.nw.AuditFailed()
	go func() {
		select {
		case err := <-auditFailed:
			r.log.say("egress audit stopped (%v): ending the job now, nothing may run unaudited", err)
			stop(fmt.Errorf("%w: %v", errAuditStopped, err))
		case err := <-r.gwAuditFailed:
			r.log.say("egress audit stopped (registry gateway: %v): ending the job now, nothing may run unaudited", err)
			stop(fmt.Errorf("%w: registry gateway: %v", errAuditStopped, err))
		case ev := <-violations:
			if ev.Rule == netpolicy.RuleAuditFailure { // the audit's own failure, reported as a deny
				r.log.say("egress audit stopped (%s: %s): ending the job now, nothing may run unaudited", ev.Domain, ev.Answer)
				stop(fmt.Errorf("%w: %s: %s", errAuditStopped, ev.Domain, ev.Answer))
				return
			}
			r.log.say("egress violation: %s %s → %s%s: ending the job now (on_violation: kill)", ev.Proto, ev.Src, ev.Dst, domainNote(ev.Domain))
			stop(errEgressViolation)
		case <-r.runCtx.Done():
		}
	}()
	return nil
}

// steps runs npm ci, the allowed install scripts and the build, stopping at
// the first that fails.
func (r *jobRun) steps(context.Context) error {
	build := r.job.Spec.Build.Argv
	if len(build) == 0 {
		build = []string{"/bin/sh", "-c", r.job.Spec.Build.Script}
	}
	type step struct {
		name string
		argv []string
	}
	steps := []step{{"install", r.plan.Install}}
	if len(r.plan.Rebuild) > 0 {
		steps = append(steps, step{"install scripts", r.plan.Rebuild})
	}
	steps = append(steps, step{"build", build})
	for _, st := range steps {
		r.log.say("$ %s", printableArgv(st.argv))
		res, err := r.sb.Run(r.runCtx, sandbox.Step{Args: st.argv, Env: r.regEnv, Stdout: api.BuildOutput(r.out), Grace: r.e.cfg.StepStop, Created: r.attribute})
		if err != nil {
			return failed(127, "%s: %v", st.name, err) // the step could not be run
		}
		if cause := context.Cause(r.runCtx); errors.Is(cause, errEgressViolation) || errors.Is(cause, errAuditStopped) {
			return &jobError{reason: cause.Error(), exit: exitOr(res.ExitCode, 1), class: api.ClassPolicy} // the watcher said why
		}
		if err := r.gatewayFailed(); err != nil { // the step may have failed because of it: it says why
			err.exit = exitOr(res.ExitCode, 1)
			return err
		}
		if res.Failed() {
			reason := fmt.Sprintf("%s step failed: %s", st.name, res)
			if res.Reason == sandbox.ReasonCanceled || res.Reason == sandbox.ReasonTimeout {
				reason = fmt.Sprintf("%s step ended: %s", st.name, res.Reason)
			}
			return &jobError{reason: reason, exit: exitOr(res.ExitCode, 1), class: api.ClassBuild} // the step's output says why
		}
		r.log.say("%s step done in %s", st.name, res.Duration.Round(10*time.Millisecond))
	}
	return nil
}

// attribute hooks a step's cgroup so that its egress events name their
// process; a failure only leaves them unattributed.
func (r *jobRun) attribute(pid uint32) {
	if err := r.attr.AttachPID(pid); err != nil {
		r.e.cfg.Logger.Warn("egress events of this step will have process null", "job", r.job.ID, "error", err)
	}
}

// outputs copies the artifacts out of the sandbox's workspace and writes
// the SBOM and the signed provenance that covers them.
func (r *jobRun) outputs(ctx context.Context) (retErr error) {
	if err := r.stillAudited(); err != nil {
		return err
	}
	defer func() {
		if err := r.stillAudited(); err != nil && retErr == nil {
			retErr = err
		}
	}()
	lim := r.e.cfg.Artifacts
	if lim.MaxBytes <= 0 {
		lim.MaxBytes = r.limits.DiskBytes
	}
	arts, err := collectArtifacts(ctx, r.sb.WorkspacePath(), r.job.Spec.Artifacts, filepath.Join(r.dir, "out"), lim)
	if err != nil {
		return failed(1, "collecting artifacts: %v", err)
	}
	sbomPath := filepath.Join(r.dir, supplychain.SBOMFile)
	if err := writeSBOM(r.ws, r.lf, sbomPath); err != nil {
		return failed(1, "writing SBOM: %v", err)
	}
	subjects := make([]supplychain.Artifact, 0, len(arts)+1)
	for _, f := range arts {
		subjects = append(subjects, supplychain.Artifact{Name: f.Name, SHA256: f.SHA256})
	}
	sbomSubj, err := supplychain.HashFile(sbomPath)
	if err != nil {
		return failed(1, "hashing the SBOM: %v", err)
	}
	sbomSubj.Name = supplychain.SBOMFile
	subjects = append(subjects, sbomSubj)
	if len(arts) == 0 {
		r.log.say("no artifacts matched %s: provenance covers the SBOM only", printableArgv(r.job.Spec.Artifacts))
	}
	provPath := filepath.Join(r.dir, supplychain.ProvenanceFile)
	if err := r.e.writeProvenance(ctx, r.job, r.image, r.lf, subjects, r.started, provPath); err != nil {
		return failed(1, "signing provenance: %v", err)
	}
	r.arts = append(arts,
		agent.Artifact{Name: supplychain.SBOMFile, Path: sbomPath, Kind: api.KindSBOM, SHA256: sbomSubj.SHA256},
		agent.Artifact{Name: supplychain.ProvenanceFile, Path: provPath, Kind: api.KindProvenance})
	r.log.say("%d artifact(s), SBOM (%d components) and signed provenance ready", len(arts), len(r.lf.Packages))
	return nil
}

// stillAudited fails the job if its egress audit stopped after the last
// step began (the watcher records it as the run's cause): no job whose
// egress was not audited to the end gets provenance.
func (r *jobRun) stillAudited() error {
	if cause := context.Cause(r.runCtx); errors.Is(cause, errAuditStopped) {
		return &jobError{reason: cause.Error(), exit: 1, class: api.ClassPolicy}
	}
	return nil
}

// printableArgv joins a command line (or patterns) for a job log line; an
// argument a person chose that holds a newline or another control character
// is shown in its visible form, so it cannot start a line of its own.
func printableArgv(argv []string) string {
	out := make([]string, len(argv))
	for i, a := range argv {
		out[i] = a
		if api.HasUnsafeRune(a) {
			out[i] = api.Printable(a)
		}
	}
	return strings.Join(out, " ")
}

// teardown ends the job's sandbox and network, whichever exist. Once no
// process is left in the sandbox, the network (whose audit readers must
// outlive every process that could send) is closed while the rest of the
// sandbox is removed; if the processes could not be confirmed gone,
// everything is torn down in order instead.
func (r *jobRun) teardown(ctx context.Context) error {
	var sbErr, nwErr, gwErr error
	logger := r.e.cfg.Logger
	r.stopPrefetch()
	closeNet := func() {
		// The gateway's endpoint first: its listener lives on the host end
		// the network's Close takes away.
		if r.js != nil {
			if gwErr = r.js.Close(); gwErr != nil {
				logger.Error("closing the job's registry gateway", "job", r.job.ID, "error", gwErr)
				gwErr = fmt.Errorf("closing the job's registry gateway: %w", gwErr)
			}
		}
		// The gateway sends no more events.
		if r.gwAudit != nil {
			if err := r.gwAudit.Close(); err != nil {
				logger.Error("closing the registry gateway's audit log", "job", r.job.ID, "error", err)
				gwErr = errors.Join(gwErr, fmt.Errorf("registry gateway events: %w", err))
			}
		}
		if r.nw != nil {
			if nwErr = r.nw.Close(ctx); nwErr != nil {
				logger.Error("tearing down job network", "job", r.job.ID, "error", nwErr)
				nwErr = fmt.Errorf("tearing down job network: %w", nwErr)
			}
		}
		// The network sends no more events: deliver the queued ones
		// (each within attribution.MaxWait) and detach the hooks.
		if r.attr != nil {
			if err := r.attr.Close(ctx); err != nil {
				logger.Warn("detaching the attribution hooks", "job", r.job.ID, "error", err)
			}
		}
	}
	destroy := func() {
		if r.sb != nil {
			if sbErr = r.sb.Destroy(ctx); sbErr != nil {
				logger.Error("destroying sandbox", "job", r.job.ID, "error", sbErr)
				sbErr = fmt.Errorf("destroying sandbox: %w", sbErr)
			}
		}
	}
	if r.sb != nil && r.sb.StopAll(ctx) != nil {
		destroy()
		closeNet()
		return errors.Join(sbErr, gwErr, nwErr)
	}
	done := make(chan struct{})
	go func() { defer close(done); closeNet() }()
	destroy()
	<-done
	return errors.Join(sbErr, gwErr, nwErr)
}

// limitsFor applies a job's resources within the agent's limits: a job may
// ask for less, never for more (api.Resources.Over decides, as it does for
// the coordinator's claims, which normally keep such a job away).
func (e *Executor) limitsFor(r api.Resources) (sandbox.Limits, error) {
	lim := e.cfg.Limits
	if over := r.Over(e.Capacity()); len(over) > 0 {
		return lim, fmt.Errorf("more than this runner's limits: %s", strings.Join(over, "; "))
	}
	for _, f := range []struct {
		want int64
		dst  *int64
	}{{int64(r.Memory), &lim.MemoryBytes}, {r.PIDs, &lim.Pids}, {int64(r.Disk), &lim.DiskBytes}} {
		if f.want > 0 {
			*f.dst = f.want
		}
	}
	if r.CPUs > 0 {
		lim.CPUs = r.CPUs
	}
	return lim, nil
}

// sandboxID maps a coordinator job id onto the sandbox's id alphabet.
func sandboxID(jobID string) string {
	return strings.ToLower(strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' {
			return r
		}
		return '-'
	}, jobID))
}

func domainNote(d string) string {
	if d == "" {
		return ""
	}
	return " (" + d + ")"
}

func exitOr(code, def int) int {
	if code != 0 {
		return code
	}
	return def
}
