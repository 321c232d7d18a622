"""Shapes -> class-index mask: the only place annotations are drawn.

Drawing rules (each chosen to match the tool the shapes came from):

- **polygon**: PIL ``ImageDraw.polygon(xy, fill=1, outline=1)``, exactly as labelme's
  ``shape_to_mask``, so our masks match labelme's own PNGs. PIL fills with the
  *even-odd* rule: a self-intersecting polygon leaves the parts covered twice (the
  centre of a pentagram) unfilled, while its outline pixels are always drawn. Polygons
  read from COCO files are rasterised by pycocotools instead (``frPyObjects``), the
  convention the COCO masks were made with, so they equal ``COCO.annToMask``.
- **holes**: interior rings are removed from their own shape (the shape does not cover
  them; whatever lies beneath shows through), each hole drawn with the polygon rule.
- **rectangle**: two corners in any order, taken as pixel-edge coordinates (like a COCO
  bbox): it covers columns ``round(min x) .. round(max x) - 1`` and the same for rows,
  so a w x h rectangle fills exactly w*h pixels. (labelme's own PNG export draws one
  more row and column; we prefer the exact area.)
- **circle**: centre and a point on the rim, drawn with PIL ``ellipse`` as labelme does.
- **bitmap**: a bool patch pasted with its top-left pixel at ``origin``, clipped.

Order: ascending ``z_order``, then file order; a later shape overwrites an earlier one.
Anything outside the canvas is clipped, with one notice per shape.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

from dataeng.annotation.rle import decode_coco_segmentation
from dataeng.annotation.types import (
    BACKGROUND,
    IGNORE_INDEX,
    ImageAnnotation,
    LabelMap,
    Ring,
    Shape,
)

COCO_SOURCE = "coco"


@dataclass(frozen=True)
class Raster:
    """The result of :func:`rasterize`.

    Attributes:
        mask: uint8 HxW class-index mask (BACKGROUND, 1..N, IGNORE_INDEX).
        notices: human-readable remarks (clipped shapes).
        unknown_labels: label names the label map did not know (drawn as IGNORE_INDEX).
        known_shapes: shapes whose label the map knew (0 with unknown labels: nothing usable).
    """

    mask: np.ndarray
    notices: list[str] = field(default_factory=list)
    unknown_labels: set[str] = field(default_factory=set)
    known_shapes: int = 0

    @property
    def only_unknown(self) -> bool:
        """Every shape had an unknown label: the mask says nothing about any class."""
        return bool(self.unknown_labels) and self.known_shapes == 0


def _draw_rings(rings: list[Ring], box: tuple[int, int, int, int]) -> np.ndarray:
    """PIL polygon fill+outline of each ring, ORed, in the local box (x0, y0, x1, y1)."""
    x0, y0, x1, y1 = box
    canvas = Image.new("L", (x1 - x0, y1 - y0), 0)
    draw = ImageDraw.Draw(canvas)
    for ring in rings:
        draw.polygon([(x - x0, y - y0) for x, y in ring], fill=1, outline=1)
    return np.asarray(canvas, dtype=bool)


def _bounds(points: Ring, pad: float = 2.0) -> tuple[float, float, float, float]:
    xs = [p[0] for p in points]
    ys = [p[1] for p in points]
    return min(xs) - pad, min(ys) - pad, max(xs) + pad, max(ys) + pad


def _clip_box(bounds: tuple[float, float, float, float], width: int, height: int) -> tuple[int, int, int, int] | None:
    x0 = max(0, math.floor(bounds[0]))
    y0 = max(0, math.floor(bounds[1]))
    x1 = min(width, math.ceil(bounds[2]) + 1)
    y1 = min(height, math.ceil(bounds[3]) + 1)
    if x1 <= x0 or y1 <= y0:
        return None
    return x0, y0, x1, y1


def shape_region(
    shape: Shape, width: int, height: int, *, polygon_rule: str = "pil"
) -> tuple[np.ndarray, tuple[int, int]] | None:
    """The pixels one shape covers, as a bool patch and its origin (x, y), clipped.

    Args:
        shape: the shape to draw.
        width, height: the canvas size.
        polygon_rule: ``"pil"`` (labelme) or ``"coco"`` (pycocotools) for polygons.

    Returns:
        ``(patch, (x, y))`` or ``None`` when the shape lies wholly outside the canvas.

    Raises:
        ValueError: a shape without the points its kind needs (readers check this first).
    """
    if shape.kind == "bitmap":
        if shape.bitmap is None:
            raise ValueError("bitmap shape without bitmap")
        ox, oy = shape.origin
        bh, bw = shape.bitmap.shape[:2]
        x0, y0, x1, y1 = max(0, ox), max(0, oy), min(width, ox + bw), min(height, oy + bh)
        if x1 <= x0 or y1 <= y0:
            return None
        return shape.bitmap[y0 - oy : y1 - oy, x0 - ox : x1 - ox].astype(bool), (x0, y0)
    if shape.kind == "rectangle":
        if len(shape.points) != 2:
            raise ValueError("rectangle needs 2 points")
        (ax, ay), (bx, by) = shape.points
        x0, x1 = sorted((round(ax), round(bx)))
        y0, y1 = sorted((round(ay), round(by)))
        x0, y0, x1, y1 = max(0, x0), max(0, y0), min(width, x1), min(height, y1)
        if x1 <= x0 or y1 <= y0:
            return None
        return np.ones((y1 - y0, x1 - x0), dtype=bool), (x0, y0)
    if shape.kind == "circle":
        if len(shape.points) != 2:
            raise ValueError("circle needs 2 points")
        (cx, cy), (px, py) = shape.points
        r = math.hypot(cx - px, cy - py)
        box = _clip_box((cx - r - 2, cy - r - 2, cx + r + 2, cy + r + 2), width, height)
        if box is None:
            return None
        x0, y0, x1, y1 = box
        canvas = Image.new("L", (x1 - x0, y1 - y0), 0)
        ImageDraw.Draw(canvas).ellipse(((cx - r - x0, cy - r - y0), (cx + r - x0, cy + r - y0)), outline=1, fill=1)
        return np.asarray(canvas, dtype=bool), (x0, y0)
    if len(shape.points) < 3:
        raise ValueError("polygon needs at least 3 points")
    if polygon_rule == "coco":
        rings = [shape.points]
        full = decode_coco_segmentation([[c for p in ring for c in p] for ring in rings], height, width)
        for hole in shape.holes:
            full &= ~decode_coco_segmentation([[c for p in hole for c in p]], height, width)
        return full, (0, 0)
    box = _clip_box(_bounds(shape.points), width, height)
    if box is None:
        return None
    region = _draw_rings([shape.points], box)
    if shape.holes:
        region &= ~_draw_rings(list(shape.holes), box)
    return region, (box[0], box[1])


def _outside(shape: Shape, width: int, height: int) -> bool:
    if shape.kind == "bitmap" and shape.bitmap is not None:
        ox, oy = shape.origin
        bh, bw = shape.bitmap.shape[:2]
        return ox < 0 or oy < 0 or ox + bw > width or oy + bh > height
    if shape.kind == "circle" and len(shape.points) == 2:
        (cx, cy), (px, py) = shape.points
        r = math.hypot(cx - px, cy - py)
        return cx - r < 0 or cy - r < 0 or cx + r > width - 1 or cy + r > height - 1
    limit_x = width if shape.kind == "rectangle" else width - 1
    limit_y = height if shape.kind == "rectangle" else height - 1
    return any(x < 0 or y < 0 or x > limit_x or y > limit_y for x, y in shape.points)


def _class_of(shape: Shape, label_map: LabelMap) -> int | None:
    explicit = shape.attributes.get("class_index")
    if isinstance(explicit, int) and not isinstance(explicit, bool):
        if explicit == IGNORE_INDEX or 0 <= explicit <= label_map.num_classes:
            return explicit
        return None
    return label_map.index(shape.label)


def draw_order(shapes: tuple[Shape, ...]) -> list[tuple[int, Shape]]:
    """Shapes with their file index, in drawing order: ascending z_order, then file order."""
    return sorted(enumerate(shapes), key=lambda item: (item[1].z_order, item[0]))


def rasterize(annotation: ImageAnnotation, label_map: LabelMap, width: int, height: int) -> Raster:
    """Draw an annotation's shapes into a class-index mask of ``height`` x ``width``.

    An alpha matte (alpha folders) is drawn first as class 1 where alpha >= 0.5; shapes
    then follow in :func:`draw_order`. Shapes whose label the map does not know are drawn
    as IGNORE_INDEX (what they cover is not background, nor any class we know, so it is
    never trained on); their names come back in ``unknown_labels`` (the caller reports each
    once, and registers nothing when :attr:`Raster.only_unknown`).
    Shapes must already be in the ``width`` x ``height`` pixel frame (see
    :func:`scale_shapes`).

    Args:
        annotation: what a format reader returned.
        label_map: label name -> class index.
        width, height: the real image size.

    Returns:
        A :class:`Raster`.

    Raises:
        ValueError: ``width``/``height`` not positive, or an invalid shape (readers
            refuse those before they get here).

    Example:
        >>> raster = rasterize(item, LabelMap(["person"]), 640, 480)
        >>> raster.mask.shape, raster.unknown_labels
        ((480, 640), set())
    """
    if width <= 0 or height <= 0:
        raise ValueError(f"canvas must be positive, got {width}x{height}")
    mask = np.full((height, width), BACKGROUND, dtype=np.uint8)
    notices: list[str] = []
    unknown: set[str] = set()
    known = 0
    if annotation.alpha is not None:
        if annotation.alpha.shape[:2] != (height, width):
            notices.append(
                f"{annotation.annotation_path}: alpha matte {annotation.alpha.shape[1]}x"
                f"{annotation.alpha.shape[0]} differs from the image {width}x{height}; not drawn"
            )
        else:
            mask[annotation.alpha >= 0.5] = 1
            known += 1
    rule = "coco" if annotation.source == COCO_SOURCE else "pil"
    for index, shape in draw_order(annotation.shapes):
        value = _class_of(shape, label_map)
        if value is None:
            unknown.add(shape.label)
            value = IGNORE_INDEX
        else:
            known += 1
        if _outside(shape, width, height):
            notices.append(
                f"{annotation.annotation_path}: shapes[{index}] ({shape.label}) extends outside "
                f"the {width}x{height} image; clipped"
            )
        region = shape_region(shape, width, height, polygon_rule=rule)
        if region is None:
            continue
        patch, (x0, y0) = region
        view = mask[y0 : y0 + patch.shape[0], x0 : x0 + patch.shape[1]]
        view[patch] = value
    return Raster(mask=mask, notices=notices, unknown_labels=unknown, known_shapes=known)


def rasterize_instances(
    annotation: ImageAnnotation, label_map: LabelMap, width: int, height: int
) -> tuple[np.ndarray, Raster]:
    """Draw an instance-id mask (int32, 0 = none) beside the class mask.

    Shapes sharing a ``(label, group_id)`` are one instance; a shape without a group id
    is its own instance. Ids are 1.. in order of first appearance in the file, as
    labelme numbers them. Ignored and unknown labels get no instance.

    Returns:
        ``(instances, raster)`` where ``raster`` is what :func:`rasterize` returns.
    """
    raster = rasterize(annotation, label_map, width, height)
    instances = np.zeros((height, width), dtype=np.int32)
    keys: dict[tuple[str, object], int] = {}
    rule = "coco" if annotation.source == COCO_SOURCE else "pil"
    for index, shape in enumerate(annotation.shapes):
        value = _class_of(shape, label_map)
        if value is None or value in (IGNORE_INDEX, BACKGROUND):
            continue
        key = (shape.label, shape.group_id if shape.group_id is not None else ("shape", index))
        keys.setdefault(key, len(keys) + 1)
    for index, shape in draw_order(annotation.shapes):
        value = _class_of(shape, label_map)
        region = shape_region(shape, width, height, polygon_rule=rule)
        if region is None or value is None:
            continue
        patch, (x0, y0) = region
        view = instances[y0 : y0 + patch.shape[0], x0 : x0 + patch.shape[1]]
        key = (shape.label, shape.group_id if shape.group_id is not None else ("shape", index))
        view[patch] = keys.get(key, 0)
    return instances, raster


def scale_shapes(annotation: ImageAnnotation, width: int, height: int) -> ImageAnnotation:
    """Rescale shapes from the annotation's declared size to the real image size.

    CVAT job exports can declare a size other than the image's (the airo fixture says
    4096x2304 for 512x256 images). Points scale by (width / declared width, height /
    declared height); bitmaps are resized with nearest neighbour. The caller adds a notice.

    Returns:
        A new annotation with ``width``/``height`` set to the real size, or the same one
        when the declared size is unknown or already equal.
    """
    if annotation.width is None or annotation.height is None:
        return annotation
    if (annotation.width, annotation.height) == (width, height):
        return annotation
    sx, sy = width / annotation.width, height / annotation.height
    scaled: list[Shape] = []
    for shape in annotation.shapes:
        points = tuple((x * sx, y * sy) for x, y in shape.points)
        holes = tuple(tuple((x * sx, y * sy) for x, y in hole) for hole in shape.holes)
        bitmap = shape.bitmap
        if bitmap is not None:
            ox, oy = shape.origin
            x0, y0 = round(ox * sx), round(oy * sy)
            x1 = max(x0 + 1, round((ox + bitmap.shape[1]) * sx))
            y1 = max(y0 + 1, round((oy + bitmap.shape[0]) * sy))
            resized = Image.fromarray(bitmap.astype(np.uint8)).resize((x1 - x0, y1 - y0), Image.Resampling.NEAREST)
            bitmap = np.asarray(resized, dtype=bool)
            points = ((float(x0), float(y0)),)
        scaled.append(
            Shape(
                label=shape.label,
                kind=shape.kind,
                points=points,
                holes=holes,
                bitmap=bitmap,
                z_order=shape.z_order,
                group_id=shape.group_id,
                attributes=shape.attributes,
            )
        )
    meta = {**annotation.meta, "declared_size": (annotation.width, annotation.height)}
    return annotation.replace(shapes=tuple(scaled), width=width, height=height, meta=meta)
