"""Turning :class:`ExportRecord` masks into what writers emit, and writing files safely.

Writers never trace or encode on their own: regions come from :mod:`..trace`, RLE from
:mod:`..rle`. Ignore pixels are written as shapes labelled ``__ignore__`` in every
format but COCO (there: crowd regions of the class :func:`ignore_owner` picks, marked
``dataeng_ignore``), so that reading the export back restores IGNORE_INDEX.

With :class:`..trace.TraceLimits` (review pre-fills, polygon writers only) regions are
traced by :func:`..trace.trace_limited` instead, after :func:`absorb_small_ignore` gave each
ignore speck below the minimum area to what surrounds it; the IoU each class keeps is
counted outside the pre-label's ignore pixels, on the shapes as a reader draws them back
(:func:`flat_draw_items`).
"""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import cv2
import numpy as np

from dataeng.annotation.rasterize import rasterize
from dataeng.annotation.trace import DEFAULT_TOLERANCE, TraceLimits, mask_iou, trace, trace_limited
from dataeng.annotation.types import (
    BACKGROUND,
    BACKGROUND_LABELS,
    IGNORE_INDEX,
    IGNORE_LABEL,
    ExportRecord,
    ImageAnnotation,
    LabelMap,
    Polygon,
    Ring,
    Shape,
)
from dataeng.storage import atomic_write_text  # noqa: F401  (re-exported for the writers)

HOLE_LABEL = BACKGROUND_LABELS[0]
"""Label of the background polygons that stand for holes in formats without holes."""

IgnoreTracing = Literal["loose", "bounded", "exact"]
"""How a pre-fill's ignore regions are traced, coarsest first (see :func:`polygons_by_class`)."""
IGNORE_TRACINGS: tuple[IgnoreTracing, ...] = ("loose", "bounded", "exact")


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


def absorb_small_ignore(mask: np.ndarray, min_pixels: float) -> np.ndarray:
    """A copy of a class-index mask whose ignore regions (8-connected) smaller than ``min_pixels``
    take the value most common on their 8-neighbour border (background included; the lowest
    value on a tie; background when only the image edge touches them).

    Example:
        >>> m = np.ones((5, 5), np.uint8); m[2, 2] = IGNORE_INDEX
        >>> int(absorb_small_ignore(m, 4)[2, 2])
        1
    """
    out = mask.copy()
    if min_pixels <= 0 or not (mask == IGNORE_INDEX).any():
        return out
    height, width = mask.shape
    for component in connected_components(mask == IGNORE_INDEX):
        patch = component.patch
        if int(patch.sum()) >= min_pixels:
            continue
        x, y = component.origin
        h, w = patch.shape
        x0, y0, x1, y1 = max(0, x - 1), max(0, y - 1), min(width, x + w + 1), min(height, y + h + 1)
        inside = np.zeros((y1 - y0, x1 - x0), dtype=np.uint8)
        inside[y - y0 : y - y0 + h, x - x0 : x - x0 + w] = patch
        border = cv2.dilate(inside, np.ones((3, 3), np.uint8)).astype(bool) & ~inside.astype(bool)
        values = mask[y0:y1, x0:x1][border]
        values = values[values != IGNORE_INDEX]
        fill = int(np.argmax(np.bincount(values))) if values.size else BACKGROUND
        out[y0:y1, x0:x1][inside.astype(bool)] = fill
    return out


