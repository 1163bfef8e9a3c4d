// Package buildexec owns the composition of one job on the build host: the
// supply-chain gate, the secret grant and the job environment, the network
// policy, the sandbox and its steps (npm ci, allowed install scripts, the
// build), artifact collection, the SBOM and the signed provenance — and the
// teardown of all of it, whatever happens. It is the agent.Executor that
// `cleanroom agent run` uses; the agent package itself knows none of this.
//
// Order matters and is the security argument: nothing that could be refused
// (lockfile, secrets, network policy) is left for after a sandbox exists, and
// a failure to set up any part of the policy ends the job (fail closed).
package buildexec

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/cleanroom-ci/cleanroom/agent"
	"github.com/cleanroom-ci/cleanroom/api"
	"github.com/cleanroom-ci/cleanroom/netpolicy"
	"github.com/cleanroom-ci/cleanroom/sandbox"
	"github.com/cleanroom-ci/cleanroom/secrets"
	"github.com/cleanroom-ci/cleanroom/supplychain"
)

// Config is what the executor needs from the agent's configuration.
type Config struct {
	RunnerID   string
	RunnerName string
	// BuilderID is the provenance builder id (a URI naming this runner).
	BuilderID string
	Image     string
	// Registries are the internal registry URLs; the first one is npm's
	// registry. Every job may reach them and nothing else by default.
	Registries []string
	// Extra host:port destinations jobs may ask for (the agent's ceiling).
	Extra       []string
	OnViolation string // deny | kill
	Forward     bool   // netpolicy.ModeForward (registry elsewhere) vs ModeDirect
	Masquerade  bool
	// Hosts are static name → IP answers (names not in any DNS, labs).
	Hosts   map[string][]net.IP
	HostNS  string // network namespace the veths live in; "" = ours
	DataDir string // holds egress.jsonl and job outputs
	// NetStateDir holds the host's address pool: every agent sharing a host
	// network namespace must use the same one.
	NetStateDir string
	Limits      sandbox.Limits
	Secrets     *secrets.Store
	Signing     ed25519.PrivateKey
	Sandbox     *sandbox.Client
	// RegistryTokenSecret names the build-scope secret written into every
	// job's .npmrc as the registry's auth token ("" = anonymous reads).
	RegistryTokenSecret string
	// InstallScripts allowed on every job of this agent (merged with the
	// job's own allow-list).
	InstallScripts api.InstallScripts
	Logger         hclog.Logger
	StepStop       time.Duration // grace between SIGTERM and SIGKILL
}

// Executor runs jobs; safe for concurrent use.
type Executor struct {
	cfg     Config
	matcher *secrets.Matcher
	imageMu sync.Mutex
	digests map[string]string
}

// New checks the configuration (fail closed: no registry, no signing key or
// no secret store is a configuration error, not a silently weaker job).
func New(cfg Config) (*Executor, error) {
	var errs []string
	if len(cfg.Registries) == 0 {
		errs = append(errs, "no internal registry configured (network.registries)")
	}
	for _, r := range cfg.Registries {
		u, err := url.Parse(r)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			errs = append(errs, fmt.Sprintf("registry %q: want an http(s) URL", r))
		}
	}
	if cfg.Signing == nil {
		errs = append(errs, "no signing key")
	}
	if cfg.Secrets == nil {
		errs = append(errs, "no secret store")
	}
	if cfg.Sandbox == nil {
		errs = append(errs, "no containerd client")
	}
	if cfg.NetStateDir == "" {
		errs = append(errs, "no network state dir")
	}
	switch cfg.OnViolation {
	case "", "deny", "kill":
	default:
		errs = append(errs, fmt.Sprintf("on_violation %q: want deny or kill", cfg.OnViolation))
	}
	if len(errs) > 0 {
		return nil, fmt.Errorf("configuring the build executor: %s", strings.Join(errs, "; "))
	}
	if cfg.Image == "" {
		cfg.Image = "cleanroom.local/node:22"
	}
	if cfg.Logger == nil {
		cfg.Logger = hclog.NewNullLogger()
	}
	if cfg.StepStop == 0 {
		cfg.StepStop = 10 * time.Second
	}
	if cfg.Limits.DiskBytes == 0 {
		// Every job gets a workspace filesystem of its own: a build that
		// fills it fails with "disk limit reached", the host's disk is fine.
		cfg.Limits.DiskBytes = DefaultDiskLimit
	}
	for k, v := range map[*int64]int64{&cfg.Limits.MemoryBytes: sandbox.DefaultLimits.MemoryBytes, &cfg.Limits.Pids: sandbox.DefaultLimits.Pids} {
		if *k == 0 {
			*k = v
		}
	}
	if cfg.Limits.CPUs == 0 {
		cfg.Limits.CPUs = sandbox.DefaultLimits.CPUs
	}
	return &Executor{cfg: cfg, matcher: cfg.Secrets.Matcher(), digests: map[string]string{}}, nil
}

