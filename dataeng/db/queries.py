"""Read-side queries. Each takes a Session and returns plain data; none writes."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from dataeng.db.schema import SPLITS, Batch, Image, Label, Problem, Review, Run


def images_per_split(session: Session) -> dict[str, int]:
    """Number of images in each split (all three keys present)."""
    counts: dict[str, int] = dict.fromkeys(SPLITS, 0)
    for split, n in session.execute(select(Image.split, func.count()).group_by(Image.split)):
        counts[split] = n
    return counts


def labels_by_origin_status(session: Session) -> dict[str, dict[str, int]]:
    """Label counts as ``{origin: {status: n}}``."""
    out: dict[str, dict[str, int]] = {}
    stmt = select(Label.origin, Label.status, func.count()).group_by(Label.origin, Label.status)
    for origin, status, n in session.execute(stmt):
        out.setdefault(origin, {})[status] = n
    return out


def labelled_per_split(session: Session) -> dict[str, int]:
    """Images with an active label, per split."""
    counts: dict[str, int] = dict.fromkeys(SPLITS, 0)
    stmt = (
        select(Image.split, func.count())
        .join(Label, Label.image_id == Image.id)
        .where(Label.status == "active")
        .group_by(Image.split)
    )
    for split, n in session.execute(stmt):
        counts[split] = n
    return counts


def problem_counts(session: Session) -> dict[str, int]:
    """Refused inputs by kind."""
    stmt = select(Problem.kind, func.count()).group_by(Problem.kind)
    return {kind: n for kind, n in session.execute(stmt)}


def last_runs(session: Session, limit: int = 5) -> list[dict[str, Any]]:
    """The newest runs, newest first."""
    rows = session.scalars(select(Run).order_by(Run.id.desc()).limit(limit))
    return [
        {
            "id": r.id,
            "kind": r.kind,
            "status": r.status,
            "round": r.round,
            "started_at": r.started_at.isoformat() if r.started_at else None,
            "finished_at": r.finished_at.isoformat() if r.finished_at else None,
            "metrics": {k: v for k, v in (r.metrics or {}).items() if isinstance(v, int | float)},
        }
        for r in rows
    ]


def last_batches(session: Session, limit: int = 5) -> list[dict[str, Any]]:
    """The newest ingest/import batches, newest first."""
    rows = session.scalars(select(Batch).order_by(Batch.id.desc()).limit(limit))
    return [
        {
            "id": b.id,
            "kind": b.kind,
            "status": b.status,
            "started_at": b.started_at.isoformat() if b.started_at else None,
            "summary": {k: v for k, v in (b.summary or {}).items() if k != "problems"},
        }
        for b in rows
    ]


def open_reviews(session: Session) -> list[dict[str, Any]]:
    """Reviews exported to annotators whose corrections have not all come back."""
    rows = session.scalars(select(Review).where(Review.status == "open").order_by(Review.id))
    return [
        {
            "id": r.id,
            "queue": r.queue,
            "format": r.format,
            "out_dir": r.out_dir,
            "exported": r.exported,
            "imported": r.imported,
        }
        for r in rows
    ]


def status(session: Session) -> dict[str, Any]:
    """Everything ``dataeng status`` shows, as one JSON-ready mapping."""
    return {
        "images": images_per_split(session),
        "labelled": labelled_per_split(session),
        "labels": labels_by_origin_status(session),
        "problems": problem_counts(session),
        "batches": last_batches(session),
        "runs": last_runs(session),
        "open_reviews": open_reviews(session),
    }
