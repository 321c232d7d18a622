"""Label Studio JSON: tasks to import (``tasks.json``) and the server's "JSON" and "JSON_MIN" exports.

Read: a JSON list of tasks. The "JSON" export (and our ``tasks.json``) has one object per
task: ``data`` (the image URL and our ids), ``annotations`` and ``predictions``, each with a
``result`` list of regions; "JSON_MIN" has one flat row per annotated task: the ``data`` keys,
``id`` (the task), ``annotation_id`` and one list of region values per control tag. A task's
regions are those of its **latest submitted annotation** (``was_cancelled`` false; by
``updated_at``, then id). A task whose annotations are all cancelled is ``skipped``; one with
predictions only is ``predicted`` (its regions are the newest prediction's); one with neither
is ``empty``. :func:`read` returns the annotated tasks, and the predicted tasks that dataeng
exported as pseudo-labels (their provenance says so, and ingest refuses them as such); the
review import takes every task through :func:`read_tasks`. Region kinds and their geometry:
:mod:`.labelstudio_regions` (brush RLE through the SDK, polygons in percent with holes as
later ``_background_`` polygons, rectangles). A region whose label the ``labeling_config.xml``
beside the file does not declare, a bad RLE or bad points refuse their task; the others go on.

The image: ``data.dataeng_image`` (the image's path relative to the JSON, written by us), else
the file named by the image URL (``/data/local-files/?d=...``, or its last path part) beside
the JSON or under its ``images/``; an image found nowhere leaves ``image_path`` None (the
review import then matches by ``data.image_sha256``).

Write: ``tasks.json`` (one task per record), ``labeling_config.xml`` (:func:`.labelstudio_regions.
labeling_config`) and the images under ``images/<image name>``. ``data.image`` is a local-files
URL (``/data/local-files/?d=<path below the document root>``; the root is
``LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT``, default ``/``, Label Studio's own default). A
record's mask goes out as an annotation, or as a prediction (``model_version``, ``score``) for
pseudo-labels and review pre-fills; provenance under ``data.dataeng``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Literal
from urllib.parse import parse_qs, unquote, urlparse

from dataeng.annotation.formats import labelstudio_regions as regions
from dataeng.annotation.formats.export import (
    atomic_write_text,
    class_regions,
    copy_image,
    flat_draw_items,
    safe_relative,
)
from dataeng.annotation.formats.jsonfile import load_json
from dataeng.annotation.formats.result import ReadResult
from dataeng.annotation.paths import resolve_inside
from dataeng.annotation.rle import crop_to_content
from dataeng.annotation.trace import DEFAULT_TOLERANCE, TraceLimits
from dataeng.annotation.types import ExportRecord, ImageAnnotation, LabelMap, Shape
from dataeng.errors import AnnotationError

NAME = "labelstudio"
TASKS_FILE = "tasks.json"
IMAGES_DIR = "images"
LOCAL_FILES_URL = "/data/local-files/?d="
DOCUMENT_ROOT_ENV = "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT"
DATA_IMAGE = "dataeng_image"
"""``data`` key: the image's path relative to the tasks file (how we find it again offline)."""
DATA_PROVENANCE = "dataeng"
_MAX_DETECT_BYTES = 64 << 20
TaskState = Literal["annotated", "skipped", "predicted", "empty"]
Shapes = Literal["brush", "polygon"]


@dataclass(frozen=True)
class Task:
    """One task of a Label Studio file, as :func:`read_tasks` found it.

    Attributes:
        index: position in the file; task_id: Label Studio's id (None in ``tasks.json``).
        data: the task's ``data`` (image URL, our ids, provenance).
        state: ``annotated`` | ``skipped`` | ``predicted`` | ``empty`` (see the module docstring).
        annotation: the regions of the latest submitted annotation (of the newest prediction
            for ``predicted``); None when ``error`` refused the task or it has no regions at all.
        annotation_id: the annotation read (None unless annotated).
    """

    index: int
    task_id: int | None
    data: dict[str, Any]
    state: TaskState
    annotation: ImageAnnotation | None = None
    annotation_id: int | None = None
    error: AnnotationError | None = None


@dataclass(frozen=True)
class TaskExtras:
    """What a writer adds to one record's task: ``data`` keys, and whether it is a prediction."""

    data: dict[str, Any] = field(default_factory=dict)
    as_prediction: bool = True
    model_version: str | None = None
    score: float | None = None


