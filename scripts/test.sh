#!/usr/bin/env bash
# Installs everything the tests need (scripts/install.sh --test), then lints, checks the
# formatting, type-checks, checks the layering contract and runs the whole test suite with
# coverage on Python 3.12; then the conformance suite and the core tests again on Python 3.13.
# Extra arguments go to the main pytest run.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh --test
echo "test: ruff check" >&2
.venv/bin/ruff check src tests bench
echo "test: ruff format --check" >&2
.venv/bin/ruff format --check src tests bench
echo "test: mypy" >&2
.venv/bin/mypy
echo "test: lint-imports (.importlinter)" >&2
.venv/bin/lint-imports --no-cache
echo "test: pytest with coverage ($(.venv/bin/python -V))" >&2
.venv/bin/python -m pytest --cov --cov-report=term "$@"

# The same contract on the next Python: a second venv from the same lock.
py313=""
for c in python3.13 "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.13*/bin/python; do
  if command -v "$c" >/dev/null 2>&1 && "$c" -c 'import sys; assert sys.version_info[:2] == (3, 13)' 2>/dev/null; then
    py313=$(command -v "$c"); break
  fi
done
if [ -z "$py313" ]; then
  echo "test: no Python 3.13 on this machine (python3.13 on PATH or under pyenv): the 3.13 run did not happen" >&2
  exit 1
fi
if [ ! -x .venv-3.13/bin/python ]; then
  "$py313" -m venv .venv-3.13
fi
.venv-3.13/bin/python -m pip install -q --disable-pip-version-check -r requirements/test.lock
.venv-3.13/bin/python -m pip install -q --disable-pip-version-check --no-deps -e .
echo "test: pytest on $(.venv-3.13/bin/python -V): conformance suite and core" >&2
.venv-3.13/bin/python -m pytest tests/contract tests/core tests/mux tests/shs
