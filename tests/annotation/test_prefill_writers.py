"""Labelme and CVAT polygon writers under :class:`TraceLimits` (review pre-fills, issue 17)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from dataeng.annotation.formats import cvat, labelme
from dataeng.annotation.formats.export import HOLE_LABEL, absorb_small_ignore, flat_draw_items, polygons_by_class
from dataeng.annotation.rasterize import rasterize
from dataeng.annotation.trace import TraceLimits, draw_polygons
from dataeng.annotation.types import IGNORE_INDEX, IGNORE_LABEL, ExportRecord, ImageAnnotation, LabelMap
from tests.annotation.conftest import iou
from tests.annotation.prelabels import nearly_full_frame

LM = LabelMap(["person"])


def prelabel() -> np.ndarray:
    """The demo's riddled pre-label, with an ignore speck inside the person and an unsure corner."""
    mask = nearly_full_frame(256, seed=1, holes=60)
    mask[100:103, 100:103] = IGNORE_INDEX  # 9 px: the person around it takes it
    mask[:40, :40] = IGNORE_INDEX  # 1,600 px: stays for the annotator to decide
    return mask


def _drawn(annotation: ImageAnnotation) -> np.ndarray:
    return rasterize(annotation, LM, 256, 256).mask


def _check(drawn: np.ndarray, mask: np.ndarray) -> None:
    care = mask != IGNORE_INDEX
    assert iou((drawn == 1) & care, (mask == 1) & care) >= 0.98
    assert drawn[101, 101] == 1  # the speck was absorbed
    assert (drawn[:40, :40] == IGNORE_INDEX).mean() > 0.95


def test_labelme_pre_fill_has_no_hole_rings_and_keeps_the_mask(tmp_path: Path) -> None:
    mask = prelabel()
    record = ExportRecord("a.jpg", 256, 256, mask)
    (plain,) = labelme.write(tmp_path / "plain", [record], LM, copy_images=False)
    assert Counter(s["label"] for s in json.loads(plain.read_text())["shapes"])[HOLE_LABEL] >= 50
    (path,) = labelme.write(tmp_path / "limited", [record], LM, limits=TraceLimits(), copy_images=False)
    shapes = json.loads(path.read_text())["shapes"]
    assert Counter(s["label"] for s in shapes) == {"person": 1, IGNORE_LABEL: 1}
    assert sum(len(s["points"]) for s in shapes) <= 20
    annotation, _ = labelme.read_file(path, tmp_path / "limited")
    _check(_drawn(annotation), mask)


def test_cvat_polygon_pre_fill_has_no_hole_rings_and_keeps_the_mask(tmp_path: Path) -> None:
    mask = prelabel()
    record = ExportRecord("a.jpg", 256, 256, mask)
    cvat.write(tmp_path, [record], LM, cvat_masks="polygon", limits=TraceLimits(), copy_images=False)
    (annotation,) = cvat.read(tmp_path / "annotations.xml").items
    assert Counter(s.label for s in annotation.shapes) == {"person": 1, IGNORE_LABEL: 1}
    _check(_drawn(annotation), mask)


def test_hole_rings_stay_without_limits_or_without_a_minimum_area() -> None:
    mask = prelabel()
    record = ExportRecord("a.jpg", 256, 256, mask)
    items = flat_draw_items(record, LM)
    assert sum(item.is_hole for item in items) >= 50
    assert len(flat_draw_items(record, LM, limits=TraceLimits(min_region_fraction=0.0))) > 50


def test_small_ignore_takes_its_surroundings_and_large_ignore_stays() -> None:
    mask = np.zeros((20, 20), np.uint8)
    mask[2:12, 2:12] = 1
    mask[5, 5] = IGNORE_INDEX  # inside the person
    mask[16, 16] = IGNORE_INDEX  # in the background
    mask[0, 19] = IGNORE_INDEX  # only the image edge and background around it
    mask[14:20, 0:6] = IGNORE_INDEX  # 36 px
    out = absorb_small_ignore(mask, 10)
    assert (out[5, 5], out[16, 16], out[0, 19]) == (1, 0, 0)
    assert (out[14:20, 0:6] == IGNORE_INDEX).all()
    assert (mask[5, 5], mask[16, 16]) == (IGNORE_INDEX, IGNORE_INDEX)  # a copy
    np.testing.assert_array_equal(absorb_small_ignore(mask, 0), mask)


@pytest.mark.parametrize("writer", ["labelme", "cvat"])
def test_an_island_in_a_hole_is_drawn_on_top(tmp_path: Path, writer: str) -> None:
    mask = np.zeros((120, 120), np.uint8)
    mask[10:110, 10:110] = 1
    mask[30:90, 30:90] = 0  # a large hole, kept
    mask[50:70, 50:70] = 1  # a large island inside it, kept
    record = ExportRecord("a.jpg", 120, 120, mask)
    if writer == "labelme":
        (path,) = labelme.write(tmp_path, [record], LM, limits=TraceLimits(), copy_images=False)
        annotation, _ = labelme.read_file(path, tmp_path)
    else:
        cvat.write(tmp_path, [record], LM, cvat_masks="polygon", limits=TraceLimits(), copy_images=False)
        (annotation,) = cvat.read(tmp_path / "annotations.xml").items
    drawn = rasterize(annotation, LM, 120, 120).mask
    assert (drawn[60, 60], drawn[40, 40], drawn[20, 20]) == (1, 0, 1)
    assert iou(drawn == 1, mask == 1) >= 0.98


def test_ignore_shapes_are_traced_tighter_when_they_would_cover_the_person(tmp_path: Path) -> None:
    mask = np.zeros((200, 200), np.uint8)
    mask[20:180, 20:180] = 1
    mask[60:66, 50:110] = IGNORE_INDEX  # a comb of unsure pixels inside the person: its base...
    for x in range(50, 110, 6):
        mask[66:126, x : x + 2] = IGNORE_INDEX  # ...and its teeth, with person pixels between them
    record = ExportRecord("a.jpg", 200, 200, mask)
    limits = TraceLimits(max_vertices=16)
    care = mask != IGNORE_INDEX
    # Traced loosely (no IoU bound, cap 16) the comb becomes a blob over the person between its teeth.
    loose = polygons_by_class(record, LM, limits=limits, ignore="loose")
    (ignore_polygons,) = [polygons for region, polygons in loose if region.class_index == IGNORE_INDEX]
    covered = draw_polygons(ignore_polygons, 200, 200) & (mask == 1)
    assert covered.sum() > 0.02 * (mask == 1).sum()
    (path,) = labelme.write(tmp_path, [record], LM, limits=limits, copy_images=False)
    drawn = rasterize(labelme.read_file(path, tmp_path)[0], LM, 200, 200).mask
    assert iou((drawn == 1) & care, (mask == 1) & care) >= 0.98
    assert (drawn[70:120, 50:110] == IGNORE_INDEX).sum() >= 0.9 * (mask[70:120, 50:110] == IGNORE_INDEX).sum()
