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
// network namespace, veth, host chain and pool lease of a job whose lease
// holder is gone and that has no sandbox left. Live jobs — of this agent or
// of another agent on the same host — are left alone.
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
	// Networks whose job still has a live holder stay: another agent's on
	// the same host, or one between network setup and sandbox creation.
	liveLease := map[string]bool{}
	if o.NetStateDir != "" {
		if pool, err := netpolicy.NewPool("", o.NetStateDir); err == nil {
			if leases, err := pool.Leases(); err == nil {
				for _, l := range leases {
					if l.Owner != "" && sandbox.OwnerAlive(l.Owner) {
						liveLease[l.Job] = true
					}
				}
			}
		}
	}
	alive := func(job string) bool {
		if liveLease[job] || c.Exists(ctx, sandbox.ContainerID(sandboxID(job))) {
			return true
		}
		// No lease at all (made by something without one, or mid-setup):
		// spare namespaces made in the last minute unless --all.
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
