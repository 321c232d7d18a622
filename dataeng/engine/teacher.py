"""The teacher of a pseudo-label run: which model, loaded and checked, and its probabilities.

The default teacher is the finished train run with the best val mIoU, never a student a
round refused to promote nor a teacher a round replaced by its student. A checkpoint file
from outside the registry is registered as an ``imported`` train run, so every
pseudo-label points at its teacher.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from sqlalchemy import select

from dataeng.db.schema import Run, utcnow
from dataeng.errors import ModelError

if TYPE_CHECKING:
    import torch
    from sqlalchemy.orm import Session

    from dataeng.models.checkpoint import Checkpoint
    from dataeng.workspace import Workspace

Tta = Literal["flip", "none"]


@dataclass(frozen=True)
class Teacher:
    """A resolved teacher: its train run, checkpoint and training round."""

    run_id: int
    checkpoint: Checkpoint
    round: int | None


def rejected_students(session: Session) -> set[int]:
    """Train runs that a round refused to promote and no round promoted; never the default teacher.

    A round that reuses an earlier student (same labels and options) records it unpromoted;
    when that student had been promoted before, it is still the teacher.
    """
    from dataeng.db.schema import Round

    rows = session.execute(select(Round.student_run_id, Round.promoted).where(
        Round.student_run_id.is_not(None), Round.promoted.is_not(None))).all()
    promoted = {run_id for run_id, was_promoted in rows if was_promoted}
    return {run_id for run_id, was_promoted in rows if not was_promoted} - promoted


def beaten_teachers(session: Session) -> set[int]:
    """Teachers whose student a round promoted: beaten on the same val set, never the default again."""
    from dataeng.db.schema import Round

    return set(session.scalars(select(Round.teacher_run_id).where(
        Round.promoted.is_(True), Round.teacher_run_id.is_not(None),
        Round.student_run_id.is_not(None), Round.student_run_id != Round.teacher_run_id)))


def best_teacher_run(session: Session) -> Run | None:
    """The finished train run with the best val mIoU (newest on a tie or without val); None when
    there is no finished train run.

    Rounds decide first: a student a round refused to promote, and a teacher a round replaced
    by its promoted student, are left out (those comparisons were made on one val set; the
    stored val mIoUs of runs made at different times may not be).
    """
    runs = session.scalars(select(Run).where(Run.kind == "train", Run.status == "finished",
                                             Run.checkpoint_path.is_not(None)).order_by(Run.id)).all()
    refused = rejected_students(session) | beaten_teachers(session)
    best, best_key = None, (-2.0, -1)
    for run in runs:
        if run.id in refused:
            continue
        val = (run.metrics or {}).get("val") or {}
        key = (float(val.get("miou", -1.0)), run.id)
        if key > best_key:
            best, best_key = run, key
    return best


def resolve_teacher(workspace: Workspace, session: Session, teacher: str | None = None) -> Teacher:
    """Find and load the teacher: ``None``/``best``, a train run id, or a checkpoint file.

    A checkpoint file from outside the registry is copied into ``runs/<id>/`` and
    registered as a train run with status ``imported``, so every pseudo-label it makes
    still points at its teacher (the same file, by sha256, is registered once).

    Raises:
        ModelError: no finished train run, no such run or file, a file that is not a
            dataeng checkpoint (refused without unpickling), or a checkpoint made for
            other classes or an architecture its weights do not fit.
    """
    from dataeng.models.checkpoint import load_checkpoint

    if teacher in (None, "best"):
        run = best_teacher_run(session)
        if run is None:
            raise ModelError("no finished train run to use as teacher; run `dataeng train` or `dataeng round` "
                             "first, or pass --teacher PATH", field="teacher", value=teacher)
    elif teacher.isdigit():
        run = session.get(Run, int(teacher))
        if run is None or run.kind != "train" or run.checkpoint_path is None:
            raise ModelError("no train run with a checkpoint has this id", field="teacher", value=teacher)
    else:
        run = _import_checkpoint(workspace, session, Path(teacher))
    path = workspace.root / str(run.checkpoint_path)
    ckpt = load_checkpoint(path)
    classes = list(workspace.config.classes)
    if list(ckpt.meta["classes"]) != classes:
        raise ModelError(f"teacher was trained on classes {list(ckpt.meta['classes'])}, this workspace has "
                         f"{classes}", path=path, field="classes", value=list(ckpt.meta["classes"]))
    for key in ("arch", "encoder"):
        want = (run.config or {}).get(key)
        if want is not None and want != ckpt.meta[key]:
            raise ModelError(f"checkpoint says {key}={ckpt.meta[key]!r} but its run was {want!r}", path=path,
                             field=key, value=ckpt.meta[key])
    return Teacher(run.id, ckpt, run.round)


def _import_checkpoint(workspace: Workspace, session: Session, path: Path) -> Run:
    from dataeng.models.checkpoint import load_checkpoint
    from dataeng.storage import file_sha256

    if not path.is_file():
        raise ModelError("teacher is neither 'best', a train run id nor a checkpoint file", path=path,
                         field="teacher")
    ckpt = load_checkpoint(path)  # refuses a non-checkpoint before anything is registered
    sha = file_sha256(path)
    for run in session.scalars(select(Run).where(Run.kind == "train", Run.status == "imported")):
        if (run.config or {}).get("sha256") == sha:
            return run
    meta = {k: v for k, v in ckpt.meta.items() if k in ("arch", "encoder", "encoder_depth", "classes", "image_size")}
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


def teacher_probabilities(model: torch.nn.Module, inputs: torch.Tensor, device: torch.device,
                          tta: Tta = "flip") -> torch.Tensor:
    """(B, K, h, w) probabilities of a uint8 (B, 3, h, w) batch, averaged with the
    horizontally flipped view (flipped back) when ``tta`` is ``flip``."""
    import torch

    from dataeng.engine.evaluate import predict_probabilities

    amp = None
    if device.type == "cuda":
        amp = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if tta == "none":
        return predict_probabilities(model, inputs, device, amp)
    # One forward over both views: one large batch is faster than two small ones.
    both = predict_probabilities(model, torch.cat([inputs, inputs.flip(-1)]), device, amp)
    n = inputs.shape[0]
    return (both[:n] + both[n:].flip(-1)) / 2
