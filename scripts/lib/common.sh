# shellcheck shell=bash
# Shared helpers for scripts/test.sh and scripts/run.sh. Source it; do not run it.
#
# Everything installs idempotently: a second run only checks.

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV="$REPO_ROOT/.venv"

log() { printf '\n==> %s\n' "$*" >&2; }
note() { printf '    %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

have() { command -v "$1" >/dev/null 2>&1; }

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"
  elif have sudo; then sudo "$@"
  else die "need root to run: $*"
  fi
}

_APT_UPDATED=0
apt_install() {
  # apt_install pkg... : installs the missing ones only.
  local missing=()
  local p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [ "${#missing[@]}" -eq 0 ] && return 0
  have apt-get || die "apt-get not found; install ${missing[*]} by hand"
  if [ "$_APT_UPDATED" = 0 ]; then
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
    _APT_UPDATED=1
  fi
  note "apt-get install ${missing[*]}"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
}

ensure_base_tools() {
  local pkgs=()
  have curl || pkgs+=(curl)
  have git || pkgs+=(git)
  have cc || pkgs+=(gcc libc6-dev)
  have pkg-config || pkgs+=(pkg-config)
  [ "${#pkgs[@]}" -gt 0 ] && apt_install ca-certificates "${pkgs[@]}"
  have cargo || die "cargo (Rust toolchain) not found: install it with rustup first"
  return 0
}

ensure_node() {
  if ! have node || ! have npm; then
    log "installing Node.js and npm (apt)"
    apt_install nodejs npm
  fi
  local major
  major="$(node -p 'process.versions.node.split(".")[0]')"
  [ "$major" -ge 18 ] || die "Node.js >= 18 needed (found $(node --version))"
}

# npm ci in interop/ unless node_modules already matches package-lock.json.
ensure_interop_node_modules() {
  ensure_node
  local dir="$REPO_ROOT/interop"
  local stamp="$dir/node_modules/.interop-lock.sha256"
  local want
  want="$(sha256sum "$dir/package-lock.json" | cut -d' ' -f1)"
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -d "$dir/node_modules/@supabase/realtime-js" ]; then
    return 0
  fi
  log "npm ci (interop/)"
  (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error) >&2
  echo "$want" >"$stamp"
}

# Debian's redis-server (7.0) for cluster mode and its tests. The tests start private
# instances on free ports; scripts/redis.sh runs a long-lived one for manual clusters.
ensure_redis() {
  have redis-server && have redis-cli && return 0
  log "installing redis-server (apt)"
  apt_install redis-server redis-tools
  # Debian starts a system-wide instance on 6379; the project never uses it.
}

ensure_python_venv() {
  local py="${PYTHON:-python3}"
  have "$py" || apt_install python3
  if ! "$py" -c 'import venv, ensurepip' >/dev/null 2>&1; then
    apt_install python3-venv
  fi
  if [ ! -x "$VENV/bin/python" ]; then
    log "creating Python venv at .venv"
    "$py" -m venv "$VENV" >&2
  fi
  local stamp="$VENV/.requirements-test.sha256"
  local want
  want="$(sha256sum "$REPO_ROOT/requirements-test.txt" | cut -d' ' -f1)"
  if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    log "pip install -r requirements-test.txt"
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check -r "$REPO_ROOT/requirements-test.txt" >&2
    echo "$want" >"$stamp"
  fi
}

# The Python package as users get it: `maturin build --release` (the abi3 wheel, tagged
# manylinux) and `maturin sdist`, into $PY_DIST (emptied first). Prints the wheel's path.
PY_DIST="${CARGO_TARGET_DIR:-$REPO_ROOT/target}/wheels"
case "$PY_DIST" in /*) ;; *) PY_DIST="$REPO_ROOT/$PY_DIST" ;; esac
build_python_dist() {
  mkdir -p "$PY_DIST"
  rm -f "$PY_DIST"/supa_realtime-*
  log "building the Python wheel and sdist (maturin build --release, maturin sdist)"
  (cd "$REPO_ROOT" && "$VENV/bin/maturin" build --release --quiet --out "$PY_DIST" >&2) || return 1
  (cd "$REPO_ROOT" && "$VENV/bin/maturin" sdist --out "$PY_DIST" >&2) || return 1
  local wheel
  wheel="$(ls "$PY_DIST"/supa_realtime-*-abi3-manylinux*.whl 2>/dev/null | head -n1)"
  [ -n "$wheel" ] || { note "no manylinux abi3 wheel in $PY_DIST: $(ls "$PY_DIST")"; return 1; }
  local sdist
  sdist="$(ls "$PY_DIST"/supa_realtime-*.tar.gz 2>/dev/null | head -n1)"
  [ -n "$sdist" ] || { note "no sdist in $PY_DIST"; return 1; }
  # The sdist must build on its own: the server crate the module links is inside it.
  # (The listing is read whole first: `tar | grep -q` fails under pipefail when grep stops
  # reading early and tar gets SIGPIPE.)
  local listing
  listing="$(tar tzf "$sdist")" || { note "cannot read the sdist $sdist"; return 1; }
  grep -q '/crates/server/src/lib.rs$' <<<"$listing" \
    || { note "the sdist lacks crates/server (the server linked into the module)"; return 1; }
  echo "$wheel"
}

# A fresh venv ($1) with the test requirements and the built wheel ($2) installed, nothing
# else: the Python tests run against what a user's `pip install` gets.
fresh_wheel_venv() {
  local dir="$1" wheel="$2" py="${PYTHON:-python3}"
  log "fresh venv $dir with the built wheel $(basename "$wheel")"
  "$py" -m venv --clear "$dir" >&2 || return 1
  "$dir/bin/python" -m pip install -q --disable-pip-version-check -r "$REPO_ROOT/requirements-test.txt" "$wheel" >&2
}

# The repo's own Python package (crates/python, built with maturin), once it exists.
ensure_python_package() {
  [ -f "$REPO_ROOT/pyproject.toml" ] || return 0
  log "building the Python package (maturin develop, the root pyproject.toml)"
  (cd "$REPO_ROOT" && VIRTUAL_ENV="$VENV" PATH="$VENV/bin:$PATH" \
    "$VENV/bin/maturin" develop --quiet >&2)
}
