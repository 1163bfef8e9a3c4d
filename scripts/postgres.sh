#!/usr/bin/env bash
# Starts and stops a private PostgreSQL for tests and benchmarks, from
# Debian's postgresql package (make deps installs it). It never uses or
# touches Debian's own cluster: its data, socket, PID file, log and password
# live under $WORK, it listens on a loopback port of its own (the first free
# one from 55432, kept in $WORK/port), and it runs as the postgres user
# (initdb refuses root). Only the postmaster of this data directory is ever
# stopped.
#
#   scripts/postgres.sh start    # prints the DSN (superuser, database postgres) on the last line
#   scripts/postgres.sh stop
#   scripts/postgres.sh dsn
#   scripts/postgres.sh running  # exit 0 if our cluster runs
#
# $WORK defaults to /var/tmp/cleanroom-pg-<hash of the checkout's path>: the
# postgres user must be able to reach it, which a checkout under a private
# home directory would not allow, and two checkouts get two clusters.
# CLEANROOM_POSTGRES_WORK names another one: a test that kills its
# postmaster runs a cluster of its own.
set -euo pipefail

PGBIN="${CLEANROOM_POSTGRES_BIN:-/usr/lib/postgresql/15/bin}"
WORK="${CLEANROOM_POSTGRES_WORK:-/var/tmp/cleanroom-pg-$(pwd | sha256sum | cut -c1-8)}"
DATA="$WORK/data"
SOCKDIR="$WORK/sock"
PGUSER_OS="${CLEANROOM_POSTGRES_OS_USER:-postgres}"

as_pg() { runuser -u "$PGUSER_OS" -- "$@"; }

running() {
	[[ -f "$DATA/postmaster.pid" ]] && kill -0 "$(head -1 "$DATA/postmaster.pid")" 2>/dev/null
}

dsn() {
	echo "postgres://cleanroom:$(cat "$WORK/password")@127.0.0.1:$(cat "$WORK/port")/postgres?sslmode=disable"
}

# free_port prints the first loopback port from 55432 that nothing listens on.
free_port() {
	for p in $(seq 55432 55532); do
		if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
			echo "$p"
			return 0
		fi
	done
	echo "no free port in 55432-55532" >&2
	return 1
}

case "${1:-}" in
start)
	if running; then
		dsn
		exit 0
	fi
	[[ -x "$PGBIN/initdb" ]] || { echo "PostgreSQL not installed in $PGBIN (make deps installs Debian's postgresql)" >&2; exit 1; }
	id "$PGUSER_OS" >/dev/null 2>&1 || { echo "no user $PGUSER_OS (Debian's postgresql package creates it)" >&2; exit 1; }
	mkdir -p "$WORK" "$SOCKDIR"
	chmod 0700 "$WORK"
	if [[ ! -f "$DATA/PG_VERSION" ]]; then
		rm -rf "$DATA"
		head -c 24 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' >"$WORK/password"
		chown -R "$PGUSER_OS" "$WORK"
		as_pg "$PGBIN/initdb" -D "$DATA" -U cleanroom --auth=scram-sha-256 --pwfile="$WORK/password" \
			--encoding=UTF8 --locale=C.UTF-8 >"$WORK/initdb.log" 2>&1 ||
			{ echo "initdb failed; log:" >&2; tail -20 "$WORK/initdb.log" >&2; exit 1; }
	fi
	chown -R "$PGUSER_OS" "$WORK"
	# A restart keeps the port (and so the DSN its clients hold) when it is
	# still free; otherwise another is chosen: another cluster may hold the
	# old one by now.
	if [[ -s "$WORK/port" ]] && ! (exec 3<>"/dev/tcp/127.0.0.1/$(cat "$WORK/port")") 2>/dev/null; then
		:
	else
		free_port >"$WORK/port"
	fi
	port=$(cat "$WORK/port")
	# setsid: its own session, so a Ctrl-C in the caller's terminal does not
	# kill it halfway through a test's cleanup. fsync off: test data only.
	as_pg setsid "$PGBIN/pg_ctl" -D "$DATA" -l "$WORK/postgres.log" -w -t 30 start \
		-o "-c listen_addresses=127.0.0.1 -p $port -c unix_socket_directories=$SOCKDIR -c fsync=off -c max_connections=200" \
		>/dev/null </dev/null || { echo "PostgreSQL did not start; log:" >&2; tail -20 "$WORK/postgres.log" >&2; exit 1; }
	dsn
	;;
stop)
	if running; then
		as_pg "$PGBIN/pg_ctl" -D "$DATA" -m fast -w -t 30 stop >/dev/null ||
			kill -KILL "$(head -1 "$DATA/postmaster.pid")" 2>/dev/null || true
	fi
	exit 0
	;;
dsn)
	running || { echo "our PostgreSQL is not running (scripts/postgres.sh start)" >&2; exit 1; }
	dsn
	;;
running)
	running
	;;
*)
	echo "usage: $0 start|stop|dsn|running" >&2
	exit 2
	;;
esac
