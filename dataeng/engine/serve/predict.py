"""Predict person masks, soft alpha, cutouts or new backgrounds for any images; export models.

Every image, of any size and aspect ratio (EXIF orientation applied), is resized to the
model's ``image_size``; the foreground probability (1 - P(background)) is resized back
bilinearly to the image's own size, so a mask thresholded at 0.5 there has smooth,
sharp edges rather than the model's blocky grid. Optionally a guided filter (He et al.)
snaps the soft alpha to the image's edges near the boundary. The array kernels (guided
filter, compositing) are in :mod:`.compositing`; export is in :mod:`.model_export` and
``models/onnx.py``.

Models are behind one interface, :class:`dataeng.models.inference.Predictor`:
``probabilities(batch)`` maps a uint8 RGB (B, 3, H, W) batch at ``image_size`` to float32
(B, K, H, W) probabilities, K = 2 (background, class) for one class. ``TorchPredictor``
wraps a checkpoint, ``dataeng.models.onnx.OnnxPredictor`` an exported ONNX file
(onnxruntime); both run through the one inference path (flip TTA included).

Images stream through in batches: inputs are walked lazily, only one batch of decoded
images is alive at a time, and nothing per image is kept except the names of refused
or skipped files.

Example::

    predictor = load_predictor(onnx=Path("person.onnx"), expected_classes=["person"])
    result = predict(predictor, [Path("photos")], Path("out"), PredictOptions(output="cutout"))
    result.written, result.problems
"""

from __future__ import annotations

import os
import tempfile
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

from dataeng.annotation.masks import ALPHA_MAX, to_uint8_alpha, write_alpha, write_mask
from dataeng.engine.ingest.inspect_image import IMAGE_EXTENSIONS
from dataeng.engine.learn.data import model_input
from dataeng.engine.learn.runs import RunRef, resolve_run
from dataeng.engine.serve.compositing import composite, fit_background, foreground, refine_alpha
from dataeng.errors import DataEngError, InputError
from dataeng.models.checkpoint import load_checkpoint
from dataeng.models.inference import (
    Predictor,
    TorchPredictor,
    resize_probabilities,
    resolve_device,
    tta_probabilities,
)
from dataeng.models.onnx import OnnxPredictor
from dataeng.progress import NullProgress, Progress
from dataeng.storage import atomic_write

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from dataeng.workspace import Workspace

OutputKind = Literal["mask", "alpha", "cutout", "overlay"]
OUTPUT_KINDS: tuple[OutputKind, ...] = ("mask", "alpha", "cutout", "overlay")
MASK_FOREGROUND = ALPHA_MAX
"""Value of person pixels in a written binary mask (0/255 PNG, read like an alpha matte).
Not IGNORE_INDEX, which happens to share the number but means 'not scored'."""
THRESHOLD = 0.5
"""Foreground probability at or above which a pixel is person in a binary mask."""
DEFAULT_BACKGROUND = "white"
DEFAULT_MAX_PIXELS = 178_956_970
"""PIL's decompression-bomb limit (2 x its default warning size); workspaces set their own."""


# ------------------------------------------------------------------ choosing a model
def load_predictor(workspace: Workspace | None = None, session: Session | None = None, run: RunRef | None = None,
                   onnx: Path | None = None, device: str = "auto",
                   expected_classes: Sequence[str] | None = None) -> Predictor:
    """The predictor of a registered train run (PyTorch) or of an exported ONNX file.

    Args:
        workspace, session: needed for ``run`` only.
        run: a train run or ``best`` (the default when ``onnx`` is not given).
        onnx: an ONNX file written by ``dataeng export model``; needs no workspace.
        device: for PyTorch: ``auto``, ``cpu``, ``cuda`` or ``mps`` (ONNX runs on CPU).
        expected_classes: refuse an ONNX model of other classes.

    Raises:
        DataEngError: both or neither source usable; ModelError for a bad model.
    """
    if onnx is not None and run is not None:
        raise DataEngError("give a run or an ONNX file, not both", field="run", value=run)
    if onnx is not None:
        return OnnxPredictor.load(onnx, list(expected_classes) if expected_classes is not None else None)
    if workspace is None or session is None:
        raise DataEngError("predicting with a registered run needs a workspace (or pass an ONNX file)",
                           field="run", value=str(run or "best"))
    row = resolve_run(workspace, session, run or RunRef("best"))
    ckpt = load_checkpoint(workspace.root / str(row.checkpoint_path))
    predictor = TorchPredictor.from_checkpoint(ckpt, resolve_device(device))
    predictor.description = f"run {row.id}: {predictor.description}"
    return predictor


# ------------------------------------------------------------------ inputs
@dataclass(frozen=True)
class Skipped:
    """An input that produced no output, and why."""

    path: str
    reason: str


