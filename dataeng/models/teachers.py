"""External teachers: person models dataeng did not train, behind one protocol, registered by name.

A teacher spec names one on the command line (``--teacher``):

- ``mediapipe``: MediaPipe's selfie segmentation (the general 256x256 model bundled in the
  ``mediapipe`` wheel, the ``dataeng[mediapipe]`` extra), run through the MediaPipe Tasks
  ``ImageSegmenter`` on the CPU.
- ``onnx:PATH`` (or any path ending in ``.onnx``): an ONNX person or foreground model.
  A model exported by ``dataeng export model`` carries its contract in its metadata; any
  other model needs a sidecar ``PATH.json`` (or ``<stem>.json``) with :class:`OnnxContract`'s
  fields.

Each adapter is a small class with :meth:`ExternalTeacher.identity` (what the registry
records: kind, name, version, file sha256) and :meth:`ExternalTeacher.predictor` (a
:class:`~dataeng.models.inference.Predictor` giving background/person probabilities),
registered in :data:`TEACHERS` by name, as smp registers its encoders.

Example::

    teacher = external_teacher(parse_spec("mediapipe"), classes=["person"])
    probs = teacher.predictor().probabilities(batch_uint8_nchw)   # (B, 2, 256, 256)
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np

from dataeng.errors import ModelError
from dataeng.models.inference import resize_probabilities
from dataeng.storage import file_sha256

MEDIAPIPE_INSTALL = "pip install 'dataeng[mediapipe]'"


@dataclass(frozen=True)
class TeacherSpec:
    """A teacher as the user names it: its registered kind and, for file-based kinds, the file."""

    kind: str
    path: Path | None = None

    def __str__(self) -> str:
        return self.kind if self.path is None else f"{self.kind}:{self.path}"


@dataclass(frozen=True)
class TeacherIdentity:
    """What the registry records of an external teacher (the ``teacher`` run's config)."""

    kind: str
    name: str
    version: str
    sha256: str
    file: str
    image_size: tuple[int, int]
    classes: tuple[str, ...]
    contract: dict[str, Any] = field(default_factory=dict)

    def as_config(self) -> dict[str, Any]:
        data = asdict(self)
        data["image_size"], data["classes"] = list(self.image_size), list(self.classes)
        return {"teacher": data.pop("kind"), **data}


class ExternalTeacher(Protocol):
    """An external model: who it is, and a predictor of (background, person) probabilities."""

    def identity(self) -> TeacherIdentity: ...

    def predictor(self) -> Any:
        """A :class:`~dataeng.models.inference.Predictor` (CPU)."""
        ...


TEACHERS: dict[str, Callable[[TeacherSpec, Sequence[str]], ExternalTeacher]] = {}
"""Adapter constructors by kind: ``(spec, workspace classes) -> ExternalTeacher``."""


def register(kind: str) -> Callable[[Callable[[TeacherSpec, Sequence[str]], ExternalTeacher]],
                                    Callable[[TeacherSpec, Sequence[str]], ExternalTeacher]]:
    def add(factory: Callable[[TeacherSpec, Sequence[str]], ExternalTeacher]
            ) -> Callable[[TeacherSpec, Sequence[str]], ExternalTeacher]:
        TEACHERS[kind] = factory
        return factory

    return add


def parse_spec(text: str) -> TeacherSpec | None:
    """``mediapipe`` -> that kind; ``onnx:PATH`` or ``*.onnx`` -> the ONNX kind; else None (a run or checkpoint)."""
    value = text.strip()
    kind, sep, rest = value.partition(":")
    if sep and kind.lower() in TEACHERS and kind.lower() != "mediapipe":
        return TeacherSpec(kind.lower(), Path(rest).expanduser())
    if value.lower() in TEACHERS and value.lower() != "onnx":
        return TeacherSpec(value.lower())
    if value.lower().endswith(".onnx"):
        return TeacherSpec("onnx", Path(value).expanduser())
    return None


def external_teacher(spec: TeacherSpec, classes: Sequence[str]) -> ExternalTeacher:
    """The adapter for ``spec``, checked against the workspace's classes.

    Raises:
        ModelError: unknown kind, a missing extra or file, or a model that does not fit.
    """
    factory = TEACHERS.get(spec.kind)
    if factory is None:
        raise ModelError(f"unknown teacher kind (known: {', '.join(sorted(TEACHERS))})", field="teacher",
                         value=spec.kind)
    return factory(spec, classes)


def _one_class(kind: str, classes: Sequence[str]) -> str:
    if len(classes) != 1:
        raise ModelError(f"the {kind} teacher segments one class (a person); this workspace has classes "
                         f"{list(classes)}", field="classes", value=list(classes))
    return classes[0]


# ---------------------------------------------------------------- MediaPipe
MEDIAPIPE_MODEL = Path("modules") / "selfie_segmentation" / "selfie_segmentation.tflite"


def _mediapipe() -> Any:
    os.environ.setdefault("GLOG_minloglevel", "2")  # MediaPipe's C++ logging: warnings and up only
    try:
        import mediapipe
    except ImportError as e:
        raise ModelError(f"the mediapipe teacher needs the mediapipe package: {MEDIAPIPE_INSTALL}",
                         field="teacher", value="mediapipe") from e
    return mediapipe


@register("mediapipe")
class MediaPipeTeacher:
    """MediaPipe selfie segmentation (general model, 256x256), the ``mediapipe`` wheel's own file."""

    IMAGE_SIZE = (256, 256)

    def __init__(self, spec: TeacherSpec, classes: Sequence[str]) -> None:
        self.class_name = _one_class("mediapipe", classes)
        self.mp = _mediapipe()
        self.model_path = Path(self.mp.__file__).parent / MEDIAPIPE_MODEL
        if not self.model_path.is_file():
            raise ModelError(f"this mediapipe ({self.mp.__version__}) does not bundle the selfie segmentation "
                             f"model; install a version that does: {MEDIAPIPE_INSTALL}", path=self.model_path)

    @cache  # noqa: B019  (one adapter per resolved teacher; the file is hashed once)
    def identity(self) -> TeacherIdentity:
        return TeacherIdentity("mediapipe", "mediapipe-selfie-segmentation", str(self.mp.__version__),
                               file_sha256(self.model_path), str(self.model_path), self.IMAGE_SIZE,
                               (self.class_name,))

    def predictor(self) -> MediaPipePredictor:
        return MediaPipePredictor(self.mp, self.model_path, (self.class_name,), self.IMAGE_SIZE)


class MediaPipePredictor:
    """A MediaPipe ``ImageSegmenter`` as a Predictor: one image at a time (its graph takes one)."""

    def __init__(self, mp: Any, model_path: Path, classes: tuple[str, ...], image_size: tuple[int, int]) -> None:
        from mediapipe.tasks.python import vision
        from mediapipe.tasks.python.core.base_options import BaseOptions

        self.mp = mp
        self.classes = classes
        self.image_size = image_size
        self.description = f"mediapipe {mp.__version__} selfie segmentation (CPU)"
        options = vision.ImageSegmenterOptions(base_options=BaseOptions(model_asset_path=str(model_path)),
                                               output_confidence_masks=True, output_category_mask=False)
        with warnings.catch_warnings():  # protobuf's MessageFactory deprecation, inside MediaPipe
            warnings.simplefilter("ignore", UserWarning)
            self.segmenter = vision.ImageSegmenter.create_from_options(options)

    def probabilities(self, batch: np.ndarray) -> np.ndarray:
        out = np.empty((batch.shape[0], 2, batch.shape[2], batch.shape[3]), np.float32)
        for k in range(batch.shape[0]):
            rgb = np.ascontiguousarray(batch[k].transpose(1, 2, 0))
            result = self.segmenter.segment(self.mp.Image(image_format=self.mp.ImageFormat.SRGB, data=rgb))
            person = np.asarray(result.confidence_masks[0].numpy_view(), np.float32)
            if person.shape != rgb.shape[:2]:
                person = resize_probabilities(person, rgb.shape[:2])
            out[k, 1] = np.clip(person, 0.0, 1.0) if np.isfinite(person).all() else person
            out[k, 0] = 1.0 - out[k, 1]
        return out


# ---------------------------------------------------------------- ONNX
@dataclass(frozen=True)
class OnnxContract:
    """How to feed an ONNX segmentation model and read its output (a sidecar JSON's fields).

    Attributes:
        input_size: (height, width) the model takes (resized to; ignored dims of a dynamic model).
        channels: ``RGB`` or ``BGR`` order of the 3 input channels.
        layout: ``NCHW`` or ``NHWC`` of the input.
        scale: inputs are ``pixel / scale`` (255 -> [0, 1]; 1 -> raw 0..255) ...
        mean, std: ... then ``(x - mean) / std`` per channel.
        output: ``logits`` (sigmoid for 1 channel, softmax for several) or ``probabilities``.
        person_channel: the output channel of the person (default: the last one).
    """

    input_size: tuple[int, int]
    channels: Literal["RGB", "BGR"] = "RGB"
    layout: Literal["NCHW", "NHWC"] = "NCHW"
    scale: float = 255.0
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    output: Literal["logits", "probabilities"] = "logits"
    person_channel: int | None = None

    def as_json(self) -> dict[str, Any]:
        """The sidecar's fields (what :meth:`from_json` reads)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_json(cls, data: Any, path: Path) -> OnnxContract:
        """Parse and check a sidecar's contents.

        Raises:
            ModelError: a missing or invalid field, named.
        """
        if not isinstance(data, dict):
            raise ModelError("the ONNX sidecar must be a JSON object", path=path)
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise ModelError(f"unknown sidecar field (known: {', '.join(sorted(known))})", path=path,
                             field=unknown[0], value=data[unknown[0]])

        def check(ok: bool, name: str) -> None:
            if not ok:
                raise ModelError("invalid ONNX contract field", path=path, field=name, value=data.get(name))

        size: Any = data.get("input_size")
        check(isinstance(size, list) and len(size) == 2 and all(isinstance(v, int) and 8 <= v <= 4096 for v in size),
              "input_size")
        for name, allowed in (("channels", ("RGB", "BGR")), ("layout", ("NCHW", "NHWC")),
                              ("output", ("logits", "probabilities"))):
            check(data.get(name, getattr(cls, name)) in allowed, name)
        scale = data.get("scale", 255.0)
        check(isinstance(scale, int | float) and not isinstance(scale, bool) and 0 < scale < 1e6, "scale")
        triples = {}
        for name in ("mean", "std"):
            value = data.get(name, list(getattr(cls, name)))
            check(isinstance(value, list) and len(value) == 3
                  and all(isinstance(v, int | float) and not isinstance(v, bool) and np.isfinite(v) for v in value)
                  and (name == "mean" or all(v > 0 for v in value)), name)
            triples[name] = tuple(float(v) for v in value)
        channel = data.get("person_channel")
        check(channel is None or (isinstance(channel, int) and not isinstance(channel, bool) and channel >= 0),
              "person_channel")
        return cls(input_size=(int(size[0]), int(size[1])), channels=data.get("channels", "RGB"),
                   layout=data.get("layout", "NCHW"), scale=float(scale), mean=triples["mean"],  # type: ignore[arg-type]
                   std=triples["std"], output=data.get("output", "logits"),  # type: ignore[arg-type]
                   person_channel=channel)


def sidecar_path(model: Path) -> Path | None:
    """``model.onnx.json`` or ``model.json`` beside the model, whichever exists first."""
    for candidate in (model.with_name(model.name + ".json"), model.with_suffix(".json")):
        if candidate.is_file():
            return candidate
    return None


@register("onnx")
class OnnxTeacher:
    """Any ONNX person model: dataeng's own export (contract in its metadata) or a sidecar's contract."""

    def __init__(self, spec: TeacherSpec, classes: Sequence[str]) -> None:
        if spec.path is None:
            raise ModelError("an ONNX teacher needs a file: --teacher onnx:PATH", field="teacher", value="onnx")
        self.path = spec.path
        if not self.path.is_file():
            raise ModelError("ONNX teacher file not found", path=self.path, field="teacher")
        self.class_name = _one_class("onnx", classes)
        from dataeng.models.onnx import FORMAT, _session

        self.session = _session(self.path, None)
        props = dict(self.session.get_modelmeta().custom_metadata_map)
        self.own = props.get("dataeng.format") == FORMAT
        self.contract = self._contract()
        self.predictor()  # its inputs and outputs are checked before the teacher is registered

    def _contract(self) -> OnnxContract:
        if self.own:
            from dataeng.models.onnx import OnnxMeta

            meta = OnnxMeta.from_props(dict(self.session.get_modelmeta().custom_metadata_map), self.path)
            if list(meta.classes) != [self.class_name]:
                raise ModelError(f"model segments classes {list(meta.classes)}, this workspace has "
                                 f"{[self.class_name]}", path=self.path, field="classes", value=list(meta.classes))
            return OnnxContract(meta.image_size, "RGB", "NCHW", 255.0, meta.mean, meta.std, "logits", None)
        sidecar = sidecar_path(self.path)
        if sidecar is None:
            raise ModelError(f"not a dataeng export and no sidecar contract: write {self.path.name}.json with "
                             "input_size, channels, layout, scale, mean, std, output, person_channel", path=self.path)
        from dataeng.annotation.formats.jsonfile import load_json

        try:
            data = load_json(sidecar)
        except (ValueError, OSError) as e:
            raise ModelError(f"unreadable sidecar: {e}", path=sidecar) from e
        return OnnxContract.from_json(data, sidecar)

    @cache  # noqa: B019  (one adapter per resolved teacher; the file is hashed once)
    def identity(self) -> TeacherIdentity:
        return TeacherIdentity("onnx", self.path.name, "dataeng-export" if self.own else "sidecar",
                               file_sha256(self.path), str(self.path.resolve()), self.contract.input_size,
                               (self.class_name,), self.contract.as_json())

    def predictor(self) -> ContractOnnxPredictor:
        return ContractOnnxPredictor(self.path, self.session, self.contract, (self.class_name,))


class ContractOnnxPredictor:
    """An ONNX model fed and read by an :class:`OnnxContract`; (background, person) probabilities."""

    def __init__(self, path: Path, session: Any, contract: OnnxContract, classes: tuple[str, ...]) -> None:
        self.path, self.session, self.contract = path, session, contract
        self.classes = classes
        self.image_size = contract.input_size
        self.description = f"onnxruntime {path.name} (external teacher)"
        inputs, outputs = session.get_inputs(), session.get_outputs()
        channel_axis = 1 if contract.layout == "NCHW" else 3
        shape = inputs[0].shape if len(inputs) == 1 else None
        fixed = shape is not None and len(shape) == 4 and isinstance(shape[channel_axis], int)
        if shape is None or len(shape) != 4 or (fixed and shape[channel_axis] != 3):
            raise ModelError(f"not a segmentation model: expected one {contract.layout} input with 3 channels",
                             path=path, field="inputs", value=[(i.name, i.shape) for i in inputs])
        out = outputs[0].shape
        if len(out) not in (3, 4):
            raise ModelError("not a segmentation model: expected an output of rank 3 or 4 (batch, [channels,] "
                             "height, width)", path=path, field="outputs", value=[(o.name, o.shape) for o in outputs])
        self.input_name = inputs[0].name
        self.output_name = outputs[0].name
        order = [2, 1, 0] if contract.channels == "BGR" else [0, 1, 2]
        self._order = order
        self._mean = np.asarray(contract.mean, np.float32).reshape(1, 3, 1, 1)
        self._std = np.asarray(contract.std, np.float32).reshape(1, 3, 1, 1)

    def probabilities(self, batch: np.ndarray) -> np.ndarray:
        c = self.contract
        x = batch[:, self._order].astype(np.float32) / np.float32(c.scale)
        x = (x - self._mean) / self._std
        if c.layout == "NHWC":
            x = x.transpose(0, 2, 3, 1)
        raw = np.asarray(self.session.run([self.output_name], {self.input_name: np.ascontiguousarray(x)})[0],
                         np.float32)
        person = self._person(raw)
        h, w = batch.shape[2], batch.shape[3]
        if person.shape[1:] != (h, w):
            person = np.stack([resize_probabilities(p, (h, w)) for p in person])
        return np.stack([1.0 - person, person], axis=1).astype(np.float32)

    def _person(self, raw: np.ndarray) -> np.ndarray:
        """(B, h, w) person probabilities from a (B, h, w), (B, C, h, w) or (B, h, w, C) output."""
        c = self.contract
        if raw.ndim == 3:
            raw = raw[:, None]
        elif raw.ndim == 4 and raw.shape[1] > 8 >= raw.shape[3]:  # channels last
            raw = raw.transpose(0, 3, 1, 2)
        channels = raw.shape[1]
        index = c.person_channel if c.person_channel is not None else channels - 1
        if index >= channels:
            raise ModelError(f"person_channel {index} but the model outputs {channels} channels", path=self.path,
                             field="person_channel", value=index)
        if c.output == "probabilities":
            return raw[:, index]
        if channels == 1:
            return 1.0 / (1.0 + np.exp(-raw[:, 0]))
        e = np.exp(raw - raw.max(axis=1, keepdims=True))
        return e[:, index] / e.sum(axis=1)


def load_teacher_run_config(config: dict[str, Any], classes: Sequence[str], root: Path) -> ExternalTeacher:
    """The adapter of a registered ``teacher`` run (its file in the workspace for ONNX).

    Raises:
        ModelError: the extra is gone, or the file changed since the run was registered.
    """
    kind = str(config.get("teacher"))
    path = root / str(config["stored_file"]) if config.get("stored_file") else None
    teacher = external_teacher(TeacherSpec(kind, path), classes)
    sha = teacher.identity().sha256
    if config.get("sha256") and sha != config["sha256"]:
        raise ModelError(f"the {kind} teacher's model file changed since it was registered (sha256 "
                         f"{sha[:12]}, registered {str(config['sha256'])[:12]}); register it again with --teacher",
                         path=path, field="sha256")
    return teacher
