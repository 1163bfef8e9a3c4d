#!/usr/bin/env bash
# make demo: the whole product on this machine, end to end.
# Starts a private containerd (stopped on exit), builds the node image (cached
# after the first run), then runs integration/cmd/demo, which brings up a lab
# network with no route out, the internal registry, a coordinator and an
# agent, runs the four example scenarios through the real CLI, prints the web
# console's address on this machine's loopback with an audit token that opens
# it, and removes everything it made. KEEP=1 keeps it all (the console
# included) running until Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "make demo needs root (containerd, network namespaces, iptables)" >&2; exit 1; }

t0=$(date +%s.%N)
phase() { printf '\033[1m== %s\033[0m\n' "$1"; }
took() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "   (%.1fs)\n", b - a }'; }

phase "private containerd"
t=$(date +%s.%N)
# Stop containerd on exit only if this script started it.
if scripts/containerd.sh running; then started=0; else started=1; fi
SOCK=$(scripts/containerd.sh start | tail -1)
trap '[ "$started" = 1 ] && scripts/containerd.sh stop' EXIT
export CLEANROOM_CONTAINERD_ADDRESS="$SOCK"
echo "   $SOCK"; took "$t"

phase "node sandbox image (cleanroom image build)"
t=$(date +%s.%N)
bin/cleanroom image build
took "$t"

go build -o bin/cleanroom-demo ./integration/cmd/demo
bin/cleanroom-demo -bin bin/cleanroom -repo .
awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "\nmake demo finished in %.1fs\n", b - a }'
