"""What the demo showed, in a few lines and in ``summary.json``.

Usage:
    .venv/bin/python scripts/demo_summary.py DEMO_DIR

Reads the demo's workspace (``DEMO_DIR/ws``) and review folders and prints, then writes to
``DEMO_DIR/summary.json``:

- the test split's size (labelled images every test figure rests on);
- the starting teacher (the first round's teacher: the supervised run, or MediaPipe) and the
  best model after the rounds (the default teacher now), with their test IoU and mIoU, and the gain;
- the rounds: how many students were promoted, and the last student when it is not the best;
- the review pre-fills as sent to annotators (``DEMO_DIR/review-as-sent``, else ``DEMO_DIR/review``):
  median shapes and polygon vertices per file, and the median edit IoU of the corrections.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

from sqlalchemy import select

from dataeng.db.schema import Label, Round, Run
from dataeng.engine.learn.runs import best_run
from dataeng.storage import atomic_write_text
from dataeng.workspace import Workspace


def _test(run: Run | None) -> dict[str, Any]:
    stored = (run.metrics or {}) if run is not None else {}
    test, val = stored.get("test") or {}, stored.get("val") or {}
    return {"run_id": run.id if run else None, "kind": run.kind if run else None,
            "test_iou": test.get("iou"), "test_miou": test.get("miou"), "test_images": test.get("images"),
            "val_miou": val.get("miou")}


def prefill_shapes(folder: Path) -> dict[str, Any]:
    """Median shapes and vertices per Labelme file of a review export (the manifest is not one)."""
    shapes, vertices = [], []
    for path in sorted(folder.glob("*.json")):
        data = json.loads(path.read_text(encoding="utf-8"))
        if "shapes" not in data:
            continue
        shapes.append(len(data["shapes"]))
        vertices.append(sum(len(s.get("points", [])) for s in data["shapes"]))
    return {"files": len(shapes), "median_shapes": statistics.median(shapes) if shapes else None,
            "median_vertices": statistics.median(vertices) if vertices else None}


def summarize(demo: Path) -> dict[str, Any]:
    """The demo's figures (see the module docstring)."""
    ws = Workspace.open(demo / "ws")
    with ws.session() as s:
        rounds = list(s.scalars(select(Round).where(Round.number >= 1).order_by(Round.number)))
        first = s.get(Run, rounds[0].teacher_run_id) if rounds and rounds[0].teacher_run_id else None
        if first is None:  # no round ran: the supervised run is all there is
            first = s.scalars(select(Run).where(Run.kind == "train", Run.status == "finished").order_by(Run.id)).first()
        best = best_run(s, external=True)
        last = s.scalars(select(Run).where(Run.kind == "train", Run.status == "finished").order_by(Run.id.desc())
                         ).first()
        corrected = select(Label.edit_iou).where(Label.source == "review", Label.parent_id.is_not(None))
        edits = [e for e in s.scalars(corrected) if e is not None]
        start, end = _test(first), _test(best)
        gain = (end["test_iou"] - start["test_iou"]) if None not in (start["test_iou"], end["test_iou"]) else None
        sent = demo / "review-as-sent"
        return {
            "test_images": start["test_images"] or end["test_images"],
            "start": start,
            "best": end,
            "last_student": _test(last) if last is not None and rounds else None,
            "gain_test_iou": gain,
            "rounds": len(rounds),
            "promoted": sum(bool(r.promoted) for r in rounds),
            "review": {**prefill_shapes(sent if sent.is_dir() else demo / "review"),
                       "corrections": len(edits), "median_edit_iou": statistics.median(edits) if edits else None},
        }


def _f(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("demo", type=Path)
    args = parser.parse_args()
    summary = summarize(args.demo)
    atomic_write_text(args.demo / "summary.json", json.dumps(summary, indent=2) + "\n")
    start, best, review = summary["start"], summary["best"], summary["review"]
    print(f"\nwhat the rounds gained, on the test split ({summary['test_images']} labelled images):")
    for name, row in (("start", start), ("best", best)):
        print(f"  {name + ':':6} run {row['run_id']} ({row['kind']})  test IoU {_f(row['test_iou'])}  "
              f"test mIoU {_f(row['test_miou'])}  (val mIoU {_f(row['val_miou'])})")
    gain = summary["gain_test_iou"]
    n = summary["rounds"]
    print(f"  gain:  {'-' if gain is None else f'{gain:+.3f}'} test IoU after {n} round{'' if n == 1 else 's'} "
          f"({summary['promoted']} of {n} students promoted)")
    last = summary["last_student"]
    if last is not None and last["run_id"] != best["run_id"]:
        print(f"  (the last student, run {last['run_id']}, not promoted: test IoU {_f(last['test_iou'])})")
    if review["files"]:
        print(f"  review pre-fills: {review['files']} sent, median {review['median_shapes']:g} shapes and "
              f"{review['median_vertices']:g} vertices each; median edit IoU of {review['corrections']} "
              f"corrections {_f(review['median_edit_iou'])}")


if __name__ == "__main__":
    main()
