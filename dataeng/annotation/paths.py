"""Resolving image references written inside annotation files, safely.

An annotation may name its image with a relative path, Windows backslashes or an
absolute path. Whatever it says, the result must stay inside the annotation root (the
folder being ingested): ``../../etc/passwd`` or ``/home/x.jpg`` elsewhere are refused.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath, PureWindowsPath

from dataeng.errors import AnnotationError


def normalise_name(name: str) -> str:
    """An image reference with Windows separators turned into ``/``."""
    if "\\" in name or PureWindowsPath(name).drive:
        return PureWindowsPath(name).as_posix()
    return name


def resolve_inside(root: Path, base: Path, name: str, *, path: Path, field: str) -> Path:
    """Resolve ``name`` relative to ``base`` and check it stays inside ``root``.

    Args:
        root: the folder nothing may escape (the ingested folder).
        base: the folder relative names are taken from (usually the annotation's folder).
        name: the reference as written in the annotation file.
        path: the annotation file (for the error message).
        field: the field that held ``name`` (for the error message).

    Returns:
        The resolved absolute path; it may not exist.

    Raises:
        AnnotationError: ``name`` is empty, or it resolves outside ``root``.
    """
    text = normalise_name(name).strip()
    if not text:
        raise AnnotationError("empty image path", path=path, field=field, value=name)
    posix = PurePosixPath(text)
    if PureWindowsPath(text).drive and not posix.is_absolute():
        raise AnnotationError("image path names another drive", path=path, field=field, value=name)
    candidate = Path(posix) if posix.is_absolute() else base / posix
    resolved = candidate.resolve()
    root_resolved = root.resolve()
    if not resolved.is_relative_to(root_resolved):
        raise AnnotationError(
            f"image path escapes the annotation root {root_resolved}",
            path=path,
            field=field,
            value=name,
        )
    return resolved
