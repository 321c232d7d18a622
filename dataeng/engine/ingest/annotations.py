"""Annotations found during ingest become human labels.

1. :func:`discover` finds annotation sets in the ingested paths (or takes ``--format``)
   and names the label folders whose PNGs are not images to register.
2. :func:`read_all` reads them with the format modules; per-item problems are kept.
3. :func:`register_labels`, after the images are registered, rasterises each image's
   annotation at the registered image size in a process pool (rasterise + PNG encode are
   the expensive part), then writes mask files and rows in the main process, one
   transaction per chunk.

Several annotations for one image (e.g. a mask folder and an alpha folder of the same
dataset) are merged: the class mask comes from the first non-matte annotation, the
soft matte from the alpha folder.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from dataeng.annotation.formats import detect, find_annotations, get_format, unreadable_json
from dataeng.annotation.formats.paired_folders import label_folder
from dataeng.annotation.masks import encode_png, to_uint8_alpha
from dataeng.annotation.rasterize import rasterize, scale_shapes
from dataeng.annotation.types import LabelMap
from dataeng.db.schema import Image, Problem, ProblemKind
from dataeng.engine.ingest.pool import process_pool
from dataeng.engine.labels import EncodedLabel, ExportedLabel, add_human_label, import_refusal
from dataeng.errors import AnnotationError, DataEngError, RegistryError
from dataeng.progress import NullProgress, Progress
from dataeng.workspace import Workspace

SOURCE_OF_FORMAT = {
    "labelme": "labelme",
    "cvat": "cvat",
    "coco": "coco",
    "supervisely": "supervisely",
    "labelstudio": "labelstudio",
    "mask_folder": "mask",
    "alpha_folder": "alpha",
}
LABEL_FOLDER_FORMATS = ("mask_folder", "alpha_folder")


@dataclass
class AnnotationSets:
    """What :func:`discover` found."""

    sets: list[tuple[str, Path, Path]] = field(default_factory=list)
    """(format, annotation file or folder, root no image path may leave)."""
    label_dirs: list[Path] = field(default_factory=list)
    problems: list[DataEngError] = field(default_factory=list)


@dataclass
class LabelSummary:
    """Labels part of the ingest summary."""

    annotation_files: int = 0
    labels_added: int = 0
    labels_unchanged: int = 0
    refused: int = 0
    notices: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def discover(inputs: Sequence[str | Path], fmt: str | None = None) -> AnnotationSets:
    """Find annotation sets under the inputs (auto-detect) or read them all as ``fmt``."""
    found = AnnotationSets()
    for raw in inputs:
        path = Path(raw)
        if not path.exists():
            continue
        root = (path if path.is_dir() else path.parent).resolve()
        if path.is_dir() and (root.parent / "images").is_dir():
            root = root.parent  # a label folder given on its own: its images are a sibling
        if fmt is not None:
            spec = get_format(fmt)
            if path.is_dir() and not spec.folder_format:
                suffix = {"labelme": ".json", "coco": ".json", "labelstudio": ".json", "cvat": ".xml"}.get(fmt, "")
                found.sets += [(fmt, p, root) for p in sorted(path.rglob(f"*{suffix}")) if spec.detect(p)]
            else:
                found.sets.append((fmt, path, root))
        elif path.is_dir():
            sets = find_annotations(path)
            found.sets += [(name, p, root) for name, p in sets]
            found.problems += unreadable_json(path, {p for _, p in sets})
        elif path.suffix.lower() in (".json", ".xml"):
            name = detect(path)
            if name is None:
                found.problems.append(AnnotationError("not an annotation format dataeng reads", path=path))
            else:
                found.sets.append((name, path, root))
    for name, path, _ in found.sets:
        if name in LABEL_FOLDER_FORMATS:
            names = ("masks",) if name == "mask_folder" else ("alpha", "alphas", "mattes")
            folder = label_folder(path, names, explicit=fmt is not None)
            if folder is not None:
                found.label_dirs.append(folder.resolve())
    return found


def read_all(sets: AnnotationSets, summary: LabelSummary) -> tuple[list[tuple[str, object]], list[DataEngError]]:
    """Read every annotation set; returns (format name, ImageAnnotation) items and problems."""
    items: list[tuple[str, object]] = []
    problems: list[DataEngError] = list(sets.problems)
    for name, path, root in sets.sets:
        summary.annotation_files += 1
        try:
            result = get_format(name).read(path, root=root)
        except DataEngError as e:
            problems.append(e)
            continue
        items += [(name, item) for item in result.items]
        problems += result.problems
        summary.notices += result.notices
    return items, problems


def image_files_of(items: list[tuple[str, object]]) -> list[Path]:
    """Image files the annotations point at (they are registered with the other images)."""
    out = []
    for _, item in items:
        p = getattr(item, "image_path", None)
        if p is not None and Path(p).is_file():
            out.append(Path(p))
    return out


@dataclass(frozen=True)
class _Rendered:
    """One image's annotations drawn and encoded by a worker."""

    mask_png: bytes
    alpha_png: bytes | None
    notices: list[str]
    unknown: list[str]
    only_unknown: bool


