"""Read-side queries. Each takes a Session and returns plain data; none writes."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import and_, case, func, literal, or_, select
from sqlalchemy.orm import Session, aliased

from dataeng.db.schema import SPLITS, Batch, Image, ImageMetric, Label, Problem, Review, Round, Run


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


def recent_problems(session: Session, limit: int = 50) -> list[dict[str, Any]]:
    """The newest ``problems`` rows, newest first: what was refused, where and why."""
    rows = session.scalars(select(Problem).order_by(Problem.id.desc()).limit(limit))
    return [{"id": p.id, "batch_id": p.batch_id, "run_id": p.run_id, "kind": p.kind, "path": p.path,
             "field": p.field, "value": p.value, "message": p.message} for p in rows]


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


# ---------------------------------------------------------------- report (dataeng report)
# Everything below aggregates in SQL (GROUP BY, CASE buckets) so a registry of hundreds of
# thousands of rows is summarised without loading its rows into Python objects.


def _histogram_bucket(column: Any, bins: int) -> Any:
    """``0..bins-1`` for a value in [0, 1] as a portable CASE (no floor(): SQLite may lack it)."""
    return case(*[(column < (i + 1) / bins, i) for i in range(bins - 1)], else_=bins - 1)


def _histogram(session: Session, stmt: Any, bins: int) -> list[int]:
    counts = [0] * bins
    for bucket, n in session.execute(stmt):
        counts[int(bucket)] = n
    return counts


def labels_by_origin_source_status(session: Session) -> list[tuple[str, str, str, int]]:
    """Label counts as ``(origin, source, status, n)`` rows, sorted."""
    stmt = (select(Label.origin, Label.source, Label.status, func.count())
            .group_by(Label.origin, Label.source, Label.status)
            .order_by(Label.origin, Label.source, Label.status))
    return [(o, s, st, n) for o, s, st, n in session.execute(stmt)]


def human_labelled_per_split(session: Session) -> dict[str, int]:
    """Images with an active human label, per split (all three keys present)."""
    counts: dict[str, int] = dict.fromkeys(SPLITS, 0)
    stmt = (select(Image.split, func.count()).join(Label, Label.image_id == Image.id)
            .where(Label.status == "active", Label.origin == "human").group_by(Image.split))
    for split, n in session.execute(stmt):
        counts[split] = n
    return counts


def near_duplicate_groups(session: Session) -> tuple[int, int]:
    """Near-duplicate groups holding more than one image.

    Returns:
        (number of such groups, images in them). An image's group is its ``group_id``,
        or itself when it started the group.
    """
    key = func.coalesce(Image.group_id, Image.id).label("g")
    sizes = select(key, func.count().label("n")).group_by(key).having(func.count() > 1).subquery()
    groups, images = session.execute(select(func.count(), func.coalesce(func.sum(sizes.c.n), 0))).one()
    return int(groups), int(images)


def problems_by_kind_field(session: Session) -> list[tuple[str, str | None, int]]:
    """Refused inputs as ``(kind, field, n)``, most frequent first."""
    stmt = (select(Problem.kind, Problem.field, func.count()).group_by(Problem.kind, Problem.field)
            .order_by(func.count().desc(), Problem.kind))
    return [(k, f, n) for k, f, n in session.execute(stmt)]


def round_starts(session: Session) -> dict[int, datetime]:
    """When each round began: its ``rounds`` row, first run or first label, whichever is earliest.

    A run or label without a round belongs to round 0 (before the first ``dataeng round``)
    and does not start a round here.
    """
    starts: dict[int, datetime] = {}
    columns: tuple[tuple[Any, Any], ...] = (
        (Round.number, Round.started_at),
        (Run.round, Run.started_at),
        (Label.round, Label.created_at),
    )
    for rnd_col, when in columns:
        stmt = select(rnd_col, func.min(when)).where(rnd_col.is_not(None)).group_by(rnd_col)
        for rnd, first in session.execute(stmt):
            if rnd is None or first is None:
                continue
            if rnd not in starts or _naive(first) < _naive(starts[rnd]):
                starts[int(rnd)] = first
    return dict(sorted(starts.items()))


def _naive(t: datetime) -> datetime:
    # SQLite hands timestamps back naive; compare everything as naive UTC.
    return t.replace(tzinfo=None)


def effective_round(starts: dict[int, datetime]) -> Any:
    """SQL expression: a label's round, or for one without, the round in force when it was made."""
    by_time = case(*[(Label.created_at >= t, r) for r, t in sorted(starts.items(), reverse=True)], else_=0) \
        if starts else literal(0)
    return func.coalesce(Label.round, by_time)


