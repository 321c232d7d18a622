"""Training losses: segmentation (BCE/CE + Dice), matting (L1, gradient, composition) and the
consistency loss of semi-supervised training.

Conventions shared by every loss here:
- ``target`` is a (B, H, W) long tensor of class indices with ``ignore_index`` pixels;
  ignored pixels contribute nothing to any term (their weight is forced to 0).
- ``weight`` is an optional (B, H, W) float per-pixel weight: 1 for human pixels, the
  teacher's confidence for pseudo-labelled ones.
- One class -> ``logits`` has 1 channel (binary, sigmoid); N classes -> N + 1 channels
  (softmax, background first).

The pixel terms are averaged over *valid* (non-ignored) pixels, not over the weight
sum: a low-confidence pixel then counts for less instead of being renormalised back up.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dataeng.annotation.types import IGNORE_INDEX

_EPS = 1.0


def _valid_weight(target: torch.Tensor, weight: torch.Tensor | None, ignore_index: int) -> torch.Tensor:
    valid = (target != ignore_index).float()
    return valid if weight is None else valid * weight.float()


def foreground_probability(logits: torch.Tensor) -> torch.Tensor:
    """(B, H, W) probability of "any class" (1 - background) from binary or softmax logits."""
    if logits.shape[1] == 1:
        return torch.sigmoid(logits[:, 0].float())
    return 1.0 - torch.softmax(logits.float(), dim=1)[:, 0]


def dice_loss(probs: torch.Tensor, onehot: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Soft Dice over the batch, per channel, averaged: 1 - (2|PT| + 1) / (|P| + |T| + 1).

    Args:
        probs, onehot: (B, C, H, W) probabilities and 0/1 targets.
        weight: (B, H, W) pixel weights (0 on ignored pixels).
    """
    w = weight.unsqueeze(1)
    inter = (probs * onehot * w).sum(dim=(0, 2, 3))
    denom = ((probs + onehot) * w).sum(dim=(0, 2, 3))
    return (1.0 - (2.0 * inter + _EPS) / (denom + _EPS)).mean()


def segmentation_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None = None,
    ignore_index: int = IGNORE_INDEX,
    soft: bool = False,
) -> torch.Tensor:
    """BCE + Dice (1 output channel) or CE + Dice (several), with ignore index and pixel weights.

    Args:
        logits: (B, C, H, W) raw model outputs, C = 1 or number of classes + 1.
        target: (B, H, W) class indices; ``ignore_index`` pixels are skipped.
        weight: optional (B, H, W) per-pixel weights in [0, 1].
        ignore_index: the mask value that is neither background nor a class.
        soft: with one output channel and ``weight`` given, read ``weight`` as the confidence of the
            target class (1 for human pixels, the teacher's top probability for pseudo pixels) and
            learn the teacher's probability of the person, ``weight`` or ``1 - weight``, unweighted
            (distillation); ignored pixels stay out. Several channels ignore it.

    Returns:
        A scalar: the pixel term (mean over valid pixels) plus the Dice term.

    Example::

        loss = segmentation_loss(model(x), y, weight=conf)
    """
    logits = logits.float()
    w = _valid_weight(target, weight, ignore_index)
    n_valid = (target != ignore_index).sum().clamp(min=1)
    safe_target = torch.where(target == ignore_index, torch.zeros_like(target), target)
    if logits.shape[1] == 1:
        fg = (safe_target > 0).float()
        if soft and weight is not None:
            confidence = weight.float()
            fg = torch.where(safe_target > 0, confidence, 1.0 - confidence)
            w = (target != ignore_index).float()
        pixel = F.binary_cross_entropy_with_logits(logits[:, 0], fg, reduction="none")
        dice = dice_loss(torch.sigmoid(logits), fg.unsqueeze(1), w)
    else:
        pixel = F.cross_entropy(logits, safe_target, reduction="none")
        onehot = F.one_hot(safe_target, logits.shape[1]).permute(0, 3, 1, 2).float()
        # Dice over the foreground classes only; background Dice is ~1 and says little.
        dice = dice_loss(torch.softmax(logits, dim=1)[:, 1:], onehot[:, 1:], w)
    return (pixel * w).sum() / n_valid + dice


