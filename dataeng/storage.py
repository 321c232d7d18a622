"""File writes that never leave half a file: temporary name, then rename into place.

Every file dataeng puts into a workspace goes through here, before its row is
committed, so a crash leaves at worst an orphan file (removed by ``dataeng doctor``),
never a row pointing at nothing.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Literal

STORE_PREFIX = "store/"
"""Every store path in the registry starts with this; it stands for ``[store] root``, wherever that is."""


def in_store(store_root: Path, rel: str) -> Path:
    """Where a registry path lies: ``store/...`` below ``store_root``, anything else unchanged (relative)."""
    return store_root / rel[len(STORE_PREFIX):] if rel.startswith(STORE_PREFIX) else Path(rel)


def _file_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


FILE_MODE = _file_mode()
"""The mode ``open()`` gives a new file under this process's umask (read once, at import: reading the
umask means setting it, which must not race with threads creating files)."""


def atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then rename it into place.

    The file gets the mode ``open()`` would give it (the temporary file starts as 0600), so
    masks, checkpoints, reports and exports are readable by whoever the umask lets read them.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + path.suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    atomic_write(path, lambda tmp: tmp.write_bytes(data))


def atomic_write_text(path: Path, text: str) -> None:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def link_or_copy(src: Path, dst: Path, mode: Literal["hardlink", "copy"] = "hardlink") -> str:
    """Place ``src`` at ``dst`` atomically: hardlink when allowed and possible, else copy.

    Returns:
        "exists" when ``dst`` was already there (content-addressed: same bytes),
        "hardlink" or "copy".
    """
    if dst.exists():
        return "exists"
    dst.parent.mkdir(parents=True, exist_ok=True)
    if mode == "hardlink":
        tmp = dst.with_name(f".{dst.name}.{os.getpid()}.link.tmp")
        try:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            os.link(src, tmp)
            os.replace(tmp, dst)
            return "hardlink"
        except OSError:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
    atomic_write(dst, lambda tmp: shutil.copyfile(src, tmp))
    return "copy"


def file_sha256(path: Path) -> str:
    """sha256 hex digest of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
