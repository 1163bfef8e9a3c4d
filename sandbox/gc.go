package sandbox

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/containerd/containerd"
	"github.com/containerd/containerd/errdefs"
	"github.com/containerd/containerd/snapshots"
)

// GCOptions choose what GC may remove.
type GCOptions struct {
	// Agent limits GC to objects labelled with this agent; empty: any agent.
	Agent string
	// All removes objects even when the process that made them still runs.
	// Without it GC only takes what dead processes left behind, so running
	// it beside a live agent is safe.
	All bool
	// Keep, if set, protects the jobs it returns true for.
	Keep func(jobID string) bool
	// DryRun reports without removing.
	DryRun bool
	// UserNSCache also removes the remapped image snapshots of user
	// namespace slots (of Agent, or of any agent) that no sandbox uses.
	// They are a cache the next sandbox of a slot builds on, so plain GC
	// keeps them; without them the next sandbox of each slot remaps the
	// image again.
	UserNSCache bool
}

// GCReport lists what GC removed (or would remove, with DryRun).
type GCReport struct {
	Containers []string
	Snapshots  []string
	StateDirs  []string
	Cgroups    []string
	// UserNSCache lists the remapped image snapshots removed
	// (GCOptions.UserNSCache).
	UserNSCache []string
}

// Empty reports whether GC found nothing.
func (r GCReport) Empty() bool {
	return len(r.Containers)+len(r.Snapshots)+len(r.StateDirs)+len(r.Cgroups)+len(r.UserNSCache) == 0
}

// GC removes containers, tasks, snapshots, workspace mounts, state dirs and
// cgroups that carry cleanroom's labels (or names) and whose owner is gone.
// Objects without our labels are never touched.
func (c *Client) GC(ctx context.Context, o GCOptions) (GCReport, error) {
	ctx, cancel := context.WithTimeout(c.ctx(context.WithoutCancel(ctx)), 2*time.Minute)
	defer cancel()
	var rep GCReport
	var errs []error
	eligible := func(labels map[string]string) bool {
		job, ok := labels[LabelJob]
		if !ok {
			return false
		}
		if o.Agent != "" && labels[LabelAgent] != o.Agent {
			return false
		}
		if o.Keep != nil && o.Keep(job) {
			return false
		}
		if !o.All && ownerAlive(labels[LabelOwner]) {
			return false
		}
		return true
	}

	live := map[string]bool{}    // container ids we keep
	removed := map[string]bool{} // container ids we collect
	ctrs, err := c.cd.Containers(ctx, fmt.Sprintf("labels.%q", LabelJob))
	if err != nil {
		return rep, fmt.Errorf("listing containers: %w", err)
	}
	for _, ctr := range ctrs {
		labels, err := ctr.Labels(ctx)
		if err != nil {
			errs = append(errs, fmt.Errorf("reading labels of %s: %w", ctr.ID(), err))
			continue
		}
		if !eligible(labels) {
			live[ctr.ID()] = true
			continue
		}
		rep.Containers = append(rep.Containers, ctr.ID())
		removed[ctr.ID()] = true
		if o.DryRun {
			continue
		}
		if task, err := ctr.Task(ctx, nil); err == nil {
			if err := destroyTask(ctx, task); err != nil {
				errs = append(errs, fmt.Errorf("removing task of %s: %w", ctr.ID(), err))
			}
		} else if !errdefs.IsNotFound(err) {
			errs = append(errs, fmt.Errorf("loading task of %s: %w", ctr.ID(), err))
		}
		if err := ctr.Delete(ctx, containerd.WithSnapshotCleanup); err != nil && !errdefs.IsNotFound(err) {
			errs = append(errs, fmt.Errorf("deleting container %s: %w", ctr.ID(), err))
		}
		c.reapStrayShims(ctr.ID(), 500*time.Millisecond)
	}

	// Snapshots prepared for a container that was never created.
	sn := c.cd.SnapshotService(containerd.DefaultSnapshotter)
	var orphans []string
	if err := sn.Walk(ctx, func(_ context.Context, info snapshots.Info) error {
		if live[info.Name] || !eligible(info.Labels) {
			return nil
		}
		orphans = append(orphans, info.Name)
		return nil
	}, fmt.Sprintf("labels.%q", LabelJob)); err != nil {
		errs = append(errs, fmt.Errorf("listing snapshots: %w", err))
	}
	for _, name := range orphans {
		if _, err := c.cd.ContainerService().Get(ctx, name); err == nil {
			continue // its container still exists and was handled above
		}
		rep.Snapshots = append(rep.Snapshots, name)
		if o.DryRun {
			continue
		}
		if err := sn.Remove(ctx, name); err != nil && !errdefs.IsNotFound(err) {
			errs = append(errs, fmt.Errorf("removing snapshot %s: %w", name, err))
		}
	}

	// State dirs (workspaces, loop-mounted disks) and cgroups named cr-<job>
	// with no container left.
	exists := func(id string) bool {
		_, err := c.cd.ContainerService().Get(ctx, id)
		return err == nil
	}
	dirs, _ := filepath.Glob(filepath.Join(c.cfg.StateDir, "cr-*"))
	for _, d := range dirs {
		id := filepath.Base(d)
		if exists(id) || (o.Keep != nil && o.Keep(strings.TrimPrefix(id, "cr-"))) {
			continue
		}
		// A sandbox being created has its state dir (the workspace copy)
		// before its container: spare fresh ones unless told otherwise.
		if st, err := os.Stat(d); err == nil && time.Since(st.ModTime()) < time.Minute && !o.All && !removed[id] {
			continue
		}
		rep.StateDirs = append(rep.StateDirs, d)
		if !o.DryRun {
			if err := removeStateDir(d); err != nil {
				errs = append(errs, err)
			}
		}
	}
	seen := map[string]bool{}
	for _, d := range cgroupDirs("cr-*") {
		id := filepath.Base(d)
		if exists(id) || seen[id] || (o.Keep != nil && o.Keep(strings.TrimPrefix(id, "cr-"))) {
			continue
		}
		// Cgroup paths do not name the containerd namespace: a populated
		// one may be a live sandbox of another namespace. Only --all
		// kills what runs in it.
		if !o.All && cgroupPopulated(d) {
			continue
		}
		seen[id] = true
		rep.Cgroups = append(rep.Cgroups, "/cleanroom/"+id)
		if !o.DryRun {
			if err := removeCgroup("/cleanroom/" + id); err != nil {
				errs = append(errs, err)
			}
		}
	}
	if o.UserNSCache {
		// After the containers: a parent with children cannot go.
		names, err := c.collectUserNSCache(ctx, o.Agent, o.DryRun)
		rep.UserNSCache = names
		if err != nil {
			errs = append(errs, err)
		}
	}
	return rep, errors.Join(errs...)
}

