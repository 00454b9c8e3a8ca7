#!/usr/bin/env bash
# scripts/test.sh — THE test command. On a fresh Debian machine (root, package registries
# reachable) it installs what the tests need, idempotently, then runs:
#   cargo fmt --check, cargo clippy -D warnings, cargo doc (no broken links), cargo test --workspace,
#   the Python wheel + sdist (maturin build --release) installed into a fresh venv,
#   mypy.stubtest over the native module, mypy --strict over the package,
#   and pytest over tests/ against that install (interop suite: the real server with the
#   official realtime-js and Python clients as peers).
# Exits non-zero if any step fails. Runs every step it can even after a failure, so one
# run reports everything; the last line is pytest's summary.
#
# Env:
#   CARGO_TARGET_DIR      honoured (default: target/)
#   PYTEST_ARGS           extra pytest arguments (e.g. "-k presence -x")
#   SKIP_RUST_CHECKS=1    skip fmt/clippy/cargo test (pytest only)
#   SKIP_POSTGRES=1       do not start the local PostgreSQL (scripts/postgres.sh)
#   SKIP_BENCH=1          skip the quick benchmark run
set -uo pipefail

# shellcheck source=lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"
cd "$REPO_ROOT"

START=$(date +%s)
declare -a RESULTS=()
FAILED=0
record() { # record NAME STATUS
  RESULTS+=("$(printf '%-28s %s' "$1" "$2")")
  [ "$2" = ok ] || FAILED=1
}
step() { # step NAME cmd...
  local name="$1"; shift
  log "$name: $*"
  local t0=$SECONDS
  if "$@"; then record "$name" ok; else record "$name" "FAILED (exit $?)"; fi
  note "$name took $((SECONDS - t0)) s"
}

# --- install -----------------------------------------------------------------------------
set -e
log "checking/installing prerequisites"
ensure_base_tools
ensure_interop_node_modules
ensure_python_venv
ensure_redis
set +e
# Cluster tests must run, not skip, here.
export REQUIRE_REDIS=1

if [ "${SKIP_POSTGRES:-}" != 1 ] && [ -f scripts/postgres.sh ]; then
  log "starting PostgreSQL (scripts/postgres.sh)"
  if pg_out="$(bash scripts/postgres.sh start)"; then
    url="$(printf '%s\n' "$pg_out" | tail -n1)"
    case "$url" in
      DATABASE_URL=*) export "${url?}"; note "using ${url%%@*}@…" ;;
      *) note "scripts/postgres.sh printed no DATABASE_URL; database tests may skip" ;;
    esac
  else
    record "postgres.sh start" "FAILED"
  fi
fi

export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
# CI builds once from a fresh clone: incremental caches would only cost disk and time.
if [ "${CI:-}" = true ]; then export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"; fi
TARGET_DIR="${CARGO_TARGET_DIR:-$REPO_ROOT/target}"
case "$TARGET_DIR" in /*) ;; *) TARGET_DIR="$REPO_ROOT/$TARGET_DIR" ;; esac

# --- Rust ----------------------------------------------------------------------------------
# Docs are read in two ways, so both must build without a broken link: the public API
# (docs.rs) and the private items the module docs point newcomers to.
rust_docs() {
  RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --workspace -q \
    && RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --workspace --document-private-items -q
}
if [ "${SKIP_RUST_CHECKS:-}" != 1 ]; then
  step "cargo fmt --check" cargo fmt --all -- --check
  step "cargo clippy" cargo clippy --workspace --all-targets -- -D warnings
  step "cargo doc (links)" rust_docs
  step "cargo test" cargo test --workspace
fi

SERVER_OK=1
step "build server" cargo build -p supa-realtime-server || true
[ -x "$TARGET_DIR/debug/supa-realtime-server" ] || SERVER_OK=0
export REALTIME_SERVER_BIN="${REALTIME_SERVER_BIN:-$TARGET_DIR/debug/supa-realtime-server}"

# --- the Python package, as users get it ---------------------------------------------------
# The wheel (maturin build --release, manylinux, abi3) and the sdist are built; the Python
# tests run in a fresh venv holding only the test requirements and that wheel (never a
# develop build). The wheel also goes into .venv, where bench --quick looks for it.
WHEEL_VENV="$REPO_ROOT/.venv-wheel"
PY="$VENV/bin/python"
PY_OK=0
if wheel="$(build_python_dist)"; then
  record "python wheel + sdist" ok
  note "built $(cd "$PY_DIST" && ls supa_realtime-*)"
  if fresh_wheel_venv "$WHEEL_VENV" "$wheel"; then
    PY="$WHEEL_VENV/bin/python"
    PY_OK=1
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check --no-deps --force-reinstall "$wheel" >&2 \
      || note "could not install the wheel into .venv (bench --quick compares what is there)"
  else
    record "fresh venv with the wheel" "FAILED"
  fi
else
  record "python wheel + sdist" "FAILED"
fi
from_wheel() { # the package is imported from the wheel's install, not the source tree
  (cd "$WHEEL_VENV" && "$PY" -c 'import sys, supa_realtime, supa_realtime.server as s
f = supa_realtime.__file__
print("supa_realtime", supa_realtime.__version__, "from", f)
sys.exit(0 if sys.prefix in f and "site-packages" in f else 1)')
}
stubtest() { (cd "$WHEEL_VENV" && "$PY" -m mypy.stubtest supa_realtime._native); }
mypy_strict() {
  (cd "$WHEEL_VENV" && "$PY" -m mypy --strict --no-incremental --cache-dir=/dev/null -p supa_realtime)
}
if [ "$PY_OK" = 1 ]; then
  step "package from the wheel" from_wheel
  step "mypy.stubtest _native" stubtest
  step "mypy --strict supa_realtime" mypy_strict
fi

# --- pytest --------------------------------------------------------------------------------
PYTEST_LOG="$(mktemp -t pytest-XXXXXX.log)"
export INTEROP_LOG_DIR="${INTEROP_LOG_DIR:-$(mktemp -d -t interop-logs-XXXXXX)}"
if [ "$SERVER_OK" = 1 ]; then
  log "pytest tests/ (logs of servers and peers: $INTEROP_LOG_DIR)"
  # shellcheck disable=SC2086
  "$PY" -m pytest tests/ -p no:cacheprovider -rfEs \
    -o asyncio_default_fixture_loop_scope=function ${PYTEST_ARGS:-} 2>&1 | tee "$PYTEST_LOG"
  rc=${PIPESTATUS[0]}
  if [ "$rc" = 0 ]; then record "pytest" ok
  elif [ "$rc" = 5 ]; then record "pytest" "FAILED (no tests collected)"
  else record "pytest" "FAILED (exit $rc)"
  fi
else
  record "pytest" "NOT RUN (server binary missing)"
fi

# --- benchmark harness (quick: small sizes, figures not kept) ------------------------------
if [ "${SKIP_BENCH:-}" != 1 ]; then
  step "bench --quick" bash scripts/bench.sh --quick
fi

# --- summary -------------------------------------------------------------------------------
log "summary ($(( $(date +%s) - START )) s)"
for r in "${RESULTS[@]}"; do note "$r"; done
summary_line="$(grep -E '^=+ .*(passed|failed|error|skipped|no tests ran).* in [0-9.]+s' "$PYTEST_LOG" | tail -n1)"
rm -f "$PYTEST_LOG"
if [ "$FAILED" != 0 ]; then
  note "RESULT: FAILED"
else
  note "RESULT: all steps passed"
fi
[ -n "$summary_line" ] && echo "$summary_line"
exit "$FAILED"
