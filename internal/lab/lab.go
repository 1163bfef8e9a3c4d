// Package lab owns the throwaway test network that integration tests, the
// netpolicy tests and the demo run in: a "host" namespace (where the agent
// and its sandboxes' veths live), a "registry" namespace, and a "forbidden"
// namespace that stands in for an attacker's server and records every packet
// that reaches it. No lab namespace has a link to the root namespace, so even
// a broken egress policy cannot send a packet off the machine.
package lab

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
	"time"

	"github.com/miekg/dns"
	"golang.org/x/sys/unix"

	"github.com/cleanroom-ci/cleanroom/netpolicy"
)

// Fixed lab addresses.
var (
	RegistryIP   = net.IPv4(10, 231, 254, 2).To4()
	HostRegIP    = net.IPv4(10, 231, 254, 1).To4()
	ForbiddenIP  = net.IPv4(10, 231, 253, 2).To4()
	HostFbdIP    = net.IPv4(10, 231, 253, 1).To4()
	MetadataIP   = net.IPv4(169, 254, 169, 254).To4()
	PublicDNSIP  = net.IPv4(198, 51, 100, 53).To4()
	ForbiddenIP6 = net.ParseIP("fd00:bad::2")
	HostFbdIP6   = net.ParseIP("fd00:bad::1")
	ForbiddenTCP = []int{22, 80, 443, 4873, 8080}
	ForbiddenUDP = []int{123, 5353}
)

// Registry name and port the lab's registry is known by.
const (
	RegistryName = "registry.cleanroom.test"
	RegistryPort = 4873
	// Prefix of every lab namespace name.
	Prefix = "crlab-"
)

// Packet is one packet that arrived at the forbidden host.
type Packet struct {
	Time  time.Time
	Proto string // tcp, udp, icmp, icmpv6, ip/N
	Src   string
	Dst   string
}

func (p Packet) String() string { return p.Proto + " " + p.Src + " → " + p.Dst }

// Lab is a running lab. Close it.
type Lab struct {
	ID          string
	HostNS      string // namespace names, for `ip netns exec`
	RegistryNS  string
	ForbiddenNS string

	mu      sync.Mutex
	packets []Packet
	closers []func() error
	stop    chan struct{}
	wg      sync.WaitGroup
	closed  bool
}

// NSPath returns the path of a lab namespace name.
func NSPath(name string) string { return "/run/netns/" + name }

// HostNSPath is the host namespace's path (Config.HostNS for netpolicy).
func (l *Lab) HostNSPath() string { return NSPath(l.HostNS) }

// RegistryNSPath is the registry namespace's path.
func (l *Lab) RegistryNSPath() string { return NSPath(l.RegistryNS) }

// ForbiddenNSPath is the forbidden namespace's path.
func (l *Lab) ForbiddenNSPath() string { return NSPath(l.ForbiddenNS) }