def polygons_by_class(
    record: ExportRecord, label_map: LabelMap, tolerance: float = DEFAULT_TOLERANCE,
    limits: TraceLimits | None = None, ignore: IgnoreTracing = "loose",
) -> list[tuple[ClassRegion, list[Polygon]]]:
    """Trace every class region of a record.

    Args:
        record: the labelled image.
        label_map: class names.
        tolerance: simplification in pixels for :func:`..trace.trace` (without ``limits``).
        limits: trace a pre-fill for annotators instead (:func:`..trace.trace_limited`):
            ignore specks absorbed first (:func:`absorb_small_ignore`), each class's IoU
            counted outside the record's ignore pixels.
        ignore: with ``limits``, how the ignore regions left are traced: ``loose`` (the same
            limits without the IoU bound: they are pixels to decide, whose outline matters
            less than its vertex count; a band of unsure pixels along an edge would
            otherwise keep every vertex), ``bounded`` (with the bound) or ``exact``
            (tolerance 0). :func:`flat_draw_items` tightens it when a coarse ignore shape,
            drawn over a class, costs that class its IoU.
    """
    if limits is None:
        return [(region, trace(region.pixels, 1, tolerance)) for region in class_regions(record, label_map)]
    check_record(record, label_map)
    mask = absorb_small_ignore(record.mask, limits.min_pixels(record.height, record.width))
    care = record.mask != IGNORE_INDEX
    loose = dataclasses.replace(limits, min_iou=0.0)
    out = []
    for value in sorted(set(np.unique(mask).tolist()) - {BACKGROUND}):
        region = ClassRegion(value, label_of(value, label_map), mask == value)
        if value == IGNORE_INDEX:
            if ignore == "exact":
                polygons = trace(region.pixels, 1, 0.0)
            else:
                polygons = trace_limited(region.pixels, 1, loose if ignore == "loose" else limits)
        else:
            polygons = trace_limited(region.pixels, 1, limits, care=care)
        out.append((region, polygons))
    return out


def flat_draw_items(record: ExportRecord, label_map: LabelMap, tolerance: float = DEFAULT_TOLERANCE,
                    limits: TraceLimits | None = None) -> list[DrawItem]:
    """Exteriors and holes as separate rings: each exterior followed by its own holes, the
    polygons largest exterior first.

    For formats without holes (labelme, CVAT polygons) holes become later background
    polygons. A region inside a hole (an island, or a region of another class) lies inside
    the holed region's exterior, so it is smaller and drawn after that region and its holes:
    on top. Holes are not ranked by their own area: a hole's ring runs through the pixels
    of the region filling it, so it ties with that region's exterior and could be drawn
    over it (a person inside a ring of ignore pixels would vanish).

    With ``limits`` (see :func:`polygons_by_class`) the rings are drawn back in this order,
    as a reader draws them; while a class keeps less than ``limits.min_iou`` with the record
    (outside its ignore pixels) because ignore shapes cover it, the ignore regions are traced
    again more tightly (``loose``, then ``bounded``, then ``exact``).
    """
    if limits is None:
        return _flat(polygons_by_class(record, label_map, tolerance))
    for ignore in IGNORE_TRACINGS:
        items = _flat(polygons_by_class(record, label_map, tolerance, limits, ignore))
        if not any(item.class_index == IGNORE_INDEX for item in items) \
                or _keeps_iou(record, label_map, items, limits.min_iou):
            break
    return items


def _flat(traced: list[tuple[ClassRegion, list[Polygon]]]) -> list[DrawItem]:
    groups: list[list[DrawItem]] = []
    for region, polygons in traced:
        for polygon in polygons:
            group = [DrawItem(region.label, region.class_index, polygon.exterior, False, _area(polygon.exterior))]
            group += [DrawItem(HOLE_LABEL, BACKGROUND, hole, True, _area(hole)) for hole in polygon.holes]
            groups.append(group)
    groups.sort(key=lambda group: -group[0].area)
    return [item for group in groups for item in group]


def _keeps_iou(record: ExportRecord, label_map: LabelMap, items: list[DrawItem], min_iou: float) -> bool:
    """Whether every class, drawn back from ``items``, keeps ``min_iou`` outside the ignore pixels."""
    shapes = tuple(Shape(item.label, "polygon", item.ring) for item in items)
    annotation = ImageAnnotation(record.image_name, None, record.width, record.height, shapes, "check", Path())
    drawn = rasterize(annotation, label_map, record.width, record.height).mask
    care = record.mask != IGNORE_INDEX
    classes = set(np.unique(record.mask).tolist()) - {BACKGROUND, IGNORE_INDEX}
    return all(mask_iou(drawn == value, record.mask == value, care) >= min_iou for value in classes)


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

