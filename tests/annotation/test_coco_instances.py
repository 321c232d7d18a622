"""COCO export as instances: one annotation per 8-connected region of a class, ignore as marked crowd
regions (no ``__ignore__`` category), read with pycocotools; the semantic option; the reader's ignore rules."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO

from dataeng.annotation.formats import coco
from dataeng.annotation.formats.export import Component, connected_components, ignore_owner
from dataeng.annotation.rasterize import rasterize
from dataeng.annotation.types import IGNORE_INDEX, IGNORE_LABEL, ExportRecord, LabelMap
from tests.annotation.conftest import donut_mask, iou

PERSON, HAT = 1, 2
LABEL_MAP = LabelMap(["person", "hat"])


def scene_mask() -> np.ndarray:
    """4 person regions (one of two blocks touching only at a corner), 3 hat regions, 4 ignore regions.

    Ignore regions: (1) between two hats, (2) under a person, (3) alone on background,
    (4) 3 person pixels above it, 10 hat pixels below.
    """
    mask = np.zeros((48, 64), np.uint8)
    mask[5:20, 3:15] = PERSON
    mask[10:13, 7:10] = 0  # a hole
    mask[25:30, 3:8] = PERSON
    mask[30:35, 8:13] = PERSON  # touches the block above at a corner only: 8-connected, one region
    mask[44, 2] = PERSON  # a single pixel
    mask[22:25, 20:23] = PERSON
    mask[5:10, 30:40] = HAT
    mask[12:16, 30:34] = HAT
    mask[27:30, 20:30] = HAT
    mask[10:12, 30:40] = IGNORE_INDEX  # (1) hat above and below
    mask[20:22, 3:15] = IGNORE_INDEX  # (2) person above
    mask[40:46, 44:62] = IGNORE_INDEX  # (3) background only
    mask[25:27, 20:30] = IGNORE_INDEX  # (4) person 3 px, hat 10 px
    return mask


OWNERS = {(10, 30): HAT, (20, 3): PERSON, (40, 44): PERSON, (25, 20): HAT}
"""Top-left pixel (row, col) of each ignore region -> the class it is written under."""


@pytest.fixture()
def scene(tmp_path: Path) -> list[ExportRecord]:
    out = []
    for i, mask in enumerate([scene_mask(), donut_mask()]):
        image_path = tmp_path / "src" / f"{i}.png"
        image_path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((*mask.shape, 3), 90, np.uint8)).save(image_path)
        out.append(ExportRecord(f"scene{i}.png", mask.shape[1], mask.shape[0], mask, image_path=image_path,
                                meta={"label_id": i + 1, "origin": "human"}))
    return out


def _components(pixels: np.ndarray) -> int:
    count, _ = cv2.connectedComponents(pixels.astype(np.uint8), connectivity=8)
    return int(count) - 1


def _by_image(api: COCO, image_id: int) -> list[dict]:
    return api.loadAnns(api.getAnnIds(imgIds=[image_id]))


@pytest.mark.parametrize("coco_masks", ["rle", "polygon"])
def test_one_annotation_per_connected_region_and_the_union_is_the_class(
    tmp_path: Path, scene: list[ExportRecord], coco_masks: str
) -> None:
    (path,) = coco.write(tmp_path / "out", scene, LABEL_MAP, coco_masks=coco_masks)  # type: ignore[arg-type]
    api = COCO(str(path))
    assert [c["name"] for c in api.loadCats(api.getCatIds())] == ["person", "hat"]
    assert all(IGNORE_LABEL not in c["name"] for c in api.dataset["categories"])
    for image in api.dataset["images"]:
        record = next(r for r in scene if r.image_name == image["file_name"])
        anns = [a for a in _by_image(api, image["id"]) if not a["iscrowd"]]
        for class_index in (PERSON, HAT):
            expected = record.mask == class_index
            mine = [a for a in anns if a["category_id"] == class_index]
            assert len(mine) == _components(expected), (image["file_name"], class_index)
            masks = [api.annToMask(a).astype(bool) for a in mine]
            union = np.logical_or.reduce(masks)
            if coco_masks == "rle":
                assert all(_components(m) == 1 for m in masks)  # each annotation is one region
                assert np.array_equal(union, expected)
                assert sum(int(m.sum()) for m in masks) == int(expected.sum())  # disjoint
                assert all(a["area"] == m.sum() for a, m in zip(mine, masks, strict=True))
            else:  # polygons through pixel centres lose holes and edge pixels (a pinch may split)
                assert all(len(a["segmentation"]) == 1 for a in mine)  # one exterior per region
                assert iou(union, expected) >= 0.6
        assert len(anns) == sum(_components(record.mask == c) for c in (PERSON, HAT))
    first = [a for a in _by_image(api, 1) if not a["iscrowd"]]
    assert len(first) == 7  # 4 person regions (the corner-touching blocks are one), 3 hat regions


def test_ignore_is_crowd_rle_under_the_class_it_borders_most(tmp_path: Path, scene: list[ExportRecord]) -> None:
    for coco_masks in ("rle", "polygon"):
        (path,) = coco.write(tmp_path / coco_masks, scene, LABEL_MAP, coco_masks=coco_masks)  # type: ignore[arg-type]
        api = COCO(str(path))
        for image in api.dataset["images"]:
            record = next(r for r in scene if r.image_name == image["file_name"])
            crowd = [a for a in _by_image(api, image["id"]) if a["iscrowd"]]
            ignore = record.mask == IGNORE_INDEX
            assert len(crowd) == _components(ignore)
            masks = [api.annToMask(a).astype(bool) for a in crowd]
            assert np.array_equal(np.logical_or.reduce(masks), ignore)  # exactly the ignore pixels
            assert sum(int(m.sum()) for m in masks) == int(ignore.sum())
            for a, m in zip(crowd, masks, strict=True):
                assert isinstance(a["segmentation"], dict)  # RLE, also with coco_masks="polygon"
                assert a["attributes"] == {"dataeng_ignore": True}
                assert a["category_id"] in (PERSON, HAT) and a["area"] == m.sum()
                x, y, w, h = a["bbox"]
                assert m[y : y + h, x : x + w].sum() == m.sum() and m[y, x : x + w].any() and m[y : y + h, x].any()
            if image["file_name"] == "scene0.png":
                owners = {}
                for a, m in zip(crowd, masks, strict=True):
                    ys, xs = np.nonzero(m)
                    owners[(int(ys.min()), int(xs.min()))] = a["category_id"]
                assert owners == OWNERS


def test_with_one_class_ignore_is_that_class(tmp_path: Path) -> None:
    mask = np.zeros((30, 40), np.uint8)
    mask[5:15, 5:15] = 1
    mask[15:17, 5:15] = IGNORE_INDEX
    mask[25:28, 30:38] = IGNORE_INDEX
    (path,) = coco.write(tmp_path, [ExportRecord("a.png", 40, 30, mask)], LabelMap(["person"]), copy_images=False)
    data = json.loads(path.read_text())
    assert data["categories"] == [{"id": 1, "name": "person", "supercategory": ""}]
    assert [(a["category_id"], a["iscrowd"]) for a in data["annotations"]] == [(1, 0), (1, 1), (1, 1)]


def test_semantic_writes_one_annotation_per_class(tmp_path: Path, scene: list[ExportRecord]) -> None:
    (path,) = coco.write(tmp_path, scene, LABEL_MAP, coco_annotations="semantic")
    api = COCO(str(path))
    assert all(c["name"] != IGNORE_LABEL for c in api.dataset["categories"])
    for image in api.dataset["images"]:
        record = next(r for r in scene if r.image_name == image["file_name"])
        anns = _by_image(api, image["id"])
        plain = [a for a in anns if not a["iscrowd"]]
        assert sorted(a["category_id"] for a in plain) == [PERSON, HAT]
        for a in plain:
            assert np.array_equal(api.annToMask(a).astype(bool), record.mask == a["category_id"])
        crowd = [a for a in anns if a["iscrowd"]]
        union = np.logical_or.reduce([api.annToMask(a).astype(bool) for a in crowd])
        assert np.array_equal(union, record.mask == IGNORE_INDEX)
        assert len({a["category_id"] for a in crowd}) == len(crowd)  # one crowd region per class at most
        assert all(a["attributes"] == {"dataeng_ignore": True} for a in crowd)
    first = _by_image(api, 1)
    assert sorted((a["category_id"], a["iscrowd"]) for a in first) == [(PERSON, 0), (PERSON, 1), (HAT, 0), (HAT, 1)]


@pytest.mark.parametrize("coco_annotations", ["instances", "semantic"])
def test_written_reads_back_exactly_ignore_included(tmp_path: Path, scene: list[ExportRecord],
                                                    coco_annotations: str) -> None:
    (path,) = coco.write(tmp_path, scene, LABEL_MAP, coco_annotations=coco_annotations)  # type: ignore[arg-type]
    result = coco.read(path)
    assert not result.problems and len(result.items) == len(scene)
    for item, record in zip(result.items, scene, strict=True):
        raster = rasterize(item, LABEL_MAP, record.width, record.height)
        assert not raster.unknown_labels
        np.testing.assert_array_equal(raster.mask, record.mask)
        assert item.meta["provenance"] == record.meta


def test_reader_ignore_rules(tmp_path: Path) -> None:
    """Marked crowd regions are ignore; so is an old ``__ignore__`` category; an unmarked crowd is its class."""
    mask = np.zeros((20, 30), np.uint8)
    mask[2:8, 2:8] = 1
    mask[8:10, 2:8] = IGNORE_INDEX
    mask[12:18, 20:28] = IGNORE_INDEX
    (path,) = coco.write(tmp_path / "new", [ExportRecord("a.png", 30, 20, mask)], LabelMap(["person"]),
                         copy_images=False)
    data = json.loads(path.read_text())
    assert [a["iscrowd"] for a in data["annotations"]] == [0, 1, 1]
    label_map = LabelMap(["person"])

    def drawn(doc: dict, name: str) -> np.ndarray:
        file = tmp_path / f"{name}.json"
        file.write_text(json.dumps(doc))
        (item,) = coco.read(file).items
        return rasterize(item, label_map, 30, 20).mask

    np.testing.assert_array_equal(drawn(data, "marked"), mask)
    third_party = json.loads(json.dumps(data))
    for a in third_party["annotations"]:
        a.pop("attributes", None)
    np.testing.assert_array_equal(drawn(third_party, "unmarked"), np.where(mask == IGNORE_INDEX, 1, mask))
    old = json.loads(json.dumps(third_party))  # how exports before 2026-12-02 wrote ignore
    old["categories"].append({"id": 2, "name": IGNORE_LABEL, "supercategory": ""})
    for a in old["annotations"]:
        if a["iscrowd"]:
            a["category_id"], a["iscrowd"] = 2, 0
    np.testing.assert_array_equal(drawn(old, "old"), mask)
    false_marker = json.loads(json.dumps(data))
    for a in false_marker["annotations"]:
        if "attributes" in a:
            a["attributes"]["dataeng_ignore"] = False
    np.testing.assert_array_equal(drawn(false_marker, "false"), np.where(mask == IGNORE_INDEX, 1, mask))


def test_ignore_owner_ties_edges_and_no_class() -> None:
    mask = np.zeros((10, 10), np.uint8)
    mask[0:2, 0:3] = IGNORE_INDEX  # at the image corner, touching nothing
    mask[5, 4:6] = IGNORE_INDEX
    mask[4, 4:6] = mask[6, 4:6] = HAT  # 4 hat pixels beside it
    mask[6, 3] = mask[6, 6] = PERSON  # 2 person pixels at its corners
    regions = connected_components(mask == IGNORE_INDEX)
    assert [c.origin for c in regions] == [(0, 0), (4, 5)]
    assert ignore_owner(mask, regions[0], LABEL_MAP) == PERSON  # nothing beside it: the first class
    assert ignore_owner(mask, regions[1], LABEL_MAP) == HAT
    tie = np.zeros((5, 5), np.uint8)
    tie[2, 2] = IGNORE_INDEX
    tie[1, 2], tie[3, 2] = HAT, PERSON
    assert ignore_owner(tie, Component(np.ones((1, 1), bool), (2, 2)), LABEL_MAP) == PERSON  # lowest index
    with pytest.raises(ValueError, match="has none"):
        ignore_owner(tie, Component(np.ones((1, 1), bool), (2, 2)), LabelMap([]))


def test_unknown_annotation_mode_is_refused(tmp_path: Path, scene: list[ExportRecord]) -> None:
    with pytest.raises(ValueError, match="instances"):
        coco.write(tmp_path, scene, LABEL_MAP, coco_annotations="panoptic")  # type: ignore[arg-type]
    assert not (tmp_path / "annotations").exists()


def test_coco_eval_ignores_detections_on_ignore_pixels(tmp_path: Path, scene: list[ExportRecord]) -> None:
    """Perfect instance predictions plus two detections splitting each ignore region (left and right
    half) score AP 1: COCO evaluation ignores detections on crowd regions. The same file with the
    crowd flags cleared (ignore as ordinary objects) scores less: the halves are false positives."""
    from pycocotools import mask as coco_mask
    from pycocotools.cocoeval import COCOeval

    from dataeng.annotation.rle import encode_coco_rle

    (path,) = coco.write(tmp_path, scene, LABEL_MAP)
    data = json.loads(path.read_text())
    results = []
    for a in data["annotations"]:
        if not a["iscrowd"]:
            results.append({"image_id": a["image_id"], "category_id": a["category_id"],
                            "segmentation": a["segmentation"], "score": 1.0})
            continue
        rle = {"size": a["segmentation"]["size"], "counts": a["segmentation"]["counts"].encode()}
        region = coco_mask.decode(rle).astype(bool)
        x, _, w, _ = a["bbox"]
        cols = np.arange(region.shape[1])[None, :]
        for half in (region & (cols < x + w // 2), region & (cols >= x + w // 2)):
            results.append({"image_id": a["image_id"], "category_id": a["category_id"],
                            "segmentation": encode_coco_rle(half), "score": 0.9})
    assert sum(a["iscrowd"] for a in data["annotations"]) == 4 + 1

    def ap(doc: dict) -> float:
        file = tmp_path / "gt.json"
        file.write_text(json.dumps(doc))
        gt = COCO(str(file))
        evaluation = COCOeval(gt, gt.loadRes([dict(r) for r in results]), "segm")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
        return float(evaluation.stats[0])

    assert ap(data) == pytest.approx(1.0)  # AP@[.5:.95]: nothing on ignore pixels counts
    for a in data["annotations"]:
        a["iscrowd"] = 0
    assert ap(data) < 0.95
