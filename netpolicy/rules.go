package netpolicy

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"strconv"
	"sync"
)

// Rule names carried in NFLOG prefixes and audit events.
const (
	RuleDefaultDeny   = "default-deny"
	RuleMetadataDeny  = "metadata-deny"
	RuleAllowRegistry = "allow-registry"
	RuleDNSAllow      = "dns-allow"
	RuleDNSRefused    = "dns-refused"
	RuleDNSTCPLimit   = "dns-tcp-limit"
	RuleAuditFailure  = "audit-failure"
	nflogPrefix       = "cr "
	chainDeny         = "CR-DENY"
	chainMeta         = "CR-META"
	hostChainPrefix   = "CR-"
	commentPrefix     = "cleanroom job="
)

// metadataNet is refused as a destination whatever the configuration says.
var metadataNet = &net.IPNet{IP: net.IPv4(169, 254, 0, 0).To4(), Mask: net.CIDRMask(16, 32)}

// idHash is the bounded hash of a job id used in link and chain names.
func idHash(id string) string {
	s := sha256.Sum256([]byte(id))
	return hex.EncodeToString(s[:])[:12]
}

// names derives every kernel object name from the job id.
type names struct {
	netns, hostIf, peerIf       string
	inChain, fwdChain, natChain string
	comment                     string
	nflogGroup                  uint16
}

func namesFor(id string, slot int) names {
	h := idHash(id)
	return names{
		netns:    "cr-" + id,
		hostIf:   "crv" + h, // 15 chars, the IFNAMSIZ limit
		peerIf:   "eth0",
		inChain:  hostChainPrefix + h + "-I",
		fwdChain: hostChainPrefix + h + "-F",
		natChain: hostChainPrefix + h + "-N",
		comment:  commentPrefix + id,
		// Groups are per namespace; a per-sandbox number still helps when
		// reading `tcpdump -i nflog:N` by hand.
		nflogGroup: uint16(100 + slot),
	}
}

