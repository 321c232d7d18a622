from __future__ import annotations

from pathlib import Path

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from dataeng.annotation.formats import cvat, labelme
from dataeng.annotation.rasterize import rasterize, rasterize_instances, scale_shapes
from dataeng.annotation.types import IGNORE_INDEX, ImageAnnotation, LabelMap, Shape

LM = LabelMap(["person", "hat"])


def _ann(*shapes: Shape) -> ImageAnnotation:
    return ImageAnnotation("x.jpg", None, None, None, tuple(shapes), "test", Path("x.json"))


def test_labelme_semantic_matches_labelme_png(fixtures: Path) -> None:
    folder = fixtures / "labelme" / "semantic_segmentation"
    names = [n for n in (folder / "expected_voc_SegmentationClass" / "class_names.txt").read_text().splitlines() if n]
    lm = LabelMap(names[1:])
    result = labelme.read(folder)
    assert len(result.items) == 3 and not result.problems
    for item in result.items:
        assert item.width and item.height
        raster = rasterize(item, lm, item.width, item.height)
        expected_png = folder / "expected_voc_SegmentationClass" / (Path(item.image_name).stem + ".png")
        expected = np.asarray(Image.open(expected_png))
        agreement = float((raster.mask == expected).mean())
        print(f"labelme agreement {item.image_name}: {agreement:.6f}")
        assert agreement >= 0.999
        assert IGNORE_INDEX in raster.mask or IGNORE_INDEX not in expected


def test_labelme_instances_match_object_png(fixtures: Path) -> None:
    folder = fixtures / "labelme" / "instance_segmentation"
    names = [n for n in (folder / "labels.txt").read_text().splitlines() if n]
    lm = LabelMap(names[2:])
    for item in labelme.read(folder).items:
        assert item.width and item.height
        instances, raster = rasterize_instances(item, lm, item.width, item.height)
        expected = np.asarray(
            Image.open(folder / "expected_voc_SegmentationClass" / (Path(item.image_name).stem + ".png"))
        )
        assert (raster.mask == expected).mean() >= 0.999
        objects = np.asarray(
            Image.open(folder / "expected_voc_SegmentationObject" / (Path(item.image_name).stem + ".png"))
        )
        assert len(np.unique(instances)) == len(np.unique(objects[objects != IGNORE_INDEX]))


def test_primitives_every_shape_type(fixtures: Path) -> None:
    result = labelme.read(fixtures / "labelme" / "primitives" / "primitives_v5.7.0.json")
    (item,) = result.items
    assert {s.kind for s in item.shapes} == {"rectangle", "circle", "polygon", "bitmap"}
    assert sum("no area" in n for n in result.notices) == 3
    lm = LabelMap(["rectangle", "circle", "polygon", "octagon"])
    mask = rasterize(item, lm, 560, 450).mask
    assert (mask[35:135, 32:132] == 1).all() and mask[35:135, 32:132].size == 100 * 100
    assert mask[84 + 50, 195] == 2 and mask[84 + 52, 195] == 0  # radius hypot(30, 41) = 50.8
    octagon = next(s for s in item.shapes if s.kind == "bitmap")
    assert octagon.origin == (417, 305)
    assert (mask == 4).sum() == octagon.bitmap.sum()  # type: ignore[union-attr]


@settings(max_examples=60, deadline=None)
@given(
    x0=st.integers(-10, 40),
    y0=st.integers(-10, 40),
    x1=st.integers(-10, 40),
    y1=st.integers(-10, 40),
    swap=st.booleans(),
)
def test_rectangle_fills_exactly_w_times_h(x0: int, y0: int, x1: int, y1: int, swap: bool) -> None:
    corners = ((x1, y1), (x0, y0)) if swap else ((x0, y0), (x1, y1))
    raster = rasterize(_ann(Shape("person", "rectangle", corners)), LM, 32, 24)
    w = max(0, min(32, max(x0, x1)) - max(0, min(x0, x1)))
    h = max(0, min(24, max(y0, y1)) - max(0, min(y0, y1)))
    assert int((raster.mask == 1).sum()) == w * h
    inside = min(x0, x1) >= 0 and max(x0, x1) <= 32 and min(y0, y1) >= 0 and max(y0, y1) <= 24
    assert bool(raster.notices) != inside


