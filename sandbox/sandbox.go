// Package sandbox owns the containerd side of a job: the node image, the
// container's snapshot, the hardened OCI spec (non-root, no capabilities,
// seccomp, read-only root, masked /proc, private namespaces), resource limits
// (memory, CPU, pids, a disk-limited workspace), running steps with streamed
// output, timeouts and cancellation (SIGTERM, grace, SIGKILL), and the
// destruction of all of it — plus garbage collection, by label, of whatever a
// crashed process left behind. With Config.UserNS each sandbox runs in a user
// namespace of its own on a host ID range unique to its slot (userns.go).
//
// The package knows nothing of networks, secrets or jobs queues: the caller
// hands it a network namespace path, an environment and a workspace.
package sandbox

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/containerd/containerd"
	"github.com/containerd/containerd/cio"
	"github.com/containerd/containerd/containers"
	"github.com/containerd/containerd/errdefs"
	"github.com/containerd/containerd/namespaces"
	"github.com/containerd/containerd/snapshots"
	"github.com/containerd/typeurl/v2"
	"github.com/hashicorp/go-hclog"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// Labels every containerd object of ours carries, so GC finds them.
const (
	LabelJob   = "cleanroom.job"
	LabelAgent = "cleanroom.agent"
	// LabelOwner identifies the process that created the object
	// ("pid:starttime"), so GC can tell a live sandbox from a crashed one's.
	LabelOwner = "cleanroom.owner"
)

// DefaultNamespace is the containerd namespace cleanroom works in.
const DefaultNamespace = "cleanroom"

// DefaultAddress is the system containerd socket.
const DefaultAddress = "/run/containerd/containerd.sock"

// Errors callers classify with errors.Is.
var (
	ErrInvalidOptions = errors.New("invalid sandbox options")
	ErrImageNotFound  = errors.New("image not found")
	ErrStepNotFound   = errors.New("step command not found")
	ErrStopped        = errors.New("sandbox stopped")
	ErrContainerd     = errors.New("containerd unavailable")
)

// Reason says why a step ended other than by itself; empty when it did.
type Reason string

// The reasons a step can be ended.
const (
	ReasonNone       Reason = ""
	ReasonTimeout    Reason = "timeout"
	ReasonCanceled   Reason = "canceled"
	ReasonOOM        Reason = "out of memory"
	ReasonPidsLimit  Reason = "pids limit reached"
	ReasonDiskLimit  Reason = "disk limit reached"
	ReasonKilledHost Reason = "killed"
)

// Limits are the resources one sandbox may use. Zero fields take defaults;
// negative ones are an error.
type Limits struct {
	MemoryBytes int64   // memory cgroup limit; swap is disabled
	CPUs        float64 // CFS quota in CPUs
	Pids        int64   // pids cgroup limit: fork bombs stop here
	DiskBytes   int64   // size of the workspace filesystem; 0 = no separate filesystem
	TmpBytes    int64   // size of the /tmp tmpfs (counts toward memory)
}

// DefaultLimits are used for zero fields of Options.Limits.
var DefaultLimits = Limits{
	MemoryBytes: 2 << 30,
	CPUs:        2,
	Pids:        1024,
	TmpBytes:    512 << 20,
}

// WithDefaults returns l with its zero fields taken from DefaultLimits: the
// one place a limit gets its default (DiskBytes has none: zero means no
// filesystem of its own).
func (l Limits) WithDefaults() Limits {
	if l.MemoryBytes == 0 {
		l.MemoryBytes = DefaultLimits.MemoryBytes
	}
	if l.CPUs == 0 {
		l.CPUs = DefaultLimits.CPUs
	}
	if l.Pids == 0 {
		l.Pids = DefaultLimits.Pids
	}
	if l.TmpBytes == 0 {
		l.TmpBytes = DefaultLimits.TmpBytes
	}
	return l
}

// Mount is an extra read-only bind mount (for example the resolv.conf of the
// job's network policy, or a per-job .npmrc).
type Mount struct {
	Source      string
	Destination string
	// BuildUser hands the source to the build user (chowned to the host IDs
	// the build user has in this sandbox, which differ per sandbox with user
	// namespaces) before the first step, for a file only it may read.
	BuildUser bool
}

