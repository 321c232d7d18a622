"""Pseudo-label the unlabelled train images with a teacher model.

The kernel (:func:`label_from_probabilities`) is pure numpy: per pixel, class = argmax
and confidence = max probability; pixels below ``pixel_threshold`` become IGNORE_INDEX.
Per image it scores the confident fraction, the mean confidence and the stability
(IoU of the foreground masks at ``p > 0.5 - d`` and ``p > 0.5 + d``, p = 1 - P(background)).
An image whose three scores pass ``accept`` becomes an ``active`` pseudo-label; the others
become ``needs_review``, ranked by :func:`uncertainty` (most uncertain first).

Workers: any number of :func:`pseudolabel` calls (processes, torchrun ranks, machines) share the
candidates through the registry (:mod:`~dataeng.engine.learn.claims`): each claims a chunk of
images, labels it, and claims the next. Under torchrun each rank is one worker on its own device
(:class:`Rank`); no process group is needed, the registry is the only coordination.

The engine (:func:`pseudolabel`) streams each claimed chunk: DataLoader workers decode and resize, the main
thread runs the teacher (flip TTA averaged), one writer thread resizes the probabilities
back, applies the kernel and writes the PNGs to a staging folder of the run; the main
thread then registers each batch in one transaction (insert rows, move the staged files
to their ``mask_rel(label_id)`` paths, supersede older pseudo-labels, commit).

A kill loses at most the uncommitted batches (their staged files are rewritten by the
next run); their claims are taken again (at once on the same machine, after the lease
elsewhere), and an image that has a label from this teacher is never queued again, so
nothing is done twice and nothing is duplicated.

Example::

    session = ws.new_session()
    try:
        result = pseudolabel(ws, session, teacher="best")
    finally:
        session.close()
    result.accepted, result.queued
"""

from __future__ import annotations

import os
import shutil
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from sqlalchemy import exists, select

from dataeng.annotation.masks import write_confidence, write_mask
from dataeng.annotation.types import BACKGROUND, IGNORE_INDEX
from dataeng.config import AcceptConfig, PseudolabelConfig
from dataeng.db.schema import Image, Label, Problem, ProblemKind, Run
from dataeng.engine.labels import LIVE_STATUSES, PseudoDraft, add_pseudo_labels
from dataeng.engine.learn import claims
from dataeng.engine.learn.data import eval_loader
from dataeng.engine.learn.provenance import code_version
from dataeng.engine.learn.runs import RunRef
from dataeng.engine.learn.samples import Sample
from dataeng.engine.learn.teacher import resolve_teacher
from dataeng.engine.lifecycle import lifecycle
from dataeng.errors import DataEngError, NothingToDoError
from dataeng.models.inference import resize_probabilities, resolve_device, tta_probabilities
from dataeng.progress import NullProgress, Progress

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from dataeng.workspace import Workspace

COMMIT_EVERY = 64
"""Images registered per transaction: few enough to lose little on a kill, enough to amortise the commit."""

_INFLIGHT = 3  # inference batches queued for the writer thread before the main thread waits
PEER_POLL_S = 1.0
"""How often a worker with nothing left to claim looks again while its peers still hold claims."""


# ---------------------------------------------------------------- kernel (pure)
@dataclass(frozen=True)
class PseudoScores:
    """Per-image scores of a teacher's prediction, all in [0, 1].

    Attributes:
        confident_fraction: share of pixels with confidence >= pixel_threshold.
        mean_confidence: mean over pixels of the max class probability.
        stability: IoU of the foreground masks at p > 0.5 - d and p > 0.5 + d
            (1.0 when both are empty: nothing there, confidently).
    """

    confident_fraction: float
    mean_confidence: float
    stability: float


@dataclass(frozen=True)
class PseudoMask:
    """A thresholded pseudo-label: class-index mask with IGNORE_INDEX, confidence, scores."""

    mask: np.ndarray = field(repr=False)
    confidence: np.ndarray = field(repr=False)
    scores: PseudoScores


