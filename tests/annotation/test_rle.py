from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from pycocotools.coco import COCO

from dataeng.annotation.formats import coco, cvat
from dataeng.annotation.rasterize import rasterize, shape_region
from dataeng.annotation.rle import decode_cvat_rle, encode_cvat_rle, parse_cvat_rle
from dataeng.annotation.types import ImageAnnotation, LabelMap


def test_cvat_rle_round_trip() -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        patch = rng.random((7, 5)) > 0.5
        assert (decode_cvat_rle(encode_cvat_rle(patch), 5, 7) == patch).all()
    assert parse_cvat_rle("1, 2,3") == [1, 2, 3]


def test_cvat_rle_sum_mismatch() -> None:
    with pytest.raises(ValueError, match="sum to 5"):
        decode_cvat_rle([2, 3], 2, 2)


@pytest.fixture(scope="session")
def urban(fixtures: Path) -> tuple[list[ImageAnnotation], list[ImageAnnotation]]:
    folder = fixtures / "cvat" / "urban_scene_cvat_project"
    return cvat.read(folder / "annotations.xml").items, coco.read(folder / "instances_default.json").items


def _full(item: ImageAnnotation, k: int) -> tuple[np.ndarray, tuple[int, int]]:
    shape = [s for s in item.shapes if s.kind == "bitmap"][k]
    assert item.width and item.height
    region = shape_region(shape, item.width, item.height)
    assert region is not None
    return region


def test_cvat_masks_equal_coco_export(urban: tuple[list[ImageAnnotation], list[ImageAnnotation]]) -> None:
    cvat_items, coco_items = urban
    by_name = {item.image_name: item for item in coco_items}
    compared = 0
    for item in cvat_items:
        other = by_name[item.image_name]
        cvat_masks = [s for s in item.shapes if s.kind == "bitmap"]
        coco_masks = [s for s in other.shapes if s.kind == "bitmap"]
        assert len(cvat_masks) == len(coco_masks)
        for a, b in zip(cvat_masks, coco_masks, strict=True):
            assert a.label == b.label
            # CVAT's box may be looser than the content: compare on the tight content.
            assert a.bitmap is not None and b.bitmap is not None
            ys, xs = np.nonzero(a.bitmap)
            assert (a.origin[0] + xs.min(), a.origin[1] + ys.min()) == b.origin
            tight = a.bitmap[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
            assert tight.shape == b.bitmap.shape and (tight == b.bitmap).all()
            compared += 1
    print(f"CVAT <mask> vs COCO export: {compared} masks identical (IoU 1.0)")
    assert compared == 246


def test_urban_missing_images_kept(urban: tuple[list[ImageAnnotation], list[ImageAnnotation]]) -> None:
    cvat_items, coco_items = urban
    for items in (cvat_items, coco_items):
        assert len(items) == 20
        assert sum(item.image_path is not None for item in items) == 2


@pytest.mark.parametrize(
    "name", ["rikai_train2017_subset/coco.json", "airo_val2017_small/instances_val2017_small.json"]
)
def test_coco_equals_ann_to_mask(fixtures: Path, name: str) -> None:
    path = fixtures / "coco" / name
    data = json.loads(path.read_text())
    # annToMask needs no categories; pycocotools' index wants the key.
    data.setdefault("categories", [{"id": i, "name": n} for i, n in coco.COCO_2017_CATEGORIES.items()])
    api = COCO()
    api.dataset = data
    api.createIndex()
    result = coco.read(path)
    crowd = 0
    for item in result.items:
        assert item.width and item.height
        for ann_id in {s.group_id for s in item.shapes}:
            shapes = tuple(s for s in item.shapes if s.group_id == ann_id)
            single = item.replace(shapes=shapes)
            lm = LabelMap(sorted({s.label for s in shapes}))
            mine = rasterize(single, lm, item.width, item.height).mask > 0
            ann = api.anns[ann_id]
            crowd += ann["iscrowd"]
            theirs = api.annToMask(ann).astype(bool)
            assert (mine == theirs).all(), ann_id
    assert crowd >= 1
    assert re.search("categories", " ".join(result.notices)) or name.startswith("airo")