// Capacity is the most a job may ask of this runner: its limits
// (agent.CapacityReporter).
func (e *Executor) Capacity() api.Resources {
	l := e.cfg.Limits
	return api.Resources{Memory: api.ByteSize(l.MemoryBytes), CPUs: l.CPUs, PIDs: l.Pids, Disk: api.ByteSize(l.DiskBytes)}
}

// RedactString removes every known secret, in every encoding the build
// output is redacted in, from s (agent.StringRedactor).
func (e *Executor) RedactString(s string) string { return e.matcher.RedactString(s) }

// NormalizeViolation checks an on_violation value (empty means deny).
func NormalizeViolation(s string) (string, error) {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "", "deny":
		return "deny", nil
	case "kill":
		return "kill", nil
	}
	return "", fmt.Errorf("on_violation %q: want deny (log and refuse) or kill (end the job at the first attempt)", s)
}

// DefaultDiskLimit is the size of a job's workspace filesystem when the
// agent's limits set none.
const DefaultDiskLimit = 4 << 30

// errEgressViolation is the cancel cause when on_violation is kill.
var errEgressViolation = errors.New("egress violation")

type jobLog struct {
	w io.Writer
}

func (l jobLog) say(format string, args ...any) {
	fmt.Fprintf(l.w, "[cleanroom] "+format+"\n", args...)
}

