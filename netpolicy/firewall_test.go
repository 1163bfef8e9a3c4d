package netpolicy

import (
	"context"
	"errors"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
)

// These tests run the firewall part of Setup, Close and GC against
// fakeFirewalls: no namespaces, no root. The kernel side is lab_test.go's.

// fakeHostNS stands for the host namespace in the fake; the sandbox
// namespace is "" (so Close has no namespace to delete).
const fakeHostNS = "fake-host-ns"

var registryIP = net.IPv4(10, 231, 254, 2)

// fakeHost is a build host made of fake firewalls and an address pool in a
// temporary state dir.
type fakeHost struct {
	fws  *fakeFirewalls
	pool *Pool
}

func newFakeHost(t *testing.T) *fakeHost {
	pool, err := NewPool("", t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return &fakeHost{fws: newFakeFirewalls(), pool: pool}
}

// network builds a Network as Setup does up to its firewall: a lease, names,
// and the destinations with HostEnd substituted. Nothing in it touches the
// kernel.
func (h *fakeHost) network(t *testing.T, id string, mode Mode, masq, kill bool) *Network {
	t.Helper()
	pool, fws := h.pool, h.fws
	lease, err := pool.AllocateOwned(id, "cr-"+id, "test")
	if err != nil {
		t.Fatal(err)
	}
	dest := Destination{Host: "registry.cleanroom.test", IPs: []net.IP{registryIP}, Port: 4873}
	if mode == ModeDirect {
		dest = Destination{Host: "registry.cleanroom.test", IPs: []net.IP{lease.HostIP}, Port: 4873}
	}
	cfg := Config{ID: id, HostNS: fakeHostNS, Mode: mode, Masquerade: masq, Firewall: fws.open}
	if kill {
		cfg.Policy.Kill = true
	}
	n := namesFor(id, lease.Slot)
	return &Network{
		ID: id, Name: "cr-" + id, HostIf: n.hostIf, HostIP: lease.HostIP, SandboxIP: lease.PeerIP,
		HostIP6: lease.HostIP6, SandboxIP6: lease.PeerIP6, Destinations: []Destination{dest},
		cfg: cfg, lease: lease, pool: pool, n: n, log: hclog.NewNullLogger(),
		released: make(chan struct{}),
	}
}

// setUp builds a network and installs its rules.
func (h *fakeHost) setUp(t *testing.T, id string, mode Mode, masq, kill bool) *Network {
	t.Helper()
	nw := h.network(t, id, mode, masq, kill)
	if err := nw.rulePlan().install(h.fws.open); err != nil {
		t.Fatal(err)
	}
	return nw
}

func TestSetupInstallsTheRulesOfEachMode(t *testing.T) {
	for _, tc := range []struct {
		name            string
		mode            Mode
		masq, kill      bool
		wantFwd         func(nw *Network) []string
		wantNat         bool
		wantSandboxDeny []string
	}{
		{
			name: "direct", mode: ModeDirect,
			wantFwd:         func(*Network) []string { return []string{"-j DROP"} },
			wantSandboxDeny: []string{"-j NFLOG --nflog-group 100 --nflog-prefix cr default-deny", "-p tcp -j REJECT --reject-with tcp-reset", "-j REJECT --reject-with icmp-port-unreachable"},
		},
		{
			name: "forward", mode: ModeForward,
			wantFwd: func(nw *Network) []string {
				return []string{
					"-o " + nw.HostIf + " -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT",
					"-i " + nw.HostIf + " -s " + nw.SandboxIP.String() + "/32 -d 10.231.254.2/32 -p tcp --dport 4873 -j ACCEPT",
					"-j DROP",
				}
			},
			wantSandboxDeny: []string{"-j NFLOG --nflog-group 100 --nflog-prefix cr default-deny", "-p tcp -j REJECT --reject-with tcp-reset", "-j REJECT --reject-with icmp-port-unreachable"},
		},
		{
			name: "forward, masquerade, kill", mode: ModeForward, masq: true, kill: true,
			wantFwd: func(nw *Network) []string {
				return []string{
					"-o " + nw.HostIf + " -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT",
					"-i " + nw.HostIf + " -s " + nw.SandboxIP.String() + "/32 -d 10.231.254.2/32 -p tcp --dport 4873 -j ACCEPT",
					"-j DROP",
				}
			},
			wantNat:         true,
			wantSandboxDeny: []string{"-j NFLOG --nflog-group 100 --nflog-prefix cr default-deny", "-j DROP"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newFakeHost(t)
			fws := h.fws
			nw := h.setUp(t, "j-1", tc.mode, tc.masq, tc.kill)
			comment := " -m comment --comment cleanroom job=j-1"
			host := fws.get(fakeHostNS, false)

			// The host guard: jumps from the built-in chains first in line.
			input, _ := host.rules("filter", "INPUT")
			if want := []string{"-i " + nw.HostIf + comment + " -j " + nw.n.inChain}; !slices.Equal(input, want) {
				t.Errorf("host INPUT:\n got %q\nwant %q", input, want)
			}
			forward, _ := host.rules("filter", "FORWARD")
			if want := []string{
				"-o " + nw.HostIf + comment + " -j " + nw.n.fwdChain,
				"-i " + nw.HostIf + comment + " -j " + nw.n.fwdChain,
			}; !slices.Equal(forward, want) {
				t.Errorf("host FORWARD:\n got %q\nwant %q", forward, want)
			}
			in, _ := host.rules("filter", nw.n.inChain)
			if want := "-d " + nw.HostIP.String() + "/32 -p udp --dport 53 -j ACCEPT" + comment; !slices.Contains(in, want) {
				t.Errorf("host input chain has no DNS rule %q:\n%s", want, strings.Join(in, "\n"))
			}
			direct := "-d " + nw.HostIP.String() + "/32 -p tcp --dport 4873 -j ACCEPT" + comment
			if slices.Contains(in, direct) != (tc.mode == ModeDirect) {
				t.Errorf("host input chain (%s): rule %q present = %v:\n%s", tc.name, direct, tc.mode != ModeDirect, strings.Join(in, "\n"))
			}
			if in[len(in)-1] != "-j DROP"+comment {
				t.Errorf("host input chain does not end in DROP:\n%s", strings.Join(in, "\n"))
			}
			fwd, _ := host.rules("filter", nw.n.fwdChain)
			var want []string
			for _, r := range tc.wantFwd(nw) {
				want = append(want, r+comment)
			}
			if !slices.Equal(fwd, want) {
				t.Errorf("host forward chain:\n got %q\nwant %q", fwd, want)
			}
			post, _ := host.rules("nat", "POSTROUTING")
			masq, natExists := host.rules("nat", nw.n.natChain)
			if natExists != tc.wantNat || (len(post) == 1) != tc.wantNat {
				t.Errorf("nat: chain exists %v, POSTROUTING %q; want masquerade %v", natExists, post, tc.wantNat)
			}
			if tc.wantNat && !slices.Equal(masq, []string{"-d 10.231.254.2/32 -p tcp --dport 4873 -j MASQUERADE" + comment}) {
				t.Errorf("nat chain: %q", masq)
			}
			if left := fws.get(fakeHostNS, true).dump(); len(left) != 0 {
				t.Errorf("host has IPv6 rules: %q", left)
			}

			// The sandbox allow-lists: both families end in the deny chain.
			for _, v6 := range []bool{false, true} {
				sb := fws.get("", v6)
				out, _ := sb.rules("filter", "OUTPUT")
				if len(out) == 0 || out[len(out)-1] != "-j "+chainDeny {
					t.Errorf("v6=%v: sandbox OUTPUT does not end in the deny chain:\n%s", v6, strings.Join(out, "\n"))
				}
				_, meta := sb.rules("filter", chainMeta)
				if meta == v6 {
					t.Errorf("v6=%v: metadata chain present = %v", v6, meta)
				}
				if v6 {
					continue
				}
				allow := "-d 10.231.254.2/32 -p tcp --dport 4873 -m conntrack --ctstate NEW -j ACCEPT"
				if tc.mode == ModeDirect {
					allow = "-d " + nw.HostIP.String() + "/32 -p tcp --dport 4873 -m conntrack --ctstate NEW -j ACCEPT"
				}
				if !slices.Contains(out, allow) {
					t.Errorf("sandbox OUTPUT has no %q:\n%s", allow, strings.Join(out, "\n"))
				}
				deny, _ := sb.rules("filter", chainDeny)
				if want := tc.wantSandboxDeny; !slices.Equal(deny, want) {
					t.Errorf("sandbox deny chain:\n got %q\nwant %q", deny, want)
				}
			}
		})
	}
}

func TestSetupFailsClosedWhenTheFirewallFails(t *testing.T) {
	broken := errors.New("xtables lock held by pid 42")
	for _, tc := range []struct {
		name      string
		fail      func(ns string, v6 bool, op string, r Rule) bool
		wantWhere string
	}{
		{"host forward chain", func(ns string, _ bool, op string, r Rule) bool {
			return ns == fakeHostNS && op == "add" && strings.HasSuffix(r.Chain, "-F")
		}, "applying host ipv4 rules"},
		{"sandbox ipv6 output", func(ns string, v6 bool, op string, r Rule) bool {
			return ns == "" && v6 && op == "add" && r.Chain == "OUTPUT"
		}, "applying sandbox ipv6 rules"},
		{"host nat chain", func(ns string, _ bool, op string, r Rule) bool {
			return ns == fakeHostNS && op == "newchain" && r.Table == "nat"
		}, "applying host ipv4 rules"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newFakeHost(t)
			fws := h.fws
			fws.hook = func(ns string, v6 bool, op string, r Rule) error {
				if tc.fail(ns, v6, op, r) {
					return broken
				}
				return nil
			}
			nw := h.network(t, "j-1", ModeForward, true, false)
			err := nw.rulePlan().install(fws.open)
			if !errors.Is(err, broken) || !strings.Contains(err.Error(), tc.wantWhere) {
				t.Fatalf("install: %v; want an error saying %q and why", err, tc.wantWhere)
			}
			for k, fw := range fws.fws {
				if left := fw.dump(); len(left) != 0 {
					t.Errorf("%+v: rules left after a failed setup:\n%s", k, strings.Join(left, "\n"))
				}
			}
		})
	}
}

