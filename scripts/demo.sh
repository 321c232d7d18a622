#!/usr/bin/env bash
# The main job end to end on the embedded default (SQLite, local files, synthetic portraits):
# synthesise portraits, ingest them, label the evaluation sets (a scripted annotator through the
# review loop), train a supervised teacher, run two pseudo-label rounds, send the 5 most uncertain
# masks to Labelme and import scripted corrections, run one more round, export the best model to
# ONNX, cut out three portraits, write the report and print what the rounds gained.
#
#   DEMO_DATA=DIR      a folder of images/ + masks/ (+ unlabeled/) instead of synthetic portraits,
#                      e.g. ../shared/benchmarks/ccp
#   DEMO_TEACHER=mediapipe   start from MediaPipe's selfie segmentation instead of a trained teacher
#   DEMO_DIR, DEMO_LABELLED, DEMO_UNLABELLED, DEMO_SIZE, DEMO_TEACHER_BUDGET, DEMO_BUDGET, DEMO_ROUNDS:
#                      see the README.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export QT_QPA_PLATFORM=offscreen COLUMNS="${COLUMNS:-160}"
# PyTorch's compute threads leave one core to the data-loading worker: on a 2-core machine shared with
# any other job, two spinning OpenMP threads slowed training 5 to 30 times (on a quiet one they are 1.4x
# faster: set OMP_NUM_THREADS=2 there; docs/BENCHMARKS.md, "Train").
cores="$(nproc 2>/dev/null || echo 2)"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-$(( cores > 2 ? cores - 1 : 1 ))}"
DEMO="${DEMO_DIR:-demo}"
DATA="${DEMO_DATA:-}"
TEACHER="${DEMO_TEACHER:-}"
N_LABELLED="${DEMO_LABELLED:-80}"
N_UNLABELLED="${DEMO_UNLABELLED:-520}"
SIZE="${DEMO_SIZE:-64}"
TEACHER_BUDGET="${DEMO_TEACHER_BUDGET:-10000}"  # training images seen by the supervised teacher
BUDGET="${DEMO_BUDGET:-4000}"  # ... and by each student, which starts from its teacher's weights
ROUNDS="${DEMO_ROUNDS:-2}"
dataeng() { .venv/bin/dataeng "$@"; }
python() { .venv/bin/python "$@"; }

rm -rf "$DEMO"
mkdir -p "$DEMO"
if [ -z "$DATA" ]; then
    echo "== 1. synthetic portraits: $N_LABELLED labelled, $N_UNLABELLED unlabelled (their truth kept aside)"
    dataeng synth "$DEMO/data" --n "$N_LABELLED" --unlabeled "$N_UNLABELLED" --seed 0 --min-size 64 --max-size 192
    DATA="$DEMO/data"
    TRUTH="$DEMO/data/truth/masks"
else
    echo "== 1. your data: $DATA (images/ + masks/, unlabeled/ if present)"
    for sub in images masks; do
        [ -d "$DATA/$sub" ] || { echo "demo: $DATA/$sub: no such folder (DEMO_DATA needs images/ and masks/)"; exit 1; }
    done
    TRUTH=""
fi

echo "== 2. workspace (a small CPU-friendly model: unet/mobilenetv3 at $SIZE px, students warm-started)"
dataeng init "$DEMO/ws" --classes person
export DATAENG_WORKSPACE="$DEMO/ws"
sed -i -e "s/^image_size = .*/image_size = [$SIZE, $SIZE]/" -e 's/^encoder = .*/encoder = "tu-mobilenetv3_small_100"/' \
       -e 's/^lr = .*/lr = 0.003/' -e 's/^num_workers = .*/num_workers = 1/' -e 's/^val_every = .*/val_every = 1000/' \
       -e 's/^warm_start = .*/warm_start = true/' -e 's/^pixel_threshold = .*/pixel_threshold = 0.85/' \
       "$DEMO/ws/dataeng.toml"
