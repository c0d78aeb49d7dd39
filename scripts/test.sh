#!/usr/bin/env bash
# Installs everything the tests need (scripts/install.sh --test), then lints, type-checks and
# runs the whole test suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh --test
echo "test: ruff" >&2
.venv/bin/ruff check src tests bench
echo "test: mypy" >&2
.venv/bin/mypy
echo "test: pytest" >&2
.venv/bin/python -m pytest "$@"