// New builds a lab. name is a short label used in the namespace names.
func New(ctx context.Context, name string) (_ *Lab, retErr error) {
	b := make([]byte, 3)
	_, _ = rand.Read(b)
	id := hex.EncodeToString(b)
	if name != "" {
		id += "-" + name
	}
	if len(id) > 20 {
		id = id[:20]
	}
	l := &Lab{
		ID:          id,
		HostNS:      Prefix + id + "-host",
		RegistryNS:  Prefix + id + "-reg",
		ForbiddenNS: Prefix + id + "-fbd",
		stop:        make(chan struct{}),
	}
	defer func() {
		if retErr != nil {
			_ = l.Close()
		}
	}()
	for _, ns := range []string{l.HostNS, l.RegistryNS, l.ForbiddenNS} {
		if err := run(ctx, "ip", "netns", "add", ns); err != nil {
			return nil, fmt.Errorf("creating lab namespace: %w", err)
		}
		l.closers = append(l.closers, func() error { return run(context.Background(), "ip", "netns", "del", ns) })
	}
	h, r, f := l.HostNS, l.RegistryNS, l.ForbiddenNS
	steps := [][]string{
		// Both veths are created inside the host namespace with their peer
		// placed directly in the other lab namespace.
		{"ip", "-n", h, "link", "add", "vreg", "type", "veth", "peer", "name", "eth0", "netns", r},
		{"ip", "-n", h, "link", "add", "vfbd", "type", "veth", "peer", "name", "eth0", "netns", f},
		{"ip", "netns", "exec", h, "sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"},
		{"ip", "netns", "exec", f, "sysctl", "-qw", "net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0"},
		{"ip", "-n", h, "link", "set", "lo", "up"},
		{"ip", "-n", h, "addr", "add", "10.231.254.1/24", "dev", "vreg"},
		{"ip", "-n", h, "addr", "add", "10.231.253.1/24", "dev", "vfbd"},
		{"ip", "-n", h, "addr", "add", "fd00:bad::1/64", "dev", "vfbd", "nodad"},
		{"ip", "-n", h, "link", "set", "vreg", "up"},
		{"ip", "-n", h, "link", "set", "vfbd", "up"},
		{"ip", "-n", h, "route", "add", "169.254.169.254/32", "via", "10.231.253.2"},
		{"ip", "-n", h, "route", "add", "198.51.100.53/32", "via", "10.231.253.2"},
		{"ip", "-n", r, "link", "set", "lo", "up"},
		{"ip", "-n", r, "addr", "add", "10.231.254.2/24", "dev", "eth0"},
		{"ip", "-n", r, "link", "set", "eth0", "up"},
		{"ip", "-n", r, "route", "add", "default", "via", "10.231.254.1"},
		{"ip", "-n", f, "link", "set", "lo", "up"},
		{"ip", "-n", f, "addr", "add", "10.231.253.2/24", "dev", "eth0"},
		{"ip", "-n", f, "addr", "add", "169.254.169.254/32", "dev", "eth0"},
		{"ip", "-n", f, "addr", "add", "198.51.100.53/32", "dev", "eth0"},
		{"ip", "-n", f, "addr", "add", "fd00:bad::2/64", "dev", "eth0", "nodad"},
		{"ip", "-n", f, "link", "set", "eth0", "up"},
		{"ip", "-n", f, "route", "add", "default", "via", "10.231.253.1"},
		{"ip", "-n", f, "-6", "route", "add", "default", "via", "fd00:bad::1"},
	}
	for _, s := range steps {
		if err := run(ctx, s[0], s[1:]...); err != nil {
			return nil, fmt.Errorf("building lab: %w", err)
		}
	}
	if err := l.startRecorder(); err != nil {
		return nil, err
	}
	if err := l.startForbiddenServices(); err != nil {
		return nil, err
	}
	return l, nil
}

func run(ctx context.Context, name string, args ...string) error {
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("running %s %s: %w: %s", name, strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return nil
}

// Exec runs argv in the lab namespace ns (a name) via `ip netns exec` and
// returns its combined output.
func (l *Lab) Exec(ctx context.Context, ns string, argv ...string) ([]byte, error) {
	out, err := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", ns}, argv...)...).CombinedOutput()
	if err != nil {
		return out, fmt.Errorf("running %v in %s: %w", argv, ns, err)
	}
	return out, nil
}

// Do runs fn on an OS thread inside the namespace at path (locked; the
// thread is discarded if switching back fails, as CNI's ns.Do does).
func Do(path string, fn func() error) error { return netpolicy.Do(path, fn) }

// ListenTCP opens a TCP listener inside the lab namespace ns (a name) that
// accepts and closes connections until the lab closes; for "is this port
// reachable" checks.
func (l *Lab) ListenTCP(ns, addr string) error {
	var ln net.Listener
	err := Do(NSPath(ns), func() (err error) { ln, err = net.Listen("tcp", addr); return })
	if err != nil {
		return fmt.Errorf("listening on %s in %s: %w", addr, ns, err)
	}
	l.mu.Lock()
	l.closers = append([]func() error{ln.Close}, l.closers...)
	l.mu.Unlock()
	l.wg.Add(1)
	go func() {
		defer l.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			_, _ = c.Write([]byte("hello\n"))
			c.Close()
		}
	}()
	return nil
}

