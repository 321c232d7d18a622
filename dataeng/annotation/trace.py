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
"""

from __future__ import annotations

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
        if tolerance > 0:
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
