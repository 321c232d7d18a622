"""Image facts an annotation reader needs without decoding pixels: size and embedded data."""

from __future__ import annotations

import base64
import binascii
import io
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from dataeng.errors import AnnotationError


def image_size(path: Path) -> tuple[int, int] | None:
    """(width, height) from the image header, or None if the file is missing or unreadable."""
    try:
        with Image.open(path) as im:
            return im.size
    except (OSError, UnidentifiedImageError, Image.DecompressionBombError):
        return None


def decode_image_data(text: object, *, path: Path, field: str) -> tuple[bytes, tuple[int, int]]:
    """Decode embedded base64 image data and check it is an image.

    Returns:
        The raw bytes and the image (width, height).

    Raises:
        AnnotationError: not a string, not base64, or not an image PIL can open.
    """
    if not isinstance(text, str):
        raise AnnotationError("expected a base64 string", path=path, field=field, value=type(text).__name__)
    try:
        data = base64.b64decode(text, validate=False)
    except (binascii.Error, ValueError) as e:
        raise AnnotationError(f"not base64: {e}", path=path, field=field, value=text[:40]) from e
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.verify()
            size = im.size
    except (OSError, UnidentifiedImageError, SyntaxError, Image.DecompressionBombError) as e:
        raise AnnotationError(f"not an image: {e}", path=path, field=field, value=text[:40]) from e
    return data, size


def decode_mask_patch(data: bytes, *, path: Path, field: str) -> np.ndarray:
    """Decode an embedded PNG mask patch (labelme ``mask``, Supervisely ``bitmap``) to bool.

    A patch with transparency (Supervisely writes palette PNGs with a transparent 0) is
    the opaque pixels; otherwise it is the non-zero pixels of its grayscale.

    Raises:
        AnnotationError: the bytes are not an image.
    """
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            has_alpha = im.mode in ("RGBA", "LA", "PA") or "transparency" in im.info
            if has_alpha:
                arr = np.asarray(im.convert("RGBA"))[:, :, 3] > 0
            else:
                arr = np.asarray(im.convert("L")) > 0
    except (OSError, UnidentifiedImageError, SyntaxError, Image.DecompressionBombError) as e:
        raise AnnotationError(f"mask patch is not an image: {e}", path=path, field=field) from e
    return np.ascontiguousarray(arr, dtype=bool)
