"""Evaluate a model: on a registry split, or on a folder of images and masks outside it.

The network sees each image resized to ``image_size``; its probabilities are resized
back to the image's own size and every metric is computed there, against the truth
at full resolution (models/metrics.py). Per-image metrics go to ``image_metrics`` and
the predictions of the :data:`WORST_KEPT` worst images to
``runs/<model run>/predictions/<split>/<image id>.png``, so the report can show the worst
images without loading the model; an ``evaluate`` call is registered as a run.

Example::

    with ws.session() as session:
        result = evaluate(ws, session, RunRef.parse(3), split="test")
    result.metrics["iou"]
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from dataeng.annotation.masks import write_mask
from dataeng.db.schema import ImageMetric, Problem, ProblemKind, Run
from dataeng.engine.learn.data import eval_loader
from dataeng.engine.learn.provenance import code_version
from dataeng.engine.learn.runs import RunRef, record_teacher_metrics
from dataeng.engine.learn.samples import Sample, folder_samples, registry_samples
from dataeng.engine.learn.teacher import resolve_teacher
from dataeng.engine.lifecycle import lifecycle
from dataeng.errors import DataEngError, ModelError, NothingToDoError
from dataeng.models.inference import Predictor, class_mask, predict_batches, resolve_device
from dataeng.models.metrics import score_image, summarize
from dataeng.progress import NullProgress, Progress

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from dataeng.models.metrics import ImageScores
    from dataeng.workspace import Workspace

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


def evaluate_samples(predictor: Predictor, samples: Sequence[Sample], num_classes: int, batch_size: int = 8,
                     num_workers: int = 0, progress: Progress | None = None, keep_worst: int = 0) -> EvalOutcome:
    """Predict (no TTA) and score every sample at its original resolution.

    Args:
        predictor: any :class:`~dataeng.models.inference.Predictor` (a model being trained is
            wrapped in a ``TorchPredictor``; the caller puts it back in train mode).
        samples: with ``mask_path`` (truth) set; ``alpha_path`` adds matting metrics.
        num_classes: foreground classes.
        progress: one task, advanced per batch.
        keep_worst: keep the predicted masks of this many lowest-IoU images (memory: that
            many masks, whatever the number of samples).

    Returns:
        Split-level and per-image metrics; unreadable items are listed in ``problems``.
    """
    progress = progress or NullProgress()
    k = num_classes + 1
    cm_total = np.zeros((k, k), np.int64)
    scored: list[ScoredImage] = []
    problems: list[tuple[str, str]] = []
    worst: list[tuple[tuple[float, int], int, ScoredImage, np.ndarray]] = []  # max-heap by (iou, id), negated
    progress.task("evaluating", len(samples))
    loader = eval_loader(samples, predictor.image_size, batch_size, num_workers)
    for item, full in predict_batches(predictor, loader, "none"):
        sample = samples[item["index"]]
        progress.advance()
        if full is None:
            problems.append((str(sample.image_path), item["error"]))
            continue
        pred = class_mask(full)
        pred_alpha = (1.0 - full[0]) if item["alpha"] is not None else None
        scores, cm = score_image(pred, item["mask"], num_classes, pred_alpha, item["alpha"])
        cm_total += cm
        image = ScoredImage(sample, scores)
        scored.append(image)
        if keep_worst:
            _keep(worst, keep_worst, image, item["index"], pred)
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


def evaluate(workspace: Workspace, session: Session, ref: RunRef | None = None, split: str = "test",
             images_dir: Path | None = None, masks_dir: Path | None = None, device: str = "auto",
             batch_size: int | None = None, num_workers: int | None = None,
             progress: Progress | None = None) -> EvaluateResult:
    """Evaluate a train run's best checkpoint, or an external teacher, and register an ``evaluate`` run.

    A ``teacher`` run (an external model) evaluated on val or test also keeps the metrics in
    its own row (``metrics["val"]``, ``metrics["test"]``), as a train run does from training,
    so the best-run choice and the report rank it beside trained runs.

    Args:
        ref: the train run or teacher (default: the newest finished train run).
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
    model = resolve_teacher(workspace, session, ref or RunRef("newest"))
    model_run = session.get(Run, model.run_id)
    assert model_run is not None
    classes = model.classes
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
        samples = registry_samples(workspace, session, split, human_only=True)
        split_name = split
    if not samples:
        raise NothingToDoError(f"nothing to evaluate: no {split_name} images with a (human) mask")
    torch_device = resolve_device(device)
    predictor = model.predictor(torch_device)
    cfg = model_run.config or {}
    row = Run(kind="evaluate", config={"model_run_id": model_run.id, "split": split_name,
                                       "images": str(images_dir) if images_dir else None,
                                       "masks": str(masks_dir) if masks_dir else None,
                                       "checkpoint": model_run.checkpoint_path, "epoch": model.epoch},
              code_version=code_version(), device=str(torch_device), round=model_run.round,
              dataset_fingerprint=None)
    with lifecycle(session, row) as run:
        outcome = evaluate_samples(predictor, samples, len(classes), batch_size or int(cfg.get("batch_size", 8)),
                                   num_workers if num_workers is not None else int(cfg.get("num_workers", 0)),
                                   progress, keep_worst=WORST_KEPT if split_name != "external" else 0)
        for path in missing:
            session.add(Problem(run_id=run.id, path=path, kind=ProblemKind.MISSING_MASK, field="mask",
                                message=f"no mask with this stem in {masks_dir}"))
        for path, message in outcome.problems:
            session.add(Problem(run_id=run.id, path=path, kind=ProblemKind.UNREADABLE, message=message))
        store_image_metrics(session, run.id, model_run.id, split_name, outcome, workspace.root)
        store_worst_predictions(workspace.run_dir(model_run.id), split_name, outcome)
        run.metrics = {**outcome.metrics, "missing_masks": len(missing), "problems": len(outcome.problems)}
        record_teacher_metrics(model_run, split_name, outcome.metrics)
    return EvaluateResult(run.id, model_run.id, split_name, dict(run.metrics), missing, outcome.problems,
                          worst_images(outcome))
