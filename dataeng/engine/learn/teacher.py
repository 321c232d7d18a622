"""The teacher of a pseudo-label run: which model, loaded and checked against the workspace.

The default teacher is :func:`dataeng.engine.learn.runs.best_run`; ``--teacher`` names
another train run or a checkpoint file (registered as an ``imported`` train run, so every
pseudo-label points at its teacher). Inference goes through :mod:`dataeng.models.inference`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from dataeng.engine.learn.runs import RunRef, resolve_run
from dataeng.errors import ModelError
from dataeng.models.checkpoint import load_checkpoint, model_from_checkpoint
from dataeng.models.inference import TorchPredictor

if TYPE_CHECKING:
    import torch
    from sqlalchemy.orm import Session

    from dataeng.models.checkpoint import Checkpoint
    from dataeng.workspace import Workspace


@dataclass(frozen=True)
class Teacher:
    """A resolved teacher: its train run, checkpoint and training round."""

    run_id: int
    checkpoint: Checkpoint
    round: int | None

    @property
    def image_size(self) -> tuple[int, int]:
        h, w = self.checkpoint.meta["image_size"]
        return int(h), int(w)

    def predictor(self, device: torch.device) -> TorchPredictor:
        """The teacher's model on ``device``, ready for :mod:`dataeng.models.inference`.

        Raises:
            ModelError: the weights do not fit the architecture the checkpoint names.
        """
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
    run = resolve_run(workspace, session, ref, field="teacher")
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

