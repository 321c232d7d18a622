"""Folders of alpha mattes matched to images by file stem (layout: see :mod:`.paired_folders`).

A matte is a grayscale PNG, 0 = background, white (``ALPHA_MAX``) = foreground, soft in
between. It is
read as ``ImageAnnotation.alpha`` (float32 in [0, 1]) with no shapes; the class mask is
class 1 where alpha >= 0.5 (:func:`dataeng.annotation.masks.alpha_to_mask`). The label
folder is ``alpha/``, ``alphas/`` or ``mattes/`` beside ``images/``.

Write: ``alpha/<stem>.png`` from the record's alpha; a record without alpha gets a hard
matte (1 on its classes, 0 on background and ignore). Images are copied to ``images/``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dataeng.annotation.formats.paired_folders import label_folder, pairs, read_provenance, write_pairs
from dataeng.annotation.formats.result import ReadResult
from dataeng.annotation.masks import read_alpha, write_alpha
from dataeng.annotation.types import BACKGROUND, IGNORE_INDEX, ExportRecord, ImageAnnotation, LabelMap
from dataeng.errors import AnnotationError

NAME = "alpha_folder"
FOLDER_NAMES = ("alpha", "alphas", "mattes")


def detect(path: Path) -> bool:
    """True for a folder with ``images/`` and ``alpha/`` (or ``alphas/``, ``mattes/``), or that folder."""
    return label_folder(path, FOLDER_NAMES) is not None


def read(path: Path, *, root: Path | None = None) -> ReadResult:
    """Read a folder of alpha mattes.

    Args:
        path: the dataset folder or the matte folder (any folder when named explicitly).
        root: the folder image paths must stay in (default: the dataset folder).

    Returns:
        A :class:`ReadResult`, one item per matte, ``alpha`` set and no shapes.

    Raises:
        AnnotationError: ``path`` is not a folder.
    """
    folder = label_folder(path, FOLDER_NAMES, explicit=True)
    if folder is None:
        raise AnnotationError("expected a folder of alpha mattes", path=path)
    root = root if root is not None else folder.parent
    result = ReadResult()
    provenance = read_provenance(folder)
    for name, label, image in pairs(folder, root):
        try:
            alpha = read_alpha(label)
        except AnnotationError as e:
            result.problems.append(e)
            continue
        height, width = alpha.shape
        meta = {"provenance": provenance[name]} if name in provenance else {}
        result.items.append(ImageAnnotation(name, image, width, height, (), NAME, label, alpha=alpha, meta=meta))
    return result


def write(out: Path, records: list[ExportRecord], label_map: LabelMap, *, copy_images: bool = True) -> list[Path]:
    """Write ``alpha/<stem>.png`` mattes and ``images/`` under ``out``.

    Returns:
        The matte files written (and ``dataeng.json`` with provenance, when there is any).

    Raises:
        ValueError: a record does not fit its size or the label map, or has an unsafe name.
    """
    return write_pairs(out, records, label_map, FOLDER_NAMES[0], _write_matte, copy_images)


def _write_matte(path: Path, record: ExportRecord) -> None:
    if record.alpha is not None:
        write_alpha(path, record.alpha)
    else:  # a hard label exported as a matte: 1 on the classes, 0 on background and ignore
        write_alpha(path, ((record.mask != BACKGROUND) & (record.mask != IGNORE_INDEX)).astype(np.float32))
