"""CVAT for images 1.1 XML (task, job and project exports), parsed with defusedxml.

Read: ``<polygon>``, ``<box>`` (rotated boxes become polygons) and ``<mask>`` (box RLE,
see :mod:`dataeng.annotation.rle`, decoded to a bitmap shape) draw pixels; ``z_order``,
``occluded``, ``source``, ``group_id`` and every ``<attribute>`` are kept in
``Shape.attributes``; ``<polyline>``, ``<points>`` and other kinds are skipped with a
notice; image ``<tag>``s go to ``meta["tags"]``. A file with ``<track>`` (CVAT for
video) is refused with :class:`UnsupportedFormatError`. The image size the XML declares
is kept as ``width``/``height`` (it can differ from the real image: call
:func:`dataeng.annotation.rasterize.scale_shapes`). Images are looked for at
``images/<subset>/<name>``, ``images/<name>`` then ``<name>`` beside the XML; a missing
image gives ``image_path=None``. A bad shape refuses its image only.

Write: ``annotations.xml`` plus ``images/`` and ``cvat_labels.json``; each class region
is one ``<mask>`` (RLE, exact, keeps holes) or, with ``cvat_masks="polygon"``, one
``<polygon>`` per traced ring with holes as ``_background_`` polygons on a higher
``z_order``. Provenance goes into text attributes named ``dataeng_<key>`` declared on
every label. Records whose ``meta["split"]`` is set are written as a CVAT *project*
export (the only CVAT XML whose ``<image>`` carries ``subset``; datumaro drops
``subset``-tagged images of a task export): one ``<task>`` per subset in ``<meta>``,
``subset`` and ``task_id`` on each ``<image>``, the name without the split folder
(``train/a_1234abcd.jpg`` -> ``a_1234abcd.jpg``) and the file at
``images/<subset>/<name>``, where CVAT's project export puts it. Without splits it is a
task export, files at ``images/<name>``. Image ids follow name order. Every label a
shape or tag may use is declared in ``<meta>`` (tags, e.g. ``reviewed``, with type
``tag``), and the same declarations go to ``cvat_labels.json``, a label list that CVAT's
label constructor (Raw) accepts (:func:`label_spec`).
"""

from __future__ import annotations

import json
import math
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal
from xml.etree.ElementTree import Element, ParseError

import defusedxml.ElementTree as DET
from defusedxml import DefusedXmlException

from dataeng.annotation.formats.cvat_labels import LABELS_FILE, label_spec
from dataeng.annotation.formats.export import (
    PROVENANCE_PREFIX,
    atomic_write_text,
    class_regions,
    copy_image,
    flat_draw_items,
    provenance_from_named,
    safe_relative,
)
from dataeng.annotation.formats.result import ReadResult
from dataeng.annotation.paths import resolve_inside
from dataeng.annotation.rle import crop_to_content, decode_cvat_rle, encode_cvat_rle, parse_cvat_rle
from dataeng.annotation.trace import DEFAULT_TOLERANCE, TraceLimits
from dataeng.annotation.types import (
    MAX_BITMAP_PIXELS,
    MAX_COORDINATE,
    ExportRecord,
    ImageAnnotation,
    LabelMap,
    Shape,
    is_coordinate,
)
from dataeng.errors import AnnotationError, UnsupportedFormatError

NAME = "cvat"
"""The label list for CVAT's constructor (Raw), written beside ``annotations.xml``."""
"""The attribute ``input_type`` values CVAT accepts."""
_SKIPPED = {"polyline", "points", "skeleton", "cuboid", "ellipse", "tag"}


def detect(path: Path) -> bool:
    """True for an ``.xml`` whose root element is ``<annotations>`` (read from its head)."""
    if path.is_dir():
        return any(detect(p) for p in sorted(path.glob("*.xml"))[:20])
    if path.suffix.lower() != ".xml" or not path.is_file():
        return False
    try:
        with path.open("rb") as f:
            head = f.read(4096)
    except OSError:
        return False
    return b"<annotations" in head and (b"<version>" in head or b"<meta" in head)


