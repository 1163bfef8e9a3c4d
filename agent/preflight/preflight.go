// Package preflight owns the build host's prerequisites for an agent, as
// `cleanroom agent check` prints them (and `agent register` and `agent run`
// run them first): root, a writable data dir, containerd and runc, the
// sandbox image, cgroup limits, the sandboxes' user-namespace range (UserNS
// maps the config onto it), ip_forward in the namespace the veths live in,
// iptables and the kernel's NFLOG and conntrack netlink, loop devices and
// mkfs.ext4, and the registries and git hosts reachable from the host. Each
// check says OK, or what failed and the command or setting that fixes it.
// The agent's /readyz reuses the cheap ones (Containerd, Image, NetworkTools).
package preflight

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/cleanroom-ci/cleanroom/agent"
	"github.com/cleanroom-ci/cleanroom/netpolicy"
	"github.com/cleanroom-ci/cleanroom/sandbox"
	"github.com/cleanroom-ci/cleanroom/sandbox/nodeimage"
)

// Result is one check's outcome.
type Result struct {
	Name   string
	Detail string // what was found (OK) or what is wrong (failed)
	Fix    string // the command or setting that fixes it (failed only)
	Failed bool
	// Reachability marks checks of remote hosts: `agent run` only warns
	// about them (the registry may come back), check and register fail.
	Reachability bool
}

func (r Result) String() string {
	if !r.Failed {
		return fmt.Sprintf("OK   %s: %s", r.Name, r.Detail)
	}
	return fmt.Sprintf("FAIL %s: %s — fix: %s", r.Name, r.Detail, r.Fix)
}

// Report is every check's result, in order.
type Report []Result

// Failed returns the failed results (reachability included or not).
func (rep Report) Failed(reachability bool) []Result {
	var out []Result
	for _, r := range rep {
		if r.Failed && (reachability || !r.Reachability) {
			out = append(out, r)
		}
	}
	return out
}

// Print writes one line per check.
func (rep Report) Print(w io.Writer) {
	for _, r := range rep {
		fmt.Fprintln(w, r.String())
	}
}

// Options are the inputs of Run besides the config.
type Options struct {
	// ContainerdAddress overrides cfg.Containerd.Address (the agent's
	// CLEANROOM_CONTAINERD_ADDRESS rule is applied by the caller).
	ContainerdAddress string
	// DialTimeout bounds each TCP connect to a registry or git host
	// (default 3 s).
	DialTimeout time.Duration
}

