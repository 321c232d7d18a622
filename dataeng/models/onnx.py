"""ONNX export of a segmentation model, and inference through onnxruntime.

The exported graph is the bare model: input ``input`` float32 (B, 3, H, W), RGB scaled
to [0, 1] then normalised with the ``normalization`` mean/std; output ``logits``
(B, 1 or C + 1, H, W). Everything a consumer needs to use it (classes, image_size,
arch, encoder, normalisation, activation) is stored in the ONNX ``metadata_props``,
so ``dataeng predict --onnx`` (and any other runtime) needs nothing else.

The batch axis is always dynamic; ``dynamic=True`` makes height and width dynamic too
(any multiple of 32). Export checks the graph with ``onnx.checker`` and its outputs
against PyTorch (max abs difference of the logits within :data:`PARITY_ATOL`).

Example::

    result = export_onnx(model, ckpt.meta, Path("person.onnx"), dynamic=True)
    predictor = OnnxPredictor.load(Path("person.onnx"), expected_classes=["person"])
    probs = predictor.probabilities(batch_uint8_nchw)   # (B, K, H, W) float32
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from dataeng.errors import ModelError
from dataeng.storage import atomic_write

if TYPE_CHECKING:
    import torch

FORMAT = "dataeng-segmentation"
FORMAT_VERSION = 1
INPUT_NAME = "input"
OUTPUT_NAME = "logits"
OPSET = 17
PARITY_ATOL = 1e-4
"""Largest max-abs difference of the logits (fp32) that export accepts against PyTorch."""
STRIDE = 32
"""Spatial sizes must be multiples of this (the encoder's total downsampling)."""


@dataclass(frozen=True)
class OnnxMeta:
    """What the ONNX ``metadata_props`` say about the model (all values JSON strings there)."""

    classes: tuple[str, ...]
    image_size: tuple[int, int]
    arch: str
    encoder: str
    encoder_depth: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    activation: Literal["sigmoid", "softmax"]
    dynamic: bool
    precision: Literal["fp32", "int8"] = "fp32"
    source: str = ""

    def to_props(self) -> dict[str, str]:
        """The metadata as ONNX ``metadata_props`` (string keys and JSON string values)."""
        return {
            "dataeng.format": FORMAT, "dataeng.version": str(FORMAT_VERSION),
            "classes": json.dumps(list(self.classes)), "image_size": json.dumps(list(self.image_size)),
            "arch": self.arch, "encoder": self.encoder, "encoder_depth": str(self.encoder_depth),
            "normalization": json.dumps({"scale": "1/255", "mean": list(self.mean), "std": list(self.std),
                                         "layout": "NCHW", "channels": "RGB"}),
            "activation": self.activation, "output": f"{OUTPUT_NAME}: background first unless 1 channel",
            "dynamic": json.dumps(self.dynamic), "precision": self.precision, "source": self.source,
        }

    @classmethod
    def from_props(cls, props: dict[str, str], path: Path) -> OnnxMeta:
        """Parse ``metadata_props`` written by :meth:`to_props`.

        Raises:
            ModelError: the file was not exported by dataeng, or a field is malformed.
        """
        if props.get("dataeng.format") != FORMAT:
            raise ModelError("not a dataeng segmentation model (no metadata_props 'dataeng.format'); "
                             "export one with `dataeng export model RUN --onnx FILE`", path=path,
                             field="metadata_props", value=sorted(props)[:8])
        if int(props.get("dataeng.version", "0")) > FORMAT_VERSION:
            raise ModelError(f"exported by a newer dataeng (reads version {FORMAT_VERSION})", path=path,
                             field="dataeng.version", value=props.get("dataeng.version"))
        try:
            norm = json.loads(props["normalization"])
            classes = tuple(str(c) for c in json.loads(props["classes"]))
            h, w = (int(v) for v in json.loads(props["image_size"]))
            activation = props["activation"]
            if activation not in ("sigmoid", "softmax") or not classes:
                raise ValueError(f"activation {activation!r}, classes {classes!r}")
            return cls(classes=classes, image_size=(h, w), arch=props["arch"], encoder=props["encoder"],
                       encoder_depth=int(props.get("encoder_depth", "5")),
                       mean=tuple(float(v) for v in norm["mean"]),  # type: ignore[arg-type]
                       std=tuple(float(v) for v in norm["std"]),  # type: ignore[arg-type]
                       activation=activation,  # type: ignore[arg-type]
                       dynamic=bool(json.loads(props.get("dynamic", "false"))),
                       precision="int8" if props.get("precision") == "int8" else "fp32",
                       source=props.get("source", ""))
        except (KeyError, ValueError, TypeError) as e:
            raise ModelError(f"malformed dataeng metadata: {e}", path=path, field="metadata_props") from e


@dataclass(frozen=True)
class ExportResult:
    """A written ONNX file and the parity check that accepted it.

    Attributes:
        parity_max_diff: largest |ONNX - PyTorch| of the logits over ``parity_sizes``.
        parity_sizes: the (batch, height, width) inputs compared.
    """

    path: Path
    meta: OnnxMeta
    parity_max_diff: float
    parity_sizes: tuple[tuple[int, int, int], ...]


def _rgb(values: Sequence[float]) -> tuple[float, float, float]:
    r, g, b = (float(v) for v in values)
    return r, g, b


def meta_from_checkpoint(meta: dict[str, Any], dynamic: bool, mean: Sequence[float],
                         std: Sequence[float], source: str = "") -> OnnxMeta:
    """The ONNX metadata of a model described by checkpoint metadata (``Checkpoint.meta``),
    fed inputs normalised with ``mean``/``std`` (after scaling to [0, 1])."""
    classes = tuple(meta["classes"])
    h, w = (int(v) for v in meta["image_size"])
    return OnnxMeta(classes=classes, image_size=(h, w), arch=str(meta["arch"]), encoder=str(meta["encoder"]),
                    encoder_depth=int(meta.get("encoder_depth", 5)), mean=_rgb(mean), std=_rgb(std),
                    activation="sigmoid" if len(classes) == 1 else "softmax", dynamic=dynamic, source=source)


def parity_sizes(meta: OnnxMeta) -> tuple[tuple[int, int, int], ...]:
    """Inputs export compares: the model's size (batch 1 and 2), plus two other, non-square
    multiples of 32 when the spatial axes are dynamic."""
    h, w = meta.image_size
    sizes = [(1, h, w), (2, h, w)]
    if meta.dynamic:
        sizes += [(1, h + STRIDE, w), (2, max(STRIDE, h - STRIDE), w + 2 * STRIDE)]
    return tuple(sizes)


def export_onnx(model: torch.nn.Module, meta: OnnxMeta, out: Path, seed: int = 0) -> ExportResult:
    """Export ``model`` to ``out`` (atomically), check it, and compare it with PyTorch.

    Args:
        model: the PyTorch model (moved to CPU and eval mode).
        meta: written into ``metadata_props``; ``meta.dynamic`` picks dynamic H/W.
        seed: seed of the random parity inputs.

    Returns:
        The path, metadata and the largest logit difference found.

    Raises:
        ModelError: the exporter or ``onnx.checker`` refuses the model, or the outputs
            differ from PyTorch by more than :data:`PARITY_ATOL`.
    """
    import onnx
    import torch

    model = model.cpu().eval()
    h, w = meta.image_size
    axes = {0: "batch", 2: "height", 3: "width"} if meta.dynamic else {0: "batch"}
    max_diff = float("nan")

    def write(tmp: Path) -> None:
        try:
            # dynamo=False: the TorchScript exporter needs no onnxscript and handles smp models.
            torch.onnx.export(model, (torch.zeros(1, 3, h, w),), str(tmp), dynamo=False, opset_version=OPSET,
                              input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                              dynamic_axes={INPUT_NAME: axes, OUTPUT_NAME: axes})
            proto = onnx.load(str(tmp))
            set_metadata(proto, meta)
            onnx.checker.check_model(proto, full_check=True)
            onnx.save(proto, str(tmp))
        except (RuntimeError, onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
            raise ModelError(f"ONNX export failed: {str(e).splitlines()[0]}", path=out) from e
        diff = _parity(model, tmp, parity_sizes(meta), seed)
        if not diff <= PARITY_ATOL:
            raise ModelError(f"ONNX outputs differ from PyTorch by {diff:.3g} (tolerance {PARITY_ATOL})",
                             path=out, field="parity", value=diff)
        nonlocal max_diff
        max_diff = diff

    atomic_write(out, write)
    return ExportResult(out, meta, max_diff, parity_sizes(meta))


def _parity(model: torch.nn.Module, path: Path, sizes: tuple[tuple[int, int, int], ...], seed: int) -> float:
    import torch

    session = _session(path, threads=None)
    g = torch.Generator().manual_seed(seed)
    worst = 0.0
    for b, h, w in sizes:
        x = torch.randn(b, 3, h, w, generator=g)
        with torch.inference_mode():
            want = model(x).numpy()
        got = session.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})[0]
        worst = max(worst, float(np.abs(want - got).max()))
    return worst


