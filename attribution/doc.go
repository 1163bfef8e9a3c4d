// Package attribution names the process behind each egress attempt of a
// sandbox. It owns four small eBPF programs (cgroup connect4, connect6,
// sendmsg4 and sendmsg6, written with cilium/ebpf's asm package, so nothing is
// compiled at build or run time), loaded once per agent (Tracer), attached to
// each step's cgroup v2 of each sandbox (Watch) and detached at teardown. Each
// program records pid/tgid, comm, cgroup id, destination and protocol into a
// ring buffer and always allows the call: the iptables rules of netpolicy stay
// the enforcement, and nothing here can deny or delay a connection.
//
// The agent reads the records, looks the process up in /proc at once (exe,
// command line, the npm package whose lifecycle script is running), and
// joins them to the netpolicy audit events of the same sandbox by protocol,
// destination and time (join.go), filling api.EgressEvent.Process. An event
// waits at most MaxWait for its record; without one it is delivered with a
// null process. When BPF is unavailable (kernel, permissions, no cgroup v2
// hierarchy), Load says why and a nil *Tracer attributes nothing.
package attribution
