package sandbox

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/containerd/containerd"
	"github.com/containerd/containerd/containers"
	"github.com/containerd/containerd/errdefs"
	"github.com/containerd/containerd/mount"
	"github.com/containerd/containerd/oci"
	"github.com/containerd/containerd/snapshots"
	"github.com/opencontainers/image-spec/identity"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

// A sandbox may run in a user namespace of its own: container IDs 0–65535
// map to a range of host IDs that belongs to one slot of the client, so the
// build user (container uid 1000) is a host UID no real user and no other
// running sandbox has. The image's files are shifted into the range once per
// slot and image (a "remapped parent" snapshot, kept as a cache) and every
// sandbox of that slot gets a cheap overlay child of it.

// UserNSSize is the number of host IDs a slot maps: container IDs 0–65535.
const UserNSSize = 65536

// DefaultUserNSBase is the first host ID of slot 0 when the configuration
// names none: far above the IDs distributions hand to users (1000–60000)
// and to /etc/subuid ranges (100000 + 65536·n for the first thousands of
// users).
const DefaultUserNSBase = 100_000_000

// Labels of user-namespace objects.
const (
	// LabelUserNS carries the first host ID of the slot a container and its
	// snapshot run in, so a leftover of a crashed agent keeps its slot
	// busy until GC removes it.
	LabelUserNS = "cleanroom.userns"
	// LabelUserNSCache marks a remapped parent snapshot (a cache, not a
	// sandbox): its value is the agent that made it.
	LabelUserNSCache = "cleanroom.userns.cache"
	labelGCRoot      = "containerd.io/gc.root"
)

// userNSParentPrefix starts the name of every remapped parent snapshot.
const userNSParentPrefix = "cleanroom-userns/"

// ErrUserNS is returned when user namespaces are asked for but cannot be
// set up: the caller must not run sandboxes without them.
var ErrUserNS = errors.New("user namespaces unavailable")

// UserNS configures a user namespace per sandbox.
type UserNS struct {
	// Base is the first host UID and GID of slot 0; slot i maps container
	// IDs 0–65535 to host IDs Base+i·65536 onwards.
	Base uint32
	// Slots is how many sandboxes may exist at once (the agent's
	// concurrency); Create waits for a free slot.
	Slots int
	// ClaimDir holds one lock file per claimed range, so that two clients
	// on one host never use overlapping ranges; default /run/cleanroom/userns.
	ClaimDir string
	// IDFiles are read for the IDs real users, groups and subordinate ranges
	// have; default /etc/passwd, /etc/group, /etc/subuid and /etc/subgid.
	IDFiles []string
}

// DefaultIDFiles are the files whose IDs a slot range must never overlap.
var DefaultIDFiles = []string{"/etc/passwd", "/etc/group", "/etc/subuid", "/etc/subgid"}

// end is one past the last host ID of the configured slots.
func (u *UserNS) end() uint64 { return uint64(u.Base) + uint64(u.Slots)*UserNSSize }

// UserNSSupported reports whether the kernel lets cleanroom create user
// namespaces (user.max_user_namespaces > 0).
func UserNSSupported() error {
	b, err := os.ReadFile("/proc/sys/user/max_user_namespaces")
	if err != nil {
		return fmt.Errorf("%w: the kernel has no user namespaces (%v)", ErrUserNS, err)
	}
	n, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || n <= 0 {
		return fmt.Errorf("%w: user.max_user_namespaces is %q (set it above 0: sysctl -w user.max_user_namespaces=15000)", ErrUserNS, strings.TrimSpace(string(b)))
	}
	return nil
}

