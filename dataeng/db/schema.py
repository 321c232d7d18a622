"""The registry's tables (SQLAlchemy 2.0 typed declarative).

Invariants enforced here rather than in code where SQL can hold them:
- ``images.sha256`` is unique (exact duplicates are recorded once);
- an image has at most one ``active`` label (a partial unique index);
- labels, runs and problems reference their batch/run/image by foreign key.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, ClassVar, Literal, cast

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Table,
    Text,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

Split = Literal["train", "val", "test"]
Origin = Literal["human", "pseudo"]
LabelSource = Literal["labelme", "cvat", "coco", "supervisely", "labelstudio", "mask", "alpha", "review", "teacher"]
LabelStatus = Literal["active", "superseded", "needs_review", "rejected"]
RunKind = Literal["train", "pseudolabel", "evaluate"]
RunStatus = Literal["running", "finished", "failed", "imported"]  # imported: a teacher checkpoint from outside

SPLITS: tuple[Split, ...] = ("train", "val", "test")


def utcnow() -> datetime:
    """Timezone-aware now, the only clock the registry uses."""
    return datetime.now(UTC)


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {dict[str, Any]: JSON, list[Any]: JSON}


class Batch(Base):
    """One ingest, import or review-import call."""

    __tablename__ = "batches"

    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))
    args: Mapped[dict[str, Any]] = mapped_column(default=dict)
    status: Mapped[str] = mapped_column(String(16), default="running")
    summary: Mapped[dict[str, Any] | None] = mapped_column(default=None)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)


class Image(Base):
    """A registered image, stored once by content."""

    __tablename__ = "images"

    id: Mapped[int] = mapped_column(primary_key=True)
    sha256: Mapped[str] = mapped_column(String(64), unique=True)
    source_sha256: Mapped[str] = mapped_column(String(64), index=True)
    phash: Mapped[int] = mapped_column(BigInteger)
    ph0: Mapped[int] = mapped_column(Integer, index=True)
    ph1: Mapped[int] = mapped_column(Integer, index=True)
    ph2: Mapped[int] = mapped_column(Integer, index=True)
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    store_path: Mapped[str] = mapped_column(Text)
    original_path: Mapped[str] = mapped_column(Text)
    group_id: Mapped[int | None] = mapped_column(ForeignKey("images.id"), index=True, default=None)
    split: Mapped[str] = mapped_column(String(8))
    batch_id: Mapped[int | None] = mapped_column(ForeignKey("batches.id"), default=None)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    __table_args__ = (Index("ix_images_split", "split"),)


IMAGES_TABLE = cast(Table, Image.__table__)
"""The ``images`` table, for Core statements (ingest's executemany, the near-duplicate lookup)."""


class Run(Base):
    """A training, pseudo-labelling or evaluation run."""

    __tablename__ = "runs"

    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    round: Mapped[int | None] = mapped_column(Integer, default=None)
    teacher_run_id: Mapped[int | None] = mapped_column(ForeignKey("runs.id"), default=None)
    config: Mapped[dict[str, Any]] = mapped_column(default=dict)
    code_version: Mapped[str | None] = mapped_column(String(64), default=None)
    dataset_fingerprint: Mapped[str | None] = mapped_column(String(64), default=None)
    status: Mapped[str] = mapped_column(String(16), default="running")
    metrics: Mapped[dict[str, Any] | None] = mapped_column(default=None)
    checkpoint_path: Mapped[str | None] = mapped_column(Text, default=None)
    device: Mapped[str | None] = mapped_column(String(32), default=None)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)

    __table_args__ = (Index("ix_runs_kind_status", "kind", "status"),)