def _parse(path: Path) -> Element:
    try:
        tree = DET.parse(str(path))
    except DefusedXmlException as e:
        raise AnnotationError(f"refused XML: {type(e).__name__}", path=path) from e
    except ParseError as e:
        raise AnnotationError(f"invalid XML: {e}", path=path) from e
    except OSError as e:
        raise AnnotationError(f"cannot read: {e}", path=path) from e
    root = tree.getroot()
    if root is None or root.tag != "annotations":
        raise AnnotationError(
            "not a CVAT XML file: root is not <annotations>", path=path, value=getattr(root, "tag", None)
        )
    return root


def _float(el: Element, key: str, path: Path, where: str) -> float:
    text = el.get(key)
    try:
        value = float(text) if text is not None else math.nan
    except ValueError:
        value = math.nan
    if not is_coordinate(value):
        raise AnnotationError(f"expected a finite number within {MAX_COORDINATE:.0f} of the origin", path=path,
                              field=f"{where}.{key}", value=text)
    return value


def _int(el: Element, key: str, path: Path, where: str, default: int | None = None) -> int:
    text = el.get(key)
    if text is None and default is not None:
        return default
    try:
        return int(str(text))
    except ValueError as e:
        raise AnnotationError("expected an integer", path=path, field=f"{where}.{key}", value=text) from e


def _points(el: Element, path: Path, where: str) -> tuple[tuple[float, float], ...]:
    text = el.get("points") or ""
    points = []
    for pair in text.split(";"):
        parts = pair.split(",")
        try:
            x, y = (float(parts[0]), float(parts[1])) if len(parts) == 2 else (math.nan, math.nan)
        except ValueError:
            x, y = math.nan, math.nan
        if not (is_coordinate(x) and is_coordinate(y)):
            raise AnnotationError(
                "expected x,y;x,y... finite numbers within the coordinate bound", path=path,
                field=f"{where}.points", value=text[:80],
            )
        points.append((x, y))
    return tuple(points)


def _attributes(el: Element) -> dict[str, Any]:
    attrs: dict[str, Any] = {
        "occluded": el.get("occluded") == "1",
        "source": el.get("source"),
        "attributes": {a.get("name", ""): (a.text or "") for a in el.findall("attribute")},
    }
    if el.get("group_id") is not None:
        attrs["group_id"] = el.get("group_id")
    return attrs


def _shape(el: Element, path: Path, where: str, canvas: tuple[int | None, int | None] = (None, None)) -> Shape:
    label = el.get("label", "")
    z_order = _int(el, "z_order", path, where, default=0)
    group = el.get("group_id")
    group_id = int(group) if group is not None and group.isdigit() else None
    attrs = _attributes(el)
    if el.tag == "polygon":
        points = _points(el, path, where)
        if len(points) < 3:
            raise AnnotationError(
                "a polygon needs at least 3 points", path=path, field=f"{where}.points", value=len(points)
            )
        return Shape(label, "polygon", points, z_order=z_order, group_id=group_id, attributes=attrs)
    if el.tag == "box":
        x0, y0 = _float(el, "xtl", path, where), _float(el, "ytl", path, where)
        x1, y1 = _float(el, "xbr", path, where), _float(el, "ybr", path, where)
        rotation = _float(el, "rotation", path, where) if el.get("rotation") else 0.0
        if rotation % 360 == 0:
            return Shape(label, "rectangle", ((x0, y0), (x1, y1)), z_order=z_order, group_id=group_id, attributes=attrs)
        # CVAT rotates a box about its centre, clockwise in image coordinates.
        cx, cy, a = (x0 + x1) / 2, (y0 + y1) / 2, math.radians(rotation)
        corners = ((x0, y0), (x1, y0), (x1, y1), (x0, y1))
        rotated = tuple(
            (cx + (x - cx) * math.cos(a) - (y - cy) * math.sin(a), cy + (x - cx) * math.sin(a) + (y - cy) * math.cos(a))
            for x, y in corners
        )
        return Shape(label, "polygon", rotated, z_order=z_order, group_id=group_id, attributes=attrs)
    # <mask>
    left, top = _int(el, "left", path, where), _int(el, "top", path, where)
    width, height = _int(el, "width", path, where), _int(el, "height", path, where)
    image_w, image_h = canvas
    too_big = (width > image_w or height > image_h) if image_w and image_h else width * height > MAX_BITMAP_PIXELS
    if too_big:
        raise AnnotationError(f"mask box {width}x{height} is larger than its image "
                              f"{image_w}x{image_h}" if image_w and image_h else "mask box too large",
                              path=path, field=f"{where}.width", value=f"{width}x{height}")
    try:
        runs = parse_cvat_rle(el.get("rle") or "")
        patch = decode_cvat_rle(runs, width, height)
    except ValueError as e:
        raise AnnotationError(
            f"bad mask RLE: {e}", path=path, field=f"{where}.rle", value=(el.get("rle") or "")[:40]
        ) from e
    return Shape(
        label,
        "bitmap",
        ((float(left), float(top)),),
        bitmap=patch,
        z_order=z_order,
        group_id=group_id,
        attributes=attrs,
    )


