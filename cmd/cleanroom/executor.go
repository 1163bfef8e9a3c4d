package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"

	"github.com/hashicorp/go-hclog"

	"github.com/cleanroom-ci/cleanroom/agent"
	"github.com/cleanroom-ci/cleanroom/agent/buildexec"
	"github.com/cleanroom-ci/cleanroom/agent/preflight"
	"github.com/cleanroom-ci/cleanroom/attribution"
	"github.com/cleanroom-ci/cleanroom/sandbox"
	"github.com/cleanroom-ci/cleanroom/secrets"
	"github.com/cleanroom-ci/cleanroom/supplychain"
)

// sandboxExecutor is the real executor plus what the agent runs at start-up.
type sandboxExecutor struct {
	*buildexec.Executor
	sb      *sandbox.Client
	cfg     *agent.Config
	metrics *agent.Metrics
}

// newExecutor composes the supply-chain gate, secrets, network policy and
// sandbox for `agent run`. Any part that cannot be set up stops the agent
// with a reason: an agent that cannot enforce the policy must not claim jobs.
// Sandbox and network timings and garbage collection go to m.
var newExecutor = func(cfg *agent.Config, log hclog.Logger, m *agent.Metrics) (agent.Executor, error) {
	keyPEM, err := os.ReadFile(cfg.SigningKey)
	if err != nil {
		return nil, fmt.Errorf("reading signing key: %w", err)
	}
	priv, err := supplychain.ParsePrivateKeyPEM(keyPEM)
	if err != nil {
		return nil, fmt.Errorf("parsing signing key %s: %w", cfg.SigningKey, err)
	}
	store := secrets.NewStore()
	if cfg.SecretsFile != "" {
		if store, err = secrets.LoadFile(cfg.SecretsFile); err != nil {
			return nil, err
		}
	}
	// The agent's own credentials are redacted everywhere and can never be
	// granted to a job.
	tok, err := cfg.Token()
	if err != nil {
		return nil, err
	}
	store.AddAgentCredential("runner token", []byte(tok))
	store.AddAgentCredential("signing key", keyPEM)

	addr := agentContainerdAddress(cfg)
	// An agent that cannot enforce the policy must not claim jobs: every
	// prerequisite is checked first (an unreachable registry only warns,
	// it may come back).
	rep := preflight.Run(context.Background(), cfg, preflight.Options{ContainerdAddress: addr})
	for _, r := range rep.Failed(true) {
		log.Error("host check failed", "check", r.Name, "problem", r.Detail, "fix", r.Fix)
	}
	if failed := rep.Failed(false); len(failed) > 0 {
		return nil, fmt.Errorf("host check: %d problem(s) logged above (cleanroom agent check prints them with their fixes)", len(failed))
	}
	userns, why := preflight.UserNS(cfg)
	if userns == nil {
		log.Warn("sandboxes share the host's user namespace", "reason", why)
	}
	sb, err := sandbox.New(context.Background(), sandbox.Config{
		Address: addr, Namespace: cfg.Containerd.Namespace, Agent: cfg.Name,
		StateDir: filepath.Join(cfg.DataDir, "sandbox"), Logger: log.Named("sandbox"),
		UserNS: userns,
	})
	if err != nil {
		// With user namespaces on, a range that cannot be used (the kernel,
		// a real user's IDs, another agent's range) stops the agent: jobs
		// never silently run without them.
		return nil, err
	}
	if userns != nil {
		log.Info("sandboxes run in user namespaces of their own", "slots", userns.Slots,
			"host_ids", fmt.Sprintf("%d-%d", userns.Base, uint64(userns.Base)+uint64(userns.Slots)*sandbox.UserNSSize-1))
	}
	hosts := map[string][]net.IP{}
	for h, ip := range cfg.Network.Hosts {
		hosts[h] = append(hosts[h], net.ParseIP(ip))
	}
	gw, gww, err := newGateway(cfg, store, hosts, log)
	if err != nil {
		sb.Close()
		return nil, err
	}
	lim := sandbox.Limits{
		MemoryBytes: int64(cfg.Limits.Memory), CPUs: cfg.Limits.CPUs, Pids: cfg.Limits.PIDs, DiskBytes: int64(cfg.Limits.Disk),
	}
	// Process attribution is best effort: without it jobs run and their
	// egress events carry process null; the reason is logged once, here.
	tracer, err := attribution.Load()
	if err != nil {
		log.Warn("egress events will not name their process", "reason", err)
		tracer = nil
	}
	ex, err := buildexec.New(buildexec.Config{
		RunnerID: cfg.RunnerID, RunnerName: cfg.Name,
		BuilderID:  builderID(cfg),
		Image:      cfg.Image,
		Registries: gww.registries, RegistryAliases: cfg.RegistryAliases, AllowSHA1: cfg.AllowSHA1,
		Gateway: gw, GatewayPort: cfg.Gateway.Port, GatewayScopes: gww.scopes, UpstreamSecrets: gww.upstreamSecrets,
		Extra: cfg.Network.Extra, OnViolation: cfg.Network.OnViolation,
		Forward: cfg.Network.Mode == agent.NetworkModeForward, Masquerade: cfg.Network.Masquerade,
		Hosts: hosts, HostNS: cfg.Network.HostNetNS,
		DataDir: cfg.DataDir, NetStateDir: cfg.Network.StateDir, Limits: lim, Secrets: store, Signing: priv, Sandbox: sb,
		InstallScripts: cfg.InstallScripts,
		Artifacts:      buildexec.ArtifactLimits{MaxBytes: int64(cfg.Artifacts.MaxBytes), MaxFiles: cfg.Artifacts.MaxFiles},
		Git: buildexec.GitConfig{
			Hosts: cfg.Git.Hosts, CAFile: cfg.Git.CAFile,
			MaxBytes: int64(cfg.Git.MaxBytes), MaxFiles: cfg.Git.MaxFiles,
		},
		Logger:      log.Named("job"),
		Observe:     observe(m),
		Attribution: tracer,
	})
	if err != nil {
		tracer.Close()
		sb.Close()
		return nil, err
	}
	return &sandboxExecutor{Executor: ex, sb: sb, cfg: cfg, metrics: m}, nil
}

