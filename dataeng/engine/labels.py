"""The label state machine: every change of a label's status happens here.

Ingest, review import and pseudo-labelling all write labels through this module, so
their rules cannot drift apart:

- **A human label supersedes every live pseudo-label of its image** (``active`` and
  ``needs_review``), so a human-labelled image never stays in the review queue. Importing
  the same mask again adds nothing (compared by the mask's sha256). A different human
  mask replaces the older human label (``superseded``), unless the caller refuses that
  (the review import does for the uncertain and eval queues: no silent overwrite).
- **A pseudo-label supersedes older live pseudo-labels** of its image (from other
  teachers), and **is never written on a human-labelled, val or test image**.
- **A stale correction is refused**: a correction of an export whose image got a newer
  human label after the export (:func:`stale_human_label`).
- **What dataeng exported comes back as what it was** (:func:`import_refusal`): a
  pseudo-label in an ``export labels`` output is never ingested as a human label, and an
  exported human label never replaces a newer human label of its image.

Files are written under the label's id before the row is committed with the caller's
transaction, so a crash leaves at worst an orphan file.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from sqlalchemy import func, or_, select, update
from sqlalchemy.orm import Session

from dataeng.db.locks import serialise
from dataeng.db.schema import Image, Label, ProblemKind
from dataeng.errors import RegistryError
from dataeng.storage import atomic_write_bytes
from dataeng.workspace import Workspace

Outcome = Literal["added", "unchanged"]
LIVE_STATUSES = ("active", "needs_review")
"""Statuses of a label still in use: trained on (``active``) or waiting for an annotator."""


@dataclass(frozen=True)
class EncodedLabel:
    """A label ready to store: PNG bytes of the class-index mask and optional alpha."""

    mask_png: bytes
    mask_sha256: str
    alpha_png: bytes | None = None

    @classmethod
    def from_png(cls, mask_png: bytes, alpha_png: bytes | None = None) -> EncodedLabel:
        return cls(mask_png, hashlib.sha256(mask_png).hexdigest(), alpha_png)


def active_label(session: Session, image_id: int) -> Label | None:
    """The image's active label, if any."""
    return session.scalars(select(Label).where(Label.image_id == image_id, Label.status == "active")).one_or_none()


# ---------------------------------------------------------------- human labels
def add_human_label(
    workspace: Workspace,
    session: Session,
    image_id: int,
    encoded: EncodedLabel,
    *,
    source: str,
    annotation_path: str | None = None,
    meta: dict[str, Any] | None = None,
    batch_id: int | None = None,
    parent_id: int | None = None,
    edit_iou: float | None = None,
    replace_human: bool = True,
) -> tuple[Outcome, Label]:
    """Add a human label as the image's active label, inside the caller's transaction.

    Every live pseudo-label of the image (active or waiting for review) is superseded.

    Returns:
        ("unchanged", existing label) when the same mask is already active, else
        ("added", new label).

    Raises:
        RegistryError: the image already has a different active human label and
            ``replace_human`` is False.
    """
    serialise(session, "labels")
    current = active_label(session, image_id)
    if current is not None and current.origin == "human":
        if (current.meta or {}).get("mask_sha256") == encoded.mask_sha256:
            _supersede_pseudo(session, [image_id])
            return "unchanged", current
        if not replace_human:
            raise RegistryError(
                f"image already has human label {current.id} (source {current.source}); not overwritten",
                path=annotation_path,
                field="image_id",
                value=image_id,
            )
    if current is not None:
        current.status = "superseded"
    _supersede_pseudo(session, [image_id])
    session.flush()  # the partial unique index allows one active label per image
    label = Label(
        image_id=image_id,
        origin="human",
        source=source,
        mask_path="",
        status="active",
        parent_id=parent_id,
        edit_iou=edit_iou,
        annotation_path=annotation_path,
        meta={**(meta or {}), "mask_sha256": encoded.mask_sha256},
        batch_id=batch_id,
    )
    session.add(label)
    session.flush()
    label.mask_path = workspace.mask_rel(label.id, "masks")
    atomic_write_bytes(workspace.image_path(label.mask_path), encoded.mask_png)
    if encoded.alpha_png is not None:
        label.alpha_path = workspace.mask_rel(label.id, "alpha")
        atomic_write_bytes(workspace.image_path(label.alpha_path), encoded.alpha_png)
    return "added", label


def stale_human_label(session: Session, image_id: int, watermark: int, prelabel_id: int | None) -> Label | None:
    """The human label that makes a correction stale, if any: the image's newest human label,
    when it arrived after the export (its id is above the export's ``watermark``) and is not
    the pre-label the correction replaces."""
    newest = session.scalar(select(func.max(Label.id)).where(Label.image_id == image_id, Label.origin == "human"))
    if newest is None or newest <= watermark or newest == prelabel_id:
        return None
    return session.get(Label, newest)


def _supersede_pseudo(session: Session, image_ids: Sequence[int], keep_run_id: int | None = None) -> int:
    """Mark the live pseudo-labels of these images ``superseded`` (except those of ``keep_run_id``)."""
    if not image_ids:
        return 0
    stmt = update(Label).where(Label.image_id.in_(list(image_ids)), Label.origin == "pseudo",
                               Label.status.in_(LIVE_STATUSES))
    if keep_run_id is not None:
        stmt = stmt.where(or_(Label.run_id.is_(None), Label.run_id != keep_run_id))
    return int(session.execute(stmt.values(status="superseded")).rowcount or 0)  # type: ignore[attr-defined]


