"""Benchmark the pseudo-labelling engine, and measure what teacher-student rounds buy.

Usage:
    .venv/bin/python scripts/bench_pseudolabel.py [--n 1000] [--size 512] [--encoder resnet18] [--out bench_pl]
    .venv/bin/python scripts/bench_pseudolabel.py --experiment [--train 300] [--label-share 0.1] [--out bench_exp]

1. Throughput (default): ``pseudolabel()`` over N synthetic SIZExSIZE JPEGs registered as
   unlabelled train images (decode workers, flip TTA, PNG writer thread, batched DB
   writes) vs. the bare forward pass (same model, same TTA, same batch size) over the same
   number of in-memory uint8 tensors already at the network size, in the same process.
   Prints images/s of both, their ratio, and peak resident memory.
2. ``--experiment``: synthetic portraits, ``--label-share`` of the train images labelled.
   Trains (a) supervised on the labelled share, (b) two ``dataeng round``s on top of (a),
   (c) supervised on all train labels, each with the same sample budget (images seen),
   and (d) the labelled share alone with the students' strong augmentation (what the
   augmentation buys without pseudo-labels); prints test IoUs, the gap closed =
   (b - a) / (c - a), and the mean IoU against the synthetic ground truth of the accepted
   and of the needs_review pseudo-labels. ``--accept CF,MC,ST`` sets the accept thresholds.
"""

from __future__ import annotations

import argparse
import hashlib
import resource
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np


def _register(ws: Any, files: list[tuple[Path, str]]) -> list[int]:
    """Put files into the store and register them with the given split (skips ingest's hash split)."""
    from PIL import Image as PILImage

    from dataeng.db.schema import Image
    from dataeng.storage import link_or_copy

    ids = []
    with ws.session() as s:
        for path, split in files:
            sha = hashlib.sha256(path.read_bytes()).hexdigest()
            rel = f"store/images/{sha[:2]}/{sha}{path.suffix}"
            link_or_copy(path, ws.root / rel, "copy")
            with PILImage.open(path) as im:
                w, h = im.size
            ph = int(sha[:15], 16)
            row = Image(sha256=sha, source_sha256=sha, phash=ph, ph0=ph & 0xFFFF, ph1=(ph >> 16) & 0xFFFF,
                        ph2=(ph >> 32) & 0xFFFF, width=w, height=h, store_path=rel, original_path=str(path),
                        split=split)
            s.add(row)
            s.flush()
            ids.append(row.id)
    return ids


def _peak_mib() -> tuple[float, float]:
    """(this process, its largest child) peak RSS in MiB (Linux reports KiB)."""
    return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)


# ---------------------------------------------------------------- throughput
def throughput(args: argparse.Namespace) -> None:
    import torch

    from dataeng.config import Config, PseudolabelConfig, TrainConfig
    from dataeng.db.schema import Run, utcnow
    from dataeng.engine.learn.pseudolabel import pseudolabel
    from dataeng.engine.synth import generate
    from dataeng.models.checkpoint import save_checkpoint
    from dataeng.models.factory import build_model
    from dataeng.models.inference import TorchPredictor, tta_probabilities
    from dataeng.workspace import Workspace

    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    print(f"generating {args.n} synthetic {args.size}x{args.size} JPEGs ...", flush=True)
    generate(out / "synth", n=0, unlabeled=args.n, seed=0, size_range=(args.size, args.size), labelme=False)
    config = Config(train=TrainConfig(device=args.device, num_workers=args.workers),
                    pseudolabel=PseudolabelConfig(batch_size=args.batch_size))
    ws = Workspace.init(out / "ws", config)
    _register(ws, [(p, "train") for p in sorted((out / "synth/unlabeled").glob("*.jpg"))])
    torch.manual_seed(0)
    model = build_model("unet", args.encoder, 1, encoder_depth=args.depth)
    rel = "runs/teacher/checkpoint.pt"
    image_size = [args.image_size, args.image_size]
    save_checkpoint(ws.root / rel, model, {"arch": "unet", "encoder": args.encoder, "encoder_depth": args.depth,
                                           "classes": ["person"], "image_size": image_size, "epoch": 0})
    with ws.session() as s:
        s.add(Run(kind="train", status="finished", checkpoint_path=rel, finished_at=utcnow(), metrics={}))
    print(f"torch threads {torch.get_num_threads()}, decode workers {args.workers}, batch {args.batch_size}, "
          f"unet/{args.encoder} depth {args.depth} at {args.image_size}px, tta flip", flush=True)

    session = ws.new_session()
    try:
        result = pseudolabel(ws, session, device=args.device)
    finally:
        session.close()
    engine_rate = result.images_per_s

    device = torch.device("cpu" if args.device == "auto" and not torch.cuda.is_available() else
                          ("cuda" if args.device == "auto" else args.device))
    predictor = TorchPredictor(model, ["person"], (args.image_size, args.image_size), device)
    gen = torch.Generator().manual_seed(0)
    inputs = torch.randint(0, 256, (args.n, 3, args.image_size, args.image_size), dtype=torch.uint8,
                           generator=gen).numpy()
    tta_probabilities(predictor, inputs[: args.batch_size])  # warm-up, as the engine's first batch is
    start = time.perf_counter()
    for i in range(0, args.n, args.batch_size):
        tta_probabilities(predictor, inputs[i : i + args.batch_size])
    bare_rate = args.n / (time.perf_counter() - start)
    own, child = _peak_mib()
    print(f"\npseudolabel engine : {engine_rate:8.2f} img/s  ({result.accepted} accepted, {result.queued} queued)")
    print(f"bare forward (TTA) : {bare_rate:8.2f} img/s")
    print(f"ratio              : {engine_rate / bare_rate:8.3f}  (target >= 0.8)")
    print(f"peak RSS           : {own:8.0f} MiB main process, {child:.0f} MiB largest decode worker")


