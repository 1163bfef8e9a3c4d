package netpolicy

import (
	"context"
	"encoding/binary"
	"errors"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
)

func TestNarrow(t *testing.T) {
	runner := Policy{Registries: []string{"http://registry.cleanroom.test:4873/", "https://npm.corp"}, Extra: []string{"git.corp:22", "cache.corp:443"}}
	kill := Policy{Registries: runner.Registries, Extra: runner.Extra, Kill: true}
	tests := []struct {
		name    string
		runner  Policy
		job     Policy
		want    Policy
		wantErr error
	}{
		{"empty inherits registries, gets no extras", runner, Policy{}, Policy{Registries: runner.Registries}, nil},
		{"subset of registries", runner, Policy{Registries: []string{"http://registry.cleanroom.test:4873"}},
			Policy{Registries: []string{"http://registry.cleanroom.test:4873"}}, nil},
		{"only the extras it names", runner, Policy{Extra: []string{"git.corp:22"}}, Policy{Registries: runner.Registries, Extra: []string{"git.corp:22"}}, nil},
		{"tighten to kill", runner, Policy{Kill: true}, Policy{Registries: runner.Registries, Kill: true}, nil},
		{"deny on a kill runner stays kill", kill, Policy{}, Policy{Registries: runner.Registries, Kill: true}, nil},
		{"new registry widens", runner, Policy{Registries: []string{"https://registry.npmjs.org"}}, Policy{}, ErrWidening},
		{"same host other port widens", runner, Policy{Registries: []string{"http://registry.cleanroom.test:4874"}}, Policy{}, ErrWidening},
		{"new extra widens", runner, Policy{Extra: []string{"evil.example:443"}}, Policy{}, ErrWidening},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := tc.runner.Narrow(tc.job)
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("err = %v, want %v", err, tc.wantErr)
			}
			if err == nil && (strings.Join(got.Registries, ",") != strings.Join(tc.want.Registries, ",") ||
				strings.Join(got.Extra, ",") != strings.Join(tc.want.Extra, ",") || got.Kill != tc.want.Kill) {
				t.Fatalf("got %+v want %+v", got, tc.want)
			}
		})
	}
}

func TestDestinationsRefuseMetadata(t *testing.T) {
	r := StaticResolver{Hosts: map[string][]net.IP{
		"registry.cleanroom.test": {net.IPv4(10, 231, 254, 2)},
		"metadata.internal":       {net.IPv4(169, 254, 169, 254)},
	}}
	tests := []struct {
		name    string
		p       Policy
		wantErr error
		want    string
	}{
		{"registry resolves statically", Policy{Registries: []string{"http://registry.cleanroom.test:4873"}}, nil, "10.231.254.2:4873"},
		{"default https port", Policy{Registries: []string{"https://registry.cleanroom.test"}}, nil, "10.231.254.2:443"},
		{"metadata by name", Policy{Registries: []string{"http://metadata.internal"}}, ErrBadDestination, ""},
		{"metadata by ip", Policy{Extra: []string{"169.254.169.254:80"}}, ErrBadDestination, ""},
		{"link-local v6", Policy{Extra: []string{"[fe80::1]:80"}}, ErrBadDestination, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			d, err := tc.p.Destinations(context.Background(), r)
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("err = %v, want %v", err, tc.wantErr)
			}
			if err == nil && net.JoinHostPort(d[0].IPs[0].String(), itoa(d[0].Port)) != tc.want {
				t.Fatalf("got %+v", d)
			}
		})
	}
}

func itoa(i int) string { return strconv.Itoa(i) }

// With a gateway the registries are no destination: only the host end at
// the gateway's port is, extras stay, and a job cannot name a registry as
// an extra to reach it around the gateway.
func TestGatewayIsTheOnlyRegistryDestination(t *testing.T) {
	runner := Policy{Registries: []string{"http://registry.cleanroom.test:4873/"}, Gateway: 4873, Extra: []string{"cache.corp:443"}}
	r := StaticResolver{Hosts: map[string][]net.IP{"cache.corp": {net.IPv4(10, 1, 2, 3)}}}
	d, err := runner.Destinations(context.Background(), r) // the registry's name is not resolvable here: it must not be asked
	if err != nil {
		t.Fatal(err)
	}
	if len(d) != 2 || !d[0].IPs[0].Equal(HostEnd) || d[0].Port != 4873 || d[0].Host != "" || d[1].Host != "cache.corp" {
		t.Fatalf("destinations = %+v, want the host end and the extra", d)
	}
	job, err := runner.Narrow(Policy{Extra: []string{"cache.corp:443"}})
	if err != nil || job.Gateway != 4873 {
		t.Fatalf("narrow: %+v %v: the job keeps the runner's gateway", job, err)
	}
	if _, err := runner.Narrow(Policy{Extra: []string{"registry.cleanroom.test:4873"}}); !errors.Is(err, ErrWidening) {
		t.Fatalf("a job naming the registry as an extra: err = %v, want ErrWidening", err)
	}
	if _, err := runner.Narrow(Policy{Registries: []string{"http://registry.cleanroom.test:4873"}}); err != nil {
		t.Fatalf("a job may still narrow the registries the gateway fetches from: %v", err)
	}
}