def _image_path(root: Path, base: Path, name: str, subset: str | None, path: Path, where: str) -> Path | None:
    candidates = [f"images/{subset}/{name}"] if subset else []
    candidates += [f"images/{name}", name]
    for candidate in candidates:
        resolved = resolve_inside(root, base, candidate, path=path, field=f"{where}.name")
        if resolved.is_file():
            return resolved
    return None


def _read_image(el: Element, index: int, path: Path, root: Path, notices: list[str]) -> ImageAnnotation:
    name = el.get("name") or ""
    where = f"image[{index}]"
    if not name:
        raise AnnotationError("image without a name", path=path, field=f"{where}.name")
    width = _int(el, "width", path, where) if el.get("width") else None
    height = _int(el, "height", path, where) if el.get("height") else None
    subset = el.get("subset")
    image_path = _image_path(root, path.parent, name, subset, path, where)
    shapes: list[Shape] = []
    tags: list[str] = []
    for k, child in enumerate(el):
        if child.tag in ("polygon", "box", "mask"):
            shapes.append(_shape(child, path, f"{where}.{child.tag}[{k}]", (width, height)))
        elif child.tag == "tag":
            tags.append(child.get("label", ""))
        elif child.tag in _SKIPPED:
            notices.append(f"{path}: {where} ({name}) {child.tag} '{child.get('label', '')}' has no area; skipped")
        else:
            notices.append(f"{path}: {where} ({name}) unknown element <{child.tag}>; skipped")
    meta: dict[str, Any] = {"id": el.get("id"), "subset": subset, "task_id": el.get("task_id"), "tags": tags}
    provenance = provenance_from_named(item for s in shapes for item in s.attributes.get("attributes", {}).items())
    if provenance:
        meta["provenance"] = provenance
    return ImageAnnotation(name, image_path, width, height, tuple(shapes), NAME, path, meta=meta)


def read(path: Path, *, root: Path | None = None) -> ReadResult:
    """Read a CVAT for images 1.1 XML file (or every one at the top of a folder).

    Args:
        path: the XML file or a folder.
        root: the folder image paths must stay in (default: the XML's folder).

    Returns:
        A :class:`ReadResult` with one item per ``<image>``; a bad shape refuses its image.

    Raises:
        UnsupportedFormatError: a CVAT for video file (``<track>``).
        AnnotationError: the file is unreadable, not XML, not CVAT, or uses forbidden
            XML features (entities, DTDs, external references).
    """
    if path.is_dir():
        result = ReadResult()
        for file in sorted(path.glob("*.xml")):
            if detect(file):
                result.extend(read(file, root=root if root is not None else path))
        return result
    base_root = root if root is not None else path.parent
    doc = _parse(path)
    if doc.find(".//track") is not None:
        raise UnsupportedFormatError(
            "CVAT for video (<track>) is not supported; export the task as 'CVAT for images 1.1'",
            path=path,
            field="track",
        )
    result = ReadResult()
    labels = [n.text or "" for n in doc.findall("./meta//labels/label/name")]
    for index, el in enumerate(doc.findall("image")):
        try:
            item = _read_image(el, index, path, base_root, result.notices)
        except AnnotationError as e:
            result.problems.append(e)
            continue
        item.meta["labels"] = labels
        result.items.append(item)
    if not result.items and not result.problems:
        result.notices.append(f"{path}: no <image> elements")
    return result


