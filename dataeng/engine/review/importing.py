"""``dataeng review import``: annotators' corrections become human labels.

Input: a Labelme export folder (one JSON per image), a CVAT for images 1.1 export (a
folder holding ``annotations.xml``, the XML itself, or the task export zip), or a Label
Studio "JSON" / "JSON_MIN" export (the file, or a folder holding it). Each file is
matched to its review item through ``manifest.json`` (in the folder or zip, beside the
zip, or ``--manifest``); without one, by the sha256 of the image file beside the
annotation (or inside the zip), against the items of every review. A Label Studio task
carries the manifest's ids in its ``data`` (review, item, image sha256) and is matched by
them, else by ``data.image_sha256`` or its image file's sha256; only its latest submitted
annotation counts (a submitted annotation is a review, changed or not), and a task that was
skipped (cancelled) or never annotated stays in the queue.

An item counts as reviewed when the Labelme flag ``reviewed`` is ticked, the CVAT image
carries a ``reviewed`` tag, or its shapes draw a mask other than the pre-fill. A reviewed
item becomes a human label (source ``review``, parent = the pre-label, ``edit_iou`` =
:func:`edit_iou` of pre-fill and correction) through
:func:`dataeng.engine.labels.add_human_label`; the pre-label and any other pseudo-label
of the image are ``superseded`` (a human label always wins). Untouched items stay pending.

One transaction per item: the label, the superseded pseudo-labels and the item's new
state commit together, so a crash loses at most the item in flight and importing again
resumes; an item already imported is skipped, so importing twice adds nothing. Refused
(each a ``problems`` row of the import batch, the others go on): unreadable or truncated
files, an ``imagePath`` leaving the folder or naming another image than the manifest, a
manifest entry naming an image the registry does not know, unknown labels, and a
correction for an image that got a human label from someone else after the export (its
item is then ``refused`` for good: no silent overwrite).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from sqlalchemy import select

from dataeng.annotation.formats.labelstudio import NAME as LABELSTUDIO
from dataeng.annotation.masks import encode_png, read_mask
from dataeng.annotation.types import BACKGROUND, LabelMap
from dataeng.db.schema import Batch, Image, Problem, ProblemKind, Review, utcnow
from dataeng.engine import labels
from dataeng.engine.review.export import REVIEWED_FLAG, draw
from dataeng.engine.review.inputs import Input, Source, open_input
from dataeng.engine.review.items import items_of, review_summary, update_item
from dataeng.engine.review.manifest import Manifest, read_manifest
from dataeng.errors import DataEngError, InputError, NothingToDoError, RegistryError
from dataeng.progress import NullProgress, Progress

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from dataeng.workspace import Workspace


def edit_iou(before: np.ndarray, after: np.ndarray) -> float:
    """How much of a pre-label survived the correction, as an IoU of two class-index masks.

    Pixels that are not background in either mask (any class, or ignore) form the union;
    those with the same value in both, the intersection. For one class without ignore it
    is the foreground IoU. Both empty gives 1.0.

    Example:
        >>> edit_iou(np.array([[1, 1, 0, 0]], np.uint8), np.array([[1, 1, 1, 0]], np.uint8))
        0.6666666666666666
    """
    drawn_before, drawn_after = before != BACKGROUND, after != BACKGROUND
    union = int(np.count_nonzero(drawn_before | drawn_after))
    if union == 0:
        return 1.0
    return int(np.count_nonzero(drawn_before & drawn_after & (before == after))) / union


@dataclass
class ReviewImport:
    """What one import did; ``to_dict`` is the ``--json`` output.

    Attributes:
        files: annotations found (Labelme files, CVAT images).
        imported: new human labels (``unchanged`` of them accepted the pre-fill as it was).
        untouched: not reviewed, left pending.
        already: imported by an earlier import of the same files.
        refused: files or items refused (see ``problems``).
    """

    batch_id: int
    files: int = 0
    imported: int = 0
    unchanged: int = 0
    untouched: int = 0
    already: int = 0
    refused: int = 0
    problems: list[str] = field(default_factory=list)
    notices: list[str] = field(default_factory=list)
    edit_ious: list[float] = field(default_factory=list)
    reviews: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"batch_id": self.batch_id, "files": self.files, "imported": self.imported,
                "unchanged": self.unchanged, "untouched": self.untouched, "already": self.already,
                "refused": self.refused, "problems": list(self.problems), "notices": self.notices[:100],
                "median_edit_iou": float(np.median(self.edit_ious)) if self.edit_ious else None,
                "reviews": self.reviews}


def import_review(
    workspace: Workspace,
    session: Session,
    path: Path,
    *,
    manifest: Path | None = None,
    progress: Progress | None = None,
) -> ReviewImport:
    """Import annotators' corrections of review exports.

    Args:
        workspace: the open workspace; session: committed per item (the caller closes it).
        path: a Labelme export folder, a folder with a CVAT ``annotations.xml``, the XML, or
            a CVAT task export ``.zip``.
        manifest: the export's ``manifest.json`` when it is not in or beside ``path``.
        progress: one step per matched item.

    Returns:
        A :class:`ReviewImport`; refused files are ``problems`` rows of its batch.

    Raises:
        InputError: ``path`` does not exist, or the manifest is unreadable or names a
            review this workspace does not have.
        NothingToDoError: no annotation file in ``path``.

    Example::

        session = ws.new_session()
        try:
            done = import_review(ws, session, Path("to_annotate"))
        finally:
            session.close()
        done.imported, done.untouched
    """
    progress = progress or NullProgress()
    path = Path(path)
    if not path.exists():
        raise InputError("no such file or folder", path=path)
    label_map = LabelMap(workspace.config.classes, workspace.config.aliases)
    with open_input(path, manifest) as found:
        if not found.sources and not found.problems:
            raise NothingToDoError(f"{path}: no Labelme JSON, CVAT annotations.xml or Label Studio export to import")
        # Label Studio tasks carry the manifest's ids themselves.
        read = read_manifest(found.manifest) if found.manifest is not None and found.kind != "labelstudio" else None
        review = None
        if read is not None:
            review = session.get(Review, read[0].review_id)
            if review is None:
                raise InputError("no review with this id in this workspace (exported from another one?)",
                                 path=found.manifest, field="review_id", value=read[0].review_id)
        batch = Batch(kind="review-import", args={"path": str(path.resolve()),
                                                  "manifest": str(found.manifest) if found.manifest else None})
        session.add(batch)
        session.commit()
        summary = ReviewImport(batch_id=batch.id, files=len(found.sources))
        for problem in found.problems + (read[1] if read is not None else []):
            _problem(session, summary, problem, ProblemKind.ANNOTATION)
        if found.kind == "labelstudio":
            matched = _match_labelstudio(session, summary, found)
        elif read is not None and review is not None:
            matched = _match_manifest(session, summary, found, read[0], review)
        else:
            matched = _match_sha256(session, summary, found)
        session.commit()
        progress.task("importing corrections", len(matched))
        touched: set[int] = set()
        for review_id, n, source in matched:
            touched.add(review_id)
            _import_one(workspace, session, summary, label_map, review_id, n, source)
            progress.advance(imported=summary.imported)
    summary.reviews = [review_summary(r) for r in session.scalars(
        select(Review).where(Review.id.in_(touched)).order_by(Review.id))] if touched else []
    batch.status, batch.finished_at = "finished", utcnow()
    batch.summary = {k: v for k, v in summary.to_dict().items() if k != "reviews"}
    session.commit()
    return summary


# ---------------------------------------------------------------- matching
def _match_manifest(session: Session, summary: ReviewImport, found: Input, manifest: Manifest,
                    review: Review) -> list[tuple[int, int, Source]]:
    """Files -> items of the manifest's review; unknown images and foreign entries refused."""
    by_key = {s.key: s for s in found.sources}
    items = items_of(review)
    known = set(session.scalars(select(Image.sha256).where(
        Image.sha256.in_([m.image_sha256 for m in manifest.items]))))
    matched, used = [], set()
    for i, entry in enumerate(manifest.items):
        key = entry.file if found.kind == "labelme" else entry.image
        source = by_key.get(key)
        if source is None:
            continue  # not sent back (or removed): the item stays pending
        used.add(key)
        where = str(found.manifest)
        if entry.image_sha256 not in known:
            _problem(session, summary, InputError("names an image that is not in this registry", path=where,
                                                  field=f"items[{i}].image_sha256", value=entry.image_sha256),
                     ProblemKind.UNKNOWN_IMAGE)
            continue
        if entry.n >= len(items) or items[entry.n]["image_sha256"] != entry.image_sha256:
            _problem(session, summary, InputError(f"this image is not item {entry.n} of review {review.id}",
                                                  path=where, field=f"items[{i}].image_sha256",
                                                  value=entry.image_sha256), ProblemKind.NOT_IN_REVIEW)
            continue
        if found.kind == "labelme" and source.annotation is not None \
                and Path(source.annotation.image_name).name != items[entry.n]["image"]:
            _problem(session, summary, InputError(f"the manifest pairs this file with {items[entry.n]['image']}",
                                                  path=source.path, field="imagePath",
                                                  value=source.annotation.image_name), ProblemKind.ANNOTATION)
            continue
        matched.append((review.id, entry.n, source))
    for source in found.sources:
        if source.key not in used:
            if source.error is not None:
                _problem(session, summary, source.error, ProblemKind.ANNOTATION)
            else:
                summary.notices.append(f"{source.path}: not in the manifest; skipped")
    return matched