// Run checks everything cfg needs of this host. cfg must have passed
// Validate (its defaults set).
func Run(ctx context.Context, cfg *agent.Config, o Options) Report {
	if o.ContainerdAddress == "" {
		o.ContainerdAddress = cfg.Containerd.Address
	}
	if o.DialTimeout == 0 {
		o.DialTimeout = 3 * time.Second
	}
	image := cfg.Image
	if image == "" {
		image = nodeimage.DefaultRef
	}
	var rep Report
	ok := func(name, detail string) { rep = append(rep, Result{Name: name, Detail: detail}) }
	fail := func(name string, err error, fix string) {
		rep = append(rep, Result{Name: name, Detail: err.Error(), Fix: fix, Failed: true})
	}
	check := func(name, detail string, err error, fix string) {
		if err != nil {
			fail(name, err, fix)
		} else {
			ok(name, detail)
		}
	}

	if os.Geteuid() != 0 {
		fail("root", errors.New("not running as root (namespaces, iptables, mounts and containerd need it)"), "run it as root: sudo cleanroom agent …")
	} else {
		ok("root", "running as root")
	}
	check("data dir", cfg.DataDir+" is writable", Writable(cfg.DataDir),
		fmt.Sprintf("give a writable local folder: mkdir -p %s, or set data_dir in the agent config (--data-dir at register)", cfg.DataDir))
	check("network state dir", cfg.Network.StateDir+" is writable", Writable(cfg.Network.StateDir),
		fmt.Sprintf("mkdir -p %s, or set network.state_dir in the agent config", cfg.Network.StateDir))

	// The check's client keeps its (empty) sandbox state in a temporary
	// folder: checking must not depend on, or write to, the data dir.
	tmp, err := os.MkdirTemp("", "cleanroom-check-")
	if err != nil {
		fail("containerd", err, "make $TMPDIR writable")
	} else {
		defer os.RemoveAll(tmp)
		sb, err := sandbox.New(ctx, sandbox.Config{Address: o.ContainerdAddress, Namespace: cfg.Containerd.Namespace, StateDir: tmp})
		if err != nil {
			fail("containerd", err, "install and start containerd (apt-get install containerd && systemctl enable --now containerd), or set containerd.address in the agent config / CLEANROOM_CONTAINERD_ADDRESS")
			fail("image", fmt.Errorf("%s: not checked (no containerd)", image), "start containerd first, then: cleanroom image build")
		} else {
			defer sb.Close()
			v, err := Containerd(ctx, sb)
			check("containerd", fmt.Sprintf("containerd %s at %s", v, o.ContainerdAddress), err,
				"start containerd (systemctl start containerd), or fix containerd.address")
			check("image", fmt.Sprintf("%s in containerd namespace %s", image, cfg.Containerd.Namespace), Image(ctx, sb, image),
				imageFix(image, o.ContainerdAddress))
		}
	}
	check("runc", "runc on PATH", lookPath("runc"), "apt-get install runc")
	if u, why := UserNS(cfg); u == nil {
		ok("user namespaces", why)
	} else {
		check("user namespaces", fmt.Sprintf("sandboxes on host IDs %d–%d (%d slots of %d)", u.Base, uint64(u.Base)+uint64(u.Slots)*sandbox.UserNSSize-1, u.Slots, sandbox.UserNSSize),
			sandbox.CheckUserNS(*u), "choose another sandbox.userns.base (docs/operations.md, User namespaces), or enable user namespaces (sysctl -w user.max_user_namespaces=15000), or set sandbox.userns.mode: off")
	}
	if detail, err := Cgroups(); err != nil {
		fail("cgroups", err, "mount the memory, pids and cpu cgroup controllers (cgroup v2: boot with systemd.unified_cgroup_hierarchy=1, or enable them in /sys/fs/cgroup/cgroup.subtree_control)")
	} else {
		ok("cgroups", detail)
	}
	ns := cfg.Network.HostNetNS
	where := "the agent's namespace"
	if ns != "" {
		where = ns
	}
	if cfg.Network.Mode == agent.NetworkModeForward {
		fix := "sysctl -w net.ipv4.ip_forward=1 (persist it in /etc/sysctl.d/), or network.mode: direct"
		if ns != "" {
			fix = "nsenter --net=" + ns + " sysctl -w net.ipv4.ip_forward=1"
		}
		check("ip_forward", "net.ipv4.ip_forward=1 in "+where+" (forward mode)", netpolicy.CheckForwarding(ns), fix)
	}
	check("iptables", "iptables and ip6tables on PATH", NetworkTools(), "apt-get install iptables")
	check("netfilter audit", "NFLOG and conntrack netlink usable in "+where, netpolicy.ProbeAudit(ns),
		"modprobe nfnetlink_log xt_NFLOG nf_conntrack_netlink (or a kernel built with them)")
	check("loop devices", "/dev/loop-control present", stat("/dev/loop-control"), "modprobe loop (the job's disk limit is a loop-mounted ext4)")
	check("mkfs.ext4", "mkfs.ext4 on PATH", lookPath("mkfs.ext4"), "apt-get install e2fsprogs")

	for _, r := range cfg.Network.Registries {
		addr, err := registryAddr(r)
		if err == nil {
			err = Reach(ctx, ns, cfg.Network.Hosts, addr, o.DialTimeout)
		}
		reach(&rep, "registry "+r, addr, where, err,
			"check the registry URL (network.registries, --registry) and that this host routes to it; a name DNS does not know can be mapped with network.hosts (--host NAME=IP at register)")
	}
	for _, h := range cfg.Git.Hosts {
		reach(&rep, "git host "+h, h, where, Reach(ctx, ns, cfg.Network.Hosts, h, o.DialTimeout),
			"check git.hosts in the agent config and that this host routes to it")
	}
	return rep
}

func reach(rep *Report, name, addr, where string, err error, fix string) {
	r := Result{Name: name, Detail: fmt.Sprintf("TCP connect to %s from %s", addr, where), Reachability: true}
	if err != nil {
		r.Detail, r.Fix, r.Failed = err.Error(), fix, true
	}
	*rep = append(*rep, r)
}

func imageFix(image, addr string) string {
	fix := "cleanroom image build"
	if image != nodeimage.DefaultRef {
		fix += " --ref " + image
	}
	if addr != agent.DefaultContainerdAddress {
		fix = "CLEANROOM_CONTAINERD_ADDRESS=" + addr + " " + fix
	}
	return fix
}

// Containerd returns the daemon's version, or why it does not answer.
func Containerd(ctx context.Context, sb *sandbox.Client) (string, error) {
	ok, err := sb.Containerd().IsServing(ctx)
	if err == nil && !ok {
		err = errors.New("not serving")
	}
	if err != nil {
		return "", fmt.Errorf("reaching containerd: %w", err)
	}
	v, err := sb.Containerd().Version(ctx)
	if err != nil {
		return "", fmt.Errorf("reading containerd's version: %w", err)
	}
	return v.Version, nil
}

