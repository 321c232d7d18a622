"""Turning :class:`ExportRecord` masks into what writers emit, and writing files safely.

Writers never trace or encode on their own: regions come from :mod:`..trace`, RLE from
:mod:`..rle`. Ignore pixels are written as shapes labelled ``__ignore__`` in every
format but COCO (there: crowd regions of the class :func:`ignore_owner` picks, marked
``dataeng_ignore``), so that reading the export back restores IGNORE_INDEX.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from dataeng.annotation.trace import DEFAULT_TOLERANCE, trace
from dataeng.annotation.types import (
    BACKGROUND,
    BACKGROUND_LABELS,
    IGNORE_INDEX,
    IGNORE_LABEL,
    ExportRecord,
    LabelMap,
    Polygon,
    Ring,
)
from dataeng.storage import atomic_write_text  # noqa: F401  (re-exported for the writers)

HOLE_LABEL = BACKGROUND_LABELS[0]
"""Label of the background polygons that stand for holes in formats without holes."""


@dataclass(frozen=True)
class ClassRegion:
    """The pixels of one class in one record."""

    class_index: int
    label: str
    pixels: np.ndarray


def check_record(record: ExportRecord, label_map: LabelMap) -> None:
    """Refuse a record whose mask does not fit its declared size or the label map.

    Raises:
        ValueError: wrong shape or dtype, or values outside the label map plus ignore.
    """
    if record.mask.shape != (record.height, record.width) or record.mask.dtype != np.uint8:
        raise ValueError(
            f"{record.image_name}: mask {record.mask.shape} {record.mask.dtype} is not "
            f"uint8 {record.height}x{record.width}"
        )
    values = set(np.unique(record.mask).tolist()) - {IGNORE_INDEX}
    if values and max(values) > label_map.num_classes:
        raise ValueError(f"{record.image_name}: mask value {max(values)} not in the label map")


def label_of(class_index: int, label_map: LabelMap) -> str:
    """The name a writer uses for a class index (``__ignore__`` for IGNORE_INDEX)."""
    if class_index == IGNORE_INDEX:
        return IGNORE_LABEL
    return label_map.names[class_index]


def class_regions(record: ExportRecord, label_map: LabelMap) -> list[ClassRegion]:
    """One region per class present in the mask (background excluded), ignore last."""
    check_record(record, label_map)
    present = sorted(set(np.unique(record.mask).tolist()) - {BACKGROUND})
    return [ClassRegion(value, label_of(value, label_map), record.mask == value) for value in present]


CONNECTIVITY = 8
"""Pixel connectivity of :func:`connected_components`: the same regions :func:`..trace.trace`
traces (``findContours`` follows 8-connected outlines), so a region is one instance whichever
way it is written, RLE or polygon."""


@dataclass(frozen=True)
class Component:
    """One connected region of a bool mask: its tight patch and the patch's top-left (x, y)."""

    patch: np.ndarray
    origin: tuple[int, int]

    def full(self, height: int, width: int) -> np.ndarray:
        """The region as a bool ``height`` x ``width`` mask."""
        out = np.zeros((height, width), dtype=bool)
        x, y = self.origin
        out[y : y + self.patch.shape[0], x : x + self.patch.shape[1]] = self.patch
        return out


def connected_components(pixels: np.ndarray) -> list[Component]:
    """The :data:`CONNECTIVITY`-connected regions of a bool mask, in OpenCV's label order
    (by the first pixel met in raster order)."""
    count, labels, stats, _ = cv2.connectedComponentsWithStats(
        np.ascontiguousarray(pixels, dtype=np.uint8), connectivity=CONNECTIVITY
    )
    out = []
    for k in range(1, count):
        x, y, w, h = (int(v) for v in stats[k, :4])
        out.append(Component(np.ascontiguousarray(labels[y : y + h, x : x + w] == k), (x, y)))
    return out


