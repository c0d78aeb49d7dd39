#!/usr/bin/env bash
# Installs keywire into ./.venv from the locked versions in requirements/.
#   bash scripts/install.sh          runtime only (then: .venv/bin/keywire listen)
#   bash scripts/install.sh --test   plus everything the tests use: Debian packages
#                                    (redis-server, nats-server, chromium, firefox-esr, gcc and
#                                    libsodium-dev for the Redis module), the npm peers
#                                    (web/: playwright-core and puppeteer-core, which drive
#                                    those browsers and never download one), test tools
# Works as root on a fresh Debian machine; needs Python >= 3.12 (python3.12/3.13 on PATH,
# under pyenv, or Debian's python3 where it is new enough).
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:-run}

say() { echo "install: $*" >&2; }

apt_install() {
  local missing=()
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  say "apt-get install ${missing[*]}"
  local sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

find_python() {
  local candidates=(python3.12 python3.13)
  local root="${PYENV_ROOT:-$HOME/.pyenv}"
  for v in "$root"/versions/3.12* "$root"/versions/3.13*; do
    [ -x "$v/bin/python" ] && candidates+=("$v/bin/python")
  done
  candidates+=(python3)
  for c in "${candidates[@]}"; do
    if command -v "$c" >/dev/null 2>&1 && "$c" -c 'import sys; assert sys.version_info >= (3, 12)' 2>/dev/null; then
      command -v "$c"; return 0
    fi
  done
  return 1
}

PY=$(find_python) || {
  say "no Python >= 3.12 found; trying Debian's python3"
  apt_install python3 python3-venv
  PY=$(find_python) || { say "keywire needs Python >= 3.12 (install python3.12 or newer)"; exit 2; }
}

if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c 'import sys; assert sys.version_info >= (3, 12)' 2>/dev/null; then
  say "creating .venv with $PY"
  rm -rf .venv
  "$PY" -m venv .venv 2>/dev/null || { apt_install python3-venv; "$PY" -m venv .venv; }
fi

lock=requirements/run.lock
[ "$mode" = "--test" ] && lock=requirements/test.lock
say "pip install -r $lock"
.venv/bin/python -m pip install -q --disable-pip-version-check -r "$lock"
.venv/bin/python -m pip install -q --disable-pip-version-check --no-deps -e .

if [ "$mode" = "--test" ]; then
  apt_install redis-server nats-server chromium firefox-esr ca-certificates golang-go golang-github-hashicorp-yamux-dev socat iproute2 nftables gcc libc6-dev libsodium-dev
  # keywire's Redis module (KEYWIRE.PUT checks signed store puts); the tests build their own
  # copy too, this one is for redis-server --loadmodule
  say "Redis module: $(.venv/bin/python -m keywire.store.redismodule build)"
  command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1 || apt_install nodejs npm
  for dir in tests/interop/npm web; do
    if [ -f "$dir/package-lock.json" ]; then
      say "npm ci in $dir"
      (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
    fi
  done
fi
say "done: $(.venv/bin/keywire --version)"
