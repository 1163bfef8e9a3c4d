#!/usr/bin/env bash
# scripts/bench-gateway.sh — make bench's registry-gateway benchmark (issue 12),
# side by side in one run, medians and ratios:
#   - a job on examples/webapp (373 packages) with a cold gateway cache vs
#     host `npm ci` with an empty npm cache (target ≤ 1.1×);
#   - a job with a warm gateway cache vs host `npm ci` with a warm npm cache
#     (target ≤ 1.15×);
#   - the job's install step, warm vs cold (target ≥ 2× faster warm);
#   - the gateway serving cached tarballs (go test -bench BenchmarkServeCached
#     ./gateway/, MB/s), when this checkout has that benchmark.
# Host npm runs in the lab host namespace against the same Verdaccio. Until the
# agent has the gateway, the job side measures today's path (jobbench -gateway
# says so). Root only.
#
# scripts/bench.sh runs it with CLEANROOM_CONTAINERD_ADDRESS set and
# bin/cleanroom built. Standalone:
#   scripts/containerd.sh start && make build image
#   CLEANROOM_CONTAINERD_ADDRESS=$(scripts/containerd.sh address) scripts/bench-gateway.sh -n 3
# Iterations: -n N, or BENCH_GATEWAY_N (default 5). Other flags: go run ./bench/jobbench -h.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "bench-gateway needs root" >&2; exit 1; }
: "${CLEANROOM_CONTAINERD_ADDRESS:?set CLEANROOM_CONTAINERD_ADDRESS (scripts/containerd.sh address)}"
[ -x bin/cleanroom ] || { echo "bin/cleanroom missing: make build" >&2; exit 1; }

echo "-- gateway serving cached tarballs (Go benchmark)"
if go test -list '^BenchmarkServeCached' ./gateway/ 2>/dev/null | grep -q '^BenchmarkServeCached'; then
	go test -run '^$' -bench '^BenchmarkServeCached' -benchmem -count 1 ./gateway/ 2>&1 |
		grep -E '^(Benchmark|ok|FAIL|goos|cpu)' || true
else
	echo "   gateway/ has no BenchmarkServeCached in this checkout yet: skipped"
fi

echo
echo "-- jobs on examples/webapp, cold and warm gateway cache, vs host npm ci"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
GOFLAGS=${GOFLAGS:--mod=mod} go build -o "$tmp/jobbench" ./bench/jobbench
# Not exec'd, so the trap removes the binary; Ctrl-C reaches jobbench too
# (same process group) and it cleans up its lab before exiting.
"$tmp/jobbench" -gateway -n "${BENCH_GATEWAY_N:-5}" -bin bin/cleanroom -containerd "$CLEANROOM_CONTAINERD_ADDRESS" "$@"