# A CPU budget is compute-bound: a small model, the teacher at a high learning rate (0.008), students
# that continue from their teacher instead of starting over, at a fine-tuning rate (0.003), and
# validation every 1,000 images seen (with few labels an epoch is tiny). A teacher trained for minutes is seldom 95% sure of a pixel (the default threshold,
# for real models); the demo trusts pixels at 85%. The accept rules are the defaults.

echo "== 3. ingest: labelled images with their masks (and mattes), and the unlabelled pool"
inputs=("$DATA/images" "$DATA/masks")
[ -d "$DATA/alpha" ] && inputs+=("$DATA/alpha")
[ -d "$DATA/unlabeled" ] && inputs+=("$DATA/unlabeled")
dataeng ingest "${inputs[@]}"

if [ -n "$TRUTH" ]; then
    echo "== 4. label the evaluation sets: every val/test image without a label goes to a (scripted) annotator"
    # Real teams label their held-out sets first, so every test figure below rests on dozens of images.
    dataeng review export "$DEMO/eval" --format labelme --queue eval --limit 100000
    python scripts/demo_correct.py "$DEMO/eval" "$TRUTH"
    dataeng review import "$DEMO/eval"
fi
dataeng status

if [ "$TEACHER" = "mediapipe" ]; then
    echo "== 5. the teacher: MediaPipe selfie segmentation, scored on val and test"
    dataeng evaluate mediapipe --split val
    dataeng evaluate mediapipe --split test
    first=(--teacher mediapipe)
else
    echo "== 5. train a supervised teacher on the human labels (test metrics below)"
    dataeng train --seed 0 --sample-budget "$TEACHER_BUDGET" --lr 0.008
    first=()
fi

echo "== 6. pseudo-label rounds ($ROUNDS): the teacher labels the pool, a student trains on human + accepted"
dataeng round --rounds "$ROUNDS" --sample-budget "$BUDGET" "${first[@]}"

echo "== 7. review: the 5 most uncertain masks to Labelme, pre-filled"
dataeng review export "$DEMO/review" --format labelme --queue uncertain --limit 5
if [ -n "$TRUTH" ] && [ -f "$DEMO/review/manifest.json" ]; then
    # An annotator would run: labelme "$DEMO/review" --flags reviewed
    cp -r "$DEMO/review" "$DEMO/review-as-sent"  # the pre-fills as sent, for the summary
    python scripts/demo_correct.py "$DEMO/review" "$TRUTH"
    dataeng review import "$DEMO/review"
    echo "   and one more round with the corrections"
    dataeng round --rounds 1 --sample-budget "$BUDGET"
fi

echo "== 8. export the best model to ONNX and cut out three portraits with it"
model=best
if [ "$TEACHER" = "mediapipe" ]; then
    # MediaPipe is no dataeng model: when no student beat it, the newest student is what there is to export.
    model=newest
    echo "   (MediaPipe cannot be exported by dataeng: the newest student is exported and cuts out instead)"
fi
dataeng export model "$model" --onnx "$DEMO/model.onnx" --dynamic
mkdir -p "$DEMO/three"
if [ -d "$DATA/unlabeled" ]; then pool=("$DATA"/unlabeled/*); else pool=("$DATA"/images/*); fi
cp "${pool[@]:0:3}" "$DEMO/three/"  # no `ls | head`: under pipefail its SIGPIPE can fail the demo
dataeng predict "$DEMO/three" --onnx "$DEMO/model.onnx" --as cutout --out "$DEMO/cutouts"
python scripts/demo_strip.py "$DEMO/three" "$DEMO/cutouts" "$DEMO/cutouts.png"

echo "== 9. report"
dataeng report --out "$DEMO/report"
dataeng doctor --quick
python scripts/demo_summary.py "$DEMO"

echo
echo "results:"
echo "  workspace      $DEMO/ws   (registry.db, store/, runs/)"
echo "  review         $DEMO/review  (Labelme files sent to annotators: labelme $DEMO/review --flags reviewed)"
echo "  report         $DEMO/report/report.html  and report.json"
echo "  ONNX model     $DEMO/model.onnx"
echo "  cutouts        $DEMO/cutouts/  and $DEMO/cutouts.png (each photo beside its cutout)"
echo "  summary        $DEMO/summary.json"