// CheckUserNS checks a configuration against the kernel and the host's
// users: the range must fit in 32 bits and overlap no UID, GID or
// subordinate range of IDFiles.
func CheckUserNS(u UserNS) error {
	if err := UserNSSupported(); err != nil {
		return err
	}
	if u.Slots < 1 {
		return fmt.Errorf("%w: %d slots: want at least 1", ErrUserNS, u.Slots)
	}
	if u.Base < UserNSSize {
		return fmt.Errorf("%w: base %d is below %d, where host users and system IDs live: choose one such as %d", ErrUserNS, u.Base, UserNSSize, DefaultUserNSBase)
	}
	// 4294967295 is (uid_t)-1, "no change" to chown and setuid.
	if u.end() > 1<<32-1 {
		return fmt.Errorf("%w: base %d + %d slots × %d IDs passes the last host ID 4294967294", ErrUserNS, u.Base, u.Slots, UserNSSize)
	}
	files := u.IDFiles
	if files == nil {
		files = DefaultIDFiles
	}
	for _, f := range files {
		if err := checkIDFile(f, uint64(u.Base), u.end()); err != nil {
			return err
		}
	}
	return nil
}

// checkIDFile refuses a range [lo, hi) that overlaps an ID of a passwd or
// group file (third field) or a subordinate range of a subuid/subgid file
// (name:start:count). A file that does not exist has no IDs.
func checkIDFile(path string, lo, hi uint64) error {
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("%w: reading %s: %v", ErrUserNS, path, err)
	}
	defer f.Close()
	sub := strings.HasPrefix(filepath.Base(path), "sub")
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		fields := strings.Split(line, ":")
		var start, count uint64 = 0, 1
		switch {
		case sub && len(fields) >= 3:
			start, err = strconv.ParseUint(fields[1], 10, 32)
			if err == nil {
				count, err = strconv.ParseUint(fields[2], 10, 32)
			}
		case !sub && len(fields) >= 3:
			start, err = strconv.ParseUint(fields[2], 10, 32)
		default:
			continue
		}
		if err != nil {
			continue // not an ID (an NIS "+" line, say)
		}
		if start < hi && lo < start+count {
			return fmt.Errorf("%w: host IDs %d–%d overlap %s line %d (%q): choose another sandbox.userns.base", ErrUserNS, lo, hi-1, path, n, line)
		}
	}
	return sc.Err()
}

// slots hands out the user-namespace slots of a client: a slot is taken by
// Create and given back by Destroy once nothing runs in the sandbox.
type slots struct {
	u     UserNS
	free  chan int
	claim *os.File // the flock'ed claim of the range, held while the client lives
}

// newSlots checks u and claims its range on this host.
func newSlots(u UserNS) (*slots, error) {
	if err := CheckUserNS(u); err != nil {
		return nil, err
	}
	if u.ClaimDir == "" {
		u.ClaimDir = "/run/cleanroom/userns"
	}
	claim, err := claimRange(u.ClaimDir, uint64(u.Base), u.end())
	if err != nil {
		return nil, err
	}
	s := &slots{u: u, free: make(chan int, u.Slots), claim: claim}
	for i := 0; i < u.Slots; i++ {
		s.free <- i
	}
	return s, nil
}

// start is the first host ID of slot i.
func (s *slots) start(i int) uint32 { return s.u.Base + uint32(i)*UserNSSize }

// acquire takes a free slot, waiting until ctx ends. A slot still named by
// a container (a crashed agent's sandbox that GC has not removed yet: its
// processes may run on the slot's IDs) is skipped.
func (s *slots) acquire(ctx context.Context, busy func(start uint32) (bool, error)) (int, error) {
	var skipped []int
	defer func() {
		for _, i := range skipped {
			s.free <- i
		}
	}()
	for {
		var i int
		if len(skipped) == 0 {
			select {
			case i = <-s.free:
			case <-ctx.Done():
				return -1, fmt.Errorf("waiting for a free user-namespace slot (all %d in use): %w", s.u.Slots, ctx.Err())
			}
		} else {
			select {
			case i = <-s.free:
			default:
				return -1, fmt.Errorf("%w: the free user-namespace slots are held by leftover containers (labelled %s=%d…): run `cleanroom gc`", ErrUserNS, LabelUserNS, s.start(skipped[0]))
			}
		}
		b, err := busy(s.start(i))
		if err != nil {
			s.free <- i
			return -1, err
		}
		if !b {
			return i, nil
		}
		skipped = append(skipped, i)
	}
}

