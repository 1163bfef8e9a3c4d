package buildexec

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/cleanroom-ci/cleanroom/netpolicy"
	"github.com/cleanroom-ci/cleanroom/sandbox"
)

// GCOptions choose what GC reclaims.
type GCOptions struct {
	// Agent limits sandbox GC to one agent's objects ("" = every agent's).
	Agent string
	// All also removes sandboxes whose creating process still runs.
	All bool
	// HostNS and NetStateDir locate the network side (as in Config).
	HostNS      string
	NetStateDir string
	DryRun      bool
}

// GCReport is what GC removed.
type GCReport struct {
	Sandbox sandbox.GCReport
	Network netpolicy.Report
}

// Empty reports whether nothing was found.
func (r GCReport) Empty() bool {
	n := r.Network
	return r.Sandbox.Empty() && len(n.Namespaces)+len(n.Links)+len(n.Rules)+len(n.Chains)+len(n.Leases) == 0
}

// GC reclaims what crashed jobs left: first sandboxes (containers, tasks,
// snapshots, workspace mounts, cgroups) whose owner is gone, then every
// network namespace, veth, host chain and pool lease of a job that has no
// sandbox left. A job whose container still exists is left alone, so GC is
// safe beside a running agent.
func GC(ctx context.Context, c *sandbox.Client, o GCOptions) (GCReport, error) {
	var rep GCReport
	var errs []error
	sr, err := c.GC(ctx, sandbox.GCOptions{Agent: o.Agent, All: o.All, DryRun: o.DryRun})
	rep.Sandbox = sr
	if err != nil {
		errs = append(errs, fmt.Errorf("collecting sandboxes: %w", err))
	}
	if o.DryRun {
		return rep, errors.Join(errs...)
	}
	alive := func(job string) bool {
		if c.Exists(ctx, sandbox.ContainerID(sandboxID(job))) {
			return true
		}
		// A job between its network setup and its sandbox creation has a
		// namespace but no container yet: spare namespaces made in the last
		// minute (a crashed job's are older by the time anyone collects).
		if st, err := os.Stat(filepath.Join("/run/netns", "cr-"+job)); err == nil && time.Since(st.ModTime()) < time.Minute && !o.All {
			return true
		}
		return false
	}
	nr, err := netpolicy.GC(ctx, netpolicy.GCOptions{HostNS: o.HostNS, StateDir: o.NetStateDir, Keep: alive})
	rep.Network = nr
	if err != nil {
		errs = append(errs, fmt.Errorf("collecting networks: %w", err))
	}
	return rep, errors.Join(errs...)
}
