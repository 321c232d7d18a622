"""The one training loop: distributed setup, model, loader, optimiser, schedule, :func:`fit`.

``train`` (run bookkeeping, validation, checkpoints) and the label-quality fold models
both train through :func:`prepare` and :func:`fit`; the benchmark drives the same step.

- AdamW; learning rate: linear warm-up over ``warmup_epochs`` then cosine to zero,
  stepped per batch.
- On CUDA only: autocast to bf16 where supported (no scaler needed), else fp16 with a
  GradScaler; channels-last memory format. CPU and MPS run in float32.
- DDP when launched by torchrun (``WORLD_SIZE`` > 1): gloo on CPU, nccl on CUDA.
- With ``semi`` on, each step also draws an unlabelled batch (:mod:`.unlabelled`) and adds
  its consistency loss (:mod:`.semi`); epochs stay counted in labelled batches.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from dataeng.engine.learn.data import set_epoch, train_loader
from dataeng.engine.learn.options import TrainOptions
from dataeng.engine.learn.samples import Sample
from dataeng.engine.learn.semi import SemiSettings, prepare_unlabelled, semi_step_loss
from dataeng.engine.learn.unlabelled import unlabelled_loader
from dataeng.models.factory import build_model as build
from dataeng.models.inference import amp_dtype, normalize, preprocessing_params, resolve_device
from dataeng.models.losses import training_loss
from dataeng.progress import NullProgress, Progress

if TYPE_CHECKING:
    import torch


@dataclass
class Dist:
    """This process's place in a torchrun job (world_size 1 without torchrun)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    initialised: bool = field(default=False, repr=False)

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device_name: str) -> tuple[Dist, torch.device]:
    """Join the torchrun process group when launched by torchrun; pick this rank's device."""
    import torch
    import torch.distributed as tdist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist(), resolve_device(device_name)
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_name)
    if device.type == "cuda":
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    if not tdist.is_initialized():
        tdist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return Dist(rank, world, local, True), device


def shutdown_distributed(dist: Dist) -> None:
    import torch.distributed as tdist

    if dist.initialised and tdist.is_initialized():
        tdist.destroy_process_group()


def barrier(dist: Dist) -> None:
    if dist.initialised:
        import torch.distributed as tdist

        tdist.barrier()


def broadcast(dist: Dist, value: Any) -> Any:
    """Rank 0's ``value`` on every rank."""
    if not dist.initialised:
        return value
    import torch.distributed as tdist

    box = [value]
    tdist.broadcast_object_list(box, src=0)
    return box[0]


def lr_factor(step: int, warmup_steps: int, total_steps: int) -> float:
    """Multiplier of the base learning rate: linear warm-up, then cosine to zero."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


@dataclass
class Optimisation:
    """Optimiser, per-step scheduler and AMP state of one run."""

    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: Any | None
    amp_dtype: torch.dtype | None
    channels_last: bool


def make_optimisation(model: torch.nn.Module, device: torch.device, lr: float, weight_decay: float,
                      warmup_epochs: float, epochs: int, steps_per_epoch: int) -> Optimisation:
    """AdamW + warm-up/cosine LambdaLR, and AMP settings for ``device`` (CUDA only)."""
    import torch

    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    total = epochs * steps_per_epoch
    warmup = round(warmup_epochs * steps_per_epoch)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, warmup, total))
    dtype = amp_dtype(device)
    scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None
    return Optimisation(optimizer, scheduler, scaler, dtype, device.type == "cuda")


def prepare_batch(batch: dict[str, Any], device: torch.device, channels_last: bool,
                  mean: Sequence[float], std: Sequence[float]
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(normalised image, long mask, weight in [0, 1], alpha in [0, 1], has_alpha) on ``device``."""
    import torch

    nb = device.type == "cuda"
    x = normalize(batch["image"].to(device, non_blocking=nb), mean, std)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = batch["mask"].to(device, non_blocking=nb).long()
    w = batch["weight"].to(device, non_blocking=nb).float() / 255.0
    a = batch["alpha"].to(device, non_blocking=nb).float() / 255.0
    return x, y, w, a, batch["has_alpha"].to(device)


