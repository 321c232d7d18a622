"""Train a model on the registry and register the run.

``train`` trains on the train split's active labels (human and accepted pseudo),
selects the epoch with the best val mIoU (val images with an active human label),
evaluates that checkpoint once on test, and records everything in a ``runs`` row and
in ``runs/<id>/``: config.json, checkpoint.pt (best on val), last.pt (every epoch,
for ``--resume``), metrics.json and log.

Launched by ``torchrun --nproc_per_node N`` it trains data-parallel; rank 0 alone
writes files and rows, evaluates, and decides the best epoch.

Example::

    session = ws.new_session()
    try:
        result = train(ws, session, {"epochs": 5, "image_size": (128, 128)})
    finally:
        session.close()
    result.test["iou"]
"""

from __future__ import annotations

import hashlib
import json
import math
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import Field, ValidationError

from dataeng.config import TrainConfig
from dataeng.db.schema import Run, utcnow
from dataeng.engine import loop
from dataeng.engine.data import Sample, registry_samples, train_loader
from dataeng.errors import ConfigError, DataEngError, ModelError
from dataeng.storage import atomic_write_text, file_sha256

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from dataeng.workspace import Workspace

SMALL_EVAL_SET = 32  # below this many images, evaluate in the main process (no worker start-up)


class TrainOptions(TrainConfig):
    """``[train]`` of dataeng.toml plus per-call options that are not workspace defaults."""

    augment: bool = Field(default=True, description="geometric and colour augmentation of train images")
    sample_budget: int | None = Field(default=None, ge=1, description=(
        "train for ceil(sample_budget / train images) epochs instead of `epochs`: the same number of images "
        "seen whatever the train set's size (used to compare runs on growing label sets fairly)"))


@dataclass(frozen=True)
class TrainResult:
    """A finished training run.

    Attributes:
        run_id: the ``runs`` row.
        best_epoch: the epoch whose checkpoint was kept (best val mIoU, else the last).
        val, test: metrics of that checkpoint (test None without labelled test images).
        history: one dict per epoch (train loss, lr, seconds, samples/s, val metrics).
        checkpoint: path of checkpoint.pt.
        worst: the test images with the lowest IoU.
    """

    run_id: int
    best_epoch: int
    epochs: int
    val: dict[str, Any] | None
    test: dict[str, Any] | None
    history: list[dict[str, Any]]
    checkpoint: Path
    run_dir: Path
    device: str
    fingerprint: str
    train_images: int
    seconds: float
    worst: list[dict[str, Any]]


def resolve_options(base: TrainConfig, overrides: dict[str, Any] | None = None) -> TrainOptions:
    """Defaults from dataeng.toml, then the non-None ``overrides`` (validated).

    Raises:
        ConfigError: an unknown option or an invalid value, naming it.
    """
    data = base.model_dump()
    data.update({k: v for k, v in (overrides or {}).items() if v is not None})
    try:
        return TrainOptions.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        field = ".".join(str(p) for p in err["loc"])
        raise ConfigError(err["msg"], field=f"train.{field}", value=err.get("input")) from e


def budgeted(options: TrainOptions, train_images: int) -> TrainOptions:
    """``options`` with ``epochs`` = ceil(sample_budget / train images) when a sample budget is set."""
    if options.sample_budget is None or train_images < 1:
        return options
    return options.model_copy(update={"epochs": max(1, math.ceil(options.sample_budget / train_images))})


def dataset_fingerprint(samples: list[Sample]) -> str:
    """sha256 over the sorted (label id, mask sha, alpha sha, confidence sha) trained on.

    A run can be repeated exactly when the fingerprint matches; any changed label,
    added or removed label changes it.
    """
    h = hashlib.sha256()
    for s in sorted(samples, key=lambda s: s.label_id or 0):
        parts = [str(s.label_id)] + [file_sha256(p) if p is not None else "-"
                                     for p in (s.mask_path, s.alpha_path, s.conf_path)]
        h.update((":".join(parts) + "\n").encode())
    return h.hexdigest()


