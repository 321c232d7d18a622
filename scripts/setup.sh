#!/usr/bin/env bash
# Create or refresh .venv in the checkout with dataeng and its dev tools.
# Re-running is cheap: pip runs again only when pyproject.toml changed.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
if [ ! -x .venv/bin/python ]; then
    echo "setup: creating .venv with $($PYTHON --version)"
    "$PYTHON" -m venv .venv
fi
stamp=".venv/.dataeng-installed"
want="$(sha256sum pyproject.toml | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    echo "setup: installing dataeng and its dependencies into .venv (first time: a few minutes)"
    .venv/bin/python -m pip install --quiet --upgrade pip >/dev/null 2>&1 || true
    .venv/bin/python -m pip install --quiet -e ".[dev,mediapipe]" 2>&1 | grep -v "^WARNING: Location" || true
    .venv/bin/python -c "import dataeng, torch, segmentation_models_pytorch" \
        || { echo "setup: install failed"; exit 1; }
    echo "$want" > "$stamp"
fi

# --interop: the third-party readers the interop tests load exports with, in their own venv.
if [ "${1:-}" = "--interop" ]; then
    if [ ! -x .venv-interop/bin/python ]; then
        echo "setup: creating .venv-interop (Supervisely SDK, FiftyOne, datumaro) for the interop tests"
        "$PYTHON" -m venv .venv-interop
    fi
    istamp=".venv-interop/.installed"
    iwant="$(sha256sum requirements/interop.txt | cut -d' ' -f1)"
    if [ ! -f "$istamp" ] || [ "$(cat "$istamp")" != "$iwant" ]; then
        echo "setup: installing the interop readers into .venv-interop (first time: about 2 minutes)"
        .venv-interop/bin/python -m pip install --quiet -r requirements/interop.txt 2>&1 \
            | grep -v "^WARNING: Location" || true
        .venv-interop/bin/python -c "import supervisely, fiftyone, datumaro, pycocotools" \
            || { echo "setup: interop install failed"; exit 1; }
        echo "$iwant" > "$istamp"
    fi
fi
