"""Records shared by every annotation format, and the two reserved mask values.

IGNORE_INDEX and BACKGROUND are defined here and nowhere else.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

IGNORE_INDEX = 255
"""Mask value of pixels that are neither background nor a class: not trained, not scored."""

BACKGROUND = 0
"""Mask value of background pixels; classes are 1..N in the order of ``classes``."""

ShapeKind = Literal["polygon", "rectangle", "circle", "bitmap"]
"""The shape kinds that draw pixels. Lines, linestrips and points are skipped at read time."""

Point = tuple[float, float]
Ring = tuple[Point, ...]

IGNORE_LABEL = "__ignore__"
"""Label name that maps to IGNORE_INDEX in every format (labelme's convention)."""

BACKGROUND_LABELS = ("_background_", "background")
"""Label names that map to BACKGROUND; writers use the first one for holes."""

MAX_COORDINATE = 1_000_000.0
"""Largest |x| or |y| (pixels) a shape may have. Far beyond any image PIL opens, and far below
what overflows the native rasterisers (pycocotools crashes on 1e9 and beyond)."""

MAX_BITMAP_PIXELS = 1 << 28
"""Largest bitmap a shape may carry when its image's size is not declared (256 Mi pixels)."""


def is_coordinate(value: object) -> bool:
    """A number (not a bool) that is finite and within :data:`MAX_COORDINATE` of the origin."""
    return (not isinstance(value, bool) and isinstance(value, int | float) and math.isfinite(value)
            and abs(value) <= MAX_COORDINATE)


@dataclass(frozen=True)
class Shape:
    """One annotated region in pixel coordinates, as a format module read it.

    ``points`` meaning by kind: polygon = the exterior ring; rectangle = two opposite
    corners in any order; circle = centre then a point on the rim; bitmap = the single
    ``origin`` (x, y) of ``bitmap``'s top-left pixel. ``holes`` are interior rings of a
    polygon, drawn as background. ``attributes`` keeps what the tool said about the shape
    (occluded, CVAT attributes, iscrowd, ``class_index`` for mask folders...).
    """

    label: str
    kind: ShapeKind
    points: Ring
    holes: tuple[Ring, ...] = ()
    bitmap: np.ndarray | None = field(default=None, compare=False, repr=False)
    z_order: int = 0
    group_id: int | None = None
    attributes: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def origin(self) -> tuple[int, int]:
        """Top-left pixel (x, y) of a bitmap shape."""
        x, y = self.points[0]
        return round(x), round(y)


@dataclass(frozen=True)
class ImageAnnotation:
    """Everything one annotation file says about one image.

    ``width``/``height`` are the size the annotation declares (``None`` when it says
    nothing); when they differ from the real image, call
    :func:`dataeng.annotation.rasterize.scale_shapes`. ``image_path`` is resolved and
    checked not to escape the annotation root; it may not exist (the caller records that).
    """

    image_name: str
    image_path: Path | None
    width: int | None
    height: int | None
    shapes: tuple[Shape, ...]
    source: str
    annotation_path: Path
    image_data: bytes | None = field(default=None, repr=False)
    alpha: np.ndarray | None = field(default=None, compare=False, repr=False)
    meta: dict[str, Any] = field(default_factory=dict, compare=False)

    def replace(self, **changes: Any) -> ImageAnnotation:
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class Polygon:
    """A traced region: one exterior ring and its holes, in pixel-centre coordinates."""

    exterior: Ring
    holes: tuple[Ring, ...] = ()


@dataclass(frozen=True)
class ExportRecord:
    """One labelled image as the registry hands it to a format writer.

    Args:
        image_name: file name (relative path with ``/``) the written annotation refers to.
        width, height: image size; ``mask`` must be ``height`` x ``width``.
        mask: class-index mask (uint8: BACKGROUND, 1..N, IGNORE_INDEX).
        alpha: optional soft matte, float32 in [0, 1].
        image_path: optional source image file; writers copy it beside the annotation.
        meta: provenance (label id, origin, source, run, round); written where the
            format allows (labelme top-level key, CVAT attributes, COCO annotation keys).
    """

    image_name: str
    width: int
    height: int
    mask: np.ndarray = field(compare=False, repr=False)
    alpha: np.ndarray | None = field(default=None, compare=False, repr=False)
    image_path: Path | None = None
    meta: dict[str, Any] = field(default_factory=dict, compare=False)


class LabelMap:
    """Maps annotation label names to class indices.

    Classes are numbered 1..N in the order of ``classes``. Lookup tries, in order: an
    exact alias, an exact class name, ``__ignore__`` (IGNORE_INDEX), ``_background_`` /
    ``background`` (BACKGROUND), then the same case-insensitively. Unknown names give
    ``None``; the caller reports each unknown label once.

    Example:
        >>> lm = LabelMap(["person"], {"PEDESTRIAN": "person"})
        >>> lm.index("pedestrian"), lm.index("__ignore__"), lm.index("car")
        (1, 255, None)
    """

    def __init__(self, classes: list[str], aliases: dict[str, str] | None = None) -> None:
        if len(set(classes)) != len(classes):
            raise ValueError(f"duplicate class names in {classes!r}")
        if len(classes) >= IGNORE_INDEX:
            raise ValueError(f"at most {IGNORE_INDEX - 1} classes, got {len(classes)}")
        self.classes = list(classes)
        self.aliases = dict(aliases or {})
        exact: dict[str, int] = {IGNORE_LABEL: IGNORE_INDEX}
        exact.update({name: BACKGROUND for name in BACKGROUND_LABELS})
        exact.update({name: i + 1 for i, name in enumerate(self.classes)})
        for alias, target in self.aliases.items():
            if target not in exact:
                raise ValueError(f"alias {alias!r} points at unknown class {target!r}")
            exact[alias] = exact[target]
        self._exact = exact
        folded: dict[str, int] = {}
        # Earlier entries win on a case-insensitive clash: classes before aliases.
        for name, index in exact.items():
            folded.setdefault(name.casefold(), index)
        self._folded = folded

    def index(self, name: str) -> int | None:
        """Class index of a label name, or ``None`` when the name is unknown."""
        found = self._exact.get(name)
        if found is None:
            found = self._folded.get(name.strip().casefold())
        return found

    @property
    def names(self) -> dict[int, str]:
        """Class index -> name, background included (not ignore)."""
        return {BACKGROUND: BACKGROUND_LABELS[0], **{i + 1: n for i, n in enumerate(self.classes)}}

    @property
    def num_classes(self) -> int:
        """Number of foreground classes (background and ignore excluded)."""
        return len(self.classes)

    def __repr__(self) -> str:
        return f"LabelMap(classes={self.classes!r}, aliases={self.aliases!r})"
