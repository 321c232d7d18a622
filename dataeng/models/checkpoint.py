"""Checkpoints: model weights plus the metadata needed to rebuild and resume.

A checkpoint is a ``torch.save`` zip holding only tensors and plain containers:

    {"format": "dataeng-checkpoint", "version": 1,
     "meta": {arch, encoder, encoder_depth, classes, image_size, epoch, ...},
     "model": state_dict, "optimizer": ..., "scheduler": ..., "scaler": ..., "rng": ...}

It is always loaded with ``torch.load(weights_only=True)``, after a cheap check that
the file is a torch zip at all, so an arbitrary file is refused without unpickling.
Writes go to a temporary file and are renamed into place.

Example::

    save_checkpoint(path, model, meta={"arch": "unet", ...})
    ckpt = load_checkpoint(path)
    model = model_from_checkpoint(ckpt)
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dataeng.errors import ModelError
from dataeng.models.factory import build_model
from dataeng.storage import atomic_write

if TYPE_CHECKING:
    import torch

FORMAT = "dataeng-checkpoint"
VERSION = 1
REQUIRED_META = ("arch", "encoder", "classes", "image_size", "epoch")


@dataclass(frozen=True)
class Checkpoint:
    """A loaded checkpoint: metadata and the raw state dicts."""

    path: Path
    meta: dict[str, Any]
    model: dict[str, Any]
    optimizer: dict[str, Any] | None
    scheduler: dict[str, Any] | None
    scaler: dict[str, Any] | None
    rng: dict[str, Any] | None

    @property
    def num_classes(self) -> int:
        return len(self.meta["classes"])


def save_checkpoint(
    path: Path,
    model: torch.nn.Module,
    meta: dict[str, Any],
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any | None = None,
    scaler: Any | None = None,
    rng: dict[str, Any] | None = None,
) -> None:
    """Write a checkpoint atomically (temporary file in the same folder, then rename).

    Args:
        meta: must hold ``arch``, ``encoder``, ``classes`` (names), ``image_size``, ``epoch``;
            JSON-like values only.
        optimizer, scheduler, scaler, rng: optional training state for ``--resume``.
    """
    import torch

    missing = [k for k in REQUIRED_META if k not in meta]
    if missing:
        raise ValueError(f"checkpoint meta lacks {missing}")
    state = {
        "format": FORMAT, "version": VERSION, "meta": meta,
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "scaler": scaler.state_dict() if scaler is not None else None,
        "rng": rng,
    }
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def _looks_like_torch_zip(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        return any(n.endswith("/data.pkl") for n in zf.namelist())


def load_checkpoint(path: Path) -> Checkpoint:
    """Read a checkpoint written by :func:`save_checkpoint` (``weights_only=True``, CPU).

    Raises:
        ModelError: missing file, not a torch checkpoint, not a dataeng one, or a newer version.
    """
    import pickle

    import torch

    if not path.is_file():
        raise ModelError("checkpoint not found", path=path)
    if not _looks_like_torch_zip(path):
        raise ModelError("not a checkpoint (expected a torch.save zip file)", path=path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as e:
        raise ModelError(f"not a loadable checkpoint: {str(e).splitlines()[0]}", path=path) from e
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ModelError(f"not a dataeng checkpoint (no format={FORMAT!r})", path=path, field="format")
    if state.get("version", 0) > VERSION:
        raise ModelError(f"checkpoint is newer than this dataeng (reads version {VERSION})", path=path,
                         field="version", value=state.get("version"))
    meta = state.get("meta") or {}
    missing = [k for k in REQUIRED_META if k not in meta]
    if missing:
        raise ModelError(f"checkpoint metadata lacks {missing}", path=path, field="meta")
    return Checkpoint(path, meta, state["model"], state.get("optimizer"), state.get("scheduler"),
                      state.get("scaler"), state.get("rng"))


def check_compatible(ckpt: Checkpoint, arch: str, encoder: str, classes: list[str],
                     encoder_depth: int | None = None) -> None:
    """Refuse a checkpoint made for another architecture, encoder, class list or (when given) encoder depth.

    Raises:
        ModelError: naming the field and both values.
    """
    for field, want in (("arch", arch), ("encoder", encoder), ("classes", list(classes))):
        have = ckpt.meta[field]
        if (list(have) if field == "classes" else have) != want:
            raise ModelError(f"checkpoint was trained with {field}={have!r}, this run needs {want!r}",
                             path=ckpt.path, field=field, value=have)
    depth = int(ckpt.meta.get("encoder_depth", 5))
    if encoder_depth is not None and depth != encoder_depth:
        raise ModelError(f"checkpoint was trained with encoder_depth={depth}, this run needs {encoder_depth}",
                         path=ckpt.path, field="encoder_depth", value=depth)


def model_from_checkpoint(ckpt: Checkpoint) -> torch.nn.Module:
    """Rebuild the model a checkpoint describes and load its weights (eval mode, CPU).

    Raises:
        ModelError: the weights do not fit the architecture the metadata names.
    """
    model = build_model(ckpt.meta["arch"], ckpt.meta["encoder"], ckpt.num_classes,
                        encoder_depth=int(ckpt.meta.get("encoder_depth", 5)))
    load_weights(model, ckpt)
    return model.eval()


def load_weights(model: torch.nn.Module, ckpt: Checkpoint) -> None:
    """Load a checkpoint's weights into ``model``.

    Raises:
        ModelError: missing/unexpected keys or mismatched shapes (another model or class count).
    """
    try:
        model.load_state_dict(ckpt.model, strict=True)
    except RuntimeError as e:
        detail = " ".join(str(e).split())[:300]
        raise ModelError(f"checkpoint weights do not fit the model "
                         f"({ckpt.meta.get('arch')}/{ckpt.meta.get('encoder')}, "
                         f"{ckpt.num_classes} classes): {detail}", path=ckpt.path) from e
