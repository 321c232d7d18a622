"""COCO instances JSON: polygons (several parts), uncompressed and compressed RLE.

Read: each polygon part becomes a polygon shape (group id = the annotation id),
rasterised later by pycocotools exactly as ``COCO.annToMask`` does; RLE (crowd or not)
is decoded here by :mod:`dataeng.annotation.rle` into a cropped bitmap shape.
``iscrowd``, ``area``, ``bbox``, ``id`` and extra keys are kept in ``Shape.attributes``;
crowd regions are drawn as their category (they are pixels of people), except those
dataeng wrote for ignore pixels (``"attributes": {"dataeng_ignore": true}``), which are
drawn as ``__ignore__``; so is a category named ``__ignore__`` (exports before
2026-12-02). A file without ``categories`` (some train2017 subsets) falls back to the
COCO 2017 ids (1 = person) with a notice; non-contiguous ids are fine (names, not ids,
reach the label map). An annotation without segmentation (box only) is skipped with a
notice. A bad annotation refuses its image. A results file (a JSON list of predictions)
is refused.

Images are looked for at ``<file_name>`` and ``images/<file_name>`` beside the JSON,
or, when the JSON lies in an ``annotations/`` folder, at ``images/<subset>/<file_name>``
and ``images/<file_name>`` beside that folder (``subset`` from ``instances_<subset>.json``).

Write: ``annotations/instances_default.json`` and ``images/``. With
``coco_annotations="instances"`` (default) one annotation per 8-connected region of each
class (the registry keeps class-index masks, not the source's instance ids, so connected
regions are the instances there are); with ``"semantic"`` one per class per image. Masks
are compressed RLE (default, keeps holes) or, with ``coco_masks="polygon"``, the traced
exteriors (COCO polygons cannot hold holes: they are lost). Categories are the label
map's classes with id = class index; ignore pixels are no category: each 8-connected
ignore region is an ``iscrowd=1`` RLE annotation (so COCO evaluation ignores detections
there) of the class :func:`.export.ignore_owner` picks (the class it borders most; the
only class of a one-class workspace), marked ``"attributes": {"dataeng_ignore": true}``
so that this reader gives it back as ignore (semantic: one per category). Provenance
goes into a ``dataeng`` key on each image and annotation.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import numpy as np

from dataeng.annotation.formats.export import (
    Component,
    atomic_write_text,
    class_regions,
    connected_components,
    copy_image,
    ignore_owner,
    safe_relative,
)
from dataeng.annotation.formats.jsonfile import load_json
from dataeng.annotation.formats.result import ReadResult
from dataeng.annotation.paths import resolve_inside
from dataeng.annotation.rle import coco_area, crop_to_content, decode_coco_segmentation, encode_coco_rle
from dataeng.annotation.trace import DEFAULT_TOLERANCE, trace
from dataeng.annotation.types import (
    IGNORE_INDEX,
    IGNORE_LABEL,
    ExportRecord,
    ImageAnnotation,
    LabelMap,
    Shape,
    is_coordinate,
)
from dataeng.errors import AnnotationError, UnsupportedFormatError

NAME = "coco"

CocoAnnotations = Literal["instances", "semantic"]
"""One annotation per connected region of a class (``instances``) or per class (``semantic``)."""

IGNORE_MARKER = "dataeng_ignore"
"""Key in an annotation's ``attributes`` dict: a crowd region dataeng wrote for ignore pixels."""

_COCO_2017_NAMES = (
    "person bicycle car motorcycle airplane bus train truck boat traffic_light fire_hydrant - "
    "stop_sign parking_meter bench bird cat dog horse sheep cow elephant bear zebra giraffe - "
    "backpack umbrella - - handbag tie suitcase frisbee skis snowboard sports_ball kite "
    "baseball_bat baseball_glove skateboard surfboard tennis_racket bottle - wine_glass cup "
    "fork knife spoon bowl banana apple sandwich orange broccoli carrot hot_dog pizza donut "
    "cake chair couch potted_plant bed - dining_table - - toilet - tv laptop mouse remote "
    "keyboard cell_phone microwave oven toaster sink refrigerator - book clock vase scissors "
    "teddy_bear hair_drier toothbrush"
)
COCO_2017_CATEGORIES: dict[int, str] = {
    i + 1: name.replace("_", " ") for i, name in enumerate(_COCO_2017_NAMES.split()) if name != "-"
}
"""COCO 2017 category ids (1..90, with gaps) -> names; the fallback when ``categories`` is absent."""