def _match_labelstudio(session: Session, summary: ReviewImport, found: Input) -> list[tuple[int, int, Source]]:
    """Label Studio tasks -> items, by the ids in their data, else by sha256; unannotated tasks stay pending."""
    matched, by_sha = [], []
    known = set(session.scalars(select(Image.sha256).where(
        Image.sha256.in_([s.ids[2] for s in found.sources if s.ids is not None]))))
    for source in found.sources:
        if source.error is not None:
            _problem(session, summary, source.error, ProblemKind.ANNOTATION)
            continue
        if source.state != "annotated":
            summary.untouched += 1
            if source.state == "skipped":
                summary.notices.append(f"{source.path}: skipped in Label Studio; stays in the queue")
            continue
        if source.ids is None:
            by_sha.append(source)
            continue
        review_id, n, sha = source.ids
        if sha not in known:
            _problem(session, summary, InputError("names an image that is not in this registry", path=source.path,
                                                  field="data.image_sha256", value=sha), ProblemKind.UNKNOWN_IMAGE)
            continue
        review = session.get(Review, review_id)
        if review is None:
            by_sha.append(source)  # a review of another workspace: the image may still be out here
            continue
        items = items_of(review)
        if n >= len(items) or items[n]["image_sha256"] != sha:
            _problem(session, summary, InputError(f"this image is not item {n} of review {review_id}",
                                                  path=source.path, field="data.dataeng_item", value=n),
                     ProblemKind.NOT_IN_REVIEW)
            continue
        matched.append((review_id, n, source))
    if by_sha:
        matched += _match_sha256(session, summary, replace(found, sources=by_sha))
    return matched


