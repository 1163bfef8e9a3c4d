package sandbox

import (
	"context"
	"fmt"
	"path/filepath"
	"runtime"
	"slices"
	"strings"

	"github.com/containerd/containerd/containers"
	"github.com/containerd/containerd/contrib/seccomp"
	"github.com/containerd/containerd/oci"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

// The hardening of a sandbox is a list of small oci.SpecOpts, each testable on
// a bare spec (see spec_test.go). hardeningOpts composes them in the order
// that matters: image defaults first, then everything that must override them.

// BuildUID and BuildGID are the non-root user every step runs as. The node
// image creates the matching "build" user; any other image gets the numeric
// IDs, which is enough for the kernel.
const (
	BuildUID = 1000
	BuildGID = 1000
)

// WorkspaceDir is where the job's workspace appears inside the sandbox.
const WorkspaceDir = "/workspace"

// HomeDir is the build user's home: a small tmpfs, because the root
// filesystem is read-only and npm insists on writing there.
const HomeDir = "/home/build"

// maskedPaths are hidden from the sandbox (bind-mounted over with /dev/null
// or an empty read-only tmpfs by runc): host kernel memory, keys and firmware.
var maskedPaths = []string{
	"/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys",
	"/proc/latency_stats", "/proc/timer_list", "/proc/timer_stats",
	"/proc/sched_debug", "/proc/scsi", "/sys/firmware",
	"/sys/devices/virtual/powercap",
}

// readonlyPaths can be read but never written from the sandbox.
var readonlyPaths = []string{
	"/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger",
}

// WithoutCapabilities drops every capability from every set, including the
// ambient and inheritable ones: a build never needs one, and NET_RAW or
// NET_ADMIN would let it bypass the egress policy.
func WithoutCapabilities() oci.SpecOpts {
	return func(_ context.Context, _ oci.Client, _ *containers.Container, s *oci.Spec) error {
		if s.Process == nil {
			s.Process = &specs.Process{}
		}
		s.Process.Capabilities = &specs.LinuxCapabilities{
			Bounding:    []string{},
			Effective:   []string{},
			Permitted:   []string{},
			Inheritable: []string{},
			Ambient:     []string{},
		}
		return nil
	}
}

// WithExactEnv sets the process environment to env and nothing else, so no
// variable of the image config or of the calling process leaks in.
func WithExactEnv(env []string) oci.SpecOpts {
	return func(_ context.Context, _ oci.Client, _ *containers.Container, s *oci.Spec) error {
		if s.Process == nil {
			s.Process = &specs.Process{}
		}
		s.Process.Env = append([]string{}, env...)
		return nil
	}
}

// WithTmpfs mounts a size-limited tmpfs at dest, writable by the build user.
func WithTmpfs(dest string, sizeBytes int64) oci.SpecOpts {
	return func(_ context.Context, _ oci.Client, _ *containers.Container, s *oci.Spec) error {
		s.Mounts = append(withoutMount(s.Mounts, dest), specs.Mount{
			Destination: dest,
			Type:        "tmpfs",
			Source:      "tmpfs",
			Options: []string{"nosuid", "nodev", "noexec", "mode=1777",
				fmt.Sprintf("size=%d", sizeBytes),
				fmt.Sprintf("uid=%d", BuildUID), fmt.Sprintf("gid=%d", BuildGID)},
		})
		return nil
	}
}

// WithExecTmpfs is WithTmpfs without noexec: npm runs binaries from its
// cache and from the build user's home.
func WithExecTmpfs(dest string, sizeBytes int64) oci.SpecOpts {
	return func(ctx context.Context, c oci.Client, ctr *containers.Container, s *oci.Spec) error {
		if err := WithTmpfs(dest, sizeBytes)(ctx, c, ctr, s); err != nil {
			return err
		}
		m := &s.Mounts[len(s.Mounts)-1]
		opts := m.Options[:0]
		for _, o := range m.Options {
			if o != "noexec" {
				opts = append(opts, o)
			}
		}
		m.Options = opts
		return nil
	}
}

// WithBind bind-mounts a host path into the sandbox, read-only unless rw.
// Bind mounts are always nosuid and nodev.
func WithBind(src, dest string, rw bool) oci.SpecOpts {
	return func(_ context.Context, _ oci.Client, _ *containers.Container, s *oci.Spec) error {
		if !filepath.IsAbs(src) || !filepath.IsAbs(dest) {
			return fmt.Errorf("mounting %s at %s: %w: both paths must be absolute", src, dest, ErrInvalidOptions)
		}
		mode := "ro"
		if rw {
			mode = "rw"
		}
		s.Mounts = append(withoutMount(s.Mounts, dest), specs.Mount{
			Destination: dest,
			Type:        "bind",
			Source:      src,
			Options:     []string{"rbind", mode, "nosuid", "nodev"},
		})
		return nil
	}
}

// WithNetNS joins the network namespace at path, or creates a new, empty one
// (loopback only) when path is empty. Either way the sandbox never shares the
// host's network.
func WithNetNS(path string) oci.SpecOpts {
	return func(_ context.Context, _ oci.Client, _ *containers.Container, s *oci.Spec) error {
		if s.Linux == nil {
			s.Linux = &specs.Linux{}
		}
		ns := specs.LinuxNamespace{Type: specs.NetworkNamespace, Path: path}
		for i, n := range s.Linux.Namespaces {
			if n.Type == specs.NetworkNamespace {
				s.Linux.Namespaces[i] = ns
				return nil
			}
		}
		s.Linux.Namespaces = append(s.Linux.Namespaces, ns)
		return nil
	}
}

// WithPrivateNamespaces makes sure the pid, ipc, uts and mount namespaces are
// new ones (no path): the default spec has them, this option keeps an image or
// a caller option from ever joining the host's.
func WithPrivateNamespaces() oci.SpecOpts {
	return func(_ context.Context, _ oci.Client, _ *containers.Container, s *oci.Spec) error {
		if s.Linux == nil {
			s.Linux = &specs.Linux{}
		}
		want := []specs.LinuxNamespaceType{specs.PIDNamespace, specs.IPCNamespace, specs.UTSNamespace, specs.MountNamespace}
		var out []specs.LinuxNamespace
		for _, n := range s.Linux.Namespaces {
			keep := true
			for _, w := range want {
				if n.Type == w {
					keep = false
				}
			}
			if keep {
				out = append(out, n)
			}
		}
		for _, w := range want {
			out = append(out, specs.LinuxNamespace{Type: w})
		}
		s.Linux.Namespaces = out
		return nil
	}
}

// WithLimits applies memory (swap disabled), CPU and pids limits.
func WithLimits(l Limits) oci.SpecOpts {
	return func(ctx context.Context, c oci.Client, ctr *containers.Container, s *oci.Spec) error {
		opts := []oci.SpecOpts{
			oci.WithMemoryLimit(uint64(l.MemoryBytes)),
			oci.WithMemorySwap(l.MemoryBytes), // memory+swap == memory: no swap
			oci.WithPidsLimit(l.Pids),
		}
		if l.CPUs > 0 {
			const period = 100000
			opts = append(opts, oci.WithCPUCFS(int64(l.CPUs*period), period))
		}
		return oci.Compose(opts...)(ctx, c, ctr, s)
	}
}

// WithMaskedAndReadonlyPaths masks host information in /proc and /sys and
// makes the kernel tunables read-only.
func WithMaskedAndReadonlyPaths() oci.SpecOpts {
	return oci.Compose(oci.WithMaskedPaths(maskedPaths), oci.WithReadonlyPaths(readonlyPaths))
}

// WithNoDeviceAccess denies every device in the devices cgroup except the
// defaults runc always creates (null, zero, full, random, urandom, tty).
func WithNoDeviceAccess() oci.SpecOpts {
	return func(_ context.Context, _ oci.Client, _ *containers.Container, s *oci.Spec) error {
		if s.Linux == nil {
			s.Linux = &specs.Linux{}
		}
		s.Linux.Devices = nil
		return nil
	}
}

// DeniedSyscalls are never needed by an npm build and each reaches kernel
// code that has been the way out of containers: io_uring (its own syscall
// path, missed by seccomp for the operations it runs), bpf and
// perf_event_open (verifier and perf bugs), userfaultfd (stalls the kernel
// at will to win races), the keyring, kexec, file handles (the "shocker"
// escape: open_by_handle_at walks the host's filesystem from a handle), and
// ptrace/process_vm_* (reading or steering other processes of the job).
// Some of them are already refused by containerd's default profile unless a
// capability is present; they are listed so that they stay refused whatever
// the capabilities or the default profile of a later containerd.
var DeniedSyscalls = []string{
	"io_uring_setup", "io_uring_enter", "io_uring_register",
	"bpf", "perf_event_open", "userfaultfd",
	"keyctl", "add_key", "request_key",
	"kexec_load", "kexec_file_load",
	"open_by_handle_at", "name_to_handle_at",
	"ptrace", "process_vm_readv", "process_vm_writev",
}

// SocketFamilies are the only address families socket(2) and socketpair(2)
// accept in a sandbox: local sockets, IPv4, IPv6 and netlink (which libc and
// node use to list interfaces). Every other family (packet, bluetooth, alg,
// vsock, tipc, …) is rarely used kernel code, and on hosts that autoload
// protocol modules socket() alone loads it.
var SocketFamilies = []uint64{unix.AF_UNIX, unix.AF_INET, unix.AF_INET6, unix.AF_NETLINK}

// errnoEPERM is what every refused syscall returns: programs treat EPERM as
// "not allowed here" and fall back (libuv without io_uring, for one).
var errnoEPERM = uint(unix.EPERM)

// nativeArches is the one seccomp architecture of each platform whose
// compat ABI is left out of the filter (see WithTightSeccomp).
var nativeArches = map[string]specs.Arch{
	"amd64": specs.ArchX86_64,
	"arm64": specs.ArchAARCH64,
}

// WithTightSeccomp sets containerd's default seccomp profile (for the
// spec's capabilities, so it must follow WithoutCapabilities) and narrows it:
// DeniedSyscalls and socket families other than SocketFamilies fail with
// EPERM.
//
// The narrowing removes names from the default's rules instead of adding
// ERRNO rules next to them. libseccomp keeps one decision per syscall and
// argument tree: an unconditional rule for a syscall wins over every
// conditional rule for it, whatever their actions or order, so an "ERRNO if
// family == AF_PACKET" next to the default's unconditional allow of a syscall
// would never fire. socket and socketpair are therefore allowed only by
// rules with a single arg0 == family condition each (runc turns several
// conditions on one argument into separate rules, i.e. OR, which is what
// these rules mean), and everything else falls to the default action.
//
// On amd64 the filter covers the native ABI only: for 32-bit x86 libseccomp
// also allows socketcall(SYS_SOCKET, …) for every socket rule, with the
// family condition dropped (the family sits behind a pointer there), which
// would reopen every family to a 32-bit binary. Without the compat
// architectures in the filter the kernel kills a process at its first 32-bit
// syscall; an npm build has no 32-bit programs. arm64 drops its compat ABI
// for the same surface reason.
func WithTightSeccomp() oci.SpecOpts {
	return func(_ context.Context, _ oci.Client, _ *containers.Container, s *oci.Spec) error {
		if s.Linux == nil {
			s.Linux = &specs.Linux{}
		}
		s.Linux.Seccomp = tightProfile(s)
		return nil
	}
}

func tightProfile(s *oci.Spec) *specs.LinuxSeccomp {
	forCaps := s
	if s.Process == nil || s.Process.Capabilities == nil {
		// DefaultProfile reads the bounding set; no set means no capability.
		forCaps = &oci.Spec{Process: &specs.Process{Capabilities: &specs.LinuxCapabilities{}}}
	}
	p := seccomp.DefaultProfile(forCaps)
	p.DefaultAction = specs.ActErrno
	p.DefaultErrnoRet = &errnoEPERM
	if a, ok := nativeArches[runtime.GOARCH]; ok {
		p.Architectures = []specs.Arch{a}
	}
	rebuilt := append([]string{"socket", "socketpair", "socketcall"}, DeniedSyscalls...)
	p.Syscalls = withoutSyscalls(p.Syscalls, rebuilt)
	// Redundant with the default action (runc skips rules whose action is
	// the default's), but it keeps the denials readable in the spec.
	p.Syscalls = append(p.Syscalls, specs.LinuxSyscall{
		Names: append([]string{}, DeniedSyscalls...), Action: specs.ActErrno, ErrnoRet: &errnoEPERM,
	})
	for _, name := range []string{"socket", "socketpair"} {
		for _, family := range SocketFamilies {
			p.Syscalls = append(p.Syscalls, specs.LinuxSyscall{
				Names:  []string{name},
				Action: specs.ActAllow,
				Args:   []specs.LinuxSeccompArg{{Index: 0, Value: family, Op: specs.OpEqualTo}},
			})
		}
	}
	return p
}

// withoutSyscalls removes names from every rule and drops rules left empty.
func withoutSyscalls(rules []specs.LinuxSyscall, names []string) []specs.LinuxSyscall {
	var out []specs.LinuxSyscall
	for _, r := range rules {
		var keep []string
		for _, n := range r.Names {
			if !slices.Contains(names, n) {
				keep = append(keep, n)
			}
		}
		if len(keep) > 0 {
			r.Names = keep
			out = append(out, r)
		}
	}
	return out
}

// hardeningOpts returns the complete option list for a sandbox. The image's
// config is applied first only for its working directory; everything else is
// ours.
func hardeningOpts(o *Options, cgroupsPath string) []oci.SpecOpts {
	opts := []oci.SpecOpts{
		oci.WithProcessArgs("true"), // each step replaces the process (Sandbox.Run)
		oci.WithProcessCwd(WorkspaceDir),
		oci.WithUIDGID(BuildUID, BuildGID),
		WithoutCapabilities(),
		oci.WithNoNewPrivileges,
		WithTightSeccomp(),
		oci.WithRootFSReadonly(),
		WithPrivateNamespaces(),
		WithNetNS(o.NetNS),
		oci.WithHostname(o.Hostname),
		WithMaskedAndReadonlyPaths(),
		WithNoDeviceAccess(),
		WithExecTmpfs("/tmp", o.Limits.TmpBytes),
		WithExecTmpfs(HomeDir, 64<<20),
		WithBind(o.workspaceMount, WorkspaceDir, true),
		WithLimits(o.Limits),
		oci.WithCgroup(cgroupsPath),
		WithExactEnv(o.Env),
	}
	if o.userNS {
		opts = append(opts, WithUserNS(o.userNSStart))
		if o.NetNS != "" {
			opts = append(opts, WithSysfsFrom(o.sysfsMount))
		}
	}
	for _, m := range o.Mounts {
		opts = append(opts, WithBind(m.Source, m.Destination, false))
	}
	for _, m := range o.testRW {
		opts = append(opts, WithBind(m.Source, m.Destination, true))
	}
	return opts
}

func withoutMount(ms []specs.Mount, dest string) []specs.Mount {
	out := ms[:0]
	for _, m := range ms {
		if filepath.Clean(m.Destination) != filepath.Clean(dest) {
			out = append(out, m)
		}
	}
	return out
}

// validEnv checks that each entry is KEY=VALUE with a sane key.
func validEnv(env []string) error {
	for _, e := range env {
		k, _, ok := strings.Cut(e, "=")
		if !ok || k == "" || strings.ContainsAny(k, " \t\n\x00") {
			return fmt.Errorf("environment entry %q: %w: want KEY=VALUE", e, ErrInvalidOptions)
		}
	}
	return nil
}
