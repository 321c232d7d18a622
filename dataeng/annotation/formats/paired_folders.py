"""The folder layout shared by mask and alpha folders: label files matched to images by stem.

Convention: a dataset folder holds ``images/`` and a label folder (``masks/`` for masks;
``alpha/``, ``alphas/`` or ``mattes/`` for mattes). ``masks/a/b.png`` belongs to
``images/a/b.<any image suffix>``. Either the dataset folder or the label folder itself
may be given. Any other layout needs an explicit ``--format`` and the label folder.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from dataeng.annotation.formats.export import atomic_write_text, check_record, copy_image, safe_relative
from dataeng.annotation.formats.jsonfile import load_json
from dataeng.annotation.paths import resolve_inside
from dataeng.annotation.types import ExportRecord, LabelMap
from dataeng.errors import AnnotationError

IMAGE_FOLDER = "images"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
LABEL_SUFFIXES = (".png", ".bmp", ".tif", ".tiff")
PROVENANCE_FILE = "dataeng.json"


def label_folder(path: Path, names: tuple[str, ...], explicit: bool = False) -> Path | None:
    """The label folder meant by ``path`` (a dataset folder or the label folder), or None.

    Args:
        path: what the user gave.
        names: accepted label folder names (e.g. ``("masks",)``).
        explicit: the format was named by the user: any folder of label files will do.
    """
    if not path.is_dir():
        return None
    for name in names:
        if (path / name).is_dir() and (path / IMAGE_FOLDER).is_dir():
            return path / name
    if path.name in names and (path.parent / IMAGE_FOLDER).is_dir():
        return path
    if explicit:
        return path
    return None


def pairs(folder: Path, root: Path) -> list[tuple[str, Path, Path | None]]:
    """``(image name, label file, image file or None)`` for every label file under ``folder``.

    The image name is the label file's path relative to ``folder`` with the image's suffix
    (or the label's when no image is found).
    """
    images = folder.parent / IMAGE_FOLDER
    found: list[tuple[str, Path, Path | None]] = []
    for label in sorted(p for p in folder.rglob("*") if p.suffix.lower() in LABEL_SUFFIXES and p.is_file()):
        rel = label.relative_to(folder).with_suffix("")
        image: Path | None = None
        for suffix in IMAGE_SUFFIXES:
            candidate = resolve_inside(root, images, rel.as_posix() + suffix, path=label, field="file name")
            if candidate.is_file():
                image = candidate
                break
        name = (rel.as_posix() + image.suffix) if image is not None else label.relative_to(folder).as_posix()
        found.append((name, label, image))
    return found


def read_provenance(folder: Path) -> dict[str, dict[str, object]]:
    """Image name -> the provenance ``write_pairs`` left in the dataset's ``dataeng.json`` ({} when
    there is none or it is unreadable: provenance only ever restricts what an import may do)."""
    path = folder.parent / PROVENANCE_FILE
    if not path.is_file():
        return {}
    try:
        data = load_json(path)
    except AnnotationError:
        return {}
    return {k: v for k, v in data.items() if isinstance(v, dict)} if isinstance(data, dict) else {}


def write_pairs(
    out: Path,
    records: list[ExportRecord],
    label_map: LabelMap,
    folder: str,
    write_label: Callable[[Path, ExportRecord], None],
    copy_images: bool,
) -> list[Path]:
    """Write ``<folder>/<stem>.png`` per record with ``write_label``, images to ``images/``,
    and provenance (each record's ``meta``) to ``dataeng.json``.

    The layout is flat: each file is written under the base name of its ``image_name``
    (``train/a_1234abcd.jpg`` -> ``images/a_1234abcd.jpg``, ``<folder>/a_1234abcd.png``).
    Readers that match masks to images by base name (datumaro's
    ``common_semantic_segmentation``) need that; dataeng's reader takes both layouts.

    Returns:
        The label files written, then ``dataeng.json`` when there was provenance.

    Raises:
        ValueError: two records have the same base name (or a name is unsafe).
    """
    written: list[Path] = []
    provenance: dict[str, object] = {}
    seen: dict[str, str] = {}
    for record in records:
        check_record(record, label_map)
        rel = Path(safe_relative(record.image_name).name)
        if rel.stem in seen:
            raise ValueError(f"{seen[rel.stem]!r} and {record.image_name!r} would both be written as "
                             f"{rel.stem}: the {folder}/ layout is flat, file stems must be unique")
        seen[rel.stem] = record.image_name
        path = out / folder / rel.with_suffix(".png")
        write_label(path, record)
        if copy_images:
            copy_image(record, out / IMAGE_FOLDER / rel)
        if record.meta:
            provenance[rel.as_posix()] = record.meta
        written.append(path)
    if provenance:
        atomic_write_text(out / PROVENANCE_FILE, json.dumps(provenance, indent=2, default=str))
        written.append(out / PROVENANCE_FILE)
    return written
