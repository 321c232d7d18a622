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

# The main venv, then (--interop) two side venvs; the side ones install in the background while the
# main one does (each is its own pip and its own folder), which halves a fresh setup's wall time.
install_main() {
    local stamp=".venv/.dataeng-installed" want
    want="$(sha256sum pyproject.toml | cut -d' ' -f1)"
    if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
        echo "setup: installing dataeng and its dependencies into .venv (first time: a few minutes)"
        .venv/bin/python -m pip install --quiet --upgrade pip >/dev/null 2>&1 || true
        .venv/bin/python -m pip install --quiet -e ".[dev,mediapipe,labelstudio]" 2>&1 | grep -v "^WARNING: Location" || true
        .venv/bin/python -c "import dataeng, torch, segmentation_models_pytorch, label_studio_sdk" \
            || { echo "setup: install failed"; return 1; }
        echo "$want" > "$stamp"
    fi
}

# The third-party readers the interop tests load exports with (Supervisely SDK, FiftyOne, datumaro).
install_interop() {
    if [ ! -x .venv-interop/bin/python ]; then
        "$PYTHON" -m venv .venv-interop
    fi
    local istamp=".venv-interop/.installed" iwant
    iwant="$(sha256sum requirements/interop.txt | cut -d' ' -f1)"
    if [ ! -f "$istamp" ] || [ "$(cat "$istamp")" != "$iwant" ]; then
        echo "setup: installing the interop readers into .venv-interop (in the background; log: .venv-interop/pip.log)"
        if ! .venv-interop/bin/python -m pip install --quiet -r requirements/interop.txt >.venv-interop/pip.log 2>&1 \
                || ! .venv-interop/bin/python -c "import supervisely, fiftyone, datumaro, pycocotools"; then
            echo "setup: interop install failed:"; tail -n 20 .venv-interop/pip.log; return 1
        fi
        echo "$iwant" > "$istamp"
    fi
}

# The Label Studio server of tests/engine/review/test_labelstudio.py (Django: its own venv too). A server
# that cannot be installed (no network, no wheel for this platform) does not stop the setup: the reason
# goes to .venv-labelstudio/.install-failed and the Label Studio server tests skip, naming it.
install_labelstudio() {
    if [ ! -x .venv-labelstudio/bin/python ]; then
        "$PYTHON" -m venv .venv-labelstudio
    fi
    local lstamp=".venv-labelstudio/.installed" lfailed=".venv-labelstudio/.install-failed" lwant reason
    lwant="$(sha256sum requirements/labelstudio.txt | cut -d' ' -f1)"
    if [ ! -f "$lstamp" ] || [ "$(cat "$lstamp")" != "$lwant" ]; then
        echo "setup: installing the Label Studio server into .venv-labelstudio (in the background)"
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
}

if [ "${1:-}" = "--interop" ]; then
    install_interop & interop=$!
    install_labelstudio & labelstudio=$!
    status=0
    install_main || status=1
    wait "$interop" || status=1
    wait "$labelstudio" || true
    exit "$status"
fi
install_main
