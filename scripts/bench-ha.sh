#!/usr/bin/env bash
# make bench's scale-out section (issue 13): one coordinator on SQLite next
# to two coordinators on one PostgreSQL database, side by side in one run
# (coordinator/ha_bench_test.go; each iteration alternates which side goes
# first). It starts the private PostgreSQL of scripts/postgres.sh unless it
# runs already, and stops it at the end only if it started it. Runs alone:
#
#   scripts/bench-ha.sh     # BENCH_HA_N jobs for the latency (default 200),
#                           # BENCH_HA_ROUNDS rounds of 200 jobs for jobs/s (5)
#
# Targets (docs/architecture.md "Performance targets"): submit → claim
# median across coordinators < 20 ms; PostgreSQL jobs/s ≥ 1.0× SQLite;
# peak RSS of a coordinator streaming a 1 GiB artifact flat (≈ 64 MiB's).
set -euo pipefail
cd "$(dirname "$0")/.."
N=${BENCH_HA_N:-200}
ROUNDS=${BENCH_HA_ROUNDS:-5}

if scripts/postgres.sh running; then pg_started=0; else pg_started=1; fi
CLEANROOM_TEST_POSTGRES=$(scripts/postgres.sh start | tail -1)
export CLEANROOM_TEST_POSTGRES
trap '[ "$pg_started" = 1 ] && scripts/postgres.sh stop' EXIT

echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg) ($(nproc) CPUs)"
out=$(mktemp)
trap 'rm -f "$out"; [ "$pg_started" = 1 ] && scripts/postgres.sh stop' EXIT
bench() { # name benchtime
	go test -run '^$' -bench "^$1\$" -benchtime "$2" -count 1 ./coordinator/ 2>&1 |
		grep -E '^(Benchmark|FAIL|--- FAIL|panic)|_test.go:[0-9]+:' | tee -a "$out" || true
}
bench BenchmarkHASubmitToClaim "${N}x"
bench BenchmarkHAThroughput "${ROUNDS}x"
bench BenchmarkHAArtifactMemory 1x
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"

# The table: every metric a benchmark reported, by name.
awk '
/^Benchmark/ { for (i = 5; i < NF; i += 2) m[$(i+1)] = $i }
function v(k) { return (k in m) ? m[k] : "-" }
function row(what, a, b, r, target) { printf "%-44s %14s %14s %9s   %s\n", what, a, b, r, target }
END {
	printf "\n%-44s %14s %14s %9s   %s\n", "", "SQLite, 1", "PostgreSQL, 2", "PG/SQLite", "target"
	row("submit -> claim median, ms (PG: A -> B)", v("sqlite-ms-median"), v("postgres-ms-median"), v("pg/sqlite-median") "x", "PG < 20 ms")
	row("submit -> claim p90, ms", v("sqlite-ms-p90"), v("postgres-ms-p90"), "", "")
	row("jobs/s, 8 runners, claim+heartbeat+log+result", v("sqlite-jobs/s"), v("postgres-jobs/s"), v("pg/sqlite") "x", "PG ≥ 1.0x")
	row("peak RSS, 64 MiB artifact up+down, MiB", v("sqlite-64MiB-peak-MiB"), v("postgres-64MiB-peak-MiB"), "", "")
	row("peak RSS, 1 GiB artifact up+down, MiB", v("sqlite-1024MiB-peak-MiB"), v("postgres-1024MiB-peak-MiB"), "", "")
	row("peak RSS 1 GiB / 64 MiB", v("sqlite-1GiB/64MiB") "x", v("postgres-1GiB/64MiB") "x", "", "flat (~ 1x)")
}' "$out"