func (l *Lab) startForbiddenServices() error {
	for _, p := range ForbiddenTCP {
		if err := l.ListenTCP(l.ForbiddenNS, fmt.Sprintf("[::]:%d", p)); err != nil {
			return err
		}
	}
	var conns []net.PacketConn
	var dnsLn net.Listener
	err := Do(l.ForbiddenNSPath(), func() error {
		for _, p := range append([]int{53}, ForbiddenUDP...) {
			pc, err := net.ListenPacket("udp", fmt.Sprintf("[::]:%d", p))
			if err != nil {
				return err
			}
			conns = append(conns, pc)
		}
		var err error
		dnsLn, err = net.Listen("tcp", "[::]:53")
		return err
	})
	if err != nil {
		for _, c := range conns {
			c.Close()
		}
		return fmt.Errorf("opening forbidden listeners: %w", err)
	}
	// A resolver that answers everything: what an attacker's DNS would do.
	h := dns.HandlerFunc(func(w dns.ResponseWriter, q *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(q)
		for _, qq := range q.Question {
			if qq.Qtype == dns.TypeA {
				m.Answer = append(m.Answer, &dns.A{Hdr: dns.RR_Header{Name: qq.Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 1}, A: ForbiddenIP})
			}
		}
		_ = w.WriteMsg(m)
	})
	servers := []*dns.Server{{PacketConn: conns[0], Handler: h}, {Listener: dnsLn, Handler: h}}
	for _, s := range servers {
		l.wg.Add(1)
		go func() { defer l.wg.Done(); _ = s.ActivateAndServe() }()
		l.closers = append([]func() error{func() error {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			_ = s.ShutdownContext(ctx)
			// Shutdown is a no-op for a server that has not marked itself
			// started yet; closing the socket ends its serve loop either way.
			if s.PacketConn != nil {
				_ = s.PacketConn.Close()
			}
			if s.Listener != nil {
				_ = s.Listener.Close()
			}
			return nil
		}}, l.closers...)
	}
	for _, pc := range conns[1:] {
		l.closers = append([]func() error{pc.Close}, l.closers...)
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			buf := make([]byte, 2048)
			for {
				n, addr, err := pc.ReadFrom(buf)
				if err != nil {
					return
				}
				_, _ = pc.WriteTo(buf[:n], addr)
			}
		}()
	}
	return nil
}

// startRecorder opens an AF_PACKET socket in the forbidden namespace and
// records every IP packet arriving there.
func (l *Lab) startRecorder() error {
	var fd int
	err := Do(l.ForbiddenNSPath(), func() (err error) {
		fd, err = unix.Socket(unix.AF_PACKET, unix.SOCK_DGRAM, int(htons(unix.ETH_P_ALL)))
		return err
	})
	if err != nil {
		return fmt.Errorf("opening packet recorder: %w", err)
	}
	tv := unix.Timeval{Usec: 100000}
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		unix.Close(fd)
		return fmt.Errorf("configuring packet recorder: %w", err)
	}
	done := make(chan struct{})
	l.closers = append([]func() error{func() error { <-done; return unix.Close(fd) }}, l.closers...)
	go func() {
		defer close(done)
		buf := make([]byte, 4096)
		for {
			select {
			case <-l.stop:
				return
			default:
			}
			n, from, err := unix.Recvfrom(fd, buf, 0)
			if err != nil {
				continue
			}
			ll, ok := from.(*unix.SockaddrLinklayer)
			if !ok || ll.Pkttype == unix.PACKET_OUTGOING {
				continue
			}
			if p, ok := decode(htons(ll.Protocol), buf[:n]); ok {
				l.mu.Lock()
				l.packets = append(l.packets, p)
				l.mu.Unlock()
			}
		}
	}()
	return nil
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// decode parses an IP packet; link housekeeping (ARP, IPv6 neighbour
// discovery, router solicitation, MLD) is not recorded.
func decode(ethType uint16, b []byte) (Packet, bool) {
	p := Packet{Time: time.Now()}
	var l4 []byte
	var proto byte
	switch ethType {
	case unix.ETH_P_IP:
		if len(b) < 20 {
			return p, false
		}
		ihl := int(b[0]&0xf) * 4
		proto, p.Src, p.Dst = b[9], net.IP(b[12:16]).String(), net.IP(b[16:20]).String()
		if len(b) >= ihl {
			l4 = b[ihl:]
		}
	case unix.ETH_P_IPV6:
		if len(b) < 40 {
			return p, false
		}
		proto, p.Src, p.Dst = b[6], net.IP(b[8:24]).String(), net.IP(b[24:40]).String()
		l4 = b[40:]
		if proto == 0 && len(l4) >= 8 { // hop-by-hop (MLD)
			return p, false
		}
	default:
		return p, false
	}
	switch proto {
	case 6, 17:
		p.Proto = map[byte]string{6: "tcp", 17: "udp"}[proto]
		if len(l4) >= 4 {
			p.Src = net.JoinHostPort(p.Src, fmt.Sprint(int(l4[0])<<8|int(l4[1])))
			p.Dst = net.JoinHostPort(p.Dst, fmt.Sprint(int(l4[2])<<8|int(l4[3])))
		}
	case 1:
		p.Proto = "icmp"
	case 58:
		p.Proto = "icmpv6"
		if len(l4) > 0 && (l4[0] >= 130 && l4[0] <= 137 || l4[0] == 143) {
			return p, false
		}
	default:
		p.Proto = fmt.Sprintf("ip/%d", proto)
	}
	return p, true
}