func (s *slots) release(i int) { s.free <- i }

func (s *slots) close() error {
	if s == nil || s.claim == nil {
		return nil
	}
	_ = os.Remove(s.claim.Name())
	return s.claim.Close() // releases the flock
}

// claimRange makes sure no other live process on this host uses host IDs
// in [lo, hi): each client holds an flock on ClaimDir/<lo>-<hi> while it
// lives (the kernel drops it when the process dies), and a new claim is
// refused while an overlapping one is held. A directory-wide lock makes the
// check and the claim one step. Claims of processes that ended without
// Close (the lock is gone with them) are removed here.
func claimRange(dir string, lo, hi uint64) (_ *os.File, retErr error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("%w: creating %s: %v", ErrUserNS, dir, err)
	}
	all, err := os.OpenFile(filepath.Join(dir, ".lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrUserNS, err)
	}
	defer all.Close()
	if err := unix.Flock(int(all.Fd()), unix.LOCK_EX); err != nil {
		return nil, fmt.Errorf("%w: locking %s: %v", ErrUserNS, all.Name(), err)
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrUserNS, err)
	}
	name := fmt.Sprintf("%d-%d", lo, hi)
	for _, e := range ents {
		a, b, ok := strings.Cut(e.Name(), "-")
		l, err1 := strconv.ParseUint(a, 10, 64)
		h, err2 := strconv.ParseUint(b, 10, 64)
		if !ok || err1 != nil || err2 != nil {
			continue
		}
		p := filepath.Join(dir, e.Name())
		f, err := os.OpenFile(p, os.O_RDONLY, 0)
		if err != nil {
			continue
		}
		err = unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			_ = os.Remove(p) // a dead process's claim, overlapping or not
			f.Close()
			continue
		}
		pid, _ := os.ReadFile(p)
		f.Close()
		if h <= lo || hi <= l {
			continue
		}
		return nil, fmt.Errorf("%w: host IDs %d–%d overlap %d–%d, in use by another cleanroom process (pid %s): give each agent on a host its own sandbox.userns.base", ErrUserNS, lo, hi-1, l, h-1, strings.TrimSpace(string(pid)))
	}
	f, err := os.OpenFile(filepath.Join(dir, name), os.O_CREATE|os.O_RDWR|os.O_TRUNC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrUserNS, err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		return nil, fmt.Errorf("%w: claiming %s: %v", ErrUserNS, f.Name(), err)
	}
	_, _ = fmt.Fprintf(f, "%d\n", os.Getpid())
	return f, nil
}

// slotBusy reports whether a container of this namespace still runs on the
// slot starting at start.
func (c *Client) slotBusy(ctx context.Context) func(start uint32) (bool, error) {
	return func(start uint32) (bool, error) {
		ctrs, err := c.cd.ContainerService().List(ctx, fmt.Sprintf("labels.%q==%q", LabelUserNS, strconv.FormatUint(uint64(start), 10)))
		if err != nil {
			return false, fmt.Errorf("listing the containers of a user-namespace slot: %w", err)
		}
		return len(ctrs) > 0, nil
	}
}

// WithUserNS runs the sandbox in a new user namespace whose IDs 0–65535 are
// host IDs start onwards: container root is start and the build user is
// start+BuildUID, both without any privilege on the host.
func WithUserNS(start uint32) oci.SpecOpts {
	m := []specs.LinuxIDMapping{{ContainerID: 0, HostID: start, Size: UserNSSize}}
	return oci.WithUserNamespace(m, m)
}