// Options describe one sandbox.
type Options struct {
	// JobID names the sandbox ("cr-<JobID>") and labels everything it creates.
	JobID string
	// Image is a reference already present in containerd.
	Image string
	// Workspace is a host directory whose contents are copied into the
	// sandbox's own workspace (owned by the build user). Empty: start empty.
	Workspace string
	// NetNS is the network namespace path to join; empty makes a new, empty one.
	NetNS string
	// Env is the complete environment of every step: nothing else is added.
	Env []string
	// Limits; zero fields take DefaultLimits.
	Limits Limits
	// Mounts are extra read-only bind mounts.
	Mounts []Mount
	// Labels are added to the container and snapshot labels.
	Labels map[string]string
	// Hostname defaults to "cr-<JobID>".
	Hostname string
	// PathsLater says NetNS and the mount sources are being made while
	// Create runs (the agent sets up the job's network concurrently): they
	// are checked when a step starts instead of by Create.
	PathsLater bool

	workspaceMount string
	userNS         bool   // run in a user namespace of its own
	userNSStart    uint32 // its first host ID
	sysfsMount     string // with a user namespace and NetNS: the host's sysfs of NetNS
	testRW         []Mount
}

// Config configures a Client.
type Config struct {
	// Address of the containerd socket; empty uses DefaultAddress.
	Address string
	// Namespace in containerd; empty uses DefaultNamespace.
	Namespace string
	// Agent is recorded in the cleanroom.agent label of every object.
	Agent string
	// StateDir holds per-sandbox workspaces, disk images and FIFOs.
	StateDir string
	// Runtime is the containerd runtime; empty uses io.containerd.runc.v2.
	Runtime string
	// UserNS, if set, runs every sandbox in a user namespace of its own on
	// a host ID range unique to its slot; New fails (ErrUserNS) when the
	// kernel or the host's users do not allow the range. Nil: sandboxes
	// share the host's user namespace (the build user is host uid 1000).
	UserNS *UserNS
	Logger hclog.Logger
}

// Client creates sandboxes in one containerd namespace.
type Client struct {
	cd       *containerd.Client
	cfg      Config
	log      hclog.Logger
	owner    string
	closer   sync.Once
	unpacked sync.Map // ref@digest → unpacked once
	chains   sync.Map // image digest → chain id of its root filesystem
	slots    *slots   // nil without user namespaces
}

// New connects to containerd. It fails fast (5 s) with ErrContainerd and the
// address when the daemon does not answer.
func New(ctx context.Context, cfg Config) (*Client, error) {
	if cfg.Address == "" {
		cfg.Address = DefaultAddress
	}
	if abs, err := filepath.Abs(cfg.Address); err == nil {
		cfg.Address = abs
	}
	if cfg.Namespace == "" {
		cfg.Namespace = DefaultNamespace
	}
	if cfg.Agent == "" {
		cfg.Agent = "local"
	}
	if cfg.StateDir == "" {
		cfg.StateDir = "/var/lib/cleanroom/sandbox"
	}
	if cfg.Runtime == "" {
		cfg.Runtime = "io.containerd.runc.v2"
	}
	if cfg.Logger == nil {
		cfg.Logger = hclog.NewNullLogger()
	}
	if err := os.MkdirAll(cfg.StateDir, 0o700); err != nil {
		return nil, fmt.Errorf("creating state dir: %w", err)
	}
	if _, err := os.Stat(cfg.Address); err != nil {
		return nil, fmt.Errorf("%w: no socket at %s (start containerd, or set the address in the config)", ErrContainerd, cfg.Address)
	}
	cd, err := containerd.New(cfg.Address, containerd.WithDefaultNamespace(cfg.Namespace), containerd.WithTimeout(5*time.Second))
	if err != nil {
		return nil, fmt.Errorf("%w: connecting to %s: %v", ErrContainerd, cfg.Address, err)
	}
	vctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if _, err := cd.Version(vctx); err != nil {
		cd.Close()
		return nil, fmt.Errorf("%w: %s does not answer: %v", ErrContainerd, cfg.Address, err)
	}
	c := &Client{cd: cd, cfg: cfg, log: cfg.Logger, owner: selfOwner()}
	if cfg.UserNS != nil {
		if c.slots, err = newSlots(*cfg.UserNS); err != nil {
			cd.Close()
			return nil, err
		}
	}
	return c, nil
}

// UserNS reports whether sandboxes of this client run in user namespaces.
func (c *Client) UserNS() bool { return c.slots != nil }

// Containerd exposes the underlying client (image import, GC, tests).
func (c *Client) Containerd() *containerd.Client { return c.cd }

// Namespace returns the containerd namespace in use.
func (c *Client) Namespace() string { return c.cfg.Namespace }

