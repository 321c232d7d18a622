"""The Label Studio side of ``dataeng review export --format labelstudio``: tasks with predictions.

Each exported image is one task of ``tasks.json``; its ``data`` holds the image URL and the
manifest's ids (``dataeng_review``, set once the review row exists, ``dataeng_item`` = the item
number, ``image_sha256``, ``image_id``, ``label_id``), so a Label Studio export (files or API)
matches its review items without the manifest. The pre-fill is the task's prediction:
``model_version`` = the teacher run (``run-<id>``; ``dataeng`` for a human label of the issues
queue), ``score`` = the queue score. An empty pre-fill (an evaluation image without a teacher)
is a task without predictions.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from dataeng.annotation.formats import labelstudio
from dataeng.annotation.trace import TraceLimits
from dataeng.annotation.types import ExportRecord, ImageAnnotation, LabelMap

REVIEW_KEY = "dataeng_review"
ITEM_KEY = "dataeng_item"
SHA_KEY = "image_sha256"


@dataclass(frozen=True)
class LabelStudioOptions:
    """How a review goes out to Label Studio: its final folder, region kind, per-item prediction runs."""

    out: Path
    shapes: Literal["brush", "polygon"] = "brush"
    runs: tuple[int | None, ...] = ()


def model_version(run_id: int | None) -> str:
    """The ``model_version`` of a pre-fill made by ``run_id`` (``dataeng`` when no run made it)."""
    return f"run-{run_id}" if run_id is not None else "dataeng"


def write_review_tasks(tmp: Path, records: list[ExportRecord], items: list[dict[str, Any]], label_map: LabelMap,
                       options: LabelStudioOptions, limits: TraceLimits | None) -> list[ImageAnnotation]:
    """Write ``tasks.json`` and ``labeling_config.xml`` into ``tmp`` (images are already in ``images/``).

    Args:
        items: per record, ``n``, ``image_sha256``, ``image_id``, ``label_id`` and ``score``.

    Returns:
        Each task's prediction read back (an annotation without shapes for a task without one),
        in record order: what the pre-fill is drawn from.
    """
    extras = {}
    for k, (record, item) in enumerate(zip(records, items, strict=True)):
        run = options.runs[k] if k < len(options.runs) else None
        extras[record.image_name] = labelstudio.TaskExtras(
            data={ITEM_KEY: item["n"], SHA_KEY: item["image_sha256"], "image_id": item["image_id"],
                  "label_id": item["label_id"]},
            as_prediction=True, model_version=model_version(run), score=item["score"])
    labelstudio.write(tmp, records, label_map, labelstudio_shapes=options.shapes, extras=extras,
                      served_from=options.out, limits=limits if options.shapes == "polygon" else None,
                      copy_images=False)
    tasks, _ = labelstudio.read_tasks(tmp / labelstudio.TASKS_FILE, tmp)
    out = []
    for record, task in zip(records, tasks, strict=True):
        if task.error is not None:
            raise task.error  # our own writer's output: a bug, not the annotators' input
        out.append(task.annotation or ImageAnnotation(record.image_name, None, record.width, record.height, (),
                                                      labelstudio.NAME, tmp / labelstudio.TASKS_FILE))
    return out


def stamp_review(folder: Path, review_id: int) -> None:
    """Put the review id into every task of the export's ``tasks.json``."""
    labelstudio.set_data(folder / labelstudio.TASKS_FILE, {REVIEW_KEY: review_id})
