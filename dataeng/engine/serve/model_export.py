"""``dataeng export model``: a registered train run's checkpoint as an ONNX file.

The fp32 export is checked against PyTorch (``models/onnx.py``). With ``int8`` the fp32
graph is quantised (onnxruntime dynamic quantisation) into the requested file, and the
int8 model's binary masks are compared with the fp32 model's on synthetic portraits
(``engine/synth.py``, at the model's image size): the mean IoU between the two and its
loss (1 - IoU) are reported, so the user sees what the 4x smaller file costs.

Example::

    with ws.session() as session:
        result = export_model(ws, session, "best", Path("person.onnx"), dynamic=True, int8=True)
    result.int8.iou_loss
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from dataeng.engine.learn.runs import RunRef, resolve_run
from dataeng.engine.serve.compositing import foreground
from dataeng.engine.serve.predict import THRESHOLD
from dataeng.engine.synth import render
from dataeng.errors import DataEngError
from dataeng.models.checkpoint import load_checkpoint, model_from_checkpoint
from dataeng.models.inference import Predictor, checkpoint_normalisation
from dataeng.models.onnx import OnnxPredictor, export_onnx, meta_from_checkpoint, quantize_int8

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from dataeng.models.onnx import OnnxMeta
    from dataeng.workspace import Workspace

COMPARE_IMAGES = 8
"""Synthetic portraits the int8 model is compared on (fixed seed: the same every export)."""


@dataclass(frozen=True)
class Int8Report:
    """How much int8 quantisation changed the masks, measured against the fp32 model.

    Attributes:
        images: synthetic portraits compared.
        mean_iou, min_iou: IoU of the int8 masks with the fp32 masks (1 = identical;
            two empty masks count as 1).
        iou_loss: ``1 - mean_iou``.
        fp32_bytes, int8_bytes: file sizes.
    """

    images: int
    mean_iou: float
    min_iou: float
    iou_loss: float
    fp32_bytes: int
    int8_bytes: int


@dataclass(frozen=True)
class ModelExport:
    """A written ONNX model: its run, metadata, parity with PyTorch and the int8 report."""

    run_id: int
    path: Path
    meta: OnnxMeta
    parity_max_diff: float
    parity_sizes: tuple[tuple[int, int, int], ...]
    int8: Int8Report | None


def export_model(workspace: Workspace, session: Session, run: RunRef, out: Path, dynamic: bool = False,
                 int8: bool = False, overwrite: bool = False) -> ModelExport:
    """Export a train run's checkpoint to ONNX (see module docstring).

    Args:
        run: a train run, or ``best`` (highest val mIoU).
        out: the ONNX file to write (int8 when ``int8``).
        dynamic: dynamic height and width too (the batch axis is always dynamic).
        overwrite: replace an existing ``out``.

    Returns:
        What was written, the largest fp32 logit difference with PyTorch, and with
        ``int8`` the IoU loss against fp32.

    Raises:
        DataEngError: ``out`` exists (without ``overwrite``) or cannot be written.
        ModelError: no usable run, or the export or its parity check fails.
    """
    if out.exists() and not overwrite:
        raise DataEngError("exists (use --overwrite)", path=out)
    row = resolve_run(workspace, session, run)
    ckpt = load_checkpoint(workspace.root / str(row.checkpoint_path))
    mean, std = checkpoint_normalisation(ckpt.meta)
    meta = meta_from_checkpoint(ckpt.meta, dynamic, mean, std,
                                source=f"dataeng run {row.id} epoch {ckpt.meta['epoch']}")
    model = model_from_checkpoint(ckpt)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        if not int8:
            result = export_onnx(model, meta, out)
            return ModelExport(row.id, out, meta, result.parity_max_diff, result.parity_sizes, None)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.fp32.", suffix=".onnx", dir=out.parent)
        os.close(fd)
    except OSError as e:
        raise DataEngError(f"cannot write the ONNX file: {e.strerror or e}", path=out) from e
    fp32 = Path(tmp_name)
    try:
        result = export_onnx(model, meta, fp32)
        int8_meta = quantize_int8(fp32, out, meta)
        report = compare_masks(OnnxPredictor.load(fp32), OnnxPredictor.load(out), COMPARE_IMAGES)
        report = Int8Report(report.images, report.mean_iou, report.min_iou, report.iou_loss,
                            fp32.stat().st_size, out.stat().st_size)
    finally:
        with contextlib.suppress(FileNotFoundError):
            fp32.unlink()
    return ModelExport(row.id, out, int8_meta, result.parity_max_diff, result.parity_sizes, report)


def compare_masks(reference: Predictor, other: Predictor, n: int = COMPARE_IMAGES, seed: int = 0) -> Int8Report:
    """IoU of ``other``'s binary masks with ``reference``'s on ``n`` synthetic portraits.

    Returns:
        An :class:`Int8Report` with zero file sizes (the caller knows the files).
    """
    h, w = reference.image_size
    rng = np.random.default_rng(seed)
    batch = np.stack([render(rng, h, w)[0].transpose(2, 0, 1) for _ in range(n)])
    ref = foreground(reference.probabilities(batch).transpose(1, 0, 2, 3)) >= THRESHOLD
    got = foreground(other.probabilities(batch).transpose(1, 0, 2, 3)) >= THRESHOLD
    inter = (ref & got).sum(axis=(1, 2))
    union = (ref | got).sum(axis=(1, 2))
    ious = np.where(union > 0, inter / np.maximum(union, 1), 1.0)
    mean = float(ious.mean())
    return Int8Report(n, mean, float(ious.min()), 1.0 - mean, 0, 0)