func TestPoolConcurrentAllocationsAreDistinctAndPersist(t *testing.T) {
	dir := t.TempDir()
	p, err := NewPool("10.231.0.0/26", dir) // 16 slots
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	seen := map[string]bool{}
	for i := 0; i < 16; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// A second Pool value on the same file stands in for another process.
			q, _ := NewPool("10.231.0.0/26", dir)
			l, err := q.Allocate("job"+string(rune('a'+i)), "ns")
			if err != nil {
				t.Error(err)
				return
			}
			mu.Lock()
			defer mu.Unlock()
			if seen[l.PeerIP.String()] {
				t.Errorf("duplicate %s", l.PeerIP)
			}
			seen[l.PeerIP.String()] = true
		}()
	}
	wg.Wait()
	if _, err := p.Allocate("one-too-many", "ns"); !errors.Is(err, ErrPoolExhausted) {
		t.Fatalf("err = %v, want ErrPoolExhausted", err)
	}
	leases, _ := p.Leases()
	if len(leases) != 16 {
		t.Fatalf("%d leases persisted, want 16", len(leases))
	}
	if err := p.Release(leases[3].Slot, leases[3].Job); err != nil {
		t.Fatal(err)
	}
	if err := p.Release(leases[3].Slot, leases[3].Job); err != nil {
		t.Fatal("second release:", err)
	}
	l, err := p.Allocate("reuse", "ns")
	if err != nil || l.Slot != leases[3].Slot {
		t.Fatalf("reuse got slot %d err %v, want %d", l.Slot, err, leases[3].Slot)
	}
	if l.HostIP.String() != "10.231.0.13" || l.PeerIP.String() != "10.231.0.14" || l.PeerIP6.String() != "fd8c:1ea7:0:3::2" {
		t.Fatalf("addresses %s %s %s", l.HostIP, l.PeerIP, l.PeerIP6)
	}
}

func TestDecodePacket(t *testing.T) {
	v4tcp := make([]byte, 24)
	v4tcp[0], v4tcp[9] = 0x45, 6
	copy(v4tcp[12:], []byte{10, 231, 0, 2, 10, 231, 253, 2})
	copy(v4tcp[20:], []byte{0x9c, 0x40, 0, 80})
	v6udp := make([]byte, 44)
	v6udp[0], v6udp[6] = 0x60, 17
	copy(v6udp[8:], net.ParseIP("fd8c:1ea7::2"))
	copy(v6udp[24:], net.ParseIP("fd00:bad::2"))
	copy(v6udp[40:], []byte{0, 53, 0, 53})
	v4frag := append([]byte(nil), v4tcp...)
	v4frag[6], v4frag[7] = 0x00, 0xb9 // fragment offset 185
	v4icmp := make([]byte, 28)
	v4icmp[0], v4icmp[9] = 0x45, 1
	copy(v4icmp[12:], []byte{10, 231, 0, 2, 169, 254, 169, 254})
	tests := []struct {
		name            string
		b               []byte
		proto, src, dst string
		ok              bool
	}{
		{"ipv4 tcp", v4tcp, "tcp", "10.231.0.2:40000", "10.231.253.2:80", true},
		{"ipv6 udp", v6udp, "udp", "[fd8c:1ea7::2]:53", "[fd00:bad::2]:53", true},
		{"ipv4 icmp", v4icmp, "icmp", "10.231.0.2", "169.254.169.254", true},
		{"ipv4 non-first fragment has no ports", v4frag, "tcp", "10.231.0.2", "10.231.253.2", true},
		{"truncated", []byte{0x45, 0}, "", "", "", false},
		{"not ip", []byte{0x10, 0, 0, 0}, "", "", "", false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p, s, d, ok := decodePacket(tc.b)
			if p != tc.proto || s != tc.src || d != tc.dst || ok != tc.ok {
				t.Fatalf("got %q %q %q %v", p, s, d, ok)
			}
		})
	}
}

