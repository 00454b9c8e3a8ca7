#!/usr/bin/env bash
# scripts/redis.sh — a project-local, throwaway Redis (Debian's redis-server) for cluster mode.
#
#   scripts/redis.sh [start]  install (apt) if missing, start if stopped;
#                             prints REDIS_URL=... as the LAST stdout line
#   scripts/redis.sh stop     shut down (nothing is kept: no RDB, no AOF)
#   scripts/redis.sh status   exit 0 and print the URL if running, else exit 1
#   scripts/redis.sh url      print the URL (does not start anything)
#   scripts/redis.sh destroy  stop and delete the base directory
#
# Env: REDIS_PORT (6389), REDIS_BASE (/tmp/supa-realtime-redis).
# Everything but the URL goes to stderr: `export "$(scripts/redis.sh | tail -n1)"`.
#
# It listens on 127.0.0.1 only and keeps no data on disk: the cluster's state in Redis is
# leased and rebuilt by the nodes, so a restarted Redis starting empty is a case the server
# handles (and the tests exercise), not a loss.
set -euo pipefail

PORT="${REDIS_PORT:-6389}"
BASE="${REDIS_BASE:-/tmp/supa-realtime-redis}"
PIDF="$BASE/redis.pid"
LOGF="$BASE/redis.log"
URL="redis://127.0.0.1:${PORT}/"

say() { echo "[redis.sh] $*" >&2; }

ensure_installed() {
  command -v redis-server >/dev/null 2>&1 && command -v redis-cli >/dev/null 2>&1 && return 0
  if [ "$(id -u)" != 0 ]; then
    say "need redis-server and redis-tools (run as root to install them)"; exit 1
  fi
  say "installing redis-server with apt-get"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq --no-install-recommends redis-server redis-tools >&2
}

running() {
  redis-cli -h 127.0.0.1 -p "$PORT" ping 2>/dev/null | grep -qx PONG
}

start() {
  ensure_installed
  mkdir -p "$BASE"
  if running; then
    say "already running on 127.0.0.1:$PORT"
  else
    say "starting on 127.0.0.1:$PORT (log $LOGF)"
    redis-server --bind 127.0.0.1 --port "$PORT" --daemonize yes --pidfile "$PIDF" \
      --logfile "$LOGF" --dir "$BASE" --save '' --appendonly no >&2
    local n
    for n in $(seq 1 100); do running && break; sleep 0.1; done
    running || { tail -n 30 "$LOGF" >&2; say "did not come up"; exit 1; }
  fi
  echo "REDIS_URL=$URL"
}

stop() {
  if running; then
    redis-cli -h 127.0.0.1 -p "$PORT" shutdown nosave >/dev/null 2>&1 || true
    local n
    for n in $(seq 1 100); do running || break; sleep 0.1; done
  else
    say "not running"
  fi
}

case "${1:-start}" in
  start) start ;;
  stop) stop ;;
  restart) stop; start ;;
  status) if running; then say "running on 127.0.0.1:$PORT"; echo "REDIS_URL=$URL"; else say "not running"; exit 1; fi ;;
  url) echo "REDIS_URL=$URL" ;;
  destroy) stop; rm -rf "$BASE"; say "removed $BASE" ;;
  *) echo "usage: $0 [start|stop|restart|status|url|destroy]" >&2; exit 2 ;;
esac
