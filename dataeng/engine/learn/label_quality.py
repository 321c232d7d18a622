"""Suspicious human labels: cleanlab's segmentation label-quality scores on out-of-sample predictions.

A human label is compared with the prediction of a model that did not train on its image
(an in-sample model has learnt the label, mistakes included, and would vouch for it):

- ``folds == 0``: the best train run (the default teacher, see engine/teacher.py) scores
  the human labels of val and test images, and of the train images it did not train on
  (labelled after it ran; ``runs/<id>/dataset.json`` lists the labels it trained on).
  The train labels it trained on are **not scored**.
- ``folds >= 2``: K-fold cross-validation over the train split's human labels. Images are
  assigned to folds by a stable hash of their near-duplicate group (:func:`fold_of`), so
  near duplicates share a fold; K models are trained in-process with the workspace's
  ``[train]`` options (plus ``overrides``), each on K - 1 folds, and each predicts its
  held-out fold. Fold models are never registered, so none can become a teacher. Val and
  test labels are scored by the best run, or by the mean of the fold models without one.

Predictions are the teacher's flip-TTA probabilities at the network's ``image_size``; the
label is downsampled to that size (area vote, :func:`downsample_mask`) and scored with
``cleanlab.segmentation.rank.get_label_quality_scores(method="softmin")``: a score in
[0, 1] per image, lower = more suspicious. IGNORE_INDEX pixels are set to the predicted
class before scoring, so an ignored region counts as agreement and never lowers a score.
Scores are kept in ``labels.meta["label_quality"]`` (score, run_id, folds, fold, scored_at),
committed per batch.

Example::

    session = ws.new_session()
    try:
        issues = rank_label_issues(ws, session, folds=5, limit=50)
    finally:
        session.close()
    issues[0].label_id, issues[0].score
"""

from __future__ import annotations

import hashlib
import heapq
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from sqlalchemy import select

from dataeng.annotation.masks import encode_png
from dataeng.annotation.types import IGNORE_INDEX
from dataeng.db.schema import Image, Label, Run, utcnow
from dataeng.engine.learn import loop
from dataeng.engine.learn.data import eval_loader
from dataeng.engine.learn.options import TrainOptions, budgeted, resolve_options
from dataeng.engine.learn.runs import RunRef, best_run
from dataeng.engine.learn.samples import Sample, registry_samples
from dataeng.engine.learn.teacher import resolve_teacher
from dataeng.errors import DataEngError, ModelError, NothingToDoError
from dataeng.models.inference import (
    Predictor,
    TorchPredictor,
    class_mask,
    ensemble_probabilities,
    resize_probabilities,
    resolve_device,
)
from dataeng.progress import NullProgress, Progress

if TYPE_CHECKING:
    import torch
    from sqlalchemy.orm import Session

    from dataeng.workspace import Workspace

SCORE_BATCH = 16
"""Images predicted and scored at once (one transaction each): bounds memory at any dataset size."""

SOFTMIN_TEMPERATURE = 0.1
"""cleanlab's default: the image score leans towards its worst pixels."""

SMALL_SET = 32  # below this many images, decode in the main process (no worker start-up)


@dataclass(frozen=True)
class LabelIssue:
    """One scored human label.

    Attributes:
        image_id, label_id: the label scored.
        score: cleanlab label-quality score in [0, 1], lower = more suspicious.
        predicted_png: the out-of-sample prediction as a class-index PNG
            (:func:`dataeng.annotation.masks.encode_png`), at the image's full size.
        source_run_id: the train run whose model made the prediction (None for fold models,
            which are not registered).
    """

    image_id: int
    label_id: int
    score: float
    predicted_png: bytes = field(repr=False)
    source_run_id: int | None