// Run implements agent.Executor.
func (e *Executor) Run(ctx context.Context, job *api.Job, ws string, out io.Writer, rep agent.Reporter) (res agent.Result, retErr error) {
	started := time.Now().UTC()
	// Per-job files (npmrc, artifact copies, SBOM, provenance) live in the
	// agent's scratch dir, which the agent removes once they are uploaded.
	jobDir := filepath.Join(e.cfg.DataDir, "jobs", job.ID)
	// Each attempt gets networks and a sandbox of its own: a re-queued job
	// may land on this host while a lost earlier attempt's are still here.
	runID := fmt.Sprintf("%s-%d", job.ID, max(job.Attempts, 1))
	_ = os.RemoveAll(jobDir) // an earlier attempt of the same job on this agent
	defer func() { res.Scratch = jobDir }()
	red := e.matcher.NewRedactor(out)
	defer red.Flush()
	lg := jobLog{red}
	fail := func(reason string) (agent.Result, error) {
		lg.say("refused: %s", reason)
		return agent.Result{State: api.StateFailed, ExitCode: 1, Reason: reason}, nil
	}

	// 1. Supply-chain gate, before anything else exists.
	lf, err := supplychain.CheckLockfile(ws, supplychain.LockPolicy{Registries: e.cfg.Registries})
	if err != nil {
		lg.say("lockfile gate: %v", err)
		var ge *supplychain.GateError
		if errors.As(err, &ge) {
			first := ge.Violations[0]
			return fail(fmt.Sprintf("lockfile rejected: %d violation(s), first: %s: %s %s", len(ge.Violations), first.Path, first.Rule, first.Value))
		}
		return fail(fmt.Sprintf("lockfile rejected: %v", err))
	}
	lg.say("lockfile %s: %d packages, every one from the internal registry with sha512 integrity", lf.File, len(lf.Packages))
	plan := supplychain.PlanScripts(lf, supplychain.ScriptPolicy{
		AllowAll: job.Spec.InstallScripts.All || e.cfg.InstallScripts.All,
		Allow:    append(append([]string{}, e.cfg.InstallScripts.Allow...), job.Spec.InstallScripts.Allow...),
	})
	for _, p := range plan.Blocked {
		lg.say("install scripts of %s@%s NOT run (not on the job's install_scripts allow-list)", p.Name, p.Version)
	}
	for _, p := range plan.Allowed {
		lg.say("install scripts of %s@%s allowed (install_scripts of the job or this runner): they run inside the sandbox", p.Name, p.Version)
	}

	// 2. Secrets: refuse deploy-scope or unknown names before anything runs.
	granted, err := e.cfg.Secrets.Grant(job.Spec.Secrets)
	if err != nil {
		return fail(err.Error())
	}
	env, err := secrets.BuildEnv(secrets.Base{RegistryURL: e.cfg.Registries[0], NPMRC: "/run/cleanroom/npmrc"}, granted)
	if err != nil {
		return fail(err.Error())
	}
	lim, err := e.limitsFor(job.Spec.Resources)
	if err != nil {
		return fail(err.Error())
	}
	if len(granted) > 0 {
		names := make([]string, len(granted))
		for i, s := range granted {
			names[i] = s.Name
		}
		lg.say("build secrets granted: %s (redacted from all output)", strings.Join(names, ", "))
	}

	if err := os.MkdirAll(jobDir, 0o700); err != nil {
		return agent.Result{}, fmt.Errorf("creating job dir: %w", err)
	}
	// Registry credentials reach npm through this read-only file, never the
	// environment; the token is a build-scope secret, so it is redacted
	// like any other.
	var regToken []byte
	if e.cfg.RegistryTokenSecret != "" {
		tok, err := e.cfg.Secrets.Grant([]string{e.cfg.RegistryTokenSecret})
		if err != nil {
			return fail(fmt.Sprintf("registry token (registry_token_secret): %v", err))
		}
		regToken = tok[0].Value
	}
	npmrcPath := filepath.Join(jobDir, "npmrc")
	if err := os.WriteFile(npmrcPath, secrets.NPMRC(e.cfg.Registries[0], regToken), 0o400); err != nil {
		return agent.Result{}, fmt.Errorf("writing job npmrc: %w", err)
	}
	if err := os.Chown(npmrcPath, sandbox.BuildUID, sandbox.BuildGID); err != nil {
		return agent.Result{}, fmt.Errorf("handing the job npmrc to the build user: %w", err)
	}

	// 3. Network policy (fail closed: any part missing ends the job here).
	onViolation := e.cfg.OnViolation
	if job.Spec.Network.OnViolation != "" {
		v, err := NormalizeViolation(job.Spec.Network.OnViolation)
		if err != nil {
			return fail(err.Error())
		}
		if onViolation != "kill" { // a job may make the policy stricter, never looser
			onViolation = v
		}
	}
	agentPolicy := netpolicy.Policy{Registries: e.cfg.Registries, Extra: e.cfg.Extra, OnViolation: onViolation}
	policy, err := agentPolicy.Narrow(netpolicy.Policy{Registries: e.cfg.Registries, Extra: job.Spec.Network.Extra, OnViolation: onViolation})
	if err != nil {
		return fail(fmt.Sprintf("network policy: %v", err))
	}
	// Narrow keeps the agent's extras when the job names none; a job only
	// gets the extra destinations it asks for.
	if len(job.Spec.Network.Extra) == 0 {
		policy.Extra = nil
	}
	mode := netpolicy.ModeDirect
	if e.cfg.Forward {
		mode = netpolicy.ModeForward
	}
	resolver := netpolicy.Resolver(netpolicy.SystemResolver{})
	if len(e.cfg.Hosts) > 0 {
		resolver = netpolicy.StaticResolver{Hosts: e.cfg.Hosts, Fallback: netpolicy.SystemResolver{}}
	}
	// The network and the sandbox are independent until a step runs (the
	// container only names the namespace and resolv.conf, which Setup makes
	// at paths known in advance), so they are made concurrently. Nothing
	// runs in the sandbox before both exist; if either fails, the other is
	// torn down and the job does not run.
	netCfg := netpolicy.Config{
		ID: runID, Job: job.ID, Runner: e.cfg.RunnerID, HostNS: e.cfg.HostNS, Mode: mode, Masquerade: e.cfg.Masquerade,
		Policy: policy, Resolver: resolver,
		StateDir: e.cfg.NetStateDir,
		Owner:    sandbox.ProcessOwner(),
		AuditLog: filepath.Join(e.cfg.DataDir, "egress.jsonl"),
		OnEvent:  func(ev netpolicy.Event) { rep.Event(toAPI(ev)) },
		Redact:   e.matcher.RedactDomain,
		Logger:   e.cfg.Logger,
	}
	var nw *netpolicy.Network
	netDone := make(chan error, 1)
	go func() {
		var err error
		nw, err = netpolicy.Setup(ctx, netCfg)
		netDone <- err
	}()

	runCtx, cancelRun := context.WithCancelCause(ctx)
	defer cancelRun(nil)

	// 4. Sandbox.
	image := job.Spec.Image
	if image == "" {
		image = e.cfg.Image
	}
	sb, sbErr := e.cfg.Sandbox.Create(runCtx, sandbox.Options{
		JobID: sandboxID(runID), Image: image, Workspace: ws, NetNS: netpolicy.NetNSPathFor(runID), Env: env, Limits: lim,
		Mounts: []sandbox.Mount{
			{Source: netpolicy.ResolvConfPathFor(e.cfg.NetStateDir, runID), Destination: "/etc/resolv.conf"},
			{Source: npmrcPath, Destination: "/run/cleanroom/npmrc"},
		},
		PathsLater: true,
		Labels:     map[string]string{sandbox.LabelJob: job.ID, "cleanroom.runner": e.cfg.RunnerID, "cleanroom.attempt": strconv.Itoa(max(job.Attempts, 1))},
	})
	netErr := <-netDone
	defer func() {
		retErr = errors.Join(retErr, e.teardown(context.WithoutCancel(ctx), job.ID, sb, nw))
	}()
	if netErr != nil {
		lg.say("network policy could not be enforced, so the job does not run: %v", netErr)
		return agent.Result{State: api.StateFailed, ExitCode: 1, Reason: fmt.Sprintf("network policy could not be enforced: %v", netErr)}, nil
	}
	var dsts []string
	for _, d := range nw.Destinations {
		for _, ip := range d.IPs {
			dsts = append(dsts, net.JoinHostPort(ip.String(), strconv.Itoa(d.Port))+" ("+d.Host+")")
		}
	}
	lg.say("egress allowed only to: %s; DNS answers only those names; every attempt is audited (on_violation: %s)", strings.Join(dsts, ", "), onViolation)
	if sbErr != nil {
		lg.say("creating the sandbox: %v", sbErr)
		return agent.Result{State: api.StateFailed, ExitCode: 1, Reason: fmt.Sprintf("creating the sandbox: %v", sbErr)}, nil
	}
	lg.say("sandbox %s: image %s, memory %s, cpus %g, pids %d, no capabilities, read-only root, non-root user", sb.ID(), image, api.ByteSize(lim.MemoryBytes), lim.CPUs, lim.Pids)
	if onViolation == "kill" {
		// Nothing runs before the sandbox exists, so nothing can violate
		// the policy before this watcher starts.
		go func() {
			select {
			case ev := <-nw.Violations():
				lg.say("egress violation: %s %s → %s%s: ending the job now (on_violation: kill)", ev.Proto, ev.Src, ev.Dst, domainNote(ev.Domain))
				cancelRun(errEgressViolation)
				if err := sb.Kill(ctx); err != nil {
					e.cfg.Logger.Error("killing the sandbox after an egress violation", "job", job.ID, "error", err)
				}
			case <-runCtx.Done():
			}
		}()
	}

	// 5. Steps.
	build := job.Spec.Build.Argv
	if len(build) == 0 {
		build = []string{"/bin/sh", "-c", job.Spec.Build.Script}
	}
	steps := []struct {
		name string
		argv []string
	}{{"install", plan.Install}}
	if len(plan.Rebuild) > 0 {
		steps = append(steps, struct {
			name string
			argv []string
		}{"install scripts", plan.Rebuild})
	}
	steps = append(steps, struct {
		name string
		argv []string
	}{"build", build})
	for _, st := range steps {
		lg.say("$ %s", strings.Join(st.argv, " "))
		r, err := sb.Run(runCtx, sandbox.Step{Args: st.argv, Stdout: red, Grace: e.cfg.StepStop})
		if err != nil {
			lg.say("%s: %v", st.name, err)
			return agent.Result{State: api.StateFailed, ExitCode: 127, Reason: fmt.Sprintf("%s: %v", st.name, err)}, nil
		}
		if errors.Is(context.Cause(runCtx), errEgressViolation) {
			return agent.Result{State: api.StateFailed, ExitCode: exitOr(r.ExitCode, 1), Reason: "egress violation"}, nil
		}
		if r.Failed() {
			reason := fmt.Sprintf("%s step failed: %s", st.name, r)
			if r.Reason == sandbox.ReasonCanceled || r.Reason == sandbox.ReasonTimeout {
				reason = fmt.Sprintf("%s step ended: %s", st.name, r.Reason)
			}
			return agent.Result{State: api.StateFailed, ExitCode: exitOr(r.ExitCode, 1), Reason: reason}, nil
		}
		lg.say("%s step done in %s", st.name, r.Duration.Round(10*time.Millisecond))
	}

	// 6. Artifacts, SBOM, provenance.
	outDir := filepath.Join(jobDir, "out")
	arts, err := collectArtifacts(sb.WorkspacePath(), job.Spec.Artifacts, outDir)
	if err != nil {
		lg.say("collecting artifacts: %v", err)
		return agent.Result{State: api.StateFailed, ExitCode: 1, Reason: fmt.Sprintf("collecting artifacts: %v", err)}, nil
	}
	sbomPath := filepath.Join(jobDir, supplychain.SBOMFile)
	if err := writeSBOM(ws, lf, sbomPath); err != nil {
		return agent.Result{State: api.StateFailed, ExitCode: 1, Reason: fmt.Sprintf("writing SBOM: %v", err)}, nil
	}
	var subjects []supplychain.Artifact
	for _, a := range arts {
		h, err := supplychain.HashFile(a.Path)
		if err != nil {
			return agent.Result{}, fmt.Errorf("hashing artifact %s: %w", a.Name, err)
		}
		h.Name = a.Name
		subjects = append(subjects, h)
	}
	if len(subjects) == 0 {
		lg.say("no artifacts matched %v: provenance covers the SBOM only", job.Spec.Artifacts)
	}
	sbomSubj, err := supplychain.HashFile(sbomPath)
	if err != nil {
		return agent.Result{}, err
	}
	sbomSubj.Name = supplychain.SBOMFile
	subjects = append(subjects, sbomSubj)
	provPath := filepath.Join(jobDir, supplychain.ProvenanceFile)
	if err := e.writeProvenance(ctx, job, image, lf, subjects, started, provPath); err != nil {
		return agent.Result{State: api.StateFailed, ExitCode: 1, Reason: fmt.Sprintf("signing provenance: %v", err)}, nil
	}
	arts = append(arts,
		agent.Artifact{Name: supplychain.SBOMFile, Path: sbomPath, Kind: api.KindSBOM},
		agent.Artifact{Name: supplychain.ProvenanceFile, Path: provPath, Kind: api.KindProvenance})
	lg.say("%d artifact(s), SBOM (%d components) and signed provenance ready", len(arts)-2, len(lf.Packages))
	return agent.Result{State: api.StateSucceeded, ExitCode: 0, Artifacts: arts}, nil
}

