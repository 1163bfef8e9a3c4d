#!/usr/bin/env bash
# Starts and stops a private containerd for tests, benchmarks and the demo.
# Everything lives under $WORK (default .work/containerd in the checkout):
# config, root, state, socket, PID file and log. Only the PID recorded here
# is ever stopped.
#
#   scripts/containerd.sh start   # prints the socket path on the last line
#   scripts/containerd.sh stop
#   scripts/containerd.sh address
#   scripts/containerd.sh running # exit 0 if our containerd runs
set -euo pipefail

WORK="${CLEANROOM_CONTAINERD_WORK:-$(pwd)/.work/containerd}"
SOCK="$WORK/containerd.sock"
PIDFILE="$WORK/containerd.pid"

running() {
	[[ -f "$PIDFILE" ]] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null
}

case "${1:-}" in
start)
	if running; then
		echo "$SOCK"
		exit 0
	fi
	command -v containerd >/dev/null || { echo "containerd not installed (make deps installs it)" >&2; exit 1; }
	command -v runc >/dev/null || { echo "runc not installed (make deps installs it)" >&2; exit 1; }
	mkdir -p "$WORK/root" "$WORK/state"
	cat >"$WORK/config.toml" <<CONF
version = 2
root = "$WORK/root"
state = "$WORK/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$SOCK"
[ttrpc]
  address = "$SOCK.ttrpc"
[debug]
  address = "$WORK/debug.sock"
CONF
	rm -f "$SOCK"
	# setsid: its own session, so a Ctrl-C in the caller's terminal does not
	# kill it halfway through a test's cleanup.
	setsid containerd --config "$WORK/config.toml" >"$WORK/containerd.log" 2>&1 </dev/null &
	echo $! >"$PIDFILE"
	for _ in $(seq 1 100); do
		if [[ -S "$SOCK" ]] && ctr --address "$SOCK" version >/dev/null 2>&1; then
			echo "$SOCK"
			exit 0
		fi
		if ! running; then
			echo "containerd exited during start-up; log:" >&2
			tail -20 "$WORK/containerd.log" >&2
			exit 1
		fi
		sleep 0.1
	done
	echo "containerd did not answer within 10s; log:" >&2
	tail -20 "$WORK/containerd.log" >&2
	exit 1
	;;
stop)
	if running; then
		pid=$(cat "$PIDFILE")
		kill -TERM "$pid"
		for _ in $(seq 1 50); do
			kill -0 "$pid" 2>/dev/null || break
			sleep 0.1
		done
		kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
	fi
	rm -f "$PIDFILE"
	# containerd-shim processes of ours exit with their tasks; a task left
	# running would keep its shim: the tests' residue checks catch that.
	# Unmount anything left under our root (overlay snapshots of a crash).
	if [[ -d "$WORK/root" ]]; then
		{ grep -F " $WORK/" /proc/self/mounts || true; } | awk '{print $2}' | sort -r | while read -r m; do
			umount -l "$m" 2>/dev/null || true
		done
	fi
	exit 0
	;;
address)
	echo "$SOCK"
	;;
running)
	running
	;;
*)
	echo "usage: $0 start|stop|address" >&2
	exit 2
	;;
esac
