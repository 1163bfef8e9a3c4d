package netpolicy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"slices"
	"strconv"
	"strings"
)

// Mode says where the sandbox's allowed destinations are, which decides the
// host-side rules.
type Mode int

const (
	// ModeDirect: destinations are on the host side of the veth (a proxy on
	// the host end); the host forwards nothing for the sandbox.
	ModeDirect Mode = iota
	// ModeForward: the host forwards sandbox → destination IP:port (and the
	// replies) and nothing else. Requires ip_forward=1 in the host namespace.
	ModeForward
)

// ErrWidening is returned by Narrow when a job asks for more than the runner allows.
var ErrWidening = errors.New("job policy widens the runner policy")

// ErrBadDestination is returned for destinations that can never be allowed.
var ErrBadDestination = errors.New("destination not allowed")

// HostEnd, used as an IP in Destination.IPs, stands for the host end of this
// sandbox's veth (its address is only known at Setup). It is how a per-job
// proxy on the agent becomes the only destination:
//
//	dests = []Destination{{Host: "registry.cleanroom.test", IPs: []net.IP{HostEnd}, Port: proxyPort}}
var HostEnd = net.IPv4zero

// Destination is one allowed egress target: a name (answered by the DNS
// responder), its addresses, and one TCP port.
type Destination struct {
	Host string
	IPs  []net.IP
	Port int
}

// Resolver resolves destination names on the host side at setup time, so
// the sandbox never needs a real resolver.
type Resolver interface {
	LookupIP(ctx context.Context, host string) ([]net.IP, error)
}

// StaticResolver resolves from a fixed map (the lab's registry name is in no
// DNS), falling through to Fallback (nil = fail) for other names.
type StaticResolver struct {
	Hosts    map[string][]net.IP
	Fallback Resolver
}

// LookupIP implements Resolver.
func (r StaticResolver) LookupIP(ctx context.Context, host string) ([]net.IP, error) {
	if ips, ok := r.Hosts[strings.ToLower(strings.TrimSuffix(host, "."))]; ok {
		return ips, nil
	}
	if r.Fallback != nil {
		return r.Fallback.LookupIP(ctx, host)
	}
	return nil, fmt.Errorf("resolving %s: no static entry", host)
}

// SystemResolver resolves with the host's resolver.
type SystemResolver struct{}

// LookupIP implements Resolver.
func (SystemResolver) LookupIP(ctx context.Context, host string) ([]net.IP, error) {
	return net.DefaultResolver.LookupIP(ctx, "ip", host)
}

// Policy is a runner's (or a job's) egress policy.
type Policy struct {
	// Registries are registry URLs, e.g. http://registry.cleanroom.test:4873/.
	Registries []string `json:"registries"`
	// Gateway, when not zero, is the TCP port of the registry gateway on the
	// host end of the sandbox's veth, and the gateway is then the only way
	// to the registries: Registries are no destination (they are neither
	// resolved nor allowed), only HostEnd:Gateway is, and a job's Extra may
	// not name a registry to get it back.
	Gateway int `json:"gateway,omitempty"`
	// Extra are further host:port destinations; off (empty) by default.
	Extra []string `json:"extra,omitempty"`
	// Kill ends the job at the first denied attempt (on_violation: kill);
	// otherwise every attempt is refused and recorded and the build goes on.
	Kill bool `json:"kill,omitempty"`
}

type hostPort struct {
	host string
	port int
}

func parseRegistry(u string) (hostPort, error) {
	pu, err := url.Parse(u)
	if err != nil || pu.Hostname() == "" {
		return hostPort{}, fmt.Errorf("parsing registry URL %q: %w", u, errors.Join(err, ErrBadDestination))
	}
	port := 443
	if pu.Scheme == "http" {
		port = 80
	}
	if p := pu.Port(); p != "" {
		if port, err = strconv.Atoi(p); err != nil {
			return hostPort{}, fmt.Errorf("parsing registry URL %q: %w", u, err)
		}
	}
	return hostPort{strings.ToLower(pu.Hostname()), port}, nil
}

func parseHostPort(s string) (hostPort, error) {
	h, p, err := net.SplitHostPort(s)
	if err != nil {
		return hostPort{}, fmt.Errorf("parsing destination %q: %w", s, err)
	}
	port, err := strconv.Atoi(p)
	if err != nil || port <= 0 || port > 65535 {
		return hostPort{}, fmt.Errorf("parsing destination %q: bad port: %w", s, ErrBadDestination)
	}
	return hostPort{strings.ToLower(h), port}, nil
}

