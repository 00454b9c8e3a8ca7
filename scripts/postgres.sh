#!/usr/bin/env bash
# scripts/postgres.sh — a project-local, throwaway PostgreSQL 15 for postgres_changes.
#
#   scripts/postgres.sh [start]  install (apt) if missing, initdb if missing, start if stopped;
#                                prints DATABASE_URL=... as the LAST stdout line
#   scripts/postgres.sh stop     fast shutdown (data kept)
#   scripts/postgres.sh status   exit 0 and print the URL if running, else exit 1
#   scripts/postgres.sh url      print the URL (does not start anything)
#   scripts/postgres.sh restart  stop + start (used by the "database restarted" tests)
#   scripts/postgres.sh destroy  stop and delete the data directory
#
# Env: PG_PORT (54329), PG_BASE (/tmp/supa-realtime-pg), PG_PASSWORD (postgres).
# Everything but the URL goes to stderr: `export "$(scripts/postgres.sh | tail -n1)"`.
#
# Notes:
# * As root the cluster runs as the OS user `postgres`, which cannot enter /root: the data
#   lives under /tmp.
# * wal_level=logical. synchronous_commit stays ON: logical decoding only sees flushed WAL,
#   so turning it off delays every change by up to wal_writer_delay.
# * PostgreSQL releases from 2026 on (15.19+) only let slots use output plugins listed in
#   output_plugin_libraries; wal2json is added there when the server knows that setting.
#   (The server itself streams with pgoutput, which is always allowed.)
set -euo pipefail

MAJOR=15
PORT="${PG_PORT:-54329}"
BASE="${PG_BASE:-/tmp/supa-realtime-pg}"
PASSWORD="${PG_PASSWORD:-postgres}"
DATA="$BASE/data"
SOCK="$BASE/sock"
LOGF="$BASE/server.log"
BIN="/usr/lib/postgresql/$MAJOR/bin"
URL="postgres://postgres:${PASSWORD}@127.0.0.1:${PORT}/postgres"

say() { echo "[postgres.sh] $*" >&2; }

if [ "$(id -u)" = 0 ]; then
  OWNER=postgres
  as_owner() { runuser -u postgres -- "$@"; }
else
  OWNER="$(id -un)"
  as_owner() { "$@"; }
fi

ensure_installed() {
  if [ -x "$BIN/initdb" ] && [ -f "/usr/lib/postgresql/$MAJOR/lib/wal2json.so" ]; then return 0; fi
  if [ "$(id -u)" != 0 ]; then
    say "need postgresql-$MAJOR and postgresql-$MAJOR-wal2json (run as root to install them)"; exit 1
  fi
  say "installing postgresql-$MAJOR and postgresql-$MAJOR-wal2json with apt-get"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq --no-install-recommends "postgresql-$MAJOR" "postgresql-$MAJOR-wal2json" >&2
}

# running: pg_ctl sees a live postmaster and it answers on TCP (a killed one may linger briefly)
running() {
  [ -f "$DATA/PG_VERSION" ] || return 1
  local n
  for n in $(seq 1 50); do
    as_owner "$BIN/pg_ctl" -D "$DATA" status >/dev/null 2>&1 || return 1
    "$BIN/pg_isready" -q -h 127.0.0.1 -p "$PORT" && return 0
    sleep 0.2
  done
  say "a postmaster owns $DATA but does not answer on 127.0.0.1:$PORT (see $LOGF)"; exit 1
}

ensure_cluster() {
  [ -f "$DATA/PG_VERSION" ] && return 0
  say "initdb $DATA"
  rm -rf "$DATA"; mkdir -p "$DATA" "$SOCK"
  chown "$OWNER" "$BASE" "$DATA" "$SOCK"; chmod 700 "$DATA"
  local pw="$BASE/.pw"
  printf '%s\n' "$PASSWORD" >"$pw"; chown "$OWNER" "$pw"; chmod 600 "$pw"
  as_owner "$BIN/initdb" -D "$DATA" -U postgres --pwfile="$pw" -E UTF8 --locale=C \
    --auth-local=trust --auth-host=scram-sha-256 >&2
  rm -f "$pw"
  echo "include_if_exists = 'realtime.conf'" | as_owner tee -a "$DATA/postgresql.conf" >/dev/null
}

write_conf() {
  local plugins=""
  local gucs; gucs="$(as_owner "$BIN/postgres" --describe-config 2>/dev/null || true)"
  if grep -q '^output_plugin_libraries' <<<"$gucs"; then
    plugins="output_plugin_libraries = 'pgoutput, test_decoding, wal2json'"
  fi
  {
    echo "# written by scripts/postgres.sh on every start"
    echo "listen_addresses = '127.0.0.1'"
    echo "port = $PORT"
    echo "unix_socket_directories = '$SOCK'"
    echo "wal_level = logical"
    # permanent slots add up: each server's postgres_changes slot, a cluster's <slot>_messages,
    # and those a killed test process could not drop
    echo "max_replication_slots = 64"
    echo "max_wal_senders = 64"
    echo "max_connections = 200"
    echo "fsync = off"
    echo "full_page_writes = off"
    [ -n "$plugins" ] && echo "$plugins"
    true
  } | as_owner tee "$DATA/realtime.conf" >/dev/null
}

start() {
  ensure_installed
  mkdir -p "$BASE"; chown "$OWNER" "$BASE"
  ensure_cluster
  write_conf
  if running; then
    as_owner "$BIN/pg_ctl" -D "$DATA" reload >/dev/null
    say "already running on 127.0.0.1:$PORT"
  else
    mkdir -p "$SOCK"; chown "$OWNER" "$SOCK"
    touch "$LOGF"; chown "$OWNER" "$LOGF"
    rm -f "$DATA/postmaster.pid"
    say "starting on 127.0.0.1:$PORT (log $LOGF)"
    as_owner "$BIN/pg_ctl" -D "$DATA" -l "$LOGF" -w -t 60 start >&2 || { tail -n 30 "$LOGF" >&2; exit 1; }
  fi
  # prove the cluster can do what the server needs (logical decoding + replication login)
  as_owner "$BIN/psql" -X -q -At -h "$SOCK" -p "$PORT" -U postgres -d postgres \
    -c "SHOW wal_level" | grep -qx logical || { say "wal_level is not logical"; exit 1; }
  echo "DATABASE_URL=$URL"
}

stop() {
  if running; then as_owner "$BIN/pg_ctl" -D "$DATA" -m fast -w stop >&2; else say "not running"; fi
}

case "${1:-start}" in
  start) start ;;
  stop) stop ;;
  restart) stop; start ;;
  status) if running; then say "running on 127.0.0.1:$PORT"; echo "DATABASE_URL=$URL"; else say "not running"; exit 1; fi ;;
  url) echo "DATABASE_URL=$URL" ;;
  destroy) if running; then as_owner "$BIN/pg_ctl" -D "$DATA" -m immediate -w stop >&2 || true; fi; rm -rf "$BASE"; say "removed $BASE" ;;
  *) echo "usage: $0 [start|stop|restart|status|url|destroy]" >&2; exit 2 ;;
esac