def _render(job: tuple[list[object], list[str], dict[str, str], int, int]) -> _Rendered:
    """Worker: rasterise one image's annotations and encode the PNGs."""
    annotations, classes, aliases, width, height = job
    label_map = LabelMap(classes, aliases)
    notices: list[str] = []
    mask_ann = next((a for a in annotations if getattr(a, "alpha", None) is None), annotations[0])
    alpha_ann = next((a for a in annotations if getattr(a, "alpha", None) is not None), None)
    declared = (getattr(mask_ann, "width", None), getattr(mask_ann, "height", None))
    if None not in declared and declared != (width, height):
        notices.append(f"annotation size {declared[0]}x{declared[1]} differs from the image {width}x{height}: scaled")
        mask_ann = scale_shapes(mask_ann, width, height)  # type: ignore[arg-type]
    raster = rasterize(mask_ann, label_map, width, height)  # type: ignore[arg-type]
    notices += raster.notices
    alpha_png = None
    if alpha_ann is not None:
        alpha = alpha_ann.alpha  # type: ignore[attr-defined]
        if alpha.shape != (height, width):
            import cv2

            alpha = cv2.resize(alpha, (width, height), interpolation=cv2.INTER_LINEAR)
            notices.append(f"alpha matte resized to the image size {width}x{height}")
        alpha_png = encode_png(to_uint8_alpha(np.asarray(alpha)))
    only_unknown = raster.only_unknown and alpha_ann is None
    return _Rendered(encode_png(raster.mask), alpha_png, notices, sorted(raster.unknown_labels), only_unknown)


