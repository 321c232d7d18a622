"""The growth report: what the dataset and the model look like now, and how they grew.

:func:`build_report` gathers every number with aggregate SQL (db/queries.py), draws the
plots (:mod:`.plots`) and the galleries (:mod:`.gallery`);
:func:`write_report` writes ``report.html`` (one self-contained file: inline CSS, plots
and thumbnails as ``data:`` URIs, no script, no external URL) and ``report.json`` (the
same numbers under stable keys, without the pictures).

Rounds come from the ``rounds`` table (``dataeng round``) and from ``runs.round`` and
``labels.round`` (a run or label without one is round 0, before the first round); a
label without a round belongs to the round in force when it was made. Where a
``rounds`` row exists its recorded accepted/queued counts and its student and teacher
are used; otherwise they are derived from the labels and runs.

Example::

    with ws.session() as session:
        report = build_report(ws, session)
    paths = write_report(report, ws.root / "reports")
"""

from __future__ import annotations

import dataclasses
import json
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dataeng.db import queries
from dataeng.db.schema import SPLITS, Round, Run, utcnow
from dataeng.engine.learn.runs import best_of, best_run, val_miou
from dataeng.engine.report.gallery import review_queue_gallery, worst_test_gallery
from dataeng.engine.report.html import render_html
from dataeng.engine.report.plots import draw_all
from dataeng.engine.report.records import (
    GALLERY_SIZE,
    HISTOGRAM_BINS,
    METRIC_KEYS,
    DatasetSummary,
    GalleryItem,
    Report,
    RoundGrowth,
    RoundQuality,
    RunRow,
    queue_scores,
    worst_scores,
)
from dataeng.storage import atomic_write_text

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from dataeng.workspace import Workspace

def build_report(workspace: Workspace, session: Session, *, gallery: bool = True,
                 gallery_size: int = GALLERY_SIZE) -> Report:
    """Gather the report's numbers, plots and galleries.

    Args:
        session: an open session (only read).
        workspace: for the config's accept thresholds and the store's files.
        gallery: draw the two galleries (the worst test images of the best run, with the
            predictions its evaluation kept, and the review queue); numbers are gathered anyway.
        gallery_size: tiles per gallery (at most ``engine.evaluate.WORST_KEPT`` worst-test
            tiles have a prediction).

    Returns:
        The :class:`Report`; an empty workspace gives ``empty=True`` and empty sections.
    """
    notes: list[str] = []
    dataset = _dataset(session)
    acc = workspace.config.pseudolabel.accept
    accept = (acc.min_confident_fraction, acc.min_mean_confidence, acc.min_stability)
    starts = queries.round_starts(session)
    rounds = queries.rounds_by_number(session)
    growth = _growth(session, starts, accept, rounds)
    train_runs = queries.runs_of_kind(session, ("train",))
    finished = [r for r in train_runs if r.status == "finished" and r.metrics]
    quality = _quality(finished, growth, rounds)
    # The best run is the default teacher: best val mIoU, never a student a round refused.
    best = best_run(session) or best_of(finished)
    test_available = any(q.test for q in quality)
    if finished and not test_available:
        notes.append("Test metrics are unavailable: no run was tested (no test image has a human label).")
    pseudo = _pseudo(session, growth, accept)
    corrections = queries.review_corrections(session)
    review = {"edit_iou_histogram": queries.edit_iou_histogram(session, HISTOGRAM_BINS), "corrections": corrections,
              "reviews": queries.all_reviews(session), "total_corrections": sum(c["corrections"] for c in corrections)}

    worst_rows = queries.worst_image_metrics(session, best.id, "test", gallery_size) if best else []
    queue_rows = queries.review_queue(session, gallery_size)
    if gallery:
        worst, note = worst_test_gallery(workspace, best, worst_rows)
        notes += [note] if note else []
        queue = review_queue_gallery(workspace, queue_rows)
    else:
        worst = [GalleryItem(r["image_id"], r["label_id"], worst_scores(r)) for r in worst_rows]
        queue = [GalleryItem(r["image_id"], r["label_id"], queue_scores(r)) for r in queue_rows]
    if best is not None and not worst_rows and test_available:
        notes.append(f"Run {best.id} has no per-image test metrics; the worst-images gallery is empty.")

    empty = dataset.total_images == 0 and not train_runs
    if empty:
        notes.insert(0, "This workspace is empty: no images, labels or runs yet. "
                        "Start with `dataeng ingest PATH` and `dataeng train`.")
    report = Report(
        generated_at=utcnow().isoformat(timespec="seconds"), workspace=str(workspace.root), empty=empty,
        dataset=dataset, growth=growth, batches=queries.batch_growth(session), quality=quality,
        best_run_id=best.id if best else None, test_metrics_available=test_available, pseudo=pseudo,
        worst_test=worst, review_queue=queue, review=review,
        runs=_runs(queries.runs_of_kind(session, ("train", "teacher", "pseudolabel", "evaluate"))), notes=notes,
    )
    return dataclasses.replace(report, plots=draw_all(report))