@dataclass
class Training:
    """What one training job trains: the model (``module``), the network a step calls (``net``:
    the module, or its :class:`SemiNet` wrapper for semi-supervised runs; ``model`` is ``net`` under DDP
    when launched by torchrun, else ``net`` itself), its loaders, optimisation, device and input
    statistics. ``unlabelled`` is the unlabelled loader when ``semi`` is set and there are
    unlabelled images."""

    module: torch.nn.Module
    loader: Any
    opt: Optimisation
    device: torch.device
    loss: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    model: Any = None
    world_size: int = 1
    soft: bool = False
    net: Any = None
    unlabelled: Any = None
    semi: SemiSettings | None = None

    def __post_init__(self) -> None:
        if self.net is None:
            self.net = self.module
        if self.model is None:
            self.model = self.net


@dataclass(frozen=True)
class EpochStats:
    """One finished epoch of :func:`fit`."""

    epoch: int
    epochs: int
    train_loss: float
    lr: float
    seconds: float
    samples_per_s: float
    samples_seen: int
    unlabelled_loss: float | None = None
    confident_share: float | None = None
    """Semi-supervised runs: the mean unlabelled loss, and the mean share of weak-view pixels
    confident enough to supervise the strong views."""


def build_model(options: TrainOptions, classes: Sequence[str]) -> torch.nn.Module:
    """The model ``options`` describe, its weights seeded by ``options.seed`` without disturbing the
    caller's global generator."""
    import torch


    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(options.seed)
        return build(options.arch, options.encoder, len(classes), options.encoder_weights, options.encoder_depth)


def prepare(options: TrainOptions, classes: Sequence[str], samples: Sequence[Sample], device: torch.device, *,
            seed: int | None = None, num_workers: int | None = None, distributed: bool = False,
            unlabelled: Sequence[Sample] = ()) -> Training:
    """Model, loaders and optimisation for training on ``samples`` with ``options`` for ``options.epochs``.

    Args:
        seed: the loader's seed (default ``options.seed``; the weights always use ``options.seed``).
        num_workers: loader workers (default ``options.num_workers``).
        distributed: under torchrun, each rank draws its share of every epoch.
        unlabelled: images without labels for ``options.semi`` (ignored when it is ``none``; with
            none given the run trains supervised).
    """
    import torch

    from dataeng.models.perturb import SemiNet

    model = build_model(options, classes).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    seed = options.seed if seed is None else seed
    workers = options.num_workers if num_workers is None else num_workers
    loader = train_loader(samples, options.image_size, options.batch_size, seed, workers, options.strong_augment,
                          options.augment, distributed=distributed, pin_memory=device.type == "cuda",
                          human_share=options.human_share)
    opt = make_optimisation(model, device, options.lr, options.weight_decay, options.warmup_epochs,
                            options.epochs, len(loader))
    mean, std = preprocessing_params(options.encoder)
    semi = SemiSettings.of(options) if unlabelled else None
    net: torch.nn.Module = model
    u_loader = None
    if semi is not None:
        net = SemiNet(model, semi.fp_dropout)
        u_loader = unlabelled_loader(unlabelled, options.image_size, semi.batch_size(options.batch_size),
                                     len(loader), seed, workers, semi.views, semi.cutmix, distributed=distributed,
                                     pin_memory=device.type == "cuda")
    return Training(model, loader, opt, device, options.loss, mean, std, soft=options.pseudo_targets == "soft",
                    net=net, unlabelled=u_loader, semi=semi)