// Close releases the connection.
func (c *Client) Close() error {
	var err error
	c.closer.Do(func() { err = errors.Join(c.cd.Close(), c.slots.close()) })
	return err
}

func (c *Client) ctx(ctx context.Context) context.Context {
	return namespaces.WithNamespace(ctx, c.cfg.Namespace)
}

var jobIDRe = regexp.MustCompile(`^[a-z0-9][a-z0-9-]{0,62}$`)

// ContainerID is the containerd id (and hostname, and state dir) of a job's sandbox.
func ContainerID(jobID string) string { return "cr-" + jobID }

func (o *Options) validate() error {
	var errs []string
	if !jobIDRe.MatchString(o.JobID) {
		errs = append(errs, fmt.Sprintf("job id %q: want lowercase letters, digits and '-', at most 63", o.JobID))
	}
	if o.Image == "" {
		errs = append(errs, "image: empty")
	}
	if o.Workspace != "" {
		st, err := os.Stat(o.Workspace)
		switch {
		case err != nil:
			errs = append(errs, fmt.Sprintf("workspace %s: %v", o.Workspace, errors.Unwrap(err)))
		case !st.IsDir():
			errs = append(errs, fmt.Sprintf("workspace %s: not a directory", o.Workspace))
		}
	}
	if o.NetNS != "" && !o.PathsLater {
		if _, err := os.Stat(o.NetNS); err != nil {
			errs = append(errs, fmt.Sprintf("network namespace %s: does not exist", o.NetNS))
		}
	}
	l := &o.Limits
	if l.MemoryBytes < 0 || l.CPUs < 0 || l.Pids < 0 || l.DiskBytes < 0 || l.TmpBytes < 0 {
		errs = append(errs, "limits: must not be negative")
	}
	*l = l.WithDefaults()
	if l.MemoryBytes > 0 && l.MemoryBytes < 16<<20 {
		errs = append(errs, fmt.Sprintf("memory limit %d bytes: below the 16 MiB a process needs to start", l.MemoryBytes))
	}
	if l.Pids > 0 && l.Pids < 8 {
		errs = append(errs, fmt.Sprintf("pids limit %d: below the 8 a step needs to start", l.Pids))
	}
	if l.DiskBytes > 0 && l.DiskBytes < 16<<20 {
		errs = append(errs, fmt.Sprintf("disk limit %d bytes: below the 16 MiB minimum", l.DiskBytes))
	}
	for _, m := range o.Mounts {
		if !filepath.IsAbs(m.Source) || !filepath.IsAbs(m.Destination) {
			errs = append(errs, fmt.Sprintf("mount %s:%s: paths must be absolute", m.Source, m.Destination))
		} else if _, err := os.Stat(m.Source); err != nil && !o.PathsLater {
			errs = append(errs, fmt.Sprintf("mount source %s: does not exist", m.Source))
		}
	}
	if err := validEnv(o.Env); err != nil {
		errs = append(errs, err.Error())
	}
	if o.Hostname == "" {
		o.Hostname = ContainerID(o.JobID)
	}
	if len(errs) > 0 {
		return fmt.Errorf("%w: %s", ErrInvalidOptions, strings.Join(errs, "; "))
	}
	return nil
}

// Sandbox is one container: its snapshot, workspace, network and limits
// persist across steps; each step runs in turn as the container's task (PID 1
// of a fresh pid namespace). It must be destroyed with Destroy.
type Sandbox struct {
	c          *Client
	id         string
	jobID      string
	ctr        containerd.Container
	task       containerd.Task
	spec       *specs.Spec
	stateDir   string
	later      []string // paths to check before each step (Options.PathsLater)
	ws         string   // host path of the workspace (mounted at /workspace)
	disk       bool     // ws is a loop-mounted filesystem
	cgroup     string
	slot       int      // user-namespace slot, -1 for none
	uid, gid   int      // host IDs of the build user
	chownLater []string // BuildUser mount sources to hand over before a step
	netns      string   // NetNS, when its sysfs is mounted by the host (WithSysfsFrom)
	sysfs      string   // where: mounted before the first step
	sysfsDone  bool

	mu      sync.Mutex
	steps   int
	stopped bool
	gone    bool
	// empty: stopAll succeeded, so no task exists and none can start.
	empty bool
}

