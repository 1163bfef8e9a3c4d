package main

import (
	"context"
	"fmt"

	"github.com/cleanroom-ci/cleanroom/agent"
	"github.com/cleanroom-ci/cleanroom/agent/buildexec"
	"github.com/cleanroom-ci/cleanroom/agent/preflight"
	"github.com/cleanroom-ci/cleanroom/sandbox/nodeimage"
)

// ReadyChecks are what `agent run`'s /readyz checks before saying the agent
// can run a job (agent.ReadinessReporter): each is cheap, and the agent
// caches their results for a few seconds.
func (e *sandboxExecutor) ReadyChecks() []agent.ReadyCheck {
	image := e.cfg.Image
	if image == "" {
		image = nodeimage.DefaultRef
	}
	return []agent.ReadyCheck{
		{Name: "containerd", Check: func(ctx context.Context) error {
			_, err := preflight.Containerd(ctx, e.sb)
			return err
		}},
		{Name: "image", Check: func(ctx context.Context) error { return preflight.Image(ctx, e.sb, image) }},
		{Name: "network_policy", Check: func(context.Context) error { return networkReady(e.cfg.Network.StateDir) }},
	}
}

// networkReady checks what a job's network needs of the host, without
// making one: iptables and ip6tables on PATH, and the address pool's state
// directory writable.
func networkReady(stateDir string) error {
	if err := preflight.NetworkTools(); err != nil {
		return err
	}
	if err := preflight.Writable(stateDir); err != nil {
		return fmt.Errorf("network state dir: %w", err)
	}
	return nil
}

// observe feeds the executor's sandbox and network timings to the agent's
// metrics.
func observe(m *agent.Metrics) func(buildexec.Observation) {
	return func(o buildexec.Observation) { m.ObserveIsolation(o.Part, o.Op, o.Duration, o.Err != nil) }
}

// recordGC counts what a garbage collection removed.
func recordGC(m *agent.Metrics, rep buildexec.GCReport) {
	s, n := rep.Sandbox, rep.Network
	for kind, list := range map[string][]string{
		"containers": s.Containers, "snapshots": s.Snapshots, "state_dirs": s.StateDirs, "cgroups": s.Cgroups,
		"namespaces": n.Namespaces, "links": n.Links, "rules": n.Rules, "chains": n.Chains, "leases": n.Leases,
	} {
		m.GCRemoved(kind, len(list))
	}
}
