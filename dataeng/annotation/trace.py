"""Mask -> polygons: the only place masks are traced.

Rings run through the centres of boundary pixels (OpenCV ``findContours`` with
``RETR_CCOMP``). The exterior ring follows the region's own outer pixels; each hole
ring follows the hole's own (background) pixels, so that the polygon rule of
:mod:`dataeng.annotation.rasterize` (PIL fill *with* outline, holes removed with the
same rule) gives the mask back when ``tolerance`` is 0 (pathological 8-connected
pixel patterns may differ by a pixel). With a tolerance,
rings are simplified by Douglas-Peucker (``cv2.approxPolyDP``, in pixels).

Polygons come back largest first, so an island lying inside another region's hole comes
after the region: formats whose holes are drawn as later background shapes (labelme,
CVAT polygons) keep the island.

Two uses, two functions. :func:`trace` is the format conversion one (exact at tolerance 0,
per-region IoU >= :data:`MIN_IOU` with the default tolerance): exports of labels and round
trips of human labels. :func:`trace_limited` is for pre-fills an annotator edits: under
:class:`TraceLimits` it drops islands and holes below a minimum area, simplifies with a
tolerance tied to the image size and caps the vertex count, while the drawn polygons keep
IoU >= ``min_iou`` with the pre-label (the limits relax until they do).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from dataeng.annotation.rasterize import shape_region
from dataeng.annotation.types import Polygon, Ring, Shape

DEFAULT_TOLERANCE = 0.7
"""Douglas-Peucker tolerance in pixels: about 6x fewer vertices than every boundary pixel."""

MIN_IOU = 0.995
"""A simplified region redrawn must keep this IoU with its exact tracing, else the
tolerance is halved until it does (staircase edges can otherwise lose half a row)."""


@dataclass(frozen=True)
class TraceLimits:
    """How a pre-fill may depart from its pre-label so that an annotator can edit it.

    The review export builds one from ``[review]`` in dataeng.toml. Precedence, when they
    conflict: ``min_iou`` always holds, then ``max_vertices``, then ``simplify_fraction``
    and ``min_region_fraction`` (see :func:`trace_limited`).

    Attributes:
        min_region_fraction: islands and holes with fewer pixels than this share of the
            image are dropped (an island erased, a hole filled); 0.001 = 65 px at 256x256.
        simplify_fraction: Douglas-Peucker tolerance as a share of the image's longer side
            (0.0025: 0.64 px at 256, 2.6 px at 1024).
        max_vertices: the most vertices (all rings of one class in one image); the
            tolerance grows by steps of 1.5x, up to about 17x, until the polygons fit.
        min_iou: the IoU the drawn polygons keep with the pre-label's class pixels.

    Raises:
        ValueError: a fraction outside [0, 1), ``max_vertices`` below 3 or ``min_iou``
            outside [0, 1].

    Example:
        >>> TraceLimits().tolerance(256, 512)
        1.28
    """

    min_region_fraction: float = 0.001
    simplify_fraction: float = 0.0025
    max_vertices: int = 400
    min_iou: float = 0.98

    def __post_init__(self) -> None:
        for name in ("min_region_fraction", "simplify_fraction"):
            value = getattr(self, name)
            if not 0 <= value < 1:
                raise ValueError(f"TraceLimits.{name} must be in [0, 1), got {value}")
        if self.max_vertices < 3:
            raise ValueError(f"TraceLimits.max_vertices must be >= 3, got {self.max_vertices}")
        if not 0 <= self.min_iou <= 1:
            raise ValueError(f"TraceLimits.min_iou must be in [0, 1], got {self.min_iou}")

    def min_pixels(self, height: int, width: int) -> float:
        """Regions with fewer pixels than this are dropped in a ``height`` x ``width`` image."""
        return self.min_region_fraction * height * width

    def tolerance(self, height: int, width: int) -> float:
        """The base simplification tolerance, in pixels, for a ``height`` x ``width`` image."""
        return self.simplify_fraction * max(height, width)


def _ring(contour: np.ndarray, tolerance: float) -> Ring:
    points = contour.reshape(-1, 2)
    if tolerance > 0 and len(points) > 3:
        simplified = cv2.approxPolyDP(contour, tolerance, True).reshape(-1, 2)
        if len(simplified) >= 3:
            points = simplified
    ring = [(float(x), float(y)) for x, y in points]
    # One- and two-pixel regions give rings of 1-2 points; PIL still draws them through
    # the outline, and every format wants at least 3 points.
    while len(ring) < 3:
        ring.append(ring[-1])
    return tuple(ring)


def _area(ring: Ring) -> float:
    return abs(float(cv2.contourArea(np.asarray(ring, dtype=np.float32))))


def trace(
    mask: np.ndarray, class_index: int, tolerance: float = DEFAULT_TOLERANCE, min_iou: float = MIN_IOU
) -> list[Polygon]:
    """Trace the regions of one class in a class-index mask.

    Args:
        mask: 2-D integer (or bool) mask.
        class_index: the value to trace (``True`` pixels for a bool mask use 1).
        tolerance: simplification tolerance in pixels; 0 keeps every boundary pixel.
        min_iou: per region, the IoU the simplified polygon must keep with the exact one
            when redrawn; the tolerance is halved (down to 0) until it does.

    Returns:
        One :class:`Polygon` per 8-connected region, each with its holes, largest first.

    Raises:
        ValueError: ``mask`` is not 2-D or ``tolerance`` is negative.

    Example:
        >>> ring = np.zeros((5, 5), np.uint8); ring[1:4, 1:4] = 1; ring[2, 2] = 0
        >>> [len(p.holes) for p in trace(ring, 1)]
        [1]
    """
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D, got shape {mask.shape}")
    if tolerance < 0:
        raise ValueError(f"tolerance must be >= 0, got {tolerance}")
    binary = np.ascontiguousarray(mask == class_index, dtype=np.uint8)
    if not binary.any():
        return []
    contours, hierarchy = cv2.findContours(binary, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_NONE)
    if hierarchy is None:
        return []
    links = hierarchy[0]
    results: list[tuple[float, Polygon]] = []
    for i, contour in enumerate(contours):
        if links[i][3] != -1:
            continue
        polygon = _polygon(binary, contours, links, i, tolerance)
        if tolerance > 0 and min_iou > 0:
            exact = _polygon(binary, contours, links, i, 0.0)
            step = tolerance
            while step > 0 and _redraw_iou(polygon, exact, binary.shape) < min_iou:
                step = step / 2 if step > 0.1 else 0.0
                polygon = _polygon(binary, contours, links, i, step)
        exterior = polygon.exterior
        results.append((_area(exterior) + len(contour), polygon))
    results.sort(key=lambda item: -item[0])
    return [polygon for _, polygon in results]


def _polygon(binary: np.ndarray, contours: Any, links: np.ndarray, i: int, tolerance: float) -> Polygon:
    holes: list[Ring] = []
    child = int(links[i][2])
    while child != -1:
        holes.extend(_hole_rings(binary, contours[child], tolerance))
        child = int(links[child][0])
    return Polygon(_ring(contours[i], tolerance), tuple(holes))


def _redraw_iou(simplified: Polygon, exact: Polygon, shape: tuple[int, ...]) -> float:
    height, width = shape[:2]
    regions = [shape_region(Shape("", "polygon", p.exterior, p.holes), width, height) for p in (simplified, exact)]
    placed = [r for r in regions if r is not None]
    if len(placed) < 2:
        return 1.0 if not placed else 0.0
    # Compare in the union of the two boxes only: whole-image canvases cost too much.
    x0 = min(o[0] for _, o in placed)
    y0 = min(o[1] for _, o in placed)
    x1 = max(o[0] + p.shape[1] for p, o in placed)
    y1 = max(o[1] + p.shape[0] for p, o in placed)
    drawn = []
    for patch, (px, py) in placed:
        canvas = np.zeros((y1 - y0, x1 - x0), dtype=bool)
        canvas[py - y0 : py - y0 + patch.shape[0], px - x0 : px - x0 + patch.shape[1]] = patch
        drawn.append(canvas)
    union = np.logical_or(drawn[0], drawn[1]).sum()
    return 1.0 if union == 0 else float(np.logical_and(drawn[0], drawn[1]).sum() / union)


def _hole_rings(binary: np.ndarray, hole_contour: np.ndarray, tolerance: float) -> list[Ring]:
    """Rings around the background pixels of one hole (OpenCV's ring runs on the region's)."""
    x, y, w, h = cv2.boundingRect(hole_contour)
    filled = np.zeros((h, w), dtype=np.uint8)
    cv2.drawContours(filled, [hole_contour], -1, 1, thickness=cv2.FILLED, offset=(-x, -y))
    inside = (filled > 0) & (binary[y : y + h, x : x + w] == 0)
    if not inside.any():
        return []
    contours, _ = cv2.findContours(inside.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    return [tuple((px + x, py + y) for px, py in _ring(c, tolerance)) for c in contours]


# ---------------------------------------------------------------- pre-fills
COARSEN_STEPS = 7
"""The vertex cap may raise the tolerance by 1.5x this many times (about 17x) at most."""


def trace_limited(
    mask: np.ndarray, class_index: int, limits: TraceLimits, *, care: np.ndarray | None = None
) -> list[Polygon]:
    """Trace one class of a pre-label for an annotator: few shapes, few vertices, same mask.

    1. Islands (8-connected) and holes (4-connected background enclosed by the class) with
       fewer than ``limits.min_pixels`` pixels are dropped.
    2. Rings are simplified with ``limits.tolerance``; while all rings together have more
       than ``limits.max_vertices`` vertices, the tolerance grows by 1.5x (at most
       :data:`COARSEN_STEPS` times).
    3. The polygons are drawn (the polygon rule of :mod:`..rasterize`) and compared with the
       class pixels of ``mask`` inside ``care``. A result must keep ``limits.min_iou``:

       a. every limit held: fewer regions dropped each time (the minimum area halved, down
          to 0), each at the tolerance that fits the vertex cap; the first that keeps the
          bound is returned;
       b. else the cap is given up: for each of the same minimum areas, the tolerance is
          brought down step by step (to 0) until the bound holds; of these, the tracing
          with the fewest vertices (then the fewest polygons) is returned.

       So the IoU bound always holds (the last candidate is the exact tracing, which only
       misses it on pathological 8-connected pixel patterns); then the vertex cap, or as
       few vertices as the bound allows; then as few regions as the bound allows.

    Args:
        mask: 2-D integer (or bool) mask.
        class_index: the value to trace.
        limits: the limits.
        care: bool mask of the pixels the IoU counts (default all). The review export
            leaves out the pre-label's ignore pixels: the teacher made no claim there.

    Returns:
        Like :func:`trace`: one :class:`Polygon` per region kept, with its holes, largest first.

    Raises:
        ValueError: ``mask`` is not 2-D, or ``care`` has another shape.

    Example:
        >>> noisy = np.zeros((100, 100), np.uint8); noisy[20:80, 30:70] = 1
        >>> noisy[50, 50] = 0; noisy[5, 5] = 1        # a one-pixel hole and a speck
        >>> [(len(p.holes), len(p.exterior)) for p in trace_limited(noisy, 1, TraceLimits())]
        [(0, 4)]
    """
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D, got shape {mask.shape}")
    if care is not None and care.shape != mask.shape:
        raise ValueError(f"care must have the mask's shape {mask.shape}, got {care.shape}")
    binary = np.ascontiguousarray(mask == class_index)
    if not binary.any():
        return []
    height, width = binary.shape
    counted = np.ones_like(binary) if care is None else care.astype(bool)
    target = binary & counted

    def iou_of(polygons: list[Polygon]) -> float:
        return mask_iou(draw_polygons(polygons, height, width), target, counted)

    base = limits.tolerance(height, width)
    ladder = [base * 1.5**k for k in range(COARSEN_STEPS + 1)] if base > 0 else [0.0]
    levels: list[tuple[np.ndarray, int, list[Polygon], float]] = []
    previous: np.ndarray | None = None
    for min_pixels in _relaxed_areas(limits.min_pixels(height, width)):
        kept = drop_small_regions(binary, min_pixels)
        if previous is not None and np.array_equal(kept, previous):
            continue
        previous = kept
        if mask_iou(kept, target, counted) < limits.min_iou:
            continue  # even an exact tracing of what is kept would miss the bound
        start, polygons = 0, trace(kept, 1, ladder[0], 0.0)
        while start < len(ladder) - 1 and vertex_count(polygons) > limits.max_vertices:
            start += 1
            polygons = trace(kept, 1, ladder[start], 0.0)
        iou = iou_of(polygons)
        if vertex_count(polygons) <= limits.max_vertices and iou >= limits.min_iou:
            return polygons
        levels.append((kept, start, polygons, iou))
    best: list[Polygon] | None = None
    for kept, start, polygons, iou in levels:
        candidate = polygons if iou >= limits.min_iou else None
        if candidate is None:
            for tolerance in _downwards(ladder, start):
                polygons = trace(kept, 1, tolerance, 0.0)
                if best is not None and vertex_count(polygons) > vertex_count(best):
                    break  # lower tolerances only add vertices: this level cannot do better
                if iou_of(polygons) >= limits.min_iou:
                    candidate = polygons
                    break
        if candidate is not None and (best is None or _size(candidate) < _size(best)):
            best = candidate
    return best if best is not None else trace(binary, 1, 0.0)


def _size(polygons: list[Polygon]) -> tuple[int, int]:
    return vertex_count(polygons), len(polygons)


def _relaxed_areas(min_pixels: float) -> Iterator[float]:
    while min_pixels >= 1:
        yield min_pixels
        min_pixels /= 2
    yield 0.0


def _downwards(ladder: list[float], start: int) -> Iterator[float]:
    """The tolerances below ``ladder[start]``: the ladder's lower rungs, then on down by the same
    1.5x steps below its bottom (while above 0.1 px), then 0."""
    yield from reversed(ladder[:start])
    step = ladder[0] / 1.5
    while step > 0.1:
        yield step
        step /= 1.5
    if ladder[0] > 0:
        yield 0.0


def drop_small_regions(binary: np.ndarray, min_pixels: float) -> np.ndarray:
    """A bool mask without its islands (8-connected) smaller than ``min_pixels``, then with its
    holes (4-connected background not touching the image edge, as :func:`trace` sees holes)
    smaller than ``min_pixels`` filled.

    Example:
        >>> m = np.zeros((10, 10), bool); m[1:8, 1:8] = True; m[4, 4] = False; m[9, 9] = True
        >>> int(drop_small_regions(m, 2).sum())
        49
    """
    out = np.array(binary, dtype=bool)
    if min_pixels <= 0:
        return out
    _count, labels, stats, _ = cv2.connectedComponentsWithStats(out.astype(np.uint8), connectivity=8)
    small = stats[:, cv2.CC_STAT_AREA] < min_pixels
    small[0] = False  # label 0: the background
    out[small[labels]] = False
    _count, labels, stats, _ = cv2.connectedComponentsWithStats((~out).astype(np.uint8), connectivity=4)
    hole = stats[:, cv2.CC_STAT_AREA] < min_pixels
    hole[0] = False  # label 0: the class itself
    edge = np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])
    hole[edge] = False
    out[hole[labels]] = True
    return out


def vertex_count(polygons: list[Polygon]) -> int:
    """All vertices of all rings (exteriors and holes)."""
    return sum(len(p.exterior) + sum(len(h) for h in p.holes) for p in polygons)


def draw_polygons(polygons: list[Polygon], height: int, width: int) -> np.ndarray:
    """The union of polygons (holes removed) as a bool ``height`` x ``width`` mask, by the
    polygon rule of :mod:`..rasterize`."""
    out = np.zeros((height, width), dtype=bool)
    for polygon in polygons:
        region = shape_region(Shape("", "polygon", polygon.exterior, polygon.holes), width, height)
        if region is not None:
            patch, (x, y) = region
            out[y : y + patch.shape[0], x : x + patch.shape[1]] |= patch
    return out


def mask_iou(drawn: np.ndarray, target: np.ndarray, care: np.ndarray | None = None) -> float:
    """IoU of two bool masks, counting only ``care`` pixels (default all); 1.0 when both are empty."""
    if care is not None:
        drawn, target = drawn & care, target & care
    union = int(np.count_nonzero(drawn | target))
    return 1.0 if union == 0 else int(np.count_nonzero(drawn & target)) / union
