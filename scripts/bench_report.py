"""Benchmark ``dataeng report`` on a large registry.

Builds a workspace of 100,000 images, ~200,000 labels over 10 rounds (human, pseudo,
review corrections), 11 train runs with metrics, per-image test metrics of three runs,
problems and batches, all bulk-inserted with plain SQL; only the files the galleries
open are real (12 worst test images of the best run, 12 review-queue items, one tiny
checkpoint, and the predictions its test evaluation kept for those 12). Then times
``dataeng report`` (gallery included) as a subprocess, ``--repeat`` times.

Usage::

    .venv/bin/python scripts/bench_report.py [--dir /tmp/bench-report] [--images 100000] [--rounds 10]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sqlite3
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import cv2
import numpy as np

from dataeng.annotation.masks import write_confidence, write_mask
from dataeng.engine.learn.evaluate import prediction_path
from dataeng.workspace import Workspace

ENCODER, DEPTH, SIZE = "tu-mobilenetv3_small_050", 3, 64


def _ts(t: datetime) -> str:
    # The text SQLAlchemy's SQLite DateTime stores, so SQL comparisons agree with the ORM.
    return t.strftime("%Y-%m-%d %H:%M:%S.%f")


def _portrait(rng: np.random.Generator, side: int = 96) -> tuple[np.ndarray, np.ndarray]:
    image = rng.integers(0, 255, (side, side, 3), dtype=np.uint8)
    mask = np.zeros((side, side), np.uint8)
    cv2.circle(mask, (side // 2, side // 3), side // 6, 1, -1)
    cv2.rectangle(mask, (side // 4, side // 2), (3 * side // 4, side), 1, -1)
    image[mask == 1] = (image[mask == 1] // 3 + 150).astype(np.uint8)
    return image, mask


def side_shift(image_id: int) -> int:
    return 3 + image_id % 9


def build(root: Path, n_images: int, rounds: int, seed: int = 0) -> Workspace:
    """Make the benchmark workspace at ``root`` (replaced if present)."""
    if root.exists():
        shutil.rmtree(root)
    ws = Workspace.init(root)
    rng = np.random.default_rng(seed)
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    con = sqlite3.connect(root / "registry.db")
    con.execute("PRAGMA synchronous=OFF")
    cur = con.cursor()
    cur.executemany("INSERT INTO batches (id, kind, args, status, started_at) "
                    "VALUES (?, 'ingest', '{}', 'finished', ?)",
                    [(b + 1, _ts(t0 + timedelta(days=b))) for b in range(rounds)])
    splits = rng.choice(["train", "val", "test"], size=n_images, p=[0.7, 0.2, 0.1])
    phash = rng.integers(0, 2**62, size=n_images)
    rows = []
    for i in range(n_images):
        iid = i + 1
        group = iid - 1 if i % 50 == 1 else None  # 2% near duplicates, in pairs
        rows.append((iid, f"{iid:064x}", f"{iid:064x}", int(phash[i]), int(phash[i]) & 0xFFFF,
                     (int(phash[i]) >> 16) & 0xFFFF, (int(phash[i]) >> 32) & 0xFFFF, 96, 96,
                     f"store/images/fake/{iid}.png", f"/data/{iid}.jpg", group, str(splits[i]),
                     i * rounds // n_images + 1, _ts(t0)))
    cur.executemany("INSERT INTO images (id, sha256, source_sha256, phash, ph0, ph1, ph2, width, height, store_path, "
                    "original_path, group_id, split, batch_id, created_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    rows)
    cur.executemany("INSERT INTO problems (batch_id, path, kind, field, message, created_at) VALUES (?,?,?,?,?,?)",
                    [(k % rounds + 1, f"/data/bad{k}.jpg", ("unreadable", "unknown_label", "too_small")[k % 3],
                      None if k % 3 != 1 else "shapes[0].label", "refused", _ts(t0)) for k in range(600)])

    # Runs: a supervised teacher (round 0), then one student per round; round r starts at day r.
    run_rows = []
    for r in range(rounds + 1):
        iou = 0.6 + 0.03 * r
        metrics = {"val": {"iou": iou, "miou": iou + 0.1, "boundary_f1": iou - 0.1, "boundary_iou": iou - 0.2},
                   "test": {"iou": iou - 0.02, "miou": iou + 0.08, "boundary_f1": iou - 0.12,
                            "boundary_iou": iou - 0.22}, "best_epoch": 5}
        config = {"arch": "unet", "encoder": ENCODER, "lr": 1e-3 if r % 2 else 5e-4, "epochs": 20,
                  "strong_augment": r > 0}
        start = t0 + timedelta(days=r, hours=1)
        run_rows.append((r + 1, "train", r if r else None, r if r else None, json.dumps(config), "finished",
                         json.dumps(metrics), f"runs/{r + 1}/checkpoint.pt", "cpu", _ts(start),
                         _ts(start + timedelta(minutes=30 + r))))
    cur.executemany("INSERT INTO runs (id, kind, round, teacher_run_id, config, status, metrics, checkpoint_path, "
                    "device, started_at, finished_at) VALUES (?,?,?,?,?,?,?,?,?,?,?)", run_rows)

    # Labels: human on 30% of images (all val/test get one), pseudo per round on unlabelled train images.
    ids = np.arange(1, n_images + 1)
    human = ids[(splits != "train") | (rng.random(n_images) < 0.1)]
    label_rows = []
    lid = 0
    for iid in human:
        lid += 1
        label_rows.append((lid, int(iid), "human", "labelme", f"store/masks/fake/{lid}.png", None, "active", None,
                           None, None, None, None, None, None, int((iid - 1) * rounds // n_images + 1),
                           _ts(t0 + timedelta(minutes=int(iid) % 600))))
    pool = np.setdiff1d(ids[splits == "train"], human)
    per_round = (200_000 - len(label_rows) - 2000) // rounds
    for r in range(1, rounds + 1):
        chosen = rng.choice(pool, size=min(per_round, len(pool)), replace=False)
        scores = rng.beta(8, 1.5, size=(len(chosen), 3))
        for iid, (cf, mc, st) in zip(chosen, scores, strict=True):
            lid += 1
            accepted = cf >= 0.9 and mc >= 0.9 and st >= 0.9
            status = ("active" if accepted else "needs_review") if r == rounds else "superseded"
            label_rows.append((lid, int(iid), "pseudo", "teacher", f"store/masks/fake/{lid}.png",
                               f"store/conf/fake/{lid}.png", status, r, float(cf), float(mc), float(st), None, None,
                               r, None, _ts(t0 + timedelta(days=r, hours=2))))
    # In the last round only one pseudo-label per image may be active: older ones are superseded above.
    cur.executemany("INSERT INTO labels (id, image_id, origin, source, mask_path, conf_path, status, run_id, "
                    "confident_fraction, mean_confidence, stability, parent_id, edit_iou, round, batch_id, "
                    "created_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)", label_rows)
    # 2,000 corrections: review labels on earlier rounds' pseudo-labels (their images have no active label).
    corrected = [row for row in label_rows if row[2] == "pseudo" and row[7] == 1][:2000]
    review_rows = []
    for k, parent in enumerate(corrected):
        lid += 1
        review_rows.append((lid, parent[1], "human", "review", f"store/masks/fake/{lid}.png", "active", parent[0],
                            float(rng.beta(6, 1.5)), 2, rounds, _ts(t0 + timedelta(days=2, hours=k % 20))))
    cur.executemany("INSERT OR IGNORE INTO labels (id, image_id, origin, source, mask_path, status, parent_id, "
                    "edit_iou, round, batch_id, created_at) VALUES (?,?,?,?,?,?,?,?,?,?,?)", review_rows)

    # Per-image test metrics of three runs; the best run (the last) gets real files for its worst 12.
    test_ids = ids[splits == "test"]
    best = rounds + 1
    metric_rows = []
    for run_id in (best - 2, best - 1, best):
        ious = rng.beta(8, 2, size=len(test_ids))
        for iid, iou in zip(test_ids, ious, strict=True):
            metric_rows.append((run_id, run_id, int(iid), "test", float(iou), float(iou), float(iou), 0.95,
                                float(iou) - 0.1, float(iou) - 0.2, _ts(t0)))
    cur.executemany("INSERT INTO image_metrics (run_id, model_run_id, image_id, split, iou, miou, fwiou, "
                    "pixel_accuracy, boundary_f1, boundary_iou, created_at) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                    metric_rows)
    con.commit()

    worst = [r[0] for r in cur.execute("SELECT image_id FROM image_metrics WHERE run_id = ? ORDER BY iou, image_id "
                                       "LIMIT 12", (best,))]
    queue = [r[0] for r in cur.execute("SELECT id FROM labels WHERE origin = 'pseudo' AND status = 'needs_review' "
                                       "ORDER BY confident_fraction * stability, id LIMIT 12")]
    for iid in worst:
        image, mask = _portrait(rng)
        rel = f"store/images/real/{iid}.png"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / rel), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        cur.execute("UPDATE images SET store_path = ? WHERE id = ?", (rel, iid))
        (mask_rel,) = cur.execute("SELECT mask_path FROM labels WHERE image_id = ? AND status = 'active' "
                                  "AND origin = 'human'", (iid,)).fetchone()
        write_mask(root / mask_rel, mask)
        # The prediction the best run's test evaluation kept for this image (a shifted mask).
        write_mask(prediction_path(ws.run_dir(best), "test", iid), np.roll(mask, side_shift(iid), axis=1))
    for label_id in queue:
        (iid, mask_rel, conf_rel) = cur.execute("SELECT image_id, mask_path, conf_path FROM labels WHERE id = ?",
                                                (label_id,)).fetchone()
        image, mask = _portrait(rng)
        rel = f"store/images/real/{iid}.png"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / rel), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        cur.execute("UPDATE images SET store_path = ? WHERE id = ?", (rel, iid))
        write_mask(root / mask_rel, mask)
        write_confidence(root / conf_rel, rng.random(mask.shape).astype(np.float32))
    con.commit()
    con.close()
    _checkpoint(ws, best)
    return ws


def _checkpoint(ws: Workspace, run_id: int) -> None:
    from dataeng.models.checkpoint import save_checkpoint
    from dataeng.models.factory import build_model

    model = build_model("unet", ENCODER, 1, encoder_depth=DEPTH)
    save_checkpoint(ws.run_dir(run_id) / "checkpoint.pt", model,
                    {"arch": "unet", "encoder": ENCODER, "encoder_depth": DEPTH, "classes": ["person"],
                     "image_size": [SIZE, SIZE], "epoch": 1})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=Path("/tmp/bench-report"))
    parser.add_argument("--images", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    started = time.perf_counter()
    build(args.dir, args.images, args.rounds)
    with sqlite3.connect(args.dir / "registry.db") as con:
        counts = {t: con.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]
                  for t in ("images", "labels", "runs", "image_metrics", "problems")}
    print(f"built {counts} in {time.perf_counter() - started:.1f} s")
    exe = Path(sys.executable).with_name("dataeng")
    times = []
    for _ in range(args.repeat):
        t = time.perf_counter()
        subprocess.run([str(exe), "report", "--workspace", str(args.dir)], check=True, stdout=subprocess.DEVNULL)
        times.append(time.perf_counter() - t)
    html = args.dir / "reports" / "report.html"
    warm = sorted(times[1:])
    # The gallery reads the predictions the evaluation kept: no model is loaded, cold or warm.
    print(f"dataeng report (gallery included): first {times[0]:.2f} s; then "
          + (f"{warm[len(warm) // 2]:.2f} s median of {len(warm)}" if warm else "not measured")
          + f"; report.html {html.stat().st_size / 1e6:.2f} MB")

if __name__ == "__main__":
    main()
