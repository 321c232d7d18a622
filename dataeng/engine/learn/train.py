"""Train a model on the registry and register the run.

``train`` trains on the train split's active labels (human and accepted pseudo),
selects the epoch with the best val mIoU (val images with an active human label),
evaluates that checkpoint once on test, and records everything in a ``runs`` row and
in ``runs/<id>/``: config.json, checkpoint.pt (best on val), last.pt (at every
validation, for ``--resume``), metrics.json and log. Validation runs every epoch, or every
``val_every`` train images when epochs are tiny.

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

import json
import time
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dataeng.config import TrainConfig
from dataeng.db.schema import Run, utcnow
from dataeng.engine.learn import loop
from dataeng.engine.learn.evaluate import (
    WORST_KEPT,
    EvalOutcome,
    evaluate_samples,
    store_image_metrics,
    store_worst_predictions,
    worst_images,
)
from dataeng.engine.learn.options import TrainOptions, budgeted, resolve_options
from dataeng.engine.learn.provenance import code_version, dataset_fingerprint
from dataeng.engine.learn.samples import Sample, registry_samples, unlabelled_samples
from dataeng.engine.lifecycle import lifecycle
from dataeng.errors import DataEngError, ModelError
from dataeng.models.checkpoint import Checkpoint, check_compatible, load_checkpoint, load_weights, save_checkpoint
from dataeng.models.factory import check_names
from dataeng.models.inference import TorchPredictor
from dataeng.progress import NullProgress, Progress
from dataeng.storage import atomic_write_text

if TYPE_CHECKING:
    import torch
    from sqlalchemy.orm import Session

    from dataeng.workspace import Workspace

SMALL_EVAL_SET = 32  # below this many images, evaluate in the main process (no worker start-up)


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


def train(
    workspace: Workspace,
    session: Session,
    overrides: dict[str, Any] | None = None,
    *,
    resume: int | None = None,
    round: int | None = None,
    teacher_run_id: int | None = None,
    progress: Progress | None = None,
) -> TrainResult:
    """Train, select on val, test once, register the run.

    Args:
        workspace: the open workspace (config defaults, run folders).
        session: a session this function commits per validation (open it with
            ``workspace.new_session()``; the caller closes it).
        overrides: TrainOptions fields to change (None values are ignored), e.g.
            ``{"epochs": 3, "encoder": "resnet34", "strong_augment": True}``.
        resume: continue this run from its last.pt (its stored options are used; only
            ``device`` and ``num_workers`` may be overridden).
        round, teacher_run_id: recorded on the run (set by ``dataeng round``).
        progress: one bar over every step (loss, lr, img/s); one note per epoch (rank 0 only).

    Returns:
        The finished run's :class:`TrainResult` (on every rank; only rank 0's is complete).

    Raises:
        DataEngError: no labelled train images, or the labels changed since a resumed run began.
        ModelError: bad architecture/encoder/weights, or a checkpoint that does not fit.
        ConfigError: an invalid option.
    """
    resume_run = _resume_run(session, resume) if resume is not None else None
    if resume_run is not None:
        stored = {k: v for k, v in resume_run.config.items() if k in TrainOptions.model_fields}
        keep = {k: v for k, v in (overrides or {}).items() if k in ("device", "num_workers") and v is not None}
        options = resolve_options(TrainConfig(), {**stored, **keep})
        round, teacher_run_id = resume_run.round, resume_run.teacher_run_id
    else:
        options = resolve_options(workspace.config.train, overrides)
    classes = list(workspace.config.classes)

    check_names(options.arch, options.encoder)  # fail fast, before reading the registry

    splits = {s: registry_samples(workspace, session, s) for s in ("train", "val", "test")}
    unlabelled = unlabelled_samples(workspace, session) if options.semi != "none" else []
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

    init = (init_checkpoint(workspace, session, options, classes)
            if options.init_run is not None and resume_run is None else None)
    dist, device = loop.init_distributed(options.device)
    try:
        job = _Job(workspace, session, options, classes, splits, fingerprint, dist, device,
                   progress if dist.is_main and progress is not None else NullProgress(), unlabelled, init)
        return job.run(resume_run, round, teacher_run_id)
    finally:
        loop.shutdown_distributed(dist)


def init_checkpoint(workspace: Workspace, session: Session, options: TrainOptions, classes: list[str]) -> Checkpoint:
    """The best checkpoint of ``options.init_run``, checked against the model these options build.

    Raises:
        ModelError: no finished train run with that id, or one of another arch, encoder, depth or classes.
    """
    run = session.get(Run, options.init_run)
    if run is None or run.kind != "train" or run.status != "finished" or not run.checkpoint_path:
        raise ModelError("no finished train run with this id to start from", field="init_run",
                         value=options.init_run)
    ckpt = load_checkpoint(workspace.root / run.checkpoint_path)
    check_compatible(ckpt, options.arch, options.encoder, classes, options.encoder_depth)
    return ckpt


def _resume_run(session: Session, run_id: int) -> Run:
    run = session.get(Run, run_id)
    if run is None or run.kind != "train":
        raise ModelError("no train run with this id to resume", field="resume", value=run_id)
    if run.status == "finished":
        raise ModelError("run already finished; nothing to resume", field="resume", value=run_id)
    return run


@dataclass
class _Job:
    """One training run's state between epochs: selection on val, checkpoints, the run row."""

    workspace: Workspace
    session: Session
    options: TrainOptions
    classes: list[str]
    splits: dict[str, list[Sample]]
    fingerprint: str
    dist: loop.Dist
    device: torch.device
    progress: Progress
    unlabelled: list[Sample]
    init: Checkpoint | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int = 0
    best_miou: float = -1.0
    seen_since_val: int = 0

    def run(self, resume_run: Run | None, round: int | None, teacher_run_id: int | None) -> TrainResult:
        import torch


        started = time.perf_counter()
        options, dist = self.options, self.dist
        # The model is built before the run row exists: a model that cannot be built registers nothing.
        self.training = loop.prepare(options, self.classes, self.splits["train"], self.device,
                                     distributed=dist.world_size > 1, unlabelled=self.unlabelled)
        self.training.world_size = dist.world_size
        if self.init is not None:
            load_weights(self.training.module, self.init)  # every rank: DDP starts from the same weights
        run = resume_run or Run(kind="train", round=round, teacher_run_id=teacher_run_id, code_version=code_version(),
                                dataset_fingerprint=self.fingerprint,
                                config={**options.model_dump(mode="json"), "classes": self.classes,
                                        "world_size": dist.world_size})
        run.device = str(self.device)
        scope: AbstractContextManager[Run] = (lifecycle(self.session, run, on_fail=self._failed) if dist.is_main
                                              else nullcontext(run))
        with scope:
            run_id = loop.broadcast(dist, run.id if dist.is_main else None)
            self.run_row, self.run_dir = run, self.workspace.run_dir(run_id)
            self.meta = {"arch": options.arch, "encoder": options.encoder, "encoder_depth": options.encoder_depth,
                         "classes": self.classes, "image_size": list(options.image_size), "run_id": run_id,
                         "mean": list(self.training.mean), "std": list(self.training.std)}
            start_epoch = 1
            if resume_run is not None:
                ckpt = load_checkpoint(self.run_dir / "last.pt")
                check_compatible(ckpt, options.arch, options.encoder, self.classes)
                load_weights(self.training.module, ckpt)
                opt = self.training.opt
                opt.optimizer.load_state_dict(ckpt.optimizer)  # type: ignore[arg-type]
                opt.scheduler.load_state_dict(ckpt.scheduler)
                if opt.scaler is not None and ckpt.scaler:
                    opt.scaler.load_state_dict(ckpt.scaler)
                loop.set_rng_state(ckpt.rng)
                start_epoch = int(ckpt.meta["epoch"]) + 1
                self.history = list(ckpt.meta.get("history", []))
                self.best_epoch = int(ckpt.meta.get("best_epoch", 0))
                self.best_miou = float(ckpt.meta.get("best_miou", -1.0))
            if dist.world_size > 1:
                # An encoder cut to fewer than 5 stages keeps its later stages' weights, which no forward
                # reaches: DDP must be told, or it waits for their gradients from the second step on.
                self.training.model = torch.nn.parallel.DistributedDataParallel(
                    self.training.net, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                    find_unused_parameters=options.encoder_depth < 5)
            if dist.is_main:
                self._start_files(resume_run is not None, start_epoch)
            loop.fit(self.training, options.epochs, start_epoch=start_epoch, progress=self.progress,
                     after_epoch=self._after_epoch)
            test = worst = None
            best_val = self.history[self.best_epoch - 1]["val"] if self.history and self.best_epoch else None
            if dist.is_main:
                test, worst = self._finish(run, best_val)
            loop.barrier(dist)
        return TrainResult(run_id, self.best_epoch, options.epochs, best_val, test, self.history,
                           self.run_dir / "checkpoint.pt", self.run_dir, str(self.device), self.fingerprint,
                           len(self.splits["train"]), time.perf_counter() - started, worst or [])

    def _failed(self, run: Run, error: BaseException) -> None:
        _log(self.workspace.run_dir(run.id), f"failed: {type(error).__name__}: {error}")

    def _start_files(self, resumed: bool, start_epoch: int) -> None:
        atomic_write_text(self.run_dir / "config.json", json.dumps(self.run_row.config, indent=2, sort_keys=True))
        atomic_write_text(self.run_dir / "dataset.json", json.dumps(
            {s: [x.label_id for x in v] for s, v in self.splits.items()} | {"fingerprint": self.fingerprint}))
        _log(self.run_dir, f"{'resume' if resumed else 'start'} run {self.run_row.id} at epoch {start_epoch} on "
                           f"{self.device} x{self.dist.world_size}; {len(self.splits['train'])} train, "
                           f"{len(self.splits['val'])} val, {len(self.splits['test'])} test images"
                           + (f"; from the weights of run {self.options.init_run}" if self.options.init_run else "")
                           + self._semi_note())

    def _semi_note(self) -> str:
        if self.options.semi == "none":
            return ""
        if not self.unlabelled:
            return f"; semi = {self.options.semi}, but no unlabelled train images: training supervised"
        return f"; semi = {self.options.semi} on {len(self.unlabelled)} unlabelled train images"

    def _evaluate(self, split: str, keep_worst: int = 0) -> EvalOutcome:

        samples = self.splits[split]
        predictor = TorchPredictor(self.training.module, self.classes, self.options.image_size, self.device,
                                   mean=self.training.mean, std=self.training.std)
        workers = 0 if len(samples) < SMALL_EVAL_SET else self.options.num_workers
        return evaluate_samples(predictor, samples, len(self.classes), self.options.batch_size, workers,
                                keep_worst=keep_worst)

    def _after_epoch(self, stats: loop.EpochStats) -> None:
        """Rank 0: validate and keep checkpoints when due (every epoch, or every ``val_every`` images)."""
        if self.dist.is_main:
            self.seen_since_val += stats.samples_seen
            every = self.options.val_every
            due = every == 0 or self.seen_since_val >= every or stats.epoch == stats.epochs
            val, is_best = None, False
            if due:
                self.seen_since_val = 0
                if self.splits["val"]:
                    self.progress.advance(0, phase="validating")
                    val = self._evaluate("val").metrics
                is_best = val is None or float(val["miou"]) > self.best_miou
                if is_best:
                    self.best_epoch, self.best_miou = stats.epoch, float(val["miou"]) if val else -1.0
            entry: dict[str, Any] = {"epoch": stats.epoch, "train_loss": stats.train_loss, "lr": stats.lr,
                                     "seconds": stats.seconds, "samples_per_s": stats.samples_per_s, "val": val}
            if stats.unlabelled_loss is not None:
                entry |= {"unlabelled_loss": stats.unlabelled_loss, "confident_share": stats.confident_share}
            self.history.append(entry)
            if due:
                opt = self.training.opt
                epoch_meta = {**self.meta, "epoch": stats.epoch, "history": self.history,
                              "best_epoch": self.best_epoch, "best_miou": self.best_miou}
                if is_best:
                    save_checkpoint(self.run_dir / "checkpoint.pt", self.training.module, {**epoch_meta, "val": val})
                    self.run_row.checkpoint_path = str((self.run_dir / "checkpoint.pt").relative_to(
                        self.workspace.root))
                save_checkpoint(self.run_dir / "last.pt", self.training.module, epoch_meta, opt.optimizer,
                                opt.scheduler, opt.scaler, loop.rng_state())
                self.run_row.metrics = {"history": self.history, "best_epoch": self.best_epoch}
                self.session.commit()
            semi = ("" if stats.unlabelled_loss is None else
                    f" unlabelled loss {stats.unlabelled_loss:.4f} confident {stats.confident_share:.1%}")
            line = (f"epoch {stats.epoch}/{stats.epochs}: loss {stats.train_loss:.4f}{semi} lr {stats.lr:.2e} "
                    f"{stats.samples_per_s:.1f} img/s" + (f", val mIoU {val['miou']:.4f}" if val else "")
                    + (" *best*" if is_best else ""))
            _log(self.run_dir, line)
            self.progress.note(line)
        loop.barrier(self.dist)

    def _finish(self, run: Run, best_val: dict[str, Any] | None) -> tuple[dict[str, Any] | None,
                                                                          list[dict[str, Any]] | None]:
        """Rank 0: test the best checkpoint once, write metrics.json, fill the run row."""
        test = worst = None
        load_weights(self.training.module, load_checkpoint(self.run_dir / "checkpoint.pt"))
        if self.splits["test"]:
            self.progress.advance(0, phase="testing")
            outcome = self._evaluate("test", keep_worst=WORST_KEPT)
            test, worst = outcome.metrics, worst_images(outcome)
            store_image_metrics(self.session, run.id, run.id, "test", outcome, self.workspace.root)
            store_worst_predictions(self.run_dir, "test", outcome)
        splits = self.splits
        metrics = {"history": self.history, "best_epoch": self.best_epoch,
                   "selected_by": "val_miou" if splits["val"] else "last_epoch", "val": best_val, "test": test,
                   "train_images": len(splits["train"]), "val_images": len(splits["val"]),
                   "test_images": len(splits["test"]), "world_size": self.dist.world_size,
                   "unlabelled_images": len(self.unlabelled) if self.training.semi is not None else 0}
        atomic_write_text(self.run_dir / "metrics.json", json.dumps(metrics, indent=2, sort_keys=True))
        _log(self.run_dir, f"finished: best epoch {self.best_epoch}"
             + (f", test IoU {test['iou']:.4f}" if test else ""))
        run.metrics = metrics
        return test, worst


def _log(run_dir: Path, line: str) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    stamp = utcnow().strftime("%Y-%m-%dT%H:%M:%SZ")
    with (run_dir / "log").open("a", encoding="utf-8") as f:
        f.write(f"{stamp} {line}\n")