// busyHost is a fake host whose firewall already has rules of other
// software and of a sandbox network of job other.
func busyHost(t *testing.T, other string) (*fakeHost, *fakeFW) {
	t.Helper()
	h := newFakeHost(t)
	fw := h.fws.get(fakeHostNS, false)
	for _, r := range []Rule{
		{Table: "filter", Chain: "FORWARD", Spec: []string{"-i", "docker0", "-j", "ACCEPT"}},
		{Table: "filter", Chain: "INPUT", Spec: []string{"-p", "tcp", "--dport", "22", "-m", "comment", "--comment", "ssh", "-j", "ACCEPT"}},
		{Table: "nat", Chain: "POSTROUTING", Spec: []string{"-s", "172.17.0.0/16", "-j", "MASQUERADE"}},
	} {
		if err := fw.Add(r, false); err != nil {
			t.Fatal(err)
		}
	}
	h.setUp(t, other, ModeForward, true, false)
	return h, fw
}

func TestCloseRemovesExactlyTheJobsRules(t *testing.T) {
	h, host := busyHost(t, "j-other")
	before := host.dump()
	nw := h.setUp(t, "j-1", ModeForward, true, false)
	if err := nw.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if after := host.dump(); !slices.Equal(after, before) {
		t.Fatalf("host firewall after Close:\n%s\nwant:\n%s", strings.Join(after, "\n"), strings.Join(before, "\n"))
	}
	awaitReleased(t, nw)
}

