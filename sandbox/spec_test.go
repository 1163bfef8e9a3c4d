package sandbox

import (
	"context"
	"runtime"
	"slices"
	"strings"
	"testing"

	"github.com/containerd/containerd/containers"
	"github.com/containerd/containerd/oci"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

func applyOpts(t *testing.T, opts ...oci.SpecOpts) *oci.Spec {
	t.Helper()
	s := &oci.Spec{Process: &specs.Process{Env: []string{"FROM_IMAGE=1"}}, Linux: &specs.Linux{
		Namespaces: []specs.LinuxNamespace{{Type: specs.PIDNamespace, Path: "/proc/1/ns/pid"}, {Type: specs.NetworkNamespace}},
	}}
	for _, o := range opts {
		if err := o(context.Background(), nil, &containers.Container{}, s); err != nil {
			t.Fatal(err)
		}
	}
	return s
}

func TestHardeningDropsEveryCapability(t *testing.T) {
	s := applyOpts(t, oci.WithAddedCapabilities([]string{"CAP_NET_RAW"}), WithoutCapabilities())
	c := s.Process.Capabilities
	for name, set := range map[string][]string{"bounding": c.Bounding, "effective": c.Effective, "permitted": c.Permitted, "inheritable": c.Inheritable, "ambient": c.Ambient} {
		if len(set) != 0 {
			t.Errorf("%s capabilities = %v, want none", name, set)
		}
	}
}

func TestExactEnvReplacesImageEnv(t *testing.T) {
	s := applyOpts(t, WithExactEnv([]string{"A=1"}))
	if strings.Join(s.Process.Env, ",") != "A=1" {
		t.Fatalf("env = %v, want only A=1", s.Process.Env)
	}
}

func TestPrivateNamespacesNeverJoinHostOnes(t *testing.T) {
	s := applyOpts(t, WithPrivateNamespaces(), WithNetNS(""))
	seen := map[specs.LinuxNamespaceType]bool{}
	for _, n := range s.Linux.Namespaces {
		if n.Path != "" {
			t.Errorf("namespace %s joins %s, want a new one", n.Type, n.Path)
		}
		seen[n.Type] = true
	}
	for _, want := range []specs.LinuxNamespaceType{specs.PIDNamespace, specs.IPCNamespace, specs.UTSNamespace, specs.MountNamespace, specs.NetworkNamespace} {
		if !seen[want] {
			t.Errorf("no %s namespace", want)
		}
	}
}

func TestNetNSPathIsJoined(t *testing.T) {
	s := applyOpts(t, WithNetNS("/run/netns/cr-x"))
	n := 0
	for _, ns := range s.Linux.Namespaces {
		if ns.Type == specs.NetworkNamespace {
			n++
			if ns.Path != "/run/netns/cr-x" {
				t.Errorf("network namespace path = %q", ns.Path)
			}
		}
	}
	if n != 1 {
		t.Errorf("%d network namespaces, want 1", n)
	}
}

func TestLimitsDisableSwapAndSetPids(t *testing.T) {
	s := applyOpts(t, WithLimits(Limits{MemoryBytes: 256 << 20, CPUs: 1.5, Pids: 100}))
	r := s.Linux.Resources
	if *r.Memory.Limit != 256<<20 || *r.Memory.Swap != 256<<20 {
		t.Errorf("memory limit %d swap %d", *r.Memory.Limit, *r.Memory.Swap)
	}
	if r.Pids.Limit != 100 {
		t.Errorf("pids limit %d", r.Pids.Limit)
	}
	if *r.CPU.Quota != 150000 || *r.CPU.Period != 100000 {
		t.Errorf("cpu quota %d period %d", *r.CPU.Quota, *r.CPU.Period)
	}
}

func TestBindMountsAreNosuidNodevAndReadOnlyByDefault(t *testing.T) {
	s := applyOpts(t, WithBind("/src", "/etc/resolv.conf", false), WithBind("/ws", "/workspace", true))
	for _, m := range s.Mounts {
		opts := strings.Join(m.Options, ",")
		if !strings.Contains(opts, "nosuid") || !strings.Contains(opts, "nodev") {
			t.Errorf("%s: options %s lack nosuid,nodev", m.Destination, opts)
		}
		wantMode := "ro"
		if m.Destination == "/workspace" {
			wantMode = "rw"
		}
		if !strings.Contains(","+opts+",", ","+wantMode+",") {
			t.Errorf("%s: options %s, want %s", m.Destination, opts, wantMode)
		}
	}
	if err := WithBind("relative", "/x", false)(context.Background(), nil, nil, &oci.Spec{}); err == nil {
		t.Error("relative bind source accepted")
	}
}

func TestOptionsValidationReportsEveryProblem(t *testing.T) {
	o := Options{JobID: "Bad ID", Image: "", Workspace: "/does/not/exist", Limits: Limits{MemoryBytes: -1, Pids: 3}, Env: []string{"NOEQUALS"}}
	err := o.validate()
	if err == nil {
		t.Fatal("invalid options accepted")
	}
	for _, want := range []string{"job id", "image", "workspace", "negative", "pids limit", "NOEQUALS"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}
}

func TestTightSeccompDeniesWhatABuildNeverNeeds(t *testing.T) {
	eperm := uint(unix.EPERM)
	// With every capability that makes the default profile allow more
	// (bpf, perf_event_open, ptrace, open_by_handle_at), and with none.
	for name, caps := range map[string][]string{
		"no capabilities":   nil,
		"wide capabilities": {"CAP_SYS_ADMIN", "CAP_SYS_PTRACE", "CAP_BPF", "CAP_PERFMON", "CAP_DAC_READ_SEARCH", "CAP_SYS_BOOT"},
	} {
		t.Run(name, func(t *testing.T) {
			s := applyOpts(t, func(_ context.Context, _ oci.Client, _ *containers.Container, s *oci.Spec) error {
				s.Process.Capabilities = &specs.LinuxCapabilities{Bounding: caps}
				return nil
			}, WithTightSeccomp())
			p := s.Linux.Seccomp
			if p.DefaultAction != specs.ActErrno || p.DefaultErrnoRet == nil || *p.DefaultErrnoRet != eperm {
				t.Errorf("default action %s errno %v, want ERRNO EPERM", p.DefaultAction, p.DefaultErrnoRet)
			}
			denied := map[string]bool{}
			for _, r := range p.Syscalls {
				for _, n := range r.Names {
					if slices.Contains(DeniedSyscalls, n) && r.Action != specs.ActErrno {
						t.Errorf("%s has action %s", n, r.Action)
					}
					if r.Action == specs.ActErrno && r.ErrnoRet != nil && *r.ErrnoRet == eperm {
						denied[n] = true
					}
				}
			}
			for _, n := range []string{"io_uring_setup", "io_uring_enter", "io_uring_register", "bpf", "perf_event_open",
				"userfaultfd", "keyctl", "add_key", "request_key", "kexec_load", "kexec_file_load",
				"open_by_handle_at", "name_to_handle_at", "ptrace"} {
				if !denied[n] {
					t.Errorf("%s is not denied with EPERM", n)
				}
			}
		})
	}
}

func TestTightSeccompAllowsOnlyFourSocketFamilies(t *testing.T) {
	s := applyOpts(t, WithoutCapabilities(), WithTightSeccomp())
	want := []uint64{unix.AF_UNIX, unix.AF_INET, unix.AF_INET6, unix.AF_NETLINK}
	got := map[string][]uint64{}
	for _, r := range s.Linux.Seccomp.Syscalls {
		for _, n := range r.Names {
			if n != "socket" && n != "socketpair" && n != "socketcall" {
				continue
			}
			// Any rule but "allow if arg0 == family" would widen the
			// allow-list: libseccomp lets an unconditional rule win over
			// conditional ones, and OR-splits several conditions.
			if r.Action != specs.ActAllow || len(r.Args) != 1 || r.Args[0].Index != 0 || r.Args[0].Op != specs.OpEqualTo {
				t.Errorf("%s rule %+v, want only allow with arg0 == family", n, r)
				continue
			}
			got[n] = append(got[n], r.Args[0].Value)
		}
	}
	for _, n := range []string{"socket", "socketpair"} {
		if !slices.Equal(got[n], want) {
			t.Errorf("%s allowed for families %v, want %v", n, got[n], want)
		}
	}
	if len(got["socketcall"]) > 0 {
		t.Errorf("socketcall allowed: %v", got["socketcall"])
	}
	if a := s.Linux.Seccomp.Architectures; runtime.GOARCH == "amd64" && !slices.Equal(a, []specs.Arch{specs.ArchX86_64}) {
		t.Errorf("architectures %v, want only x86_64 (libseccomp drops socket's family condition for 32-bit x86)", a)
	}
}

func TestTightSeccompKeepsTheDefaultProfilesOtherRules(t *testing.T) {
	s := applyOpts(t, WithoutCapabilities(), WithTightSeccomp())
	allowed := map[string]bool{}
	for _, r := range s.Linux.Seccomp.Syscalls {
		if r.Action == specs.ActAllow && len(r.Args) == 0 {
			for _, n := range r.Names {
				allowed[n] = true
			}
		}
	}
	for _, n := range []string{"read", "write", "openat", "execve", "connect", "epoll_wait"} {
		if !allowed[n] {
			t.Errorf("%s no longer allowed", n)
		}
	}
}

func TestTightSeccompOnABareSpec(t *testing.T) {
	s := &oci.Spec{}
	if err := WithTightSeccomp()(context.Background(), nil, &containers.Container{}, s); err != nil {
		t.Fatal(err)
	}
	if s.Linux.Seccomp == nil || len(s.Linux.Seccomp.Syscalls) == 0 {
		t.Fatal("no profile set")
	}
}
