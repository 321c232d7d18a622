#!/usr/bin/env bash
# The main job end to end on the embedded default (SQLite, local files, synthetic portraits):
# set up .venv, synthesise portraits (10% labelled), make a workspace, ingest, and show the state.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export QT_QPA_PLATFORM=offscreen
DEMO="${DEMO_DIR:-demo}"
N_LABELLED="${DEMO_LABELLED:-40}"
N_UNLABELLED="${DEMO_UNLABELLED:-360}"
dataeng() { .venv/bin/dataeng "$@"; }

rm -rf "$DEMO"
echo "== 1. synthetic portraits: $N_LABELLED labelled, $N_UNLABELLED unlabelled"
dataeng synth "$DEMO/data" --n "$N_LABELLED" --unlabeled "$N_UNLABELLED" --seed 0 --min-size 96 --max-size 256

echo "== 2. workspace"
dataeng init "$DEMO/ws" --classes person
export DATAENG_WORKSPACE="$DEMO/ws"

echo "== 3. ingest: labelled images with their masks and mattes, and the unlabelled pool"
dataeng ingest "$DEMO/data/images" "$DEMO/data/masks" "$DEMO/data/alpha" "$DEMO/data/unlabeled"

echo "== 4. status"
dataeng status
dataeng doctor --quick

echo
echo "results: workspace $DEMO/ws (registry $DEMO/ws/registry.db, store $DEMO/ws/store)"