// Create makes a new sandbox: workspace, snapshot and hardened container;
// its steps are started by Run.
// On any error, everything it made is removed before it returns.
func (c *Client) Create(ctx context.Context, o Options) (_ *Sandbox, retErr error) {
	if err := o.validate(); err != nil {
		return nil, err
	}
	ctx = c.ctx(ctx)
	id := ContainerID(o.JobID)
	s := &Sandbox{c: c, id: id, jobID: o.JobID, stateDir: filepath.Join(c.cfg.StateDir, id), cgroup: "/cleanroom/" + id,
		slot: -1, uid: BuildUID, gid: BuildGID}
	if o.PathsLater {
		if o.NetNS != "" {
			s.later = append(s.later, o.NetNS)
		}
		for _, m := range o.Mounts {
			s.later = append(s.later, m.Source)
		}
	}
	defer func() {
		if retErr != nil {
			if err := s.Destroy(context.WithoutCancel(ctx)); err != nil {
				c.log.Warn("cleaning up after failed create", "sandbox", id, "error", err)
			}
		}
	}()

	labels := map[string]string{}
	for k, v := range o.Labels {
		labels[k] = v
	}
	if labels[LabelJob] == "" {
		labels[LabelJob] = o.JobID // a caller may label with its own job id
	}
	labels[LabelAgent] = c.cfg.Agent
	labels[LabelOwner] = c.owner
	img, err := c.image(ctx, o.Image)
	if err != nil {
		return nil, err
	}
	snapshot := containerd.WithNewSnapshot(id, img, snapshots.WithLabels(labels))
	if c.slots != nil {
		if s.slot, err = c.slots.acquire(ctx, c.slotBusy(ctx)); err != nil {
			return nil, err
		}
		o.userNS, o.userNSStart = true, c.slots.start(s.slot)
		s.uid, s.gid = int(o.userNSStart)+BuildUID, int(o.userNSStart)+BuildGID
		labels[LabelUserNS] = strconv.FormatUint(uint64(o.userNSStart), 10)
		parent, err := c.remappedParent(ctx, img, o.userNSStart)
		if err != nil {
			return nil, fmt.Errorf("%w: %v", ErrUserNS, err)
		}
		snapshot = withChildSnapshot(id, parent, labels)
	}
	for _, m := range o.Mounts {
		if !m.BuildUser {
			continue
		}
		if err := os.Chown(m.Source, s.uid, s.gid); err != nil {
			if !o.PathsLater || !errors.Is(err, fs.ErrNotExist) {
				return nil, fmt.Errorf("handing %s to the build user: %w", m.Source, err)
			}
			s.chownLater = append(s.chownLater, m.Source)
		}
	}
	if _, err := os.Stat(s.stateDir); err == nil {
		return nil, fmt.Errorf("%w: a sandbox for job %s already exists on this host (state %s)", ErrInvalidOptions, o.JobID, s.stateDir)
	}
	if err := os.MkdirAll(s.stateDir, 0o700); err != nil {
		return nil, fmt.Errorf("creating sandbox state dir: %w", err)
	}
	if err := s.prepareWorkspace(ctx, o.Workspace, o.Limits.DiskBytes); err != nil {
		return nil, err
	}
	o.workspaceMount = s.ws
	if o.userNS && o.NetNS != "" {
		s.netns, s.sysfs = o.NetNS, filepath.Join(s.stateDir, sysfsDir)
		if err := os.Mkdir(s.sysfs, 0o755); err != nil {
			return nil, fmt.Errorf("creating the sandbox's sysfs mount point: %w", err)
		}
		o.sysfsMount = s.sysfs
	}

	ctr, err := c.cd.NewContainer(ctx, id,
		containerd.WithContainerLabels(labels),
		containerd.WithImage(img),
		snapshot,
		containerd.WithRuntime(c.cfg.Runtime, nil),
		containerd.WithNewSpec(hardeningOpts(&o, s.cgroup)...),
	)
	if err != nil {
		if errdefs.IsAlreadyExists(err) {
			return nil, fmt.Errorf("%w: container %s already exists (run `cleanroom gc`)", ErrInvalidOptions, id)
		}
		return nil, fmt.Errorf("creating container: %w", err)
	}
	s.ctr = ctr
	if s.spec, err = ctr.Spec(ctx); err != nil {
		return nil, fmt.Errorf("reading container spec: %w", err)
	}
	c.log.Debug("sandbox created", "sandbox", id, "image", o.Image)
	return s, nil
}

