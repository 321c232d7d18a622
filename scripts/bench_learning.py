"""What strong teachers buy on real photos: supervised, rounds, MediaPipe, distilled students (CCP).

Usage:
    .venv/bin/python scripts/bench_learning.py [--data ../shared/benchmarks/ccp] [--n 100] [--test 200]
        [--pool 600] [--size 160x128] [--budget 3000] [--out bench_learning] [--rows abcdef]
    .venv/bin/python scripts/bench_learning.py --small --rows acde   # the CI version (tests/test_bench_learning.py)

Protocol (fixed here, never tuned per row):
- ``--test`` labelled photos drawn with ``--seed`` are the test set: never ingested with their
  masks, every row is scored on them with ``dataeng evaluate --images --masks``.
- ``--n`` human labels drawn with the seed from the rest are ingested with their masks (the
  workspace's own 7:2:1 hash split then holds out val and test images among them).
- The pool: ``--pool`` photos drawn from the remaining labelled photos (their masks kept
  aside, to score pseudo-labels and pre-fills) and the unlabelled ones, ingested without masks.
- One model (unet / mobilenet_v2 from scratch), one image size and one ``--budget`` of images
  seen per model for every row.

Suites (``--suite``): ``teachers`` (the default) and ``semi``.

Teacher rows: (a) supervised on the N labels; (b) two rounds with dataeng's own teacher from (a);
(c) MediaPipe alone; (d) a student distilled from MediaPipe with 0 human labels; (e) a student
from MediaPipe plus the N labels; (f) supervised on every labelled photo outside the test set;
(g) and (h): (d) with every pixel kept (pixel threshold 0.5), learning the teacher's soft
probability (g) or its hard class (h), against (d)'s confident pixels weighted by confidence.
Also: the accuracy of the accepted pseudo-labels against the masks (IoU on the kept pixels, IoU
of the full mask with the dropped pixels as background, share kept), and the median IoU of the
first 20 review pre-fills against the masks, for dataeng's teacher and for MediaPipe.

Semi-supervised rows (``--suite semi``): (a) as above; (A) = (a'): supervised with the strong
augmentation, the honest baseline of (g)-(i), whose labelled branch trains the same way; (b) as
above; (g) ``semi = fixmatch`` and (h) ``semi = unimatch`` on the N labels plus the pool's train
images as unlabelled data; (i) two rounds from (a) whose students train with ``unimatch`` (the
pseudo-labels sent to review stay unlabelled data); (f) as above. The sample budget counts labelled
images; the semi rows see as many unlabelled ones besides (their cost shows in the CPU minutes).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "benchmarks" / "ccp"


@dataclass
class Row:
    name: str
    what: str
    metrics: dict[str, Any] = field(default_factory=dict)
    minutes: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


def _link_pairs(pairs: list[tuple[Path, Path | None]], dest: Path) -> None:
    """Copies (not symlinks: ingest refuses a mask whose image resolves outside the folder it reads)."""
    (dest / "images").mkdir(parents=True, exist_ok=True)
    for image, mask in pairs:
        shutil.copyfile(image, dest / "images" / image.name)
        if mask is not None:
            (dest / "masks").mkdir(exist_ok=True)
            shutil.copyfile(mask, dest / "masks" / mask.name)


def _workspace(out: Path, name: str, args: argparse.Namespace, inputs: list[Path]) -> Any:
    from dataeng.config import Config, TrainConfig
    from dataeng.engine.ingest.ingest import ingest
    from dataeng.workspace import Workspace

    h, w = args.image_size
    config = Config(train=TrainConfig(arch="unet", encoder="mobilenet_v2", image_size=(h, w), batch_size=8,
                                      num_workers=args.workers, device="cpu", seed=args.seed))
    ws = Workspace.init(out / name, config)
    folders = [sub for p in inputs for sub in (p / "images", p / "masks") if sub.is_dir()]
    with ws.session() as s:
        summary = ingest(ws, s, [str(p) for p in folders], workers=1)
    if os.environ.get("BENCH_VERBOSE"):
        print(f"  workspace {name}: {summary}", flush=True)
    return ws


def _evaluate(ws: Any, run_id: int | str, test: Path) -> dict[str, Any]:
    from dataeng.engine.learn.evaluate import evaluate
    from dataeng.engine.learn.runs import RunRef

    with ws.session() as s:
        result = evaluate(ws, s, RunRef.parse(str(run_id)), images_dir=test / "images", masks_dir=test / "masks",
                          device="cpu", num_workers=0)
    return {k: result.metrics.get(k) for k in ("iou", "miou", "boundary_iou")} | {"run": result.model_run_id}


def _train(ws: Any, args: argparse.Namespace, **extra: Any) -> int:
    from dataeng.engine.learn.train import train

    with ws.session() as s:
        result = train(ws, s, {"sample_budget": args.budget, "epochs": None, **extra})
    return result.run_id


def _pseudo_accuracy(ws: Any, truth: dict[str, Path], teacher_run_id: int) -> dict[str, Any]:
    """Accepted pseudo-labels of ``teacher_run_id`` against the masks of the pool photos that have one."""
    import cv2
    from sqlalchemy import select

    from dataeng.annotation.masks import read_mask
    from dataeng.annotation.types import IGNORE_INDEX
    from dataeng.db.schema import Image, Label

    kept_iou, full_iou, kept_share = [], [], []
    with ws.session() as s:
        rows = s.execute(select(Label, Image).join(Image, Image.id == Label.image_id).where(
            Label.origin == "pseudo", Label.status == "active", Label.run_id == teacher_run_id)).all()
        for label, image in rows:
            mask_path = truth.get(Path(image.original_path).stem)
            if mask_path is None:
                continue
            true = cv2.imread(str(mask_path), cv2.IMREAD_GRAYSCALE) > 127
            pred = read_mask(ws.root / label.mask_path)
            kept = pred != IGNORE_INDEX
            p, t = pred == 1, true
            kept_iou.append(_iou(p[kept], t[kept]))
            full_iou.append(_iou(p, t))
            kept_share.append(float(kept.mean()))
    if not kept_iou:
        return {"scored": 0}
    return {"scored": len(kept_iou), "median_iou_kept": float(np.median(kept_iou)),
            "median_iou_full": float(np.median(full_iou)), "mean_share_kept": float(np.mean(kept_share))}


def _iou(pred: np.ndarray, true: np.ndarray) -> float:
    union = int((pred | true).sum())
    return 1.0 if union == 0 else float((pred & true).sum()) / union


def _prefill_accuracy(ws: Any, truth: dict[str, Path], out: Path, queue: str, n: int = 20) -> dict[str, Any]:
    """Median IoU against the masks of the first ``n`` pre-fills of a review queue (scored: pool photos).

    ``uncertain``: the needs_review pseudo-labels, least certain first; ``eval``: unlabelled val/test
    photos pre-filled by the best teacher (the first step of a zero-label start).
    """
    import cv2

    from dataeng.annotation.masks import read_mask
    from dataeng.db.schema import Image, Review
    from dataeng.engine.review.export import export_review

    folder = out / f"review_{queue}"
    shutil.rmtree(folder, ignore_errors=True)
    session = ws.new_session()
    try:
        try:
            done = export_review(ws, session, folder, fmt="labelme", queue=queue, limit=n, device="cpu")  # type: ignore[arg-type]
        except Exception as e:  # an empty queue: nothing to measure
            return {"exported": 0, "note": str(e)[:120]}
        review = session.get(Review, done.review_id)
        ious = []
        for item in review.items:
            image = session.get(Image, item["image_id"])
            mask_path = truth.get(Path(image.original_path).stem)
            if mask_path is None or not item.get("prefill"):
                continue
            true = cv2.imread(str(mask_path), cv2.IMREAD_GRAYSCALE) > 127
            ious.append(_iou(read_mask(ws.root / item["prefill"]) == 1, true))
    finally:
        session.close()
    return {"exported": done.items, "scored": len(ious), "median_iou": float(np.median(ious)) if ious else None}


def main(argv: list[str] | None = None) -> dict[str, Row]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--test", type=int, default=200)
    parser.add_argument("--pool", type=int, default=600)
    parser.add_argument("--size", default="160x128", help="HxW of every model")
    parser.add_argument("--budget", type=int, default=3000, help="images seen per model")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--suite", choices=("teachers", "semi"), default="teachers",
                        help="teachers: rows a-h below; semi: the semi-supervised rows a, A, b, g, h, i, f")
    parser.add_argument("--rows", default=None, help="default: every row of the suite")
    parser.add_argument("--out", type=Path, default=ROOT / "bench_learning")
    parser.add_argument("--small", action="store_true", help="the CI version: 64x64, N=30, 40 test, pool 120, "
                                                                 "budget 1500 (tests/test_bench_learning.py)")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    parser.add_argument("--semi-options", type=json.loads, default={},
                        help='JSON train options for the semi rows (g, h, i), e.g. \'{"semi_threshold": 0.8}\' '
                             "(ablations; the defaults are the paper's)")
    args = parser.parse_args(argv)
    if args.small:
        args.n, args.test, args.pool, args.size, args.budget = 30, 40, 120, "64x64", 1500
    if args.rows is None:
        args.rows = "abcdef" if args.suite == "teachers" else "aAbghif"
    args.image_size = tuple(int(v) for v in args.size.lower().split("x"))
    if not (args.data / "images").is_dir():
        print(f"no benchmark data at {args.data}", file=sys.stderr)
        raise SystemExit(2)
    import torch

    torch.set_num_threads(min(2, os.cpu_count() or 1))
    shutil.rmtree(args.out, ignore_errors=True)
    args.out.mkdir(parents=True)

    rng = random.Random(args.seed)
    labelled = sorted((args.data / "images").glob("*.jpg"))
    rng.shuffle(labelled)
    test, rest = labelled[:args.test], labelled[args.test:]
    human, others = rest[:args.n], rest[args.n:]
    unlabelled = sorted((args.data / "unlabeled").glob("*.jpg"))
    pool = others + unlabelled
    rng.shuffle(pool)
    pool = pool[:args.pool]
    mask_of = {p.stem: args.data / "masks" / f"{p.stem}.png" for p in labelled}
    _link_pairs([(p, mask_of[p.stem]) for p in test], args.out / "data" / "test")
    _link_pairs([(p, mask_of[p.stem]) for p in human], args.out / "data" / "human")
    _link_pairs([(p, None) for p in pool], args.out / "data" / "pool")
    _link_pairs([(p, mask_of[p.stem]) for p in rest], args.out / "data" / "all")
    truth = {p.stem: mask_of[p.stem] for p in pool if p.stem in mask_of}
    test_dir = args.out / "data" / "test"
    print(f"test {len(test)}, human {len(human)}, pool {len(pool)} ({len(truth)} with masks kept aside), "
          f"size {args.size}, budget {args.budget}", flush=True)

    rows: dict[str, Row] = {}

    def timed(name: str, what: str, fn: Any) -> None:
        started = time.process_time() + _children_cpu()
        row = Row(name, what)
        fn(row)
        row.minutes = (time.process_time() + _children_cpu() - started) / 60
        rows[name] = row
        print(f"({name}) {what}: {json.dumps(row.metrics)} {row.minutes:.1f} CPU min {json.dumps(row.extra)}",
              flush=True)

    data = args.out / "data"
    sup: dict[str, Any] = {}

    def row_a(row: Row) -> None:
        ws = _workspace(args.out, "a", args, [data / "human", data / "pool"])
        sup["ws"] = ws
        sup["run"] = _train(ws, args)
        row.metrics = _evaluate(ws, sup["run"], test_dir)

    def row_b(row: Row) -> None:
        from dataeng.engine.learn.rounds import run_rounds
        from dataeng.engine.learn.runs import RunRef

        ws = sup["ws"]
        with ws.session() as s:
            results = run_rounds(ws, s, 2, {"sample_budget": args.budget, "epochs": None},
                                 teacher=RunRef("id", run_id=sup["run"]))
        first = results[0]
        row.extra["pseudo_labels"] = _pseudo_accuracy(ws, truth, first.teacher_run_id or sup["run"])
        row.extra["promoted"] = [r.promoted for r in results]
        row.extra["prefills"] = {q: _prefill_accuracy(ws, truth, args.out / "b", q) for q in ("uncertain", "eval")}
        last_student = results[-1].student_run_id
        row.metrics = _evaluate(ws, last_student, test_dir)
        row.extra["best_student_test"] = {r.student_run_id: _evaluate(ws, r.student_run_id, test_dir)["iou"]
                                          for r in results if r.student_run_id}

    def row_c(row: Row) -> None:
        ws = _workspace(args.out, "c", args, [data / "pool"])
        row.metrics = _evaluate(ws, "mediapipe", test_dir)

    def distilled(name: str, pixel_threshold: float | None = None, targets: str = "hard") -> Any:
        def row_fn(row: Row) -> None:
            from dataeng.engine.learn.pseudolabel import pseudolabel
            from dataeng.engine.learn.runs import RunRef

            ws = _workspace(args.out, name, args, [data / "pool"])
            config = ws.config.pseudolabel
            if pixel_threshold is not None:
                config = config.model_copy(update={"pixel_threshold": pixel_threshold})
            with ws.session() as s:
                pl = pseudolabel(ws, s, RunRef.parse("mediapipe"), config=config, num_workers=0)
            row.extra["pseudo_labels"] = _pseudo_accuracy(ws, truth, pl.teacher_run_id)
            row.extra["accepted"] = pl.accepted
            row.extra["prefills"] = {q: _prefill_accuracy(ws, truth, args.out / name, q)
                                     for q in ("uncertain", "eval")}
            run = _train(ws, args, strong_augment=True, pseudo_targets=targets)
            row.metrics = _evaluate(ws, run, test_dir)

        return row_fn

    row_d = distilled("d")

    def row_e(row: Row) -> None:
        from dataeng.engine.learn.rounds import run_rounds
        from dataeng.engine.learn.runs import RunRef

        ws = _workspace(args.out, "e", args, [data / "human", data / "pool"])
        with ws.session() as s:
            [result] = run_rounds(ws, s, 1, {"sample_budget": args.budget, "epochs": None},
                                  teacher=RunRef.parse("mediapipe"))
        row.extra["promoted"] = result.promoted
        row.extra["val_miou"] = {"teacher": result.teacher_val_miou, "student": result.student_val_miou}
        row.metrics = _evaluate(ws, result.student_run_id, test_dir)

    def row_f(row: Row) -> None:
        ws = _workspace(args.out, "f", args, [data / "all"])
        row.metrics = _evaluate(ws, _train(ws, args), test_dir)

    def semi(name: str, method: str) -> Any:
        """Train on the N labels with ``method`` on the pool (the labelled branch as in (A))."""
        def row_fn(row: Row) -> None:
            ws = _workspace(args.out, name, args, [data / "human", data / "pool"])
            run = _train(ws, args, strong_augment=True, semi=method, **args.semi_options)
            row.extra["history"] = _semi_curves(ws, run)
            row.metrics = _evaluate(ws, run, test_dir)

        return row_fn

    def row_i(row: Row) -> None:
        from dataeng.engine.learn.rounds import run_rounds
        from dataeng.engine.learn.runs import RunRef

        ws = _workspace(args.out, "i", args, [data / "human", data / "pool"])
        teacher = _train(ws, args)  # = (a): same workspace draw, same seed
        with ws.session() as s:
            results = run_rounds(ws, s, 2, {"sample_budget": args.budget, "epochs": None, "semi": "unimatch",
                                            **args.semi_options},
                                 teacher=RunRef("id", run_id=teacher))
        row.extra["promoted"] = [r.promoted for r in results]
        row.metrics = _evaluate(ws, results[-1].student_run_id, test_dir)
        row.extra["best_student_test"] = {r.student_run_id: _evaluate(ws, r.student_run_id, test_dir)["iou"]
                                          for r in results if r.student_run_id}

    def row_a_strong(row: Row) -> None:
        ws = _workspace(args.out, "A", args, [data / "human", data / "pool"])
        row.metrics = _evaluate(ws, _train(ws, args, strong_augment=True), test_dir)

    if args.suite == "semi":
        plan = {"a": ("supervised on N labels", row_a), "A": ("(a') supervised, strong augmentation", row_a_strong),
                "b": ("two rounds, own teacher from (a)", row_b), "g": ("fixmatch", semi("g", "fixmatch")),
                "h": ("unimatch", semi("h", "unimatch")), "i": ("two rounds with unimatch students", row_i),
                "f": ("supervised on all labelled", row_f)}
    else:
        plan = {"a": ("supervised on N labels", row_a), "b": ("two rounds, own teacher from (a)", row_b),
                "c": ("MediaPipe alone", row_c), "d": ("student from MediaPipe, 0 labels", row_d),
                "e": ("student from MediaPipe + N labels", row_e), "f": ("supervised on all labelled", row_f),
                "g": ("(d) with soft targets on every pixel (threshold 0.5)", distilled("g", 0.5, "soft")),
                "h": ("(d) with hard targets on every pixel (threshold 0.5)", distilled("h", 0.5, "hard"))}
    for name in args.rows:
        if name == "b" and "a" not in rows:
            continue
        what, fn = plan[name]
        timed(name, what, fn)
    print("\n| row | what | fg IoU | mIoU | Boundary IoU | CPU min |")
    print("|---|---|---|---|---|---|")
    for row in rows.values():
        m = row.metrics
        print(f"| ({row.name}) | {row.what} | {m.get('iou', 0):.4f} | {m.get('miou', 0):.4f} | "
              f"{m.get('boundary_iou') or 0:.4f} | {row.minutes:.1f} |")
    if args.suite == "teachers" and "c" in rows and "d" in rows:
        print(f"(d) / (c) = {rows['d'].metrics['iou'] / rows['c'].metrics['iou']:.3f} (target >= 0.97)")
    if args.suite == "teachers" and "c" in rows and "e" in rows:
        print(f"(e) - (c) = {rows['e'].metrics['iou'] - rows['c'].metrics['iou']:+.4f} (target >= +0.01)")
    if args.suite == "semi" and "A" in rows and "h" in rows:
        gain = rows["h"].metrics["iou"] - rows["A"].metrics["iou"]
        print(f"(h) - (a') = {gain:+.4f} (target >= +0.03 at N = 100)")
        if "f" in rows:
            gap = rows["f"].metrics["iou"] - rows["A"].metrics["iou"]
            print(f"(h) closes {gain / gap:.0%} of the gap from (a') to (f) (target >= 40%)" if gap > 0 else
                  f"(f) - (a') = {gap:+.4f}: no gap to close")
    if args.json:
        args.json.write_text(json.dumps({k: vars(v) for k, v in rows.items()}, indent=2, default=str))
    return rows


def _semi_curves(ws: Any, run_id: int) -> dict[str, list[float]]:
    """The run's per-epoch unlabelled loss and confident share (every 10th epoch, and the last)."""
    from dataeng.db.schema import Run

    with ws.session() as s:
        history = s.get(Run, run_id).metrics["history"]
    picked = [h for i, h in enumerate(history) if i % 10 == 0 or i == len(history) - 1]
    return {"epoch": [h["epoch"] for h in picked],
            "unlabelled_loss": [round(h.get("unlabelled_loss") or 0.0, 4) for h in picked],
            "confident_share": [round(h.get("confident_share") or 0.0, 3) for h in picked]}


def _children_cpu() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


if __name__ == "__main__":
    main()