AcceptThresholds = tuple[float, float, float]
"""(min confident fraction, min mean confidence, min stability) of ``[pseudolabel.accept]``."""


def pseudo_accepted(accept: AcceptThresholds, label: Any = Label) -> Any:
    """SQL expression: 1 when a pseudo-label was accepted when made, else 0.

    ``active`` means accepted and ``needs_review``/``rejected`` queued; a ``superseded``
    label no longer shows its decision, so its scores are checked against ``accept``.

    Args:
        label: ``Label`` or an alias of it.
    """
    passes = and_(label.confident_fraction >= accept[0], label.mean_confidence >= accept[1],
                  label.stability >= accept[2])
    return case((label.status == "active", 1), (label.status.in_(("needs_review", "rejected")), 0),
                (passes, 1), else_=0)


def label_growth_rows(session: Session, starts: dict[int, datetime],
                      accept: AcceptThresholds) -> list[tuple[int, str, str, str, int, int]]:
    """Labels counted by ``(round, origin, source, status, accepted, n)``.

    Args:
        starts: from :func:`round_starts`.
        accept: thresholds deciding superseded pseudo-labels (see :func:`pseudo_accepted`).
    """
    rnd = effective_round(starts).label("r")
    acc = pseudo_accepted(accept).label("a")
    stmt = (select(rnd, Label.origin, Label.source, Label.status, acc, func.count())
            .group_by(rnd, Label.origin, Label.source, Label.status, acc))
    return [(int(r), o, s, st, int(a), n) for r, o, s, st, a, n in session.execute(stmt)]


def batch_growth(session: Session) -> list[dict[str, Any]]:
    """Per ingest/import batch: images added, labels added (by origin), inputs refused; oldest first."""
    images = dict(session.execute(select(Image.batch_id, func.count()).group_by(Image.batch_id)).tuples().all())
    problems = dict(session.execute(select(Problem.batch_id, func.count()).group_by(Problem.batch_id)).tuples().all())
    labels: dict[int | None, dict[str, int]] = {}
    for batch_id, origin, n in session.execute(
            select(Label.batch_id, Label.origin, func.count()).group_by(Label.batch_id, Label.origin)):
        labels.setdefault(batch_id, {})[origin] = n
    out = []
    for b in session.execute(select(Batch.id, Batch.kind, Batch.status, Batch.started_at).order_by(Batch.id)):
        out.append({"id": b.id, "kind": b.kind, "status": b.status,
                    "started_at": b.started_at.isoformat() if b.started_at else None,
                    "images": images.get(b.id, 0), "human_labels": labels.get(b.id, {}).get("human", 0),
                    "pseudo_labels": labels.get(b.id, {}).get("pseudo", 0), "refused": problems.get(b.id, 0)})
    return out


def runs_of_kind(session: Session, kinds: tuple[str, ...] = ("train",)) -> list[Run]:
    """Runs of these kinds, oldest first (few rows: one per training or evaluation)."""
    return list(session.scalars(select(Run).where(Run.kind.in_(kinds)).order_by(Run.id)))


def pseudo_score_histogram(session: Session, column: str, round: int | None, bins: int = 20) -> list[int]:
    """Histogram over [0, 1] of a pseudo-label score (``mean_confidence``, ``confident_fraction``,
    ``stability``) of one round's pseudo-labels (``round=None``: those without a round)."""
    col = getattr(Label, column)
    bucket = _histogram_bucket(col, bins).label("b")
    where = [Label.origin == "pseudo", col.is_not(None),
             Label.round == round if round is not None else Label.round.is_(None)]
    return _histogram(session, select(bucket, func.count()).where(*where).group_by(bucket), bins)


def edit_iou_histogram(session: Session, bins: int = 20) -> list[int]:
    """Histogram over [0, 1] of ``edit_iou`` of every correction that has one."""
    bucket = _histogram_bucket(Label.edit_iou, bins).label("b")
    return _histogram(session, select(bucket, func.count()).where(Label.edit_iou.is_not(None)).group_by(bucket),
                      bins)


def reviewed_pseudo_accuracy(session: Session, accept: AcceptThresholds) -> dict[str, dict[str, float | int]]:
    """Edit IoU of corrected pseudo-labels, by whether the pre-label was accepted or queued.

    A correction's ``edit_iou`` is IoU(pre-label, correction), i.e. the pre-label's accuracy.

    Args:
        accept: thresholds deciding superseded pre-labels (see :func:`pseudo_accepted`).

    Returns:
        ``{"accepted"|"queued": {"n", "mean_edit_iou", "min_edit_iou"}}`` for those present.
    """
    parent = aliased(Label)
    decision = case((pseudo_accepted(accept, parent) == 1, "accepted"), else_="queued").label("d")
    stmt = (select(decision, func.count(), func.avg(Label.edit_iou), func.min(Label.edit_iou))
            .select_from(Label).join(parent, Label.parent_id == parent.id)
            .where(parent.origin == "pseudo", Label.edit_iou.is_not(None)).group_by(decision))
    return {d: {"n": n, "mean_edit_iou": float(mean), "min_edit_iou": float(low)}
            for d, n, mean, low in session.execute(stmt)}


