"""``dataeng review export``: send pre-filled masks to annotators, in Labelme or CVAT.

Queues:

- ``uncertain``: ``needs_review`` pseudo-labels, most uncertain first; pre-filled with the
  pseudo-label, its ignore pixels (the teacher was unsure) filled with that teacher's best
  guess (its prediction, re-run on these images only), so the annotator corrects a whole
  mask instead of painting the gaps. Without the teacher's checkpoint the ignore pixels
  go out as ``__ignore__`` shapes.
- ``issues``: active human labels that look wrong, most suspicious first
  (:func:`dataeng.engine.learn.label_quality.rank_label_issues`, cleanlab on out-of-sample
  predictions); pre-filled with the human label itself, the score kept in the manifest.
- ``eval``: val/test images without an active label, to grow the evaluation sets;
  pre-filled with the best teacher's prediction when there is a teacher, else empty.
  Nothing is registered for them until a human label comes back (val/test images are
  never pseudo-labelled).

Images already out in an open review are not sent again. The export folder holds the
images (hardlinked or copied from the store), the annotations (Labelme: one JSON per
image, ``imageData`` null, flag ``reviewed`` unticked; CVAT: ``annotations.xml`` of a
task export, plus ``cvat_labels.json`` for the task's label constructor) and
``manifest.json``. Polygons are traced under ``[review]``'s limits (:func:`trace_limits`):
no specks, few vertices, IoU >= ``min_iou`` with what was sent. The files are written to a
temporary folder, read back with the same readers the import uses and drawn (that drawing
is the pre-fill the correction is compared with), then the ``reviews`` row is inserted, the
manifest and pre-fills written, and the folder renamed into place in one transaction.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from sqlalchemy import exists, func, select

from dataeng.annotation.formats import cvat, cvat_labels, labelme
from dataeng.annotation.formats.labelstudio import TASKS_FILE
from dataeng.annotation.masks import read_mask, write_mask
from dataeng.annotation.rasterize import rasterize, scale_shapes
from dataeng.annotation.trace import TraceLimits
from dataeng.annotation.types import IGNORE_INDEX, ExportRecord, LabelMap
from dataeng.db.queries import review_queue
from dataeng.db.schema import Image, Label, Review, utcnow
from dataeng.engine.learn.data import eval_loader
from dataeng.engine.learn.label_quality import rank_label_issues
from dataeng.engine.learn.pseudolabel import uncertainty
from dataeng.engine.learn.runs import RunRef, best_run
from dataeng.engine.learn.samples import Sample
from dataeng.engine.learn.teacher import resolve_teacher
from dataeng.engine.review.items import FORMATS, QUEUES, Queue, ReviewFormat, pending_image_ids
from dataeng.engine.review.labelstudio_tasks import LabelStudioOptions, stamp_review, write_review_tasks
from dataeng.engine.review.manifest import MANIFEST_NAME, Manifest, ManifestItem, write_manifest
from dataeng.errors import DataEngError, ModelError, NothingToDoError
from dataeng.models.inference import class_mask, predict_batches, resolve_device
from dataeng.progress import NullProgress, Progress
from dataeng.storage import link_or_copy

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from dataeng.config import ReviewConfig
    from dataeng.workspace import Workspace

DEFAULT_LIMIT = 50
REVIEWED_FLAG = "reviewed"
"""The Labelme image flag (and CVAT image tag) an annotator ticks to say 'checked'."""
CVAT_LABELS_NAME = cvat_labels.LABELS_FILE


def trace_limits(config: ReviewConfig) -> TraceLimits:
    """The tracing limits of review pre-fills, from ``[review]`` in dataeng.toml."""
    return TraceLimits(min_region_fraction=config.min_region_fraction, simplify_fraction=config.simplify_fraction,
                       max_vertices=config.max_vertices, min_iou=config.min_iou)


@dataclass(frozen=True)
class ReviewExport:
    """What one export wrote.

    Attributes:
        prefill: items per pre-fill source (``label``, ``teacher``, ``empty``).
        teacher_run_id: the teacher that pre-filled evaluation images, if any.
        open_command: how to open the export (Labelme) or what to do with it (CVAT).
        notices: items skipped, with the reason.
    """

    review_id: int
    out: Path
    format: str
    queue: str
    items: int
    prefill: dict[str, int]
    teacher_run_id: int | None
    open_command: str
    notices: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"review_id": self.review_id, "out": str(self.out), "format": self.format, "queue": self.queue,
                "items": self.items, "prefill": dict(self.prefill), "teacher_run_id": self.teacher_run_id,
                "open_command": self.open_command, "notices": list(self.notices)}


@dataclass
class _Planned:
    """One image chosen for the export, before anything is written."""

    image: Image
    label_id: int | None
    mask: np.ndarray
    prefill_source: Literal["label", "teacher", "empty"]
    score: float | None
    name: str = ""


def export_review(
    workspace: Workspace,
    session: Session,
    out: Path,
    *,
    fmt: ReviewFormat,
    queue: Queue = "uncertain",
    limit: int = DEFAULT_LIMIT,
    folds: int = 0,
    device: str | None = None,
    cvat_shapes: Literal["mask", "polygon"] = "mask",
    labelstudio_shapes: Literal["brush", "polygon"] = "brush",
    progress: Progress | None = None,
) -> ReviewExport:
    """Export up to ``limit`` images of a review queue, pre-filled, for annotators.

    Args:
        workspace: the open workspace; session: committed by this function (the caller closes it).
        out: the folder to create (it may exist if empty).
        fmt: ``labelme``, ``cvat`` or ``labelstudio``.
        queue: ``uncertain``, ``issues`` or ``eval`` (see the module docstring).
        limit: at most this many images.
        folds: passed to the issues ranking (cross-validation folds; 0: its default).
        device: for the teacher (eval) or the issues ranking; default ``[train] device``.
        cvat_shapes: CVAT pre-labels as ``mask`` (RLE, exact) or ``polygon`` shapes.
        labelstudio_shapes: Label Studio predictions as ``brush`` (its RLE, exact) or ``polygon``
            regions (:mod:`.labelstudio_tasks`).
        progress: one step per image written.

    Returns:
        A :class:`ReviewExport`.

    Raises:
        DataEngError: an unknown format or queue, a limit below 1, or ``out`` not empty.
        NothingToDoError: the queue is empty.
        ModelError: the teacher (eval queue) cannot be loaded.

    Example::

        session = ws.new_session()
        try:
            done = export_review(ws, session, Path("to_annotate"), fmt="labelme", limit=20)
        finally:
            session.close()
        print(done.open_command)  # labelme to_annotate --flags reviewed
    """
    if fmt not in FORMATS:
        raise DataEngError(f"expected one of {', '.join(FORMATS)}", field="format", value=fmt)
    if queue not in QUEUES:
        raise DataEngError(f"expected one of {', '.join(QUEUES)}", field="queue", value=queue)
    if limit < 1:
        raise DataEngError("must be at least 1", field="limit", value=limit)
    out = out.resolve()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DataEngError("the export folder must be new or empty", path=out)
    progress = progress or NullProgress()
    notices: list[str] = []
    excluded = pending_image_ids(session)
    watermark = int(session.scalar(select(func.max(Label.id))) or 0)
    teacher_run_id: int | None = None
    if queue == "uncertain":
        planned = _uncertain(workspace, session, limit, excluded, device, progress, notices)
    elif queue == "issues":
        planned = _issues(workspace, session, limit, excluded, folds, device, progress, notices)
    else:
        planned, teacher_run_id = _evaluation(workspace, session, limit, excluded, device, progress)
    runs = _prefill_runs(session, planned, teacher_run_id) if fmt == "labelstudio" else ()
    session.commit()  # end the read transaction: no lock is held while files are written
    if not planned:
        raise NothingToDoError(f"nothing to review: the {queue} queue is empty"
                               + (f" ({len(excluded)} images are out in open reviews)" if excluded else ""))
    _name(planned)
    label_map = LabelMap(workspace.config.classes, workspace.config.aliases)
    tmp = out.parent / f".{out.name}.{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        progress.task(f"exporting {queue} queue ({fmt})", len(planned))
        prefills = _write_files(workspace, tmp, planned, label_map, fmt, cvat_shapes, progress,
                                LabelStudioOptions(out, labelstudio_shapes, runs))
        review = _register(workspace, session, tmp, out, planned, prefills, queue, fmt, watermark)
    except BaseException:
        session.rollback()
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    counts: dict[str, int] = {}
    for p in planned:
        counts[p.prefill_source] = counts.get(p.prefill_source, 0) + 1
    return ReviewExport(review.id, out, fmt, queue, len(planned), counts, teacher_run_id,
                        _open_command(out, fmt, review.id), notices)


# ---------------------------------------------------------------- queues
def _uncertain(workspace: Workspace, session: Session, limit: int, excluded: set[int], device: str | None,
               progress: Progress, notices: list[str]) -> list[_Planned]:

    rows = [r for r in review_queue(session, limit + len(excluded)) if r["image_id"] not in excluded][:limit]
    images = _images(session, [r["image_id"] for r in rows])
    teachers = dict(session.execute(select(Label.id, Label.run_id).where(
        Label.id.in_([r["label_id"] for r in rows]))).tuples().all()) if rows else {}
    planned = []
    for r in rows:
        cf, st = r["confident_fraction"], r["stability"]
        score = None if cf is None or st is None else uncertainty(cf, st)
        planned.append(_Planned(images[r["image_id"]], r["label_id"], read_mask(workspace.image_path(r["mask_path"])),
                                "label", score))
    by_teacher: dict[int, list[_Planned]] = {}
    for p in planned:
        run_id = teachers.get(p.label_id or 0)
        if run_id is not None and (p.mask == IGNORE_INDEX).any():
            by_teacher.setdefault(run_id, []).append(p)
    for run_id, group in sorted(by_teacher.items()):
        try:
            _, guesses = _teacher_masks(workspace, session, [p.image for p in group], device, progress,
                                        RunRef("id", run_id=run_id))
        except ModelError as e:
            notices.append(f"teacher run {run_id} cannot predict ({e}); its {len(group)} pre-labels keep their "
                           "unsure pixels as __ignore__ shapes")
            continue
        for p in group:
            guess = guesses.get(p.image.id)
            if guess is not None and guess.shape == p.mask.shape:
                p.mask = np.where(p.mask == IGNORE_INDEX, guess, p.mask).astype(np.uint8)
    return planned


def _issues(workspace: Workspace, session: Session, limit: int, excluded: set[int], folds: int,
            device: str | None, progress: Progress, notices: list[str]) -> list[_Planned]:

    # Enough to fill the export after skipping images out in other reviews (the ranking makes the
    # prediction PNGs of the labels it returns only).
    issues = rank_label_issues(workspace, session, folds=folds, limit=limit + len(excluded), device=device,
                               progress=progress)
    planned: list[_Planned] = []
    for issue in issues:
        if len(planned) == limit:
            break
        if issue.image_id in excluded:
            continue
        label = session.get(Label, issue.label_id)
        if label is None or label.status != "active" or label.origin != "human" or label.image_id != issue.image_id:
            notices.append(f"label {issue.label_id} of image {issue.image_id} is no longer the active human label; "
                           "skipped")
            continue
        image = session.get(Image, issue.image_id)
        assert image is not None  # the label's foreign key
        mask = read_mask(workspace.image_path(label.mask_path))
        planned.append(_Planned(image, label.id, mask, "label", issue.score))
    return planned


def _evaluation(workspace: Workspace, session: Session, limit: int, excluded: set[int], device: str | None,
                progress: Progress) -> tuple[list[_Planned], int | None]:
    labelled = exists().where(Label.image_id == Image.id, Label.status == "active")
    stmt = select(Image).where(Image.split.in_(("val", "test")), ~labelled).order_by(Image.id)
    images = [im for im in session.scalars(stmt.limit(limit + len(excluded))) if im.id not in excluded][:limit]
    if not images:
        return [], None
    masks: dict[int, np.ndarray] = {}
    teacher_run_id = None
    if best_run(session, external=True) is not None:
        teacher_run_id, masks = _teacher_masks(workspace, session, images, device, progress)
    planned = []
    for im in images:
        mask = masks.get(im.id)
        if mask is None:
            planned.append(_Planned(im, None, np.zeros((im.height, im.width), np.uint8), "empty", None))
        else:
            planned.append(_Planned(im, None, mask, "teacher", None))
    return planned, teacher_run_id


def _teacher_masks(workspace: Workspace, session: Session, images: list[Image], device: str | None,
                   progress: Progress, teacher: RunRef | None = None) -> tuple[int, dict[int, np.ndarray]]:
    """A teacher's class prediction (as evaluation decides, with the pseudo-label TTA) for each image
    at its own size.

    Args:
        teacher: the train run; None: the best teacher.
    """
    teacher_ = resolve_teacher(workspace, session, teacher)
    session.commit()  # no registry lock while the model runs
    predictor = teacher_.predictor(resolve_device(device or workspace.config.train.device))
    config = workspace.config.pseudolabel
    samples = [Sample(image_path=workspace.image_path(im.store_path), image_id=im.id) for im in images]
    masks: dict[int, np.ndarray] = {}
    progress.task(f"pre-filling with teacher run {teacher_.run_id}", len(samples))
    loader = eval_loader(samples, teacher_.image_size, config.batch_size, 0)
    for item, probs in predict_batches(predictor, loader, config.tta):
        image_id = samples[item["index"]].image_id
        if probs is not None and image_id is not None:  # an unreadable image gets an empty pre-fill
            masks[image_id] = class_mask(probs)
        progress.advance()
    return teacher_.run_id, masks


def _prefill_runs(session: Session, planned: list[_Planned], teacher_run_id: int | None) -> tuple[int | None, ...]:
    """The run that made each pre-fill (Label Studio's ``model_version``): the pre-label's teacher, or the
    evaluation teacher."""
    ids = [p.label_id for p in planned if p.label_id is not None]
    runs = dict(session.execute(select(Label.id, Label.run_id).where(Label.id.in_(ids))).tuples().all()) if ids else {}
    return tuple(runs.get(p.label_id) if p.label_id is not None
                 else (teacher_run_id if p.prefill_source == "teacher" else None) for p in planned)


def _images(session: Session, ids: list[int]) -> dict[int, Image]:
    return {im.id: im for im in session.scalars(select(Image).where(Image.id.in_(ids)))} if ids else {}


def _name(planned: list[_Planned]) -> None:
    """``<original stem>_<sha8><ext>``: readable, unique, no path separators."""
    seen: set[str] = set()
    for p in planned:
        stem = Path(p.image.original_path.replace("\\", "/")).stem
        stem = re.sub(r"[^\w.-]+", "_", stem).strip("._")[:80] or "image"
        name = f"{stem}_{p.image.sha256[:8]}{Path(p.image.store_path).suffix.lower()}"
        if name in seen:
            name = f"{stem}_{p.image.id}_{p.image.sha256[:8]}{Path(p.image.store_path).suffix.lower()}"
        seen.add(name)
        p.name = name


# ---------------------------------------------------------------- files
def _write_files(workspace: Workspace, tmp: Path, planned: list[_Planned], label_map: LabelMap, fmt: str,
                 cvat_shapes: Literal["mask", "polygon"], progress: Progress,
                 labelstudio_options: LabelStudioOptions | None = None) -> list[np.ndarray]:
    """Images, annotations and (CVAT) label list into ``tmp``; returns each item's pre-fill as drawn back."""
    mode = workspace.config.ingest.link
    image_dir = tmp if fmt == "labelme" else tmp / "images"
    records = []
    for p in planned:
        if p.mask.shape != (p.image.height, p.image.width):
            raise DataEngError(f"mask is {p.mask.shape[1]}x{p.mask.shape[0]} but the image is "
                               f"{p.image.width}x{p.image.height}; run `dataeng doctor`",
                               field="label_id", value=p.label_id)
        link_or_copy(workspace.image_path(p.image.store_path), image_dir / p.name, mode)
        # Labelme keeps provenance under its top-level "dataeng" key; CVAT would need every
        # attribute declared in the task, so its provenance stays in the manifest only.
        meta = {"image_sha256": p.image.sha256, "prelabel_id": p.label_id} if fmt == "labelme" else {}
        records.append(ExportRecord(image_name=p.name, width=p.image.width, height=p.image.height, mask=p.mask,
                                    meta=meta))
    limits = trace_limits(workspace.config.review)
    if fmt == "labelme":
        files = labelme.write(tmp, records, label_map, flags={REVIEWED_FLAG: False}, limits=limits,
                              copy_images=False)
        annotations = [labelme.read_file(f, tmp)[0] for f in files]
    elif fmt == "labelstudio":
        items = [{"n": n, "image_sha256": p.image.sha256, "image_id": p.image.id, "label_id": p.label_id,
                  "score": p.score} for n, p in enumerate(planned)]
        annotations = write_review_tasks(tmp, records, items, label_map,
                                         labelstudio_options or LabelStudioOptions(tmp), limits)
    else:
        # cvat_labels.json too: the classes, __ignore__, holes, and the reviewed tag
        cvat.write(tmp, records, label_map, cvat_masks=cvat_shapes, limits=limits, copy_images=False,
                   task_name="dataeng review", tags=(REVIEWED_FLAG,))
        by_name = {a.image_name: a for a in cvat.read(tmp / "annotations.xml").items}
        annotations = [by_name[p.name] for p in planned]
    prefills = []
    for p, annotation in zip(planned, annotations, strict=True):
        prefills.append(draw(annotation, label_map, p.image.width, p.image.height))
        progress.advance()
    return prefills


def draw(annotation: Any, label_map: LabelMap, width: int, height: int) -> np.ndarray:
    """An annotation read back, drawn at the registered image size (scaled if it declares another).

    The one drawing used for both the pre-fill at export and the correction at import,
    so an untouched file draws exactly its pre-fill.
    """
    if annotation.width is not None and annotation.height is not None \
            and (annotation.width, annotation.height) != (width, height):
        annotation = scale_shapes(annotation, width, height)
    return rasterize(annotation, label_map, width, height).mask


def _register(workspace: Workspace, session: Session, tmp: Path, out: Path, planned: list[_Planned],
              prefills: list[np.ndarray], queue: str, fmt: str, watermark: int) -> Review:
    """One transaction: the review row, its pre-fills and manifest, the folder renamed into place."""
    review = Review(queue=queue, format=fmt, out_dir=str(out), items=[], exported=len(planned), imported=0,
                    status="open")
    session.add(review)
    session.flush()
    review_dir = workspace.review_dir(review.id)
    try:
        items, manifest_items = [], []
        for n, (p, prefill) in enumerate(zip(planned, prefills, strict=True)):
            rel = f"reviews/{review.id}/prefill/{n}.png"
            write_mask(workspace.root / rel, prefill)
            sent = f"reviews/{review.id}/sent/{n}.png"
            write_mask(workspace.root / sent, p.mask)
            file = {"labelme": Path(p.name).with_suffix(".json").name, "labelstudio": TASKS_FILE}.get(
                fmt, "annotations.xml")
            original = Path(p.image.original_path.replace("\\", "/")).name
            manifest_items.append(ManifestItem(n, file, p.name, original, p.image.sha256, p.image.id, p.label_id,
                                               p.score))
            items.append({"n": n, "file": file, "image": p.name, "original_name": original, "image_id": p.image.id,
                          "image_sha256": p.image.sha256, "label_id": p.label_id, "sent": sent, "prefill": rel,
                          "prefill_source": p.prefill_source, "score": p.score, "watermark": watermark,
                          "state": "pending", "result_label_id": None, "edit_iou": None, "reason": None})
        review.items = items
        manifest = Manifest(review.id, queue, fmt, str(workspace.root), utcnow().isoformat(), tuple(manifest_items))
        write_manifest(tmp / MANIFEST_NAME, manifest)
        write_manifest(review_dir / MANIFEST_NAME, manifest)
        if fmt == "labelstudio":
            stamp_review(tmp, review.id)
        _readable(tmp)
        os.replace(tmp, out)
        session.commit()
    except BaseException:
        if not tmp.exists() and (out / MANIFEST_NAME).is_file():
            shutil.rmtree(out, ignore_errors=True)  # renamed into place but the row did not commit: take it back
        shutil.rmtree(review_dir, ignore_errors=True)
        raise
    return review


def _readable(folder: Path) -> None:
    """Give the export's files the user's default mode (atomic writes make them 0600): annotators
    often work under other accounts. A hardlinked image shares its mode with the store file."""
    umask = os.umask(0)
    os.umask(umask)
    for path in folder.rglob("*"):
        if path.is_file():
            os.chmod(path, 0o666 & ~umask)


def _open_command(out: Path, fmt: str, review_id: int) -> str:
    if fmt == "labelme":
        return f"labelme {out} --flags {REVIEWED_FLAG}"
    if fmt == "labelstudio":
        return (f"`dataeng review push {review_id} --labelstudio URL` (LABEL_STUDIO_API_KEY set; the server with "
                f"LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED=true and LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT at or above "
                f"{out}), or create a project with {out / 'labeling_config.xml'}, add a Local files storage for "
                f"{out / 'images'} and import {out / TASKS_FILE}; annotate, then `dataeng review pull {review_id}` or "
                f"export the project as JSON and `dataeng review import <export>.json`")
    return (f"create a CVAT task with the labels in {out / CVAT_LABELS_NAME} and the images in {out / 'images'}, "
            f"upload {out / 'annotations.xml'} as 'CVAT 1.1', correct, export the task as 'CVAT for images 1.1' "
            f"into {out}, then `dataeng review import {out}/<export>.zip`")
