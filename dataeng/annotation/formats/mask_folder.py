"""Folders of mask PNGs matched to images by file stem (layout: see :mod:`.paired_folders`).

How pixel values become classes (``meta["mask_rule"]``):

- **palette** PNG (mode P): the palette index is the class; IGNORE_INDEX is ignore.
- **binary**: values within {0, white} or within {0, 1} (mode 1 too): non-zero is class 1.
  White in a black/white mask is the person, not ignore (although white = IGNORE_INDEX):
  that is what such masks mean.
- **class-index**: any other set of at most 32 values: the value is the class, and
  IGNORE_INDEX is ignore (e.g. {0, 1, IGNORE_INDEX} = person + ignore).
- **soft**: more than 32 distinct values (an anti-aliased or JPEG-damaged black/white mask):
  class 1 where value >= 128, with a notice.
- RGB(A) masks whose channels are equal are read as grayscale; coloured masks are
  refused (they need a colour -> class table).

Each class becomes one bitmap shape with ``attributes["class_index"]`` (the label is
``class <n>``, or ``__ignore__``). Write: ``masks/<stem>.png`` as palette PNGs (never
ambiguous), images copied to ``images/<stem>.<ext>`` (flat, see
:func:`.paired_folders.write_pairs`), provenance in ``dataeng.json``, and the class map
in ``dataset_meta.json`` (datumaro's ``common_semantic_segmentation`` layout, the
OpenVINO accuracy checker's meta file): ``label_map`` (mask value -> name: ``0``
``_background_``, ``1..N`` the classes, ``255`` ``__ignore__``), ``segmentation_colors``
(the masks' palette, all 256 entries, indexed by mask value) and ``background_label``.
Datumaro refuses a mask colour the class map does not name, so ignore is declared as an
ordinary label ``__ignore__`` (its datumaro label id is then N + 1, not 255).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from dataeng.annotation.formats.export import atomic_write_text
from dataeng.annotation.formats.paired_folders import label_folder, pairs, read_provenance, write_pairs
from dataeng.annotation.formats.result import ReadResult
from dataeng.annotation.masks import _voc_palette, write_palette_mask
from dataeng.annotation.rle import crop_to_content
from dataeng.annotation.types import (
    BACKGROUND,
    IGNORE_INDEX,
    IGNORE_LABEL,
    ExportRecord,
    ImageAnnotation,
    LabelMap,
    Shape,
)
from dataeng.errors import AnnotationError

NAME = "mask_folder"
FOLDER_NAMES = ("masks",)
MAX_CLASS_VALUES = 32
SOFT_THRESHOLD = 128
CLASS_MAP_FILE = "dataset_meta.json"
"""The class map beside ``images/`` and ``masks/`` (datumaro's ``DATASET_META_FILE``)."""


def detect(path: Path) -> bool:
    """True for a folder with ``images/`` and ``masks/``, or a ``masks/`` folder beside ``images/``."""
    return label_folder(path, FOLDER_NAMES) is not None


def classify(path: Path) -> tuple[np.ndarray, str]:
    """Read a mask file as class indices, by the rules in the module docstring.

    Returns:
        ``(class-index uint8 mask, rule name)``.

    Raises:
        AnnotationError: unreadable, coloured or more than 8-bit class values.
    """
    try:
        with Image.open(path) as im:
            mode = im.mode
            if mode == "P":
                return np.asarray(im, dtype=np.uint8).copy(), "palette"
            arr = np.asarray(im)
    except (OSError, UnidentifiedImageError, SyntaxError, Image.DecompressionBombError) as e:
        raise AnnotationError(f"cannot read mask: {e}", path=path) from e
    if arr.ndim == 3:
        channels = arr[:, :, :3]
        if not (
            np.array_equal(channels[:, :, 0], channels[:, :, 1])
            and np.array_equal(channels[:, :, 0], channels[:, :, 2])
        ):
            raise AnnotationError(
                "coloured masks need a colour -> class table; give palette or class-index PNGs",
                path=path,
                field="mode",
                value=mode,
            )
        arr = channels[:, :, 0]
    values = np.unique(arr)
    if values.max(initial=0) > IGNORE_INDEX:
        raise AnnotationError("mask values above 8 bits", path=path, field="pixel value", value=int(values.max()))
    arr = arr.astype(np.uint8)
    value_set = set(values.tolist())
    if value_set <= {0, IGNORE_INDEX} or value_set <= {0, 1} or mode == "1":
        return np.where(arr > 0, np.uint8(1), np.uint8(BACKGROUND)), "binary"
    if len(value_set) <= MAX_CLASS_VALUES:
        return arr, "class-index"
    return np.where(arr >= SOFT_THRESHOLD, np.uint8(1), np.uint8(BACKGROUND)), "soft"


def _shapes(mask: np.ndarray) -> tuple[Shape, ...]:
    shapes = []
    for value in sorted(set(np.unique(mask).tolist()) - {BACKGROUND}):
        cropped = crop_to_content(mask == value)
        if cropped is None:
            continue
        patch, (x0, y0) = cropped
        label = IGNORE_LABEL if value == IGNORE_INDEX else f"class {value}"
        shapes.append(
            Shape(label, "bitmap", ((float(x0), float(y0)),), bitmap=patch, attributes={"class_index": int(value)})
        )
    return tuple(shapes)


def read(path: Path, *, root: Path | None = None) -> ReadResult:
    """Read a mask folder (see the module docstring for layout and value rules).

    Args:
        path: the dataset folder (holding ``images/`` and ``masks/``) or the masks folder;
            any folder of masks when the user named this format.
        root: the folder image paths must stay in (default: the dataset folder).

    Returns:
        A :class:`ReadResult`, one item per mask file.

    Raises:
        AnnotationError: ``path`` is not a folder.
    """
    folder = label_folder(path, FOLDER_NAMES, explicit=True)
    if folder is None:
        raise AnnotationError("expected a folder of masks", path=path)
    root = root if root is not None else folder.parent
    result = ReadResult()
    provenance = read_provenance(folder)
    for name, label, image in pairs(folder, root):
        try:
            mask, rule = classify(label)
        except AnnotationError as e:
            result.problems.append(e)
            continue
        if rule == "soft":
            result.notices.append(
                f"{label}: more than {MAX_CLASS_VALUES} grey levels; read as class 1 where >= {SOFT_THRESHOLD}"
            )
        height, width = mask.shape
        meta: dict[str, object] = {"mask_rule": rule}
        if name in provenance:
            meta["provenance"] = provenance[name]
        item = ImageAnnotation(name, image, width, height, _shapes(mask), NAME, label, meta=meta)
        result.items.append(item)
    return result


def class_map(label_map: LabelMap) -> dict[str, object]:
    """The ``dataset_meta.json`` content for ``label_map`` (see the module docstring)."""
    names = {**label_map.names, IGNORE_INDEX: IGNORE_LABEL}
    palette = _voc_palette()  # the one write_palette_mask gives every mask
    return {
        "labels": list(names.values()),
        "label_map": {str(index): name for index, name in names.items()},
        "segmentation_colors": [palette[i : i + 3] for i in range(0, len(palette), 3)],
        "background_label": str(BACKGROUND),
    }


def write(out: Path, records: list[ExportRecord], label_map: LabelMap, *, copy_images: bool = True) -> list[Path]:
    """Write ``masks/<stem>.png`` (palette PNG, class indices), ``images/`` and the class map
    ``dataset_meta.json`` under ``out``.

    Returns:
        The mask files written (and ``dataeng.json`` with provenance, when there is any),
        then ``dataset_meta.json``.

    Raises:
        ValueError: a record does not fit its size or the label map, has an unsafe name, or
            shares its file stem with another record.
    """
    written = write_pairs(
        out, records, label_map, FOLDER_NAMES[0], lambda path, r: write_palette_mask(path, r.mask), copy_images
    )
    meta_path = out / CLASS_MAP_FILE
    entries = [f"  {json.dumps(key)}: {json.dumps(value)}" for key, value in class_map(label_map).items()]
    atomic_write_text(meta_path, "{\n" + ",\n".join(entries) + "\n}\n")  # one line per key
    return [*written, meta_path]