// awaitReleased waits for nw's background release and checks its lease is
// back in the pool.
func awaitReleased(t *testing.T, nw *Network) {
	t.Helper()
	select {
	case <-nw.Released():
	case <-time.After(5 * time.Second):
		t.Fatal("not released")
	}
	if err := nw.ReleaseErr(); err != nil {
		t.Fatal(err)
	}
	leases, err := nw.pool.Leases()
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range leases {
		if l.Job == nw.ID {
			t.Fatalf("lease of %s left: %+v", nw.ID, l)
		}
	}
}

func TestCloseStopsWaitingWhenItsContextEnds(t *testing.T) {
	h := newFakeHost(t)
	fws := h.fws
	blocked, unblock := make(chan struct{}), make(chan struct{})
	var once sync.Once
	// A held xtables lock: removing the host rules hangs until unblock.
	fws.hook = func(ns string, _ bool, op string, _ Rule) error {
		if ns == fakeHostNS && op == "del" {
			once.Do(func() { close(blocked) })
			<-unblock
		}
		return nil
	}
	nw := h.setUp(t, "j-1", ModeForward, false, false)

	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	errc := make(chan error, 1)
	go func() { errc <- nw.Close(ctx) }()
	var err error
	select {
	case err = <-errc:
	case <-time.After(2 * time.Second):
		close(unblock)
		t.Fatal("Close still waiting 2 s after its context ended")
	}
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Close: %v; want an error wrapping the context's", err)
	}
	<-blocked
	if err2 := nw.Close(context.Background()); err2 != err {
		t.Fatalf("second Close: %v, want the first's %v", err2, err)
	}
	// The addresses stay taken while the host rules naming them are
	// still being removed.
	select {
	case <-nw.Released():
		t.Fatal("released before the host rules were removed")
	case <-time.After(50 * time.Millisecond):
	}
	if leases, _ := nw.pool.Leases(); len(leases) != 1 {
		t.Fatalf("leases while removing: %+v", leases)
	}

	close(unblock)
	awaitReleased(t, nw)
	if left := fws.get(fakeHostNS, false).dump(); len(left) != 0 {
		t.Fatalf("host rules left:\n%s", strings.Join(left, "\n"))
	}
}

