"""Online semi-supervised training: the loss of one step on a labelled and an unlabelled batch.

FixMatch (Sohn et al. 2020) and UniMatch (Yang et al., CVPR 2023), adapted to segmentation:

- The weak view of each unlabelled image goes through the network in the same forward pass
  as the labelled batch; its prediction, detached, is the target. Pixels whose confidence
  (the top class probability) is below ``semi_threshold`` or that lie outside the image
  (``valid``) are left out.
- Strong views (the same crop with photometric noise) must reproduce that target. A strong
  view that carries a CutMix box takes the box from the next image of the batch (images and
  targets rolled by one), so a batch mixes with itself and needs no second weak pass.
- ``fixmatch``: one strong view. ``unimatch``: two strong views (their losses averaged) and
  the feature-perturbed stream on the weak view, weighted ``semi_fp_weight`` against the
  strong views' ``1 - semi_fp_weight``. One call of :class:`dataeng.models.perturb.SemiNet`
  computes every stream (one forward per backward, as DDP requires).
- The step's loss is the labelled loss (the usual one: pseudo-labels keep their pixel
  weights) plus ``semi_weight`` times the unlabelled loss.

Example::

    settings = SemiSettings.of(options)          # None when options.semi == "none"
    out = semi_step_loss(training.model, x, labelled_loss_fn, unlabelled_batch, settings)  # model: a SemiNet
    out.loss.backward()
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from dataeng.models.inference import normalize
from dataeng.models.losses import consistency_loss

VIEWS = {"fixmatch": 1, "unimatch": 2}
"""Strong views per unlabelled image."""


@dataclass(frozen=True)
class SemiSettings:
    """The ``semi_*`` options a step needs."""

    method: str
    threshold: float
    weight: float
    fp_weight: float
    fp_dropout: float
    cutmix: float
    ratio: float

    @property
    def views(self) -> int:
        return VIEWS[self.method]

    @classmethod
    def of(cls, options: Any) -> SemiSettings | None:
        """From TrainOptions; None when ``semi`` is ``none``."""
        if options.semi == "none":
            return None
        return cls(options.semi, options.semi_threshold, options.semi_weight, options.semi_fp_weight,
                   options.semi_fp_dropout, options.semi_cutmix, options.semi_ratio)

    def batch_size(self, labelled_batch: int) -> int:
        return max(1, round(self.ratio * labelled_batch))


@dataclass
class UnlabelledBatch:
    """An unlabelled batch on the device: normalised weak (B, 3, H, W) and strong views (V, B, 3, H, W),
    CutMix boxes (V, B, H, W) and valid pixels (B, H, W), both bool."""

    weak: torch.Tensor
    strong: torch.Tensor
    boxes: torch.Tensor
    valid: torch.Tensor


def prepare_unlabelled(batch: dict[str, torch.Tensor], device: torch.device, channels_last: bool,
                       mean: Sequence[float], std: Sequence[float]) -> UnlabelledBatch:
    nb = device.type == "cuda"
    weak = normalize(batch["weak"].to(device, non_blocking=nb), mean, std)
    strong = batch["strong"].to(device, non_blocking=nb).transpose(0, 1)  # (V, B, 3, H, W)
    views, b = strong.shape[:2]
    strong = normalize(strong.reshape(views * b, *strong.shape[2:]), mean, std).reshape(strong.shape)
    if channels_last:
        weak = weak.contiguous(memory_format=torch.channels_last)
    return UnlabelledBatch(weak, strong, batch["boxes"].to(device, non_blocking=nb).transpose(0, 1).bool(),
                           batch["valid"].to(device, non_blocking=nb).bool())


def weak_targets(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(class index, confidence) per pixel of detached logits: sigmoid for one channel, else softmax."""
    logits = logits.detach().float()
    if logits.shape[1] == 1:
        p = torch.sigmoid(logits[:, 0])
        target = (p >= 0.5).long()
        return target, torch.where(target > 0, p, 1.0 - p)
    conf, target = torch.softmax(logits, dim=1).max(dim=1)
    return target, conf


def cutmix(boxes: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Paste each item's (B, H, W) box from the next item of the batch (rolled by one): images
    (B, C, H, W), or planes (B, H, W) such as targets, confidences and valid pixels."""
    box = boxes.unsqueeze(1) if values.dim() == 4 else boxes
    return torch.where(box, values.roll(1, dims=0), values)


@dataclass
class StepLoss:
    """One step's loss and its detached parts (unlabelled loss, share of confident valid weak pixels)."""

    loss: torch.Tensor
    unlabelled: torch.Tensor
    confident_share: torch.Tensor


def semi_step_loss(net: Callable[..., Any], x: torch.Tensor, labelled_loss: Callable[[torch.Tensor], torch.Tensor],
                   u: UnlabelledBatch, settings: SemiSettings) -> StepLoss:
    """The loss of one semi-supervised step (forward passes included; call under autocast).

    Args:
        net: a :class:`SemiNet` (under DDP or not).
        x: the normalised labelled batch; ``labelled_loss`` maps its logits to the labelled loss.
        u: the unlabelled batch.
    """
    n = x.shape[0]
    perturb = u.weak.shape[0] if settings.method == "unimatch" else 0
    mixed = torch.cat([cutmix(u.boxes[v], u.strong[v]) for v in range(settings.views)])
    logits, perturbed, strong_logits = net(torch.cat([x, u.weak]), perturb_last=perturb, strong=mixed)
    target, conf = weak_targets(logits[n:])
    confident = conf >= settings.threshold
    strong = torch.stack([
        consistency_loss(out, cutmix(box, target), cutmix(box, confident), cutmix(box, u.valid))
        for out, box in zip(strong_logits.chunk(settings.views), u.boxes, strict=True)]).mean()
    if perturbed is not None:
        unlabelled = ((1 - settings.fp_weight) * strong
                      + settings.fp_weight * consistency_loss(perturbed, target, confident, u.valid))
    else:
        unlabelled = strong
    share = (confident & u.valid).sum() / u.valid.sum().clamp(min=1)
    loss = labelled_loss(logits[:n]) + settings.weight * unlabelled
    return StepLoss(loss, unlabelled.detach(), share.detach().float())
