#!/usr/bin/env bash
# The test command: set up .venv, then lint, type-check and run the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --interop
export DATAENG_REQUIRE_INTEROP=1  # the interop tests must run here, not skip
export QT_QPA_PLATFORM=offscreen
echo "== ruff"
.venv/bin/ruff check dataeng tests scripts
echo "== mypy"
.venv/bin/mypy dataeng
echo "== pytest"
.venv/bin/python -m pytest -q -p no:cacheprovider "$@"