def write_report(report: Report, out_dir: Path) -> tuple[Path, Path]:
    """Write ``report.html`` and ``report.json`` into ``out_dir`` (created), each atomically.

    Returns:
        (html path, json path).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    html_path, json_path = out_dir / "report.html", out_dir / "report.json"
    atomic_write_text(json_path, json.dumps(report.to_dict(), indent=2, sort_keys=True, default=str) + "\n")
    atomic_write_text(html_path, render_html(report))
    return html_path, json_path


# ---------------------------------------------------------------- sections
def _dataset(session: Session) -> DatasetSummary:
    images = queries.images_per_split(session)
    labelled = queries.labelled_per_split(session)
    rows = queries.labels_by_origin_source_status(session)
    by: dict[str, dict[str, int]] = {"origin": {}, "source": {}, "status": {}}
    for origin, source, status, n in rows:
        for key, value in (("origin", origin), ("source", source), ("status", status)):
            by[key][value] = by[key].get(value, 0) + n
    groups, grouped = queries.near_duplicate_groups(session)
    problems = queries.problems_by_kind_field(session)
    by_kind: dict[str, int] = {}
    for kind, _, n in problems:
        by_kind[kind] = by_kind.get(kind, 0) + n
    return DatasetSummary(
        images=images, total_images=sum(images.values()),
        labels_by_origin=by["origin"], labels_by_source=by["source"], labels_by_status=by["status"],
        labels=[{"origin": o, "source": s, "status": st, "n": n} for o, s, st, n in rows],
        labelled=labelled, human_labelled=queries.human_labelled_per_split(session),
        labelled_fraction={s: labelled[s] / images[s] if images[s] else None for s in SPLITS},
        near_duplicate_groups=groups, near_duplicate_images=grouped,
        refused_total=sum(by_kind.values()), refused_by_kind=dict(sorted(by_kind.items())),
        refused_by_reason=[{"kind": k, "field": f, "n": n} for k, f, n in problems],
    )


def _growth(session: Session, starts: dict[int, datetime], accept: queries.AcceptThresholds,
            rounds: dict[int, Round]) -> list[RoundGrowth]:
    per_round: dict[int, dict[str, int]] = {}
    for rnd, origin, source, status, accepted, n in queries.label_growth_rows(session, starts, accept):
        slot = per_round.setdefault(rnd, dict.fromkeys(("human", "corrected", "accepted", "queued", "made"), 0))
        if origin == "human":
            # Rejected human labels never trained anything; they are not growth.
            if status != "rejected":
                slot["corrected" if source == "review" else "human"] += n
        else:
            slot["made"] += n
            slot["accepted" if accepted else "queued"] += n
    numbers = sorted(set(per_round) | set(starts) | set(rounds))
    out: list[RoundGrowth] = []
    human = corrected = 0
    for rnd in numbers:
        slot = per_round.get(rnd, dict.fromkeys(("human", "corrected", "accepted", "queued", "made"), 0))
        human += slot["human"]
        corrected += slot["corrected"]
        accepted, queued = slot["accepted"], slot["queued"]
        row = rounds.get(rnd)
        if row is not None and row.pseudolabel_run_id is not None:
            # The round recorded its decisions when it made them; statuses may have moved since.
            accepted, queued = row.accepted, row.queued
        out.append(RoundGrowth(rnd, human, corrected, accepted, queued, slot["made"]))
    return out


def _metric_subset(metrics: Any) -> dict[str, float | None] | None:
    if not isinstance(metrics, dict):
        return None
    return {k: metrics.get(k) for k in METRIC_KEYS}


def _quality(finished: list[Run], growth: list[RoundGrowth], rounds: dict[int, Round]) -> list[RoundQuality]:
    by_round: dict[int, list[Run]] = {}
    for run in finished:
        by_round.setdefault(run.round or 0, []).append(run)
    by_id = {r.id: r for r in finished}
    out = []
    for rnd in sorted(by_round):
        row = rounds.get(rnd)
        student = by_id.get(row.student_run_id) if row is not None and row.student_run_id else None
        student = student or best_of(by_round[rnd])
        assert student is not None  # every list in by_round has a run
        teacher = row.teacher_run_id if row is not None else student.teacher_run_id
        known = [g for g in growth if g.round <= rnd]
        human = known[-1].human + known[-1].corrected if known else 0
        metrics = student.metrics or {}
        out.append(RoundQuality(rnd, student.id, teacher, human, row.promoted if row is not None else None,
                                _metric_subset(metrics.get("val")), _metric_subset(metrics.get("test"))))
    return out


def _pseudo(session: Session, growth: list[RoundGrowth], accept: queries.AcceptThresholds) -> dict[str, Any]:
    made = [g for g in growth if g.pseudo_made]
    last = made[-1] if made else None
    hist = {name: queries.pseudo_score_histogram(session, name, last.round, HISTOGRAM_BINS) if last else []
            for name in ("mean_confidence", "confident_fraction", "stability")}
    return {
        "last_round": last.round if last else None,
        "accepted": last.accepted_pseudo if last else 0,
        "queued": last.queued if last else 0,
        "histograms": hist,
        "histogram_bins": HISTOGRAM_BINS,
        "accept_thresholds": dict(zip(("min_confident_fraction", "min_mean_confidence", "min_stability"),
                                      accept, strict=True)),
        "reviewed_accuracy": queries.reviewed_pseudo_accuracy(session, accept),
    }


def _flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def _runs(runs: list[Run]) -> list[RunRow]:
    flat = {r.id: _flatten(r.config or {}) for r in runs}
    differing: dict[str, set[str]] = {}
    for kind in {r.kind for r in runs}:
        same_kind = [flat[r.id] for r in runs if r.kind == kind]
        keys = set().union(*same_kind)
        # A key differs when some run lacks it or two runs hold different values.
        differing[kind] = {k for k in keys if len({json.dumps(c.get(k, "<unset>"), sort_keys=True, default=str)
                                                    for c in same_kind}) > 1}
    out = []
    for r in runs:
        metrics = r.metrics or {}
        # train runs keep their test metrics from training, external teachers from their evaluations
        test = (metrics.get("test") if r.kind in ("train", "teacher")
                else (metrics if r.config.get("split") == "test" else None))
        duration = (r.finished_at - r.started_at).total_seconds() if r.finished_at and r.started_at else None
        out.append(RunRow(r.id, r.kind, r.round, r.status, r.device, duration,
                          {k: flat[r.id].get(k) for k in sorted(differing[r.kind])}, val_miou(r),
                          float(test["iou"]) if isinstance(test, dict) and test.get("iou") is not None else None))
    return out
