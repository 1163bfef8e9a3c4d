#!/usr/bin/env bash
# make bench: every benchmark the issues name, each side by side with its
# baseline in one run (these machines are noisy: compare ratios, not times).
# Root only: it starts a private containerd (stopped on exit) and builds the
# cached node image; network benchmarks run inside throwaway lab namespaces.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "make bench needs root" >&2; exit 1; }
N=${BENCH_N:-20}

# Stop containerd on exit only if this script started it.
if scripts/containerd.sh running; then started=0; else started=1; fi
SOCK=$(scripts/containerd.sh start | tail -1)
trap '[ "$started" = 1 ] && scripts/containerd.sh stop' EXIT
export CLEANROOM_CONTAINERD_ADDRESS="$SOCK"
bin/cleanroom image build >/dev/null

echo "== sandbox lifecycle, side by side with ctr run --rm (n=$N)"
go run ./bench/sidebyside -n "$N" -containerd "$SOCK"

echo
echo "== network setup+teardown, side by side with ip netns add/del"
bench/netpolicy.sh "$N"

echo
echo "== Go benchmarks (redactor, lockfile gate + SBOM, claim latency, /metrics scrape with 1,000 jobs: target < 20 ms)"
go test -run '^$' -bench . -skip '^(BenchmarkConsole|BenchmarkHA)' -benchmem -count 1 ./secrets/ ./supplychain/ ./coordinator/... ./agent/... 2>&1 | grep -E '^(Benchmark|ok|FAIL|goos|cpu)' || true

echo
echo "== connect()+close() on loopback from a cgroup of its own on the host, without and with the attribution hooks (target: hooked ≤ 1.05× unhooked)"
go test -run '^$' -bench '^BenchmarkConnect$' -benchtime "${BENCH_CONNECT_N:-20000}x" -count 3 ./attribution/ 2>&1 | grep -E '^(Benchmark|ok|FAIL)' || true

echo
echo "== web console on the SQLite store (modernc.org/sqlite, WAL): a job page with 5,000 egress events (target < 100 ms);"
echo "   the egress explorer's first page over 1,000,000 events by verdict, rule, domain (target < 200 ms; seeding takes ~25 s)"
go test -run '^$' -bench '^BenchmarkConsole' -benchtime "${BENCH_CONSOLE_N:-5}x" -count 1 ./coordinator/ 2>&1 | grep -E '^(Benchmark|ok|FAIL)' || true

echo
echo "== scale-out: 1 coordinator on SQLite vs 2 on PostgreSQL (submit → claim across coordinators < 20 ms,"
echo "   jobs/s PostgreSQL ≥ 1.0× SQLite, peak RSS streaming a 1 GiB artifact flat)"
scripts/bench-ha.sh

if [ -x scripts/bench-job.sh ]; then
	echo
	echo "== full job vs host-side npm ci && npm run build"
	scripts/bench-job.sh
fi

if [ -x scripts/bench-gateway.sh ]; then
	echo
	echo "== registry gateway: cold and warm cache on the webapp example (373 packages) vs host npm ci, lab registry (~0 ms)"
	scripts/bench-gateway.sh
	echo
	echo "== registry gateway as above, registry 40 ms away (modelled RTT, both sides; the warm/cold ≥ 2× target)"
	BENCH_GATEWAY_N=${BENCH_GATEWAY_N:-3} scripts/bench-gateway.sh --registry-rtt 40ms
fi