// withChildSnapshot gives the container a new writable snapshot on top of
// parent (a remapped image snapshot). It runs inside NewContainer's lease,
// so containerd cannot collect the snapshot before the container names it.
func withChildSnapshot(id, parent string, labels map[string]string) containerd.NewContainerOpts {
	return func(ctx context.Context, client *containerd.Client, c *containers.Container) error {
		if _, err := client.SnapshotService(containerd.DefaultSnapshotter).Prepare(ctx, id, parent, snapshots.WithLabels(labels)); err != nil {
			return fmt.Errorf("preparing the sandbox's snapshot: %w", err)
		}
		c.Snapshotter = containerd.DefaultSnapshotter
		c.SnapshotKey = id
		return nil
	}
}

// image looks up an image and makes sure it is unpacked. The unpack check
// is done once per image digest and client; a re-tagged image is checked
// again.
func (c *Client) image(ctx context.Context, ref string) (containerd.Image, error) {
	img, err := c.cd.GetImage(ctx, ref)
	if err != nil {
		if errdefs.IsNotFound(err) {
			return nil, fmt.Errorf("%w: %q is not in containerd namespace %q (build it with `cleanroom image build`, or import it)", ErrImageNotFound, ref, c.cfg.Namespace)
		}
		return nil, fmt.Errorf("looking up image %s: %w", ref, err)
	}
	key := ref + "@" + img.Target().Digest.String()
	if _, ok := c.unpacked.Load(key); ok {
		return img, nil
	}
	if ok, err := img.IsUnpacked(ctx, containerd.DefaultSnapshotter); err != nil || !ok {
		if err := img.Unpack(ctx, containerd.DefaultSnapshotter); err != nil {
			return nil, fmt.Errorf("unpacking image %s: %w", ref, err)
		}
	}
	c.unpacked.Store(key, true)
	return img, nil
}

// ID returns the container id ("cr-<job>").
func (s *Sandbox) ID() string { return s.id }

// WorkspacePath is the host path of the sandbox's workspace, valid until
// Destroy: the caller collects artifacts from here.
func (s *Sandbox) WorkspacePath() string { return s.ws }

// Step is one command run in the sandbox.
type Step struct {
	Args    []string
	Dir     string        // working directory inside; default /workspace
	Env     []string      // added to the sandbox environment for this step only
	Timeout time.Duration // 0 = no timeout (the caller's ctx still applies)
	Grace   time.Duration // between SIGTERM and SIGKILL; default 5 s
	Stdout  io.Writer
	Stderr  io.Writer // nil: same as Stdout
	// Created, if set, is called with the host pid of the step's first
	// process once it exists (in the step's cgroup) and before it starts:
	// the moment to hook the step's cgroup (process attribution).
	Created func(pid uint32)
}

// Result of a step.
type Result struct {
	ExitCode int
	Reason   Reason
	Duration time.Duration
}

// Failed reports whether the step did not succeed.
func (r Result) Failed() bool { return r.ExitCode != 0 || r.Reason != ReasonNone }

// String is the human summary used in job logs.
func (r Result) String() string {
	if r.Reason != ReasonNone {
		return fmt.Sprintf("exit %d (%s)", r.ExitCode, r.Reason)
	}
	return fmt.Sprintf("exit %d", r.ExitCode)
}

type lockedWriter struct {
	mu *sync.Mutex
	w  io.Writer
}

