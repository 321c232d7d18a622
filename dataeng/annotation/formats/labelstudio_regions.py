"""Label Studio regions <-> dataeng masks and shapes: brush RLE, polygons in percent, the labelling config.

The one place where Label Studio geometry is converted, for :mod:`.labelstudio` to read and write.

- **Brush** (``brushlabels``): Label Studio's own RLE of the RGBA canvas (``width x height x 4``
  bytes, row-major), encoded and decoded by the ``label-studio-sdk`` converter
  (``label_studio_sdk.converter.brush``: ``mask2rle`` / ``decode_rle``), never by our code. A
  pixel belongs to the region when its alpha is at least :data:`ALPHA_THRESHOLD`. Before an
  RLE reaches the SDK's decoder, its 32-bit header (the number of values) is checked against
  the declared image size: a wrong header would make the decoder allocate what it says.
- **Polygons** (``polygonlabels``): points in percent of the image size, ``x% = 100 * (x + 0.5)
  / width``: our rings run through pixel centres (pixel ``x`` covers ``[x, x + 1)``), Label
  Studio's coordinates through the image's edges. Label Studio polygons have no holes: a hole
  is a later polygon labelled ``_background_`` (drawn over its region, as Label Studio shows
  overlapping regions in order), exactly as the Labelme writer does.
- **Rectangles** (``rectanglelabels``, read only): ``x, y, width, height`` in percent,
  ``rotation`` in degrees about the top-left corner.

The SDK is optional (``pip install 'dataeng[labelstudio]'``) and imported on first use.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from xml.sax.saxutils import quoteattr

import numpy as np

from dataeng.annotation.formats.cvat_labels import _colour
from dataeng.annotation.formats.export import HOLE_LABEL
from dataeng.annotation.masks import ALPHA_MAX
from dataeng.annotation.types import IGNORE_INDEX, IGNORE_LABEL, LabelMap, Ring, is_coordinate
from dataeng.errors import AnnotationError, DataEngError

SDK_INSTALL = "pip install 'dataeng[labelstudio]'"
ALPHA_THRESHOLD = 128
"""Alpha at or above which a brush pixel is painted (Label Studio paints 255; antialiasing less)."""
CHANNELS = 4
"""Label Studio's brush RLE covers an RGBA canvas: four values per pixel."""
IMAGE_TAG = "image"
BRUSH_TAG = "brush"
POLYGON_TAG = "polygon"
CONFIG_FILE = "labeling_config.xml"
"""The labelling config written beside ``tasks.json``; read back to refuse undeclared labels."""
REGION_TYPES = ("brushlabels", "polygonlabels", "rectanglelabels")


def brush_sdk() -> Any:
    """``label_studio_sdk.converter.brush``, or a one-line error naming the pip command.

    Raises:
        DataEngError: label-studio-sdk is not installed.
    """
    try:
        from label_studio_sdk.converter import brush
    except ImportError as e:
        raise DataEngError(f"Label Studio brush masks need label-studio-sdk: {SDK_INSTALL}",
                           field="format", value="labelstudio") from e
    return brush


def encode_brush(pixels: np.ndarray) -> list[int]:
    """A bool ``height x width`` region as Label Studio brush RLE (the SDK's ``mask2rle``)."""
    alpha = np.where(np.asarray(pixels, dtype=bool), ALPHA_MAX, 0).astype(np.uint8)
    return [int(v) for v in brush_sdk().mask2rle(alpha)]


def decode_brush(rle: Any, width: int, height: int, *, path: Path | str, field: str) -> np.ndarray:
    """Label Studio brush RLE as a bool ``height x width`` mask (the SDK's ``decode_rle``).

    Raises:
        AnnotationError: not a list of bytes, a length other than ``width * height * 4``
            values, or a stream the decoder cannot read.
    """
    if not isinstance(rle, list) or len(rle) < 4 or not all(
            isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 255 for v in rle):
        raise AnnotationError("expected a list of bytes (Label Studio brush RLE)", path=path, field=field,
                              value=str(rle)[:40])
    declared = int.from_bytes(bytes(rle[:4]), "big")
    expected = width * height * CHANNELS
    if declared != expected:
        raise AnnotationError(f"the RLE holds {declared} values, the {width}x{height} image needs {expected} "
                              f"(width x height x {CHANNELS})", path=path, field=field, value=declared)
    try:
        flat = np.asarray(brush_sdk().decode_rle(rle), dtype=np.uint8)
    except (ValueError, IndexError) as e:
        raise AnnotationError(f"not a readable brush RLE ({e})", path=path, field=field) from e
    if flat.size != expected:
        raise AnnotationError(f"the RLE decodes to {flat.size} values, expected {expected}", path=path,
                              field=field, value=flat.size)
    return flat.reshape(height, width, CHANNELS)[:, :, CHANNELS - 1] >= ALPHA_THRESHOLD


