#!/usr/bin/env bash
# Runs the whole test suite as CI does: starts a private containerd and a
# private PostgreSQL (each stopped on exit, pass or fail, if this script
# started it), builds the node image (cached), then runs every package
# with -race. Root-only tests run too: CI is root, and with CI=true a root test
# fails instead of skipping when root is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

# Stop containerd and PostgreSQL on exit only if this script started them.
if scripts/containerd.sh running; then started=0; else started=1; fi
if scripts/postgres.sh running; then pg_started=0; else pg_started=1; fi
cleanup() {
	if [ "$started" = 1 ]; then scripts/containerd.sh stop; fi
	if [ "$pg_started" = 1 ]; then scripts/postgres.sh stop; fi
}
trap cleanup EXIT
SOCK=$(scripts/containerd.sh start | tail -1)
export CLEANROOM_CONTAINERD_ADDRESS="$SOCK"
# The PostgreSQL conformance tests create a database per test on it; with
# CI=true they fail when this is missing.
CLEANROOM_TEST_POSTGRES=$(scripts/postgres.sh start | tail -1)
export CLEANROOM_TEST_POSTGRES
export CLEANROOM_TEST_IMAGE="${CLEANROOM_TEST_IMAGE:-cleanroom.local/node:22}"
export CI="${CI:-true}"

echo "== node image"
bin/cleanroom image build

echo "== go test"
# -p 1: root tests share the kernel (namespaces, containerd); running
# packages one at a time keeps their residue checks exact.
go test -race -count=1 -p 1 -timeout 25m ${TESTFLAGS:-} ./... 2>&1 | tee "${TEST_LOG:-/dev/null}"