def _match_sha256(session: Session, summary: ReviewImport, found: Input) -> list[tuple[int, int, Source]]:
    """No manifest: each file's image, by sha256, -> the newest review holding it."""
    reviews = list(session.scalars(select(Review).order_by(Review.id.desc())))
    matched = []
    for source in found.sources:
        if source.error is not None:
            _problem(session, summary, source.error, ProblemKind.ANNOTATION)
            continue
        sha = source.image_sha256()
        if sha is None:
            _problem(session, summary, InputError("no manifest.json and no image file to match by sha256; pass "
                                                  "--manifest", path=source.path, field="image",
                                                  value=source.key), ProblemKind.UNMATCHED)
            continue
        image_id = session.scalar(select(Image.id).where(Image.sha256 == sha))
        if image_id is None:
            _problem(session, summary, InputError("the image is not in this registry", path=source.path,
                                                  field="image_sha256", value=sha), ProblemKind.UNKNOWN_IMAGE)
            continue
        hit = _newest_item(reviews, image_id)
        if hit is None:
            _problem(session, summary, InputError("the image was not exported for review; ingest new labels with "
                                                  "`dataeng ingest`", path=source.path, field="image",
                                                  value=source.key), ProblemKind.NOT_IN_REVIEW)
            continue
        matched.append((hit[0], hit[1], source))
    return matched


def _newest_item(reviews: list[Review], image_id: int) -> tuple[int, int] | None:
    """(review id, item n) of the newest pending item for the image, else its newest item of any state."""
    fallback = None
    for review in reviews:
        for item in review.items or []:
            if item["image_id"] == image_id:
                if item["state"] == "pending":
                    return review.id, item["n"]
                fallback = fallback or (review.id, item["n"])
    return fallback