func TestGCRemovesOnlyOurRulesOfDeadJobs(t *testing.T) {
	h, host := busyHost(t, "j-alive")
	fws := h.fws
	want := host.dump()
	h.setUp(t, "j-dead", ModeForward, true, false)
	// A crash between creating a chain and jumping to it leaves an orphan,
	// and an old host may have our chains in its IPv6 firewall.
	orphan := namesFor("j-crashed", 9).fwdChain
	if err := host.NewChain("filter", orphan); err != nil {
		t.Fatal(err)
	}
	host6 := fws.get(fakeHostNS, true)
	if err := host6.NewChain("filter", orphan); err != nil {
		t.Fatal(err)
	}
	if err := host6.Add(Rule{Table: "filter", Chain: "INPUT", Spec: []string{"-m", "comment", "--comment", "cleanroom job=j-crashed", "-j", orphan}}, false); err != nil {
		t.Fatal(err)
	}

	var rep Report
	deadJobs := map[string]bool{}
	keep := func(job string) bool { return job == "j-alive" }
	if err := gcFirewalls(fws.open, fakeHostNS, keep, deadJobs, &rep); err != nil {
		t.Fatal(err)
	}
	if got := host.dump(); !slices.Equal(got, want) {
		t.Fatalf("host firewall after GC:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if left := host6.dump(); len(left) != 0 {
		t.Fatalf("IPv6 leftovers after GC: %q", left)
	}
	if !deadJobs["j-dead"] || !deadJobs["j-crashed"] || deadJobs["j-alive"] {
		t.Errorf("dead jobs: %v", deadJobs)
	}
	// Four jumps of j-dead (INPUT, FORWARD twice, POSTROUTING), one of
	// j-crashed; three chains of j-dead, the orphan in both families.
	if len(rep.Rules) != 5 || len(rep.Chains) != 5 {
		t.Errorf("report: %d rules, %d chains:\n%s\n%s", len(rep.Rules), len(rep.Chains), strings.Join(rep.Rules, "\n"), strings.Join(rep.Chains, "\n"))
	}
	for _, r := range rep.Rules {
		if !strings.Contains(r, "job=j-dead") && !strings.Contains(r, "job=j-crashed") {
			t.Errorf("GC reports a rule it should have kept: %s", r)
		}
	}

	// Nothing more to do the second time.
	rep = Report{}
	if err := gcFirewalls(fws.open, fakeHostNS, keep, map[string]bool{}, &rep); err != nil {
		t.Fatal(err)
	}
	if len(rep.Rules)+len(rep.Chains) != 0 {
		t.Errorf("second GC removed %v", rep)
	}
}