# ---------------------------------------------------------------- detect
def _looks_like(data: Any) -> bool:
    if not isinstance(data, list) or not data or not all(isinstance(t, dict) for t in data[:20]):
        return False
    first = data[0]
    if isinstance(first.get("data"), dict):
        return True
    return "annotation_id" in first and "id" in first  # JSON_MIN


def detect(path: Path) -> bool:
    """True for a Label Studio tasks or export ``.json`` file, or a folder with one at its top level."""
    if path.is_dir():
        return any(detect(p) for p in sorted(path.glob("*.json"))[:20])
    if path.suffix.lower() != ".json" or not path.is_file():
        return False
    try:
        with path.open("rb") as f:
            head = f.read(65536)
        if not head.lstrip().startswith(b"[") or not (b'"data"' in head or b'"annotation_id"' in head):
            return False
        if path.stat().st_size > _MAX_DETECT_BYTES:
            return b'"annotations"' in head or b'"predictions"' in head or b'"annotation_id"' in head
        return _looks_like(load_json(path))
    except (OSError, AnnotationError):
        return False


# ---------------------------------------------------------------- read
def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _latest(entries: list[dict[str, Any]]) -> dict[str, Any] | None:
    if not entries:
        return None
    return max(entries, key=lambda a: (str(a.get("updated_at") or a.get("created_at") or ""),
                                       _int_or_none(a.get("id")) or 0))


def _size(results: list[dict[str, Any]], path: str, where: str) -> tuple[int | None, int | None]:
    sizes = set()
    for j, r in enumerate(results):
        w, h = r.get("original_width"), r.get("original_height")
        if w is None and h is None:
            continue
        if not (isinstance(w, int) and isinstance(h, int) and not isinstance(w, bool) and w > 0 and h > 0):
            raise AnnotationError("expected positive integer original_width and original_height", path=path,
                                  field=f"{where}[{j}]", value=(w, h))
        sizes.add((w, h))
    if len(sizes) > 1:
        raise AnnotationError("regions declare different image sizes", path=path, field=where, value=sorted(sizes))
    return next(iter(sizes)) if sizes else (None, None)


def _region(result: dict[str, Any], where: str, path: str, size: tuple[int | None, int | None],
            declared: dict[str, set[str]] | None, notices: list[str]) -> Shape | None:
    kind = str(result.get("type") or "").lower()
    value = result.get("value")
    if not isinstance(value, dict):
        raise AnnotationError("expected an object", path=path, field=f"{where}.value", value=value)
    if kind not in regions.REGION_TYPES:
        notices.append(f"{path}: {where} is a {kind or 'untyped'} result: no mask, skipped")
        return None
    labels = value.get(kind, value.get("labels"))
    if not (isinstance(labels, list) and len(labels) == 1 and isinstance(labels[0], str)):
        raise AnnotationError("expected one label", path=path, field=f"{where}.value.{kind}", value=labels)
    label = labels[0]
    from_name = str(result.get("from_name") or "")
    if declared is not None and label not in declared.get(from_name, set()):
        raise AnnotationError(f"label not declared for {from_name!r} in {regions.CONFIG_FILE}", path=path,
                              field=f"{where}.value.{kind}", value=label)
    width, height = size
    if width is None or height is None:
        raise AnnotationError("a region needs original_width and original_height", path=path, field=where)
    if kind == "brushlabels":
        if value.get("format", "rle") != "rle":
            raise AnnotationError("only RLE brush masks exist", path=path, field=f"{where}.value.format",
                                  value=value.get("format"))
        mask = regions.decode_brush(value.get("rle"), width, height, path=path, field=f"{where}.value.rle")
        cropped = crop_to_content(mask)
        if cropped is None:
            return None
        patch, origin = cropped
        return Shape(label, "bitmap", ((float(origin[0]), float(origin[1])),), bitmap=patch,
                     attributes={"from_name": from_name})
    if kind == "polygonlabels":
        ring = regions.from_percent(value.get("points"), width, height, path=path, field=f"{where}.value.points")
        return Shape(label, "polygon", ring, attributes={"from_name": from_name})
    ring = regions.rectangle_ring(value, width, height, path=path, field=f"{where}.value")
    if not value.get("rotation"):
        return Shape(label, "rectangle", (ring[0], ring[2]), attributes={"from_name": from_name})
    # Rotated: a polygon through pixel centres (the corners are on pixel edges).
    return Shape(label, "polygon", tuple((x - 0.5, y - 0.5) for x, y in ring), attributes={"from_name": from_name})