def iter_inputs(inputs: Sequence[Path], out_dir: Path) -> Iterator[tuple[Path, Path | None, str | None]]:
    """Walk files and folders lazily, in sorted order.

    Yields:
        (file, output path relative to ``out_dir`` or None, refusal reason or None).
        Files in folders keep their relative path; hidden files and ``out_dir`` itself
        are not visited.
    """
    out_resolved = out_dir.resolve()
    for root in inputs:
        if root.is_file():
            yield from _classify(root, Path(root.name))
            continue
        for dirpath, dirnames, filenames in os.walk(root):
            here = Path(dirpath)
            dirnames[:] = sorted(d for d in dirnames if not d.startswith(".")
                                 and (here / d).resolve() != out_resolved)
            for name in sorted(filenames):
                if not name.startswith("."):
                    yield from _classify(here / name, (here / name).relative_to(root))


def _classify(path: Path, rel: Path) -> Iterator[tuple[Path, Path | None, str | None]]:
    if path.suffix.lower() not in IMAGE_EXTENSIONS:
        yield path, None, f"not an image file (extension {path.suffix or 'none'!r}; expected one of " \
                          f"{', '.join(sorted(IMAGE_EXTENSIONS))})"
    else:
        yield path, rel.with_suffix(".png"), None


def load_image(path: Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode an image upright (EXIF orientation applied) as RGB uint8 (H, W, 3).

    Raises:
        InputError: unreadable, not an image, or more than ``max_pixels`` pixels
            (refused from the header, before decoding).
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            # PIL only warns between 1x and 2x its own limit; ours is checked just below.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                w, h = im.size
                if w * h > max_pixels:
                    raise InputError(f"image too large ({w}x{h} = {w * h:,} pixels; the decompression-bomb "
                                     f"limit is {max_pixels:,})", path=path, field="pixels", value=w * h)
                upright = ImageOps.exif_transpose(im)
                return np.asarray(upright.convert("RGB"))
    except Image.DecompressionBombError as e:
        raise InputError(f"image too large: {e}", path=path, field="pixels") from e
    except UnidentifiedImageError as e:
        raise InputError("not an image PIL can read", path=path, field="content") from e
    except (OSError, SyntaxError, ValueError) as e:
        raise InputError(f"cannot decode image: {e}", path=path, field="content") from e


def parse_background(spec: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """A background: an image file (RGB (H, W, 3)) or a colour name / ``#rrggbb`` (RGB (3,)).

    Raises:
        DataEngError: neither a readable image nor a colour PIL knows.
    """
    from PIL import ImageColor

    path = Path(spec)
    if path.is_file():
        return load_image(path, max_pixels)
    try:
        return np.asarray(ImageColor.getrgb(spec)[:3], np.uint8)
    except ValueError as e:
        raise DataEngError("expected an image file, a colour name or #rrggbb", field="background",
                           value=spec) from e



# ------------------------------------------------------------------ the use case
@dataclass(frozen=True)
class PredictOptions:
    """How :func:`predict` writes its outputs.

    Attributes:
        output: ``mask`` (binary 0/255 PNG), ``alpha`` (soft 8-bit PNG), ``cutout`` (RGBA
            PNG, alpha = the soft alpha) or ``overlay`` (the person over ``background``).
        background: image file, colour name or hex, for ``overlay`` (default white).
        tta: average with the horizontally flipped image's prediction.
        refine: guided-filter refinement of the soft alpha near the boundary.
        overwrite: replace existing output files (else they are skipped and listed).
        max_pixels: refuse larger images (decompression-bomb limit).
    """

    output: OutputKind = "mask"
    background: str | None = None
    tta: bool = False
    refine: bool = False
    overwrite: bool = False
    batch_size: int = 8
    max_pixels: int = DEFAULT_MAX_PIXELS


@dataclass(frozen=True)
class PredictResult:
    """What :func:`predict` did: counts, plus the inputs that gave no output and why."""

    out_dir: Path
    backend: str
    written: int
    skipped: list[Skipped] = field(default_factory=list)
    problems: list[Skipped] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def images_per_second(self) -> float:
        return self.written / self.seconds if self.seconds > 0 else 0.0


def count_inputs(inputs: Sequence[Path], out_dir: Path) -> int:
    """How many files :func:`iter_inputs` will visit (a cheap walk, for the progress bar)."""
    return sum(1 for _ in iter_inputs(inputs, out_dir))


def predict(predictor: Predictor, inputs: Sequence[Path], out_dir: Path, options: PredictOptions | None = None,
            progress: Progress | None = None) -> PredictResult:
    """Write one output per input image into ``out_dir`` (see :class:`PredictOptions`).

    Args:
        predictor: a :class:`TorchPredictor` or ``OnnxPredictor`` (see :func:`load_predictor`).
        inputs: image files and folders (walked recursively; relative paths are kept,
            the extension becomes ``.png``).

    Returns:
        Counts and the skipped (existing output) and refused (not an image, unreadable,
        too large, name clash) inputs.

    Raises:
        DataEngError: a missing input, an unusable option, or an output folder or file
            that cannot be written.
    """
    options = options or PredictOptions()
    progress = progress or NullProgress()
    _check_options(options, inputs)
    background = parse_background(options.background or DEFAULT_BACKGROUND, options.max_pixels) \
        if options.output == "overlay" else None
    _prepare_out_dir(out_dir)
    started, started_ns = time.perf_counter(), time.time_ns()
    progress.task(f"predict ({options.output})", count_inputs(inputs, out_dir))
    written, skipped, problems = 0, [], []
    batch: list[tuple[Path, Path, np.ndarray]] = []
    for path, rel, reason in iter_inputs(inputs, out_dir):
        if rel is None:
            problems.append(Skipped(str(path), reason or "refused"))
            progress.advance(1)
            continue
        target = out_dir / rel
        if target.exists():
            if target.stat().st_mtime_ns >= started_ns:
                problems.append(Skipped(str(path), f"another input already wrote {target} in this run"))
                progress.advance(1)
                continue
            if not options.overwrite:
                skipped.append(Skipped(str(path), f"{target} exists (use --overwrite)"))
                progress.advance(1)
                continue
        try:
            batch.append((path, target, load_image(path, options.max_pixels)))
        except InputError as e:
            problems.append(Skipped(str(path), e.reason))
            progress.advance(1)
            continue
        if len(batch) == options.batch_size:
            written += _run_batch(predictor, batch, options, background)
            progress.advance(len(batch))
            batch = []
    if batch:
        written += _run_batch(predictor, batch, options, background)
        progress.advance(len(batch))
    return PredictResult(out_dir, predictor.description, written, skipped, problems, time.perf_counter() - started)


def _check_options(options: PredictOptions, inputs: Sequence[Path]) -> None:
    if options.output not in OUTPUT_KINDS:
        raise DataEngError(f"expected one of {', '.join(OUTPUT_KINDS)}", field="as", value=options.output)
    if options.background is not None and options.output != "overlay":
        raise DataEngError("--background applies to --as overlay only", field="background",
                           value=options.background)
    if options.batch_size < 1:
        raise DataEngError("must be at least 1", field="batch_size", value=options.batch_size)
    if not inputs:
        raise DataEngError("no input images or folders given", field="inputs")
    for path in inputs:
        if not path.exists():
            raise DataEngError("input not found", path=path)


def _prepare_out_dir(out_dir: Path) -> None:
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".dataeng-write-test.", dir=out_dir)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise DataEngError(f"output folder is not writable: {e.strerror or e}", path=out_dir,
                           field="out") from e


def _run_batch(predictor: Predictor, batch: list[tuple[Path, Path, np.ndarray]], options: PredictOptions,
               background: np.ndarray | None) -> int:
    h, w = predictor.image_size
    x = np.stack([model_input(image, (h, w)).transpose(2, 0, 1) for _, _, image in batch])
    probs = tta_probabilities(predictor, x, "flip" if options.tta else "none")
    for (_, target, image), p in zip(batch, probs, strict=True):
        shape = image.shape[:2]
        alpha = np.clip(resize_probabilities(foreground(p), shape), 0.0, 1.0)
        if options.refine and options.output != "mask":
            alpha = refine_alpha(image, alpha, max(shape[0] / h, shape[1] / w))
        try:
            _write(target, options.output, image, alpha, background)
        except OSError as e:
            raise DataEngError(f"cannot write output: {e.strerror or e}", path=target) from e
    return len(batch)


def _write(target: Path, kind: OutputKind, image: np.ndarray, alpha: np.ndarray,
           background: np.ndarray | None) -> None:
    from PIL import Image

    if kind == "mask":
        write_mask(target, np.where(alpha >= THRESHOLD, np.uint8(MASK_FOREGROUND), np.uint8(0)))
        return
    alpha8 = to_uint8_alpha(alpha)
    if kind == "alpha":
        write_alpha(target, alpha8)
        return
    if kind == "cutout":
        rgba = np.dstack([image, alpha8])
        atomic_write(target, lambda tmp: Image.fromarray(rgba, "RGBA").save(tmp, "PNG", compress_level=1))
        return
    assert background is not None  # predict() parses it for overlay
    rgb = composite(image, alpha8, fit_background(background, image.shape[:2]))
    atomic_write(target, lambda tmp: Image.fromarray(rgb, "RGB").save(tmp, "PNG", compress_level=1))