# ---------------------------------------------------------------- experiment
def _iou(pred: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """(foreground IoU over the pixels the pseudo-label kept, share of pixels kept).

    IoU is NaN when nothing was kept, 1.0 when both kept parts are empty.
    """
    from dataeng.annotation.types import IGNORE_INDEX

    keep = pred != IGNORE_INDEX
    if not keep.any():
        return float("nan"), 0.0
    p, t = (pred == 1) & keep, (truth == 1) & keep
    union = np.count_nonzero(p | t)
    return (1.0 if union == 0 else np.count_nonzero(p & t) / union), float(keep.mean())


def experiment(args: argparse.Namespace) -> None:
    from sqlalchemy import select

    from dataeng.annotation.masks import read_mask
    from dataeng.config import AcceptConfig, Config, PseudolabelConfig, TrainConfig
    from dataeng.db.schema import Label
    from dataeng.engine.learn.rounds import run_rounds
    from dataeng.engine.learn.train import train
    from dataeng.engine.synth import generate
    from dataeng.workspace import Workspace

    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    n_total = args.train + args.val + args.test
    t0 = time.perf_counter()
    generate(out / "synth", n=n_total, seed=1, size_range=(args.size, args.size), labelme=False)
    names = sorted((out / "synth/images").glob("*.jpg"))
    n_labelled = max(1, round(args.train * args.label_share))
    budget = args.budget  # images seen in training by every model
    base = {"encoder": args.encoder, "encoder_depth": args.depth, "image_size": (args.size, args.size),
            "batch_size": 16, "num_workers": 0, "device": "cpu", "warmup_epochs": 0.5, "lr": 3e-3, "seed": 0,
            "human_share": args.human_share}
    accept = dict(zip(("min_confident_fraction", "min_mean_confidence", "min_stability"),
                      (float(v) for v in args.accept.split(",")), strict=True))
    config = Config(train=TrainConfig(**base),
                    pseudolabel=PseudolabelConfig(accept=AcceptConfig(**accept)))
    print(f"{args.train} train ({n_labelled} labelled), {args.val} val, {args.test} test images of "
          f"{args.size}px; unet/{args.encoder} depth {args.depth}; budget {budget} images seen per model; "
          f"accept {accept}; students' human share {args.human_share}", flush=True)

    def workspace(name: str, labelled_train: int) -> tuple[Any, dict[int, Path]]:
        from dataeng.storage import link_or_copy

        ws = Workspace.init(out / name, config)
        plan = ["train"] * args.train + ["val"] * args.val + ["test"] * args.test
        ids = _register(ws, list(zip(names, plan, strict=True)))
        truth = {}
        with ws.session() as s:
            for k, (image_id, split) in enumerate(zip(ids, plan, strict=True)):
                mask_file = out / "synth/masks" / f"{names[k].stem}.png"
                truth[image_id] = mask_file
                if split != "train" or k < labelled_train:
                    label = Label(image_id=image_id, origin="human", source="mask", mask_path="", status="active")
                    s.add(label)
                    s.flush()
                    label.mask_path = ws.mask_rel(label.id)
                    (ws.root / label.mask_path).parent.mkdir(parents=True, exist_ok=True)
                    link_or_copy(mask_file, ws.root / label.mask_path, "copy")
        return ws, truth

    def run_train(ws: Any, **extra: Any) -> Any:
        s = ws.new_session()
        try:
            return train(ws, s, {**base, "sample_budget": budget, **extra})
        finally:
            s.close()

    ws_sup, truth = workspace("semi", n_labelled)
    sup = run_train(ws_sup)
    print(f"supervised ({n_labelled} labels, {sup.epochs} epochs): test IoU {sup.test['iou']:.4f} "
          f"[{time.perf_counter() - t0:.0f}s]", flush=True)
    s = ws_sup.new_session()
    try:
        # Every model sees the same number of images, whatever its train set's size.
        rounds = run_rounds(ws_sup, s, rounds=2, overrides={**base, "sample_budget": budget})
        labels = s.scalars(select(Label).where(Label.origin == "pseudo")).all()
        quality: dict[tuple[int, str], list[tuple[float, float]]] = {}
        for lab in labels:  # superseded ones too: classified by the rule that placed them
            shown = "accepted" if _was_accepted(lab, ws_sup) else "needs_review"
            iou = _iou(read_mask(ws_sup.root / lab.mask_path), read_mask(truth[lab.image_id]))
            quality.setdefault((lab.round, shown), []).append(iou)
    finally:
        s.close()
    final = rounds[-1]
    best_test = _test_iou(ws_sup, final.teacher_after)
    for r in rounds:
        print(f"round {r.number}: teacher {r.teacher_run_id} student {r.student_run_id} accepted {r.accepted} "
              f"queued {r.queued} superseded {r.superseded} val mIoU teacher {r.teacher_val_miou} student "
              f"{r.student_val_miou} promoted {r.promoted} student test IoU {(r.student_test or {}).get('iou')}")
    print(f"after 2 rounds (teacher = run {final.teacher_after}): test IoU {best_test:.4f} "
          f"[{time.perf_counter() - t0:.0f}s]", flush=True)
    ws_all, _ = workspace("all", args.train)
    full = run_train(ws_all)
    print(f"all labels ({args.train}, {full.epochs} epochs): test IoU {full.test['iou']:.4f} "
          f"[{time.perf_counter() - t0:.0f}s]")
    ws_aug, _ = workspace("augment", n_labelled)
    aug = run_train(ws_aug, strong_augment=True)
    print(f"labelled share with strong augmentation, no pseudo-labels: test IoU {aug.test['iou']:.4f} "
          f"[{time.perf_counter() - t0:.0f}s]")
    a, b, c = sup.test["iou"], best_test, full.test["iou"]
    print(f"\ntest IoU: supervised {a:.4f} | strong augmentation only {aug.test['iou']:.4f} | after 2 rounds "
          f"{b:.4f} | all labels {c:.4f}")
    print(f"gap closed: {(b - a) / (c - a):.3f}" if c != a else "gap closed: undefined (no gap)")
    for (rnd, kind), values in sorted(quality.items()):
        iou, kept = np.array(values).T
        print(f"round {rnd} pseudo-labels {kind:12s}: n={len(values):4d} mean IoU vs truth on kept pixels "
              f"{np.nanmean(iou) if np.isfinite(iou).any() else float('nan'):.4f}, pixels kept {kept.mean():.3f}")
    own, _ = _peak_mib()
    print(f"peak RSS {own:.0f} MiB, total {time.perf_counter() - t0:.0f}s")


def _was_accepted(label: Any, ws: Any) -> bool:
    from dataeng.engine.learn.pseudolabel import PseudoScores, accepts

    scores = PseudoScores(label.confident_fraction, label.mean_confidence, label.stability)
    return accepts(scores, ws.config.pseudolabel.accept)


def _test_iou(ws: Any, run_id: int) -> float:
    from dataeng.db.schema import Run

    with ws.session() as s:
        run = s.get(Run, run_id)
        return float(run.metrics["test"]["iou"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--experiment", action="store_true", help="the semi-supervised experiment instead of throughput")
    p.add_argument("--out", default=None)
    p.add_argument("--n", type=int, default=1000, help="throughput: images")
    p.add_argument("--size", type=int, default=None, help="image side (default 512, experiment 96)")
    p.add_argument("--image-size", type=int, default=256, help="throughput: network input side")
    p.add_argument("--encoder", default=None, help="default resnet18 (throughput), tu-mobilenetv3_small_100")
    p.add_argument("--depth", type=int, default=None, help="encoder depth (default 5, experiment 4)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--workers", type=int, default=2, help="decode workers")
    p.add_argument("--device", default="cpu")
    p.add_argument("--train", type=int, default=300, help="experiment: train images")
    p.add_argument("--val", type=int, default=40)
    p.add_argument("--test", type=int, default=60)
    p.add_argument("--label-share", type=float, default=0.1)
    p.add_argument("--budget", type=int, default=1800, help="experiment: images seen in training per model")
    p.add_argument("--human-share", type=float, default=0.5, help="experiment: [train] human_share of the students")
    p.add_argument("--accept", default="0.7,0.85,0.8", help="experiment: min confident fraction, mean confidence, "
                   "stability")
    args = p.parse_args()
    if args.experiment:
        args.out = args.out or "bench_pl_experiment"
        args.size = args.size or 96
        args.encoder = args.encoder or "tu-mobilenetv3_small_100"
        args.depth = args.depth or 4
        experiment(args)
    else:
        args.out = args.out or "bench_pl"
        args.size = args.size or 512
        args.encoder = args.encoder or "resnet18"
        args.depth = args.depth or 5
        throughput(args)


if __name__ == "__main__":
    main()