def label_from_probabilities(probs: np.ndarray, pixel_threshold: float, stability_delta: float) -> PseudoMask:
    """Turn class probabilities into a pseudo-label and its scores.

    Args:
        probs: (K, H, W) float probabilities summing to 1 over K (K = 2 for a binary
            model: background, person); index k is class index k of the mask.
        pixel_threshold: pixels whose max probability is below it become IGNORE_INDEX.
        stability_delta: d of the stability score.

    Returns:
        The uint8 mask (0..K-1 or IGNORE_INDEX), the float32 confidence map, the scores.

    Example:
        >>> p = np.array([[[0.99, 0.4]], [[0.01, 0.6]]], np.float32)  # 1x2 image
        >>> label_from_probabilities(p, 0.95, 0.1).mask.tolist()
        [[0, 255]]
    """
    if probs.ndim != 3 or probs.shape[0] < 2:
        raise ValueError(f"probs must be (K >= 2, H, W), got shape {probs.shape}")
    confidence = probs.max(axis=0).astype(np.float32)
    mask = probs.argmax(axis=0).astype(np.uint8)
    confident = confidence >= pixel_threshold
    mask[~confident] = IGNORE_INDEX
    foreground = 1.0 - probs[BACKGROUND]
    scores = PseudoScores(
        confident_fraction=float(confident.mean()),
        mean_confidence=float(confidence.mean()),
        stability=stability(foreground, stability_delta),
    )
    return PseudoMask(mask, confidence, scores)


def stability(foreground: np.ndarray, delta: float) -> float:
    """IoU of ``foreground > 0.5 - delta`` and ``foreground > 0.5 + delta``.

    The high mask lies inside the low one, so the IoU is |high| / |low|: the share of the
    loosely-predicted person that the model is also sure of. Both empty gives 1.0.
    """
    low = int(np.count_nonzero(foreground > 0.5 - delta))
    high = int(np.count_nonzero(foreground > 0.5 + delta))
    return 1.0 if low == 0 else high / low


def accepts(scores: PseudoScores, accept: AcceptConfig) -> bool:
    """True when all three scores reach their ``accept`` minimum."""
    return (scores.confident_fraction >= accept.min_confident_fraction
            and scores.mean_confidence >= accept.min_mean_confidence
            and scores.stability >= accept.min_stability)


def uncertainty(confident_fraction: float, stability: float) -> float:
    """Review priority of a pseudo-label: ``1 - confident_fraction * stability`` (higher first).

    It grows with the share of pixels the annotator must fill in (ignored) and with how
    much of the person's outline moves with the threshold; both are what a correction
    costs. The review queue sorts ``needs_review`` labels by it, descending.
    """
    return 1.0 - confident_fraction * stability


# ---------------------------------------------------------------- inference
@dataclass(frozen=True)
class PseudolabelResult:
    """What one pseudolabel run did.

    Attributes:
        run_id: the ``pseudolabel`` run row; teacher_run_id: the train run that predicted.
        candidates: images it set out to label; labelled = accepted + queued.
        accepted: new ``active`` pseudo-labels; queued: new ``needs_review`` ones.
        superseded: older pseudo-labels (other teachers) replaced.
        problems: images that could not be read (recorded as ``problems`` rows).
        skipped: images a concurrent human label claimed while this run worked.
    """

    run_id: int
    teacher_run_id: int
    round: int | None
    candidates: int
    accepted: int
    queued: int
    superseded: int
    problems: int
    skipped: int
    seconds: float
    images_per_s: float

    @property
    def labelled(self) -> int:
        return self.accepted + self.queued


@dataclass
class _Done:
    """One image after the writer thread: staged files and scores, or an error."""

    image_id: int
    image_path: str
    scores: PseudoScores | None = None
    accepted: bool = False
    staged_mask: Path | None = None
    staged_conf: Path | None = None
    error: str | None = None
    invalid: bool = False  # the teacher's output, not the image, was at fault


