#!/usr/bin/env bash
# Runs the whole test suite as CI does: starts a private containerd (stopped on
# exit, pass or fail), builds the node image (cached), then runs every package
# with -race. Root-only tests run too: CI is root, and with CI=true a root test
# fails instead of skipping when root is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

# Stop containerd on exit only if this script started it.
if scripts/containerd.sh running; then started=0; else started=1; fi
SOCK=$(scripts/containerd.sh start | tail -1)
trap '[ "$started" = 1 ] && scripts/containerd.sh stop' EXIT
export CLEANROOM_CONTAINERD_ADDRESS="$SOCK"
export CLEANROOM_TEST_IMAGE="${CLEANROOM_TEST_IMAGE:-cleanroom.local/node:22}"
export CI="${CI:-true}"

echo "== node image"
bin/cleanroom image build

echo "== go test"
# -p 1: root tests share the kernel (namespaces, containerd); running
# packages one at a time keeps their residue checks exact.
go test -race -count=1 -p 1 -timeout 25m ${TESTFLAGS:-} ./... 2>&1 | tee "${TEST_LOG:-/dev/null}"