// ForbiddenPackets returns every IP packet that has reached the forbidden
// host so far (neighbour discovery and ARP excluded).
func (l *Lab) ForbiddenPackets() []Packet {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]Packet(nil), l.packets...)
}

// ResetForbiddenPackets forgets recorded packets (e.g. after a lab self-check).
func (l *Lab) ResetForbiddenPackets() {
	l.mu.Lock()
	l.packets = nil
	l.mu.Unlock()
}

// Close stops listeners and the recorder and deletes the lab namespaces
// (which destroys their veths). Idempotent.
func (l *Lab) Close() error {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return nil
	}
	l.closed = true
	closers := l.closers
	l.mu.Unlock()
	close(l.stop)
	var errs []error
	for _, c := range closers {
		errs = append(errs, c())
	}
	l.wg.Wait()
	return errors.Join(errs...)
}

// RootState is a snapshot of the root namespace's firewall and links, to
// prove a test left them exactly as it found them.
type RootState struct {
	Firewall string
	Links    string
}

// SnapshotRoot captures iptables/ip6tables (nft and legacy) rules and the
// link list of the root namespace. Counters and timestamps are left out.
func SnapshotRoot(ctx context.Context) (RootState, error) {
	var fw strings.Builder
	for _, cmd := range []string{"iptables-nft-save", "ip6tables-nft-save", "iptables-legacy-save", "ip6tables-legacy-save"} {
		if _, err := exec.LookPath(cmd); err != nil {
			continue
		}
		out, err := exec.CommandContext(ctx, cmd).Output()
		if err != nil {
			return RootState{}, fmt.Errorf("running %s: %w", cmd, err)
		}
		fw.WriteString("## " + cmd + "\n")
		for _, line := range strings.Split(string(out), "\n") {
			if strings.HasPrefix(line, "#") {
				continue
			}
			if i := strings.Index(line, " ["); strings.HasPrefix(line, ":") && i > 0 {
				line = line[:i]
			}
			fw.WriteString(line + "\n")
		}
	}
	out, err := exec.CommandContext(ctx, "ip", "-o", "link", "show").Output()
	if err != nil {
		return RootState{}, fmt.Errorf("listing links: %w", err)
	}
	var links []string
	for _, line := range strings.Split(string(out), "\n") {
		// Keep name and flags only: counters and qdisc state may change.
		if f := strings.Fields(line); len(f) >= 3 {
			links = append(links, f[1]+" "+f[2])
		}
	}
	return RootState{Firewall: fw.String(), Links: strings.Join(links, "\n")}, nil
}

// Diff describes how two snapshots differ ("" = identical).
func (s RootState) Diff(after RootState) string {
	var b strings.Builder
	if s.Firewall != after.Firewall {
		b.WriteString("root firewall changed:\n--- before\n" + s.Firewall + "--- after\n" + after.Firewall)
	}
	if s.Links != after.Links {
		b.WriteString("root links changed:\n--- before\n" + s.Links + "\n--- after\n" + after.Links)
	}
	return b.String()
}

// OurNamespaces lists namespaces in /run/netns with the given prefixes.
func OurNamespaces(prefixes ...string) []string {
	ents, _ := os.ReadDir("/run/netns")
	var out []string
	for _, e := range ents {
		for _, p := range prefixes {
			if strings.HasPrefix(e.Name(), p) {
				out = append(out, e.Name())
				break
			}
		}
	}
	return out
}