def candidate_images(session: Session, teacher_run_id: int, shard: tuple[int, int] = (0, 1),
                     limit: int | None = None) -> list[Image]:
    """Train images to pseudo-label, by id: no human label in use, no label from this teacher.

    Args:
        shard: (i, n): only images with ``id % n == i``.
        limit: at most this many (the lowest ids).
    """
    i, n = shard
    human = exists().where(Label.image_id == Image.id, Label.origin == "human", Label.status.in_(LIVE_STATUSES))
    mine = exists().where(Label.image_id == Image.id, Label.run_id == teacher_run_id, Label.origin == "pseudo")
    q = (select(Image).where(Image.split == "train", ~human, ~mine, Image.id % n == i).order_by(Image.id))
    if limit is not None:
        q = q.limit(limit)
    return list(session.scalars(q))


def pseudolabel(
    workspace: Workspace,
    session: Session,
    teacher: RunRef | None = None,
    *,
    config: PseudolabelConfig | None = None,
    round: int | None = None,
    shard: tuple[int, int] = (0, 1),
    limit: int | None = None,
    device: str | None = None,
    num_workers: int | None = None,
    commit_every: int = COMMIT_EVERY,
    progress: Progress | None = None,
) -> PseudolabelResult:
    """Run the teacher over the train images without a human label and register the results.

    Any number of these may run at once on one registry (processes, torchrun ranks, machines):
    they share the candidates through the registry's work queue (:mod:`~dataeng.engine.learn.claims`),
    each claiming ``config.claim_size`` images at a time, so no image is labelled twice and none is
    missed; a worker whose peers still hold claims waits for them to finish or for their leases to
    run out (a killed peer), then takes over what is left.

    Args:
        workspace: the open workspace; session: committed per batch (the caller closes it).
        teacher: ``best`` (default), a train run, or a checkpoint file (see :func:`resolve_teacher`).
        config: thresholds, TTA, batch size, accept rule, claim size and lease (default: the
            workspace's ``[pseudolabel]``).
        round: recorded on each label (default: the teacher's round + 1).
        shard: (i, n): only images whose id % n == i (a static split of the work; claiming needs none).
        limit: at most this many images, by this worker.
        device, num_workers: default ``[train]`` device and workers.
        commit_every: images per transaction.
        progress: advanced once per inference batch, with accepted/queued counts.

    Returns:
        This worker's counts and throughput (``candidates``: the images it claimed).

    Raises:
        ModelError: no usable teacher (see :func:`resolve_teacher`).
        NothingToDoError: every train image is human-labelled or already labelled by this teacher.
        DataEngError: an invalid shard.
    """
    config = config or workspace.config.pseudolabel
    progress = progress or NullProgress()
    i, n = shard
    if n < 1 or not 0 <= i < n:
        raise DataEngError("shard must be i/n with 0 <= i < n", field="shard", value=f"{i}/{n}")
    resolved = resolve_teacher(workspace, session, teacher)
    torch_device = resolve_device(device or workspace.config.train.device)
    predictor = resolved.predictor(torch_device)  # a weights/architecture mismatch fails here
    claims.enqueue(session, resolved.run_id, shard)
    claims.free_dead_local(session, resolved.run_id)
    left = claims.backlog(session, resolved.run_id, shard)
    if left.empty:
        raise NothingToDoError(f"nothing to pseudo-label: every train image{'' if n == 1 else f' of shard {i}/{n}'} "
                               f"has a human label or a label from teacher run {resolved.run_id}")
    round = round if round is not None else (resolved.round or 0) + 1
    image_size = resolved.image_size
    row = Run(kind="pseudolabel", round=round, teacher_run_id=resolved.run_id, code_version=code_version(),
              device=str(torch_device),
              config={**config.model_dump(mode="json"), "teacher": resolved.run_id, "shard": [i, n],
                      "limit": limit, "image_size": list(image_size), "queued": left.free + left.held,
                      "worker": claims.worker_name()})
    workers = num_workers if num_workers is not None else workspace.config.train.num_workers
    counts = {"accepted": 0, "queued": 0, "superseded": 0, "problems": 0, "skipped": 0}
    claimed = 0
    started = time.perf_counter()
    with lifecycle(session, row) as run, claims.Heartbeat(workspace.new_session, run.id, config.lease_s):
        staging = workspace.run_dir(run.id) / "staging"
        staging.mkdir(parents=True, exist_ok=True)
        progress.task(f"pseudo-labelling (teacher run {resolved.run_id})", left.free + left.held)
        with (ThreadPoolExecutor(max_workers=1, thread_name_prefix="pseudolabel-writer") as writer,
              _giving_back_on_error(session, run.id)):
            while limit is None or claimed < limit:
                want = config.claim_size if limit is None else min(config.claim_size, limit - claimed)
                ids = claims.claim(session, resolved.run_id, run.id, want, config.lease_s, shard)
                if not ids:
                    if not _wait_for_peers(session, resolved.run_id, shard, config.lease_s):
                        break
                    continue
                claimed += len(ids)
                stores = dict(session.execute(select(Image.id, Image.store_path)
                                              .where(Image.id.in_(ids))).tuples().all())
                session.commit()
                samples = [Sample(image_path=workspace.image_path(stores[k]), image_id=k) for k in ids]
                _label_chunk(workspace, session, samples, predictor, writer, staging, config, image_size,
                             min(workers, len(samples)), commit_every, progress, resolved.run_id, run.id, round,
                             counts)
        seconds = time.perf_counter() - started
        rate = claimed / max(seconds, 1e-9)
        run.metrics = {**counts, "candidates": claimed, "seconds": seconds, "images_per_s": rate}
        run.config = {**run.config, "candidates": claimed}
    shutil.rmtree(staging, ignore_errors=True)
    return PseudolabelResult(run.id, resolved.run_id, round, claimed, counts["accepted"], counts["queued"],
                             counts["superseded"], counts["problems"], counts["skipped"], seconds, rate)