// remappedParent returns the name of the snapshot that holds img's root
// filesystem owned by the slot's range, making it the first time (walking
// and chowning every file: a copy-up of the whole image, once per slot and
// image). It is labelled as a GC root so containerd keeps it between jobs,
// and LabelUserNSCache so `cleanroom gc --userns-cache` can remove it.
func (c *Client) remappedParent(ctx context.Context, img containerd.Image, start uint32) (string, error) {
	chain, err := c.chainID(ctx, img)
	if err != nil {
		return "", err
	}
	name := fmt.Sprintf("%s%d/%s", userNSParentPrefix, start, chain)
	sn := c.cd.SnapshotService(containerd.DefaultSnapshotter)
	if _, err := sn.Stat(ctx, name); err == nil {
		return name, nil
	} else if !errdefs.IsNotFound(err) {
		return "", fmt.Errorf("looking up the remapped image snapshot: %w", err)
	}
	began := time.Now()
	// The active snapshot being shifted is protected by a lease; the
	// committed parent by its GC-root label once the lease ends.
	lctx, done, err := c.cd.WithLease(ctx)
	if err != nil {
		return "", fmt.Errorf("remapping the image for user namespaces: %w", err)
	}
	defer func() { _ = done(context.WithoutCancel(lctx)) }()
	key := fmt.Sprintf("%s-remap-%d", name, time.Now().UnixNano())
	mounts, err := sn.Prepare(lctx, key, chain)
	if err != nil {
		return "", fmt.Errorf("remapping the image for user namespaces: %w", err)
	}
	defer func() { _ = sn.Remove(context.WithoutCancel(lctx), key) }()
	if err := mount.WithTempMount(lctx, mounts, func(root string) error { return shiftOwners(root, start) }); err != nil {
		return "", fmt.Errorf("remapping the image for user namespaces: %w", err)
	}
	labels := map[string]string{
		labelGCRoot:      time.Now().UTC().Format(time.RFC3339),
		LabelUserNS:      strconv.FormatUint(uint64(start), 10),
		LabelUserNSCache: c.cfg.Agent,
	}
	if err := sn.Commit(lctx, name, key, snapshots.WithLabels(labels)); err != nil && !errdefs.IsAlreadyExists(err) {
		return "", fmt.Errorf("remapping the image for user namespaces: %w", err)
	}
	c.log.Info("remapped the image for a user-namespace slot (once per slot and image)", "slot_base", start, "took", time.Since(began).Round(time.Millisecond))
	return name, nil
}

// chainID is the snapshot name of img's unpacked root filesystem.
func (c *Client) chainID(ctx context.Context, img containerd.Image) (string, error) {
	key := img.Target().Digest.String()
	if v, ok := c.chains.Load(key); ok {
		return v.(string), nil
	}
	diffIDs, err := img.RootFS(ctx)
	if err != nil {
		return "", fmt.Errorf("reading the layers of %s: %w", img.Name(), err)
	}
	chain := identity.ChainID(diffIDs).String()
	c.chains.Store(key, chain)
	return chain, nil
}

// shiftOwners adds start to the owner and group of every file below root
// (links themselves, never their targets), keeping setuid and setgid bits,
// which chown clears. IDs already in [start, start+65536) are left as they
// are (an interrupted earlier pass); any other ID above 65535 cannot be
// mapped and is an error.
func shiftOwners(root string, start uint32) error {
	shift := func(id uint32) (int, error) {
		switch {
		case id < UserNSSize:
			return int(id + start), nil
		case id >= start && id-start < UserNSSize:
			return int(id), nil
		}
		return 0, fmt.Errorf("ID %d is outside the 65536 IDs a sandbox maps", id)
	}
	return filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			return err
		}
		uid, err := shift(st.Uid)
		if err == nil {
			var gid int
			if gid, err = shift(st.Gid); err == nil {
				err = os.Lchown(p, uid, gid)
			}
		}
		if err != nil {
			return fmt.Errorf("%s: %w", strings.TrimPrefix(p, root), err)
		}
		if d.Type()&fs.ModeSymlink == 0 && st.Mode&(unix.S_ISUID|unix.S_ISGID) != 0 {
			return unix.Chmod(p, st.Mode&0o7777)
		}
		return nil
	})
}

