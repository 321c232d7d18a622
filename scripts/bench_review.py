"""Benchmark the annotator loop: how much drawing a pre-filled review saves.

Usage:
    .venv/bin/python scripts/bench_review.py [--n 120] [--unlabeled 200] [--max-size 96] [--epochs 25]
                                             [--encoder resnet18] [--image-size 64] [--lr 1e-3] [--limit 50]
                                             [--out /tmp/bench_review]

On synthetic portraits (``engine/synth.generate``, which keeps the ground truth of the
unlabelled pool): ingest ``--n`` labelled and ``--unlabeled`` unlabelled images, train a
tiny teacher on the human labels, pseudo-label the pool, export the ``--limit`` most
uncertain ``needs_review`` pseudo-labels as Labelme, "correct" every file with the ground
truth (``scripts/demo_correct.py``), and import. Prints:

- the median (and quartiles) of ``edit_iou`` = IoU(exported pre-fill, correction);
- what an annotator draws from scratch (foreground pixels of the truth, and the vertices
  of its traced polygons) against what a correction changes (pixels where the pre-fill
  differs from the truth, its ignore pixels included: they must be decided);
- the same for the raw pseudo-label (its unsure pixels left as ignore, i.e. without the
  teacher's fill the export adds), to show what the fill saves;
- export and import time per image.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=120, help="labelled synthetic portraits")
    parser.add_argument("--unlabeled", type=int, default=200, help="unlabelled pool (its truth is kept)")
    parser.add_argument("--max-size", type=int, default=96, help="largest image side (smallest: 64)")
    parser.add_argument("--epochs", type=int, default=25, help="teacher epochs")
    parser.add_argument("--encoder", default="resnet18", help="teacher encoder (unet, depth 3)")
    parser.add_argument("--image-size", type=int, default=64, help="network input side (multiple of 32)")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--limit", type=int, default=50, help="images exported for review")
    parser.add_argument("--out", type=Path, default=Path("/tmp/bench_review"))
    args = parser.parse_args()

    from sqlalchemy import select

    from dataeng.annotation.masks import read_mask
    from dataeng.annotation.trace import trace
    from dataeng.config import Config, TrainConfig
    from dataeng.db.schema import Label
    from dataeng.engine.ingest.ingest import ingest
    from dataeng.engine.learn.pseudolabel import pseudolabel
    from dataeng.engine.learn.train import train
    from dataeng.engine.review.export import export_review
    from dataeng.engine.review.importing import edit_iou, import_review
    from dataeng.engine.review.manifest import MANIFEST_NAME, read_manifest
    from dataeng.engine.synth import generate
    from dataeng.workspace import Workspace

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from demo_correct import correct

    out = args.out
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    synth = out / "synth"
    generate(synth, n=args.n, unlabeled=args.unlabeled, seed=0, size_range=(64, args.max_size), labelme=False)
    tiny = {"encoder": args.encoder, "image_size": (args.image_size, args.image_size), "batch_size": 8,
            "num_workers": 0, "device": "cpu", "warmup_epochs": 1.0, "lr": args.lr, "seed": 0}
    ws = Workspace.init(out / "ws", Config(train=TrainConfig(**tiny)))
    with ws.session() as s:
        ingest(ws, s, [synth / "images", synth / "masks", synth / "unlabeled"], workers=1)
    session = ws.new_session()
    try:
        teacher = train(ws, session, {"epochs": args.epochs, "encoder_depth": 3})
        print(f"teacher: {args.epochs} epochs on {args.n} x 0.7 labelled images, test IoU {teacher.test['iou']:.3f} "
              f"[{time.perf_counter() - t0:.0f}s]", flush=True)
        pl = pseudolabel(ws, session)
        print(f"pseudo-labels: {pl.accepted} accepted, {pl.queued} needs_review [{time.perf_counter() - t0:.0f}s]",
              flush=True)
        t = time.perf_counter()
        exported = export_review(ws, session, out / "review", fmt="labelme", queue="uncertain", limit=args.limit)
        t_export = time.perf_counter() - t
        corrected = correct(out / "review", synth / "truth" / "masks")
        t = time.perf_counter()
        imported = import_review(ws, session, out / "review")
        t_import = time.perf_counter() - t
        labels = {lab.id: lab for lab in session.scalars(select(Label).where(Label.source == "review"))}
        parent_masks = {lab.id: session.scalar(select(Label.mask_path).where(Label.id == lab.parent_id))
                        for lab in labels.values()}  # the stored pseudo-label each correction replaced
    finally:
        session.close()

    manifest, _ = read_manifest(out / "review" / MANIFEST_NAME)
    truth_px, changed_px, raw_px, vertices, ious, raw_ious = [], [], [], [], [], []
    review_items = {item["n"]: item for item in _review_items(ws, exported.review_id)}
    for entry in manifest.items:
        item = review_items[entry.n]
        truth = read_mask(synth / "truth" / "masks" / f"{Path(entry.original_name).stem}.png")
        prefill = read_mask(ws.root / item["prefill"])
        truth_px.append(int(np.count_nonzero(truth)))
        changed_px.append(int(np.count_nonzero(prefill != truth)))
        raw = read_mask(ws.root / parent_masks[item["result_label_id"]])
        raw_px.append(int(np.count_nonzero(raw != truth)))
        raw_ious.append(edit_iou(raw, truth))
        vertices.append(sum(len(p.exterior) + sum(len(h) for h in p.holes) for p in trace(truth, 1)))
        ious.append(labels[item["result_label_id"]].edit_iou)
    q1, med, q3 = np.percentile(ious, [25, 50, 75])
    n = len(ious)
    print(f"\nreview: {exported.items} exported, {corrected} corrected, {imported.imported} imported "
          f"({imported.unchanged} unchanged, {imported.refused} refused) [{time.perf_counter() - t0:.0f}s total]")
    print(f"edit IoU (pre-fill vs correction): median {med:.3f}  (quartiles {q1:.3f} - {q3:.3f}, n={n})")
    print(f"from scratch : {sum(truth_px):8d} foreground pixels to paint, {sum(vertices):6d} polygon vertices "
          f"(median {np.median(truth_px):.0f} px, {np.median(vertices):.0f} vertices per image)")
    print(f"corrected    : {sum(changed_px):8d} pixels differ from the truth "
          f"(median {np.median(changed_px):.0f} px per image), {sum(changed_px) / max(sum(truth_px), 1):.1%} "
          f"of the from-scratch pixels")
    print(f"raw pseudo   : {sum(raw_px):8d} pixels differ from the truth (unsure pixels sent as __ignore__), "
          f"median edit IoU {np.median(raw_ious):.3f}")
    print(f"timing       : export {1000 * t_export / max(n, 1):.1f} ms/image, "
          f"import {1000 * t_import / max(n, 1):.1f} ms/image")


def _review_items(ws, review_id: int) -> list[dict]:
    from dataeng.db.schema import Review

    with ws.session() as s:
        review = s.get(Review, review_id)
        return list(review.items) if review is not None else []


if __name__ == "__main__":
    main()
