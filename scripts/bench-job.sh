#!/usr/bin/env bash
# scripts/bench-job.sh — make bench's full-job benchmark (bench/jobbench):
# `cleanroom submit examples/hello --wait` next to host-side
# `npm ci && npm run build` against the same lab registry, interleaved, with
# the ratio (target ≤ 1.3×) and submit → claimed latency. Root only.
#
# scripts/bench.sh runs it with CLEANROOM_CONTAINERD_ADDRESS set and
# bin/cleanroom built. Standalone:
#   scripts/containerd.sh start && make build image
#   CLEANROOM_CONTAINERD_ADDRESS=$(scripts/containerd.sh address) scripts/bench-job.sh -n 5
# Iterations: -n N, or BENCH_JOB_N (default 10). Other flags: go run ./bench/jobbench -h.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "bench-job needs root" >&2; exit 1; }
: "${CLEANROOM_CONTAINERD_ADDRESS:?set CLEANROOM_CONTAINERD_ADDRESS (scripts/containerd.sh address)}"
[ -x bin/cleanroom ] || { echo "bin/cleanroom missing: make build" >&2; exit 1; }

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
GOFLAGS=${GOFLAGS:--mod=mod} go build -o "$tmp/jobbench" ./bench/jobbench
# Not exec'd, so the trap removes the binary; Ctrl-C reaches jobbench too
# (same process group) and it cleans up its lab before exiting.
"$tmp/jobbench" -n "${BENCH_JOB_N:-10}" -bin bin/cleanroom -containerd "$CLEANROOM_CONTAINERD_ADDRESS" "$@"