@dataclass(frozen=True)
class Rank:
    """This process's place under torchrun (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``; 0, 1, 0 alone)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls) -> Rank:
        env = os.environ
        return cls(int(env.get("RANK", "0")), int(env.get("WORLD_SIZE", "1")), int(env.get("LOCAL_RANK", "0")))

    def device(self, name: str) -> str:
        """The device of this rank: under torchrun a CUDA device becomes ``cuda:<local rank>``, so the G
        ranks of a machine use its G GPUs; CPU and MPS stay as they are."""
        if self.world_size > 1 and name in ("auto", "cuda") and str(resolve_device(name)).startswith("cuda"):
            return f"cuda:{self.local_rank}"
        return name


@contextmanager
def _giving_back_on_error(session: Session, run_id: int) -> Iterator[None]:
    """On an error (not a kill) the chunk this worker holds goes back to the queue at once, for the next
    worker or the rerun, instead of waiting for its lease."""
    try:
        yield
    except BaseException:
        claims.give_back(session, run_id)
        raise


def _wait_for_peers(session: Session, teacher_run_id: int, shard: tuple[int, int], lease_s: float) -> bool:
    """Nothing free to claim: wait while other workers hold claims (they may die). False when the queue
    is empty (all done), True when something may be free again."""
    claims.free_dead_local(session, teacher_run_id)
    left = claims.backlog(session, teacher_run_id, shard)
    if left.empty:
        return False
    if left.free == 0:
        time.sleep(min(PEER_POLL_S, lease_s / 3, (left.next_expiry_s or 0.0) + 0.05))
    return True


def _label_chunk(workspace: Workspace, session: Session, samples: list[Sample], predictor: Any,
                 writer: ThreadPoolExecutor, staging: Path, config: PseudolabelConfig, image_size: tuple[int, int],
                 workers: int, commit_every: int, progress: Progress, teacher_run_id: int, run_id: int, round: int,
                 counts: dict[str, int]) -> None:
    """Decode, infer and write one claimed chunk, registering every ``commit_every`` images."""
    pending: list[_Done] = []
    inflight: deque[Future[list[_Done]]] = deque()
    for batch in eval_loader(samples, image_size, config.batch_size, workers):
        probs = tta_probabilities(predictor, batch["input"].numpy(), config.tta)
        inflight.append(writer.submit(_post_process, probs, batch["items"], samples, staging, config))
        while inflight and (len(inflight) > _INFLIGHT or inflight[0].done()):
            pending += inflight.popleft().result()
        if len(pending) >= commit_every:
            _register(workspace, session, pending, teacher_run_id, run_id, round, counts)
            pending = []
        progress.advance(len(batch["items"]), accepted=counts["accepted"], queued=counts["queued"])
    while inflight:
        pending += inflight.popleft().result()
    _register(workspace, session, pending, teacher_run_id, run_id, round, counts)


def _post_process(probs: np.ndarray, items: list[dict[str, Any]], samples: list[Sample], staging: Path,
                  config: PseudolabelConfig) -> list[_Done]:
    """Writer thread: resize to the image, threshold, score, write the staged PNGs."""
    out = []
    for k, item in enumerate(items):
        sample = samples[item["index"]]
        assert sample.image_id is not None
        done = _Done(sample.image_id, str(sample.image_path))
        if item["error"] is not None:
            done.error = item["error"]
            out.append(done)
            continue
        if not np.isfinite(probs[k]).all():
            done.error, done.invalid = "the teacher returned NaN or infinite probabilities", True
            out.append(done)
            continue
        h, w = item["shape"]
        full = resize_probabilities(probs[k], (h, w))  # cv2: releases the GIL in this writer thread
        label = label_from_probabilities(full, config.pixel_threshold, config.stability_delta)
        done.scores, done.accepted = label.scores, accepts(label.scores, config.accept)
        done.staged_mask = staging / f"{sample.image_id}.mask.png"
        done.staged_conf = staging / f"{sample.image_id}.conf.png"
        write_mask(done.staged_mask, label.mask)
        write_confidence(done.staged_conf, label.confidence)
        out.append(done)
    return out


def _register(workspace: Workspace, session: Session, done: list[_Done], teacher_run_id: int, run_id: int,
              round: int, counts: dict[str, int]) -> None:
    """One transaction: problems, then the pseudo-labels through the label state machine."""
    if not done:
        return
    for d in done:
        if d.error is not None and d.invalid:
            session.add(Problem(run_id=run_id, path=d.image_path, kind=ProblemKind.INVALID_PREDICTION,
                                field="probabilities", message=f"image {d.image_id}: {d.error}; no pseudo-label"))
            counts["problems"] += 1
        elif d.error is not None:
            session.add(Problem(run_id=run_id, path=d.image_path, kind=ProblemKind.MISSING_IMAGE, field="store_path",
                                message=f"image {d.image_id} cannot be read since ingest: {d.error}"))
            counts["problems"] += 1
    drafts = []
    for d in done:
        if d.error is None:
            assert d.scores is not None and d.staged_mask is not None and d.staged_conf is not None
            s = d.scores
            drafts.append(PseudoDraft(d.image_id, d.accepted, s.mean_confidence, s.confident_fraction, s.stability,
                                      d.staged_mask, d.staged_conf,
                                      {"pseudolabel_run_id": run_id,
                                       "uncertainty": uncertainty(s.confident_fraction, s.stability)}))
    outcome = add_pseudo_labels(workspace, session, drafts, teacher_run_id=teacher_run_id, round=round)
    claims.release(session, teacher_run_id, [d.image_id for d in done])  # with the labels, or not at all
    session.commit()
    counts["accepted"] += outcome.accepted
    counts["queued"] += outcome.queued
    counts["superseded"] += outcome.superseded
    counts["skipped"] += len(outcome.skipped)