// teardown ends the job's sandbox and network, whichever exist (nil when
// their setup failed). Once no process is left in the sandbox, the network
// (whose audit readers must outlive every process that could send) is
// closed while the rest of the sandbox is removed; if the processes could
// not be confirmed gone, everything is torn down in order instead.
func (e *Executor) teardown(ctx context.Context, jobID string, sb *sandbox.Sandbox, nw *netpolicy.Network) error {
	var sbErr, nwErr error
	closeNet := func() {
		if nw != nil {
			if nwErr = nw.Close(ctx); nwErr != nil {
				e.cfg.Logger.Error("tearing down job network", "job", jobID, "error", nwErr)
				nwErr = fmt.Errorf("tearing down job network: %w", nwErr)
			}
		}
	}
	destroy := func() {
		if sb != nil {
			if sbErr = sb.Destroy(ctx); sbErr != nil {
				e.cfg.Logger.Error("destroying sandbox", "job", jobID, "error", sbErr)
				sbErr = fmt.Errorf("destroying sandbox: %w", sbErr)
			}
		}
	}
	if sb != nil && sb.StopAll(ctx) != nil {
		destroy()
		closeNet()
		return errors.Join(sbErr, nwErr)
	}
	done := make(chan struct{})
	go func() { defer close(done); closeNet() }()
	destroy()
	<-done
	return errors.Join(sbErr, nwErr)
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

func (e *Executor) writeProvenance(ctx context.Context, job *api.Job, image string, lf *supplychain.Lockfile, subjects []supplychain.Artifact, started time.Time, path string) error {
	spec := map[string]any{
		"build":           job.Spec.Build,
		"artifacts":       job.Spec.Artifacts,
		"secrets":         job.Spec.Secrets,
		"install_scripts": job.Spec.InstallScripts,
		"network":         job.Spec.Network,
		"image":           image,
	}
	src := supplychain.Source{}
	switch job.Source.Kind {
	case api.SourceGit:
		src.GitURL, src.Commit = job.Source.URL, job.Source.Commit
	default:
		src.UploadSHA256 = job.Source.SHA256
	}
	stmt, err := supplychain.Provenance(supplychain.ProvenanceInput{
		Artifacts:       subjects,
		Source:          src,
		JobSpec:         normalize(spec),
		NodeImage:       image,
		NodeImageDigest: e.imageDigest(ctx, image),
		LockfileName:    filepath.Base(lf.File),
		LockfileSHA256:  lf.SHA256,
		BuilderID:       e.cfg.BuilderID,
		JobID:           job.ID,
		StartedOn:       started,
		FinishedOn:      time.Now().UTC(),
	})
	if err != nil {
		return err
	}
	env, err := supplychain.SignProvenance(stmt, e.cfg.Signing, supplychain.KeyID(e.cfg.Signing.Public().(ed25519.PublicKey)))
	if err != nil {
		return err
	}
	return os.WriteFile(path, env, 0o644)
}

func (e *Executor) imageDigest(ctx context.Context, ref string) string {
	e.imageMu.Lock()
	defer e.imageMu.Unlock()
	if d, ok := e.digests[ref]; ok {
		return d
	}
	d, err := e.cfg.Sandbox.ImageDigest(ctx, ref)
	if err != nil {
		return ""
	}
	e.digests[ref] = d
	return d
}

func writeSBOM(ws string, lf *supplychain.Lockfile, path string) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := supplychain.SBOM(ws, lf, f); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// collectArtifacts copies the regular files at or below each pattern
// (workspace-relative paths, shell globs allowed) into outDir. Symlinks are
// never followed and nothing outside the workspace is read: a build cannot
// smuggle a host file out as an artifact.
func collectArtifacts(ws string, patterns []string, outDir string) ([]agent.Artifact, error) {
	if err := os.MkdirAll(outDir, 0o700); err != nil {
		return nil, err
	}
	root, err := os.OpenRoot(ws)
	if err != nil {
		return nil, err
	}
	defer root.Close()
	seen := map[string]bool{}
	var out []agent.Artifact
	for _, pat := range patterns {
		clean := filepath.Clean(strings.TrimSuffix(pat, "/"))
		if filepath.IsAbs(clean) || clean == ".." || strings.HasPrefix(clean, "../") {
			return nil, fmt.Errorf("artifact path %q leaves the workspace", pat)
		}
		matches, err := fs.Glob(root.FS(), clean)
		if err != nil {
			return nil, fmt.Errorf("artifact pattern %q: %w", pat, err)
		}
		for _, m := range matches {
			err := fs.WalkDir(root.FS(), m, func(p string, d fs.DirEntry, err error) error {
				if err != nil {
					return err
				}
				if !d.Type().IsRegular() || seen[p] {
					return nil // directories are walked; symlinks, devices skipped
				}
				seen[p] = true
				src, err := root.Open(p)
				if err != nil {
					return err
				}
				defer src.Close()
				dst := filepath.Join(outDir, p)
				if err := os.MkdirAll(filepath.Dir(dst), 0o700); err != nil {
					return err
				}
				f, err := os.OpenFile(dst, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
				if err != nil {
					return err
				}
				if _, err := io.Copy(f, src); err != nil {
					f.Close()
					return err
				}
				if err := f.Close(); err != nil {
					return err
				}
				out = append(out, agent.Artifact{Name: filepath.ToSlash(p), Path: dst, Kind: api.KindFile})
				return nil
			})
			if err != nil {
				return nil, fmt.Errorf("collecting %s: %w", m, err)
			}
		}
	}
	return out, nil
}

func toAPI(ev netpolicy.Event) api.EgressEvent {
	return api.EgressEvent{Time: ev.Time, Runner: ev.Runner, Job: ev.Job, Sandbox: ev.Sandbox, Proto: ev.Proto,
		Src: ev.Src, Dst: ev.Dst, Domain: ev.Domain, Answer: ev.Answer, Verdict: ev.Verdict, Rule: ev.Rule, Process: ev.Process}
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

// normalize turns typed values into plain JSON values for the provenance's
// external parameters (structpb accepts only those).
func normalize(v map[string]any) map[string]any {
	out := map[string]any{}
	for k, x := range v {
		switch t := x.(type) {
		case []string:
			l := make([]any, len(t))
			for i := range t {
				l[i] = t[i]
			}
			out[k] = l
		case api.Build:
			if len(t.Argv) > 0 {
				l := make([]any, len(t.Argv))
				for i := range t.Argv {
					l[i] = t.Argv[i]
				}
				out[k] = l
			} else {
				out[k] = t.Script
			}
		case api.InstallScripts:
			allow := make([]any, len(t.Allow))
			for i := range t.Allow {
				allow[i] = t.Allow[i]
			}
			out[k] = map[string]any{"allow": allow, "all": t.All}
		case api.NetworkSpec:
			extra := make([]any, len(t.Extra))
			for i := range t.Extra {
				extra[i] = t.Extra[i]
			}
			out[k] = map[string]any{"extra": extra, "on_violation": t.OnViolation}
		default:
			out[k] = x
		}
	}
	return out
}