# ---------------------------------------------------------------- kernels (pure)
def fold_of(group_key: int, folds: int) -> int:
    """The cross-validation fold (0..folds-1) of a near-duplicate group: a stable hash of its key
    (the group's root image id), so it does not depend on the order or number of images."""
    digest = hashlib.blake2b(f"label-quality:{group_key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % folds


def downsample_mask(mask: np.ndarray, image_size: tuple[int, int], num_classes: int) -> np.ndarray:
    """A class-index mask at the network's ``image_size`` (h, w), by area vote: each pixel takes the
    class covering most of its area (IGNORE_INDEX when ignored pixels, or values outside
    0..num_classes-1, do), the way the image itself is area-averaged for the network.

    Nearest-neighbour sampling would instead keep a class that covers a sliver of the area,
    which the prediction rightly contradicts; cleanlab's softmin lets a dozen such boundary
    pixels drag a correct label's score down to a wrong label's.
    """
    import cv2

    h, w = image_size
    if mask.shape == (h, w):
        return mask
    votes = [cv2.resize((mask == c).astype(np.float32), (w, h), interpolation=cv2.INTER_AREA)
             for c in range(num_classes)]
    votes.append(cv2.resize((mask >= num_classes).astype(np.float32), (w, h), interpolation=cv2.INTER_AREA))
    out = np.stack(votes).argmax(axis=0).astype(np.uint8)
    out[out == num_classes] = IGNORE_INDEX
    return out


def label_quality_scores(labels: np.ndarray, pred_probs: np.ndarray,
                         temperature: float = SOFTMIN_TEMPERATURE) -> np.ndarray:
    """cleanlab's softmin label-quality score of each label, lower = more suspicious.

    Args:
        labels: (N, H, W) uint8 class-index masks; IGNORE_INDEX (and any value outside
            0..K-1) is replaced by the predicted class first, so it counts as agreement.
        pred_probs: (N, K, H, W) out-of-sample class probabilities (K >= 2).

    Returns:
        (N,) float scores in [0, 1].

    Example:
        >>> p = np.stack([np.full((2, 2), 0.1), np.full((2, 2), 0.9)])[None]  # person everywhere
        >>> label_quality_scores(np.ones((1, 2, 2), np.uint8), p) > label_quality_scores(
        ...     np.zeros((1, 2, 2), np.uint8), p)
        array([ True])
    """
    from cleanlab.segmentation.rank import get_label_quality_scores

    if labels.ndim != 3 or pred_probs.ndim != 4 or labels.shape != pred_probs[:, 0].shape:
        raise ValueError(f"labels (N, H, W) and pred_probs (N, K, H, W) must match, got {labels.shape} "
                         f"and {pred_probs.shape}")
    k = pred_probs.shape[1]
    labels = labels.astype(np.int64)
    unknown = (labels == IGNORE_INDEX) | (labels >= k)
    labels = np.where(unknown, pred_probs.argmax(axis=1), labels)
    scores, _ = get_label_quality_scores(labels, pred_probs.astype(np.float32, copy=False), method="softmin",
                                         verbose=False, temperature=temperature)
    return np.clip(scores, 0.0, 1.0)


# ---------------------------------------------------------------- engine
@dataclass
class _Job:
    """Labels to score and the model(s) whose mean prediction scores them."""

    description: str
    samples: list[Sample]
    models: list[Predictor]
    image_size: tuple[int, int]
    run_id: int | None
    fold: int | None


class _Best:
    """The ``limit`` lowest scores seen (all of them without a limit)."""

    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        self._heap: list[tuple[float, int, LabelIssue]] = []  # (-score, -label_id, issue): max-heap

    def wants(self, score: float, label_id: int) -> bool:
        if self.limit is None or len(self._heap) < self.limit:
            return True
        return (-score, -label_id) > self._heap[0][:2]

    def add(self, issue: LabelIssue) -> None:
        item = (-issue.score, -issue.label_id, issue)
        if self.limit is None or len(self._heap) < self.limit:
            heapq.heappush(self._heap, item)
        else:
            heapq.heappushpop(self._heap, item)

    def ranked(self) -> list[LabelIssue]:
        return sorted((item[2] for item in self._heap), key=lambda i: (i.score, i.label_id))


def rank_label_issues(
    workspace: Workspace,
    session: Session,
    *,
    folds: int = 0,
    limit: int | None = None,
    device: str | None = None,
    progress: Progress | None = None,
    overrides: dict[str, Any] | None = None,
) -> list[LabelIssue]:
    """Score the active human labels against out-of-sample predictions; most suspicious first.

    Every label scored gets ``meta["label_quality"] = {"score", "run_id", "folds", "fold",
    "scored_at"}`` (committed per batch of :data:`SCORE_BATCH` images), whatever ``limit``.

    Args:
        workspace, session: the open workspace; the session is committed per batch (the
            caller closes it).
        folds: 0 to use the best train run: it scores val/test labels and the train labels
            of images it did not train on, and **skips the train labels it trained on**
            (an imported checkpoint, whose training set is unknown, scores val/test only).
            K >= 2 to also score every train label by K-fold cross-validation (K models
            trained with the workspace's ``[train]`` options: about K times a ``dataeng
            train``).
        limit: return at most this many (the lowest scores); all are still scored and stored.
        device: ``auto``/``cpu``/``cuda``/``mps`` (default ``[train] device``).
        progress: one task per model trained or used (advanced per epoch / per batch).
        overrides: TrainOptions for the fold models (e.g. ``{"epochs": 5}``); ``num_workers``
            also sets the decoding workers.

    Returns:
        The scored labels, lowest score first (ties by label id). Images that cannot be
        read are left out.

    Raises:
        NothingToDoError: no active human label, or none that a model did not train on.
        ModelError: no finished train run and ``folds == 0`` (or no train labels for fold models).
        DataEngError: ``folds`` of 1 or below 0, ``limit`` below 1, or cross-validation with
            every train label in one fold (too few near-duplicate groups for K folds).
        ConfigError: an invalid override.
    """
    if folds == 1 or folds < 0:
        raise DataEngError("folds must be 0 (use the best train run) or at least 2 (cross-validation)",
                           field="folds", value=folds)
    if limit is not None and limit < 1:
        raise DataEngError("limit must be at least 1 (or None for every label)", field="limit", value=limit)
    progress = progress or NullProgress()
    options = resolve_options(workspace.config.train, {**(overrides or {}), "device": device})
    held_out = registry_samples(workspace, session, "val") + registry_samples(workspace, session, "test")
    train = registry_samples(workspace, session, "train", human_only=True)
    if not held_out and not train:
        raise NothingToDoError("no active human labels to score: ingest or import human annotations first")
    best = best_run(session)
    if best is None and folds == 0:
        raise ModelError("no trained model to score labels with: run `dataeng train` first, or pass --folds K "
                         "to train K cross-validation models", field="folds", value=folds)
    if best is None and not train:
        raise ModelError("no trained model to score the val/test labels with and no train labels to train fold "
                         "models on: label train images and run `dataeng train` first", field="folds", value=folds)
    torch_device = resolve_device(options.device)
    jobs: list[_Job] = []
    if folds == 0:
        assert best is not None
        seen = _trained_images(workspace, session, best)
        unseen = [s for s in train if seen is not None and s.image_id not in seen]
        if not held_out and not unseen:
            raise NothingToDoError(f"no human label to score out of sample: train run {best.id} trained on every "
                                   f"labelled train image and val/test have no human labels; pass --folds K to "
                                   f"score the train labels by cross-validation")
        jobs.append(_teacher_job(workspace, session, best, held_out + unseen, torch_device))
    elif best is not None and held_out:
        jobs.append(_teacher_job(workspace, session, best, held_out, torch_device))
    groups = _group_keys(session, [s.image_id for s in train]) if folds else {}
    session.commit()  # end the read transaction before the long job

    best_issues = _Best(limit)
    workers = options.num_workers
    for job in jobs:
        _run_job(workspace, session, job, folds, torch_device, workers, best_issues, progress)
        job.models.clear()
    if folds:
        fold_models = _cross_validate(workspace, session, options, train, groups, folds, torch_device, workers,
                                      best_issues, progress, keep_models=best is None and bool(held_out))
        if best is None and held_out:
            job = _Job(f"scoring {len(held_out)} val/test labels (mean of {folds} fold models)", held_out,
                       fold_models, options.image_size, None, None)
            _run_job(workspace, session, job, folds, torch_device, workers, best_issues, progress)
    return best_issues.ranked()


def _trained_images(workspace: Workspace, session: Session, run: Run) -> set[int] | None:
    """Image ids a run trained on (any label of theirs in its ``dataset.json``); None when unknown
    (an imported checkpoint, or a run without the file): then every train image counts as seen."""
    path = workspace.run_dir(run.id) / "dataset.json"
    if run.status == "imported" or not path.is_file():
        return None
    label_ids = [int(i) for i in json.loads(path.read_text(encoding="utf-8")).get("train", [])]
    seen: set[int] = set()
    for start in range(0, len(label_ids), 500):
        seen.update(session.scalars(select(Label.image_id).where(Label.id.in_(label_ids[start:start + 500]))))
    return seen


def _group_keys(session: Session, image_ids: Sequence[int | None]) -> dict[int, int]:
    """image id -> near-duplicate group key (the group's root image id)."""
    ids = [i for i in image_ids if i is not None]
    out: dict[int, int] = {}
    for start in range(0, len(ids), 500):
        rows = session.execute(select(Image.id, Image.group_id).where(Image.id.in_(ids[start:start + 500])))
        out.update({image_id: group if group is not None else image_id for image_id, group in rows.tuples()})
    return out


def _teacher_job(workspace: Workspace, session: Session, run: Run, samples: list[Sample],
                 device: torch.device) -> _Job:
    teacher = resolve_teacher(workspace, session, RunRef("id", run_id=run.id))
    return _Job(f"scoring {len(samples)} labels (train run {run.id})", samples, [teacher.predictor(device)],
                teacher.image_size, run.id, None)


def _cross_validate(workspace: Workspace, session: Session, options: TrainOptions, train: list[Sample],
                    groups: dict[int, int], folds: int, device: torch.device, workers: int, best: _Best,
                    progress: Progress, keep_models: bool) -> list[Predictor]:
    """Train one model per fold on the other folds, score the fold with it; the models when kept."""
    fold = {s.label_id: fold_of(groups[s.image_id], folds) for s in train if s.image_id is not None}
    kept: list[Predictor] = []
    for f in range(folds):
        scored = [s for s in train if fold[s.label_id] == f]
        rest = [s for s in train if fold[s.label_id] != f]
        if not scored and not keep_models:
            continue
        if not rest:
            raise DataEngError(f"cross-validation needs labelled train images in at least 2 of the {folds} folds; "
                               f"all {len(train)} fall in fold {f} (too few near-duplicate groups): use fewer "
                               f"folds or --folds 0", field="folds", value=folds)
        model = _train_fold(options, list(workspace.config.classes), rest, f, folds, device, workers, progress)
        if scored:
            job = _Job(f"fold {f + 1}/{folds}: scoring {len(scored)} labels", scored, [model],
                       options.image_size, None, f)
            _run_job(workspace, session, job, folds, device, workers, best, progress)
        if keep_models:
            kept.append(model)
    return kept


def _train_fold(options: TrainOptions, classes: list[str], samples: list[Sample], fold: int, folds: int,
                device: torch.device, workers: int, progress: Progress) -> Predictor:
    """A model trained like ``dataeng train`` (same options and loop, no val selection: the last
    epoch) on ``samples``, in memory: no run row, no files."""
    options = budgeted(options, len(samples))
    training = loop.prepare(options, classes, samples, device, seed=options.seed + fold,
                            num_workers=min(workers, len(samples)))
    progress.task(f"fold {fold + 1}/{folds}: training on {len(samples)} labels", options.epochs)
    loop.fit(training, options.epochs, after_epoch=lambda stats: progress.advance(1, loss=stats.train_loss))
    return TorchPredictor(training.module, classes, options.image_size, device, mean=training.mean, std=training.std)


def _run_job(workspace: Workspace, session: Session, job: _Job, folds: int, device: torch.device, workers: int,
             best: _Best, progress: Progress) -> None:
    """Predict, score and store one job's labels, one transaction per batch."""
    progress.task(job.description, len(job.samples))
    n_workers = 0 if len(job.samples) < SMALL_SET else workers
    unreadable = 0
    for batch in eval_loader(job.samples, job.image_size, SCORE_BATCH, n_workers):
        items = batch["items"]
        probs = probabilities(job.models, batch["input"].numpy())
        ok = [k for k, item in enumerate(items) if item["error"] is None]
        unreadable += len(items) - len(ok)
        if ok:
            labels = np.stack([downsample_mask(items[k]["mask"], job.image_size, probs.shape[1]) for k in ok])
            scores = label_quality_scores(labels, probs[ok])
            _store(session, job, folds, [(job.samples[items[k]["index"]], float(s)) for k, s in zip(ok, scores,
                                                                                                    strict=True)])
            for k, score in zip(ok, scores, strict=True):
                sample = job.samples[items[k]["index"]]
                assert sample.label_id is not None and sample.image_id is not None
                if best.wants(float(score), sample.label_id):
                    best.add(LabelIssue(sample.image_id, sample.label_id, float(score),
                                        _full_size_png(probs[k], items[k]["shape"]), job.run_id))
        progress.advance(len(items), **({"unreadable": unreadable} if unreadable else {}))


def probabilities(predictors: list[Predictor], batch: np.ndarray) -> np.ndarray:
    """(B, K, h, w) flip-TTA probabilities at the network's size, averaged over ``predictors``."""
    return ensemble_probabilities(predictors, batch, "flip")


def _store(session: Session, job: _Job, folds: int, scored: list[tuple[Sample, float]]) -> None:
    """One transaction: each label's ``meta["label_quality"]`` (a new dict, so the JSON column is saved)."""
    stamp = utcnow().isoformat()
    by_id = {s.label_id: score for s, score in scored}
    for label in session.scalars(select(Label).where(Label.id.in_(list(by_id)))):
        quality = {"score": by_id[label.id], "run_id": job.run_id, "folds": folds, "fold": job.fold,
                   "scored_at": stamp}
        label.meta = {**(label.meta or {}), "label_quality": quality}
    session.commit()


def _full_size_png(probs: np.ndarray, shape: tuple[int, int]) -> bytes:
    h, w = shape
    return encode_png(class_mask(resize_probabilities(probs, (h, w))))

