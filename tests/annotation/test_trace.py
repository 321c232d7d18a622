from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from dataeng.annotation.rasterize import rasterize
from dataeng.annotation.trace import TraceLimits, trace, trace_limited, vertex_count
from dataeng.annotation.types import ImageAnnotation, LabelMap, Polygon, Shape
from tests.annotation.conftest import donut_mask, iou
from tests.annotation.prelabels import nearly_full_frame, noisy_prelabel

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


# ---------------------------------------------------------------- pre-fills (trace_limited, issue 17)
def _drawn(polygons: list[Polygon], shape: tuple[int, int]) -> np.ndarray:
    """Polygons drawn by the rasteriser the importers use (not by trace.draw_polygons)."""
    shapes = tuple(Shape("person", "polygon", p.exterior, p.holes) for p in polygons)
    ann = ImageAnnotation("x", None, None, None, shapes, "test", Path("x"))
    return rasterize(ann, LM, shape[1], shape[0]).mask == 1


def _rings(polygons: list[Polygon]) -> int:
    return sum(1 + len(p.holes) for p in polygons)


def test_the_demos_pre_fill_becomes_one_polygon_without_hole_rings() -> None:
    # What a user saw in labelme: a polygon around nearly the whole frame plus ~60 hole rings.
    mask = nearly_full_frame(256, seed=0, holes=60)
    assert sum(len(p.holes) for p in trace(mask, 1)) >= 50
    polygons = trace_limited(mask, 1, TraceLimits())
    assert len(polygons) == 1 and polygons[0].holes == ()
    assert len(polygons[0].exterior) <= 8
    assert iou(_drawn(polygons, mask.shape), mask == 1) >= 0.98


@pytest.mark.parametrize(("size", "seed"), [(256, 0), (256, 1), (512, 2), (1024, 3)])
def test_limits_hold_on_a_noisy_pre_label(size: int, seed: int) -> None:
    mask = noisy_prelabel(size, seed, holes=16, islands=8)
    limits = TraceLimits()
    plain = trace(mask, 1)
    assert _rings(plain) >= 20  # the specks are there to drop
    polygons = trace_limited(mask, 1, limits)
    assert _rings(polygons) <= 3
    assert vertex_count(polygons) <= limits.max_vertices
    assert vertex_count(polygons) < vertex_count(plain)
    # Nothing kept below the minimum area: the smallest ring encloses more than min_pixels.
    smallest = min(_drawn([Polygon(p.exterior, ())], mask.shape).sum() for p in polygons)
    assert smallest >= limits.min_pixels(size, size)
    assert iou(_drawn(polygons, mask.shape), mask == 1) >= limits.min_iou


@pytest.mark.parametrize(("size", "cap"), [(256, 80), (512, 100), (1024, 60)])
def test_the_vertex_cap_coarsens_the_outline_and_keeps_the_iou(size: int, cap: int) -> None:
    mask = noisy_prelabel(size, seed=size, holes=16, islands=8)
    limits = TraceLimits(max_vertices=cap)
    assert vertex_count(trace(mask, 1, limits.tolerance(size, size), 0.0)) > cap  # the cap binds
    polygons = trace_limited(mask, 1, limits)
    assert vertex_count(polygons) <= cap
    assert iou(_drawn(polygons, mask.shape), mask == 1) >= 0.98


def test_the_iou_bound_wins_over_the_other_limits() -> None:
    # A disc cannot be drawn with 3 vertices at IoU 0.98; 60 pin holes in a person cannot all go either.
    yy, xx = np.mgrid[:128, :128]
    disc = (np.hypot(xx - 64, yy - 64) < 50).astype(np.uint8)
    polygons = trace_limited(disc, 1, TraceLimits(max_vertices=3))
    assert vertex_count(polygons) > 3 and iou(_drawn(polygons, disc.shape), disc == 1) >= 0.98
    riddled = noisy_prelabel(256, seed=5, holes=60, islands=30)
    polygons = trace_limited(riddled, 1, TraceLimits())
    assert _rings(polygons) > 3  # some specks had to stay...
    assert _rings(polygons) < _rings(trace(riddled, 1))  # ...not all of them
    assert iou(_drawn(polygons, riddled.shape), riddled == 1) >= 0.98
    # A lower cap never gives more vertices than a higher one.
    assert vertex_count(trace_limited(riddled, 1, TraceLimits(max_vertices=60))) <= vertex_count(polygons)


def test_a_hole_above_the_minimum_area_is_kept_and_one_below_is_filled() -> None:
    mask = np.zeros((200, 200), np.uint8)
    mask[20:180, 20:180] = 1
    mask[60:90, 60:90] = 0  # 900 px, over 0.1% of 40,000
    mask[140:145, 140:145] = 0  # 25 px, under
    mask[5:8, 190:193] = 1  # a 9 px island
    (polygon,) = trace_limited(mask, 1, TraceLimits())
    assert len(polygon.holes) == 1 and max(x for x, _ in polygon.holes[0]) < 100
    drawn = _drawn([polygon], mask.shape)
    assert not drawn[70, 70] and drawn[142, 142] and not drawn[6, 191]


def test_pixels_outside_care_do_not_count() -> None:
    mask = np.zeros((100, 100), np.uint8)
    mask[20:80, 20:80] = 1
    mask[30:70:2, 80:83] = 1  # comb teeth: no 12-vertex outline keeps them at IoU 0.99...
    care = np.ones(mask.shape, bool)
    care[:, 80:] = False  # ...but nobody claimed those pixels
    limits = TraceLimits(max_vertices=12, min_iou=0.99)
    assert vertex_count(trace_limited(mask, 1, limits)) > 12
    polygons = trace_limited(mask, 1, limits, care=care)
    assert vertex_count(polygons) <= 12
    assert iou(_drawn(polygons, mask.shape) & care, (mask == 1) & care) >= 0.99
    with pytest.raises(ValueError, match="care must have the mask's shape"):
        trace_limited(mask, 1, limits, care=care[:50])


@settings(max_examples=30, deadline=None)
@given(
    blobs=st.lists(st.tuples(st.integers(0, 60), st.integers(0, 60), st.integers(4, 40), st.integers(4, 40)),
                   min_size=1, max_size=3),
    specks=st.lists(st.tuples(st.integers(0, 79), st.integers(0, 79), st.booleans()), max_size=20),
    cap=st.integers(3, 200),
)
def test_the_iou_bound_always_holds(blobs: list[tuple[int, int, int, int]], specks: list[tuple[int, int, bool]],
                                    cap: int) -> None:
    mask = np.zeros((80, 80), np.uint8)
    for x, y, w, h in blobs:
        mask[y : y + h, x : x + w] = 1
    for x, y, on in specks:
        mask[y, x] = int(on)
    if not mask.any():
        return
    limits = TraceLimits(max_vertices=cap)
    polygons = trace_limited(mask, 1, limits)
    assert iou(_drawn(polygons, mask.shape), mask == 1) >= limits.min_iou
    assert vertex_count(polygons) <= max(cap, vertex_count(trace(mask, 1, 0)))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"min_region_fraction": 1.0}, "min_region_fraction"), ({"simplify_fraction": -0.1}, "simplify_fraction"),
     ({"max_vertices": 2}, "max_vertices"), ({"min_iou": 1.5}, "min_iou")],
)
def test_trace_limits_refuse_values_out_of_range(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        TraceLimits(**kwargs)