// hostPorts are the destinations the policy names: its registries (unless
// a gateway stands in for them) and its extras.
func (p Policy) hostPorts() ([]hostPort, error) {
	var out []hostPort
	for _, r := range p.Registries {
		if p.Gateway != 0 {
			break
		}
		hp, err := parseRegistry(r)
		if err != nil {
			return nil, err
		}
		out = append(out, hp)
	}
	for _, e := range p.Extra {
		hp, err := parseHostPort(e)
		if err != nil {
			return nil, err
		}
		out = append(out, hp)
	}
	return out, nil
}

// Narrow returns the policy for a job, and is the one place that decides
// that a job may only make its runner's policy stricter:
//   - Registries: the job may name a subset of the runner's; none inherits them.
//   - Extra: the job gets exactly the extra destinations it names, each one
//     of the runner's (the runner's list is a ceiling, not a default); none
//     names none.
//   - Kill: kill on either side wins (a job's deny on a kill runner is kill).
//   - Gateway: the runner's, always (a job cannot name or drop it); with a
//     gateway the registries are not destinations, so an Extra naming one
//     widens.
//
// Naming a destination the runner does not allow is ErrWidening.
func (p Policy) Narrow(job Policy) (Policy, error) {
	// A job's registries are checked as before a gateway existed (they
	// only ever narrow what the gateway fetches from); its extras against
	// the destinations the policy really has.
	named, err := Policy{Registries: p.Registries, Extra: p.Extra}.hostPorts()
	if err != nil {
		return Policy{}, fmt.Errorf("narrowing policy: %w", err)
	}
	reachable, err := p.hostPorts()
	if err != nil {
		return Policy{}, fmt.Errorf("narrowing policy: %w", err)
	}
	check := func(items []string, allowed []hostPort, parse func(string) (hostPort, error)) error {
		for _, it := range items {
			hp, err := parse(it)
			if err != nil {
				return err
			}
			if !slices.Contains(allowed, hp) {
				return fmt.Errorf("narrowing policy: %s: %w", it, ErrWidening)
			}
		}
		return nil
	}
	out := Policy{Registries: p.Registries, Gateway: p.Gateway, Kill: p.Kill || job.Kill}
	if len(job.Registries) > 0 {
		if err := check(job.Registries, named, parseRegistry); err != nil {
			return Policy{}, err
		}
		out.Registries = job.Registries
	}
	if len(job.Extra) > 0 {
		if err := check(job.Extra, reachable, parseHostPort); err != nil {
			return Policy{}, err
		}
		out.Extra = job.Extra
	}
	return out, nil
}

// Destinations resolves the policy's registries and extras on the host side
// (with a Gateway: HostEnd at the gateway's port instead of the registries).
// Addresses in 169.254.0.0/16 (cloud metadata) are refused.
func (p Policy) Destinations(ctx context.Context, r Resolver) ([]Destination, error) {
	hps, err := p.hostPorts()
	if err != nil {
		return nil, err
	}
	var out []Destination
	if p.Gateway != 0 {
		// No name: the sandbox's npm config names the gateway by address,
		// so the DNS responder answers nothing for it.
		d, err := checkDestination(Destination{IPs: []net.IP{HostEnd}, Port: p.Gateway})
		if err != nil {
			return nil, err
		}
		out = append(out, d)
	}
	for _, hp := range hps {
		var ips []net.IP
		if ip := net.ParseIP(hp.host); ip != nil {
			ips = []net.IP{ip}
		} else {
			if r == nil {
				r = SystemResolver{}
			}
			if ips, err = r.LookupIP(ctx, hp.host); err != nil {
				return nil, fmt.Errorf("resolving destination %s: %w", hp.host, err)
			}
		}
		d, err := checkDestination(Destination{Host: hp.host, IPs: ips, Port: hp.port})
		if err != nil {
			return nil, err
		}
		out = append(out, d)
	}
	return out, nil
}

// checkDestination validates d and refuses metadata addresses.
func checkDestination(d Destination) (Destination, error) {
	if d.Port <= 0 || d.Port > 65535 {
		return d, fmt.Errorf("checking destination %s: port %d: %w", d.Host, d.Port, ErrBadDestination)
	}
	if len(d.IPs) == 0 {
		return d, fmt.Errorf("checking destination %s: no addresses: %w", d.Host, ErrBadDestination)
	}
	for _, ip := range d.IPs {
		if metadataNet.Contains(ip) || ip.IsLinkLocalUnicast() {
			return d, fmt.Errorf("checking destination %s: %s is link-local/metadata: %w", d.Host, ip, ErrBadDestination)
		}
		if ip.IsUnspecified() && !ip.Equal(HostEnd) {
			return d, fmt.Errorf("checking destination %s: unspecified address: %w", d.Host, ErrBadDestination)
		}
	}
	return d, nil
}