// collectUserNSCache removes the remapped parents this agent made (any
// agent's when agent is empty) that no sandbox uses.
func (c *Client) collectUserNSCache(ctx context.Context, agent string, dryRun bool) ([]string, error) {
	filter := fmt.Sprintf("labels.%q", LabelUserNSCache)
	if agent != "" {
		filter = fmt.Sprintf("labels.%q==%q", LabelUserNSCache, agent)
	}
	sn := c.cd.SnapshotService(containerd.DefaultSnapshotter)
	var names []string
	if err := sn.Walk(ctx, func(_ context.Context, info snapshots.Info) error {
		if strings.HasPrefix(info.Name, userNSParentPrefix) {
			names = append(names, info.Name)
		}
		return nil
	}, filter); err != nil {
		return nil, fmt.Errorf("listing remapped image snapshots: %w", err)
	}
	var out []string
	var errs []error
	for _, n := range names {
		if dryRun {
			out = append(out, n)
			continue
		}
		err := sn.Remove(ctx, n)
		switch {
		case err == nil || errdefs.IsNotFound(err):
			out = append(out, n)
		case errdefs.IsFailedPrecondition(err):
			// A live sandbox's snapshot is its child.
		default:
			errs = append(errs, fmt.Errorf("removing snapshot %s: %w", n, err))
		}
	}
	return out, errors.Join(errs...)
}

// UserNSCache lists the remapped parent snapshots that exist (any agent's):
// a cache that `cleanroom gc --userns-cache` removes, not residue.
func (c *Client) UserNSCache(ctx context.Context) ([]string, error) {
	return c.collectUserNSCache(c.ctx(ctx), "", true)
}

// sysfsDir is where, under a sandbox's state dir, the sysfs of its network
// namespace is mounted (see WithSysfsFrom).
const sysfsDir = "sys"

// WithSysfsFrom replaces the sandbox's /sys with a read-only bind of src,
// a sysfs the host mounted from inside the sandbox's network namespace
// (mountSysfsOf). A sandbox in a user namespace that joins a network
// namespace made outside it (the agent's netns) cannot mount sysfs itself:
// the kernel requires CAP_SYS_ADMIN over the network namespace, which the
// sandbox's user namespace does not own, and runc 1.1 has no fallback. The
// bind is not recursive, so none of the host's mounts below /sys (cgroup
// trees, debugfs, securityfs, bpffs) come with it, and the network devices
// it lists are the sandbox's own, as with a sysfs mounted inside.
func WithSysfsFrom(src string) oci.SpecOpts {
	return func(_ context.Context, _ oci.Client, _ *containers.Container, s *oci.Spec) error {
		var out []specs.Mount
		done := false
		for _, m := range s.Mounts {
			if filepath.Clean(m.Destination) == "/sys" {
				if !done {
					out = append(out, specs.Mount{Destination: "/sys", Type: "bind", Source: src,
						Options: []string{"bind", "ro", "nosuid", "nodev", "noexec"}})
					done = true
				}
				continue
			}
			out = append(out, m)
		}
		if !done {
			// /sys first, so that mounts below it (/sys/fs/cgroup) land on it.
			out = append([]specs.Mount{{Destination: "/sys", Type: "bind", Source: src,
				Options: []string{"bind", "ro", "nosuid", "nodev", "noexec"}}}, out...)
		}
		s.Mounts = out
		return nil
	}
}

// mountSysfsOf mounts, read-only, a sysfs whose network devices are those
// of the network namespace at netns on dir. The mount is made from a thread
// that joins the namespace and is never unlocked: it ends with its
// goroutine and the runtime discards it, so no other goroutine can ever run
// in that namespace.
func mountSysfsOf(netns, dir string) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		errc <- func() error {
			f, err := os.Open(netns)
			if err != nil {
				return err
			}
			defer f.Close()
			if err := unix.Setns(int(f.Fd()), unix.CLONE_NEWNET); err != nil {
				return fmt.Errorf("joining %s: %w", netns, err)
			}
			return unix.Mount("sysfs", dir, "sysfs", unix.MS_RDONLY|unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, "")
		}()
	}()
	if err := <-errc; err != nil {
		return fmt.Errorf("mounting the sandbox's sysfs: %w", err)
	}
	return nil
}
