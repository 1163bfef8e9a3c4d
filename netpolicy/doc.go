// Package netpolicy owns a build sandbox's network: a fresh network namespace
// joined to the build host by a veth pair, addresses from a persistent pool,
// a default-deny iptables allow-list (IPv4 and IPv6) inside the namespace,
// guard and forwarding chains on the host side, a per-sandbox DNS responder
// that answers only the allowed names, and an audit reader (NFLOG for denied
// packets, conntrack for allowed flows) that turns every egress attempt into
// an Event. It also owns tearing all of that down, and finding what a crash
// left behind (GC).
//
// The package does not know about containers: Setup hands back a namespace
// path and a resolv.conf the sandbox package mounts read-only.
package netpolicy
