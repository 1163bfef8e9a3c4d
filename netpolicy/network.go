package netpolicy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Sentinels naming the part of Setup that failed; Setup has torn down
// whatever it built when it returns one of them.
var (
	ErrNamespace = errors.New("setting up sandbox namespace")
	ErrRules     = errors.New("setting up firewall rules")
	ErrDNS       = errors.New("setting up dns responder")
	ErrAudit     = errors.New("setting up egress audit")
	// ErrAuditFailed wraps what AuditFailed delivers: the audit stopped
	// while the sandbox ran.
	ErrAuditFailed = errors.New("egress audit failed")
	// ErrForwardingDisabled: forward mode on a host without ip_forward=1.
	// cleanroom never turns forwarding on by itself.
	ErrForwardingDisabled = errors.New("forward mode needs net.ipv4.ip_forward=1 in the host namespace (cleanroom never sets it)")
	// ErrBadID: job ids become names of kernel objects and must be tame.
	ErrBadID = errors.New("job id must match [A-Za-z0-9][A-Za-z0-9._-]{0,62}")
)

var idRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$`)

// Config describes one sandbox network.
type Config struct {
	// ID names the sandbox network (the job id, or job id and attempt);
	// every name, comment and lease derives from it.
	ID string
	// Job is stamped on audit events; empty means ID.
	Job string
	// Runner is stamped on audit events.
	Runner string
	// HostNS is the path of the namespace the host end of the veth, the
	// host-side chains and the DNS responder live in; "" = the caller's.
	HostNS string
	// Mode selects the host-side rules (see Mode).
	Mode Mode
	// Masquerade source-NATs forwarded flows to the host's address
	// (forward mode), for registries that have no route back to the pool.
	Masquerade bool
	// Policy supplies destinations (when Destinations is nil) and Kill.
	Policy Policy
	// Destinations, if non-nil, is the allow-list as is (Policy's registries
	// are then not resolved). HostEnd stands for the host end's address.
	Destinations []Destination
	// Resolver resolves Policy names on the host side (nil = system).
	Resolver Resolver
	// Owner is recorded in the pool lease (see Lease.Owner).
	Owner string
	// StateDir holds the pool file and per-sandbox files (resolv.conf).
	// Agents sharing a host namespace must share it: the pool is what keeps
	// their sandboxes' addresses apart.
	StateDir string
	// Pool hands out addresses (nil = DefaultPoolCIDR under StateDir).
	Pool *Pool
	// AuditLog is an append-only JSON-lines file ("" = none).
	AuditLog string
	// OnEvent receives every audit event (called from reader goroutines).
	OnEvent func(Event)
	// Redact is applied to domain names and answers before they are emitted.
	Redact func(string) string
	// Backend selects iptables nft or legacy (default: whatever iptables is).
	Backend Backend
	// Firewall edits the iptables rules of the sandbox and host namespaces
	// (nil = the real iptables of Backend). Tests inject an in-memory one.
	Firewall Firewalls
	// Logger (nil = hclog default).
	Logger hclog.Logger
}

// Network is a set-up sandbox network. Close it, whatever happens to the job.
type Network struct {
	ID, Name            string
	HostIf              string
	HostIP, SandboxIP   net.IP
	HostIP6, SandboxIP6 net.IP
	Destinations        []Destination

	cfg       Config
	nsPath    string
	lease     Lease
	pool      *Pool
	n         names
	sink      *sink
	nf        *nflogReader
	ct        *ctReader
	dns       *responder
	hostIndex int // ifindex of the host end, once created
	resolv    string
	log       hclog.Logger

	closeOnce sync.Once
	closeErr  error
	// released is closed once the kernel has destroyed the veth and the
	// addresses are back in the pool (see Close); releaseErr is then set.
	released   chan struct{}
	releaseErr error
}

// NetNSPath is the namespace the sandbox joins.
func (n *Network) NetNSPath() string { return n.nsPath }

// NetNSPathFor is where Setup puts the namespace of network id, known before
// Setup runs, so a sandbox can be created concurrently with its network.
func NetNSPathFor(id string) string { return filepath.Join(netnsDir, "cr-"+id) }

// ResolvConfPathFor is where Setup writes the resolv.conf of network id.
func ResolvConfPathFor(stateDir, id string) string {
	return filepath.Join(stateDir, "sandboxes", id, "resolv.conf")
}

// ResolvConf is the sandbox's resolv.conf: only our responder, no search
// domains, one quick attempt.
func (n *Network) ResolvConf() []byte {
	return []byte(fmt.Sprintf("nameserver %s\noptions ndots:0 attempts:1 timeout:1\n", n.HostIP))
}

// ListenHostEnd opens a TCP listener on the host end of the veth
// (HostIP:port), with its socket made in the host namespace (Config.HostNS)
// — a socket keeps the namespace it was made in, so the server on it runs
// on any goroutine. Only this sandbox can reach that address: another
// sandbox's packets arrive on their own veth, whose guard admits only its
// own host end. It is how the registry gateway serves one job (Policy.Gateway).
func (n *Network) ListenHostEnd(port int) (net.Listener, error) {
	var ln net.Listener
	addr := net.JoinHostPort(n.HostIP.String(), strconv.Itoa(port))
	err := doInNS(n.cfg.HostNS, func() (err error) {
		ln, err = net.Listen("tcp4", addr)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("listening on the host end %s: %w", addr, err)
	}
	return ln, nil
}

// ResolvConfPath is a file with ResolvConf's content, to bind-mount read-only.
func (n *Network) ResolvConfPath() string { return n.resolv }

// Violations fires once, with the first denied attempt, when the policy's
// Kill is set; it never fires otherwise. An audit failure (see AuditFailed)
// is a denied attempt for this purpose.
func (n *Network) Violations() <-chan Event { return n.sink.violations }

// AuditFailed fires once, with an error wrapping ErrAuditFailed, when the
// egress audit stops working while the sandbox runs: the NFLOG reader (denied
// packets), the conntrack reader (allowed flows) or the DNS responder (UDP
// or TCP server) exits with an error, or a write to Config.AuditLog fails.
// From then on attempts may go unrecorded (and, for the responder, names
// unanswered), so the caller must end the job, whatever the policy's mode.
//
// Before the channel fires, the failure has been emitted as an event
// (proto ProtoAudit, verdict deny, rule RuleAuditFailure, the component in
// Domain and the error in Answer) through OnEvent; in kill mode that event
// also fires Violations, unless an earlier deny did. The channel is
// buffered: nothing blocks if no one reads it. It never fires once Close
// has begun (readers stopped by Close are not failures), so a clean Close
// leaves it empty; it is never closed.
func (n *Network) AuditFailed() <-chan error { return n.sink.auditFailed }

// Setup builds the sandbox network, failing closed: on any error it tears
// down what it built and returns an error wrapping ErrNamespace, ErrRules,
// ErrDNS or ErrAudit. The order makes the namespace unusable until the
// rules and the audit reader are in place: rules and readers come before the
// veth goes up.
func Setup(ctx context.Context, cfg Config) (_ *Network, retErr error) {
	if !idRE.MatchString(cfg.ID) {
		return nil, fmt.Errorf("%w: %q", ErrBadID, cfg.ID)
	}
	if cfg.StateDir == "" {
		return nil, fmt.Errorf("%w: no state dir", ErrNamespace)
	}
	log := cfg.Logger
	if log == nil {
		log = hclog.Default()
	}
	log = log.Named("netpolicy").With("job", cfg.ID)
	dests := cfg.Destinations
	if dests == nil {
		var err error
		if dests, err = cfg.Policy.Destinations(ctx, cfg.Resolver); err != nil {
			return nil, fmt.Errorf("%w: %w", ErrRules, err)
		}
	}
	for _, d := range dests {
		if _, err := checkDestination(d); err != nil {
			return nil, fmt.Errorf("%w: %w", ErrRules, err)
		}
	}
	if cfg.Mode == ModeForward {
		if err := CheckForwarding(cfg.HostNS); err != nil {
			return nil, fmt.Errorf("%w: %w", ErrRules, err)
		}
	}
	pool := cfg.Pool
	if pool == nil {
		var err error
		if pool, err = NewPool("", cfg.StateDir); err != nil {
			return nil, fmt.Errorf("%w: %w", ErrNamespace, err)
		}
	}
	nsName := "cr-" + cfg.ID
	lease, err := pool.AllocateOwned(cfg.ID, nsName, cfg.Owner)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrNamespace, err)
	}
	nw := &Network{
		ID: cfg.ID, Name: nsName, HostIP: lease.HostIP, SandboxIP: lease.PeerIP,
		HostIP6: lease.HostIP6, SandboxIP6: lease.PeerIP6,
		cfg: cfg, lease: lease, pool: pool, n: namesFor(cfg.ID, lease.Slot), log: log,
		released: make(chan struct{}),
	}
	nw.HostIf = nw.n.hostIf
	defer func() {
		if retErr != nil {
			cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cleanupTimeout)
			defer cancel()
			if err := nw.Close(cctx); err != nil {
				log.Error("tearing down after failed setup", "error", err)
			}
		}
	}()
	// Substitute the host end for HostEnd now that it is known.
	for _, d := range dests {
		d2 := Destination{Host: d.Host, Port: d.Port}
		for _, ip := range d.IPs {
			if ip.Equal(HostEnd) {
				ip = lease.HostIP
			}
			d2.IPs = append(d2.IPs, ip)
		}
		nw.Destinations = append(nw.Destinations, d2)
	}
	if nw.sink, err = newSink(cfg, nsName); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrAudit, err)
	}

	if nw.nsPath, err = createNamedNS(nsName); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrNamespace, err)
	}
	err = doInNS(nw.nsPath, func() error {
		for k, v := range map[string]string{
			"net/ipv4/ping_group_range":                  "0 2147483647",
			"net/ipv6/conf/default/accept_ra":            "0",
			"net/ipv6/conf/default/router_solicitations": "0",
			"net/ipv6/conf/default/accept_dad":           "0",
		} {
			if err := writeSysctl(k, v); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrNamespace, err)
	}

	// The audit readers, the three rule sets (sandbox v4 and v6, host v4)
	// and the veth are independent: set them up concurrently, each mostly
	// waits on an exec or the kernel. No packet can flow before Setup
	// returns (no sandbox process exists yet), and Setup returns only when
	// all are up.
	var rulesErr, auditErr, linkErr error
	var wg sync.WaitGroup
	wg.Add(3)
	go func() { defer wg.Done(); rulesErr = nw.rulePlan().install(nw.firewalls()) }()
	go func() {
		defer wg.Done()
		var err error
		if nw.nf, err = startNflog(nw.nsPath, nw.n.nflogGroup, nw.sink); err != nil {
			auditErr = err
			return
		}
		if nw.ct, err = startConntrack(nw.nsPath, nw.allowedRule, nw.sink); err != nil {
			auditErr = err
		}
	}()
	go func() { defer wg.Done(); linkErr = nw.setupLinks() }()
	wg.Wait()
	if auditErr != nil {
		return nil, fmt.Errorf("%w: %w", ErrAudit, auditErr)
	}
	if rulesErr != nil {
		return nil, fmt.Errorf("%w: %w", ErrRules, rulesErr)
	}
	if linkErr != nil {
		return nil, fmt.Errorf("%w: %w", ErrNamespace, linkErr)
	}

	nw.dns = newResponder(nw.Destinations, nw.sink)
	if err := nw.dns.start(cfg.HostNS, lease.HostIP); err != nil {
		nw.dns = nil
		return nil, fmt.Errorf("%w: %w", ErrDNS, err)
	}
	nw.resolv = ResolvConfPathFor(cfg.StateDir, cfg.ID)
	if err := os.MkdirAll(filepath.Dir(nw.resolv), 0o755); err != nil {
		return nil, fmt.Errorf("%w: creating sandbox state dir: %w", ErrDNS, err)
	}
	if err := os.WriteFile(nw.resolv, nw.ResolvConf(), 0o644); err != nil {
		return nil, fmt.Errorf("%w: writing resolv.conf: %w", ErrDNS, err)
	}
	log.Debug("sandbox network ready", "netns", nw.nsPath, "ip", lease.PeerIP, "host_if", nw.HostIf)
	return nw, nil
}

// rulePlan is the firewall of the network: the allow-lists inside the
// sandbox namespace (IPv4 and IPv6) and the host-side guard.
func (n *Network) rulePlan() rulePlan {
	kill := n.cfg.Policy.Kill
	return rulePlan{
		{n.nsPath, false, sandboxRules(false, n.n, n.HostIP, n.Destinations, kill), "sandbox ipv4"},
		{n.nsPath, true, sandboxRules(true, n.n, n.HostIP, n.Destinations, kill), "sandbox ipv6"},
		n.hostPlan(),
	}
}

// hostPlan is the part of rulePlan that outlives the sandbox namespace,
// and so the part Close removes.
func (n *Network) hostPlan() placedRules {
	rs := hostRules(n.n, n.HostIP, n.SandboxIP, n.cfg.Mode, n.Destinations, n.cfg.Masquerade)
	return placedRules{n.cfg.HostNS, false, rs, "host ipv4"}
}

// firewalls is the injected Firewalls, or the real iptables.
func (n *Network) firewalls() Firewalls { return orIPTables(n.cfg.Firewall, n.cfg.Backend) }

// allowedRule says whether a conntrack flow to dst:port is one of ours to
// report, and under which rule.
func (n *Network) allowedRule(dst net.IP, port uint16) (string, bool) {
	for _, d := range n.Destinations {
		if int(port) != d.Port {
			continue
		}
		for _, ip := range d.IPs {
			if ip.Equal(dst) {
				return RuleAllowRegistry, true
			}
		}
	}
	return "", false
}

// netlinkIn returns a netlink handle whose sockets live in the namespace at
// path ("" = current).
func netlinkIn(path string) (*netlink.Handle, error) {
	var h *netlink.Handle
	err := doInNS(path, func() (err error) { h, err = netlink.NewHandle(); return })
	if err != nil {
		return nil, fmt.Errorf("opening netlink in %s: %w", path, err)
	}
	return h, nil
}

// setupLinks creates the veth pair inside the sandbox namespace with its
// peer created directly in the host namespace (so no end ever appears
// anywhere else), then addresses, routes and links up.
func (n *Network) setupLinks() error {
	sh, err := netlinkIn(n.nsPath)
	if err != nil {
		return err
	}
	defer sh.Close()
	hh, err := netlinkIn(n.cfg.HostNS)
	if err != nil {
		return err
	}
	defer hh.Close()
	hf, err := openNS(n.cfg.HostNS)
	if err != nil {
		return fmt.Errorf("opening host namespace: %w", err)
	}
	defer hf.Close()

	lo, err := sh.LinkByName("lo")
	if err != nil {
		return fmt.Errorf("finding lo: %w", err)
	}
	if err := sh.LinkSetUp(lo); err != nil {
		return fmt.Errorf("setting lo up: %w", err)
	}
	veth := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: n.n.peerIf},
		PeerName:      n.n.hostIf,
		PeerNamespace: netlink.NsFd(int(hf.Fd())),
	}
	if err := sh.LinkAdd(veth); errors.Is(err, unix.EEXIST) {
		// The host end of an earlier network with this id, which the
		// kernel has not finished destroying (see Close): remove it now.
		if err := deleteLink(n.cfg.HostNS, n.n.hostIf); err != nil {
			return err
		}
		if err := sh.LinkAdd(veth); err != nil {
			return fmt.Errorf("creating veth %s: %w", n.n.hostIf, err)
		}
	} else if err != nil {
		return fmt.Errorf("creating veth %s: %w", n.n.hostIf, err)
	}
	peer, err := sh.LinkByName(n.n.peerIf)
	if err != nil {
		return fmt.Errorf("finding sandbox end: %w", err)
	}
	host, err := hh.LinkByName(n.n.hostIf)
	if err != nil {
		return fmt.Errorf("finding host end: %w", err)
	}
	n.hostIndex = host.Attrs().Index
	if err := hh.LinkSetAlias(host, n.n.comment); err != nil {
		return fmt.Errorf("labelling host end: %w", err)
	}
	// The host end speaks no IPv6: nothing the sandbox sends over IPv6 can
	// reach the host or be forwarded, whatever the host's own firewall
	// says. Set before the link is up, so it never gets even a link-local
	// address.
	err = doInNS(n.cfg.HostNS, func() error { return writeSysctl("net/ipv6/conf/"+n.n.hostIf+"/disable_ipv6", "1") })
	if err != nil {
		return fmt.Errorf("turning IPv6 off on the host end: %w", err)
	}
	addrs := []struct {
		h    *netlink.Handle
		l    netlink.Link
		ip   net.IP
		bits int
		all  int
	}{
		{hh, host, n.HostIP, 30, 32},
		{sh, peer, n.SandboxIP, 30, 32}, {sh, peer, n.SandboxIP6, 64, 128},
	}
	for _, a := range addrs {
		addr := &netlink.Addr{IPNet: &net.IPNet{IP: a.ip, Mask: net.CIDRMask(a.bits, a.all)}, Flags: unix.IFA_F_NODAD}
		if err := a.h.AddrAdd(a.l, addr); err != nil {
			return fmt.Errorf("adding address %s: %w", a.ip, err)
		}
	}
	if err := hh.LinkSetUp(host); err != nil {
		return fmt.Errorf("setting host end up: %w", err)
	}
	if err := sh.LinkSetUp(peer); err != nil {
		return fmt.Errorf("setting sandbox end up: %w", err)
	}
	for _, gw := range []net.IP{n.HostIP, n.HostIP6} {
		if err := sh.RouteAdd(&netlink.Route{LinkIndex: peer.Attrs().Index, Gw: gw}); err != nil {
			return fmt.Errorf("adding default route via %s: %w", gw, err)
		}
	}
	return nil
}

// Close tears everything down: DNS responder, audit readers (after they
// have read every queued log message), host-side chains, the namespace,
// per-sandbox files. It always runs every step (collecting errors) and is
// idempotent. Pass it a context that is not the job's (cleanup never runs
// on a cancelled context: WithoutCancel plus a timeout): when ctx ends
// before the responder, the readers and the host rules have stopped — a
// flood of denied packets still being drained, an OnEvent callback that
// blocks, a held xtables lock — Close stops waiting for them, still removes
// the namespace and the per-sandbox files, and returns an error wrapping
// ctx.Err(). What it stopped waiting for finishes in the background, and
// the addresses are released only after it has (see Released).
//
// Like `ip netns del`, Close drops the namespace and leaves the kernel to
// destroy the veth pair with it, which takes the kernel tens of
// milliseconds (an RCU grace period) that the job does not wait for. The
// pool addresses are released only once the host end is gone, so no later
// sandbox can share an address with a dying link; Released reports that.
// If the host end outlives the namespace (something else still holds the
// namespace), it is deleted explicitly after linkGoneTimeout.
func (n *Network) Close(ctx context.Context) error {
	n.closeOnce.Do(func() { n.closeErr = n.teardown(ctx) })
	return n.closeErr
}

// Released is closed when the veth is gone and the addresses are back in
// the pool, after Close; ReleaseErr says how that went.
func (n *Network) Released() <-chan struct{} { return n.released }

// ReleaseErr is the error of the background part of Close (nil before
// Released is closed).
func (n *Network) ReleaseErr() error {
	select {
	case <-n.released:
		return n.releaseErr
	default:
		return nil
	}
}

// pendingReleases counts networks whose addresses are not back in the pool
// yet; Settle waits for them.
var pendingReleases sync.WaitGroup

// Settle waits until every closed network of this process has released its
// addresses, or ctx ends. Call it before the process exits; a lease left
// behind by a process that did not is collected by GC.
func Settle(ctx context.Context) error {
	done := make(chan struct{})
	go func() { pendingReleases.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("waiting for sandbox networks to be released: %w", ctx.Err())
	}
}

// linkGoneTimeout is how long the kernel gets to destroy the veth with its
// namespace before Close's background part deletes it itself.
const linkGoneTimeout = 3 * time.Second

func (n *Network) teardown(ctx context.Context) error {
	var errs []error
	if n.sink != nil {
		n.sink.stopReporting()
	}
	// Everything up to the namespace's deletion goes concurrently: the DNS
	// responder, the audit readers and the host rules are independent.
	par := make([]error, 3)
	var wg sync.WaitGroup
	wg.Go(func() {
		if n.dns != nil {
			par[0] = n.dns.close()
		}
	})
	wg.Go(func() { par[1] = errors.Join(n.nf.close(ctx), n.ct.close()) })
	wg.Go(func() { par[2] = n.hostPlan().run(n.firewalls(), "removing", (*ruleSet).remove) })
	parDone := make(chan struct{})
	go func() { wg.Wait(); close(parDone) }()
	select {
	case <-parDone:
	case <-ctx.Done():
	}
	abandoned := false
	select {
	case <-parDone: // also when ctx ended at the same moment
		errs = append(errs, par...)
	default:
		abandoned = true
		errs = append(errs, fmt.Errorf("waiting for the dns responder, audit readers and host rules to stop: %w", ctx.Err()))
	}
	if n.nsPath != "" {
		errs = append(errs, deleteNamedNS(n.nsPath))
	}
	if n.resolv != "" {
		errs = append(errs, os.RemoveAll(filepath.Dir(n.resolv)))
	}
	if n.sink != nil {
		errs = append(errs, n.sink.close())
	}
	pendingReleases.Add(1)
	go func() {
		defer pendingReleases.Done()
		defer close(n.released)
		// The host rules name the addresses: they go back to the pool only
		// once what Close stopped waiting for is done.
		<-parDone
		var late error
		if abandoned {
			late = errors.Join(par...)
		}
		n.releaseErr = errors.Join(late, n.awaitLinkGone(), n.pool.Release(n.lease.Slot, n.ID))
		if n.releaseErr != nil {
			n.log.Error("releasing sandbox network", "error", n.releaseErr)
		}
	}()
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("tearing down network of %s: %w", n.ID, err)
	}
	return nil
}

// awaitLinkGone waits for the kernel to destroy the host end of the veth
// along with the sandbox namespace, and deletes it if that takes longer
// than linkGoneTimeout.
func (n *Network) awaitLinkGone() error {
	if n.hostIndex == 0 {
		return nil // never created
	}
	h, err := netlinkIn(n.cfg.HostNS)
	if err != nil {
		if n.cfg.HostNS != "" && errors.Is(err, os.ErrNotExist) {
			return nil // the host namespace itself is gone (a lab torn down)
		}
		return err
	}
	defer h.Close()
	// By index, not name: a new network with the same id may already have
	// a host end of the same name.
	deadline := time.Now().Add(linkGoneTimeout)
	for wait := 500 * time.Microsecond; ; wait = min(2*wait, 20*time.Millisecond) {
		l, err := h.LinkByIndex(n.hostIndex)
		var nf netlink.LinkNotFoundError
		switch {
		case errors.As(err, &nf) || errors.Is(err, unix.ENODEV):
			return nil
		case !time.Now().After(deadline):
			time.Sleep(wait)
		case err != nil:
			return fmt.Errorf("checking host end %s: %w", n.n.hostIf, err)
		default:
			n.log.Warn("host end of the veth outlived its namespace; deleting it", "link", n.n.hostIf)
			if err := h.LinkDel(l); err != nil && !errors.Is(err, unix.ENODEV) {
				return fmt.Errorf("deleting host end %s: %w", n.n.hostIf, err)
			}
			return nil
		}
	}
}

// deleteLink removes a link in the namespace at nsPath; a missing link is fine.
func deleteLink(nsPath, name string) error {
	h, err := netlinkIn(nsPath)
	if err != nil {
		if nsPath != "" && errors.Is(err, os.ErrNotExist) {
			return nil
		}
		return err
	}
	defer h.Close()
	l, err := h.LinkByName(name)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return nil
		}
		return fmt.Errorf("finding link %s: %w", name, err)
	}
	if err := h.LinkDel(l); err != nil {
		return fmt.Errorf("deleting link %s: %w", name, err)
	}
	return nil
}

// cleanupTimeout bounds teardown after a failed setup.
const cleanupTimeout = 10 * time.Second