# ---------------------------------------------------------------- one item
def _import_one(workspace: Workspace, session: Session, summary: ReviewImport, label_map: LabelMap,
                review_id: int, n: int, source: Source) -> None:
    """Check, draw and compare one correction (no lock held), then register it in one transaction."""
    review = session.get(Review, review_id)
    assert review is not None
    item = items_of(review)[n]
    image = session.get(Image, item["image_id"])
    session.commit()  # end the read transaction: drawing below holds no lock
    if item["state"] == "imported":
        summary.already += 1
        return
    if item["state"] == "refused":
        summary.notices.append(f"{source.path}: refused by an earlier import ({item['reason']}); skipped")
        return
    if source.error is not None:
        _problem(session, summary, source.error, ProblemKind.ANNOTATION)
        return
    annotation = source.annotation
    assert annotation is not None and image is not None
    unknown = sorted({s.label for s in annotation.shapes if label_map.index(s.label) is None})
    if unknown:
        _problem(session, summary, InputError(f"label not in classes {label_map.classes}; fix the label",
                                              path=source.path, field="shapes.label", value=unknown[0]),
                 ProblemKind.UNKNOWN_LABEL)
        return
    correction = draw(annotation, label_map, image.width, image.height)
    prefill = read_mask(workspace.root / item["prefill"])
    unchanged = prefill.shape == correction.shape and bool(np.array_equal(prefill, correction))
    flags = annotation.meta.get("flags") or {}
    ticked = flags.get(REVIEWED_FLAG) is True or REVIEWED_FLAG in (annotation.meta.get("tags") or []) \
        or (annotation.source == LABELSTUDIO and annotation.meta.get("state") == "annotated")
    if unchanged and not ticked:
        summary.untouched += 1
        return
    mask = correction
    if unchanged:
        # Accepted as it was: keep the exact pixels that were sent, not their traced polygons.
        sent = read_mask(workspace.root / item["sent"])
        if sent.shape == correction.shape:
            mask = sent
    iou = None if item["prefill_source"] == "empty" else edit_iou(prefill, correction)
    encoded = labels.EncodedLabel.from_png(encode_png(mask))
    meta = {"review_id": review_id, "review_item": n, "queue": review.queue, "reviewed_flag": ticked,
            "unchanged": unchanged}
    _register(workspace, session, summary, review_id, n, source, encoded, iou, unchanged, meta)


def _register(workspace: Workspace, session: Session, summary: ReviewImport, review_id: int, n: int,
              source: Source, encoded: labels.EncodedLabel, iou: float | None, unchanged: bool,
              meta: dict[str, Any]) -> None:
    try:
        review = session.get(Review, review_id)
        assert review is not None
        session.refresh(review)  # re-read inside this transaction: another import may have got here first
        item = items_of(review)[n]
        if item["state"] == "imported":
            summary.already += 1
            session.rollback()
            return
        image_id = item["image_id"]
        other = labels.stale_human_label(session, image_id, item["watermark"], item.get("label_id"))
        if other is not None:
            reason = (f"image {image_id} got human label {other.id} (source {other.source}) after this export; "
                      "correction not imported, re-export it to review again")
            update_item(review, n, state="refused", reason=reason)
            _problem(session, summary, RegistryError(reason, path=source.path, field="image", value=item["image"]),
                     ProblemKind.STALE_REVIEW)
            session.commit()
            return
        # The label state machine supersedes the pre-label and any other live pseudo-label.
        outcome, label = labels.add_human_label(
            workspace, session, image_id, encoded, source="review", annotation_path=source.path, meta=meta,
            batch_id=summary.batch_id, parent_id=item["label_id"], edit_iou=iou,
            replace_human=review.queue == "issues")
        update_item(review, n, state="imported", result_label_id=label.id, edit_iou=iou,
                    reason=None if outcome == "added" else "the same mask was already the active label")
        session.commit()
    except RegistryError as e:
        session.rollback()
        _problem(session, summary, InputError(e.reason, path=source.path, field=e.field, value=e.value),
                 ProblemKind.STALE_REVIEW)
        session.commit()
        return
    except BaseException:
        session.rollback()
        raise
    summary.imported += 1
    summary.unchanged += int(unchanged)
    if iou is not None:
        summary.edit_ious.append(iou)


def _problem(session: Session, summary: ReviewImport, error: DataEngError, kind: str) -> None:
    session.add(Problem(batch_id=summary.batch_id, path=error.path or "?", kind=kind, field=error.field,
                        value=None if error.value is None else str(error.value), message=error.reason))
    summary.refused += 1
    summary.problems.append(str(error))
