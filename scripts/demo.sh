#!/usr/bin/env bash
# The main job end to end on the embedded default (SQLite, local files, synthetic portraits):
# synthesise portraits with 10% labelled, ingest them, train a teacher, run two
# pseudo-label rounds, send the 5 most uncertain masks to Labelme and import scripted
# corrections, run one more round, export the best model to ONNX, cut out three
# portraits, write the report.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export QT_QPA_PLATFORM=offscreen COLUMNS="${COLUMNS:-160}"
DEMO="${DEMO_DIR:-demo}"
N_LABELLED="${DEMO_LABELLED:-40}"
N_UNLABELLED="${DEMO_UNLABELLED:-360}"
BUDGET="${DEMO_BUDGET:-3000}"  # training images seen by every model (--sample-budget)
dataeng() { .venv/bin/dataeng "$@"; }

rm -rf "$DEMO"
echo "== 1. synthetic portraits: $N_LABELLED labelled, $N_UNLABELLED unlabelled"
dataeng synth "$DEMO/data" --n "$N_LABELLED" --unlabeled "$N_UNLABELLED" --seed 0 --min-size 64 --max-size 192

echo "== 2. workspace (a small CPU-friendly model: unet/mobilenetv3 at 96 px)"
dataeng init "$DEMO/ws" --classes person
export DATAENG_WORKSPACE="$DEMO/ws"
sed -i -e 's/^image_size = .*/image_size = [96, 96]/' -e 's/^encoder = .*/encoder = "tu-mobilenetv3_small_100"/' \
       -e 's/^lr = .*/lr = 0.003/' -e 's/^num_workers = .*/num_workers = 1/' \
       -e 's/^pixel_threshold = .*/pixel_threshold = 0.85/' "$DEMO/ws/dataeng.toml"
# A teacher trained in two minutes on 24 CPU-sized images is seldom 95% sure of a pixel (the
# default threshold, for real models); the demo trusts pixels at 85%. The accept rules are the defaults.

echo "== 3. ingest: labelled images with their masks and mattes, and the unlabelled pool"
dataeng ingest "$DEMO/data/images" "$DEMO/data/masks" "$DEMO/data/alpha" "$DEMO/data/unlabeled"
dataeng status

echo "== 4. train a supervised teacher on the human labels (test metrics below)"
dataeng train --seed 0 --sample-budget "$BUDGET"

echo "== 5. two pseudo-label rounds: teacher labels the pool, a student trains on human + accepted"
dataeng round --rounds 2 --sample-budget "$BUDGET"

echo "== 6. review: the 5 most uncertain masks to Labelme, scripted corrections back, one more round"
dataeng review export "$DEMO/review" --format labelme --queue uncertain --limit 5
if [ -f "$DEMO/review/manifest.json" ]; then
    # An annotator would run: labelme "$DEMO/review" --flags reviewed
    .venv/bin/python scripts/demo_correct.py "$DEMO/review" "$DEMO/data/truth/masks"
    dataeng review import "$DEMO/review"
    dataeng round --rounds 1 --sample-budget "$BUDGET"
fi

echo "== 7. export the best model to ONNX and cut out three portraits with it"
dataeng export model best --onnx "$DEMO/model.onnx" --dynamic
mkdir -p "$DEMO/three"
pool=("$DEMO"/data/unlabeled/*.jpg)  # no `ls | head`: under pipefail its SIGPIPE can fail the demo
cp "${pool[@]:0:3}" "$DEMO/three/"
dataeng predict "$DEMO/three" --onnx "$DEMO/model.onnx" --as cutout --out "$DEMO/cutouts"

echo "== 8. report"
dataeng report --out "$DEMO/report"
dataeng doctor --quick

echo
echo "results:"
echo "  workspace      $DEMO/ws   (registry.db, store/, runs/)"
echo "  review         $DEMO/review  (Labelme files sent to annotators: labelme $DEMO/review --flags reviewed)"
echo "  report         $DEMO/report/report.html  and report.json"
echo "  ONNX model     $DEMO/model.onnx"
echo "  cutouts        $DEMO/cutouts/"
