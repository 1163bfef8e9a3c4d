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
	// All also removes sandboxes whose creating process still runs, and
	// networks (cr-* namespaces, veths, chains) that no lease of this host's
	// pool explains, once they are a minute old.
	All bool
	// HostNS and NetStateDir locate the network side (as in Config).
	HostNS      string
	NetStateDir string
	DryRun      bool
	// UserNSCache also removes the remapped image snapshots of unused
	// user-namespace slots (sandbox.GCOptions.UserNSCache).
	UserNSCache bool
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
	sr, err := c.GC(ctx, sandbox.GCOptions{Agent: o.Agent, All: o.All, DryRun: o.DryRun, UserNSCache: o.UserNSCache})
	rep.Sandbox = sr
	if err != nil {
		errs = append(errs, fmt.Errorf("collecting sandboxes: %w", err))
	}
	if o.DryRun {
		return rep, errors.Join(errs...)
	}
	// Networks are collected only when they are attributable: a lease in
	// this host's pool whose holder is gone. A network with no lease here
	// belongs to another pool (another tool, a test) and is only taken with
	// All, once it is a minute old.
	leased := map[string]bool{} // job → holder alive
	if o.NetStateDir != "" {
		if pool, err := netpolicy.NewPool("", o.NetStateDir); err == nil {
			if leases, err := pool.Leases(); err == nil {
				for _, l := range leases {
					leased[l.Job] = l.Owner != "" && sandbox.OwnerAlive(l.Owner)
				}
			}
		}
	}
	alive := func(job string) bool {
		if c.Exists(ctx, sandbox.ContainerID(sandboxID(job))) {
			return true
		}
		if holderAlive, ok := leased[job]; ok {
			return holderAlive
		}
		if !o.All {
			return true
		}
		st, err := os.Stat(filepath.Join("/run/netns", "cr-"+job))
		return err == nil && time.Since(st.ModTime()) < time.Minute
	}
	nr, err := netpolicy.GC(ctx, netpolicy.GCOptions{HostNS: o.HostNS, StateDir: o.NetStateDir, Keep: alive})
	rep.Network = nr
	if err != nil {
		errs = append(errs, fmt.Errorf("collecting networks: %w", err))
	}
	return rep, errors.Join(errs...)
}