class Label(Base):
    """A class-index mask for one image, with its provenance."""

    __tablename__ = "labels"

    id: Mapped[int] = mapped_column(primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id"))
    origin: Mapped[str] = mapped_column(String(8))
    source: Mapped[str] = mapped_column(String(16))
    mask_path: Mapped[str] = mapped_column(Text)
    alpha_path: Mapped[str | None] = mapped_column(Text, default=None)
    conf_path: Mapped[str | None] = mapped_column(Text, default=None)
    status: Mapped[str] = mapped_column(String(16))
    run_id: Mapped[int | None] = mapped_column(ForeignKey("runs.id"), default=None)
    round: Mapped[int | None] = mapped_column(Integer, default=None)
    mean_confidence: Mapped[float | None] = mapped_column(Float, default=None)
    confident_fraction: Mapped[float | None] = mapped_column(Float, default=None)
    stability: Mapped[float | None] = mapped_column(Float, default=None)
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("labels.id"), default=None)
    edit_iou: Mapped[float | None] = mapped_column(Float, default=None)
    annotation_path: Mapped[str | None] = mapped_column(Text, default=None)
    meta: Mapped[dict[str, Any] | None] = mapped_column(default=None)
    batch_id: Mapped[int | None] = mapped_column(ForeignKey("batches.id"), default=None)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    __table_args__ = (
        Index("ix_labels_image", "image_id"),
        Index("ix_labels_origin_status", "origin", "status"),
        Index(
            "uq_labels_one_active",
            "image_id",
            unique=True,
            sqlite_where=text("status = 'active'"),
            postgresql_where=text("status = 'active'"),
        ),
    )


class ProblemKind(StrEnum):
    """Every kind of ``problems`` row: why an input was refused (one list, hyphenated values)."""

    # images (ingest)
    NOT_FOUND = "not-found"
    NO_MATCH = "no-match"
    BROKEN_SYMLINK = "broken-symlink"
    NOT_A_FILE = "not-a-file"
    UNREADABLE = "unreadable"
    EMPTY = "empty"
    TOO_LARGE = "too-large"
    UNSUPPORTED_FORMAT = "unsupported-format"
    DECOMPRESSION_BOMB = "decompression-bomb"
    NOT_AN_IMAGE = "not-an-image"
    CORRUPT = "corrupt"
    # annotations (ingest, review import)
    ANNOTATION = "annotation"
    MISSING_IMAGE = "missing-image"
    UNKNOWN_LABEL = "unknown-label"
    ONLY_UNKNOWN_LABELS = "only-unknown-labels"  # an image whose every shape is unknown: no label
    PSEUDO_LABEL = "pseudo-label"  # a machine label that came back from an export
    STALE_LABEL = "stale-label"  # exported content older than the image's human label
    # review import
    UNKNOWN_IMAGE = "unknown-image"
    NOT_IN_REVIEW = "not-in-review"
    UNMATCHED = "unmatched"
    STALE_REVIEW = "stale-review"
    SERVICE = "service"  # a server (Label Studio) that is down or refuses a request
    # evaluation
    MISSING_MASK = "missing-mask"
    # pseudo-labelling
    INVALID_PREDICTION = "invalid-prediction"  # a teacher returned NaN or infinite probabilities


class Problem(Base):
    """An input that was refused, with a one-line reason naming file, field and value."""

    __tablename__ = "problems"

    id: Mapped[int] = mapped_column(primary_key=True)
    batch_id: Mapped[int | None] = mapped_column(ForeignKey("batches.id"), index=True, default=None)
    run_id: Mapped[int | None] = mapped_column(ForeignKey("runs.id"), default=None)
    path: Mapped[str] = mapped_column(Text)
    kind: Mapped[str] = mapped_column(String(32))
    """A :class:`ProblemKind` value."""
    field: Mapped[str | None] = mapped_column(Text, default=None)
    value: Mapped[str | None] = mapped_column(Text, default=None)
    message: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Review(Base):
    """One export of masks to annotators, and what came back.

    ``meta``: where the review went beyond its folder; ``{"labelstudio": {"url", "project_id",
    "project", "storage_id", "pushed_at"}}`` once pushed to a Label Studio server (each item then
    holds its ``labelstudio_task_id``). Never a token.
    """

    __tablename__ = "reviews"

    id: Mapped[int] = mapped_column(primary_key=True)
    queue: Mapped[str] = mapped_column(String(16))
    format: Mapped[str] = mapped_column(String(16))
    out_dir: Mapped[str] = mapped_column(Text)
    items: Mapped[list[Any]] = mapped_column(default=list)
    exported: Mapped[int] = mapped_column(Integer, default=0)
    imported: Mapped[int] = mapped_column(Integer, default=0)
    status: Mapped[str] = mapped_column(String(16), default="open")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    imported_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)
    meta: Mapped[dict[str, Any] | None] = mapped_column(default=None)


