"""Annotation formats: an explicit registry, detection and discovery inside a folder.

Every format module has ``detect(path) -> bool`` (cheap: names, headers, small JSON),
``read(path, *, root=None) -> ReadResult`` (per-item problems collected; a whole-file
failure raises :class:`AnnotationError`) and ``write(out, records, label_map, **options)
-> list[Path]``.

Example:
    >>> fmt = get_format("labelme")
    >>> result = fmt.read(Path("dataset/"))
    >>> fmt.write(Path("out/"), records, LabelMap(["person"]), flags={"reviewed": False})
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from dataeng.annotation.formats import (
    alpha_folder,
    coco,
    cvat,
    cvat_labels,
    labelme,
    labelstudio,
    mask_folder,
    supervisely,
)
from dataeng.annotation.formats.jsonfile import load_json
from dataeng.annotation.formats.result import ReadResult
from dataeng.errors import AnnotationError, UnsupportedFormatError

__all__ = ["FORMATS", "Format", "ReadResult", "detect", "find_annotations", "get_format", "unreadable_json"]


@dataclass(frozen=True)
class Format:
    """One registered annotation format."""

    name: str
    description: str
    detect: Callable[[Path], bool]
    read: Callable[..., ReadResult]
    write: Callable[..., list[Path]]
    folder_format: bool
    """True when one annotation set is a folder layout rather than files."""


FORMATS: dict[str, Format] = {
    "labelme": Format(
        "labelme", "Labelme JSON, one file per image", labelme.detect, labelme.read, labelme.write, False
    ),
    "cvat": Format("cvat", "CVAT for images 1.1 XML", cvat.detect, cvat.read, cvat.write, False),
    "coco": Format("coco", "COCO instances JSON", coco.detect, coco.read, coco.write, False),
    "supervisely": Format(
        "supervisely",
        "Supervisely project (meta.json, ann/, img/)",
        supervisely.detect,
        supervisely.read,
        supervisely.write,
        True,
    ),
    "mask_folder": Format(
        "mask_folder",
        "images/ + masks/ PNGs matched by stem",
        mask_folder.detect,
        mask_folder.read,
        mask_folder.write,
        True,
    ),
    "alpha_folder": Format(
        "alpha_folder",
        "images/ + alpha/ (or mattes/) mattes matched by stem",
        alpha_folder.detect,
        alpha_folder.read,
        alpha_folder.write,
        True,
    ),
    "labelstudio": Format(
        "labelstudio",
        "Label Studio JSON (tasks, JSON and JSON_MIN exports)",
        labelstudio.detect,
        labelstudio.read,
        labelstudio.write,
        False,
    ),
}

# Folder layouts first (they contain JSON/PNG that file formats could claim), then files
# from the most specific header to the least.
_DETECT_ORDER = ("supervisely", "mask_folder", "alpha_folder", "cvat", "coco", "labelstudio", "labelme")


def get_format(name: str) -> Format:
    """The registered format called ``name``.

    Raises:
        UnsupportedFormatError: unknown name; the message lists the valid ones.
    """
    try:
        return FORMATS[name]
    except KeyError:
        raise UnsupportedFormatError(
            f"unknown annotation format; choose one of {', '.join(FORMATS)}", field="format", value=name
        ) from None


def detect(path: Path) -> str | None:
    """The name of the format of a file or folder, or None (cheap: headers and names only)."""
    for name in _DETECT_ORDER:
        if FORMATS[name].detect(path):
            return name
    return None


def unreadable_json(folder: Path, claimed: set[Path]) -> list[AnnotationError]:
    """The ``.json`` files in an ingested folder that no format claimed because they are not
    usable JSON at all (truncated, not UTF-8, nested too deeply) or hold a bare list: each an
    error to record, so nothing is skipped silently. Other JSON (tool settings, our own
    ``dataeng.json`` and ``dataset_meta.json``) and CVAT label lists (``cvat_labels.json``
    of a CVAT export, :func:`.cvat_labels.is_label_spec`) are left alone.
    """
    out: list[AnnotationError] = []
    files = [folder] if folder.is_file() else sorted(folder.rglob("*.json"))
    for path in files:
        if path in claimed or any(part.startswith(".") for part in path.relative_to(folder).parts):
            continue
        if any(path.is_relative_to(c) for c in claimed if c.is_dir()):
            continue
        try:
            data = load_json(path)
        except AnnotationError as e:
            out.append(e)
            continue
        if isinstance(data, list) and not cvat_labels.is_label_spec(data):
            out.append(AnnotationError("a JSON list is not an annotation format dataeng reads (a COCO results "
                                       "file? give the instances file)", path=path, value="list"))
    return out


def find_annotations(folder: Path) -> list[tuple[str, Path]]:
    """Every annotation set inside an ingested folder, as ``(format name, path)``.

    Folder layouts (Supervisely projects, images/ + masks/, images/ + alpha/) are
    returned as their folder and not searched further; files (labelme JSON, CVAT XML,
    COCO JSON, Label Studio JSON) one by one. Hidden folders are skipped. Sorted by path.
    """
    found: list[tuple[str, Path]] = []
    if folder.is_file():
        name = detect(folder)
        return [(name, folder)] if name else []
    for current, dirs, files in os.walk(folder):
        here = Path(current)
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        claimed = False
        for name in ("supervisely", "mask_folder", "alpha_folder"):
            if FORMATS[name].detect(here):
                found.append((name, here))
                claimed = True
        if claimed:
            dirs[:] = []
            continue
        for file in sorted(files):
            path = here / file
            if path.suffix.lower() not in (".json", ".xml"):
                continue
            for name in ("cvat", "coco", "labelstudio", "labelme"):
                if FORMATS[name].detect(path):
                    found.append((name, path))
                    break
    return sorted(found, key=lambda item: str(item[1]))