def train_step(training: Training, batch: dict[str, Any], unlabelled: dict[str, Any] | None = None
               ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """One optimisation step, semi-supervised when ``unlabelled`` is given.

    Returns:
        (loss, unlabelled loss, share of confident weak pixels), detached; the last two are None
        without an unlabelled batch.
    """
    import torch

    opt, device = training.opt, training.device
    x, y, w, a, has_alpha = prepare_batch(batch, device, opt.channels_last, training.mean, training.std)

    def labelled_loss(logits: torch.Tensor) -> torch.Tensor:
        return training_loss(logits, y, w, training.loss, a, has_alpha, x, soft=training.soft)

    u_loss = share = None
    with torch.autocast(device.type, dtype=opt.amp_dtype or torch.float32, enabled=opt.amp_dtype is not None):
        if unlabelled is not None and training.semi is not None:
            u = prepare_unlabelled(unlabelled, device, opt.channels_last, training.mean, training.std)
            step = semi_step_loss(training.model, x, labelled_loss, u, training.semi)
            loss, u_loss, share = step.loss, step.unlabelled, step.confident_share
        else:
            loss = labelled_loss(training.model(x))
    opt.optimizer.zero_grad(set_to_none=True)
    if opt.scaler is not None:
        opt.scaler.scale(loss).backward()
        opt.scaler.step(opt.optimizer)
        opt.scaler.update()
    else:
        loss.backward()
        opt.optimizer.step()
    opt.scheduler.step()
    return loss.detach(), u_loss, share


def train_epoch(training: Training, epoch: int, epochs: int, progress: Progress) -> EpochStats:
    """Train one epoch, advancing ``progress`` by one step per batch (loss, lr, img/s; with semi on
    also the unlabelled loss and the share of confident pixels).

    Samples per second count labelled and unlabelled images over all ranks; ``samples_seen``
    counts the labelled ones (the sample budget's unit).
    """
    import torch

    training.model.train()
    set_epoch(training.loader, epoch)
    steps = len(training.loader)
    unlabelled: Any = [None] * steps
    if training.unlabelled is not None:
        set_epoch(training.unlabelled, epoch)
        unlabelled = training.unlabelled
    total = torch.zeros((), device=training.device)
    u_total = torch.zeros((), device=training.device)
    share_total = torch.zeros((), device=training.device)
    seen = u_seen = reported = 0
    start = time.perf_counter()
    # Reading the loss forces a device sync; on CUDA do it only every few steps.
    sync_every = 1 if training.device.type == "cpu" else 20
    for step, (batch, ubatch) in enumerate(zip(training.loader, unlabelled, strict=True)):
        loss, u_loss, share = train_step(training, batch, ubatch)
        total += loss
        seen += int(batch["image"].shape[0])
        fields: dict[str, Any] = {}
        if u_loss is not None and share is not None:
            u_total += u_loss
            share_total += share
            u_seen += int(ubatch["weak"].shape[0])
        if step % sync_every == 0 or step == steps - 1:
            elapsed = time.perf_counter() - start
            if u_loss is not None:
                fields = {"u_loss": float(u_loss), "confident": float(share)}  # type: ignore[arg-type]
            progress.advance(step + 1 - reported, epoch=f"{epoch}/{epochs}", loss=float(loss), **fields,
                             lr=current_lr(training.opt),
                             img_per_s=(seen + u_seen) * training.world_size / max(elapsed, 1e-9))
            reported = step + 1
    seconds = time.perf_counter() - start
    semi = u_seen > 0
    return EpochStats(epoch, epochs, float(total) / max(steps, 1), current_lr(training.opt), seconds,
                      (seen + u_seen) * training.world_size / max(seconds, 1e-9), seen * training.world_size,
                      float(u_total) / steps if semi else None, float(share_total) / steps if semi else None)


def fit(training: Training, epochs: int, *, start_epoch: int = 1, progress: Progress | None = None,
        after_epoch: Callable[[EpochStats], None] | None = None) -> list[EpochStats]:
    """Train epochs ``start_epoch..epochs``; ``after_epoch`` runs after each (validation, checkpoints).

    ``progress`` gets one task over every remaining step, advanced per batch.

    Returns:
        The stats of the epochs trained, in order.
    """
    progress = progress or NullProgress()
    steps = len(training.loader)
    progress.task("training", (epochs - start_epoch + 1) * steps)
    out = []
    for epoch in range(start_epoch, epochs + 1):
        stats = train_epoch(training, epoch, epochs, progress)
        out.append(stats)
        if after_epoch is not None:
            after_epoch(stats)
    return out


def current_lr(opt: Optimisation) -> float:
    return float(opt.optimizer.param_groups[0]["lr"])


def rng_state() -> dict[str, Any]:
    """The torch RNG states, saved with each checkpoint (the loop itself draws from seeded
    generators; this covers anything in a model that uses the global one, e.g. dropout)."""
    import torch

    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any] | None) -> None:
    import torch

    if not state:
        return
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
