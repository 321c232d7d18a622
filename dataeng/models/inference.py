"""The one inference path: device, precision, normalisation, test-time augmentation, probabilities.

Every caller that runs a model (evaluation, pseudo-labelling, review pre-fills, label
quality, rounds, ``dataeng predict``) goes through here, so the device choice, the AMP
dtype, the input normalisation and flip TTA are each written once.

- :func:`resolve_device`: ``auto`` -> CUDA, else MPS, else CPU.
- :func:`amp_dtype`: bf16 on CUDA where supported, else fp16; None (float32) elsewhere.
- :func:`normalize`: uint8 RGB on the device -> float, by the encoder's mean and std.
- :func:`model_probabilities`: a torch model's (B, K, h, w) class probabilities.
- :class:`Predictor`: anything that maps uint8 RGB batches to probabilities (a torch
  model: :class:`TorchPredictor`; an ONNX file: ``models.onnx.OnnxPredictor``);
  :func:`tta_probabilities` adds flip TTA to any of them, in one call over both views.
- :func:`resize_probabilities` and :func:`class_mask`: back to the image's own size and
  to a class-index mask, as evaluation decides.
- :func:`predict_batches`: a loader of evaluation batches -> full-size probabilities per item.

Example::

    predictor = TorchPredictor.from_checkpoint(load_checkpoint(path), resolve_device("auto"))
    for item, probs in predict_batches(predictor, eval_loader(samples, predictor.image_size, 8, 0), "flip"):
        mask = class_mask(probs)
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Literal, Protocol

import numpy as np

from dataeng.errors import ModelError
from dataeng.models.checkpoint import model_from_checkpoint

if TYPE_CHECKING:
    import torch

    from dataeng.models.checkpoint import Checkpoint

Tta = Literal["flip", "none"]
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# ---------------------------------------------------------------- device and precision
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


def amp_dtype(device: torch.device) -> torch.dtype | None:
    """The autocast dtype on ``device``: bf16 on CUDA where supported, else fp16; None (float32) off CUDA."""
    import torch

    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


# ---------------------------------------------------------------- normalisation
def preprocessing_params(encoder: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) of an encoder's input, per RGB channel in [0, 1].

    ``tu-`` (timm) encoders take them from timm's pretrained config through smp's
    ``get_preprocessing_params`` (local, no download). smp 0.6 fetches the same
    parameters of its own encoders from the Hugging Face hub, which dataeng never does
    at run time; those encoders all use the ImageNet statistics, returned here directly.
    """
    if encoder.startswith("tu-"):
        from segmentation_models_pytorch.encoders import get_preprocessing_params

        try:
            params = get_preprocessing_params(encoder)
        except (ValueError, KeyError, RuntimeError):  # no pretrained config: the ImageNet statistics
            return IMAGENET_MEAN, IMAGENET_STD
        return tuple(float(v) for v in params["mean"]), tuple(float(v) for v in params["std"])
    return IMAGENET_MEAN, IMAGENET_STD


def normalize(batch_uint8: torch.Tensor, mean: Sequence[float] = IMAGENET_MEAN,
              std: Sequence[float] = IMAGENET_STD) -> torch.Tensor:
    """uint8 (B, 3, H, W) -> float ``(x / 255 - mean) / std``, on the batch's device."""
    import torch

    m = torch.tensor(tuple(mean), device=batch_uint8.device).view(1, 3, 1, 1)
    s = torch.tensor(tuple(std), device=batch_uint8.device).view(1, 3, 1, 1)
    return (batch_uint8.float() / 255.0 - m) / s


