"""Losses: ignore index, pixel weights, one or several classes, matting terms."""

from __future__ import annotations

import pytest
import torch

from dataeng.annotation.types import IGNORE_INDEX
from dataeng.models.losses import matting_loss, segmentation_loss, training_loss


def _batch(channels: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, channels, 16, 16, generator=g)
    target = torch.randint(0, max(2, channels), (2, 16, 16), generator=g)
    return logits, target


def test_ignored_pixels_do_not_change_loss_or_gradient():
    for channels in (1, 3):
        logits, target = _batch(channels)
        target[:, :4] = IGNORE_INDEX
        base = segmentation_loss(logits, target)
        changed = logits.clone()
        changed[:, :, :4] = 50.0  # wildly wrong where ignored
        changed.requires_grad_(True)
        loss = segmentation_loss(changed, target)
        assert torch.allclose(loss, base, atol=1e-6)
        loss.backward()
        assert changed.grad is not None and changed.grad[:, :, :4].abs().max() == 0


def test_zero_weight_equals_ignore_for_the_pixel_term():
    logits, target = _batch(1)
    w = torch.ones(2, 16, 16)
    w[:, :4] = 0
    ignored = target.clone()
    ignored[:, :4] = IGNORE_INDEX
    # same pixel terms; the mean is over valid pixels, so compare sums via the pixel count
    l_w = segmentation_loss(logits, target, w)
    l_i = segmentation_loss(logits, ignored)
    assert l_w < segmentation_loss(logits, target)
    assert torch.isfinite(l_w) and torch.isfinite(l_i)


def test_perfect_prediction_has_low_loss():
    _, target = _batch(1)
    target = (target > 0).long()
    logits = (target.float() * 2 - 1).unsqueeze(1) * 20
    assert segmentation_loss(logits, target) < 0.01
    t3 = torch.randint(0, 3, (2, 16, 16))
    logits3 = torch.nn.functional.one_hot(t3, 3).permute(0, 3, 1, 2).float() * 30
    assert segmentation_loss(logits3, t3) < 0.01


def test_all_ignored_is_finite_zero_pixel_term():
    logits, target = _batch(1)
    target[:] = IGNORE_INDEX
    loss = segmentation_loss(logits, target)
    assert torch.isfinite(loss) and loss < 1e-6


def test_matting_loss_zero_for_exact_alpha_and_positive_otherwise():
    alpha = torch.rand(2, 16, 16)
    image = torch.randn(2, 3, 16, 16)
    valid = torch.ones(2, 16, 16)
    assert matting_loss(alpha, alpha, image, valid) == 0
    assert matting_loss(alpha.flip(-1), alpha, image, valid) > 0
    assert matting_loss(alpha.flip(-1), alpha, image, torch.zeros_like(valid)) == 0


def test_training_loss_adds_matting_terms_only_with_mattes():
    logits, target = _batch(1)
    image = torch.randn(2, 3, 16, 16)
    alpha = torch.rand(2, 16, 16)
    seg = training_loss(logits, target, None, "segmentation")
    none = training_loss(logits, target, None, "matting", alpha, torch.tensor([False, False]), image)
    some = training_loss(logits, target, None, "matting", alpha, torch.tensor([True, False]), image)
    assert torch.allclose(seg, none) and some > seg


def test_soft_targets_learn_the_teachers_probability() -> None:
    import torch

    from dataeng.models.losses import segmentation_loss

    target = torch.ones(1, 4, 4, dtype=torch.long)
    human = torch.ones(1, 4, 4)

    def loss(p: float, weight: torch.Tensor, soft: bool) -> float:
        logits = torch.full((1, 1, 4, 4), float(torch.logit(torch.tensor(p))))
        return float(segmentation_loss(logits, target, weight, soft=soft))

    # Human pixels (weight 1): soft is the hard loss.
    assert loss(0.7, human, True) == pytest.approx(loss(0.7, human, False))
    # A pseudo pixel whose teacher said 0.7: soft prefers 0.7, hard (confidence-weighted) prefers 1.
    pseudo = torch.full((1, 4, 4), 0.7)
    assert loss(0.7, pseudo, True) < loss(0.999, pseudo, True)
    assert loss(0.999, pseudo, False) < loss(0.7, pseudo, False)
    # Ignored pixels stay out of the soft loss too.
    ignored = target.clone()
    ignored[0, :2] = IGNORE_INDEX
    logits = torch.zeros(1, 1, 4, 4, requires_grad=True)
    segmentation_loss(logits, ignored, pseudo, soft=True).backward()
    assert logits.grad is not None and (logits.grad[0, 0, :2] == 0).all() and (logits.grad[0, 0, 2:] != 0).all()