def register_labels(
    workspace: Workspace,
    session: Session,
    batch_id: int,
    items: list[tuple[str, object]],
    image_ids: dict[str, int],
    summary: LabelSummary,
    *,
    workers: int = 0,
    chunk: int = 200,
    progress: Progress | None = None,
) -> None:
    """Rasterise and store one human label per annotated, registered image.

    Args:
        image_ids: real (symlink-resolved) image path -> image id, from the image phase of ingest.
    """
    progress = progress or NullProgress()
    by_image: dict[int, list[tuple[str, object]]] = defaultdict(list)
    for name, item in items:
        image_path = getattr(item, "image_path", None)
        image_id = image_ids.get(os.path.realpath(image_path)) if image_path is not None else None
        if image_id is None:
            where = getattr(item, "annotation_path", "?")
            what = getattr(item, "image_name", "?")
            _problem(
                session,
                batch_id,
                summary,
                str(where),
                ProblemKind.MISSING_IMAGE,
                "image",
                what,
                "annotated image not found or not registered",
            )
            continue
        by_image[image_id].append((name, item))
    if not by_image:
        return
    ids = sorted(by_image)
    sizes = dict(
        (i, (w, h)) for i, w, h in session.execute(select(Image.id, Image.width, Image.height).where(Image.id.in_(ids)))
    )
    cfg = workspace.config
    jobs = [([a for _, a in by_image[i]], cfg.classes, cfg.aliases, *sizes[i]) for i in ids]
    progress.task("registering labels", len(jobs))
    n_workers = workers or os.cpu_count() or 1
    unknown_seen: set[str] = set()
    pool = process_pool(n_workers) if n_workers > 1 and len(jobs) >= 16 else None
    try:
        results = pool.map(_render, jobs, chunksize=8) if pool is not None else map(_render, jobs)
        for k, (image_id, rendered) in enumerate(zip(ids, results, strict=True)):
            name, first = by_image[image_id][0]
            ann_path = str(getattr(first, "annotation_path", ""))
            summary.notices += [f"{ann_path}: {n}" for n in rendered.notices]
            if len(by_image[image_id]) > 1 and len({n for n, _ in by_image[image_id]} - {"alpha_folder"}) >= 1:
                others = [str(getattr(a, "annotation_path", "")) for _, a in by_image[image_id][1:]]
                summary.notices.append(
                    f"{ann_path}: image {image_id} is also annotated by {', '.join(others)}; "
                    "the first annotation (by path) is used"
                )
            for label in rendered.unknown:
                if label not in unknown_seen:
                    unknown_seen.add(label)
                    _problem(
                        session,
                        batch_id,
                        summary,
                        ann_path,
                        ProblemKind.UNKNOWN_LABEL,
                        "label",
                        label,
                        f"label not in classes {cfg.classes} or aliases; its pixels are ignore (add an alias "
                        "to map it)",
                    )
            refusal = _refusal(session, image_id, by_image[image_id], rendered)
            if refusal is not None:
                kind, error = refusal
                _problem(session, batch_id, summary, ann_path, kind, error.field, error.value, error.reason)
                progress.advance()
                continue
            sources = sorted({SOURCE_OF_FORMAT[n] for n, _ in by_image[image_id]})
            source = next((s for s in sources if s != "alpha"), sources[0])
            meta = {
                "formats": sources,
                "annotations": sorted({str(getattr(a, "annotation_path", "")) for _, a in by_image[image_id]}),
            }
            outcome, _ = add_human_label(
                workspace,
                session,
                image_id,
                EncodedLabel.from_png(rendered.mask_png, rendered.alpha_png),
                source=source,
                annotation_path=ann_path,
                meta=meta,
                batch_id=batch_id,
            )
            if outcome == "added":
                summary.labels_added += 1
            else:
                summary.labels_unchanged += 1
            if (k + 1) % chunk == 0:
                session.commit()
            progress.advance()
    finally:
        if pool is not None:
            pool.shutdown()
    session.commit()


def _refusal(session: Session, image_id: int, annotations: list[tuple[str, object]], rendered: _Rendered
             ) -> tuple[ProblemKind, RegistryError] | None:
    """Why this image gets no human label from these annotations, or None."""
    if rendered.only_unknown:
        return ProblemKind.ONLY_UNKNOWN_LABELS, RegistryError(
            "every shape's label is unknown; no label registered (an all-ignore mask teaches nothing)",
            field="shapes.label", value=", ".join(rendered.unknown))
    provenance = next((getattr(a, "meta", {}).get("provenance") for _, a in annotations
                       if getattr(a, "meta", {}).get("provenance")), None)
    return import_refusal(session, image_id, ExportedLabel.parse(provenance))


def record_problems(session: Session, batch_id: int, problems: list[DataEngError], summary: LabelSummary) -> None:
    """Store annotation problems as ``problems`` rows (kind ``annotation``)."""
    for e in problems:
        _problem(
            session,
            batch_id,
            summary,
            e.path or "?",
            ProblemKind.ANNOTATION,
            e.field,
            None if e.value is None else str(e.value),
            e.reason,
            line=str(e),
        )


def _problem(
    session: Session,
    batch_id: int,
    summary: LabelSummary,
    path: str,
    kind: str,
    field_name: str | None,
    value: object,
    message: str,
    line: str | None = None,
) -> None:
    session.add(
        Problem(
            batch_id=batch_id,
            path=path,
            kind=kind,
            field=field_name,
            value=None if value is None else str(value),
            message=message,
        )
    )
    summary.refused += 1
    summary.problems.append(line or str(AnnotationError(message, path=path, field=field_name, value=value)))