def checkpoint_normalisation(meta: dict[str, Any]) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The (mean, std) a checkpoint was trained with (ImageNet for checkpoints that predate the keys)."""
    return tuple(meta.get("mean", IMAGENET_MEAN)), tuple(meta.get("std", IMAGENET_STD))


# ---------------------------------------------------------------- probabilities
def logits_to_probabilities(logits: torch.Tensor) -> torch.Tensor:
    """(B, 1 or K, h, w) logits -> (B, K, h, w) probabilities (K = 2 for one binary logit: background, class)."""
    import torch

    if logits.shape[1] == 1:
        p = torch.sigmoid(logits)
        return torch.cat([1 - p, p], dim=1)
    return torch.softmax(logits, dim=1)


def model_probabilities(model: torch.nn.Module, inputs: torch.Tensor, device: torch.device,
                        mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
                        ) -> torch.Tensor:
    """(B, K, h, w) class probabilities of a uint8 (B, 3, h, w) batch, in inference mode."""
    import torch

    x = normalize(inputs.to(device), mean, std)
    if device.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)
    dtype = amp_dtype(device)
    with torch.inference_mode(), torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
        logits = model(x).float()
    return logits_to_probabilities(logits)


class Predictor(Protocol):
    """Anything that turns a batch of images into class probabilities.

    Attributes:
        classes: foreground class names (probability channel k + 1 is ``classes[k]``).
        image_size: (h, w) the model expects.
        description: a short human-readable name of the backend and model.
    """

    classes: tuple[str, ...]
    image_size: tuple[int, int]
    description: str

    def probabilities(self, batch: np.ndarray) -> np.ndarray:
        """uint8 RGB (B, 3, h, w) -> float32 (B, K, h, w), background first, summing to 1."""
        ...


class TorchPredictor:
    """A PyTorch model as a :class:`Predictor`, in eval mode on its device."""

    def __init__(self, model: torch.nn.Module, classes: Sequence[str], image_size: tuple[int, int],
                 device: torch.device, description: str = "pytorch", mean: Sequence[float] = IMAGENET_MEAN,
                 std: Sequence[float] = IMAGENET_STD) -> None:
        self.model = model.to(device).eval()
        self.classes = tuple(classes)
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.device = device
        self.description = description
        self.mean, self.std = tuple(mean), tuple(std)

    @classmethod
    def from_checkpoint(cls, checkpoint: Checkpoint, device: torch.device) -> TorchPredictor:
        """Rebuild a checkpoint's model on ``device``.

        Raises:
            ModelError: the weights do not fit the architecture the checkpoint names.
        """
        meta = checkpoint.meta
        mean, std = checkpoint_normalisation(meta)
        h, w = meta["image_size"]
        return cls(model_from_checkpoint(checkpoint), meta["classes"], (int(h), int(w)), device,
                   f"pytorch {meta['arch']}/{meta['encoder']} epoch {meta['epoch']} on {device}", mean, std)

    def probabilities_tensor(self, batch: torch.Tensor) -> torch.Tensor:
        """uint8 (B, 3, h, w) tensor -> (B, K, h, w) probabilities on the model's device."""
        return model_probabilities(self.model, batch, self.device, self.mean, self.std)

    def probabilities(self, batch: np.ndarray) -> np.ndarray:
        import torch

        return self.probabilities_tensor(torch.from_numpy(np.ascontiguousarray(batch))).cpu().numpy()


def tta_probabilities(predictor: Predictor, batch: np.ndarray, tta: Tta = "flip") -> np.ndarray:
    """(B, K, h, w) probabilities of a uint8 (B, 3, h, w) batch; with ``flip``, the mean of the
    image's and its mirror's (mirrored back), in one call over both views (one large batch is
    faster than two small ones)."""
    if tta == "none":
        return predictor.probabilities(batch)
    both = predictor.probabilities(np.concatenate([batch, batch[..., ::-1]]))
    n = batch.shape[0]
    return ((both[:n] + both[n:][..., ::-1]) / 2).astype(np.float32, copy=False)


def ensemble_probabilities(predictors: Sequence[Predictor], batch: np.ndarray, tta: Tta = "flip") -> np.ndarray:
    """The mean of several predictors' :func:`tta_probabilities` (cross-validation fold models)."""
    total = tta_probabilities(predictors[0], batch, tta)
    for predictor in predictors[1:]:
        total = total + tta_probabilities(predictor, batch, tta)
    return total / len(predictors)


# ---------------------------------------------------------------- back to the image
def resize_probabilities(probs: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of (h, w) or (K, h, w) float probabilities to ``shape`` (H, W)
    (half-pixel centres, as ``F.interpolate(align_corners=False)``)."""
    import cv2

    if probs.ndim == 2:
        return cv2.resize(probs, (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR)
    out = cv2.resize(np.ascontiguousarray(probs.transpose(1, 2, 0)), (shape[1], shape[0]),
                     interpolation=cv2.INTER_LINEAR)
    return out.reshape(shape[0], shape[1], -1).transpose(2, 0, 1)


def class_mask(probs: np.ndarray) -> np.ndarray:
    """(K, H, W) probabilities to a uint8 class-index mask: for a binary model (K = 2) the
    person where its probability >= 0.5, otherwise the argmax (as evaluation decides)."""
    if probs.shape[0] == 2:
        return (probs[1] >= 0.5).astype(np.uint8)
    return probs.argmax(axis=0).astype(np.uint8)


def predict_batches(predictors: Predictor | Sequence[Predictor], batches: Iterable[dict[str, Any]],
                    tta: Tta = "flip") -> Iterator[tuple[dict[str, Any], np.ndarray | None]]:
    """Full-size probabilities of every item of a stream of evaluation batches.

    Args:
        predictors: one predictor, or several whose probabilities are averaged.
        batches: ``{"input": uint8 (B, 3, h, w) tensor or array, "items": [{"shape", "error", ...}]}``
            as ``engine.learn.data.eval_loader`` yields them.

    Yields:
        (item, (K, H, W) probabilities at the item's ``shape``), or (item, None) for an item
        whose ``error`` is set (it could not be read).
    """
    group = [predictors] if not isinstance(predictors, Sequence) else list(predictors)
    for batch in batches:
        x = batch["input"]
        x = x.numpy() if hasattr(x, "numpy") else np.asarray(x)
        probs = ensemble_probabilities(group, x, tta)
        for k, item in enumerate(batch["items"]):
            if item["error"] is not None:
                yield item, None
            else:
                yield item, resize_probabilities(probs[k], tuple(item["shape"]))
