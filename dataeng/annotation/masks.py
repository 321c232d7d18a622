"""Mask and alpha-matte PNG I/O, the only place masks touch the disk.

Masks are single-channel uint8 class-index PNGs: BACKGROUND (0), classes 1..N and
IGNORE_INDEX. Alpha mattes are uint8 0..255 grayscale PNGs. Confidence maps are
stored as ``round(255 * conf)``. Writes are atomic (temporary file, then rename).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from dataeng.annotation.types import BACKGROUND, IGNORE_INDEX
from dataeng.errors import AnnotationError
from dataeng.storage import atomic_write

ALPHA_MAX = 255


def _atomic_png(path: Path, array: np.ndarray, compress_level: int) -> None:
    image = Image.fromarray(array, mode="L")
    atomic_write(path, lambda tmp: image.save(tmp, format="PNG", compress_level=compress_level))


def write_mask(path: Path, mask: np.ndarray, compress_level: int = 1) -> None:
    """Write a class-index mask (2-D uint8) as a grayscale PNG, atomically.

    Raises:
        ValueError: ``mask`` is not a 2-D uint8 array (a programming error, not input).
    """
    if mask.ndim != 2 or mask.dtype != np.uint8:
        raise ValueError(f"mask must be 2-D uint8, got shape {mask.shape} dtype {mask.dtype}")
    _atomic_png(path, np.ascontiguousarray(mask), compress_level)


def read_mask(path: Path) -> np.ndarray:
    """Read a class-index mask written by :func:`write_mask` (or any 8-bit single-channel PNG).

    Raises:
        AnnotationError: the file is missing, not an image or not single-channel.
    """
    try:
        with Image.open(path) as im:
            if im.mode not in ("L", "P"):
                raise AnnotationError("expected a single-channel mask PNG", path=path, field="mode", value=im.mode)
            return np.asarray(im, dtype=np.uint8).copy()
    except (OSError, SyntaxError) as e:
        raise AnnotationError(f"cannot read mask: {e}", path=path) from e


def write_alpha(path: Path, alpha: np.ndarray) -> None:
    """Write an alpha matte (float in [0, 1] or uint8) as an 8-bit PNG, atomically."""
    _atomic_png(path, to_uint8_alpha(alpha), 1)


def read_alpha(path: Path) -> np.ndarray:
    """Read an alpha matte as float32 in [0, 1]."""
    try:
        with Image.open(path) as im:
            arr = np.asarray(im.convert("L"), dtype=np.float32)
    except (OSError, SyntaxError) as e:
        raise AnnotationError(f"cannot read alpha matte: {e}", path=path) from e
    return arr / ALPHA_MAX


def to_uint8_alpha(alpha: np.ndarray) -> np.ndarray:
    """Float [0, 1] (or uint8 already) to uint8 0..255 with rounding."""
    if alpha.dtype == np.uint8:
        return alpha
    return np.clip(np.rint(alpha.astype(np.float32) * ALPHA_MAX), 0, ALPHA_MAX).astype(np.uint8)


def write_confidence(path: Path, confidence: np.ndarray) -> None:
    """Write a per-pixel confidence map in [0, 1] as ``round(255 * conf)``."""
    _atomic_png(path, to_uint8_alpha(confidence), 1)


def read_confidence(path: Path) -> np.ndarray:
    """Read a confidence map as float32 in [0, 1]."""
    return read_alpha(path)


def alpha_to_mask(alpha: np.ndarray, class_index: int = 1) -> np.ndarray:
    """The class mask of a matte: ``class_index`` where alpha >= 0.5, else background."""
    a = alpha.astype(np.float32) / ALPHA_MAX if alpha.dtype == np.uint8 else alpha
    return np.where(a >= 0.5, np.uint8(class_index), np.uint8(BACKGROUND)).astype(np.uint8)


def validate_mask(mask: np.ndarray, num_classes: int, path: Path | str = "<mask>") -> None:
    """Check a class-index mask holds only background, classes 1..num_classes and ignore.

    Raises:
        AnnotationError: naming the first out-of-range value.
    """
    values = np.unique(mask)
    bad = [int(v) for v in values if v != IGNORE_INDEX and v > num_classes]
    if bad:
        raise AnnotationError(
            f"mask values must be 0..{num_classes} or {IGNORE_INDEX} (ignore)",
            path=path,
            field="pixel value",
            value=bad[0],
        )


def _voc_palette() -> list[int]:
    """The PASCAL VOC colour map (bit-interleaved), as labelme and most tools use."""
    palette: list[int] = []
    for index in range(256):
        r = g = b = 0
        c = index
        for shift in range(7, -1, -1):
            r |= (c & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        palette.extend((r, g, b))
    return palette


def write_palette_mask(path: Path, mask: np.ndarray) -> None:
    """Write a class-index mask as a palette PNG (VOC colours; the indices are the classes).

    Unlike a grayscale PNG, a palette PNG is never mistaken for a black/white binary mask.

    Raises:
        ValueError: ``mask`` is not a 2-D uint8 array.
    """
    if mask.ndim != 2 or mask.dtype != np.uint8:
        raise ValueError(f"mask must be 2-D uint8, got shape {mask.shape} dtype {mask.dtype}")
    image = Image.fromarray(np.ascontiguousarray(mask), mode="P")
    image.putpalette(_voc_palette())
    atomic_write(path, lambda tmp: image.save(tmp, format="PNG", compress_level=1))


def encode_png(array: np.ndarray) -> bytes:
    """Encode a 2-D uint8 mask, matte or confidence map as grayscale PNG bytes (fast zlib level 1).

    For writers that place the bytes themselves (the registry writes under a label id
    chosen after encoding); :func:`read_mask` reads the result.
    """
    import cv2

    if array.ndim != 2 or array.dtype != np.uint8:
        raise ValueError(f"expected 2-D uint8, got shape {array.shape} dtype {array.dtype}")
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(array), [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:
        raise ValueError("PNG encoding failed")
    return buf.tobytes()