def code_version() -> str:
    """``<package version>+<git describe>`` when run from a git checkout, else the version."""
    from dataeng import __version__

    repo = Path(__file__).resolve().parents[2]
    try:
        out = subprocess.run(["git", "describe", "--always", "--dirty", "--tags"], cwd=repo, capture_output=True,
                             text=True, timeout=5, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return __version__
    return f"{__version__}+{out}"[:64] if out else __version__


def train(
    workspace: Workspace,
    session: Session,
    overrides: dict[str, Any] | None = None,
    *,
    resume: int | None = None,
    round: int | None = None,
    teacher_run_id: int | None = None,
    callbacks: loop.Callbacks | None = None,
) -> TrainResult:
    """Train, select on val, test once, register the run.

    Args:
        workspace: the open workspace (config defaults, run folders).
        session: a session this function commits per epoch (open it with
            ``workspace.new_session()``; the caller closes it).
        overrides: TrainOptions fields to change (None values are ignored), e.g.
            ``{"epochs": 3, "encoder": "resnet34", "strong_augment": True}``.
        resume: continue this run from its last.pt (its stored options are used; only
            ``device`` and ``num_workers`` may be overridden).
        round, teacher_run_id: recorded on the run (set by ``dataeng round``).
        callbacks: progress hooks (rank 0 only).

    Returns:
        The finished run's :class:`TrainResult` (on every rank; only rank 0's is complete).

    Raises:
        DataEngError: no labelled train images, or the labels changed since a resumed run began.
        ModelError: bad architecture/encoder/weights, or a checkpoint that does not fit.
        ConfigError: an invalid option.
    """
    callbacks = callbacks or loop.Callbacks()
    resume_run = _resume_run(session, resume) if resume is not None else None
    if resume_run is not None:
        stored = {k: v for k, v in resume_run.config.items() if k in TrainOptions.model_fields}
        keep = {k: v for k, v in (overrides or {}).items() if k in ("device", "num_workers") and v is not None}
        options = resolve_options(TrainConfig(), {**stored, **keep})
        round, teacher_run_id = resume_run.round, resume_run.teacher_run_id
    else:
        options = resolve_options(workspace.config.train, overrides)
    classes = list(workspace.config.classes)
    from dataeng.models.factory import check_names

    check_names(options.arch, options.encoder)  # fail fast, before reading the registry

    splits = {s: registry_samples(session, workspace, s) for s in ("train", "val", "test")}
    session.commit()  # end the read transaction: SQLite would otherwise hold the lock for the whole run
    if not splits["train"]:
        raise DataEngError("no labelled train images: ingest images with masks (or accept pseudo-labels) "
                           "into the train split before `dataeng train`", field="split", value="train")
    fingerprint = dataset_fingerprint(splits["train"])
    if resume_run is None:
        options = budgeted(options, len(splits["train"]))
    if resume_run is not None and resume_run.dataset_fingerprint != fingerprint:
        raise DataEngError(f"the train labels changed since run {resume_run.id} started; start a new run instead "
                           f"of resuming", field="dataset_fingerprint", value=fingerprint[:12])

    dist, device = loop.init_distributed(options.device)
    try:
        return _train(workspace, session, options, classes, splits, fingerprint, dist, device, resume_run, round,
                      teacher_run_id, callbacks if dist.is_main else loop.Callbacks())
    finally:
        loop.shutdown_distributed(dist)


def _resume_run(session: Session, run_id: int) -> Run:
    run = session.get(Run, run_id)
    if run is None or run.kind != "train":
        raise ModelError("no train run with this id to resume", field="resume", value=run_id)
    if run.status == "finished":
        raise ModelError("run already finished; nothing to resume", field="resume", value=run_id)
    return run


def _build(options: TrainOptions, classes: list[str]) -> Any:
    import torch

    from dataeng.models.factory import build_model

    # Seed the weights explicitly, without disturbing the caller's global generator.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(options.seed)
        return build_model(options.arch, options.encoder, len(classes), options.encoder_weights,
                           options.encoder_depth)


def _train(workspace: Workspace, session: Session, options: TrainOptions, classes: list[str],
           splits: dict[str, list[Sample]], fingerprint: str, dist: loop.Dist, device: Any,
           resume_run: Run | None, round: int | None, teacher_run_id: int | None,
           callbacks: loop.Callbacks) -> TrainResult:
    import torch

    from dataeng.engine.evaluate import (
        WORST_KEPT,
        evaluate_samples,
        store_image_metrics,
        store_worst_predictions,
        worst_images,
    )
    from dataeng.models.checkpoint import check_compatible, load_checkpoint, load_weights, save_checkpoint

    started = time.perf_counter()
    model = _build(options, classes).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    loader = train_loader(splits["train"], options.image_size, options.batch_size, options.seed,
                          options.num_workers, options.strong_augment, options.augment,
                          distributed=dist.world_size > 1, pin_memory=device.type == "cuda",
                          human_share=options.human_share)
    opt = loop.make_optimisation(model, device, options.lr, options.weight_decay, options.warmup_epochs,
                                 options.epochs, len(loader))
    history: list[dict[str, Any]] = []
    best_epoch, best_miou, start_epoch = 0, -1.0, 1

    run: Run | None = None
    if dist.is_main:
        if resume_run is None:
            config = {**options.model_dump(mode="json"), "classes": classes, "world_size": dist.world_size}
            run = Run(kind="train", round=round, teacher_run_id=teacher_run_id, config=config,
                      code_version=code_version(), dataset_fingerprint=fingerprint, status="running",
                      device=str(device))
            session.add(run)
            session.commit()
        else:
            run = resume_run
            run.status, run.finished_at, run.device = "running", None, str(device)
            session.commit()
    run_id = loop.broadcast(dist, run.id if run is not None else None)
    run_dir = workspace.run_dir(run_id)
    meta = {"arch": options.arch, "encoder": options.encoder, "encoder_depth": options.encoder_depth,
            "classes": classes, "image_size": list(options.image_size), "run_id": run_id}

    if resume_run is not None:
        ckpt = load_checkpoint(run_dir / "last.pt")
        check_compatible(ckpt, options.arch, options.encoder, classes)
        load_weights(model, ckpt)
        opt.optimizer.load_state_dict(ckpt.optimizer)  # type: ignore[arg-type]
        opt.scheduler.load_state_dict(ckpt.scheduler)
        if opt.scaler is not None and ckpt.scaler:
            opt.scaler.load_state_dict(ckpt.scaler)
        loop.set_rng_state(ckpt.rng)
        start_epoch = int(ckpt.meta["epoch"]) + 1
        history = list(ckpt.meta.get("history", []))
        best_epoch, best_miou = int(ckpt.meta.get("best_epoch", 0)), float(ckpt.meta.get("best_miou", -1.0))

    ddp_model: Any = model
    if dist.world_size > 1:
        ddp_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)

    try:
        if dist.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(run_dir / "config.json", json.dumps(run.config, indent=2, sort_keys=True))  # type: ignore[union-attr]
            atomic_write_text(run_dir / "dataset.json", json.dumps(
                {s: [x.label_id for x in v] for s, v in splits.items()} | {"fingerprint": fingerprint}))
            _log(run_dir, f"{'resume' if resume_run else 'start'} run {run_id} at epoch {start_epoch} on {device} "
                          f"x{dist.world_size}; {len(splits['train'])} train, {len(splits['val'])} val, "
                          f"{len(splits['test'])} test images")
        if callbacks.on_start is not None:
            callbacks.on_start(start_epoch, options.epochs, len(loader))
        for epoch in range(start_epoch, options.epochs + 1):
            loss, seconds, throughput = loop.train_epoch(ddp_model, loader, opt, device, epoch, options.epochs,
                                                         options.loss, callbacks, dist.world_size)
            if dist.is_main:
                val = None
                if splits["val"]:
                    if callbacks.on_phase is not None:
                        callbacks.on_phase("validating")
                    val = _evaluate(evaluate_samples, model, splits["val"], options, classes, device).metrics
                is_best = val is None or float(val["miou"]) > best_miou
                if is_best:
                    best_epoch, best_miou = epoch, float(val["miou"]) if val else -1.0
                entry = {"epoch": epoch, "train_loss": loss, "lr": loop.current_lr(opt), "seconds": seconds,
                         "samples_per_s": throughput, "val": val}
                history.append(entry)
                epoch_meta = {**meta, "epoch": epoch, "history": history, "best_epoch": best_epoch,
                              "best_miou": best_miou}
                if is_best:
                    save_checkpoint(run_dir / "checkpoint.pt", model, {**epoch_meta, "val": val})
                    run.checkpoint_path = str((run_dir / "checkpoint.pt").relative_to(workspace.root))  # type: ignore[union-attr]
                save_checkpoint(run_dir / "last.pt", model, epoch_meta, opt.optimizer, opt.scheduler, opt.scaler,
                                loop.rng_state())
                _log(run_dir, f"epoch {epoch}/{options.epochs} loss {loss:.4f} lr {loop.current_lr(opt):.2e} "
                              f"{throughput:.1f} img/s" + (f" val mIoU {val['miou']:.4f}" if val else "")
                              + (" *best*" if is_best else ""))
                run.metrics = {"history": history, "best_epoch": best_epoch}  # type: ignore[union-attr]
                session.commit()
                if callbacks.on_epoch is not None:
                    callbacks.on_epoch(loop.EpochInfo(epoch, options.epochs, loss, loop.current_lr(opt), seconds,
                                                      throughput, val, is_best))
            loop.barrier(dist)

        test = worst = None
        best_val = history[best_epoch - 1]["val"] if history and best_epoch else None
        if dist.is_main:
            assert run is not None
            load_weights(model, load_checkpoint(run_dir / "checkpoint.pt"))
            if splits["test"]:
                if callbacks.on_phase is not None:
                    callbacks.on_phase("testing")
                outcome = _evaluate(evaluate_samples, model, splits["test"], options, classes, device,
                                    keep_worst=WORST_KEPT)
                test, worst = outcome.metrics, worst_images(outcome)
                store_image_metrics(session, run_id, run_id, "test", outcome, workspace.root)
                store_worst_predictions(run_dir, "test", outcome)
            metrics = {"history": history, "best_epoch": best_epoch,
                       "selected_by": "val_miou" if splits["val"] else "last_epoch", "val": best_val,
                       "test": test, "train_images": len(splits["train"]), "val_images": len(splits["val"]),
                       "test_images": len(splits["test"]), "world_size": dist.world_size}
            atomic_write_text(run_dir / "metrics.json", json.dumps(metrics, indent=2, sort_keys=True))
            _log(run_dir, f"finished: best epoch {best_epoch}" + (f", test IoU {test['iou']:.4f}" if test else ""))
            run.metrics, run.status, run.finished_at = metrics, "finished", utcnow()
            session.commit()
        loop.barrier(dist)
    except BaseException as e:
        if run is not None:
            session.rollback()
            run.status, run.finished_at = "failed", utcnow()
            session.commit()
            _log(run_dir, f"failed: {type(e).__name__}: {e}")
        raise
    return TrainResult(run_id, best_epoch, options.epochs, best_val, test, history, run_dir / "checkpoint.pt",
                       run_dir, str(device), fingerprint, len(splits["train"]), time.perf_counter() - started,
                       worst or [])


def _evaluate(fn: Any, model: Any, samples: list[Sample], options: TrainOptions, classes: list[str],
              device: Any, keep_worst: int = 0) -> Any:
    workers = 0 if len(samples) < SMALL_EVAL_SET else options.num_workers
    return fn(model, samples, options.image_size, len(classes), device, options.batch_size, workers,
              keep_worst=keep_worst)


def _log(run_dir: Path, line: str) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    stamp = utcnow().strftime("%Y-%m-%dT%H:%M:%SZ")
    with (run_dir / "log").open("a", encoding="utf-8") as f:
        f.write(f"{stamp} {line}\n")