# ---------------------------------------------------------------- pseudo-labels
@dataclass(frozen=True)
class PseudoDraft:
    """A teacher's pseudo-label of one image, its PNGs already written to a staging folder."""

    image_id: int
    accepted: bool
    mean_confidence: float
    confident_fraction: float
    stability: float
    staged_mask: Path
    staged_conf: Path
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PseudoOutcome:
    """What :func:`add_pseudo_labels` did with a batch of drafts."""

    accepted: int
    queued: int
    superseded: int
    skipped: list[PseudoDraft]
    """Drafts refused: the image has a live human label, or is not a train image (staged files removed)."""


def add_pseudo_labels(workspace: Workspace, session: Session, drafts: Sequence[PseudoDraft], *, teacher_run_id: int,
                      round: int) -> PseudoOutcome:
    """Register pseudo-labels inside the caller's transaction and move their files into place.

    Checked here, inside the transaction: an image that has a live human label (one may
    have arrived while the teacher ran) or is not in the train split gets nothing; the
    older live pseudo-labels of the others (from other teachers) are superseded first,
    so the one-active-label index never sees two. ``meta`` gains ``supersedes``.
    """
    ids = [d.image_id for d in drafts]
    if not ids:
        return PseudoOutcome(0, 0, 0, [])
    serialise(session, "labels")
    human = set(session.scalars(select(Label.image_id).where(
        Label.image_id.in_(ids), Label.origin == "human", Label.status.in_(LIVE_STATUSES))))
    held_out = set(session.scalars(select(Image.id).where(Image.id.in_(ids), Image.split != "train")))
    keep = [d for d in drafts if d.image_id not in human and d.image_id not in held_out]
    skipped = [d for d in drafts if d.image_id in human or d.image_id in held_out]
    older = dict(session.execute(select(Label.image_id, Label.id).where(
        Label.image_id.in_([d.image_id for d in keep]), Label.origin == "pseudo", Label.status.in_(LIVE_STATUSES),
        or_(Label.run_id.is_(None), Label.run_id != teacher_run_id))).tuples().all())
    superseded = _supersede_pseudo(session, [d.image_id for d in keep], keep_run_id=teacher_run_id)
    labels = []
    for d in keep:
        label = Label(image_id=d.image_id, origin="pseudo", source="teacher", mask_path="",
                      status="active" if d.accepted else "needs_review", run_id=teacher_run_id, round=round,
                      mean_confidence=d.mean_confidence, confident_fraction=d.confident_fraction,
                      stability=d.stability, meta={**d.meta, "supersedes": older.get(d.image_id)})
        session.add(label)
        labels.append(label)
    session.flush()
    for d, label in zip(keep, labels, strict=True):
        label.mask_path = workspace.mask_rel(label.id)
        label.conf_path = workspace.mask_rel(label.id, "conf")
        for staged, rel in ((d.staged_mask, label.mask_path), (d.staged_conf, label.conf_path)):
            dest = workspace.image_path(rel)
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(staged, dest)
    for d in skipped:
        d.staged_mask.unlink(missing_ok=True)
        d.staged_conf.unlink(missing_ok=True)
    accepted = sum(1 for d in keep if d.accepted)
    return PseudoOutcome(accepted, len(keep) - accepted, superseded, skipped)


# ---------------------------------------------------------------- labels coming back from an export
@dataclass(frozen=True)
class ExportedLabel:
    """What ``dataeng export labels`` wrote about a label (the formats' ``meta["provenance"]``:
    Labelme's ``dataeng`` key, CVAT ``dataeng_*`` attributes, COCO ``dataeng``, Supervisely
    tags, mask folders' ``dataeng.json``); values may come back as text."""

    origin: str | None
    label_id: int | None
    run_id: int | None

    @classmethod
    def parse(cls, provenance: object) -> ExportedLabel | None:
        """None when there is no provenance (the file was not written by dataeng)."""
        if not isinstance(provenance, dict) or not provenance:
            return None
        origin = provenance.get("origin")
        return cls(str(origin) if origin not in (None, "") else None, _as_int(provenance.get("label_id")),
                   _as_int(provenance.get("run_id")))


def _as_int(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    return None


def import_refusal(session: Session, image_id: int, exported: ExportedLabel | None
                   ) -> tuple[ProblemKind, RegistryError] | None:
    """Why an annotation dataeng exported must not become the image's human label (the problem's
    kind and message), or None.

    - A pseudo-label (``origin`` pseudo) is a machine's guess: ingesting it as a human label
      would make the guess ground truth and let it supersede human corrections.
    - A human label exported from this registry (its ``label_id`` is a label of this image)
      is older than any human label the image got since: importing it again never
      replaces that newer label.
    """
    if exported is None:
        return None
    if exported.origin == "pseudo":
        teacher = f", teacher run {exported.run_id}" if exported.run_id is not None else ""
        message = (f"a pseudo-label exported by dataeng (label {exported.label_id}{teacher}) is not ingested as a "
                   "human label; correct it through `dataeng review export` and `dataeng review import`")
        return ProblemKind.PSEUDO_LABEL, RegistryError(message, field="dataeng.origin", value="pseudo")
    if exported.label_id is None:
        return None
    own = session.get(Label, exported.label_id)
    if own is None or own.image_id != image_id:
        return None  # exported from another registry: an ordinary human annotation
    newer = session.scalar(select(func.max(Label.id)).where(
        Label.image_id == image_id, Label.origin == "human", Label.status.in_(LIVE_STATUSES),
        Label.id > exported.label_id))
    if newer is None:
        return None
    message = (f"exported from label {exported.label_id}, but image {image_id} has a newer human label {newer}; "
               "older content never replaces it")
    return ProblemKind.STALE_LABEL, RegistryError(message, field="dataeng.label_id", value=exported.label_id)

