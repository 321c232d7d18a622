"""The teacher of a pseudo-label run: which model, loaded and checked against the workspace.

The default teacher is :func:`dataeng.engine.learn.runs.best_run` (external teachers
included); ``--teacher`` names another train run, a checkpoint file (registered as an
``imported`` train run), or an external model (``mediapipe``, ``onnx:PATH``: registered as a
``teacher`` run through :mod:`dataeng.models.teachers`), so every pseudo-label points at
its teacher. Inference goes through :mod:`dataeng.models.inference`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from dataeng.engine.learn.runs import RunRef, resolve_run
from dataeng.errors import ModelError
from dataeng.models.checkpoint import load_checkpoint, model_from_checkpoint
from dataeng.models.inference import Predictor, TorchPredictor
from dataeng.models.teachers import ExternalTeacher, load_teacher_run_config

if TYPE_CHECKING:
    import torch
    from sqlalchemy.orm import Session

    from dataeng.models.checkpoint import Checkpoint
    from dataeng.workspace import Workspace


@dataclass(frozen=True)
class Teacher:
    """A resolved teacher: its run and round, and a checkpoint (trained) or an external adapter."""

    run_id: int
    checkpoint: Checkpoint | None
    round: int | None
    external: ExternalTeacher | None = None

    @property
    def image_size(self) -> tuple[int, int]:
        if self.external is not None:
            return self.external.identity().image_size
        assert self.checkpoint is not None
        h, w = self.checkpoint.meta["image_size"]
        return int(h), int(w)

    @property
    def classes(self) -> list[str]:
        if self.external is not None:
            return list(self.external.identity().classes)
        assert self.checkpoint is not None
        return list(self.checkpoint.meta["classes"])

    @property
    def epoch(self) -> int | None:
        return int(self.checkpoint.meta["epoch"]) if self.checkpoint is not None else None

    def predictor(self, device: torch.device) -> Predictor:
        """The teacher's model on ``device`` (external teachers run on the CPU), ready for
        :mod:`dataeng.models.inference`.

        Raises:
            ModelError: the weights do not fit the architecture the checkpoint names.
        """
        if self.external is not None:
            return self.external.predictor()
        assert self.checkpoint is not None
        return TorchPredictor.from_checkpoint(self.checkpoint, device)


def resolve_teacher(workspace: Workspace, session: Session, ref: RunRef | None = None) -> Teacher:
    """Find and load the teacher (default: the best run).

    Raises:
        ModelError: no finished train run, no such run or file, a file that is not a
            dataeng checkpoint (refused without unpickling), or a checkpoint made for
            other classes or an architecture its weights do not fit.
    """
    ref = ref or RunRef("best")
    if ref.kind == "file" and ref.path is not None and ref.path.is_file():
        # A file from outside is checked before it is registered (and copied): a refused file
        # leaves no imported run behind, and the message names the user's file, not a copy.
        outside = load_checkpoint(ref.path)
        _check_classes(workspace, outside, ref.path)
        model_from_checkpoint(outside)  # the weights must fit the architecture it names
    run = resolve_run(workspace, session, ref, field="teacher", external=True)
    if run.kind == "teacher":
        return Teacher(run.id, None, run.round, load_teacher_run_config(run.config or {}, workspace.config.classes,
                                                                        workspace.root))
    path = workspace.root / str(run.checkpoint_path)
    ckpt = load_checkpoint(path)
    _check_classes(workspace, ckpt, path)
    for key in ("arch", "encoder"):
        want = (run.config or {}).get(key)
        if want is not None and want != ckpt.meta[key]:
            raise ModelError(f"checkpoint says {key}={ckpt.meta[key]!r} but its run was {want!r}", path=path,
                             field=key, value=ckpt.meta[key])
    return Teacher(run.id, ckpt, run.round)


def _check_classes(workspace: Workspace, ckpt: Checkpoint, path: Path) -> None:
    classes = list(workspace.config.classes)
    if list(ckpt.meta["classes"]) != classes:
        raise ModelError(f"teacher was trained on classes {list(ckpt.meta['classes'])}, this workspace has "
                         f"{classes}", path=path, field="classes", value=list(ckpt.meta["classes"]))

