// Package buildexec owns the composition of one job on the build host: the
// git source fetch in a cage of its own (fetch.go), the supply-chain gate, the secret grant and the job environment, the network
// policy, the job's registry gateway (the sandbox's only destination, fed
// the lockfile's tarballs), the sandbox and its steps (npm ci, allowed install scripts, the
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
	"net"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/cleanroom-ci/cleanroom/agent"
	"github.com/cleanroom-ci/cleanroom/api"
	"github.com/cleanroom-ci/cleanroom/attribution"
	"github.com/cleanroom-ci/cleanroom/gateway"
	"github.com/cleanroom-ci/cleanroom/sandbox"
	"github.com/cleanroom-ci/cleanroom/secrets"
)

// Config is what the executor needs from the agent's configuration.
type Config struct {
	RunnerID   string
	RunnerName string
	// BuilderID is the provenance builder id (a URI naming this runner).
	BuilderID string
	Image     string
	// Registries are the internal registry URLs lockfiles may resolve to.
	// No sandbox reaches them: the registry gateway fetches from them.
	Registries []string
	// RegistryAliases are hosts the internal registry mirrors (e.g.
	// registry.npmjs.org): lockfile entries resolved there pass the gate
	// and are fetched through the gateway like any.
	RegistryAliases []string
	// AllowSHA1 lets sha1-only lockfile entries pass the gate (the gateway
	// then checks them against the registry's sha512 too).
	AllowSHA1 bool
	// Gateway is the agent's registry gateway (required): each job gets an
	// endpoint of it on the host end of its veth, its sandbox's only
	// destination besides the job's extras.
	Gateway *gateway.Gateway
	// GatewayPort is the port of that endpoint (default DefaultGatewayPort).
	GatewayPort int
	// GatewayScopes are the scopes ("@acme") the upstreams serve; the job's
	// npmrc points them at the gateway too.
	GatewayScopes []string
	// UpstreamSecrets name the secrets file entries the gateway uses as
	// upstream credentials: a job asking for one is refused, so no
	// registry credential can be granted into a sandbox.
	UpstreamSecrets []string
	// Extra host:port destinations jobs may ask for (the agent's ceiling).
	Extra       []string
	OnViolation api.OnViolation // deny (default) | kill
	Forward     bool            // netpolicy.ModeForward (registry elsewhere) vs ModeDirect
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
	// Sandbox is the containerd client every job's sandbox is created with.
	Sandbox *sandbox.Client
	// InstallScripts allowed on every job of this agent (merged with the
	// job's own allow-list).
	InstallScripts api.InstallScripts
	// Artifacts bound the copies of a job's artifacts on this host.
	Artifacts ArtifactLimits
	Logger    hclog.Logger
	StepStop  time.Duration // grace between SIGTERM and SIGKILL
	// Git is where git sources may come from (FetchGit); no hosts = git
	// sources are refused.
	Git GitConfig
	// Observe, if set, is called (synchronously: it must not block) with
	// how long each job's sandbox and network took to set up and tear down.
	Observe func(Observation)
	// Attribution, if set, names the process of each egress event of a
	// job's sandbox (nil: events carry process null; enforcement never
	// depends on it).
	Attribution *attribution.Tracer
}

// Executor runs jobs; safe for concurrent use.
type Executor struct {
	cfg       Config
	matcher   *secrets.Matcher
	sandboxes sandboxes
	networks  networks
	gateway   registryGateway
	imageMu   sync.Mutex
	digests   map[string]string
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
	if cfg.Gateway == nil {
		errs = append(errs, "no registry gateway")
	}
	if _, err := api.ParseOnViolation(string(cfg.OnViolation)); err != nil {
		errs = append(errs, err.Error())
	}
	if len(errs) > 0 {
		return nil, fmt.Errorf("configuring the build executor: %s", strings.Join(errs, "; "))
	}
	return newExecutor(cfg, containerdSandboxes{cfg.Sandbox}, kernelNetworks{}, agentGateway{cfg.Gateway}), nil
}

// DefaultGatewayPort is the port of a job's registry gateway on the host
// end of its veth (each job's host end has an address of its own).
const DefaultGatewayPort = 4873

// newExecutor fills the configuration's defaults and takes the sandbox and
// network factories and the gateway (fakes in unit tests).
func newExecutor(cfg Config, sb sandboxes, nw networks, gw registryGateway) *Executor {
	if cfg.GatewayPort == 0 {
		cfg.GatewayPort = DefaultGatewayPort
	}
	if cfg.OnViolation == "" {
		cfg.OnViolation = api.OnViolationDeny
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
	cfg.Limits = cfg.Limits.WithDefaults()
	if cfg.Observe != nil {
		sb, nw = observe(sb, nw, cfg.Observe)
	}
	return &Executor{cfg: cfg, matcher: cfg.Secrets.Matcher(), sandboxes: sb, networks: nw, gateway: gw, digests: map[string]string{}}
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

// DefaultDiskLimit is the size of a job's workspace filesystem when the
// agent's limits set none.
const DefaultDiskLimit = 4 << 30

// Run implements agent.Executor: one job, phase after phase. Each phase
// either prepares what the next needs or ends the job with a reason (a
// *jobError, turned into the job's result in one place, jobRun.result).
// Nothing that could be refused is left for after a sandbox exists, and
// whatever the network and sandbox phases made is torn down before Run
// returns, however the job ended.
func (e *Executor) Run(ctx context.Context, job *api.Job, ws string, out io.Writer, rep agent.Reporter) (res agent.Result, retErr error) {
	r := e.newRun(job, ws, out, rep)
	defer r.out.Flush()
	defer func() { res.Scratch = r.dir }()
	defer func() { retErr = errors.Join(retErr, r.teardown(context.WithoutCancel(ctx))) }()
	r.runCtx, r.cancelRun = context.WithCancelCause(ctx)
	defer r.cancelRun(nil)
	for _, phase := range []func(context.Context) error{
		r.gate,     // lockfile gate and install-script plan
		r.secrets,  // build-scope secrets, environment, limits
		r.policy,   // the job's network policy within the runner's
		r.registry, // the gateway checks the lockfile, then prefetches it (in the background)
		r.files,    // the job's directory
		r.isolate,  // network policy and sandbox, made concurrently; fail closed
		r.serve,    // prefetch done, the gateway serves the job on its host end, npmrc
		r.watch,    // on_violation: kill ends the job at the first denied attempt
		r.steps,    // npm ci, allowed install scripts, the build
		r.outputs,  // artifacts, SBOM, signed provenance
	} {
		if err := phase(ctx); err != nil {
			return r.result(err), nil
		}
	}
	return agent.Result{State: api.StateSucceeded, ExitCode: 0, Artifacts: r.arts}, nil
}