class ImageMetric(Base):
    """One image's metrics in one evaluation (a train run's test pass or an evaluate run).

    ``run_id`` is the run that measured, ``model_run_id`` the train run whose checkpoint
    was measured (equal for a train run's own test pass). Images from an external folder
    have no ``image_id`` and are named by ``path``. The report sorts these to show the
    worst images.
    """

    __tablename__ = "image_metrics"

    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id"), index=True)
    model_run_id: Mapped[int | None] = mapped_column(ForeignKey("runs.id"), index=True, default=None)
    image_id: Mapped[int | None] = mapped_column(ForeignKey("images.id"), index=True, default=None)
    label_id: Mapped[int | None] = mapped_column(ForeignKey("labels.id"), default=None)
    path: Mapped[str | None] = mapped_column(Text, default=None)
    split: Mapped[str] = mapped_column(String(16))
    iou: Mapped[float] = mapped_column(Float)
    miou: Mapped[float] = mapped_column(Float)
    fwiou: Mapped[float] = mapped_column(Float)
    pixel_accuracy: Mapped[float] = mapped_column(Float)
    boundary_f1: Mapped[float] = mapped_column(Float)
    boundary_iou: Mapped[float] = mapped_column(Float)
    mae: Mapped[float | None] = mapped_column(Float, default=None)
    sad: Mapped[float | None] = mapped_column(Float, default=None)
    mse: Mapped[float | None] = mapped_column(Float, default=None)
    grad: Mapped[float | None] = mapped_column(Float, default=None)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    __table_args__ = (Index("ix_image_metrics_run_iou", "run_id", "iou"),)


class Round(Base):
    """One ``dataeng round``: the teacher it started from, what it added, what the student scored.

    Round 0 trains the first (supervised) teacher on human labels only. In round r >= 1 the
    teacher pseudo-labels (``pseudolabel_run_id``), a student trains on human + accepted
    pseudo-labels (``student_run_id``), and the student becomes the teacher only when
    ``promoted`` (it beat the teacher on val mIoU). ``metrics`` holds both val mIoUs and the
    student's test metrics.
    """

    __tablename__ = "rounds"

    id: Mapped[int] = mapped_column(primary_key=True)
    number: Mapped[int] = mapped_column(Integer, index=True)
    teacher_run_id: Mapped[int | None] = mapped_column(ForeignKey("runs.id"), default=None)
    pseudolabel_run_id: Mapped[int | None] = mapped_column(ForeignKey("runs.id"), default=None)
    student_run_id: Mapped[int | None] = mapped_column(ForeignKey("runs.id"), default=None)
    promoted: Mapped[bool | None] = mapped_column(default=None)
    accepted: Mapped[int] = mapped_column(Integer, default=0)
    queued: Mapped[int] = mapped_column(Integer, default=0)
    superseded: Mapped[int] = mapped_column(Integer, default=0)
    metrics: Mapped[dict[str, Any] | None] = mapped_column(default=None)
    status: Mapped[str] = mapped_column(String(16), default="running")
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)


ClaimState = Literal["todo", "claimed"]


class Claim(Base):
    """One train image waiting to be pseudo-labelled by one teacher, or being labelled by a worker.

    The work queue that pseudolabel processes share (on one machine or many, see
    ``dataeng.engine.learn.claims``): ``todo`` rows are free; a worker claims a chunk (``claimed``,
    its ``run_id`` and ``worker``, a lease until ``expires_at`` that it renews while alive) and
    deletes each row in the transaction that registers the image's pseudo-label. A claim whose
    lease ran out (its worker was killed) is free again.
    """

    __tablename__ = "claims"

    teacher_run_id: Mapped[int] = mapped_column(ForeignKey("runs.id"), primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id"), primary_key=True)
    state: Mapped[str] = mapped_column(String(8), default="todo")
    run_id: Mapped[int | None] = mapped_column(ForeignKey("runs.id"), index=True, default=None)
    worker: Mapped[str | None] = mapped_column(String(255), default=None)
    """``host:pid`` of the process holding the claim."""
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)


CLAIMS_TABLE = cast(Table, Claim.__table__)