// Close releases what the executor holds for the agent's whole life: the
// containerd connection and the claim on its user-namespace range (whose
// file it removes). agent run calls it once every job has ended.
func (e *sandboxExecutor) Close() error { return e.sb.Close() }

// agentContainerdAddress is the config's containerd socket, or
// $CLEANROOM_CONTAINERD_ADDRESS when the config keeps the default.
func agentContainerdAddress(cfg *agent.Config) string {
	if env := os.Getenv("CLEANROOM_CONTAINERD_ADDRESS"); env != "" && cfg.Containerd.Address == agent.DefaultContainerdAddress {
		return env
	}
	return cfg.Containerd.Address
}

// builderID names this runner in provenance; verify --coordinator resolves
// it back to the runner's registered public key.
func builderID(cfg *agent.Config) string {
	return fmt.Sprintf("%s/runners/%s", cfg.URLs()[0], cfg.RunnerID)
}

// Startup reclaims what a crashed run of this agent left behind, before the
// first claim.
func (e *sandboxExecutor) Startup(ctx context.Context, log hclog.Logger) error {
	// This agent's sandboxes and the networks its pool leases explain; never
	// another agent's (All would also take leaseless networks).
	rep, err := buildexec.GC(ctx, e.sb, buildexec.GCOptions{
		Agent: e.cfg.Name, HostNS: e.cfg.Network.HostNetNS,
		NetStateDir: e.cfg.Network.StateDir,
	})
	recordGC(e.metrics, rep)
	if !rep.Empty() {
		log.Warn("reclaimed what a previous run left behind", "containers", rep.Sandbox.Containers,
			"namespaces", rep.Network.Namespaces, "links", rep.Network.Links, "chains", rep.Network.Chains)
	}
	if err != nil {
		// Not fatal: every job's sandbox and network have names of their
		// own, so leftovers cannot collide with new jobs; they are retried
		// at the next start and by `cleanroom gc`.
		log.Error("cleaning up after a previous run (continuing; retry with `cleanroom gc`)", "error", err)
	}
	return nil
}