def _min_results(row: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """JSON_MIN: split a row into its data keys and its regions (lists of values with a size)."""
    data, results = {}, []
    skip = {"id", "annotator", "annotation_id", "created_at", "updated_at", "lead_time"}
    for key, value in row.items():
        if isinstance(value, list) and value and all(isinstance(v, dict) and "original_width" in v for v in value):
            for v in value:
                kind = next((k for k in regions.REGION_TYPES if k in v), "")
                results.append({"from_name": key, "type": kind, "value": v,
                                "original_width": v.get("original_width"), "original_height": v.get("original_height")})
        elif key not in skip:
            data[key] = value
    return data, results


def _find_image(data: dict[str, Any], file: Path, root: Path) -> tuple[str, Path | None]:
    """(image name, image file or None)."""
    rel = data.get(DATA_IMAGE)
    if isinstance(rel, str) and rel:
        found = resolve_inside(root, file.parent, rel, path=file, field=f"data.{DATA_IMAGE}")
        return rel, found if found.is_file() else None
    url = data.get(regions.IMAGE_TAG)
    if not isinstance(url, str) or not url:
        url = next((v for v in data.values() if isinstance(v, str) and v.startswith(("/data/", "http"))), "")
    parsed = urlparse(url)
    target = parse_qs(parsed.query).get("d", [""])[0] or unquote(parsed.path)
    name = PurePosixPath(target).name
    if not name:
        return url, None
    for base, candidate in ((file.parent, target.lstrip("/")), (file.parent, name), (file.parent / IMAGES_DIR, name)):
        try:
            found = resolve_inside(root, base, candidate, path=file, field="data.image")
        except AnnotationError:
            continue  # a path below the server's document root, not below this folder
        if found.is_file():
            return name, found
    return name, None


def _task(raw: Any, i: int, file: Path, root: Path, declared: dict[str, set[str]] | None) -> tuple[Task, list[str]]:
    where = f"[{i}]"
    notices: list[str] = []
    shown = str(file)
    if not isinstance(raw, dict):
        raise AnnotationError("expected a task object", path=file, field=where, value=str(raw)[:60])
    annotation_id = None
    if isinstance(raw.get("data"), dict):
        data = dict(raw["data"])
        annotations = raw.get("annotations") or []
        predictions = raw.get("predictions") or []
        if not isinstance(annotations, list) or not isinstance(predictions, list):
            raise AnnotationError("expected lists", path=file, field=f"{where}.annotations/predictions")
        submitted = [a for a in annotations if isinstance(a, dict) and not a.get("was_cancelled")]
        chosen = _latest(submitted)
        if chosen is not None:
            state: TaskState = "annotated"
            annotation_id = _int_or_none(chosen.get("id"))
            results, field_prefix = chosen.get("result") or [], f"{where}.annotations[{annotations.index(chosen)}]"
        elif annotations:
            state, results, field_prefix = "skipped", [], where
        elif predictions:
            newest = _latest([p for p in predictions if isinstance(p, dict)]) or {}
            state, results = "predicted", newest.get("result") or []
            field_prefix = f"{where}.predictions[{predictions.index(newest)}]" if newest else where
        else:
            state, results, field_prefix = "empty", [], where
    else:
        data, results = _min_results(raw)
        state = "annotated" if raw.get("annotation_id") is not None else "empty"
        annotation_id = _int_or_none(raw.get("annotation_id"))
        field_prefix = where
    task_id = _int_or_none(raw.get("id"))
    if not isinstance(results, list):
        raise AnnotationError("expected a list", path=file, field=f"{field_prefix}.result", value=results)
    results = [r for r in results if isinstance(r, dict)]
    name, image_path = _find_image(data, file, root)
    if state in ("skipped", "empty"):
        return Task(i, task_id, data, state), notices
    size = _size(results, shown, f"{field_prefix}.result")
    shapes = [_region(r, f"{field_prefix}.result[{j}]", shown, size, declared, notices) for j, r in enumerate(results)]
    meta: dict[str, Any] = {"data": data, "state": state, "task_id": task_id, "annotation_id": annotation_id}
    provenance = data.get(DATA_PROVENANCE)
    if isinstance(provenance, dict) and provenance:
        meta["provenance"] = provenance
    annotation = ImageAnnotation(image_name=name, image_path=image_path, width=size[0], height=size[1],
                                 shapes=tuple(s for s in shapes if s is not None), source=NAME, annotation_path=file,
                                 meta=meta)
    return Task(i, task_id, data, state, annotation, annotation_id), notices


def read_tasks(path: Path, root: Path | None = None, *, declared: dict[str, set[str]] | None = None
               ) -> tuple[list[Task], list[str]]:
    """Every task of a Label Studio tasks or export file, a refused one with its ``error``.

    Args:
        path: the ``.json`` file.
        root: the folder image paths must stay in (default: the file's folder).
        declared: the labels each control tag declares; default: ``labeling_config.xml``
            beside the file, when there is one (else any label is taken: the label map decides).

    Returns:
        The tasks in file order, and the notices (skipped region types).

    Raises:
        AnnotationError: unreadable or truncated JSON, or not a list of tasks.
    """
    root = root if root is not None else path.parent
    data = load_json(path)
    if not isinstance(data, list):
        raise AnnotationError("not a Label Studio export: expected a JSON list of tasks", path=path,
                              value=type(data).__name__)
    config = path.parent / regions.CONFIG_FILE
    if declared is None and config.is_file():
        declared = regions.declared_labels(config)
    tasks, notices = [], []
    for i, raw in enumerate(data):
        try:
            task, found = _task(raw, i, path, root, declared)
        except AnnotationError as e:
            raw_data: dict[str, Any] = {}
            if isinstance(raw, dict) and isinstance(raw.get("data"), dict):
                raw_data = dict(raw["data"])
            task_id = _int_or_none(raw.get("id")) if isinstance(raw, dict) else None
            tasks.append(Task(i, task_id, raw_data, "empty", error=e))
            continue
        tasks.append(task)
        notices.extend(found)
    return tasks, notices


def read(path: Path, *, root: Path | None = None) -> ReadResult:
    """Read a Label Studio file, or every Label Studio file at the top of a folder, for ingest.

    Items: the annotated tasks, and predicted tasks whose provenance dataeng wrote (pseudo-labels,
    which ingest refuses as such); skipped, empty and foreign predicted tasks are notices.

    Returns:
        A :class:`ReadResult`; a refused task is a problem, the others go on.
    """
    result = ReadResult()
    if path.is_dir():
        root = root if root is not None else path
        files = [p for p in sorted(path.glob("*.json")) if detect(p)]
    else:
        files = [path]
    for file in files:
        try:
            tasks, notices = read_tasks(file, root)
        except AnnotationError as e:
            result.problems.append(e)
            continue
        result.notices.extend(notices)
        for task in tasks:
            if task.error is not None:
                result.problems.append(task.error)
            elif task.annotation is not None and (task.state == "annotated" or "provenance" in task.annotation.meta):
                result.items.append(task.annotation)
            else:
                result.notices.append(f"{file}: task {task.task_id if task.task_id is not None else task.index} "
                                      f"is {task.state}: no human annotation, skipped")
    return result


# ---------------------------------------------------------------- write
def image_url(image: Path, document_root: Path | str | None = None) -> str:
    """The local-files URL Label Studio serves ``image`` at (relative to its document root).

    ``document_root``: default ``LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT``, else ``/``. An image
    outside the root keeps its absolute path (Label Studio then refuses the storage: the
    message says which root to set).
    """
    root = Path(document_root or os.environ.get(DOCUMENT_ROOT_ENV) or "/").resolve()
    image = image.resolve()
    rel = image.relative_to(root) if image.is_relative_to(root) else image.relative_to(image.anchor)
    return LOCAL_FILES_URL + rel.as_posix()


def _results(record: ExportRecord, label_map: LabelMap, shapes: Shapes, tolerance: float,
             limits: TraceLimits | None) -> list[dict[str, Any]]:
    size = {"original_width": record.width, "original_height": record.height, "image_rotation": 0}
    if shapes == "brush":
        return [{"id": f"b{k}", "from_name": regions.BRUSH_TAG, "to_name": regions.IMAGE_TAG, "type": "brushlabels",
                 **size, "value": {"format": "rle", "rle": regions.encode_brush(region.pixels),
                                   "brushlabels": [region.label]}}
                for k, region in enumerate(class_regions(record, label_map))]
    return [{"id": f"p{k}", "from_name": regions.POLYGON_TAG, "to_name": regions.IMAGE_TAG, "type": "polygonlabels",
             **size, "value": {"points": regions.to_percent(item.ring, record.width, record.height), "closed": True,
                               "polygonlabels": [item.label]}}
            for k, item in enumerate(flat_draw_items(record, label_map, tolerance, limits))]


def _default_extras(record: ExportRecord) -> TaskExtras:
    """``export labels``: human labels as annotations, pseudo-labels as predictions of their run."""
    if record.meta.get("origin") == "pseudo":
        run = record.meta.get("run_id")
        return TaskExtras(as_prediction=True, model_version=f"run-{run}" if run is not None else "dataeng")
    return TaskExtras(as_prediction=False)


def write(
    out: Path,
    records: list[ExportRecord],
    label_map: LabelMap,
    *,
    labelstudio_shapes: Shapes = "brush",
    extras: dict[str, TaskExtras] | None = None,
    served_from: Path | None = None,
    document_root: Path | str | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
    limits: TraceLimits | None = None,
    copy_images: bool = True,
) -> list[Path]:
    """Write ``tasks.json``, ``labeling_config.xml`` and (``copy_images``) ``images/<image name>``.

    Args:
        out: export folder.
        records: the labelled images.
        label_map: class names (plus ``__ignore__``; ``_background_`` for polygon holes).
        labelstudio_shapes: ``brush`` (Label Studio RLE, exact) or ``polygon`` (traced, holes as
            later ``_background_`` polygons).
        extras: per image name, the task's extra ``data`` and whether it is a prediction (with
            ``model_version``, ``score``); default: human labels as annotations, pseudo-labels as
            predictions of ``run-<run_id>``.
        served_from: the folder the export will be served from, when ``out`` is a temporary
            folder renamed there afterwards (default ``out``).
        document_root: Label Studio's local-files document root (see :func:`image_url`).
        tolerance, limits: polygon tracing (see :func:`..export.polygons_by_class`).
        copy_images: copy ``record.image_path`` to ``images/<image name>``.

    Returns:
        ``tasks.json`` and ``labeling_config.xml``.

    Raises:
        ValueError: a record does not fit its size or the label map, or has an unsafe image name.
        DataEngError: brush masks without label-studio-sdk installed.
    """
    served = served_from or out
    tasks = []
    for record in records:
        rel = PurePosixPath(IMAGES_DIR) / safe_relative(record.image_name).as_posix()
        extra = (extras or {}).get(record.image_name) or _default_extras(record)
        data: dict[str, Any] = {regions.IMAGE_TAG: image_url(served / rel, document_root), DATA_IMAGE: str(rel),
                                **extra.data}
        if record.meta:
            data[DATA_PROVENANCE] = record.meta
        task: dict[str, Any] = {"data": data}
        results = _results(record, label_map, labelstudio_shapes, tolerance, limits)
        if not extra.as_prediction:
            task["annotations"] = [{"result": results, "was_cancelled": False, "ground_truth": False}]
        elif results:
            prediction: dict[str, Any] = {"model_version": extra.model_version or "dataeng", "result": results}
            if extra.score is not None:
                prediction["score"] = extra.score
            task["predictions"] = [prediction]
        tasks.append(task)
        if copy_images:
            copy_image(record, out / rel)
    written = [out / TASKS_FILE, out / regions.CONFIG_FILE]
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(written[0], json.dumps(tasks, ensure_ascii=False, default=str))
    atomic_write_text(written[1], regions.labeling_config(label_map))
    return written


def set_data(path: Path, changes: dict[str, Any]) -> None:
    """Add ``changes`` to every task's ``data`` in a ``tasks.json`` (the review id, known only once
    its row exists)."""
    tasks = load_json(path)
    for task in tasks:
        task["data"].update(changes)
    atomic_write_text(path, json.dumps(tasks, ensure_ascii=False, default=str))
