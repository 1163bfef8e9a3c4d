package sandbox

import (
	"context"
	"strings"
	"testing"

	"github.com/containerd/containerd/containers"
	"github.com/containerd/containerd/oci"
	specs "github.com/opencontainers/runtime-spec/specs-go"
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
