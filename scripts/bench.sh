#!/usr/bin/env bash
# scripts/bench.sh — the loopback benchmarks (crates/bench): release build, one run of every
# scenario, report with tables and PNG charts.
#
#   scripts/bench.sh            full run: writes BENCHMARKS.md and bench/*.png (~10 min;
#                               run it on a quiet machine, the report records the load)
#   scripts/bench.sh --quick    small sizes, < 60 s, what CI runs to keep the harness working;
#                               writes to $BENCH_OUT (default /tmp/supa-realtime-bench-quick)
#
# Other flags go to the bench binary (`--only fanout,connections,python,postgres,presence,cluster`,
# `--perf <scenario>`, `--note <text>`; see `supa-realtime-bench --help`).
# Env: DATABASE_URL (else scripts/postgres.sh starts the project's PostgreSQL; SKIP_POSTGRES=1
# runs without, and postgres_changes / database broadcast are reported as not measured),
# SKIP_PY_BUILD=1 to use the installed supa_realtime as it is.
set -euo pipefail

# shellcheck source=lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"
cd "$REPO_ROOT"

QUICK=0
for a in "$@"; do [ "$a" = --quick ] && QUICK=1; done

ensure_base_tools
ensure_python_venv
ensure_redis

TARGET_DIR="${CARGO_TARGET_DIR:-$REPO_ROOT/target}"
case "$TARGET_DIR" in /*) ;; *) TARGET_DIR="$REPO_ROOT/$TARGET_DIR" ;; esac

# The Python package, release build (the benchmark compares it with the official client).
# Quick mode keeps whatever is installed: CI's test run has just built it.
if [ "$QUICK" = 0 ] && [ "${SKIP_PY_BUILD:-}" != 1 ] && [ -f pyproject.toml ]; then
  log "building the Python package, release (maturin develop -r)"
  VIRTUAL_ENV="$VENV" PATH="$VENV/bin:$PATH" \
    "$VENV/bin/maturin" develop -r --quiet >&2 \
    || note "maturin failed: the Python comparison uses what is installed, if anything"
fi

log "building the server and the bench (release)"
cargo build --release -p supa-realtime-server -p supa-realtime-bench

if [ -z "${DATABASE_URL:-}" ] && [ "${SKIP_POSTGRES:-}" != 1 ]; then
  if url="$(bash scripts/postgres.sh start | tail -n1)" && [ "${url#DATABASE_URL=}" != "$url" ]; then
    export DATABASE_URL="${url#DATABASE_URL=}"
  else
    note "no PostgreSQL: postgres_changes and database broadcast will be reported as not measured"
  fi
fi

# 10,000 sockets on each side of loopback: raise the open-file limit (the bench raises its
# own too; the servers it starts inherit it).
ulimit -Hn 1048576 2>/dev/null || true
ulimit -Sn "$(ulimit -Hn)" 2>/dev/null || true

ARGS=(--server-bin "$TARGET_DIR/release/supa-realtime-server" --python "$VENV/bin/python" --py-script bench/py_client.py)
if [ "$QUICK" = 1 ]; then
  OUT="${BENCH_OUT:-${TMPDIR:-/tmp}/supa-realtime-bench-quick}"
  mkdir -p "$OUT"
  ARGS+=(--out "$OUT/BENCHMARKS.md" --charts "$OUT")
else
  ARGS+=(--out BENCHMARKS.md --charts bench)
fi
log "running the benchmarks (load average now: $(cut -d' ' -f1-3 /proc/loadavg))"
exec "$TARGET_DIR/release/supa-realtime-bench" "${ARGS[@]}" "$@"
