"""The report's records: what ``dataeng report`` shows, as frozen dataclasses.

:mod:`dataeng.engine.report.build` fills them from the registry; the plots, the gallery
and the HTML page read them. Kept apart so those modules never import the builder.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

REPORT_VERSION = 1
HISTOGRAM_BINS = 20
GALLERY_SIZE = 12
METRIC_KEYS = ("iou", "miou", "boundary_f1", "boundary_iou")
"""Split-level metrics shown per round, as train.py stores them (``iou`` = foreground IoU)."""


@dataclass(frozen=True)
class Picture:
    """One embedded picture: a caption and a ``data:`` URI (left out of report.json)."""

    caption: str
    uri: str


@dataclass(frozen=True)
class DatasetSummary:
    """The dataset now."""

    images: dict[str, int]
    total_images: int
    labels_by_origin: dict[str, int]
    labels_by_source: dict[str, int]
    labels_by_status: dict[str, int]
    labels: list[dict[str, Any]]
    labelled: dict[str, int]
    human_labelled: dict[str, int]
    labelled_fraction: dict[str, float | None]
    near_duplicate_groups: int
    near_duplicate_images: int
    refused_total: int
    refused_by_kind: dict[str, int]
    refused_by_reason: list[dict[str, Any]]


@dataclass(frozen=True)
class RoundGrowth:
    """Labels at one round: human and corrected cumulative; pseudo-labels made in that round."""

    round: int
    human: int
    corrected: int
    accepted_pseudo: int
    queued: int
    pseudo_made: int


@dataclass(frozen=True)
class RoundQuality:
    """The student trained in one round (best on val) and the teacher it learned from."""

    round: int
    student_run_id: int
    teacher_run_id: int | None
    human_labels: int
    promoted: bool | None
    val: dict[str, float | None] | None
    test: dict[str, float | None] | None


@dataclass(frozen=True)
class RunRow:
    """One run in the runs table; ``config`` holds only the keys that differ between runs of its kind."""

    id: int
    kind: str
    round: int | None
    status: str
    device: str | None
    duration_s: float | None
    config: dict[str, Any]
    val_miou: float | None
    test_iou: float | None


@dataclass(frozen=True)
class GalleryItem:
    """One gallery tile: what it shows, its numbers, and its pictures."""

    image_id: int
    label_id: int | None
    scores: dict[str, float | None]
    pictures: tuple[Picture, ...] = ()


@dataclass(frozen=True)
class Report:
    """Everything ``dataeng report`` shows; :meth:`to_dict` is report.json."""

    generated_at: str
    workspace: str
    empty: bool
    dataset: DatasetSummary
    growth: list[RoundGrowth]
    batches: list[dict[str, Any]]
    quality: list[RoundQuality]
    best_run_id: int | None
    test_metrics_available: bool
    pseudo: dict[str, Any]
    worst_test: list[GalleryItem]
    review_queue: list[GalleryItem]
    review: dict[str, Any]
    runs: list[RunRow]
    notes: list[str]
    plots: dict[str, Picture] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready numbers (stable keys; pictures left out)."""
        data = dataclasses.asdict(self)
        data.pop("plots")
        for key in ("worst_test", "review_queue"):
            for item in data[key]:
                item.pop("pictures")
        data["version"] = REPORT_VERSION
        return data


def worst_scores(row: dict[str, Any]) -> dict[str, float | None]:
    """The numbers shown with a worst-test tile."""
    return {k: row.get(k) for k in ("iou", "boundary_f1", "boundary_iou")}


def queue_scores(row: dict[str, Any]) -> dict[str, float | None]:
    """The numbers shown with a review-queue tile."""
    return {k: row.get(k) for k in ("confident_fraction", "mean_confidence", "stability")}
