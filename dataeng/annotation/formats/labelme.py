"""Labelme JSON: one ``.json`` per image, every version from pre-2018 to 5.x.

Read: polygon, rectangle, circle, oriented_rectangle (as a polygon) and ``mask`` (a
base64 PNG patch whose top-left pixel is ``round(points[0])``) draw pixels; line,
linestrip and point are skipped with a notice. A missing ``shape_type`` (pre-2018) means
polygon. Instances come from ``group_id`` or from label names like ``person-1``: the
``-N`` suffix is stripped from the label and becomes the group id. ``imageData``
(embedded image) wins over ``imagePath``; an ``imagePath`` pointing at the JSON itself
is ignored. A shape with invalid geometry refuses the whole file (a mask missing one of
its shapes would be a wrong label, not a smaller one).

Write: one JSON per record beside its image, ``imageData`` null, ``imagePath`` the
image's file name (relative to the JSON). Regions are polygons from
:mod:`dataeng.annotation.trace`; a hole is a later polygon labelled ``_background_``
(reads back as background, in labelme and here); ignore pixels are polygons labelled
``__ignore__``. ``flags`` (e.g. ``{"reviewed": false}``) are written as given;
provenance goes under the top-level ``dataeng`` key (labelme keeps unknown top-level
keys) and into each shape's ``description``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from dataeng.annotation.formats.export import (
    atomic_write_text,
    copy_image,
    flat_draw_items,
    safe_relative,
)
from dataeng.annotation.formats.jsonfile import load_json
from dataeng.annotation.formats.result import ReadResult
from dataeng.annotation.images import decode_image_data, decode_mask_patch, image_size
from dataeng.annotation.paths import normalise_name, resolve_inside
from dataeng.annotation.trace import DEFAULT_TOLERANCE, TraceLimits
from dataeng.annotation.types import (
    MAX_COORDINATE,
    ExportRecord,
    ImageAnnotation,
    LabelMap,
    Shape,
    ShapeKind,
    is_coordinate,
)
from dataeng.errors import AnnotationError

NAME = "labelme"
WRITTEN_VERSION = "5.5.0"
"""The labelme file version our writer produces."""

_SKIPPED = {"line", "linestrip", "point", "points"}
_INSTANCE_SUFFIX = re.compile(r"^(?P<label>.*\S)-(?P<n>\d+)$")


def _looks_like(data: Any) -> bool:
    return isinstance(data, dict) and "shapes" in data and ("imagePath" in data or "imageData" in data)


def detect(path: Path) -> bool:
    """True for a labelme ``.json`` file, or a folder holding one at its top level."""
    if path.is_dir():
        return any(detect(p) for p in sorted(path.glob("*.json"))[:20])
    if path.suffix.lower() != ".json" or not path.is_file():
        return False
    try:
        with path.open("rb") as f:
            head = f.read(65536)
    except OSError:
        return False
    # Cheap: labelme files carry both keys near the top; confirm with a full parse only
    # for small files.
    if b'"shapes"' not in head and b'"imagePath"' not in head:
        return False
    try:
        return _looks_like(load_json(path))
    except AnnotationError:
        return False


def _number(value: Any, path: Path, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise AnnotationError("expected a number", path=path, field=field, value=value)
    if not is_coordinate(value):
        raise AnnotationError(f"expected a finite number within {MAX_COORDINATE:.0f} of the origin", path=path,
                              field=field, value=value)
    return float(value)


def _points(raw: Any, path: Path, field: str) -> tuple[tuple[float, float], ...]:
    if not isinstance(raw, list):
        raise AnnotationError("expected a list of [x, y]", path=path, field=field, value=raw)
    points = []
    for j, point in enumerate(raw):
        if not isinstance(point, list | tuple) or len(point) != 2:
            raise AnnotationError("expected [x, y]", path=path, field=f"{field}[{j}]", value=point)
        points.append((_number(point[0], path, f"{field}[{j}]"), _number(point[1], path, f"{field}[{j}]")))
    return tuple(points)


def _shape(raw: Any, i: int, path: Path, notices: list[str]) -> Shape | None:
    where = f"shapes[{i}]"
    if not isinstance(raw, dict):
        raise AnnotationError("expected an object", path=path, field=where, value=raw)
    label = raw.get("label")
    if not isinstance(label, str):
        raise AnnotationError("expected a string label", path=path, field=f"{where}.label", value=label)
    if "points" not in raw:
        raise AnnotationError("missing points", path=path, field=f"{where}.points")
    points = _points(raw["points"], path, f"{where}.points")
    shape_type = raw.get("shape_type") or "polygon"
    if shape_type in _SKIPPED:
        notices.append(f"{path}: {where} is a {shape_type} ({label}): no area, skipped")
        return None
    group_id = raw.get("group_id")
    if group_id is not None and (isinstance(group_id, bool) or not isinstance(group_id, int)):
        raise AnnotationError("expected an integer or null", path=path, field=f"{where}.group_id", value=group_id)
    attributes: dict[str, Any] = {}
    if isinstance(raw.get("flags"), dict) and raw["flags"]:
        attributes["flags"] = raw["flags"]
    if isinstance(raw.get("description"), str) and raw["description"]:
        attributes["description"] = raw["description"]
    matched = _INSTANCE_SUFFIX.match(label)
    if matched:
        attributes["label_as_written"] = label
        label = matched["label"]
        if group_id is None:
            group_id = int(matched["n"])
    needed = {"rectangle": 2, "circle": 2, "mask": 1}
    if shape_type in ("polygon", "oriented_rectangle"):
        if len(points) < 3:
            raise AnnotationError(
                "a polygon needs at least 3 points", path=path, field=f"{where}.points", value=len(points)
            )
        return Shape(label, "polygon", points, group_id=group_id, attributes=attributes)
    if shape_type not in needed:
        raise AnnotationError("unknown shape_type", path=path, field=f"{where}.shape_type", value=shape_type)
    if len(points) < needed[shape_type] or (shape_type != "mask" and len(points) != 2):
        raise AnnotationError(
            f"a {shape_type} needs {needed[shape_type]} points",
            path=path,
            field=f"{where}.points",
            value=len(points),
        )
    if shape_type == "mask":
        data = raw.get("mask")
        decoded, _ = decode_image_data(data, path=path, field=f"{where}.mask")
        bitmap = decode_mask_patch(decoded, path=path, field=f"{where}.mask")
        origin = (float(round(points[0][0])), float(round(points[0][1])))
        return Shape(label, "bitmap", (origin,), bitmap=bitmap, group_id=group_id, attributes=attributes)
    kind: ShapeKind = "rectangle" if shape_type == "rectangle" else "circle"
    return Shape(label, kind, points, group_id=group_id, attributes=attributes)


def _positive_int(data: dict[str, Any], key: str, path: Path) -> int | None:
    value = data.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise AnnotationError("expected a positive integer", path=path, field=key, value=value)
    return value


def read_file(path: Path, root: Path | None = None) -> tuple[ImageAnnotation, list[str]]:
    """Read one labelme JSON file.

    Args:
        path: the ``.json`` file.
        root: the folder image paths must stay in (default: the file's folder).

    Returns:
        The annotation and its notices.

    Raises:
        AnnotationError: unreadable or truncated JSON, not a labelme file, an invalid
            shape, bad ``imageData``, or an ``imagePath`` escaping ``root``.
    """
    root = root if root is not None else path.parent
    data = load_json(path)
    if not isinstance(data, dict):
        raise AnnotationError("not a labelme file: expected a JSON object", path=path, value=type(data).__name__)
    if "shapes" not in data:
        raise AnnotationError("not a labelme file: no 'shapes' list", path=path, field="shapes")
    if not isinstance(data["shapes"], list):
        raise AnnotationError("expected a list", path=path, field="shapes", value=type(data["shapes"]).__name__)
    notices: list[str] = []
    image_data: bytes | None = None
    embedded_size: tuple[int, int] | None = None
    if data.get("imageData") is not None:
        image_data, embedded_size = decode_image_data(data["imageData"], path=path, field="imageData")
    raw_name = data.get("imagePath")
    if raw_name is not None and not isinstance(raw_name, str):
        raise AnnotationError("expected a string", path=path, field="imagePath", value=raw_name)
    image_path: Path | None = None
    image_name = normalise_name(raw_name) if raw_name else ""
    if image_name:
        image_path = resolve_inside(root, path.parent, image_name, path=path, field="imagePath")
        if image_path == path.resolve():
            image_path = None
    if image_data is not None and (image_path is None or not image_path.is_file()):
        image_path = None
    if not image_name:
        image_name = path.with_suffix(".jpg").name if image_data is None else path.stem
    width = _positive_int(data, "imageWidth", path)
    height = _positive_int(data, "imageHeight", path)
    size = embedded_size
    if size is None and (width is None or height is None) and image_path is not None:
        size = image_size(image_path)
    if size is not None:
        if width is not None and height is not None and (width, height) != size:
            notices.append(f"{path}: imageWidth/imageHeight {width}x{height} differ from the image {size[0]}x{size[1]}")
        width = width if width is not None else size[0]
        height = height if height is not None else size[1]
    shapes: list[Shape] = []
    for i, raw in enumerate(data["shapes"]):
        shape = _shape(raw, i, path, notices)
        if shape is not None:
            shapes.append(shape)
    meta: dict[str, Any] = {"version": data.get("version")}
    if isinstance(data.get("flags"), dict):
        meta["flags"] = data["flags"]
    if isinstance(data.get("dataeng"), dict):
        meta["provenance"] = data["dataeng"]
    annotation = ImageAnnotation(
        image_name=image_name,
        image_path=image_path,
        width=width,
        height=height,
        shapes=tuple(shapes),
        source=NAME,
        annotation_path=path,
        image_data=image_data,
        meta=meta,
    )
    return annotation, notices


def read(path: Path, *, root: Path | None = None) -> ReadResult:
    """Read a labelme JSON file, or every labelme JSON at the top of a folder.

    Each file is one item: a bad file becomes a problem and the others go on.

    Args:
        path: a ``.json`` file or a folder.
        root: the folder image paths must stay in (default: ``path`` if a folder, else its folder).

    Returns:
        A :class:`ReadResult`.
    """
    result = ReadResult()
    if path.is_dir():
        root = root if root is not None else path
        files = [p for p in sorted(path.glob("*.json")) if detect(p)]
    else:
        files = [path]
    for file in files:
        try:
            item, notices = read_file(file, root)
        except AnnotationError as e:
            result.problems.append(e)
            continue
        result.items.append(item)
        result.notices.extend(notices)
    return result


def _provenance_text(meta: dict[str, Any]) -> str:
    return "dataeng " + ", ".join(f"{k}={v}" for k, v in meta.items()) if meta else ""


def write(
    out: Path,
    records: list[ExportRecord],
    label_map: LabelMap,
    *,
    flags: dict[str, bool] | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
    limits: TraceLimits | None = None,
    copy_images: bool = True,
) -> list[Path]:
    """Write one labelme JSON per record (and copy its image) under ``out``.

    Args:
        out: export folder; ``<image_name>`` minus suffix plus ``.json`` is written there.
        records: the labelled images.
        label_map: class names.
        flags: image-level flags written as given (the review loop passes
            ``{"reviewed": False}``).
        tolerance: polygon simplification in pixels (see :func:`trace.trace`).
        limits: trace pre-fills for annotators instead (see :func:`trace.trace_limited`;
            the review export passes ``[review]``'s); None keeps the conversion tracing.
        copy_images: copy ``record.image_path`` beside the JSON.

    Returns:
        The JSON files written.

    Raises:
        ValueError: a record's mask does not match its size or the label map, or its
            image name is not a safe relative path.
    """
    written: list[Path] = []
    for record in records:
        rel = safe_relative(record.image_name)
        json_path = out / rel.with_suffix(".json")
        description = _provenance_text(record.meta)
        shapes: list[dict[str, Any]] = [
            {
                "label": item.label,
                "points": [[x, y] for x, y in item.ring],
                "group_id": None,
                "description": description,
                "shape_type": "polygon",
                "flags": {},
                "mask": None,
            }
            for item in flat_draw_items(record, label_map, tolerance, limits)
        ]
        payload: dict[str, Any] = {
            "version": WRITTEN_VERSION,
            "flags": dict(flags or {}),
            "shapes": shapes,
            "imagePath": rel.name,
            "imageData": None,
            "imageHeight": record.height,
            "imageWidth": record.width,
        }
        if record.meta:
            payload["dataeng"] = record.meta
        atomic_write_text(json_path, json.dumps(payload, indent=2, ensure_ascii=False, default=str))
        if copy_images:
            copy_image(record, out / rel)
        written.append(json_path)
    return written