func (l lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// Run executes one step and waits for it. Each step is the sandbox's own
// task: PID 1 of a fresh pid namespace (and mount namespace over the same
// root, workspace and limits), so nothing a step leaves running survives it.
// A timeout, a cancelled ctx or an exhausted pids limit end the step:
// SIGTERM to every process, then SIGKILL after the grace period; a sandbox
// ended by timeout or cancel is stopped and further steps fail with
// ErrStopped. The error is non-nil only when the step could not be run at all
// (not for a non-zero exit).
func (s *Sandbox) Run(ctx context.Context, st Step) (Result, error) {
	if len(st.Args) == 0 {
		return Result{}, fmt.Errorf("%w: a step needs a command", ErrInvalidOptions)
	}
	if err := validEnv(st.Env); err != nil {
		return Result{}, err
	}
	s.mu.Lock()
	if s.stopped || s.gone {
		s.mu.Unlock()
		return Result{}, fmt.Errorf("running %q: %w", st.Args[0], ErrStopped)
	}
	s.steps++
	stepN := s.steps
	s.mu.Unlock()
	for _, p := range s.later {
		if _, err := os.Stat(p); err != nil {
			return Result{}, fmt.Errorf("running %q: %s does not exist (it is made while the sandbox is created): %w", st.Args[0], p, ErrInvalidOptions)
		}
	}
	for _, p := range s.chownLater {
		if err := os.Chown(p, s.uid, s.gid); err != nil {
			return Result{}, fmt.Errorf("running %q: handing %s to the build user: %w", st.Args[0], p, err)
		}
	}
	if err := s.mountSysfs(); err != nil {
		return Result{}, fmt.Errorf("running %q: %w", st.Args[0], err)
	}

	if st.Stdout == nil {
		st.Stdout = io.Discard
	}
	var mu sync.Mutex
	stdout := lockedWriter{&mu, st.Stdout}
	stderr := stdout
	if st.Stderr != nil {
		stderr = lockedWriter{&mu, st.Stderr}
	}
	if st.Grace <= 0 {
		st.Grace = 5 * time.Second
	}
	spec := *s.spec
	proc := *s.spec.Process
	proc.Args = st.Args
	proc.Terminal = false
	proc.Cwd = WorkspaceDir
	if st.Dir != "" {
		proc.Cwd = st.Dir
	}
	proc.Env = append(append([]string{}, s.spec.Process.Env...), st.Env...)
	spec.Process = &proc

	// Everything below uses a context that the caller's cancellation does not
	// end: a cancel must still let us kill, wait and clean up.
	bg := s.c.ctx(context.WithoutCancel(ctx))
	if err := s.ctr.Update(bg, func(_ context.Context, _ *containerd.Client, c *containers.Container) error {
		var err error
		c.Spec, err = typeurl.MarshalAny(&spec)
		return err
	}); err != nil {
		return Result{}, fmt.Errorf("preparing step %q: %w", st.Args[0], err)
	}
	fifoDir := filepath.Join(s.stateDir, "fifo")
	if err := os.MkdirAll(fifoDir, 0o700); err != nil {
		return Result{}, fmt.Errorf("creating fifo dir: %w", err)
	}
	start := time.Now()
	task, err := s.ctr.NewTask(bg, cio.NewCreator(cio.WithStreams(nil, stdout, stderr), cio.WithFIFODir(fifoDir)))
	if err != nil {
		msg := err.Error()
		switch {
		case strings.Contains(msg, "executable file not found") || strings.Contains(msg, "no such file or directory") && strings.Contains(msg, "exec"):
			return Result{}, fmt.Errorf("%w: %q does not exist in the sandbox image (or is not on PATH)", ErrStepNotFound, st.Args[0])
		case strings.Contains(msg, "chdir"):
			return Result{}, fmt.Errorf("%w: working directory %s does not exist in the sandbox", ErrInvalidOptions, proc.Cwd)
		}
		return Result{}, fmt.Errorf("creating step %d %q: %w", stepN, st.Args[0], err)
	}
	s.mu.Lock()
	s.task = task
	s.mu.Unlock()
	defer func() {
		dctx, cancel := context.WithTimeout(bg, 10*time.Second)
		defer cancel()
		if _, err := task.Delete(dctx, containerd.WithProcessKill); err != nil && !errdefs.IsNotFound(err) {
			s.c.log.Warn("deleting step task", "sandbox", s.id, "step", stepN, "error", err)
		}
		s.mu.Lock()
		s.task = nil
		s.mu.Unlock()
	}()
	statusC, err := task.Wait(bg)
	if err != nil {
		return Result{}, fmt.Errorf("waiting for step %q: %w", st.Args[0], err)
	}
	if st.Created != nil {
		st.Created(task.Pid())
	}
	if err := task.Start(bg); err != nil {
		return Result{}, fmt.Errorf("starting step %q: %w", st.Args[0], err)
	}

	var timeout <-chan time.Time
	if st.Timeout > 0 {
		t := time.NewTimer(st.Timeout)
		defer t.Stop()
		timeout = t.C
	}
	pidsTick := time.NewTicker(250 * time.Millisecond)
	defer pidsTick.Stop()

	var reason Reason
	var status containerd.ExitStatus
wait:
	for {
		select {
		case status = <-statusC:
			break wait
		case <-timeout:
			reason = ReasonTimeout
		case <-ctx.Done():
			reason = ReasonCanceled
		case <-pidsTick.C:
			if s.cgroupCounter("pids", "max") > 0 {
				reason = ReasonPidsLimit
			}
		}
		if reason != ReasonNone {
			status = s.terminate(bg, task, statusC, st.Grace, reason != ReasonPidsLimit)
			break wait
		}
	}
	code := int(status.ExitCode())
	// The cgroup is the task's: its counters start at zero with the step
	// and are read before the task (and its cgroup) is deleted.
	switch {
	case reason != ReasonNone:
	case s.cgroupCounter("pids", "max") > 0:
		// Fork failures break a build even when its exit code hides them.
		reason = ReasonPidsLimit
	case code == 0:
	case s.cgroupCounter("memory", "oom_kill") > 0:
		reason = ReasonOOM
	case s.diskFull():
		reason = ReasonDiskLimit
	}
	return Result{ExitCode: code, Reason: reason, Duration: time.Since(start)}, nil
}

// Kill ends the running step at once with SIGKILL (no grace period) and
// stops the sandbox: for a build caught misbehaving, such as an egress
// violation under on_violation: kill. The running Run returns with the
// step's exit status; a sandbox with no running step is only stopped.
func (s *Sandbox) Kill(ctx context.Context) error {
	s.mu.Lock()
	s.stopped = true
	task := s.task
	s.mu.Unlock()
	if task == nil {
		return nil
	}
	if err := task.Kill(s.c.ctx(context.WithoutCancel(ctx)), syscall.SIGKILL); err != nil && !errdefs.IsNotFound(err) {
		return fmt.Errorf("killing the running step: %w", err)
	}
	return nil
}

// terminate sends SIGTERM to every process of the step, waits up to grace
// for its PID 1 to exit, then SIGKILLs it (which ends its whole pid
// namespace). With stop, the sandbox refuses further steps.
func (s *Sandbox) terminate(ctx context.Context, task containerd.Task, statusC <-chan containerd.ExitStatus, grace time.Duration, stop bool) containerd.ExitStatus {
	if stop {
		s.mu.Lock()
		s.stopped = true
		s.mu.Unlock()
	}
	if err := task.Kill(ctx, syscall.SIGTERM, containerd.WithKillAll); err != nil && !errdefs.IsNotFound(err) {
		s.c.log.Warn("sending SIGTERM", "sandbox", s.id, "error", err)
	}
	select {
	case st := <-statusC:
		return st
	case <-time.After(grace):
	}
	if err := task.Kill(ctx, syscall.SIGKILL); err != nil && !errdefs.IsNotFound(err) {
		s.c.log.Warn("sending SIGKILL", "sandbox", s.id, "error", err)
	}
	select {
	case st := <-statusC:
		return st
	case <-time.After(10 * time.Second):
		return *containerd.NewExitStatus(137, time.Now(), errors.New("step did not exit after SIGKILL"))
	}
}

// Destroy removes the task, container, snapshot, workspace filesystem and
// state of the sandbox. It never uses a cancelled context, is idempotent, and
// reports every failure it met (and still attempts the rest).
func (s *Sandbox) Destroy(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(s.c.ctx(context.WithoutCancel(ctx)), 30*time.Second)
	defer cancel()
	var errs []error
	if err := s.stopAll(ctx); err != nil {
		errs = append(errs, err)
	}
	if s.ctr != nil {
		if err := s.ctr.Delete(ctx, containerd.WithSnapshotCleanup); err != nil && !errdefs.IsNotFound(err) {
			errs = append(errs, fmt.Errorf("deleting container %s: %w", s.id, err))
		}
	} else {
		// Create may have failed after the snapshot was prepared.
		if err := s.c.cd.SnapshotService(containerd.DefaultSnapshotter).Remove(ctx, s.id); err != nil && !errdefs.IsNotFound(err) {
			errs = append(errs, fmt.Errorf("removing snapshot %s: %w", s.id, err))
		}
	}
	if err := removeStateDir(s.stateDir); err != nil {
		errs = append(errs, err)
	}
	if err := removeCgroup(s.cgroup); err != nil {
		errs = append(errs, err)
	}
	s.releaseSlot()
	if s.ctr != nil && len(errs) == 0 {
		go s.c.reapStrayShims(s.id, 2*time.Second)
	}
	return errors.Join(errs...)
}

// mountSysfs mounts the sysfs of the sandbox's network namespace for
// WithSysfsFrom, once, before the first step (the namespace may be made
// while the sandbox is created). removeStateDir unmounts it.
func (s *Sandbox) mountSysfs() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.sysfs == "" || s.sysfsDone {
		return nil
	}
	if err := mountSysfsOf(s.netns, s.sysfs); err != nil {
		return err
	}
	s.sysfsDone = true
	return nil
}