def review_corrections(session: Session) -> list[dict[str, Any]]:
    """Per batch of corrections (source ``review``): how many, mean edit IoU, how many unchanged.

    A correction with ``edit_iou >= 0.995`` is counted unchanged: the annotator accepted
    the pre-label as it was.
    """
    unchanged = func.sum(case((Label.edit_iou >= 0.995, 1), else_=0))
    stmt = (select(Label.batch_id, func.count(), func.avg(Label.edit_iou), unchanged)
            .where(Label.source == "review").group_by(Label.batch_id).order_by(Label.batch_id))
    return [{"batch_id": b, "corrections": n, "mean_edit_iou": float(mean) if mean is not None else None,
             "unchanged": int(same or 0)} for b, n, mean, same in session.execute(stmt)]


def all_reviews(session: Session) -> list[dict[str, Any]]:
    """Every export to annotators, oldest first."""
    rows = session.execute(select(Review.id, Review.queue, Review.format, Review.exported, Review.imported,
                                  Review.status).order_by(Review.id))
    return [{"id": i, "queue": q, "format": f, "exported": e, "imported": m, "status": s}
            for i, q, f, e, m, s in rows]


def worst_image_metrics(session: Session, model_run_id: int, split: str = "test",
                        limit: int = 12) -> list[dict[str, Any]]:
    """The ``limit`` registry images with the lowest IoU in the newest evaluation of a model on a split.

    Returns:
        Dicts with the measuring ``run_id``, ``image_id``, ``label_id``, ``iou``, ``boundary_f1``,
        ``boundary_iou``, and the store paths ``image_path``/``mask_path`` (mask of the label
        measured against); empty when the model was never evaluated on ``split``.
    """
    run_id = session.scalar(select(func.max(ImageMetric.run_id)).where(
        ImageMetric.model_run_id == model_run_id, ImageMetric.split == split))
    if run_id is None:
        return []
    stmt = (select(ImageMetric.image_id, Label.id, ImageMetric.iou, ImageMetric.boundary_f1,
                   ImageMetric.boundary_iou, Image.store_path, Label.mask_path)
            .join(Image, Image.id == ImageMetric.image_id)
            # Rows without label_id fall back to the image's active human label.
            .outerjoin(Label, or_(Label.id == ImageMetric.label_id,
                                  and_(ImageMetric.label_id.is_(None), Label.image_id == ImageMetric.image_id,
                                       Label.status == "active", Label.origin == "human")))
            .where(ImageMetric.run_id == run_id, ImageMetric.image_id.is_not(None))
            .order_by(ImageMetric.iou, ImageMetric.image_id).limit(limit))
    return [{"run_id": run_id, "image_id": i, "label_id": lab, "iou": iou, "boundary_f1": bf,
             "boundary_iou": bi, "image_path": ip, "mask_path": mp}
            for i, lab, iou, bf, bi, ip, mp in session.execute(stmt)]


def review_queue(session: Session, limit: int = 12) -> list[dict[str, Any]]:
    """The ``limit`` most uncertain ``needs_review`` pseudo-labels, with store paths and scores.

    Most uncertain first by ``engine.pseudolabel.uncertainty`` (1 - confident fraction x
    stability, highest first), i.e. the lowest product first.
    """
    stmt = (select(Label.id, Label.image_id, Label.round, Label.mask_path, Label.conf_path, Image.store_path,
                   Label.confident_fraction, Label.mean_confidence, Label.stability)
            .join(Image, Image.id == Label.image_id)
            .where(Label.origin == "pseudo", Label.status == "needs_review")
            .order_by((Label.confident_fraction * Label.stability).asc().nulls_first(), Label.id).limit(limit))
    return [{"label_id": lid, "image_id": iid, "round": rnd, "mask_path": mp, "conf_path": cp, "image_path": ip,
             "confident_fraction": cf, "mean_confidence": mc, "stability": st}
            for lid, iid, rnd, mp, cp, ip, cf, mc, st in session.execute(stmt)]


def rounds_by_number(session: Session) -> dict[int, Round]:
    """``dataeng round`` rows by round number (the newest row when a number was retried)."""
    return {r.number: r for r in session.scalars(select(Round).order_by(Round.id))}