def to_percent(ring: Ring, width: int, height: int) -> list[list[float]]:
    """Pixel-centre ring -> Label Studio points (percent of the image size, edges at 0 and 100)."""
    return [[100.0 * (x + 0.5) / width, 100.0 * (y + 0.5) / height] for x, y in ring]


def from_percent(points: Any, width: int, height: int, *, path: Path | str, field: str) -> Ring:
    """Label Studio points (percent) -> a pixel-centre ring.

    Raises:
        AnnotationError: not a list of at least 3 ``[x, y]`` finite numbers.
    """
    if not isinstance(points, list) or len(points) < 3:
        raise AnnotationError("a polygon needs a list of at least 3 [x, y] points", path=path, field=field,
                              value=len(points) if isinstance(points, list) else points)
    ring = []
    for j, point in enumerate(points):
        if not (isinstance(point, list | tuple) and len(point) == 2 and all(is_coordinate(v) for v in point)):
            raise AnnotationError("expected [x, y] in percent", path=path, field=f"{field}[{j}]", value=point)
        ring.append((float(point[0]) * width / 100.0 - 0.5, float(point[1]) * height / 100.0 - 0.5))
    return tuple(ring)


def rectangle_ring(value: dict[str, Any], width: int, height: int, *, path: Path | str, field: str) -> Ring:
    """A ``rectanglelabels`` value as its 4 corners in pixel-edge coordinates (rotation applied).

    Raises:
        AnnotationError: a missing or non-numeric ``x``, ``y``, ``width``, ``height`` or ``rotation``.
    """
    numbers = {}
    for key in ("x", "y", "width", "height", "rotation"):
        raw = value.get(key, 0 if key == "rotation" else None)
        if not isinstance(raw, int | float) or not is_coordinate(raw):
            raise AnnotationError("expected a number (percent; degrees for rotation)", path=path,
                                  field=f"{field}.{key}", value=raw)
        numbers[key] = float(raw)
    x0, y0 = numbers["x"] * width / 100, numbers["y"] * height / 100
    w, h = numbers["width"] * width / 100, numbers["height"] * height / 100
    angle = math.radians(numbers["rotation"])
    cos, sin = math.cos(angle), math.sin(angle)
    corners = ((0.0, 0.0), (w, 0.0), (w, h), (0.0, h))
    return tuple((x0 + dx * cos - dy * sin, y0 + dx * sin + dy * cos) for dx, dy in corners)


def region_labels(label_map: LabelMap) -> tuple[list[str], list[str]]:
    """The labels the config declares: (brush labels, polygon labels).

    Brush: the classes and ``__ignore__``; polygons: those and ``_background_`` (holes).
    """
    brush = [*label_map.classes, IGNORE_LABEL]
    return brush, [*brush, HOLE_LABEL]


def labeling_config(label_map: LabelMap) -> str:
    """The Label Studio labelling config of a workspace: one Image, BrushLabels and PolygonLabels.

    Example:
        >>> print(labeling_config(LabelMap(["person"])))  # doctest: +ELLIPSIS
        <View>
          <Image name="image" value="$image" zoom="true" zoomControl="true"/>
          <BrushLabels name="brush" toName="image">
            <Label value="person" background="#800000"/>...
    """
    brush, polygon = region_labels(label_map)

    def colour(label: str) -> str:
        index = label_map.index(label)
        return _colour(IGNORE_INDEX if index is None else index)

    def labels(names: Iterable[str]) -> str:
        return "".join(f"\n    <Label value={quoteattr(n)} background={quoteattr(colour(n))}/>" for n in names)

    return (f'<View>\n  <Image name="{IMAGE_TAG}" value="${IMAGE_TAG}" zoom="true" zoomControl="true"/>\n'
            f'  <BrushLabels name="{BRUSH_TAG}" toName="{IMAGE_TAG}">{labels(brush)}\n  </BrushLabels>\n'
            f'  <PolygonLabels name="{POLYGON_TAG}" toName="{IMAGE_TAG}" strokeWidth="2" pointSize="small" '
            f'opacity="0.5">{labels(polygon)}\n  </PolygonLabels>\n</View>\n')


def declared_labels(config: Path) -> dict[str, set[str]]:
    """The labels each control tag of a labelling config declares (``{from_name: {label, ...}}``).

    Raises:
        AnnotationError: the file is not readable XML (defusedxml: no entities).
    """
    import defusedxml.ElementTree as DET
    from defusedxml import DefusedXmlException

    try:
        root = DET.parse(config).getroot()
    except (OSError, DET.ParseError, DefusedXmlException) as e:
        raise AnnotationError(f"not a readable labelling config: {e}", path=config) from e
    out: dict[str, set[str]] = {}
    for element in root.iter():
        if element.tag.lower() in (*REGION_TYPES, "labels") and element.get("name"):
            out[str(element.get("name"))] = {str(c.get("value")) for c in element if c.tag == "Label"}
    return out
