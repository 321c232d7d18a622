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
    .venv/bin/python -m pip install --quiet -e ".[dev,mediapipe,labelstudio]" 2>&1 | grep -v "^WARNING: Location" || true
    .venv/bin/python -c "import dataeng, torch, segmentation_models_pytorch, label_studio_sdk" \
        || { echo "setup: install failed"; exit 1; }
    echo "$want" > "$stamp"
fi

# --interop: the third-party readers the interop tests load exports with, and the Label Studio server,
# each in its own venv.
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
    # The Label Studio server of tests/engine/review/test_labelstudio.py (Django: its own venv too).
    if [ ! -x .venv-labelstudio/bin/python ]; then
        echo "setup: creating .venv-labelstudio (the Label Studio server) for the Label Studio tests"
        "$PYTHON" -m venv .venv-labelstudio
    fi
    # A server that cannot be installed (no network, no wheel for this platform) does not stop the setup: the
    # reason goes to .venv-labelstudio/.install-failed and the Label Studio server tests skip, naming it.
    lstamp=".venv-labelstudio/.installed"
    lfailed=".venv-labelstudio/.install-failed"
    lwant="$(sha256sum requirements/labelstudio.txt | cut -d' ' -f1)"
    if [ ! -f "$lstamp" ] || [ "$(cat "$lstamp")" != "$lwant" ]; then
        echo "setup: installing the Label Studio server into .venv-labelstudio (first time: about a minute)"
        rm -f "$lstamp" "$lfailed"
        if .venv-labelstudio/bin/python -m pip install --quiet -r requirements/labelstudio.txt \
                >.venv-labelstudio/pip.log 2>&1 && .venv-labelstudio/bin/python -c "import label_studio" \
                && [ -x .venv-labelstudio/bin/label-studio ]; then
            echo "$lwant" > "$lstamp"
        else
            reason="$(grep -E '^ERROR' .venv-labelstudio/pip.log | tail -n 1 || true)"
            echo "pip install -r requirements/labelstudio.txt failed: ${reason:-see .venv-labelstudio/pip.log}" \
                > "$lfailed"
            echo "setup: WARNING: the Label Studio server could not be installed; its tests will skip: $(cat "$lfailed")"
        fi
    fi
fi
