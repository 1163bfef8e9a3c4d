#!/usr/bin/env bash
# bench/netpolicy.sh — median of a full netpolicy setup+teardown (netns, veth,
# v4+v6 rules in the sandbox and on the host, DNS responder, NFLOG+conntrack
# readers) next to a bare `ip netns add X && ip netns del X`, in one run so
# machine load affects both alike. Like `ip netns del`, Close leaves the veth
# to the kernel to destroy with the namespace; the second figure includes
# waiting for that (and for the address to return to the pool). Root only; everything happens in lab
# namespaces (crlab-*/cr-bench-*), nothing in the root namespace's firewall.
# Usage: sudo bench/netpolicy.sh [iterations]   (default 30; target < 60 ms)
set -euo pipefail
N=${1:-30}
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "run as root" >&2; exit 1; }

bin=$(mktemp -d)
trap 'rm -rf "$bin"' EXIT
GOFLAGS=-mod=mod go test -c -o "$bin/netpolicy.test" ./netpolicy/

median() { sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }

out=$("$bin/netpolicy.test" -test.run XXX -test.bench BenchmarkSetupTeardown -test.benchtime "${N}x")
metric() { awk -v m="$1" '{for (i=1;i<=NF;i++) if ($i==m) print $(i-1)}' <<<"$out"; }
np=$(metric ms-median)
rel=$(metric ms-released-median)

name="crlab-bench-$$"
for _ in $(seq "$N"); do
	s=$(date +%s%N)
	ip netns add "$name" && ip netns del "$name"
	e=$(date +%s%N)
	echo "scale=3; ($e-$s)/1000000" | bc
done > "$bin/bare"
bare=$(median < "$bin/bare")

echo "iterations:                          $N"
echo "netpolicy setup+teardown median ms:  $np   (Setup returned + Close returned)"
echo "  ... until the veth is destroyed:   $rel   (the kernel's part, which the job does not wait for)"
echo "bare ip netns add+del median ms:     $bare"
echo "ratio:                               $(echo "scale=2; $np/$bare" | bc)"
echo "load average:                        $(cut -d' ' -f1-3 /proc/loadavg)"