def consistency_loss(logits: torch.Tensor, target: torch.Tensor, confident: torch.Tensor,
                     valid: torch.Tensor) -> torch.Tensor:
    """The unlabelled loss of semi-supervised training: a view's pixel loss (BCE with one output
    channel, else CE) against the weak view's class ``target`` on its ``confident`` pixels, summed
    and divided by the ``valid`` pixels (as UniMatch does: an image with few confident pixels
    weighs less, rather than being renormalised back up). No Dice term, as in the papers.

    Args:
        logits: (B, C, H, W); target: (B, H, W) class indices; confident, valid: (B, H, W) bool.
    """
    logits = logits.float()
    if logits.shape[1] == 1:
        pixel = F.binary_cross_entropy_with_logits(logits[:, 0], (target > 0).float(), reduction="none")
    else:
        pixel = F.cross_entropy(logits, target, reduction="none")
    return (pixel * (confident & valid).float()).sum() / valid.sum().clamp(min=1)


def _sobel(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    kx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], device=x.device) / 8.0
    k = torch.stack([kx, kx.t()]).unsqueeze(1)
    g = F.conv2d(F.pad(x.unsqueeze(1), (1, 1, 1, 1), mode="replicate"), k)
    return g[:, 0], g[:, 1]


def matting_loss(
    pred_alpha: torch.Tensor,
    alpha: torch.Tensor,
    image: torch.Tensor,
    valid: torch.Tensor,
) -> torch.Tensor:
    """L1 + gradient + composition loss on alpha mattes, averaged over valid pixels.

    The composition term composites the (normalised) image over black with the
    predicted and the true alpha and compares the two (no separate foreground or
    background is stored, so this is the usual single-image approximation).

    Args:
        pred_alpha: (B, H, W) predicted alpha in [0, 1].
        alpha: (B, H, W) true alpha in [0, 1].
        image: (B, 3, H, W) the network input.
        valid: (B, H, W) 1 where the pixel has a matte and is not ignored, else 0.

    Returns:
        A scalar; 0 when no pixel is valid.
    """
    valid = valid.float()
    n = valid.sum().clamp(min=1)
    l1 = ((pred_alpha - alpha).abs() * valid).sum() / n
    pgx, pgy = _sobel(pred_alpha)
    tgx, tgy = _sobel(alpha)
    grad = (((pgx - tgx).abs() + (pgy - tgy).abs()) * valid).sum() / n
    comp = (((pred_alpha - alpha).unsqueeze(1) * image).abs().mean(dim=1) * valid).sum() / n
    return l1 + grad + comp


def training_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None,
    kind: str,
    alpha: torch.Tensor | None = None,
    has_alpha: torch.Tensor | None = None,
    image: torch.Tensor | None = None,
    ignore_index: int = IGNORE_INDEX,
    soft: bool = False,
) -> torch.Tensor:
    """The loss the train loop uses: segmentation, plus matting terms where mattes exist.

    Args:
        kind: ``segmentation`` or ``matting`` (``TrainConfig.loss``).
        alpha, has_alpha, image: (B, H, W) mattes, (B,) bool, (B, 3, H, W) inputs; only
            used by ``matting``.
    """
    loss = segmentation_loss(logits, target, weight, ignore_index, soft)
    if kind == "matting" and alpha is not None and has_alpha is not None and image is not None \
            and bool(has_alpha.any()):
        valid = (target != ignore_index).float() * has_alpha.float().view(-1, 1, 1)
        loss = loss + matting_loss(foreground_probability(logits), alpha.float(), image.float(), valid)
    return loss
