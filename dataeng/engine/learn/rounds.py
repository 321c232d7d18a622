"""Teacher-student rounds (Noisy Student): pseudo-label, train a student, promote on improvement.

Round 0 (only when there is no teacher yet) trains a supervised teacher on the human
labels. Each round r >= 1 then:

1. pseudo-labels the train images without a human label with the current teacher
   (:func:`dataeng.engine.learn.pseudolabel.pseudolabel`, round r);
2. trains a student on human + accepted pseudo-labels, with strong augmentation (pseudo
   pixels weighted by the teacher's confidence, see engine/data.py), from scratch, or
   under ``train.warm_start`` from its teacher's weights when the teacher is a dataeng
   run of the same model (:func:`warm_start`);
3. scores teacher and student on the current val set (human labels) and promotes the
   student to teacher only when its val mIoU is strictly higher.

A round whose student would train on exactly the labels (same dataset fingerprint) and
options of an earlier finished student (its teacher was not promoted and nothing new
was labelled) reuses that student instead of training an identical one, and promotes
nothing: the row says which run it reused (``metrics.reused_student``).

Every round is a ``rounds`` row: its teacher, pseudolabel and student runs, what it added
(accepted, queued, superseded) and what both models scored. A student that was not
promoted never becomes the default teacher.

Example::

    session = ws.new_session()
    try:
        results = run_rounds(ws, session, rounds=2, overrides={"epochs": 5})
    finally:
        session.close()
    [r.promoted for r in results]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select

from dataeng.db.schema import Round, Run
from dataeng.engine.learn.evaluate import evaluate_samples
from dataeng.engine.learn.options import budgeted, resolve_options
from dataeng.engine.learn.provenance import dataset_fingerprint
from dataeng.engine.learn.pseudolabel import pseudolabel
from dataeng.engine.learn.runs import RunRef, best_run, record_teacher_metrics
from dataeng.engine.learn.samples import registry_samples
from dataeng.engine.learn.teacher import resolve_teacher
from dataeng.engine.learn.train import train
from dataeng.engine.lifecycle import lifecycle
from dataeng.errors import NothingToDoError
from dataeng.models.inference import resolve_device

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from dataeng.progress import Progress
    from dataeng.workspace import Workspace


@dataclass(frozen=True)
class RoundResult:
    """One finished round.

    Attributes:
        number: 0 for the supervised teacher, then 1, 2, ...
        teacher_run_id: the teacher the round started from (None in round 0).
        student_run_id: the model trained in this round.
        promoted: the student is now the teacher.
        teacher_val_miou, student_val_miou: both scored on the same, current val set.
        student_test: the student's test metrics (None without labelled test images).
    """

    round_id: int
    number: int
    teacher_run_id: int | None
    pseudolabel_run_id: int | None
    student_run_id: int
    promoted: bool
    accepted: int
    queued: int
    superseded: int
    teacher_val_miou: float | None
    student_val_miou: float | None
    student_test: dict[str, Any] | None

    @property
    def teacher_after(self) -> int:
        """The teacher for the next round."""
        return self.student_run_id if self.promoted or self.teacher_run_id is None else self.teacher_run_id


def val_miou(workspace: Workspace, session: Session, run_id: int, device: str | None = None) -> float | None:
    """A train run's checkpoint scored on the current val set (human labels); None without one.

    Both sides of a promotion are scored here, on the same images, because a teacher's
    stored val mIoU may come from an older, smaller val set.
    """
    samples = registry_samples(workspace, session, "val", human_only=True)
    session.commit()
    if not samples:
        return None
    model = resolve_teacher(workspace, session, RunRef("id", run_id=run_id))
    predictor = model.predictor(resolve_device(device or workspace.config.train.device))
    outcome = evaluate_samples(predictor, samples, len(model.classes), workspace.config.train.batch_size, 0)
    run = session.get(Run, run_id)
    if run is not None and run.kind == "teacher":
        record_teacher_metrics(run, "val", outcome.metrics)
        session.commit()
    return float(outcome.metrics["miou"])


def next_round_number(session: Session) -> int:
    """1 + the highest finished round (0 when none)."""
    top = session.scalar(select(func.max(Round.number)).where(Round.status == "finished"))
    return 0 if top is None else top + 1


def run_rounds(
    workspace: Workspace,
    session: Session,
    rounds: int = 1,
    overrides: dict[str, Any] | None = None,
    *,
    teacher: RunRef | None = None,
    progress: Progress | None = None,
) -> list[RoundResult]:
    """Run ``rounds`` teacher-student rounds (plus round 0 when there is no teacher yet).

    Args:
        workspace, session: as for :func:`dataeng.engine.learn.train.train` (committed per step).
        rounds: rounds after round 0.
        overrides: TrainOptions for the teacher and the students (e.g. ``{"epochs": 5}``);
            students always train with ``strong_augment``.
        teacher: the first round's teacher (``best`` by default, or a run / checkpoint).
        progress: pseudo-labelling and training progress.

    Returns:
        One :class:`RoundResult` per round, in order.

    Raises:
        ModelError, ConfigError, DataEngError: as train and pseudolabel raise them (the
            round row is marked failed).
    """
    overrides = dict(overrides or {})
    results: list[RoundResult] = []
    current = teacher
    if teacher is None and best_run(session, external=True) is None:
        results.append(_round_zero(workspace, session, overrides, progress))
        current = RunRef("id", run_id=results[-1].student_run_id)
    for _ in range(rounds):
        result = _one_round(workspace, session, current, overrides, progress)
        results.append(result)
        current = RunRef("id", run_id=result.teacher_after)
    return results


def _round_zero(workspace: Workspace, session: Session, overrides: dict[str, Any],
                progress: Progress | None) -> RoundResult:
    with lifecycle(session, Round(number=0), on_fail=_failed) as row:
        student = train(workspace, session, {**overrides, "strong_augment": False}, round=0, progress=progress)
        miou = float(student.val["miou"]) if student.val else None
        row.student_run_id, row.promoted = student.run_id, True
        row.metrics = {"student_val_miou": miou, "student_test": student.test}
    return RoundResult(row.id, 0, None, None, student.run_id, True, 0, 0, 0, None, miou, student.test)


def _one_round(workspace: Workspace, session: Session, teacher: RunRef | None, overrides: dict[str, Any],
               progress: Progress | None) -> RoundResult:
    number = max(next_round_number(session), 1)
    with lifecycle(session, Round(number=number), on_fail=_failed) as row:
        pseudo_run_id, counts = None, {"accepted": 0, "queued": 0, "superseded": 0}
        try:
            pl = pseudolabel(workspace, session, teacher, round=number, device=overrides.get("device"),
                             num_workers=overrides.get("num_workers"), progress=progress)
            teacher_run_id, pseudo_run_id = pl.teacher_run_id, pl.run_id
            counts = {"accepted": pl.accepted, "queued": pl.queued, "superseded": pl.superseded}
        except NothingToDoError:
            # Nothing new to label: the student still learns from new human labels, if any.
            teacher_run_id = resolve_teacher(workspace, session, teacher).run_id
        row.teacher_run_id, row.pseudolabel_run_id = teacher_run_id, pseudo_run_id
        row.accepted, row.queued, row.superseded = counts["accepted"], counts["queued"], counts["superseded"]
        session.commit()
        student_options = {**overrides, "strong_augment": True}
        warm = warm_start(workspace, session, teacher_run_id, overrides)
        if warm.run_id is not None:
            student_options["init_run"] = warm.run_id
        same = identical_student(workspace, session, student_options)
        if same is not None:
            return _reuse(row, same, teacher_run_id, pseudo_run_id, counts)
        student = train(workspace, session, student_options, round=number, teacher_run_id=teacher_run_id,
                        progress=progress)
        row.student_run_id = student.run_id
        session.commit()
        teacher_miou = val_miou(workspace, session, teacher_run_id, overrides.get("device"))
        student_miou = val_miou(workspace, session, student.run_id, overrides.get("device"))
        # Strictly better, and never on no evidence: without val images nothing is promoted.
        promoted = teacher_miou is not None and student_miou is not None and student_miou > teacher_miou
        row.promoted = promoted
        row.metrics = {"teacher_val_miou": teacher_miou, "student_val_miou": student_miou,
                       "student_test": student.test, "student_train_images": student.train_images,
                       **({"warm_start": warm.note} if warm.note else {})}
    return RoundResult(row.id, number, teacher_run_id, pseudo_run_id, student.run_id, promoted,
                       counts["accepted"], counts["queued"], counts["superseded"], teacher_miou, student_miou,
                       student.test)


_RUNTIME_OPTIONS = ("device", "num_workers")  # where a run trained, not what it learned


@dataclass(frozen=True)
class WarmStart:
    """Where a round's student starts: ``run_id`` (its teacher's weights) or None (fresh), and why."""

    run_id: int | None
    note: str | None


def warm_start(workspace: Workspace, session: Session, teacher_run_id: int,
               overrides: dict[str, Any]) -> WarmStart:
    """The teacher to start the student from under ``train.warm_start``, when its model is the student's.

    A teacher dataeng did not train (MediaPipe, ONNX), or one of another arch, encoder or depth,
    gives no weights to start from: the student starts fresh and the note says why.
    """
    options = resolve_options(workspace.config.train, overrides)
    if not options.warm_start:
        return WarmStart(None, None)
    teacher = session.get(Run, teacher_run_id)
    if teacher is None or teacher.kind != "train" or teacher.status != "finished" or not teacher.checkpoint_path:
        return WarmStart(None, f"teacher run {teacher_run_id} is not a finished dataeng train run: "
                               "the student starts from scratch")
    config = teacher.config or {}
    have = {k: config.get(k) for k in ("arch", "encoder", "encoder_depth", "classes")}
    want = {"arch": options.arch, "encoder": options.encoder, "encoder_depth": options.encoder_depth,
            "classes": list(workspace.config.classes)}
    if have != want:
        differ = ", ".join(f"{k} {have[k]!r} vs {want[k]!r}" for k in want if have[k] != want[k])
        return WarmStart(None, f"teacher run {teacher_run_id} is another model ({differ}): the student starts "
                               "from scratch")
    return WarmStart(teacher_run_id, None)


def identical_student(workspace: Workspace, session: Session, overrides: dict[str, Any]) -> Run | None:
    """An earlier finished student that trained on exactly the current train labels with these options.

    Compares the dataset fingerprint (every label and file) and the resolved train
    options, apart from device and worker count; None when there is none.
    """
    samples = registry_samples(workspace, session, "train")
    session.commit()
    if not samples:
        return None
    options = budgeted(resolve_options(workspace.config.train, overrides), len(samples))
    wanted = {k: v for k, v in options.model_dump(mode="json").items() if k not in _RUNTIME_OPTIONS}
    fingerprint = dataset_fingerprint(samples)
    candidates = session.scalars(select(Run).where(
        Run.kind == "train", Run.status == "finished", Run.round.is_not(None), Run.round > 0,
        Run.dataset_fingerprint == fingerprint).order_by(Run.id.desc()))
    for run in candidates:
        stored = {k: v for k, v in (run.config or {}).items() if k in wanted}
        if stored == wanted:
            return run
    return None


def _reuse(row: Round, student: Run, teacher_run_id: int, pseudo_run_id: int | None,
           counts: dict[str, int]) -> RoundResult:
    row.student_run_id, row.promoted = student.id, False
    row.metrics = {"teacher_val_miou": None, "student_val_miou": None, "student_test": None,
                   "reused_student": student.id,
                   "note": f"same labels and options as run {student.id}: not trained again, nothing promoted"}
    return RoundResult(row.id, row.number, teacher_run_id, pseudo_run_id, student.id, False, counts["accepted"],
                       counts["queued"], counts["superseded"], None, None, None)


def _failed(row: Round, error: BaseException) -> None:
    # A failed round's student must not become a teacher by its stored val score.
    row.promoted = False if row.student_run_id is not None else None