def set_metadata(proto: Any, meta: OnnxMeta) -> None:
    """Replace the ``metadata_props`` of an ``onnx.ModelProto`` with ``meta``'s."""
    del proto.metadata_props[:]
    for key, value in meta.to_props().items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.producer_name = "dataeng"


def quantize_int8(fp32: Path, out: Path, meta: OnnxMeta) -> OnnxMeta:
    """Dynamic int8 quantisation (weights int8, activations quantised at run time).

    Returns:
        The metadata written to ``out`` (``precision="int8"``).

    Raises:
        ModelError: onnxruntime cannot quantise the graph.
    """
    import dataclasses

    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    _onnxruntime()

    int8_meta = dataclasses.replace(meta, precision="int8")

    def write(tmp: Path) -> None:
        root = logging.getLogger()
        level = root.level
        # quantize_dynamic logs a pre-processing hint on the root logger at every call.
        root.setLevel(logging.ERROR)
        try:
            quantize_dynamic(str(fp32), str(tmp), weight_type=QuantType.QInt8)
        except (RuntimeError, ValueError, onnx.checker.ValidationError) as e:
            raise ModelError(f"int8 quantisation failed: {e}", path=out) from e
        finally:
            root.setLevel(level)
        proto = onnx.load(str(tmp))
        # quantize_dynamic drops the original metadata_props.
        set_metadata(proto, int8_meta)
        onnx.save(proto, str(tmp))

    atomic_write(out, write)
    return int8_meta


