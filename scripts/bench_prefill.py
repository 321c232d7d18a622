"""Benchmark: review pre-fills before and after the tracing limits (``[review]``, issue 17).

Usage:
    OMP_NUM_THREADS=1 .venv/bin/python scripts/bench_prefill.py [--synth 40] [--synth-large 10]
        [--ccp ../shared/benchmarks/ccp] [--ccp-n 100] [--out /tmp/bench_prefill] [--json FILE]

Each pre-label is written as a Labelme pre-fill twice, through the same writer the review
export uses: ``before`` = the conversion tracing (:func:`dataeng.annotation.trace.trace`,
default tolerance, every region), ``after`` = :class:`~dataeng.annotation.trace.TraceLimits`
at their defaults. The file is read back and drawn as the review export draws a pre-fill.
Per pre-fill: the shapes in the file, their vertices, and the foreground IoU of the drawn
pre-fill with the pre-label (outside the pre-label's ignore pixels); where a ground truth
exists, the IoU with the truth too. The table gives medians (and the worst IoU). Vertices
are counted over every shape of the file; ``max_vertices`` caps each class, so a pre-fill with
``__ignore__`` shapes may hold more than the cap in all.

Pre-labels:

- ``synth``: synthetic portraits (:func:`dataeng.engine.synth.generate`, what ``dataeng synth``
  writes): at the demo's sizes (64-192 px a side, scripts/demo.sh), 256x256 and
  (``--synth-large``) 1024x1024. Their pre-labels imitate a teacher: the truth blurred plus
  smooth and fine random noise gives a probability; the class is p >= 0.5 and the
  pseudo-label's ignore is confidence < 0.95 (``[pseudolabel] pixel_threshold``). No model
  is trained: a teacher tiny enough for this script would be as noisy, only slower.
- ``ccp``: the first ``--ccp-n`` CCP photos (../shared/benchmarks/ccp, Clothing
  Co-Parsing, Apache-2.0), pre-labelled by the MediaPipe selfie-segmentation teacher
  (``mediapipe`` in .venv; the table skips CCP when it or the data is absent).

Two kinds per source: ``filled`` (the class mask, as the uncertain queue sends it when the
teacher can fill its unsure pixels, and as the eval queue sends a prediction) and
``+ignore`` (the pseudo-label with its unsure pixels as ignore, as sent without the
teacher's checkpoint).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    from dataeng.annotation.trace import TraceLimits

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CCP = ROOT.parent / "shared" / "benchmarks" / "ccp"
PIXEL_THRESHOLD = 0.95
SPECKS = 12
"""Confident islands and holes per synthetic pre-label (and a third as many unsure blobs of each side)."""


@dataclass(frozen=True)
class PreLabel:
    name: str
    prelabel: np.ndarray
    truth: np.ndarray | None


@dataclass(frozen=True)
class Measure:
    shapes: int
    vertices: int
    iou: float
    truth_iou: float | None
    seconds: float


def _iou(a: np.ndarray, b: np.ndarray, care: np.ndarray) -> float:
    a, b = a & care, b & care
    union = int(np.count_nonzero(a | b))
    return 1.0 if union == 0 else int(np.count_nonzero(a & b)) / union


def pseudo_label(prob: np.ndarray, ignore: bool) -> np.ndarray:
    """The class mask of a person probability, with its unsure pixels as ignore when asked."""
    from dataeng.annotation.types import IGNORE_INDEX

    mask = (prob >= 0.5).astype(np.uint8)
    if ignore:
        mask[np.maximum(prob, 1 - prob) < PIXEL_THRESHOLD] = IGNORE_INDEX
    return mask


def noisy_probability(truth: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A teacher-like person probability around a true mask: an edge that wanders (smooth
    noise on the signed distance to the boundary, a few pixels), confident errors (specks:
    islands and holes, 1-4 px at 256) and unsure blobs (p 0.3-0.7), all over the image."""
    import cv2

    h, w = truth.shape
    scale = max(h, w) / 256
    inside = cv2.distanceTransform(truth.astype(np.uint8), cv2.DIST_L2, 3)
    outside = cv2.distanceTransform((~truth).astype(np.uint8), cv2.DIST_L2, 3)
    signed = np.where(truth, inside, -outside)
    wander = cv2.GaussianBlur(rng.standard_normal((h, w)).astype(np.float32), (0, 0), 8 * scale)
    wander *= 2.0 * scale / (wander.std() + 1e-6)
    prob = 1.0 / (1.0 + np.exp(-np.clip((signed + wander) / (0.8 * scale), -50, 50)))
    yy, xx = np.mgrid[:h, :w]
    for value, count in ((0.98, SPECKS), (0.02, SPECKS), (0.65, SPECKS // 3), (0.35, SPECKS // 3)):
        for _ in range(count):
            cx, cy = rng.uniform(0, w), rng.uniform(0, h)
            radius = rng.uniform(1.0, 4.0 if value in (0.98, 0.02) else 6.0) * scale
            disc = (xx - cx) ** 2 + (yy - cy) ** 2 <= radius**2
            # Islands fall outside the person, holes inside; unsure blobs anywhere.
            if value == 0.98:
                disc &= ~truth
            elif value == 0.02:
                disc &= truth
            prob[disc] = value
    return prob.astype(np.float32)


def synth_prelabels(out: Path, n: int, sizes: tuple[int, int],
                    seed: int) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    from dataeng.engine.synth import generate

    summary = generate(out, n=n, seed=seed, size_range=sizes, labelme=False)
    for k, name in enumerate(summary.names):
        truth = np.asarray(Image.open(out / "masks" / f"{name}.png")) == 1
        if not truth.any():
            continue
        yield name, truth, noisy_probability(truth, np.random.default_rng([seed, k]))


def ccp_prelabels(data: Path, n: int) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    from dataeng.engine.learn.data import eval_loader
    from dataeng.engine.learn.samples import Sample
    from dataeng.models.inference import predict_batches
    from dataeng.models.teachers import external_teacher, parse_spec

    spec = parse_spec("mediapipe")
    if spec is None:
        raise SystemExit("mediapipe is not a known teacher name")
    teacher = external_teacher(spec, ["person"])
    predictor = teacher.predictor()
    images = sorted((data / "images").glob("*.jpg"))[:n]
    samples = [Sample(image_path=p, image_id=k) for k, p in enumerate(images)]
    loader = eval_loader(samples, teacher.identity().image_size, 8, 0)
    for item, probs in predict_batches(predictor, loader, "flip"):
        if probs is None:
            continue
        path = images[item["index"]]
        truth = np.asarray(Image.open(data / "masks" / f"{path.stem}.png")) > 0
        yield path.stem, truth, probs[1]


def measure(pre: PreLabel, limits: TraceLimits | None, folder: Path) -> Measure:
    from dataeng.annotation.formats import labelme
    from dataeng.annotation.rasterize import rasterize
    from dataeng.annotation.types import IGNORE_INDEX, ExportRecord, LabelMap

    label_map = LabelMap(["person"])
    h, w = pre.prelabel.shape
    record = ExportRecord(f"{pre.name}.jpg", w, h, pre.prelabel)
    start = time.perf_counter()
    (path,) = labelme.write(folder, [record], label_map, limits=limits, copy_images=False)
    seconds = time.perf_counter() - start
    shapes = json.loads(path.read_text())["shapes"]
    annotation = labelme.read_file(path, folder)[0]
    drawn = rasterize(annotation, label_map, w, h).mask == 1
    care = pre.prelabel != IGNORE_INDEX
    truth_iou = None if pre.truth is None else _iou(drawn, pre.truth, np.ones_like(care))
    return Measure(len(shapes), sum(len(s["points"]) for s in shapes), _iou(drawn, pre.prelabel == 1, care),
                   truth_iou, seconds)


def main(argv: list[str] | None = None) -> dict[str, dict[str, float | None]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--synth", type=int, default=40, help="256x256 synthetic portraits")
    parser.add_argument("--synth-large", type=int, default=10, help="1024x1024 synthetic portraits")
    parser.add_argument("--ccp", type=Path, default=DEFAULT_CCP, help="the CCP benchmark folder")
    parser.add_argument("--ccp-n", type=int, default=100, help="CCP photos (0: skip CCP)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("/tmp/bench_prefill"))
    parser.add_argument("--json", type=Path, default=None, help="also write the rows as JSON here")
    args = parser.parse_args(argv)

    from dataeng.annotation.trace import TraceLimits

    limits = TraceLimits()
    shutil.rmtree(args.out, ignore_errors=True)
    sources: dict[str, Iterator[tuple[str, np.ndarray, np.ndarray]]] = {
        "synth demo 64-192": synth_prelabels(args.out / "synthdemo", args.synth, (64, 192), args.seed + 2),
        "synth 256": synth_prelabels(args.out / "synth256", args.synth, (256, 256), args.seed),
        "synth 1024": synth_prelabels(args.out / "synth1024", args.synth_large, (1024, 1024), args.seed + 1),
    }
    notes = []
    if args.ccp_n > 0 and (args.ccp / "images").is_dir():
        try:
            import mediapipe  # noqa: F401

            sources["ccp mediapipe"] = ccp_prelabels(args.ccp, args.ccp_n)
        except ImportError:
            notes.append("CCP skipped: mediapipe is not installed")
    elif args.ccp_n > 0:
        notes.append(f"CCP skipped: {args.ccp} is absent")

    rows: dict[str, dict[str, float | None]] = {}
    start = time.perf_counter()
    for source, items in sources.items():
        results: dict[str, dict[str, list[Measure]]] = {"filled": {"before": [], "after": []},
                                                        "+ignore": {"before": [], "after": []}}
        for name, truth, prob in items:
            for kind, ignore in (("filled", False), ("+ignore", True)):
                pre = PreLabel(name, pseudo_label(prob, ignore), truth)
                for when, lim in (("before", None), ("after", limits)):
                    results[kind][when].append(measure(pre, lim, args.out / "files" / source / kind / when))
        for kind, by_when in results.items():
            for when, ms in by_when.items():
                if not ms:
                    continue
                rows[f"{source} {kind} {when}"] = {
                    "n": len(ms),
                    "shapes": float(np.median([m.shapes for m in ms])),
                    "shapes_max": float(max(m.shapes for m in ms)),
                    "vertices": float(np.median([m.vertices for m in ms])),
                    "vertices_max": float(max(m.vertices for m in ms)),
                    "iou": float(np.median([m.iou for m in ms])),
                    "iou_min": float(min(m.iou for m in ms)),
                    "truth_iou": float(np.median([m.truth_iou for m in ms if m.truth_iou is not None])),
                    "ms": 1000 * float(np.median([m.seconds for m in ms])),
                }
    elapsed = time.perf_counter() - start

    print(f"limits: {limits}")
    print("| pre-labels | kind | tracing | n | shapes (median / max) | vertices (median / max) "
          "| IoU to pre-label (median / min) | IoU to truth (median) | write ms (median) |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|")
    for key, r in rows.items():
        source, kind, when = key.rsplit(" ", 2)
        print(f"| {source} | {kind} | {when} | {r['n']:.0f} | {r['shapes']:.0f} / {r['shapes_max']:.0f} "
              f"| {r['vertices']:.0f} / {r['vertices_max']:.0f} | {r['iou']:.4f} / {r['iou_min']:.4f} "
              f"| {r['truth_iou']:.4f} | {r['ms']:.1f} |")
    for note in notes:
        print(note)
    print(f"({elapsed:.0f} s)")
    if args.json is not None:
        args.json.write_text(json.dumps({"limits": str(limits), "rows": rows}, indent=2))
    return rows


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