// releaseSlot gives the sandbox's user-namespace slot back, once, and only
// when nothing runs in the sandbox any more: a slot whose processes could
// not be ended stays taken (its IDs must not go to another sandbox).
func (s *Sandbox) releaseSlot() {
	s.mu.Lock()
	slot, empty := s.slot, s.empty
	if empty {
		s.slot = -1
	}
	s.mu.Unlock()
	if slot < 0 {
		return
	}
	if !empty {
		s.c.log.Error("keeping a user-namespace slot out of use: its sandbox's processes could not be ended", "sandbox", s.id, "slot", slot)
		return
	}
	s.c.slots.release(slot)
}

// BuildUser returns the host UID and GID the build user has in this
// sandbox: BuildUID and BuildGID, or their place in the sandbox's user
// namespace range.
func (s *Sandbox) BuildUser() (uid, gid int) { return s.uid, s.gid }

// StopAll ends every process of the sandbox (the running step's task, or
// one left by a step still being torn down) and refuses further steps; when
// it returns nil, nothing runs in the sandbox any more. Destroy does this
// first; calling it separately lets the caller tear down what only had to
// outlive the processes (the job's network) while Destroy removes the rest.
func (s *Sandbox) StopAll(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(s.c.ctx(context.WithoutCancel(ctx)), 30*time.Second)
	defer cancel()
	return s.stopAll(ctx)
}