def _onnxruntime() -> Any:
    """onnxruntime with its telemetry events switched off (dataeng sends nothing anywhere)."""
    import onnxruntime as ort

    ort.disable_telemetry_events()
    return ort


def _session(path: Path, threads: int | None) -> Any:
    ort = _onnxruntime()
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    options.log_severity_level = 3  # warnings about unused initialisers are noise here
    try:
        return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as e:
        raise ModelError(f"not a loadable ONNX model: {str(e).splitlines()[0][:200]}", path=path) from e


class OnnxPredictor:
    """Class probabilities from an exported ONNX model, through onnxruntime (CPU).

    Implements the ``Predictor`` interface of ``dataeng.engine.serve.predict``:
    ``probabilities(batch)`` takes uint8 RGB (B, 3, H, W) at ``image_size`` (any multiple
    of 32 when exported with dynamic spatial axes) and returns float32 (B, K, H, W)
    probabilities, K = 2 (background, class) for one class, else C + 1.
    """

    def __init__(self, path: Path, session: Any, meta: OnnxMeta) -> None:
        self.path = path
        self.session = session
        self.meta = meta
        self.classes = meta.classes
        self.image_size = meta.image_size
        self.description = f"onnxruntime {path.name} ({meta.precision}, {meta.arch}/{meta.encoder})"
        self._mean = np.asarray(meta.mean, np.float32).reshape(1, 3, 1, 1)
        self._std = np.asarray(meta.std, np.float32).reshape(1, 3, 1, 1)

    @classmethod
    def load(cls, path: Path, expected_classes: list[str] | tuple[str, ...] | None = None,
             threads: int | None = None) -> OnnxPredictor:
        """Open an ONNX file written by :func:`export_onnx` and check it is what we expect.

        Args:
            expected_classes: refuse a model of other classes (``None``: any).
            threads: onnxruntime intra-op threads (``None``: one per core).

        Raises:
            ModelError: missing file, not ONNX, not a dataeng segmentation model, other
                classes, or inputs/outputs of the wrong shape.
        """
        if not path.is_file():
            raise ModelError("ONNX file not found", path=path)
        session = _session(path, threads)
        meta = OnnxMeta.from_props(dict(session.get_modelmeta().custom_metadata_map), path)
        if expected_classes is not None and list(meta.classes) != list(expected_classes):
            raise ModelError(f"model segments classes {list(meta.classes)}, expected {list(expected_classes)}",
                             path=path, field="classes", value=list(meta.classes))
        inputs, outputs = session.get_inputs(), session.get_outputs()
        channels = 1 if len(meta.classes) == 1 else len(meta.classes) + 1
        if len(inputs) != 1 or len(inputs[0].shape) != 4 or inputs[0].shape[1] != 3:
            raise ModelError("expected one input of shape (batch, 3, height, width)", path=path, field="inputs",
                             value=[(i.name, i.shape) for i in inputs])
        if len(outputs) != 1 or len(outputs[0].shape) != 4 or outputs[0].shape[1] != channels:
            raise ModelError(f"expected one output of shape (batch, {channels}, height, width) for classes "
                             f"{list(meta.classes)}", path=path, field="outputs",
                             value=[(o.name, o.shape) for o in outputs])
        return cls(path, session, meta)

    def probabilities(self, batch: np.ndarray) -> np.ndarray:
        """(B, K, H, W) float32 probabilities of a uint8 (B, 3, H, W) RGB batch."""
        x = (batch.astype(np.float32) / np.float32(255.0) - self._mean) / self._std
        logits = self.session.run([OUTPUT_NAME], {self.session.get_inputs()[0].name: x})[0]
        return logits_to_probabilities(logits)


def logits_to_probabilities(logits: np.ndarray) -> np.ndarray:
    """(B, 1 or K, H, W) logits -> (B, K, H, W) probabilities; one channel becomes
    (background, class) through a sigmoid, several through a softmax (numpy twin of
    ``engine.evaluate.predict_probabilities``)."""
    logits = logits.astype(np.float32, copy=False)
    if logits.shape[1] == 1:
        p = 1.0 / (1.0 + np.exp(-logits))
        return np.concatenate([1.0 - p, p], axis=1)
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)
