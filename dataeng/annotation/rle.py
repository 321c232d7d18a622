"""Run-length encodings: COCO RLE (through pycocotools) and CVAT's box RLE.

The only place that encodes or decodes RLE. Readers turn RLE into bitmap shapes with
these kernels; writers turn masks into RLE with them.

CVAT ``<mask>`` RLE: a list of run lengths, alternating and starting with background,
covering only the ``width`` x ``height`` box at (``left``, ``top``) in row-major order;
the runs must sum to ``width * height``. COCO RLE runs are column-major over the whole
image and are handled by pycocotools only.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pycocotools import mask as coco_mask


def parse_cvat_rle(text: str) -> list[int]:
    """Parse CVAT's ``rle`` attribute ("1, 2, 3" or "1,2,3") into run lengths.

    Raises:
        ValueError: a run is not a non-negative integer.
    """
    runs = [int(part) for part in text.replace(" ", "").split(",") if part != ""]
    if any(r < 0 for r in runs):
        raise ValueError("negative run length")
    return runs


def decode_cvat_rle(runs: list[int], width: int, height: int) -> np.ndarray:
    """Decode CVAT box RLE into a ``height`` x ``width`` bool patch.

    Raises:
        ValueError: the runs do not sum to ``width * height``.
    """
    total = sum(runs)
    if width <= 0 or height <= 0 or total != width * height:
        raise ValueError(f"RLE runs sum to {total}, expected width*height = {width * height}")
    values = np.zeros(len(runs), dtype=bool)
    values[1::2] = True
    return np.repeat(values, runs).reshape(height, width)


def encode_cvat_rle(patch: np.ndarray) -> list[int]:
    """Encode a bool patch as CVAT box RLE (row-major, starting with a background run)."""
    flat = np.ascontiguousarray(patch, dtype=bool).ravel()
    if flat.size == 0:
        return []
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate(([0], change, [flat.size]))
    runs = np.diff(bounds).tolist()
    if flat[0]:
        runs.insert(0, 0)
    return [int(r) for r in runs]


def coco_compressed_counts(text: bytes) -> list[int]:
    """The run lengths of a compressed COCO RLE ``counts`` string (pycocotools' ``rleFrString``).

    Written here so a string can be checked before it reaches pycocotools' C code, which
    does not bound-check it. Each run is a little-endian series of 5-bit groups (ASCII 48 +
    value, bit 0x20 = more groups, bit 0x10 of the last group = negative); from the third
    run on, each is a difference to the run two before.

    Raises:
        ValueError: a character outside the alphabet, or a truncated run.
    """
    runs: list[int] = []
    p = 0
    while p < len(text):
        value = shift = 0
        more = True
        while more:
            if p >= len(text):
                raise ValueError("truncated compressed RLE")
            c = text[p] - 48
            if not 0 <= c <= 63:
                raise ValueError(f"invalid character {chr(text[p])!r} in compressed RLE")
            value |= (c & 0x1F) << shift
            more = bool(c & 0x20)
            p += 1
            shift += 5
            if shift > 60:
                raise ValueError("compressed RLE run too long")
            if not more and c & 0x10:
                value |= -1 << shift
        if len(runs) > 2:
            value += runs[-2]
        runs.append(value)
    return runs


def decode_coco_segmentation(segmentation: Any, height: int, width: int) -> np.ndarray:
    """Decode a COCO segmentation (polygon list, uncompressed or compressed RLE) to bool HxW.

    Polygons are rasterised by pycocotools, the convention COCO masks were made with.

    Raises:
        ValueError: the segmentation is of an unknown type or its size differs from the image.
        TypeError: malformed content (pycocotools' own complaint).
    """
    if isinstance(segmentation, list):
        if not segmentation:
            raise ValueError("empty polygon list")
        rles = coco_mask.frPyObjects([list(map(float, p)) for p in segmentation], height, width)
        rle = coco_mask.merge(rles)
    elif isinstance(segmentation, dict) and "counts" in segmentation and "size" in segmentation:
        size = [int(v) for v in segmentation["size"]]
        if size != [height, width]:
            raise ValueError(f"RLE size {size} differs from image size {[height, width]}")
        counts = segmentation["counts"]
        if isinstance(counts, list):
            if sum(int(c) for c in counts) != height * width:
                raise ValueError("uncompressed RLE counts do not sum to height*width")
            rle = coco_mask.frPyObjects(segmentation, height, width)
        elif isinstance(counts, str | bytes):
            text = counts.encode() if isinstance(counts, str) else counts
            runs = coco_compressed_counts(text)  # checked here: pycocotools corrupts its heap on garbage
            if any(r < 0 for r in runs) or sum(runs) != height * width:
                raise ValueError("compressed RLE counts do not decode to height*width non-negative runs")
            rle = {"size": size, "counts": text}
        else:
            raise ValueError(f"RLE counts of type {type(counts).__name__}")
    else:
        raise ValueError(f"unknown segmentation type {type(segmentation).__name__}")
    return np.asarray(coco_mask.decode(rle), dtype=bool)


def encode_coco_rle(mask: np.ndarray) -> dict[str, Any]:
    """Encode a bool HxW mask as compressed COCO RLE with ``counts`` as a str (JSON-ready)."""
    rle = coco_mask.encode(np.asfortranarray(mask, dtype=np.uint8))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def coco_area(rle: dict[str, Any]) -> float:
    """Pixel area of a COCO RLE as produced by :func:`encode_coco_rle`."""
    return float(coco_mask.area({"size": rle["size"], "counts": rle["counts"].encode("ascii")}))


def crop_to_content(mask: np.ndarray) -> tuple[np.ndarray, tuple[int, int]] | None:
    """The tight bool patch around the True pixels and its origin (x, y); None if empty."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    y0, y1, x0, x1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    return np.ascontiguousarray(mask[y0:y1, x0:x1], dtype=bool), (x0, y0)