func (s *Sandbox) stopAll(ctx context.Context) error {
	s.mu.Lock()
	s.gone = true
	task, empty := s.task, s.empty
	s.mu.Unlock()
	if empty {
		return nil // StopAll already did it; Destroy need not ask again
	}
	var errs []error
	if task != nil {
		if err := destroyTask(ctx, task); err != nil {
			errs = append(errs, err)
		}
	}
	if s.ctr != nil {
		// A task left by a step that is still being torn down elsewhere.
		if t, err := s.ctr.Task(ctx, nil); err == nil {
			if err := destroyTask(ctx, t); err != nil {
				errs = append(errs, err)
			}
		}
	}
	if len(errs) > 0 {
		return errors.Join(errs...)
	}
	s.mu.Lock()
	s.empty = true
	s.mu.Unlock()
	return nil
}

func destroyTask(ctx context.Context, task containerd.Task) error {
	st, err := task.Status(ctx)
	if err != nil {
		if errdefs.IsNotFound(err) {
			return nil
		}
		return fmt.Errorf("reading task status: %w", err)
	}
	if st.Status != containerd.Stopped {
		waitC, werr := task.Wait(ctx)
		// Killing the init kills its whole pid namespace.
		if err := task.Kill(ctx, syscall.SIGKILL); err != nil && !errdefs.IsNotFound(err) {
			return fmt.Errorf("killing task: %w", err)
		}
		if werr == nil {
			select {
			case <-waitC:
			case <-ctx.Done():
				return fmt.Errorf("waiting for task to exit: %w", ctx.Err())
			}
		}
	}
	if _, err := task.Delete(ctx, containerd.WithProcessKill); err != nil && !errdefs.IsNotFound(err) {
		return fmt.Errorf("deleting task: %w", err)
	}
	return nil
}

// cgroupCounter reads a counter such as "oom_kill" from memory.oom_control
// (v1) / memory.events (v2), or "max" from pids.events. -1 if unreadable.
func (s *Sandbox) cgroupCounter(ctrl, key string) int64 {
	var files []string
	switch ctrl {
	case "memory":
		files = []string{
			filepath.Join("/sys/fs/cgroup/memory", s.cgroup, "memory.oom_control"),
			filepath.Join("/sys/fs/cgroup", s.cgroup, "memory.events"),
		}
	case "pids":
		files = []string{
			filepath.Join("/sys/fs/cgroup/pids", s.cgroup, "pids.events"),
			filepath.Join("/sys/fs/cgroup", s.cgroup, "pids.events"),
		}
	}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(b), "\n") {
			k, v, ok := strings.Cut(line, " ")
			if ok && k == key {
				n, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
				if err == nil {
					return n
				}
			}
		}
	}
	return -1
}

// ImageDigest returns the manifest digest of an image reference, for
// provenance ("which image did this build run in").
func (c *Client) ImageDigest(ctx context.Context, ref string) (string, error) {
	img, err := c.cd.ImageService().Get(c.ctx(ctx), ref)
	if err != nil {
		if errdefs.IsNotFound(err) {
			return "", fmt.Errorf("%w: %s", ErrImageNotFound, ref)
		}
		return "", fmt.Errorf("looking up image %s: %w", ref, err)
	}
	return img.Target.Digest.String(), nil
}