// sandboxRules is the allow-list inside the sandbox namespace for one family.
// Built-in chains end in explicit terminal rules rather than policies, so the
// ruleset is a plain list of rules.
//
// Denied packets are logged, then rejected so that connects fail fast — or,
// with drop (on_violation: kill), silently dropped: the job is being ended
// at its first attempt, and its other attempts hang until it is, learning
// nothing.
func sandboxRules(v6 bool, n names, hostIP net.IP, dests []Destination, drop bool) *ruleSet {
	const t = "filter"
	s := &ruleSet{}
	group := strconv.Itoa(int(n.nflogGroup))
	reject := "icmp-port-unreachable"
	if v6 {
		reject = "icmp6-port-unreachable"
	}
	denyChain := func(chain, rule string) {
		s.chain(t, chain)
		s.add(t, chain, "-j", "NFLOG", "--nflog-group", group, "--nflog-prefix", nflogPrefix+rule)
		if drop {
			s.add(t, chain, "-j", "DROP")
			return
		}
		s.add(t, chain, "-p", "tcp", "-j", "REJECT", "--reject-with", "tcp-reset")
		s.add(t, chain, "-j", "REJECT", "--reject-with", reject)
	}
	denyChain(chainDeny, RuleDefaultDeny)
	if !v6 {
		denyChain(chainMeta, RuleMetadataDeny)
	}

	s.add(t, "INPUT", "-i", "lo", "-j", "ACCEPT")
	s.add(t, "INPUT", "-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "ACCEPT")
	if v6 {
		s.add(t, "INPUT", "-p", "ipv6-icmp", "--icmpv6-type", "neighbour-solicitation", "-j", "ACCEPT")
		s.add(t, "INPUT", "-p", "ipv6-icmp", "--icmpv6-type", "neighbour-advertisement", "-j", "ACCEPT")
	}
	s.add(t, "INPUT", "-j", "DROP")
	s.add(t, "FORWARD", "-j", "DROP")

	s.add(t, "OUTPUT", "-o", "lo", "-j", "ACCEPT")
	s.add(t, "OUTPUT", "-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "ACCEPT")
	if v6 {
		// The kernel's own link housekeeping is not an egress attempt:
		// neighbour discovery is needed, router solicitations and MLD
		// reports are dropped without an audit event.
		s.add(t, "OUTPUT", "-p", "ipv6-icmp", "--icmpv6-type", "neighbour-solicitation", "-j", "ACCEPT")
		s.add(t, "OUTPUT", "-p", "ipv6-icmp", "--icmpv6-type", "neighbour-advertisement", "-j", "ACCEPT")
		s.add(t, "OUTPUT", "-p", "ipv6-icmp", "--icmpv6-type", "router-solicitation", "-j", "DROP")
		s.add(t, "OUTPUT", "-p", "ipv6-icmp", "--icmpv6-type", "143", "-j", "DROP")
		s.add(t, "OUTPUT", "-p", "ipv6-icmp", "--icmpv6-type", "131", "-j", "DROP")
	} else {
		s.add(t, "OUTPUT", "-d", metadataNet.String(), "-j", chainMeta)
		s.add(t, "OUTPUT", "-d", hostIP.String()+"/32", "-p", "udp", "--dport", "53", "-j", "ACCEPT")
		s.add(t, "OUTPUT", "-d", hostIP.String()+"/32", "-p", "tcp", "--dport", "53", "-j", "ACCEPT")
	}
	for _, d := range dests {
		for _, ip := range d.IPs {
			if (ip.To4() == nil) != v6 {
				continue
			}
			s.add(t, "OUTPUT", "-d", hostPrefix(ip), "-p", "tcp", "--dport", strconv.Itoa(d.Port),
				"-m", "conntrack", "--ctstate", "NEW", "-j", "ACCEPT")
		}
	}
	s.add(t, "OUTPUT", "-j", chainDeny)
	return s
}

// hostRules are the IPv4 rules in the host namespace: an INPUT guard on the
// host end (DNS to the responder, direct-mode destinations on the host end,
// replies), a FORWARD chain (forward mode: only sandbox → destination and
// replies; direct mode: nothing), and optionally masquerade. Every rule
// carries the job comment so GC can find it. There are no host-side IPv6
// rules because the host end does not speak IPv6 at all (setupLinks turns
// it off before the link goes up): the sandbox's IPv6 route exists only so
// that its IPv6 attempts reach the sandbox's own deny-and-log rules.
func hostRules(n names, hostIP, peerIP net.IP, mode Mode, dests []Destination, masq bool) *ruleSet {
	s := &ruleSet{}
	c := []string{"-m", "comment", "--comment", n.comment}
	add := func(table, chain string, spec ...string) { s.add(table, chain, append(spec, c...)...) }

	s.chain("filter", n.inChain)
	s.insert("filter", "INPUT", append([]string{"-i", n.hostIf}, append(c, "-j", n.inChain)...)...)
	add("filter", n.inChain, "-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "ACCEPT")
	add("filter", n.inChain, "-d", hostIP.String()+"/32", "-p", "udp", "--dport", "53", "-j", "ACCEPT")
	add("filter", n.inChain, "-d", hostIP.String()+"/32", "-p", "tcp", "--dport", "53", "-j", "ACCEPT")
	for _, d := range dests {
		for _, ip := range d.IPs {
			if ip.Equal(hostIP) {
				add("filter", n.inChain, "-d", hostPrefix(ip), "-p", "tcp", "--dport", strconv.Itoa(d.Port), "-j", "ACCEPT")
			}
		}
	}
	add("filter", n.inChain, "-j", "DROP")

	s.chain("filter", n.fwdChain)
	s.insert("filter", "FORWARD", append([]string{"-i", n.hostIf}, append(c, "-j", n.fwdChain)...)...)
	s.insert("filter", "FORWARD", append([]string{"-o", n.hostIf}, append(c, "-j", n.fwdChain)...)...)
	if mode == ModeForward {
		add("filter", n.fwdChain, "-o", n.hostIf, "-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "ACCEPT")
		for _, d := range dests {
			for _, ip := range d.IPs {
				if ip.To4() == nil || ip.Equal(hostIP) {
					continue
				}
				add("filter", n.fwdChain, "-i", n.hostIf, "-s", peerIP.String()+"/32", "-d", hostPrefix(ip),
					"-p", "tcp", "--dport", strconv.Itoa(d.Port), "-j", "ACCEPT")
			}
		}
	}
	add("filter", n.fwdChain, "-j", "DROP")

	if mode == ModeForward && masq {
		s.chain("nat", n.natChain)
		s.insert("nat", "POSTROUTING", append([]string{"-s", peerIP.String() + "/32"}, append(c, "-j", n.natChain)...)...)
		for _, d := range dests {
			for _, ip := range d.IPs {
				if ip.To4() == nil || ip.Equal(hostIP) {
					continue
				}
				add("nat", n.natChain, "-d", hostPrefix(ip), "-p", "tcp", "--dport", strconv.Itoa(d.Port), "-j", "MASQUERADE")
			}
		}
	}
	return s
}

func hostPrefix(ip net.IP) string {
	if ip4 := ip.To4(); ip4 != nil {
		return ip4.String() + "/32"
	}
	return ip.String() + "/128"
}

// placedRules is one rule set with the namespace and address family it
// belongs in.
type placedRules struct {
	ns    string // namespace path ("" = the caller's)
	v6    bool
	rs    *ruleSet
	where string // names the set in errors: "sandbox ipv6", "host ipv4"
}

// run opens the set's Firewall and applies op to it (ruleSet.apply or
// ruleSet.remove); verb names op in errors.
func (p placedRules) run(fws Firewalls, verb string, op func(*ruleSet, Firewall) error) error {
	fw, err := fws(p.ns, p.v6)
	if err != nil {
		return fmt.Errorf("opening %s firewall: %w", p.where, err)
	}
	if err := op(p.rs, fw); err != nil {
		return fmt.Errorf("%s %s rules: %w", verb, p.where, err)
	}
	return nil
}

// rulePlan is every rule set of one sandbox network (see Network.rulePlan).
// It is the firewall part of Setup on its own, so that it can be tested
// against an in-memory Firewall without namespaces or root.
type rulePlan []placedRules

// install applies every set of p concurrently (each mostly waits on an
// exec), failing closed: if any set fails it removes all of them again
// (removal is idempotent, so a set that never got in only costs a check)
// and returns why.
func (p rulePlan) install(fws Firewalls) error {
	err := p.each(func(pr placedRules) error { return pr.run(fws, "applying", (*ruleSet).apply) })
	if err == nil {
		return nil
	}
	if uerr := p.remove(fws); uerr != nil {
		return errors.Join(err, fmt.Errorf("undoing the rules: %w", uerr))
	}
	return err
}

// remove removes every set of p, whether it is all there, partly there or
// already gone.
func (p rulePlan) remove(fws Firewalls) error {
	return p.each(func(pr placedRules) error { return pr.run(fws, "removing", (*ruleSet).remove) })
}

// each runs fn for every set of p concurrently and joins the errors in
// plan order.
func (p rulePlan) each(fn func(placedRules) error) error {
	errs := make([]error, len(p))
	var wg sync.WaitGroup
	for i, pr := range p {
		wg.Go(func() { errs[i] = fn(pr) })
	}
	wg.Wait()
	return errors.Join(errs...)
}