// v6packet is an IPv6 packet from fd8c:1ea7::2 to fd00:bad::2 whose fixed
// header names next header nh, followed by the given headers.
func v6packet(nh uint8, headers ...[]byte) []byte {
	b := make([]byte, 40)
	b[0], b[6] = 0x60, nh
	copy(b[8:], net.ParseIP("fd8c:1ea7::2"))
	copy(b[24:], net.ParseIP("fd00:bad::2"))
	for _, h := range headers {
		b = append(b, h...)
	}
	return b
}

// extHeader is a hop-by-hop, routing or destination options header of
// units × 8 bytes that names next.
func extHeader(next uint8, units int) []byte {
	b := make([]byte, units*8)
	b[0], b[1] = next, byte(units-1)
	return b
}

// ahHeader is an authentication header with a 96-bit ICV (24 bytes).
func ahHeader(next uint8) []byte {
	b := make([]byte, 24)
	b[0], b[1] = next, 4 // (4+2) × 4 bytes
	return b
}

// fragHeader is a fragment header at offset (in 8-byte units).
func fragHeader(next uint8, offset uint16, more bool) []byte {
	b := make([]byte, 8)
	b[0] = next
	v := offset << 3
	if more {
		v |= 1
	}
	binary.BigEndian.PutUint16(b[2:], v)
	return b
}

func TestDecodePacketWalksIPv6ExtensionHeaders(t *testing.T) {
	const src, dst = "fd8c:1ea7::2", "fd00:bad::2"
	ports := []byte{0x9c, 0x40, 0, 80} // 40000 → 80
	withPorts := func(proto string) [3]string { return [3]string{proto, "[" + src + "]:40000", "[" + dst + "]:80"} }
	noPorts := func(proto string) [3]string { return [3]string{proto, src, dst} }
	nineDestOpts := [][]byte{}
	for range 9 {
		nineDestOpts = append(nineDestOpts, extHeader(60, 1))
	}
	nineDestOpts = append(nineDestOpts, ports)
	tests := []struct {
		name string
		b    []byte
		want [3]string
	}{
		{"hop-by-hop", v6packet(0, extHeader(6, 1), ports), withPorts("tcp")},
		{"routing", v6packet(43, extHeader(17, 3), ports), withPorts("udp")},
		{"destination options", v6packet(60, extHeader(6, 2), ports), withPorts("tcp")},
		{"first fragment", v6packet(44, fragHeader(17, 0, true), ports), withPorts("udp")},
		{"authentication header", v6packet(51, ahHeader(6), ports), withPorts("tcp")},
		{"chain of five", v6packet(0, extHeader(60, 1), extHeader(43, 2), extHeader(44, 3), fragHeader(60, 0, true), extHeader(6, 1), ports), withPorts("tcp")},
		{"icmpv6 after hop-by-hop", v6packet(0, extHeader(58, 1), []byte{128, 0, 0, 0}), noPorts("icmpv6")},
		{"non-first fragment has no ports", v6packet(44, fragHeader(6, 185, false), ports), noPorts("tcp")},
		{"non-first fragment after hop-by-hop", v6packet(0, extHeader(44, 1), fragHeader(17, 1, true), ports), noPorts("udp")},
		{"stops at esp", v6packet(0, extHeader(50, 1), ports), noPorts("ip/50")},
		{"stops at no next header", v6packet(60, extHeader(59, 1), ports), noPorts("ip/59")},
		{"no room for the first extension header", v6packet(0), noPorts("ip/0")},
		{"extension header longer than the packet", v6packet(0, extHeader(6, 2)[:12]), noPorts("ip/0")},
		{"routing header cut in its length byte", v6packet(0, extHeader(43, 1), []byte{6}), noPorts("ip/43")},
		{"fragment header cut short", v6packet(44, fragHeader(6, 0, false)[:4]), noPorts("ip/44")},
		{"authentication header cut short", v6packet(51, ahHeader(6)[:16]), noPorts("ip/51")},
		{"transport header cut short", v6packet(0, extHeader(6, 1), ports[:2]), noPorts("tcp")},
		{"more extension headers than the bound", v6packet(60, nineDestOpts...), noPorts("ip/60")},
		{"eight extension headers are walked", v6packet(60, append(nineDestOpts[:7:7], extHeader(17, 1), ports)...), withPorts("udp")},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p, s, d, ok := decodePacket(tc.b)
			if got := [3]string{p, s, d}; got != tc.want || !ok {
				t.Fatalf("got %q %v, want %q", got, ok, tc.want)
			}
		})
	}
}