def _sub(parent: Element, tag: str, text: str | None = None, **attrib: str) -> Element:
    el = ET.SubElement(parent, tag, attrib)
    if text is not None:
        el.text = text
    return el


def _provenance(el: Element, meta: dict[str, Any]) -> None:
    for key, value in meta.items():
        _sub(el, "attribute", "" if value is None else str(value), name=f"{PROVENANCE_PREFIX}{key}")


def _xml_labels(parent: Element, spec: list[dict[str, Any]]) -> None:
    labels_el = _sub(parent, "labels")
    for label in spec:
        label_el = _sub(labels_el, "label")
        _sub(label_el, "name", label["name"])
        _sub(label_el, "color", label["color"])
        _sub(label_el, "type", label["type"])
        attrs_el = _sub(label_el, "attributes")
        for attribute in label["attributes"]:
            attr = _sub(attrs_el, "attribute")
            _sub(attr, "name", attribute["name"])
            _sub(attr, "mutable", str(attribute["mutable"]))
            _sub(attr, "input_type", attribute["input_type"])
            _sub(attr, "default_value", attribute["default_value"])
            _sub(attr, "values", "\n".join(attribute["values"]))


def _placed(records: list[ExportRecord]) -> list[tuple[str | None, str, ExportRecord]]:
    """``(subset, name, record)`` in name order: the subset is ``meta["split"]`` and a leading
    folder of that name leaves the name. With splits, a record without one is ``default``.

    Raises:
        ValueError: an unsafe name, or two records with the same name in one subset.
    """
    placed = []
    for record in records:
        split = record.meta.get("split")
        subset = str(split) if split not in (None, "") else None
        rel = safe_relative(record.image_name)
        if subset is not None and len(rel.parts) > 1 and rel.parts[0] == subset:
            rel = Path(*rel.parts[1:])
        placed.append((subset, rel.as_posix(), record))
    if any(subset is not None for subset, _, _ in placed):
        placed = [(subset or "default", name, record) for subset, name, record in placed]
    placed.sort(key=lambda item: (item[1], item[0] or ""))
    seen: set[tuple[str | None, str]] = set()
    for subset, name, _ in placed:
        if (subset, name) in seen:
            raise ValueError(f"two images named {name!r}" + (f" in subset {subset!r}" if subset else ""))
        seen.add((subset, name))
    return placed


def _meta(doc: Element, placed: list[tuple[str | None, str, ExportRecord]], spec: list[dict[str, Any]],
          task_name: str) -> dict[str, int]:
    """``<meta>``: a task, or a project with one task per subset; returns subset -> task id."""
    meta = _sub(doc, "meta")
    subsets = sorted({subset for subset, _, _ in placed if subset is not None})
    task_ids = {subset: k + 1 for k, subset in enumerate(subsets)}
    if not subsets:
        task = _sub(meta, "task")
        _sub(task, "name", task_name)
        _sub(task, "size", str(len(placed)))
        _sub(task, "mode", "annotation")
        _xml_labels(task, spec)
    else:
        project = _sub(meta, "project")
        _sub(project, "name", task_name)
        tasks = _sub(project, "tasks")
        for subset in subsets:
            task = _sub(tasks, "task")
            _sub(task, "id", str(task_ids[subset]))
            _sub(task, "name", f"{task_name} {subset}")
            _sub(task, "size", str(sum(1 for s, _, _ in placed if s == subset)))
            _sub(task, "mode", "annotation")
            _sub(task, "overlap", "0")
            _sub(task, "subset", subset)
        _sub(project, "subsets", "\n".join(subsets))
        _xml_labels(project, spec)
    _sub(meta, "dumped", datetime.now(UTC).isoformat())
    return task_ids


