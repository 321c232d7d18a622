"""Runs: how one is lived (created, failed on error, finished) and the one place to find them.

- Runs are lived through :func:`dataeng.engine.lifecycle.lifecycle`.
- :class:`RunRef`: what a user names a model by (``best``, ``newest``, a run id, a
  checkpoint file, an external teacher such as ``mediapipe`` or ``onnx:PATH``), parsed once
  at the command line.
- :func:`best_run`: the default teacher and the model ``predict``/``report`` use: the
  finished train run with the best val mIoU, never a student a round refused to promote
  nor a teacher a round replaced by its student.
- :func:`resolve_run`: a :class:`RunRef` to a train run with a checkpoint (a checkpoint
  file from outside the registry is registered as an ``imported`` train run) or, where the
  caller accepts them, a ``teacher`` run: an external model registered by
  :func:`register_teacher` (kind, name, version and file sha256 in its config).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from sqlalchemy import select

from dataeng.db.schema import Round, Run, utcnow
from dataeng.errors import ModelError
from dataeng.models.checkpoint import load_checkpoint
from dataeng.models.teachers import TeacherSpec, external_teacher, parse_spec
from dataeng.storage import atomic_write_text, file_sha256

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from dataeng.workspace import Workspace

# ---------------------------------------------------------------- references
@dataclass(frozen=True)
class RunRef:
    """A model as a user names it: ``best``, ``newest``, a run id, a checkpoint file, or an external teacher.

    Example::

        RunRef.parse("best"), RunRef.parse("12"), RunRef.parse("teacher.pt"), RunRef.parse("mediapipe")
    """

    kind: Literal["best", "newest", "id", "file", "external"]
    run_id: int | None = None
    path: Path | None = None
    spec: TeacherSpec | None = None

    @classmethod
    def parse(cls, text: str | int | None, default: Literal["best", "newest"] = "best") -> RunRef:
        """``None`` -> ``default``; ``best``/``newest``; digits -> a run id; anything else -> a file path."""
        if text is None:
            return cls(default)
        value = str(text).strip()
        if value.lower() in ("best", "newest"):
            return cls(value.lower())  # type: ignore[arg-type]
        if value.isdigit():
            return cls("id", run_id=int(value))
        spec = parse_spec(value)
        if spec is not None:
            return cls("external", spec=spec)
        return cls("file", path=Path(value))

    def __str__(self) -> str:
        if self.kind == "id":
            return str(self.run_id)
        if self.kind == "file":
            return str(self.path)
        if self.kind == "external":
            return str(self.spec)
        return self.kind


# ---------------------------------------------------------------- lookup
def finished_train_runs(session: Session) -> list[Run]:
    """Finished train runs with a checkpoint, oldest first."""
    return list(session.scalars(select(Run).where(Run.kind == "train", Run.status == "finished",
                                                  Run.checkpoint_path.is_not(None)).order_by(Run.id)))


def rejected_students(session: Session) -> set[int]:
    """Train runs that a round refused to promote and no round promoted; never the default teacher.

    A round that reuses an earlier student (same labels and options) records it unpromoted;
    when that student had been promoted before, it is still the teacher.
    """
    rows = session.execute(select(Round.student_run_id, Round.promoted).where(
        Round.student_run_id.is_not(None), Round.promoted.is_not(None))).all()
    promoted = {run_id for run_id, was_promoted in rows if was_promoted and run_id is not None}
    return {run_id for run_id, was_promoted in rows if not was_promoted and run_id is not None} - promoted


def beaten_teachers(session: Session) -> set[int]:
    """Teachers whose student a round promoted: beaten on the same val set, never the default again."""
    return {run_id for run_id in session.scalars(select(Round.teacher_run_id).where(
        Round.promoted.is_(True), Round.teacher_run_id.is_not(None),
        Round.student_run_id.is_not(None), Round.student_run_id != Round.teacher_run_id)) if run_id is not None}


def val_miou(run: Run) -> float | None:
    """The val mIoU a train run recorded for its best epoch; None without a val set."""
    val = (run.metrics or {}).get("val")
    return float(val["miou"]) if isinstance(val, dict) and val.get("miou") is not None else None


def teacher_runs(session: Session) -> list[Run]:
    """Registered external teachers (``teacher`` runs), oldest first."""
    return list(session.scalars(select(Run).where(Run.kind == "teacher", Run.status == "finished")
                                .order_by(Run.id)))


def best_run(session: Session, *, rounds_decide: bool = True, external: bool = False) -> Run | None:
    """The finished train run with the best val mIoU (newest on a tie or without val); None when
    there is no finished train run.

    With ``external`` (the default teacher of pseudolabel, round and review pre-fills), registered
    external teachers compete too, by the val mIoU their evaluations recorded; a trained run wins a
    tie, and without any val score an external teacher is preferred only when no trained run is left.

    With ``rounds_decide`` (the default) rounds decide first: a student a round refused to
    promote, and a teacher a round replaced by its promoted student, are left out (those
    comparisons were made on one val set; the stored val mIoUs of runs made at different
    times may not be).
    """
    refused = rejected_students(session) | beaten_teachers(session) if rounds_decide else set()
    trained = best_of([run for run in finished_train_runs(session) if run.id not in refused])
    if not external:
        return trained
    outside = best_of([run for run in teacher_runs(session) if run.id not in refused])
    if trained is None or outside is None:
        return trained or outside
    trained_miou, outside_miou = val_miou(trained), val_miou(outside)
    if outside_miou is not None and (trained_miou is None or outside_miou > trained_miou):
        return outside
    return trained


def best_of(runs: Sequence[Run]) -> Run | None:
    """The run with the best recorded val mIoU, newest on a tie; the newest when none has one."""
    if not runs:
        return None
    return max(runs, key=lambda run: (v if (v := val_miou(run)) is not None else -1.0, run.id))


def newest_run(session: Session) -> Run | None:
    """The newest finished train run with a checkpoint."""
    runs = finished_train_runs(session)
    return runs[-1] if runs else None


def train_run(session: Session, run_id: int, *, external: bool = False) -> Run:
    """The train run with this id, which must have a checkpoint (or, with ``external``, a teacher run).

    Raises:
        ModelError: no such train run, or it has no checkpoint.
    """
    run = session.get(Run, run_id)
    if run is not None and run.kind == "teacher":
        if external:
            return run
        raise ModelError(f"run is an external teacher ({(run.config or {}).get('teacher')}); this command needs "
                         "a trained run", field="run", value=run_id)
    if run is None or run.kind != "train":
        raise ModelError("no train run with this id", field="run", value=run_id)
    if run.checkpoint_path is None:
        raise ModelError(f"run has no checkpoint (status {run.status})", field="run", value=run_id)
    return run


def resolve_run(workspace: Workspace, session: Session, ref: RunRef, field: str = "run", *,
                external: bool = False) -> Run:
    """The train run a :class:`RunRef` names (with ``external``, also a teacher run, registered here
    for an external spec).

    A checkpoint file from outside the registry is copied into ``runs/<id>/`` and
    registered as a train run with status ``imported`` (the same file, by sha256, is
    registered once), so every pseudo-label it makes still points at its model.

    Raises:
        ModelError: no finished train run (``best``/``newest``), no such run, no such file,
            or a file that is not a dataeng checkpoint (refused without unpickling).
    """
    if ref.kind == "external":
        assert ref.spec is not None
        if not external:
            raise ModelError("an external teacher cannot be used here; give a trained run or checkpoint",
                             field=field, value=str(ref))
        return register_teacher(workspace, session, ref.spec)
    if ref.kind in ("best", "newest"):
        run = best_run(session, external=external) if ref.kind == "best" else newest_run(session)
        if run is None:
            hint = ", or pass --teacher PATH|mediapipe|onnx:PATH" if field == "teacher" else ""
            raise ModelError(f"no finished train run yet; run `dataeng train` or `dataeng round` first{hint}",
                             field=field, value=str(ref))
        return run
    if ref.kind == "id":
        assert ref.run_id is not None
        try:
            return train_run(session, ref.run_id, external=external)
        except ModelError as e:
            raise ModelError(e.reason, field=field, value=ref.run_id) from e
    assert ref.path is not None
    return import_checkpoint(workspace, session, ref.path, field)


def import_checkpoint(workspace: Workspace, session: Session, path: Path, field: str = "run") -> Run:
    """Register a checkpoint file as an ``imported`` train run (once per file content); committed.

    Raises:
        ModelError: no such file, or not a dataeng checkpoint.
    """
    if not path.is_file():
        raise ModelError("neither 'best', a train run id nor a checkpoint file (give a run id or 'best', or the "
                         "path of a checkpoint)", path=path, field=field)
    ckpt = load_checkpoint(path)  # refuses a non-checkpoint before anything is registered
    sha = file_sha256(path)
    for run in session.scalars(select(Run).where(Run.kind == "train", Run.status == "imported")):
        if (run.config or {}).get("sha256") == sha:
            return run
    meta = {k: v for k, v in ckpt.meta.items()
            if k in ("arch", "encoder", "encoder_depth", "classes", "image_size", "mean", "std")}
    run = Run(kind="train", status="imported", config={**meta, "imported_from": str(path.resolve()), "sha256": sha},
              finished_at=utcnow())
    session.add(run)
    session.flush()
    dest = workspace.run_dir(run.id) / "checkpoint.pt"
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(path, dest)
    run.checkpoint_path = str(dest.relative_to(workspace.root))
    session.commit()
    return run


def register_teacher(workspace: Workspace, session: Session, spec: TeacherSpec) -> Run:
    """Register an external teacher as a finished ``teacher`` run (once per kind and file sha256); committed.

    The adapter is built (and so checked: the extra installed, the file a usable model for the
    workspace's classes) before anything is written. An ONNX file is copied into ``runs/<id>/``
    with its contract, so the run keeps working when the original moves.

    Raises:
        ModelError: see :func:`dataeng.models.teachers.external_teacher`.
    """
    teacher = external_teacher(spec, workspace.config.classes)
    identity = teacher.identity()
    for run in teacher_runs(session):
        config = run.config or {}
        if config.get("teacher") == identity.kind and config.get("sha256") == identity.sha256:
            return run
    run = Run(kind="teacher", status="finished", config=identity.as_config(), finished_at=utcnow())
    session.add(run)
    session.flush()
    if spec.path is not None:
        dest = workspace.run_dir(run.id) / f"teacher{spec.path.suffix or '.onnx'}"
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(spec.path, dest)
        if identity.contract:  # the copy keeps its contract beside it (a dataeng export's also in its metadata)
            atomic_write_text(dest.with_name(dest.name + ".json"), json.dumps(identity.contract, indent=2))
        run.config = {**run.config, "stored_file": str(dest.relative_to(workspace.root))}
    session.commit()
    return run


def record_teacher_metrics(run: Run, split: str, metrics: dict[str, object]) -> None:
    """Keep an external teacher's val or test figures on its own row, as training does for a train
    run, so :func:`best_run` and the report rank it beside trained runs (not committed)."""
    if run.kind == "teacher" and split in ("val", "test"):
        run.metrics = {**(run.metrics or {}), split: dict(metrics)}