func TestSplitRuleAndCommentJob(t *testing.T) {
	line := `-A INPUT -i crv0123456789ab -m comment --comment "cleanroom job=j-42" -j CR-0123456789ab-I`
	args := splitRule(line)
	if len(args) != 10 || args[7] != "cleanroom job=j-42" || args[9] != "CR-0123456789ab-I" {
		t.Fatalf("args %q", args)
	}
	if job, ok := commentJob(line); !ok || job != "j-42" {
		t.Fatalf("job %q %v", job, ok)
	}
	if _, ok := commentJob("-A INPUT -j ACCEPT"); ok {
		t.Fatal("foreign rule attributed to a job")
	}
}

func TestHostRulesApplyRemoveAndGC(t *testing.T) {
	n := namesFor("j-1", 3)
	dests := []Destination{{Host: "registry.cleanroom.test", IPs: []net.IP{net.IPv4(10, 231, 254, 2)}, Port: 4873}}
	host, peer := net.IPv4(10, 231, 0, 13), net.IPv4(10, 231, 0, 14)
	fw := newFake()
	rs := hostRules(n, host, peer, ModeForward, dests, true)
	if err := rs.apply(fw); err != nil {
		t.Fatal(err)
	}
	fwdRules, _ := fw.rules("filter", n.fwdChain)
	fwd := strings.Join(fwdRules, "\n")
	if !strings.Contains(fwd, "-d 10.231.254.2/32 -p tcp --dport 4873 -j ACCEPT") || !strings.HasSuffix(fwd, "-j DROP -m comment --comment cleanroom job=j-1") {
		t.Fatalf("forward chain:\n%s", fwd)
	}
	for _, r := range fw.dump() {
		if strings.Contains(r, ": ") && !strings.Contains(r, "cleanroom job=j-1") {
			t.Fatalf("rule without owner comment: %s", r)
		}
	}
	if err := rs.remove(fw); err != nil {
		t.Fatal(err)
	}
	if err := rs.remove(fw); err != nil {
		t.Fatal("second remove:", err)
	}
	if left := fw.dump(); len(left) != 0 {
		t.Fatalf("leftovers: %v", left)
	}

	// GC: two jobs' rules present, one kept.
	_ = hostRules(n, host, peer, ModeForward, dests, true).apply(fw)
	n2 := namesFor("j-2", 4)
	_ = hostRules(n2, host, peer, ModeDirect, nil, false).apply(fw)
	var rep Report
	if err := gcRules(fw, func(j string) bool { return j == "j-2" }, map[string]bool{}, &rep, false); err != nil {
		t.Fatal(err)
	}
	if _, ok := fw.rules("filter", n.inChain); ok {
		t.Fatal("dead job's chain survived GC")
	}
	if _, ok := fw.rules("filter", n2.inChain); !ok {
		t.Fatal("kept job's chain removed by GC")
	}
	input, _ := fw.rules("filter", "INPUT")
	for _, r := range input {
		if strings.Contains(r, "job=j-1") {
			t.Fatal("dead job's jump survived GC")
		}
	}
}

func TestSandboxRulesDenyByDefault(t *testing.T) {
	n := namesFor("j-1", 0)
	dests := []Destination{{Host: "r", IPs: []net.IP{net.IPv4(10, 231, 254, 2), net.ParseIP("fd00::5")}, Port: 4873}}
	for _, v6 := range []bool{false, true} {
		doc := string(sandboxRules(v6, n, net.IPv4(10, 231, 0, 1), dests, false).restoreDoc())
		lines := strings.Split(strings.TrimSpace(doc), "\n")
		var out []string
		for _, l := range lines {
			if strings.HasPrefix(l, "-A OUTPUT") {
				out = append(out, l)
			}
		}
		if out[len(out)-1] != "-A OUTPUT -j CR-DENY" {
			t.Fatalf("v6=%v: OUTPUT does not end in deny:\n%s", v6, doc)
		}
		wantAllow := "-d 10.231.254.2/32 -p tcp --dport 4873"
		if v6 {
			wantAllow = "-d fd00::5/128 -p tcp --dport 4873"
		}
		if !strings.Contains(doc, wantAllow) || !strings.Contains(doc, `--nflog-prefix "cr default-deny"`) {
			t.Fatalf("v6=%v: missing allow or log:\n%s", v6, doc)
		}
		if !v6 && !strings.Contains(doc, "-A OUTPUT -d 169.254.0.0/16 -j CR-META") {
			t.Fatalf("no metadata rule:\n%s", doc)
		}
	}
}
