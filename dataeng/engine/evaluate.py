"""Evaluate a model: on a registry split, or on a folder of images and masks outside it.

The network sees each image resized to ``image_size``; its probabilities are resized
back to the image's own size and every metric is computed there, against the truth
at full resolution (models/metrics.py). Per-image metrics go to ``image_metrics`` and
the predictions of the :data:`WORST_KEPT` worst images to
``runs/<model run>/predictions/<split>/<image id>.png``, so the report can show the worst
images without loading the model; an ``evaluate`` call is registered as a run.

Example::

    with ws.session() as session:
        result = evaluate(ws, session, run_id=3, split="test")
    result.metrics["iou"]
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from sqlalchemy import select

from dataeng.db.schema import ImageMetric, Problem, Run, utcnow
from dataeng.engine.data import Sample, eval_loader, normalize, registry_samples
from dataeng.errors import DataEngError, ModelError, NothingToDoError

if TYPE_CHECKING:
    import torch
    from sqlalchemy.orm import Session

    from dataeng.models.metrics import ImageScores
    from dataeng.workspace import Workspace

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
WORST_KEPT = 12  # predictions kept per evaluation: the report's worst-images gallery


@dataclass(frozen=True)
class ScoredImage:
    """One evaluated image: its sample and its scores."""

    sample: Sample
    scores: ImageScores


@dataclass(frozen=True)
class EvalOutcome:
    """Metrics of one pass over a set of samples.

    Attributes:
        metrics: split-level metrics (see ``models.metrics.summarize``).
        images: per-image scores, in sample order.
        problems: (path, message) of images that could not be scored.
        worst_predictions: (image, predicted mask) of the ``keep_worst`` lowest-IoU images,
            worst first (ties by image id, as ``queries.worst_image_metrics`` orders them).
    """

    metrics: dict[str, Any]
    images: list[ScoredImage]
    problems: list[tuple[str, str]]
    worst_predictions: list[tuple[ScoredImage, np.ndarray]] = field(default_factory=list)


@dataclass(frozen=True)
class EvaluateResult:
    """What :func:`evaluate` registered."""

    run_id: int
    model_run_id: int
    split: str
    metrics: dict[str, Any]
    missing: list[str]
    problems: list[tuple[str, str]]
    worst: list[dict[str, Any]]


def predict_probabilities(model: torch.nn.Module, inputs: torch.Tensor, device: torch.device,
                          amp_dtype: torch.dtype | None = None) -> torch.Tensor:
    """(B, K, h, w) class probabilities (K = 2 for a binary model: background, class)."""
    import torch

    x = normalize(inputs.to(device))
    if device.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(), torch.autocast(device.type, dtype=amp_dtype or torch.float32,
                                                 enabled=amp_dtype is not None):
        logits = model(x).float()
    if logits.shape[1] == 1:
        p = torch.sigmoid(logits)
        return torch.cat([1 - p, p], dim=1)
    return torch.softmax(logits, dim=1)


def evaluate_samples(model: torch.nn.Module, samples: Sequence[Sample], image_size: tuple[int, int],
                     num_classes: int, device: torch.device, batch_size: int = 8, num_workers: int = 0,
                     on_batch: Callable[[int, int], None] | None = None, keep_worst: int = 0) -> EvalOutcome:
    """Predict and score every sample at its original resolution.

    Args:
        model: any model mapping (B, 3, h, w) to (B, 1 or C + 1, h, w) logits.
        samples: with ``mask_path`` (truth) set; ``alpha_path`` adds matting metrics.
        num_classes: foreground classes.
        on_batch: called with (images done, total) after each batch.
        keep_worst: keep the predicted masks of this many lowest-IoU images (memory: that
            many masks, whatever the number of samples).

    Returns:
        Split-level and per-image metrics; unreadable items are listed in ``problems``.
    """
    import torch

    from dataeng.engine.compositing import class_mask, resize_probabilities
    from dataeng.models.metrics import score_image, summarize

    amp = (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16) if device.type == "cuda" else None
    was_training = model.training
    model.eval()
    k = num_classes + 1
    cm_total = np.zeros((k, k), np.int64)
    scored: list[ScoredImage] = []
    problems: list[tuple[str, str]] = []
    worst: list[tuple[tuple[float, int], int, ScoredImage, np.ndarray]] = []  # max-heap by (iou, id), negated
    done = 0
    for batch in eval_loader(samples, image_size, batch_size, num_workers):
        probs = predict_probabilities(model, batch["input"], device, amp).cpu().numpy()
        for i, item in enumerate(batch["items"]):
            sample = samples[item["index"]]
            if item["error"] is not None:
                problems.append((str(sample.image_path), item["error"]))
                continue
            full = resize_probabilities(probs[i], tuple(item["shape"]))
            pred = class_mask(full)
            pred_alpha = (1.0 - full[0]) if item["alpha"] is not None else None
            scores, cm = score_image(pred, item["mask"], num_classes, pred_alpha, item["alpha"])
            cm_total += cm
            image = ScoredImage(sample, scores)
            scored.append(image)
            if keep_worst:
                _keep(worst, keep_worst, image, item["index"], pred)
        done += len(batch["items"])
        if on_batch is not None:
            on_batch(done, len(samples))
    model.train(was_training)
    kept = [(image, pred) for _, _, image, pred in sorted(worst, key=lambda w: (-w[0][0], -w[0][1]))]
    return EvalOutcome(summarize([s.scores for s in scored], cm_total), scored, problems, kept)


def _keep(heap: list[tuple[tuple[float, int], int, ScoredImage, np.ndarray]], n: int, image: ScoredImage,
          index: int, pred: np.ndarray) -> None:
    """Keep the ``n`` lowest (IoU, image id) in a bounded max-heap; NaN IoU counts as lowest (SQL's NULL)."""
    iou = image.scores.iou
    key = (-(-math.inf if iou is None or math.isnan(iou) else iou),
           -(image.sample.image_id if image.sample.image_id is not None else index))
    entry = (key, index, image, pred)
    if len(heap) < n:
        heapq.heappush(heap, entry)
    elif key > heap[0][0]:
        heapq.heapreplace(heap, entry)


def prediction_path(run_dir: Path, split: str, image_id: int) -> Path:
    """Where an evaluation keeps a model's predicted mask of one of the worst images."""
    return run_dir / "predictions" / split / f"{image_id}.png"


def store_worst_predictions(run_dir: Path, split: str, outcome: EvalOutcome) -> int:
    """Write ``outcome.worst_predictions`` of registry images under ``run_dir``; returns how many.

    A checkpoint's predictions never change, so a later evaluation of the same run on
    the same split rewrites the same files (atomically).
    """
    from dataeng.annotation.masks import write_mask

    n = 0
    for image, pred in outcome.worst_predictions:
        if image.sample.image_id is not None:
            write_mask(prediction_path(run_dir, split, image.sample.image_id), pred)
            n += 1
    return n


def store_image_metrics(session: Session, run_id: int, model_run_id: int, split: str, outcome: EvalOutcome,
                        root: Path | None = None) -> None:
    """Add one ``image_metrics`` row per scored image (the caller commits)."""
    for item in outcome.images:
        s = item.scores
        path = item.sample.image_path
        shown = str(path.relative_to(root)) if root is not None and path.is_relative_to(root) else str(path)
        session.add(ImageMetric(
            run_id=run_id, model_run_id=model_run_id, image_id=item.sample.image_id,
            label_id=item.sample.label_id, path=shown, split=split, iou=s.iou, miou=s.miou,
            fwiou=s.fwiou, pixel_accuracy=s.pixel_accuracy, boundary_f1=s.boundary_f1,
            boundary_iou=s.boundary_iou, mae=s.mae, sad=s.sad, mse=s.mse, grad=s.grad,
        ))


def worst_images(outcome: EvalOutcome, n: int = 5) -> list[dict[str, Any]]:
    """The ``n`` images with the lowest foreground IoU, as small dicts."""
    ranked = sorted(outcome.images, key=lambda s: s.scores.iou)[:n]
    return [{"image_id": s.sample.image_id, "path": str(s.sample.image_path), "iou": s.scores.iou,
             "boundary_f1": s.scores.boundary_f1} for s in ranked]


def folder_samples(images_dir: Path, masks_dir: Path) -> tuple[list[Sample], list[str]]:
    """Pair images with masks by file stem.

    Returns:
        (samples with a mask, image paths without one).

    Raises:
        DataEngError: a folder is missing or holds no images.
    """
    for d, name in ((images_dir, "images"), (masks_dir, "masks")):
        if not d.is_dir():
            raise DataEngError("not a folder", path=d, field=name)
    masks = {p.stem: p for p in sorted(masks_dir.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES}
    images = sorted(p for p in images_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise DataEngError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in this folder", path=images_dir)
    samples = [Sample(image_path=p, mask_path=masks[p.stem], external=True) for p in images if p.stem in masks]
    missing = [str(p) for p in images if p.stem not in masks]
    return samples, missing


def pick_model_run(session: Session, run_id: int | None) -> Run:
    """The given train run, or the newest finished one.

    Raises:
        ModelError: no such run, not a finished train run, or none at all.
    """
    if run_id is None:
        run = session.scalars(select(Run).where(Run.kind == "train", Run.status == "finished",
                                                Run.checkpoint_path.is_not(None)).order_by(Run.id.desc())).first()
        if run is None:
            raise ModelError("no finished train run yet; run `dataeng train` first", field="run")
        return run
    run = session.get(Run, run_id)
    if run is None or run.kind != "train":
        raise ModelError("no train run with this id", field="run", value=run_id)
    if run.checkpoint_path is None:
        raise ModelError(f"run has no checkpoint (status {run.status})", field="run", value=run_id)
    return run


def evaluate(workspace: Workspace, session: Session, run_id: int | None = None, split: str = "test",
             images_dir: Path | None = None, masks_dir: Path | None = None, device: str = "auto",
             batch_size: int | None = None, num_workers: int | None = None,
             on_batch: Callable[[int, int], None] | None = None) -> EvaluateResult:
    """Evaluate a train run's best checkpoint and register an ``evaluate`` run.

    Args:
        run_id: the train run (default: the newest finished one).
        split: ``val`` or ``test`` (registry images with an active human label).
        images_dir, masks_dir: evaluate these instead of a split; masks match images by
            stem, binary 0/255 masks mean class 1; images without a mask are reported.
        device: ``auto``, ``cpu``, ``cuda`` or ``mps``.

    Returns:
        The evaluate run's id, metrics, missing masks, problems and worst images.

    Raises:
        ModelError: no usable run or checkpoint.
        NothingToDoError: the split has no labelled images.
    """
    from dataeng.engine.loop import resolve_device
    from dataeng.models.checkpoint import load_checkpoint, model_from_checkpoint

    model_run = pick_model_run(session, run_id)
    ckpt = load_checkpoint(workspace.root / model_run.checkpoint_path)  # type: ignore[operator]
    classes = list(ckpt.meta["classes"])
    missing: list[str] = []
    if images_dir is not None or masks_dir is not None:
        if images_dir is None or masks_dir is None:
            raise DataEngError("--images and --masks go together", field="masks" if masks_dir is None else "images")
        samples, missing = folder_samples(images_dir, masks_dir)
        split_name = "external"
    else:
        if split not in ("val", "test", "train"):
            raise DataEngError("split must be val or test", field="split", value=split)
        if classes != list(workspace.config.classes):
            raise ModelError(f"run {model_run.id} was trained on classes {classes}, this workspace has "
                             f"{workspace.config.classes}", field="classes")
        samples = registry_samples(session, workspace, split, human_only=True)
        split_name = split
    if not samples:
        raise NothingToDoError(f"nothing to evaluate: no {split_name} images with a (human) mask")
    torch_device = resolve_device(device)
    model = model_from_checkpoint(ckpt).to(torch_device)
    cfg = model_run.config or {}
    run = Run(kind="evaluate", config={"model_run_id": model_run.id, "split": split_name,
                                       "images": str(images_dir) if images_dir else None,
                                       "masks": str(masks_dir) if masks_dir else None,
                                       "checkpoint": model_run.checkpoint_path, "epoch": ckpt.meta["epoch"]},
              code_version=_code_version(), device=str(torch_device), round=model_run.round,
              dataset_fingerprint=None)
    session.add(run)
    session.commit()
    try:
        outcome = evaluate_samples(model, samples, tuple(ckpt.meta["image_size"]), len(classes), torch_device,
                                   batch_size or int(cfg.get("batch_size", 8)),
                                   num_workers if num_workers is not None else int(cfg.get("num_workers", 0)),
                                   on_batch, keep_worst=WORST_KEPT if split_name != "external" else 0)
    except BaseException:
        run.status, run.finished_at = "failed", utcnow()
        session.commit()
        raise
    for path in missing:
        session.add(Problem(run_id=run.id, path=path, kind="missing_mask", field="mask",
                            message=f"no mask with this stem in {masks_dir}"))
    for path, message in outcome.problems:
        session.add(Problem(run_id=run.id, path=path, kind="unreadable", message=message))
    store_image_metrics(session, run.id, model_run.id, split_name, outcome, workspace.root)
    store_worst_predictions(workspace.run_dir(model_run.id), split_name, outcome)
    metrics = {**outcome.metrics, "missing_masks": len(missing), "problems": len(outcome.problems)}
    run.metrics, run.status, run.finished_at = metrics, "finished", utcnow()
    session.commit()
    return EvaluateResult(run.id, model_run.id, split_name, metrics, missing, outcome.problems,
                          worst_images(outcome))


def _code_version() -> str:
    from dataeng.engine.train import code_version

    return code_version()
