"""The training loop's mechanics: device, distributed setup, optimiser, schedule, one epoch.

Kept apart from engine/train.py (which talks to the registry and the run folder) so the
benchmark and the tests can drive the same step the engine uses.

- AdamW; learning rate: linear warm-up over ``warmup_epochs`` then cosine to zero,
  stepped per batch.
- On CUDA only: autocast to bf16 where supported (no scaler needed), else fp16 with a
  GradScaler; channels-last memory format. CPU and MPS run in float32.
- DDP when launched by torchrun (``WORLD_SIZE`` > 1): gloo on CPU, nccl on CUDA.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from dataeng.engine.data import normalize, set_epoch
from dataeng.errors import ModelError
from dataeng.models.losses import training_loss

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class StepInfo:
    """Progress of one optimisation step, for a progress display."""

    epoch: int
    epochs: int
    step: int
    steps: int
    loss: float
    lr: float
    samples_per_s: float


@dataclass(frozen=True)
class EpochInfo:
    """One finished epoch (``val`` is None without a val set or on ranks > 0)."""

    epoch: int
    epochs: int
    train_loss: float
    lr: float
    seconds: float
    samples_per_s: float
    val: dict[str, Any] | None
    best: bool


@dataclass
class Callbacks:
    """Hooks a caller (the CLI's progress bar) can attach; all optional."""

    on_start: Callable[[int, int, int], None] | None = None  # (first epoch, epochs, steps per epoch)
    on_step: Callable[[StepInfo], None] | None = None
    on_epoch: Callable[[EpochInfo], None] | None = None
    on_phase: Callable[[str], None] | None = None  # "validating", "testing"


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


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA, else MPS, else CPU; an explicit device must exist.

    Raises:
        ModelError: ``cuda``/``mps`` requested but not available.
    """
    import torch

    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ModelError("CUDA is not available on this machine (use --device cpu or auto)", field="device",
                         value=name)
    if name == "mps" and not torch.backends.mps.is_available():
        raise ModelError("MPS is not available on this machine", field="device", value=name)
    return torch.device(name)


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
    amp_dtype = scaler = None
    if device.type == "cuda":
        amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        if amp_dtype == torch.float16:
            scaler = torch.amp.GradScaler("cuda")
    return Optimisation(optimizer, scheduler, scaler, amp_dtype, device.type == "cuda")


def prepare_batch(batch: dict[str, Any], device: torch.device, channels_last: bool
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(normalised image, long mask, weight in [0, 1], alpha in [0, 1], has_alpha) on ``device``."""
    import torch

    nb = device.type == "cuda"
    x = normalize(batch["image"].to(device, non_blocking=nb))
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = batch["mask"].to(device, non_blocking=nb).long()
    w = batch["weight"].to(device, non_blocking=nb).float() / 255.0
    a = batch["alpha"].to(device, non_blocking=nb).float() / 255.0
    return x, y, w, a, batch["has_alpha"].to(device)


def train_step(model: torch.nn.Module, opt: Optimisation, batch: dict[str, Any], device: torch.device,
               loss_kind: str) -> torch.Tensor:
    """One optimisation step; returns the (detached) loss."""
    import torch

    x, y, w, a, has_alpha = prepare_batch(batch, device, opt.channels_last)
    with torch.autocast(device.type, dtype=opt.amp_dtype or torch.float32, enabled=opt.amp_dtype is not None):
        logits = model(x)
    loss = training_loss(logits, y, w, loss_kind, a, has_alpha, x)
    opt.optimizer.zero_grad(set_to_none=True)
    if opt.scaler is not None:
        opt.scaler.scale(loss).backward()
        opt.scaler.step(opt.optimizer)
        opt.scaler.update()
    else:
        loss.backward()
        opt.optimizer.step()
    opt.scheduler.step()
    return loss.detach()


def train_epoch(model: torch.nn.Module, loader: Any, opt: Optimisation, device: torch.device, epoch: int,
                epochs: int, loss_kind: str, callbacks: Callbacks, world_size: int = 1
                ) -> tuple[float, float, float]:
    """Train one epoch.

    Returns:
        (mean loss, seconds, samples per second over all ranks).
    """
    import torch

    model.train()
    set_epoch(loader, epoch)
    steps = len(loader)
    total = torch.zeros((), device=device)
    seen = 0
    start = time.perf_counter()
    # Reading the loss forces a device sync; on CUDA do it only every few steps.
    sync_every = 1 if device.type == "cpu" else 20
    for step, batch in enumerate(loader):
        loss = train_step(model, opt, batch, device, loss_kind)
        total += loss
        seen += int(batch["image"].shape[0])
        if callbacks.on_step is not None and (step % sync_every == 0 or step == steps - 1):
            elapsed = time.perf_counter() - start
            callbacks.on_step(StepInfo(epoch, epochs, step + 1, steps, float(loss), current_lr(opt),
                                       seen * world_size / max(elapsed, 1e-9)))
    seconds = time.perf_counter() - start
    return float(total) / max(steps, 1), seconds, seen * world_size / max(seconds, 1e-9)


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