def ignore_owner(mask: np.ndarray, component: Component, label_map: LabelMap) -> int:
    """The class an ignore region is written as, in formats where ignore must be a class
    (COCO crowd regions): the class with the most pixels on the region's 8-neighbour border,
    the lowest index on a tie, the first class when only background (or the image edge)
    touches it.

    Raises:
        ValueError: the label map has no class.
    """
    if label_map.num_classes == 0:
        raise ValueError("ignore pixels need a class to be written under, and the label map has none")
    height, width = mask.shape
    x, y = component.origin
    h, w = component.patch.shape
    x0, y0, x1, y1 = max(0, x - 1), max(0, y - 1), min(width, x + w + 1), min(height, y + h + 1)
    inside = np.zeros((y1 - y0, x1 - x0), dtype=np.uint8)
    inside[y - y0 : y - y0 + h, x - x0 : x - x0 + w] = component.patch
    border = cv2.dilate(inside, np.ones((3, 3), np.uint8)).astype(bool) & ~inside.astype(bool)
    values = mask[y0:y1, x0:x1][border]
    values = values[(values != BACKGROUND) & (values <= label_map.num_classes)]
    if values.size == 0:
        return 1
    return int(np.argmax(np.bincount(values)))


@dataclass(frozen=True)
class DrawItem:
    """A ring to draw in order: a class exterior, or a hole drawn as background."""

    label: str
    class_index: int
    ring: Ring
    is_hole: bool
    area: float


def polygons_by_class(
    record: ExportRecord, label_map: LabelMap, tolerance: float = DEFAULT_TOLERANCE
) -> list[tuple[ClassRegion, list[Polygon]]]:
    """Trace every class region of a record."""
    return [(region, trace(region.pixels, 1, tolerance)) for region in class_regions(record, label_map)]


def flat_draw_items(record: ExportRecord, label_map: LabelMap, tolerance: float = DEFAULT_TOLERANCE) -> list[DrawItem]:
    """Exteriors and holes as separate rings, largest first.

    For formats without holes (labelme, CVAT polygons) holes become later background
    polygons; drawing larger rings first keeps an island inside a hole, and a region
    of another class inside a hole, on top.
    """
    items: list[DrawItem] = []
    for region, polygons in polygons_by_class(record, label_map, tolerance):
        for polygon in polygons:
            items.append(DrawItem(region.label, region.class_index, polygon.exterior, False, _area(polygon.exterior)))
            for hole in polygon.holes:
                items.append(DrawItem(HOLE_LABEL, BACKGROUND, hole, True, _area(hole)))
    # Stable sort: on equal area an exterior stays before its own hole.
    items.sort(key=lambda item: -item.area)
    return items


def _area(ring: Ring) -> float:
    xs = np.asarray([p[0] for p in ring])
    ys = np.asarray([p[1] for p in ring])
    # Shoelace plus the perimeter's half-pixel border, so that thin rings still rank.
    shoelace = 0.5 * abs(float(np.dot(xs, np.roll(ys, 1)) - np.dot(ys, np.roll(xs, 1))))
    return shoelace + len(ring) / 2


def copy_image(record: ExportRecord, dest: Path) -> Path | None:
    """Copy the record's source image to ``dest`` (skipped if absent or already there)."""
    if record.image_path is None or not record.image_path.is_file():
        return None
    if dest.exists() and dest.resolve() == record.image_path.resolve():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(record.image_path, dest)
    return dest


def safe_relative(name: str) -> Path:
    """An image name as a relative path that cannot leave the export folder.

    Raises:
        ValueError: the name is absolute or climbs out with ``..``.
    """
    candidate = Path(name.replace("\\", "/"))
    if candidate.is_absolute() or ".." in candidate.parts or not candidate.parts:
        raise ValueError(f"image name {name!r} must be a relative path inside the export")
    return candidate


PROVENANCE_PREFIX = "dataeng_"
"""Attribute (CVAT) and tag (Supervisely) names that carry dataeng's provenance: ``dataeng_<key>``."""


def provenance_from_named(values: Iterable[tuple[str, object]]) -> dict[str, object]:
    """The provenance among ``(name, value)`` pairs: ``dataeng_<key>`` names, prefix removed."""
    return {name[len(PROVENANCE_PREFIX):]: value for name, value in values if name.startswith(PROVENANCE_PREFIX)}

