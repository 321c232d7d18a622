#!/usr/bin/env bash
# The test command: set up .venv, then lint, type-check and run the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --interop
# The PostgreSQL registry tests start their own throwaway server (tests/pg.py) from Debian's binaries.
if ! command -v initdb >/dev/null 2>&1 && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
    echo "== installing postgresql (server binaries for the registry tests)"
    sudo_=""; [ "$(id -u)" -eq 0 ] || sudo_="sudo"
    $sudo_ env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    $sudo_ env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql >/dev/null
fi
export DATAENG_REQUIRE_INTEROP=1  # the interop tests must run here, not skip
export QT_QPA_PLATFORM=offscreen
echo "== ruff"
.venv/bin/ruff check dataeng tests scripts
echo "== mypy"
.venv/bin/mypy dataeng
echo "== pytest"
.venv/bin/python -m pytest -q -p no:cacheprovider "$@"