// Residue lists every object of ours that still exists, whatever its owner:
// containers and snapshots labelled with agent (any agent when empty), state
// dirs and mounts under this client's state dir, and the cgroups of those
// state dirs' and containers' sandboxes (all cr-* cgroups when agent is
// empty). Tests and `cleanroom gc --check` use it to prove teardown left
// nothing behind. The remapped image snapshots of user-namespace slots are a
// cache, not residue: UserNSCache lists them.
func (c *Client) Residue(ctx context.Context, agent string) ([]string, error) {
	ctx = c.ctx(ctx)
	var out []string
	filter := fmt.Sprintf("labels.%q", LabelJob)
	if agent != "" {
		filter = fmt.Sprintf("labels.%q==%q", LabelAgent, agent)
	}
	ctrs, err := c.cd.Containers(ctx, filter)
	if err != nil {
		return nil, fmt.Errorf("listing containers: %w", err)
	}
	for _, ctr := range ctrs {
		out = append(out, "container "+ctr.ID())
	}
	if err := c.cd.SnapshotService(containerd.DefaultSnapshotter).Walk(ctx, func(_ context.Context, info snapshots.Info) error {
		out = append(out, "snapshot "+info.Name)
		return nil
	}, filter); err != nil {
		return nil, fmt.Errorf("listing snapshots: %w", err)
	}
	dirs, _ := filepath.Glob(filepath.Join(c.cfg.StateDir, "cr-*"))
	for _, d := range dirs {
		out = append(out, "state dir "+d)
	}
	for _, m := range mountsUnder(c.cfg.StateDir) {
		out = append(out, "mount "+m)
	}
	if agent == "" {
		for _, d := range cgroupDirs("cr-*") {
			out = append(out, "cgroup "+d)
		}
	}
	return out, nil
}

// CgroupsOf lists the cgroup directories that exist for a job's sandbox.
func CgroupsOf(jobID string) []string {
	id := ContainerID(jobID)
	var out []string
	for _, d := range cgroupDirs(id) {
		if _, err := os.Stat(d); err == nil {
			out = append(out, d)
		}
	}
	return out
}

// cgroupPopulated reports whether any process is in the cgroup dir d.
func cgroupPopulated(d string) bool {
	b, err := os.ReadFile(filepath.Join(d, "cgroup.procs"))
	return err == nil && len(strings.TrimSpace(string(b))) > 0
}

// Exists reports whether a container with this id exists (any owner).
func (c *Client) Exists(ctx context.Context, id string) bool {
	_, err := c.cd.ContainerService().Get(c.ctx(ctx), id)
	return err == nil
}

// cgroupDirs lists the sandbox cgroup directories whose name matches the
// glob name, under every v1 controller and the v2 unified root.
func cgroupDirs(name string) []string {
	v1, _ := filepath.Glob("/sys/fs/cgroup/*/cleanroom/" + name)
	v2, _ := filepath.Glob("/sys/fs/cgroup/cleanroom/" + name)
	return append(v1, v2...)
}