def write(
    out: Path,
    records: list[ExportRecord],
    label_map: LabelMap,
    *,
    cvat_masks: Literal["mask", "polygon"] = "mask",
    tolerance: float = DEFAULT_TOLERANCE,
    limits: TraceLimits | None = None,
    copy_images: bool = True,
    task_name: str = "dataeng export",
    tags: Sequence[str] = (),
) -> list[Path]:
    """Write a CVAT for images 1.1 export: ``out/annotations.xml``, ``out/cvat_labels.json``
    and ``out/images/`` (a project export when records have ``meta["split"]``, see the
    module docstring).

    Args:
        out: export folder.
        records: the labelled images.
        label_map: class names (declared as labels, plus ``__ignore__``).
        cvat_masks: ``"mask"`` (RLE, exact) or ``"polygon"`` (traced, holes as
            ``_background_`` polygons above).
        tolerance: polygon simplification in pixels.
        limits: with ``cvat_masks="polygon"``, trace pre-fills for annotators instead (see
            :func:`dataeng.annotation.trace.trace_limited`); masks stay exact either way.
        copy_images: copy ``record.image_path`` to ``images/[<subset>/]<name>``.
        task_name: the task (or project) name in ``<meta>``.
        tags: image tag labels to declare (type ``tag``), e.g. ``("reviewed",)``.

    Returns:
        ``[out / "annotations.xml", out / "cvat_labels.json"]``.

    Raises:
        ValueError: a record does not fit its size or the label map, has an unsafe name, or
            shares its name (within its subset) with another record.
    """
    keys = sorted({key for record in records for key in record.meta})
    spec = label_spec(label_map, keys, holes=cvat_masks == "polygon", tags=tags)
    placed = _placed(records)
    doc = Element("annotations")
    _sub(doc, "version", "1.1")
    task_ids = _meta(doc, placed, spec, task_name)
    declared = {label["name"] for label in spec}
    for index, (subset, name, record) in enumerate(placed):
        attrib = {"id": str(index), "name": name}
        if subset is not None:
            attrib |= {"subset": subset, "task_id": str(task_ids[subset])}
        image_el = _sub(doc, "image", **attrib, width=str(record.width), height=str(record.height))
        if cvat_masks == "polygon":
            for z, item in enumerate(flat_draw_items(record, label_map, tolerance, limits)):
                points = ";".join(f"{x:.2f},{y:.2f}" for x, y in item.ring)
                el = _sub(
                    image_el, "polygon", label=item.label, source="auto", occluded="0", points=points, z_order=str(z)
                )
                _provenance(el, record.meta)
        else:
            for region in class_regions(record, label_map):
                cropped = crop_to_content(region.pixels)
                if cropped is None:
                    continue
                patch, (x0, y0) = cropped
                rle = ", ".join(str(r) for r in encode_cvat_rle(patch))
                el = _sub(
                    image_el,
                    "mask",
                    label=region.label,
                    source="auto",
                    occluded="0",
                    rle=rle,
                    left=str(x0),
                    top=str(y0),
                    width=str(patch.shape[1]),
                    height=str(patch.shape[0]),
                    z_order="0",
                )
                _provenance(el, record.meta)
        undeclared = {el.get("label", "") for el in image_el} - declared
        assert not undeclared, f"labels used but not declared: {sorted(undeclared)}"
        if copy_images:
            copy_image(record, out / "images" / (f"{subset}/{name}" if subset is not None else name))
    ET.indent(doc)
    xml_path = out / "annotations.xml"
    atomic_write_text(
        xml_path, '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(doc, encoding="unicode") + "\n"
    )
    labels_path = out / LABELS_FILE
    atomic_write_text(labels_path, json.dumps(spec, indent=2) + "\n")
    return [xml_path, labels_path]