def detect(path: Path) -> bool:
    """True for a ``.json`` whose head shows COCO's ``images`` and ``annotations`` keys."""
    if path.is_dir():
        return any(detect(p) for p in sorted([*path.glob("*.json"), *path.glob("annotations/*.json")])[:20])
    if path.suffix.lower() != ".json" or not path.is_file():
        return False
    try:
        with path.open("rb") as f:
            head = f.read(1 << 20)
    except OSError:
        return False
    if b'"shapes"' in head or not head.lstrip().startswith(b"{"):
        return False
    return b'"images"' in head and b'"annotations"' in head


def _is_id(value: Any) -> bool:
    """An id COCO files use: an int (not a bool) or a string; a list or dict would not even hash."""
    return (isinstance(value, int) and not isinstance(value, bool)) or isinstance(value, str)


def _finite(values: Any) -> bool:
    """Every value a coordinate native code can take (finite, within MAX_COORDINATE)."""
    return all(is_coordinate(v) for v in values)


def _shapes(
    ann: dict[str, Any], where: str, label: str, width: int, height: int, path: Path, notices: list[str]
) -> list[Shape]:
    seg = ann.get("segmentation")
    if is_ignore(ann):
        label = IGNORE_LABEL
    attrs = {k: v for k, v in ann.items() if k not in ("segmentation", "image_id", "category_id")}
    raw_id = ann.get("id")
    group_id = raw_id if isinstance(raw_id, int) and not isinstance(raw_id, bool) else None
    if seg is None or seg == []:
        notices.append(f"{path}: {where} has no segmentation (box only); skipped")
        return []
    if isinstance(seg, list):
        shapes = []
        for k, part in enumerate(seg):
            field = f"{where}.segmentation[{k}]"
            if not isinstance(part, list) or not _finite(part) or len(part) % 2:
                raise AnnotationError(
                    "expected a flat list of finite x, y numbers", path=path, field=field, value=str(part)[:60]
                )
            if len(part) < 6:
                raise AnnotationError("a polygon needs at least 3 points", path=path, field=field, value=len(part) // 2)
            points = tuple((float(part[j]), float(part[j + 1])) for j in range(0, len(part), 2))
            shapes.append(Shape(label, "polygon", points, group_id=group_id, attributes=attrs))
        return shapes
    if not isinstance(seg, dict):
        raise AnnotationError(
            "unknown segmentation type", path=path, field=f"{where}.segmentation", value=type(seg).__name__
        )
    try:
        full = decode_coco_segmentation(seg, height, width)
    except (ValueError, TypeError) as e:
        raise AnnotationError(f"bad RLE: {e}", path=path, field=f"{where}.segmentation", value=str(seg)[:60]) from e
    cropped = crop_to_content(full)
    if cropped is None:
        return []
    patch, (x0, y0) = cropped
    return [Shape(label, "bitmap", ((float(x0), float(y0)),), bitmap=patch, group_id=group_id, attributes=attrs)]


def is_ignore(ann: dict[str, Any]) -> bool:
    """An annotation dataeng wrote for ignore pixels (``"attributes": {"dataeng_ignore": true}``)."""
    attributes = ann.get("attributes")
    return isinstance(attributes, dict) and attributes.get(IGNORE_MARKER) is True


def _image_path(path: Path, root: Path, name: str, where: str) -> Path | None:
    base = path.parent
    field = f"{where}.file_name"
    # The name as written must stay inside the root; the derived layouts are only tried.
    first = resolve_inside(root, base, name, path=path, field=field)
    if first.is_file():
        return first
    rels = [f"images/{name}"]
    if base.name == "annotations":
        subset = path.stem.split("_", 1)[1] if "_" in path.stem else path.stem
        rels += [f"../images/{subset}/{name}", f"../images/{name}", f"../{name}"]
    for rel in rels:
        try:
            resolved = resolve_inside(root, base, rel, path=path, field=field)
        except AnnotationError:
            continue
        if resolved.is_file():
            return resolved
    return None


def read(path: Path, *, root: Path | None = None) -> ReadResult:
    """Read a COCO instances JSON file.

    Args:
        path: the JSON file.
        root: the folder image paths must stay in (default: the JSON's folder, or the
            folder above an ``annotations/`` folder).

    Returns:
        A :class:`ReadResult` with one item per entry of ``images``.

    Raises:
        UnsupportedFormatError: a results (predictions) list.
        AnnotationError: unreadable or truncated JSON, or not a COCO instances file.
    """
    if path.is_dir():
        result = ReadResult()
        for file in sorted([*path.glob("*.json"), *path.glob("annotations/*.json")]):
            if detect(file):
                result.extend(read(file, root=root if root is not None else path))
        return result
    if root is None:
        root = path.parent.parent if path.parent.name == "annotations" else path.parent
    data = load_json(path)
    if isinstance(data, list):
        raise UnsupportedFormatError(
            "a COCO results file (list of predictions) is not a dataset; give an instances file",
            path=path,
        )
    if (
        not isinstance(data, dict)
        or not isinstance(data.get("images"), list)
        or not isinstance(data.get("annotations"), list)
    ):
        raise AnnotationError("not a COCO instances file: needs 'images' and 'annotations' lists", path=path)
    result = ReadResult()
    categories = data.get("categories")
    if isinstance(categories, list) and categories:
        names: dict[Any, str] = {}
        for k, c in enumerate(categories):
            if not isinstance(c, dict):
                continue
            if not _is_id(c.get("id")):
                result.problems.append(AnnotationError("expected an integer or string id", path=path,
                                                       field=f"categories[{k}].id", value=str(c.get("id"))[:60]))
                continue
            names[c["id"]] = str(c.get("name"))
    else:
        names = dict(COCO_2017_CATEGORIES)
        result.notices.append(f"{path}: no 'categories'; assuming COCO 2017 ids (1 = person)")
    by_image: dict[Any, list[tuple[int, dict[str, Any]]]] = {}
    for k, ann in enumerate(data["annotations"]):
        if not isinstance(ann, dict):
            result.problems.append(
                AnnotationError("expected an object", path=path, field=f"annotations[{k}]", value=ann)
            )
            continue
        bad = next((key for key in ("image_id", "category_id") if not _is_id(ann.get(key))), None)
        if bad is not None:
            result.problems.append(AnnotationError("expected an integer or string id", path=path,
                                                   field=f"annotations[{k}].{bad}", value=str(ann.get(bad))[:60]))
            continue
        by_image.setdefault(ann.get("image_id"), []).append((k, ann))
    seen_ids: dict[Any, int] = {}
    for index, image in enumerate(data["images"]):
        where = f"images[{index}]"
        try:
            if not isinstance(image, dict) or not isinstance(image.get("file_name"), str):
                raise AnnotationError(
                    "expected an object with a file_name", path=path, field=where, value=str(image)[:60]
                )
            if not _is_id(image.get("id")):
                raise AnnotationError("expected an integer or string id", path=path, field=f"{where}.id",
                                      value=str(image.get("id"))[:60])
            if image["id"] in seen_ids:
                raise AnnotationError(f"the same id as images[{seen_ids[image['id']]}]: its annotations would be "
                                      "drawn on both", path=path, field=f"{where}.id", value=image["id"])
            seen_ids[image["id"]] = index
            width, height = image.get("width"), image.get("height")
            if not (isinstance(width, int) and isinstance(height, int) and width > 0 and height > 0):
                raise AnnotationError(
                    "expected positive integer width and height", path=path, field=where, value=(width, height)
                )
            name = image["file_name"]
            image_path = _image_path(path, root, name, where)
            shapes: list[Shape] = []
            notices: list[str] = []
            for k, ann in by_image.get(image.get("id"), []):
                cid = ann.get("category_id")
                label = names.get(cid, f"category_id={cid}")
                shapes.extend(_shapes(ann, f"annotations[{k}]", label, width, height, path, notices))
        except AnnotationError as e:
            result.problems.append(e)
            continue
        result.notices.extend(notices)
        meta: dict[str, Any] = {"id": image.get("id"), "coco_url": image.get("coco_url")}
        if isinstance(image.get("dataeng"), dict):
            meta["provenance"] = image["dataeng"]
        result.items.append(ImageAnnotation(name, image_path, width, height, tuple(shapes), NAME, path, meta=meta))
    for image_id in sorted(set(by_image) - set(seen_ids), key=str):
        k = by_image[image_id][0][0]
        result.problems.append(AnnotationError(f"no image has this id ({len(by_image[image_id])} annotations)",
                                               path=path, field=f"annotations[{k}].image_id", value=image_id))
    return result


def write(
    out: Path,
    records: list[ExportRecord],
    label_map: LabelMap,
    *,
    coco_annotations: CocoAnnotations = "instances",
    coco_masks: Literal["rle", "polygon"] = "rle",
    tolerance: float = DEFAULT_TOLERANCE,
    copy_images: bool = True,
) -> list[Path]:
    """Write ``out/annotations/instances_default.json`` (and ``out/images/``).

    Args:
        out: export folder.
        records: the labelled images.
        label_map: class names; category id = class index (ignore is no category).
        coco_annotations: ``"instances"`` (one annotation per 8-connected region of a
            class) or ``"semantic"`` (one per class per image).
        coco_masks: ``"rle"`` (exact, keeps holes) or ``"polygon"`` (exteriors only);
            ignore (crowd) regions are RLE either way.
        tolerance: polygon simplification in pixels.
        copy_images: copy ``record.image_path`` to ``images/<image_name>``.

    Returns:
        The JSON file written; it loads with ``pycocotools.coco.COCO``.

    Raises:
        ValueError: a record does not fit its size or the label map, or has an unsafe name;
            an unknown ``coco_annotations``; ignore pixels with a label map of no class.
    """
    if coco_annotations not in ("instances", "semantic"):
        raise ValueError(f"coco_annotations must be 'instances' or 'semantic', got {coco_annotations!r}")
    categories = [{"id": i, "name": n, "supercategory": ""} for i, n in label_map.names.items() if i != 0]
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []

    def add(image_id: int, record: ExportRecord, class_index: int, region: np.ndarray | Component, crowd: bool) -> None:
        if isinstance(region, Component):  # its box is known: no search of the whole image
            (x, y), (h, w) = region.origin, region.patch.shape
            bbox = [x, y, w, h]
            pixels = region.full(record.height, record.width)
        else:
            pixels = region
            ys, xs = np.nonzero(pixels)
            bbox = [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)]
        segmentation: Any
        if coco_masks == "polygon" and not crowd:
            segmentation = [[c for point in polygon.exterior for c in point] for polygon in trace(pixels, 1, tolerance)]
        else:
            segmentation = encode_coco_rle(pixels)
        ann: dict[str, Any] = {
            "id": len(annotations) + 1,
            "image_id": image_id,
            "category_id": class_index,
            "segmentation": segmentation,
            "area": coco_area(segmentation) if isinstance(segmentation, dict) else float(pixels.sum()),
            "bbox": bbox,
            "iscrowd": int(crowd),
        }
        if crowd:
            ann["attributes"] = {IGNORE_MARKER: True}
        if record.meta:
            ann["dataeng"] = record.meta
        annotations.append(ann)

    for index, record in enumerate(records, start=1):
        rel = safe_relative(record.image_name)
        image: dict[str, Any] = {
            "id": index,
            "file_name": rel.as_posix(),
            "width": record.width,
            "height": record.height,
        }
        if record.meta:
            image["dataeng"] = record.meta
        images.append(image)
        size = (record.height, record.width)
        for region in class_regions(record, label_map):
            if region.class_index == IGNORE_INDEX:
                continue
            if coco_annotations == "semantic":
                add(index, record, region.class_index, region.pixels, False)
            else:
                for component in connected_components(region.pixels):
                    add(index, record, region.class_index, component, False)
        ignore = record.mask == IGNORE_INDEX
        if ignore.any():
            owned = [(ignore_owner(record.mask, c, label_map), c) for c in connected_components(ignore)]
            if coco_annotations == "semantic":
                for owner in sorted({o for o, _ in owned}):
                    union = np.zeros(size, dtype=bool)
                    for _, c in (item for item in owned if item[0] == owner):
                        union |= c.full(*size)
                    add(index, record, owner, union, True)
            else:
                for owner, c in owned:
                    add(index, record, owner, c, True)
        if copy_images:
            copy_image(record, out / "images" / rel)
    payload = {
        "info": {"description": "dataeng export"},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": categories,
    }
    json_path = out / "annotations" / "instances_default.json"
    atomic_write_text(json_path, json.dumps(payload, default=str))
    return [json_path]
