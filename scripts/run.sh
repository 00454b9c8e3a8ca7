#!/usr/bin/env bash
# scripts/run.sh — build the server (release), start it on 127.0.0.1:54321 with the
# in-memory backend, show it working with the official realtime-js client (two clients,
# protocol vsn 1.0.0 and 2.0.0: presence, broadcasts both ways) and a REST broadcast via
# curl, then keep the server in the foreground until Ctrl-C.
#
# Env: REALTIME_ADDR (default 127.0.0.1:54321), JWT_SECRET (default: the Supabase CLI
# demo secret), SKIP_DEMO=1 to only start the server, RUN_SH_EXIT_AFTER_DEMO=1 to stop
# after the demo (used by tests).
set -euo pipefail

# shellcheck source=lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"
cd "$REPO_ROOT"

ADDR="${REALTIME_ADDR:-127.0.0.1:54321}"
ANON_KEY="eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJpc3MiOiJzdXBhYmFzZS1kZW1vIiwicm9sZSI6ImFub24iLCJleHAiOjE5ODM4MTI5OTZ9.CRXP1A7WOeoJeXxjNni43kdQwgnWNReilDMblYTn_I0"
SERVICE_ROLE_KEY="eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJpc3MiOiJzdXBhYmFzZS1kZW1vIiwicm9sZSI6InNlcnZpY2Vfcm9sZSIsImV4cCI6MTk4MzgxMjk5Nn0.EGIM96RAZx35lJzdJsyH-qQwv8Hdp7fsn3W0YpN81IU"
HTTP="http://$ADDR"

ensure_base_tools
if [ "${SKIP_DEMO:-}" != 1 ]; then ensure_interop_node_modules; fi

log "building the server (cargo build --release -p supa-realtime-server)"
cargo build --release -p supa-realtime-server
TARGET_DIR="${CARGO_TARGET_DIR:-$REPO_ROOT/target}"
case "$TARGET_DIR" in /*) ;; *) TARGET_DIR="$REPO_ROOT/$TARGET_DIR" ;; esac
BIN="$TARGET_DIR/release/supa-realtime-server"

if curl -fsS -m 2 "$HTTP/api/ping" >/dev/null 2>&1; then
  die "something already answers on $ADDR; stop it or set REALTIME_ADDR"
fi

SERVER_LOG="${TMPDIR:-/tmp}/supa-realtime-run.$$.log"
log "starting the server on $ADDR (in memory; log: $SERVER_LOG)"
unset DATABASE_URL
"$BIN" serve --addr "$ADDR" >"$SERVER_LOG" 2>&1 &
SERVER_PID=$!
stop_server() {
  if kill -0 "$SERVER_PID" 2>/dev/null; then
    kill -TERM "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
  fi
}
trap 'echo; log "stopping the server"; stop_server; exit 0' INT TERM
trap 'stop_server' EXIT

for _ in $(seq 1 100); do
  if curl -fsS -m 1 "$HTTP/api/ping" >/dev/null 2>&1; then break; fi
  if ! kill -0 "$SERVER_PID" 2>/dev/null; then
    cat "$SERVER_LOG" >&2
    die "the server exited during startup"
  fi
  sleep 0.1
done
curl -fsS -m 2 "$HTTP/api/ping" >/dev/null || { cat "$SERVER_LOG" >&2; die "the server did not become ready"; }
note "GET $HTTP/api/ping -> $(curl -sS -m 2 "$HTTP/api/ping")"

DEMO_RC=0
if [ "${SKIP_DEMO:-}" != 1 ]; then
  log "demo: two realtime-js clients (vsn 1.0.0 and 2.0.0) in room \"room1\", plus curl"
  DEMO_OUT="${TMPDIR:-/tmp}/supa-realtime-demo.$$.log"
  : >"$DEMO_OUT"
  DEMO_CURL_EVENT=curl-hello node interop/demo.mjs "ws://$ADDR/realtime/v1" "$ANON_KEY" >"$DEMO_OUT" 2>&1 &
  DEMO_PID=$!
  tail -n +1 -f "$DEMO_OUT" --pid "$DEMO_PID" &
  DEMO_TAIL=$!
  for _ in $(seq 1 300); do
    grep -q 'waiting for a curl broadcast' "$DEMO_OUT" && break
    kill -0 "$DEMO_PID" 2>/dev/null || break
    sleep 0.1
  done
  if grep -q 'waiting for a curl broadcast' "$DEMO_OUT"; then
    sleep 0.2
    printf '        [curl    ] POST %s/realtime/v1/api/broadcast/room1/events/curl-hello {"from":"curl"}\n' "$HTTP"
    code="$(curl -sS -o /dev/null -w '%{http_code}' -X POST \
      "$HTTP/realtime/v1/api/broadcast/room1/events/curl-hello" \
      -H "apikey: $ANON_KEY" -H 'Content-Type: application/json' -d '{"from":"curl"}')"
    printf '        [curl    ] -> HTTP %s\n' "$code"
    [ "$code" = 202 ] || DEMO_RC=1
  fi
  wait "$DEMO_PID" || DEMO_RC=$?
  wait "$DEMO_TAIL" 2>/dev/null || true
  rm -f "$DEMO_OUT"
  if [ "$DEMO_RC" != 0 ]; then
    note "the demo FAILED (exit $DEMO_RC); the server keeps running — log: $SERVER_LOG"
  fi
fi

if [ "${RUN_SH_EXIT_AFTER_DEMO:-}" = 1 ]; then
  exit "$DEMO_RC"
fi

cat <<EOF

==> Supabase Realtime is running (press Ctrl-C to stop)

    WebSocket   ws://$ADDR/realtime/v1/websocket   (also /socket/websocket)
    REST        $HTTP/realtime/v1/api/broadcast   (batch)
                $HTTP/realtime/v1/api/broadcast/<topic>/events/<event>   (single)
    Project URL for supabase-js / realtime-py:   $HTTP
    anon key          $ANON_KEY
    service_role key  $SERVICE_ROLE_KEY
    JWT secret        ${JWT_SECRET:-super-secret-jwt-token-with-at-least-32-characters-long}

    e.g. with realtime-js:
      new RealtimeClient('ws://$ADDR/realtime/v1', { params: { apikey: '<anon key>' } })

    server log: $SERVER_LOG (following below)

EOF
tail -n +1 -f "$SERVER_LOG" --pid "$SERVER_PID" &
TAIL_PID=$!
wait "$SERVER_PID" || true
kill "$TAIL_PID" 2>/dev/null || true
note "the server exited"