// Image returns an error unless the sandbox image is in containerd.
func Image(ctx context.Context, sb *sandbox.Client, ref string) error {
	_, err := sb.ImageDigest(ctx, ref)
	return err
}

// NetworkTools checks that iptables and ip6tables are on PATH.
func NetworkTools() error {
	for _, bin := range []string{"iptables", "ip6tables"} {
		if err := lookPath(bin); err != nil {
			return err
		}
	}
	return nil
}

// Writable creates dir if needed and writes and removes a file in it.
func Writable(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("creating %s: %w", dir, err)
	}
	f, err := os.CreateTemp(dir, ".check-*")
	if err != nil {
		return fmt.Errorf("writing to %s: %w", dir, err)
	}
	f.Close()
	return os.Remove(f.Name())
}

// Cgroups checks that the memory, pids and cpu controllers the sandbox
// limits use are mounted (cgroup v2, or v1 hierarchies).
func Cgroups() (string, error) {
	want := []string{"memory", "pids", "cpu"}
	if b, err := os.ReadFile("/sys/fs/cgroup/cgroup.controllers"); err == nil {
		have := strings.Fields(string(b))
		for _, c := range want {
			if !contains(have, c) {
				return "", fmt.Errorf("cgroup v2 without the %s controller (have: %s)", c, strings.Join(have, " "))
			}
		}
		return "cgroup v2 with memory, pids and cpu", nil
	}
	for _, c := range want {
		if _, err := os.Stat(filepath.Join("/sys/fs/cgroup", c, "cgroup.procs")); err != nil {
			return "", fmt.Errorf("no cgroup v2 and no %s cgroup v1 hierarchy under /sys/fs/cgroup", c)
		}
	}
	return "cgroup v1 with memory, pids and cpu", nil
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

func lookPath(bin string) error {
	if _, err := exec.LookPath(bin); err != nil {
		return fmt.Errorf("finding %s: not on PATH", bin)
	}
	return nil
}

func stat(path string) error {
	if _, err := os.Stat(path); err != nil {
		return fmt.Errorf("%s missing", path)
	}
	return nil
}

// registryAddr is the host:port of a registry URL (443 or 80 by scheme).
func registryAddr(raw string) (string, error) {
	u, err := url.Parse(raw)
	if err != nil || u.Host == "" {
		return raw, fmt.Errorf("%q is not a URL", raw)
	}
	port := u.Port()
	if port == "" {
		port = "443"
		if u.Scheme == "http" {
			port = "80"
		}
	}
	return net.JoinHostPort(u.Hostname(), port), nil
}

// Reach opens (and closes) a TCP connection to addr from the namespace at
// nsPath ("" = this one), resolving the host through hosts first, as the
// agent's DNS responder does.
func Reach(ctx context.Context, nsPath string, hosts map[string]string, addr string, timeout time.Duration) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("%q: want host:port", addr)
	}
	ip := hosts[host]
	if ip == "" && net.ParseIP(host) != nil {
		ip = host
	}
	if ip == "" {
		rctx, cancel := context.WithTimeout(ctx, timeout)
		defer cancel()
		ips, err := net.DefaultResolver.LookupHost(rctx, host)
		if err != nil || len(ips) == 0 {
			return fmt.Errorf("resolving %s: %v", host, err)
		}
		ip = ips[0]
	}
	target := net.JoinHostPort(ip, port)
	return netpolicy.Do(nsPath, func() error {
		c, err := net.DialTimeout("tcp", target, timeout)
		if err != nil {
			return fmt.Errorf("connecting to %s (%s): %w", addr, target, err)
		}
		return c.Close()
	})
}

// UserNS maps the agent config's sandbox.userns onto the sandbox client's:
// one slot per concurrent job from the base (default
// sandbox.DefaultUserNSBase). It returns nil, with the reason, when
// sandboxes share the host's user namespace: mode off, or mode auto on a
// kernel without user namespaces. Mode on always asks for them; the sandbox
// client then refuses to start without.
func UserNS(cfg *agent.Config) (*sandbox.UserNS, string) {
	u := cfg.Sandbox.UserNS
	switch u.Mode {
	case agent.UserNSOff:
		return nil, "off (sandbox.userns.mode: off): every job's build user is host uid 1000"
	case agent.UserNSAuto, "":
		if err := sandbox.UserNSSupported(); err != nil {
			return nil, fmt.Sprintf("not used: %v (sandbox.userns.mode: on refuses to start instead)", err)
		}
	}
	base := u.Base
	if base == 0 {
		base = sandbox.DefaultUserNSBase
	}
	return &sandbox.UserNS{Base: base, Slots: max(cfg.Concurrency, 1)}, ""
}
