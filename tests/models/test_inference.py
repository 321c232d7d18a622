"""The one inference path: TTA in one call, ensembles, precision, normalisation, back to full size."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from dataeng.models.inference import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    TorchPredictor,
    amp_dtype,
    ensemble_probabilities,
    normalize,
    predict_batches,
    preprocessing_params,
    tta_probabilities,
)


class _Recording:
    """A predictor whose person probability is the column index / width; records each call's batch size."""

    classes = ("person",)
    image_size = (4, 8)
    description = "recording"

    def __init__(self) -> None:
        self.calls: list[int] = []

    def probabilities(self, batch: np.ndarray) -> np.ndarray:
        self.calls.append(batch.shape[0])
        b, _, h, w = batch.shape
        fg = np.broadcast_to(np.arange(w, dtype=np.float32) / w, (b, h, w))
        return np.stack([1 - fg, fg], axis=1)


def test_flip_tta_is_one_call_over_both_views_and_averages_the_mirror() -> None:
    predictor = _Recording()
    batch = np.zeros((3, 3, 4, 8), np.uint8)
    probs = tta_probabilities(predictor, batch, "flip")
    assert predictor.calls == [6]
    w = 8
    want = (np.arange(w) / w + np.arange(w)[::-1] / w) / 2  # the column ramp and its mirror, mirrored back
    np.testing.assert_allclose(probs[0, 1, 0], want, atol=1e-6)
    assert tta_probabilities(predictor, batch, "none").shape == (3, 2, 4, 8) and predictor.calls[-1] == 3


def test_an_ensemble_is_the_mean_of_its_members() -> None:
    a, b = _Recording(), _Recording()
    batch = np.zeros((1, 3, 4, 8), np.uint8)
    np.testing.assert_allclose(ensemble_probabilities([a, b], batch, "none"), tta_probabilities(a, batch, "none"))


def test_predict_batches_resizes_each_item_back_and_passes_unreadable_ones() -> None:
    batch: dict[str, Any] = {"input": torch.zeros((2, 3, 4, 8), dtype=torch.uint8),
                             "items": [{"index": 0, "shape": (8, 16), "error": None},
                                       {"index": 1, "shape": (4, 8), "error": "cannot read image"}]}
    out = list(predict_batches(_Recording(), [batch], "none"))
    assert out[0][1] is not None and out[0][1].shape == (2, 8, 16)
    assert out[1][1] is None and out[1][0]["error"] == "cannot read image"


def test_cpu_runs_in_float32_and_normalisation_is_per_channel() -> None:
    assert amp_dtype(torch.device("cpu")) is None
    x = torch.full((1, 3, 2, 2), 255, dtype=torch.uint8)
    out = normalize(x, (0.5, 0.5, 0.5), (0.5, 0.25, 1.0))
    assert out[0, :, 0, 0].tolist() == pytest.approx([1.0, 2.0, 0.5])
    assert preprocessing_params("resnet18") == (IMAGENET_MEAN, IMAGENET_STD)  # no hub download
    mean, std = preprocessing_params("tu-mobilenetv3_small_100")  # timm's local config
    assert len(mean) == 3 and len(std) == 3


def test_a_torch_model_and_its_predictor_agree() -> None:
    class Bright(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x[:, :1] * 20.0

    predictor = TorchPredictor(Bright(), ["person"], (4, 4), torch.device("cpu"))
    batch = np.zeros((1, 3, 4, 4), np.uint8)
    batch[..., :2] = 255
    probs = predictor.probabilities(batch)
    assert probs.shape == (1, 2, 4, 4) and probs.dtype == np.float32
    assert (probs[0, 1, :, :2] > 0.99).all() and (probs[0, 1, :, 2:] < 0.01).all()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-6)
