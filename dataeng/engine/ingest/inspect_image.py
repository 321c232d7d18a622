"""Validate one image file and place it in the content-addressed store.

This is the per-file work of ingest, run in a process pool: read, sha256, full decode
(the least work that proves an image is whole), EXIF orientation applied once, pHash,
and the store write (hardlink, else copy; re-encoded only when it had to be rotated).
It returns plain data so it crosses process boundaries cheaply.
"""

from __future__ import annotations

import hashlib
import io
import os
import stat
import warnings
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from dataeng.db.schema import ProblemKind
from dataeng.engine.ingest.dedup import phash
from dataeng.errors import InputError
from dataeng.storage import atomic_write_bytes, in_store, link_or_copy

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"})
PIL_FORMATS = {"JPEG": ".jpg", "MPO": ".jpg", "PNG": ".png", "BMP": ".bmp", "TIFF": ".tif", "WEBP": ".webp"}
EXIF_ORIENTATION = 0x0112
MAX_IMAGE_BYTES = 1 << 30
"""Largest image file read (1 GiB); PIL's pixel limit refuses most large images before this."""


@dataclass(frozen=True)
class Inspected:
    """A valid image, already in the store."""

    path: str
    source_sha256: str
    sha256: str
    store_path: str
    width: int
    height: int
    phash: int
    rotated: bool


@dataclass(frozen=True)
class Refused:
    """An input that is not a usable image, with a one-line reason."""

    path: str
    kind: str
    field: str | None
    value: str | None
    message: str

    def line(self) -> str:
        """The one-line message: file, field, value, reason."""
        return str(InputError(self.message, path=self.path, field=self.field, value=self.value))


def store_relpath(sha256: str, ext: str) -> str:
    """Registry path of an image: ``store/images/ab/<sha256><ext>`` (``store/`` is ``[store] root``)."""
    return f"store/images/{sha256[:2]}/{sha256}{ext}"


def inspect_image(path: str, store_root: str, link: str, max_pixels: int) -> Inspected | Refused:
    """Validate ``path`` and put it in the store at ``store_root`` (the workspace's ``[store] root``).

    Never raises for bad input: returns :class:`Refused` naming the file, the field and
    the value instead.
    """
    p = Path(path)
    try:
        if p.is_symlink() and not p.exists():
            return Refused(path, ProblemKind.BROKEN_SYMLINK, "path", os.readlink(p), "symlink points at nothing")
        if p.is_dir():
            return Refused(path, ProblemKind.NOT_A_FILE, "path", None, "is a directory, not an image file")
        info = p.stat()
        if not stat.S_ISREG(info.st_mode):
            # A FIFO would block the read forever and a device (/dev/zero) never ends.
            return Refused(path, ProblemKind.NOT_A_FILE, "path", None,
                           "not a regular file (a FIFO, device or socket); not read")
        if info.st_size > MAX_IMAGE_BYTES:
            return Refused(path, ProblemKind.TOO_LARGE, "size", str(info.st_size),
                           f"larger than {MAX_IMAGE_BYTES >> 20} MiB; not read")
        data = p.read_bytes()
    except PermissionError as e:
        return Refused(path, ProblemKind.UNREADABLE, "permissions", None, f"cannot read: {e.strerror}")
    except OSError as e:
        return Refused(path, ProblemKind.UNREADABLE, None, None, f"cannot read: {e.strerror or e}")
    if not data:
        return Refused(path, ProblemKind.EMPTY, "size", "0", "file is empty (0 bytes)")
    source_sha = hashlib.sha256(data).hexdigest()

    Image.MAX_IMAGE_PIXELS = max_pixels
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        with warnings.catch_warnings():
            # Between 1x and 2x the limit PIL only warns; we refuse at the limit.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
            fmt = im.format or ""
            if fmt not in PIL_FORMATS:
                expected = ", ".join(sorted(PIL_FORMATS))
                return Refused(path, ProblemKind.UNSUPPORTED_FORMAT, "format", fmt,
                               f"unsupported format, expected {expected}")
            im.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        return Refused(path, ProblemKind.DECOMPRESSION_BOMB, "pixels", None, f"image too large: {e}")
    except UnidentifiedImageError:
        return Refused(path, ProblemKind.NOT_AN_IMAGE, "content", data[:16].hex(), "not an image PIL can read")
    except (OSError, SyntaxError, ValueError) as e:
        return Refused(path, ProblemKind.CORRUPT, "content", None, f"cannot decode image: {e}")

    orientation = im.getexif().get(EXIF_ORIENTATION, 1)
    rotated = orientation not in (1, None) and isinstance(orientation, int) and 2 <= orientation <= 8
    ext = PIL_FORMATS[fmt]
    if rotated:
        im = ImageOps.exif_transpose(im)  # type: ignore[assignment]
        buf = io.BytesIO()
        if ext == ".jpg":
            im.convert("RGB").save(buf, format="JPEG", quality=95, subsampling=0)
        else:
            ext = ".png"
            im.save(buf, format="PNG")
        stored = buf.getvalue()
        sha = hashlib.sha256(stored).hexdigest()
    else:
        stored = b""
        sha = source_sha
    h = phash(im)
    width, height = im.size
    rel = store_relpath(sha, ext)
    dst = in_store(Path(store_root), rel)
    if rotated:
        if not dst.exists():
            atomic_write_bytes(dst, stored)
    else:
        link_or_copy(p, dst, "hardlink" if link == "hardlink" else "copy")
    return Inspected(path, source_sha, sha, rel, width, height, h, rotated)
