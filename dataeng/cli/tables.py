"""The rich tables the commands print: metrics, ingest and status counts, rounds, the report summary.

Each takes plain results (engine dataclasses or their dicts) and returns a :class:`rich.table.Table`;
nothing here imports the engine.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rich.table import Table

METRIC_ROWS = ("iou", "miou", "fwiou", "pixel_accuracy", "boundary_f1", "boundary_iou", "mae", "sad", "mse", "grad")
ROUND_COLUMNS = {"round": "round", "teacher_run_id": "teacher", "student_run_id": "student", "accepted": "accepted",
                 "queued": "queued", "superseded": "superseded", "teacher_val_miou": "teacher val mIoU",
                 "student_val_miou": "student val mIoU", "student_test_iou": "student test IoU",
                 "promoted": "promoted"}


def cell(value: Any) -> str:
    """A table cell: ``-`` for missing, yes/no for flags, 4 decimals for floats."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def metrics_table(columns: Mapping[str, Mapping[str, Any] | None]) -> Table:
    """One column per split (empty ones left out), one row per metric that any split has."""
    table = Table(title="metrics")
    table.add_column("metric")
    shown = {k: v for k, v in columns.items() if v}
    for name in shown:
        table.add_column(name, justify="right")
    if not shown:
        table.add_row("(no labelled val/test images)")
        return table
    for metric in ("images", *METRIC_ROWS):
        values = [v.get(metric) for v in shown.values()]
        if all(x is None for x in values):
            continue
        table.add_row(metric, *("-" if x is None else f"{x:.4f}" if isinstance(x, float) else str(x)
                                for x in values))
    return table


def ingest_table(summary: Any) -> Table:
    """The counts of one ingest batch."""
    table = Table(title=f"ingest batch {summary.batch_id}", show_header=False)
    for key in ("scanned", "added", "duplicates", "near_duplicates", "refused"):
        table.add_row(key.replace("_", "-"), str(getattr(summary, key)))
    labels = summary.labels
    table.add_row("labels added", str(labels.labels_added))
    table.add_row("annotations refused", str(labels.refused))
    for split, n in summary.per_split.items():
        table.add_row(f"added to {split}", str(n))
    return table


def splits_table(data: Mapping[str, Any], root: Any) -> Table:
    """Images and labelled images per split (``dataeng status``)."""
    t = Table(title=f"workspace {root}")
    t.add_column("split")
    t.add_column("images", justify="right")
    t.add_column("labelled", justify="right")
    for split, n in data["images"].items():
        t.add_row(split, str(n), str(data["labelled"][split]))
    t.add_row("all", str(sum(data["images"].values())), str(sum(data["labelled"].values())), style="bold")
    return t


def labels_table(labels: Mapping[str, Mapping[str, int]]) -> Table:
    """Label counts by origin and status (``dataeng status``)."""
    lt = Table(title="labels")
    lt.add_column("origin")
    lt.add_column("status")
    lt.add_column("n", justify="right")
    for origin, by_status in sorted(labels.items()):
        for st, n in sorted(by_status.items()):
            lt.add_row(origin, st, str(n))
    return lt


def rounds_table(rows: list[dict[str, Any]]) -> Table:
    """One row per teacher-student round (``dataeng round``)."""
    table = Table(title="rounds")
    for title in ROUND_COLUMNS.values():
        table.add_column(title, justify="right")
    for r in rows:
        table.add_row(*(cell(r[k]) for k in ROUND_COLUMNS))
    return table


def dataset_table(d: Any) -> Table:
    """The report's dataset section: images, labelled, human-labelled per split."""
    t = Table(title="dataset")
    for col in ("split", "images", "labelled", "human", "fraction"):
        t.add_column(col, justify="left" if col == "split" else "right")
    for split, n in d.images.items():
        frac = d.labelled_fraction[split]
        t.add_row(split, f"{n:,}", f"{d.labelled[split]:,}", f"{d.human_labelled[split]:,}",
                  "-" if frac is None else f"{100 * frac:.1f}%")
    return t


def growth_table(growth: list[Any]) -> Table:
    """The report's label growth per round."""
    g = Table(title="growth per round")
    for col in ("round", "human", "corrected", "accepted pseudo", "queued"):
        g.add_column(col, justify="right")
    for row in growth:
        g.add_row(str(row.round), f"{row.human:,}", f"{row.corrected:,}", f"{row.accepted_pseudo:,}",
                  f"{row.queued:,}")
    return g


def quality_table(quality: list[Any]) -> Table:
    """The report's student quality per round."""
    q = Table(title="model quality per round (student)")
    for col in ("round", "run", "teacher", "human labels", "val mIoU", "test IoU", "test mIoU", "test BF1",
                "test BIoU"):
        q.add_column(col, justify="right")
    for row in quality:
        test = row.test or {}
        cells = [(row.val or {}).get("miou"), *(test.get(k) for k in ("iou", "miou", "boundary_f1", "boundary_iou"))]
        q.add_row(str(row.round), str(row.student_run_id), str(row.teacher_run_id or "-"), f"{row.human_labels:,}",
                  *("-" if v is None else f"{v:.3f}" for v in cells))
    return q
