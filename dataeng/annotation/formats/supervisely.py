"""Supervisely JSON: a project folder ``meta.json`` + ``<dataset>/ann/*.json`` + ``<dataset>/img/``.

Read: ``bitmap`` objects (``data`` = base64 of a zlib-compressed PNG, top-left pixel at
``origin``), ``polygon`` objects (``points.exterior`` and ``points.interior`` holes) and
``rectangle`` objects draw pixels; points, lines and other geometries are skipped with
a notice. The annotation ``ann/<image name>.json`` belongs to ``img/<image name>``.
A bad object refuses its image.

Write: a project the Supervisely SDK opens (``sly.Project(path, sly.OpenMode.READ)``):
``meta.json`` and one dataset per image-name folder, each with flat ``img/<file>`` and
``ann/<file>.json``. ``train/a_1234abcd.png`` goes to dataset ``train``; a name without a
folder goes to dataset ``ds0``; deeper folders become nested datasets
(``a/b/x.png`` -> ``a/datasets/b/img/x.png``), as the SDK lays them out. Each class region
is one ``bitmap`` object (default, exact) or, with ``supervisely_shapes="polygon"``, one
``polygon`` per traced region with its holes as ``interior``. Provenance goes into the
image-level ``tags`` as ``dataeng_<key>`` (``any_string`` tag metas; None is written as "").

Exports written before dataset-per-split (``ds0/ann/train/<file>.json`` with
``ds0/img/train/<file>``) still read: an annotation belongs to the image at the same path
under the ``img/`` beside its ``ann/``.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import zlib
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image

from dataeng.annotation.formats.export import (
    PROVENANCE_PREFIX,
    atomic_write_text,
    class_regions,
    copy_image,
    polygons_by_class,
    provenance_from_named,
    safe_relative,
)
from dataeng.annotation.formats.jsonfile import load_json
from dataeng.annotation.formats.result import ReadResult
from dataeng.annotation.images import decode_mask_patch
from dataeng.annotation.masks import ALPHA_MAX
from dataeng.annotation.paths import resolve_inside
from dataeng.annotation.rle import crop_to_content
from dataeng.annotation.trace import DEFAULT_TOLERANCE
from dataeng.annotation.types import IGNORE_LABEL, ExportRecord, ImageAnnotation, LabelMap, Shape, is_coordinate
from dataeng.errors import AnnotationError

NAME = "supervisely"
DATASET = "ds0"
"""The dataset of image names without a folder."""
RESERVED_DIRS = frozenset({"img", "ann", "img_info", "seg", "meta", "datasets", "blob"})
"""Folder names the SDK never reads as a dataset (a dataset's own subfolders)."""


def _ann_files(folder: Path) -> list[Path]:
    # "ann" among the folders below ``folder`` only: a project under /home/ann/ is no reason
    # to read its meta.json as an annotation.
    return sorted(
        p for p in folder.rglob("*.json") if p.parent.name == "ann" or "ann" in p.parent.relative_to(folder).parts
    )


def _looks_like(data: Any) -> bool:
    return isinstance(data, dict) and isinstance(data.get("objects"), list) and isinstance(data.get("size"), dict)


def detect(path: Path) -> bool:
    """True for a Supervisely project folder (``meta.json`` + ``*/ann/``) or one ``ann`` JSON."""
    if path.is_dir():
        return (path / "meta.json").is_file() and (any(path.glob("*/ann")) or (path / "ann").is_dir())
    if path.suffix.lower() != ".json" or not path.is_file():
        return False
    try:
        with path.open("rb") as f:
            head = f.read(65536)
        if b'"objects"' not in head:
            return False
        return _looks_like(load_json(path))
    except (OSError, AnnotationError):
        return False


def _ring(raw: Any, path: Path, field: str) -> tuple[tuple[float, float], ...]:
    if not isinstance(raw, list):
        raise AnnotationError("expected a list of [x, y]", path=path, field=field, value=raw)
    ring = []
    for j, point in enumerate(raw):
        ok = isinstance(point, list) and len(point) == 2
        ok = ok and all(is_coordinate(v) for v in point)
        if not ok:
            raise AnnotationError("expected [x, y] finite numbers", path=path, field=f"{field}[{j}]", value=point)
        ring.append((float(point[0]), float(point[1])))
    return tuple(ring)


def _bitmap(raw: Any, path: Path, field: str) -> tuple[np.ndarray, tuple[float, float]]:
    if not isinstance(raw, dict) or not isinstance(raw.get("data"), str):
        raise AnnotationError("expected {data, origin}", path=path, field=field, value=str(raw)[:60])
    try:
        png = zlib.decompress(base64.b64decode(raw["data"]))
    except (binascii.Error, ValueError, zlib.error) as e:
        raise AnnotationError(
            f"not base64 zlib data: {e}", path=path, field=f"{field}.data", value=raw["data"][:40]
        ) from e
    patch = decode_mask_patch(png, path=path, field=f"{field}.data")
    origin = _ring([raw.get("origin")], path, f"{field}.origin")[0]
    return patch, origin


def _object(obj: Any, where: str, path: Path, notices: list[str]) -> Shape | None:
    if not isinstance(obj, dict) or not isinstance(obj.get("classTitle"), str):
        raise AnnotationError("expected an object with a classTitle", path=path, field=where, value=str(obj)[:60])
    label, geometry = obj["classTitle"], obj.get("geometryType")
    attrs = {"tags": obj.get("tags", []), "id": obj.get("id")}
    if geometry == "bitmap":
        patch, origin = _bitmap(obj.get("bitmap"), path, f"{where}.bitmap")
        return Shape(label, "bitmap", (origin,), bitmap=patch, attributes=attrs)
    if geometry in ("polygon", "rectangle"):
        points = obj.get("points")
        if not isinstance(points, dict) or "exterior" not in points:
            raise AnnotationError("missing points.exterior", path=path, field=f"{where}.points")
        exterior = _ring(points["exterior"], path, f"{where}.points.exterior")
        interior = points.get("interior") or []
        if not isinstance(interior, list):
            raise AnnotationError(
                "expected a list of rings", path=path, field=f"{where}.points.interior", value=interior
            )
        holes = tuple(_ring(h, path, f"{where}.points.interior[{k}]") for k, h in enumerate(interior))
        if geometry == "rectangle":
            if len(exterior) != 2:
                raise AnnotationError(
                    "a rectangle needs 2 points", path=path, field=f"{where}.points.exterior", value=len(exterior)
                )
            (x0, y0), (x1, y1) = exterior
            # Supervisely rectangles are inclusive pixel boxes.
            return Shape(label, "rectangle", ((x0, y0), (x1 + 1, y1 + 1)), attributes=attrs)
        if len(exterior) < 3:
            raise AnnotationError(
                "a polygon needs at least 3 points", path=path, field=f"{where}.points.exterior", value=len(exterior)
            )
        return Shape(label, "polygon", exterior, holes=holes, attributes=attrs)
    notices.append(f"{path}: {where} geometry {geometry!r} ({label}) has no area; skipped")
    return None


def read_file(path: Path, root: Path) -> tuple[ImageAnnotation, list[str]]:
    """Read one ``ann/*.json``.

    Raises:
        AnnotationError: unreadable or truncated JSON, not Supervisely, a bad object, or
            an image path escaping ``root``.
    """
    data = load_json(path)
    if not _looks_like(data):
        raise AnnotationError("not a Supervisely annotation: needs 'size' and 'objects'", path=path, field="objects")
    size = data["size"]
    width, height = size.get("width"), size.get("height")
    if not (isinstance(width, int) and isinstance(height, int) and width > 0 and height > 0):
        raise AnnotationError("expected positive integer width and height", path=path, field="size", value=size)
    notices: list[str] = []
    shapes = [_object(obj, f"objects[{k}]", path, notices) for k, obj in enumerate(data["objects"])]
    ann_dir = next(p for p in path.parents if p.name == "ann")
    rel = path.relative_to(ann_dir).as_posix()
    name = rel[: -len(".json")]
    image_path = resolve_inside(root, ann_dir.parent / "img", name, path=path, field="file name")
    tags = data.get("tags", [])
    meta: dict[str, Any] = {"tags": tags, "description": data.get("description", "")}
    provenance = provenance_from_named((str(t.get("name", "")), t.get("value"))
                                       for t in (tags if isinstance(tags, list) else []) if isinstance(t, dict))
    if provenance:
        meta["provenance"] = provenance
    item = ImageAnnotation(
        name,
        image_path if image_path.is_file() else None,
        width,
        height,
        tuple(s for s in shapes if s is not None),
        NAME,
        path,
        meta=meta,
    )
    return item, notices


def read(path: Path, *, root: Path | None = None) -> ReadResult:
    """Read a Supervisely project folder, a dataset folder or one ``ann`` JSON.

    Args:
        path: project folder, dataset folder, or annotation file inside an ``ann/`` folder.
        root: the folder image paths must stay in (default: the project folder).

    Returns:
        A :class:`ReadResult`, one item per annotation file.
    """
    result = ReadResult()
    if path.is_dir():
        files = _ann_files(path)
        root = root if root is not None else path
    else:
        files = [path]
        if root is None:
            ann_dir = next((p for p in path.parents if p.name == "ann"), path.parent)
            root = ann_dir.parent.parent if (ann_dir.parent.parent / "meta.json").is_file() else ann_dir.parent
    for file in files:
        try:
            item, notices = read_file(file, root)
        except (AnnotationError, StopIteration) as e:
            err = e if isinstance(e, AnnotationError) else AnnotationError("not inside an ann/ folder", path=file)
            result.problems.append(err)
            continue
        result.items.append(item)
        result.notices.extend(notices)
    return result


def _encode_bitmap(patch: np.ndarray) -> str:
    image = Image.fromarray(patch.astype(np.uint8), mode="L").convert("P")
    image.putpalette([0, 0, 0, ALPHA_MAX, ALPHA_MAX, ALPHA_MAX])
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", transparency=0)
    return base64.b64encode(zlib.compress(buffer.getvalue())).decode("ascii")


def _colour(index: int) -> str:
    return f"#{(index * 2654435761) & 0xFFFFFF:06X}"


def dataset_path(image_name: str) -> tuple[Path, str]:
    """The dataset folder (relative to the project) and the item file name of an image name.

    ``train/x.png`` -> (``train``, ``x.png``); ``x.png`` -> (``ds0``, ``x.png``);
    ``a/b/x.png`` -> (``a/datasets/b``, ``x.png``).

    Raises:
        ValueError: the name is unsafe, or a folder has a name the SDK reserves (``img``, ``ann``...).
    """
    *folders, file = safe_relative(image_name).parts
    reserved = [f for f in folders if f in RESERVED_DIRS]
    if reserved:
        raise ValueError(
            f"image name {image_name!r}: folder {reserved[0]!r} cannot be a Supervisely dataset "
            f"(reserved: {', '.join(sorted(RESERVED_DIRS))})"
        )
    if not folders:
        return Path(DATASET), file
    return Path(folders[0]).joinpath(*(part for f in folders[1:] for part in ("datasets", f))), file


def write(
    out: Path,
    records: list[ExportRecord],
    label_map: LabelMap,
    *,
    supervisely_shapes: Literal["bitmap", "polygon"] = "bitmap",
    tolerance: float = DEFAULT_TOLERANCE,
    copy_images: bool = True,
) -> list[Path]:
    """Write a Supervisely project: ``meta.json`` and ``<dataset>/ann/`` + ``<dataset>/img/``.

    The dataset is the image name's folder (``train/x.png`` -> ``train``; no folder ->
    ``ds0``), see :func:`dataset_path`.

    Args:
        out: project folder.
        records: the labelled images.
        label_map: class names (plus ``__ignore__``).
        supervisely_shapes: ``"bitmap"`` (exact) or ``"polygon"`` (traced, with interiors).
        tolerance: polygon simplification in pixels.
        copy_images: copy ``record.image_path`` into ``<dataset>/img/`` (the folder is made
            either way, so that the SDK reads the annotations without images).

    Returns:
        ``meta.json`` and the annotation files written.

    Raises:
        ValueError: a record does not fit its size or the label map, has an unsafe or
            reserved name, or two records land on the same dataset item.
    """
    shape = "bitmap" if supervisely_shapes == "bitmap" else "polygon"
    titles = [*label_map.classes, IGNORE_LABEL]
    keys = sorted({key for record in records for key in record.meta})
    meta = {
        "classes": [{"title": t, "shape": shape, "color": _colour(i + 1)} for i, t in enumerate(titles)],
        "tags": [
            {"name": f"{PROVENANCE_PREFIX}{k}", "value_type": "any_string", "color": _colour(100 + i)}
            for i, k in enumerate(keys)
        ],
        "projectType": "images",
    }
    placed: dict[tuple[Path, str], str] = {}
    for record in records:
        key = dataset_path(record.image_name)
        if key in placed:
            raise ValueError(
                f"image names {placed[key]!r} and {record.image_name!r} are both item "
                f"{key[1]!r} of Supervisely dataset {key[0].as_posix()!r}"
            )
        placed[key] = record.image_name
    written = [out / "meta.json"]
    atomic_write_text(written[0], json.dumps(meta, indent=2))
    for dataset, _ in placed:
        # Every dataset, a nested one's parents too, gets img/ and ann/ even when empty
        # (images not copied, or a parent with children only): the SDK skips a dataset without.
        for depth in range(1, len(dataset.parts) + 1, 2):
            for sub in ("img", "ann"):
                (out.joinpath(*dataset.parts[:depth]) / sub).mkdir(parents=True, exist_ok=True)
    for record in records:
        dataset, file = dataset_path(record.image_name)
        objects: list[dict[str, Any]] = []
        if supervisely_shapes == "polygon":
            for region, polygons in polygons_by_class(record, label_map, tolerance):
                for polygon in polygons:
                    objects.append(
                        {
                            "classTitle": region.label,
                            "geometryType": "polygon",
                            "tags": [],
                            "points": {
                                "exterior": [[x, y] for x, y in polygon.exterior],
                                "interior": [[[x, y] for x, y in hole] for hole in polygon.holes],
                            },
                        }
                    )
        else:
            for region in class_regions(record, label_map):
                cropped = crop_to_content(region.pixels)
                if cropped is None:
                    continue
                patch, origin = cropped
                objects.append(
                    {
                        "classTitle": region.label,
                        "geometryType": "bitmap",
                        "tags": [],
                        "bitmap": {"data": _encode_bitmap(patch), "origin": list(origin)},
                    }
                )
        ann = {
            "description": "",
            "size": {"height": record.height, "width": record.width},
            "tags": [
                {"name": f"{PROVENANCE_PREFIX}{k}", "value": "" if v is None else str(v)}
                for k, v in record.meta.items()
            ],
            "objects": objects,
        }
        ann_path = out / dataset / "ann" / f"{file}.json"
        atomic_write_text(ann_path, json.dumps(ann))
        if copy_images:
            copy_image(record, out / dataset / "img" / file)
        written.append(ann_path)
    return written