coords = st.floats(-30, 60, allow_nan=False)


@settings(max_examples=60, deadline=None)
@given(points=st.lists(st.tuples(coords, coords), min_size=3, max_size=8))
def test_nothing_drawn_outside_canvas(points: list[tuple[float, float]]) -> None:
    raster = rasterize(_ann(Shape("person", "polygon", tuple(points))), LM, 20, 16)
    assert raster.mask.shape == (16, 20)
    assert set(np.unique(raster.mask).tolist()) <= {0, 1}


@settings(max_examples=60, deadline=None)
@given(
    a=st.tuples(st.integers(0, 30), st.integers(0, 30), st.integers(1, 15), st.integers(1, 15)),
    b=st.tuples(st.integers(0, 30), st.integers(0, 30), st.integers(1, 15), st.integers(1, 15)),
    za=st.integers(-2, 2),
    zb=st.integers(-2, 2),
)
def test_order_matters_only_where_shapes_overlap(
    a: tuple[int, int, int, int], b: tuple[int, int, int, int], za: int, zb: int
) -> None:
    ra = Shape("person", "rectangle", ((a[0], a[1]), (a[0] + a[2], a[1] + a[3])), z_order=za)
    rb = Shape("hat", "rectangle", ((b[0], b[1]), (b[0] + b[2], b[1] + b[3])), z_order=zb)
    m1 = rasterize(_ann(ra, rb), LM, 48, 48).mask
    m2 = rasterize(_ann(rb, ra), LM, 48, 48).mask
    only_a = rasterize(_ann(ra), LM, 48, 48).mask > 0
    only_b = rasterize(_ann(rb), LM, 48, 48).mask > 0
    overlap = only_a & only_b
    assert (m1[~overlap] == m2[~overlap]).all()
    if overlap.any():
        if za != zb:
            top = 1 if za > zb else 2
            assert (m1[overlap] == top).all() and (m2[overlap] == top).all()
        else:
            assert (m1[overlap] == 2).all() and (m2[overlap] == 1).all()


def test_holes_show_what_lies_beneath() -> None:
    square = ((2.0, 2.0), (17.0, 2.0), (17.0, 17.0), (2.0, 17.0))
    hole = ((7.0, 7.0), (12.0, 7.0), (12.0, 12.0), (7.0, 12.0))
    under = Shape("hat", "rectangle", ((0, 0), (20, 20)))
    mask = rasterize(_ann(under, Shape("person", "polygon", square, holes=(hole,))), LM, 20, 20).mask
    assert (mask[7:13, 7:13] == 2).all() and mask[3, 3] == 1


def test_unknown_labels_are_reported_and_drawn_as_ignore() -> None:
    raster = rasterize(_ann(Shape("car", "rectangle", ((0, 0), (4, 4)))), LM, 8, 8)
    assert raster.unknown_labels == {"car"} and raster.only_unknown
    assert (raster.mask[:4, :4] == IGNORE_INDEX).all() and not raster.mask[4:, :].any()
    mixed = rasterize(_ann(Shape("car", "rectangle", ((0, 0), (4, 4))),
                           Shape("person", "rectangle", ((2, 2), (6, 6)))), LM, 8, 8)
    assert not mixed.only_unknown and mixed.known_shapes == 1
    assert mixed.mask[0, 0] == IGNORE_INDEX and (mixed.mask[2:6, 2:6] == 1).all()
    assert not rasterize(_ann(), LM, 8, 8).only_unknown  # an empty annotation: a real "no person" label


def test_scale_shapes_airo_declared_size(fixtures: Path) -> None:
    folder = fixtures / "cvat" / "airo_lego_battery_job_export"
    item = cvat.read(folder / "original_annotations.xml").items[0]
    assert (item.width, item.height) == (4096, 2304) and item.image_path is not None
    with Image.open(item.image_path) as im:
        real = im.size
    assert real == (512, 256)
    scaled = scale_shapes(item, *real)
    assert (scaled.width, scaled.height) == real and scaled.meta["declared_size"] == (4096, 2304)
    lm = LabelMap(["battery.mask"])
    big = rasterize(item, lm, 4096, 2304).mask
    small = rasterize(scaled, lm, *real).mask
    ratio = (small == 1).sum() * 64 / max(1, (big == 1).sum())
    assert 0.9 < ratio < 1.1
