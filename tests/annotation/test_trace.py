from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from dataeng.annotation.rasterize import rasterize
from dataeng.annotation.trace import trace
from dataeng.annotation.types import ImageAnnotation, LabelMap, Shape
from tests.annotation.conftest import donut_mask, iou

LM = LabelMap(["person", "hat"])


def _redraw(mask: np.ndarray, class_index: int, tolerance: float) -> np.ndarray:
    shapes = tuple(Shape("person", "polygon", p.exterior, p.holes) for p in trace(mask, class_index, tolerance))
    ann = ImageAnnotation("x", None, None, None, shapes, "test", Path("x"))
    return rasterize(ann, LM, mask.shape[1], mask.shape[0]).mask == 1


def test_round_trip_on_portrait_masks(fixtures: Path) -> None:
    ious = []
    for png in sorted((fixtures / "portrait" / "picsart_sample" / "masks").glob("*.png")):
        mask = (np.asarray(Image.open(png)) > 0).astype(np.uint8)
        ious.append(iou(mask == 1, _redraw(mask, 1, tolerance=0.7)))
    median, p5 = float(np.median(ious)), float(np.percentile(ious, 5))
    print(f"trace round trip over {len(ious)} masks: median IoU {median:.4f}, p5 {p5:.4f}")
    assert len(ious) == 40
    assert median >= 0.99 and p5 >= 0.98


def test_donut_keeps_its_hole_exactly() -> None:
    mask = donut_mask()
    polygons = trace(mask, 1, tolerance=0)
    assert len(polygons) == 1 and len(polygons[0].holes) == 1
    assert (_redraw(mask, 1, 0) == (mask == 1)).all()
    assert _redraw(mask, 1, 0)[24, 22] == 0


def test_largest_first_and_empty() -> None:
    mask = np.zeros((20, 20), np.uint8)
    mask[1:3, 1:3] = 1
    mask[8:19, 8:19] = 1
    polygons = trace(mask, 1)
    assert len(polygons) == 2 and max(x for x, _ in polygons[0].exterior) == 18
    assert trace(np.zeros((5, 5), np.uint8), 1) == []


def test_single_pixel_is_a_valid_polygon() -> None:
    mask = np.zeros((5, 5), np.uint8)
    mask[2, 3] = 1
    (polygon,) = trace(mask, 1, tolerance=0)
    assert len(polygon.exterior) >= 3
    assert (_redraw(mask, 1, 0) == (mask == 1)).all()


@pytest.mark.parametrize(
    ("mask", "tolerance"), [(np.zeros((2, 2, 2), np.uint8), 0.5), (np.zeros((2, 2), np.uint8), -1)]
)
def test_trace_refuses(mask: np.ndarray, tolerance: float) -> None:
    with pytest.raises(ValueError, match=r"2-D|tolerance"):
        trace(mask, 1, tolerance)


@settings(max_examples=40, deadline=None)
@given(
    boxes=st.lists(
        st.tuples(st.integers(0, 30), st.integers(0, 30), st.integers(1, 12), st.integers(1, 12)),
        min_size=1,
        max_size=4,
    ),
    big=st.lists(
        st.tuples(st.integers(0, 40), st.integers(0, 40), st.integers(20, 40), st.integers(20, 40)),
        min_size=1,
        max_size=3,
    ),
)
def test_round_trip_property(boxes: list[tuple[int, int, int, int]], big: list[tuple[int, int, int, int]]) -> None:
    small = np.zeros((40, 40), np.uint8)
    for x, y, w, h in boxes:
        small[y : y + h, x : x + w] = 1
    # Without simplification any mask comes back.
    assert iou(small == 1, _redraw(small, 1, tolerance=0)) >= 0.99
    # With the default tolerance, regions of realistic size keep IoU >= 0.99.
    large = np.zeros((80, 80), np.uint8)
    for x, y, w, h in big:
        large[y : y + h, x : x + w] = 1
    assert iou(large == 1, _redraw(large, 1, tolerance=0.7)) >= 0.99
