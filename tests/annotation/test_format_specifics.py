"""Per-format behaviour beyond the contract: tool compatibility, options, fixture quirks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO

from dataeng.annotation.formats import coco, cvat, labelme, mask_folder, supervisely
from dataeng.annotation.masks import ALPHA_MAX, write_palette_mask
from dataeng.annotation.rasterize import rasterize
from dataeng.annotation.types import IGNORE_INDEX, ExportRecord, LabelMap
from dataeng.errors import UnsupportedFormatError
from tests.annotation.conftest import iou


def test_labelme_written_files_load_in_labelme(
    tmp_path: Path, records: list[ExportRecord], label_map: LabelMap
) -> None:
    from labelme import LabelFile

    paths = labelme.write(tmp_path, records, label_map, flags={"reviewed": False})
    for path in paths:
        lf = LabelFile(str(path))
        assert lf.flags == {"reviewed": False}
        assert lf.image_path == path.with_suffix(".jpg").name
        assert {s["label"] for s in lf.shapes} >= {"person", "hat", "_background_"}
        assert lf.other_data["dataeng"]["origin"] == "human"
        assert all(s["description"].startswith("dataeng ") for s in lf.shapes)
    data = json.loads(paths[0].read_text())
    assert data["imageData"] is None
    assert "__ignore__" in {s["label"] for s in data["shapes"]}


def test_labelme_versions_and_instances(fixtures: Path) -> None:
    result = labelme.read(fixtures / "labelme" / "history")
    assert len(result.items) == 5 and not result.problems
    v3 = next(i for i in result.items if "v3.14.2" in i.annotation_path.name)
    persons = [s for s in v3.shapes if s.label == "person"]
    assert {s.group_id for s in persons} == {1, 2}
    assert persons[0].attributes["label_as_written"].startswith("person-")
    embedded = next(i for i in result.items if "imageData" in i.annotation_path.name)
    assert embedded.image_data is not None


def test_labelme_embedded_image_pointing_at_itself(fixtures: Path) -> None:
    result = labelme.read(fixtures / "labelme" / "tutorial_embedded_imageData")
    assert len(result.items) == 3 and not result.problems
    for item in result.items:
        assert item.image_data is not None and item.image_path is None
        assert (item.width, item.height) == (1210, 907)
    # The expected PNG was made from the v4.0.0 file (the other two annotate differently).
    v4 = next(i for i in result.items if "v4.0.0" in i.annotation_path.name)
    names = (
        (fixtures / "labelme" / "tutorial_embedded_imageData" / "apc2016_obj3_expected_label_names.txt")
        .read_text()
        .split()
    )
    mask = rasterize(v4, LabelMap(names[1:]), 1210, 907).mask
    expected = np.asarray(
        Image.open(fixtures / "labelme" / "tutorial_embedded_imageData" / "apc2016_obj3_expected_label.png")
    )
    assert (mask == expected).mean() >= 0.999


def test_labelme_windows_backslashes(tmp_path: Path) -> None:
    (tmp_path / "JPEGImages").mkdir()
    Image.new("RGB", (10, 8)).save(tmp_path / "JPEGImages" / "a.jpg")
    (tmp_path / "ann").mkdir()
    doc = {"shapes": [], "imagePath": "..\\JPEGImages\\a.jpg", "imageData": None}
    (tmp_path / "ann" / "a.json").write_text(json.dumps(doc))
    result = labelme.read(tmp_path / "ann", root=tmp_path)
    (item,) = result.items
    assert item.image_path == (tmp_path / "JPEGImages" / "a.jpg").resolve()
    assert (item.width, item.height) == (10, 8)


def test_cvat_shapes_attributes_and_skips(fixtures: Path) -> None:
    result = cvat.read(fixtures / "cvat" / "datumaro_test_assets" / "for_images" / "export_task" / "train.xml")
    box = result.items[0].shapes[0]
    assert box.kind == "rectangle" and box.z_order == 1
    assert box.attributes["occluded"] is True and box.attributes["attributes"]["a2"] == "v3"
    assert any("polyline" in n for n in result.notices) and any("points" in n for n in result.notices)
    project = cvat.read(
        fixtures / "cvat" / "datumaro_test_assets" / "for_images" / "export_project" / "annotations.xml"
    )
    assert {i.meta["subset"] for i in project.items} == {"Test", "Train", "Validation"}
    assert all(i.image_path is not None and i.meta["subset"] in i.image_path.parts for i in project.items)


@pytest.mark.parametrize(
    "fixture", ["datumaro_test_assets/for_video/annotations.xml", "old_cvat_video_export_minified/annotations.xml"]
)
def test_cvat_video_refused(fixtures: Path, fixture: str) -> None:
    with pytest.raises(UnsupportedFormatError, match="CVAT for video"):
        cvat.read(fixtures / "cvat" / fixture)


def test_cvat_polygon_option_keeps_holes(tmp_path: Path, records: list[ExportRecord], label_map: LabelMap) -> None:
    cvat.write(tmp_path, records, label_map, cvat_masks="polygon")
    text = (tmp_path / "annotations.xml").read_text()
    assert "<polygon" in text and "<mask" not in text and "dataeng_origin" in text
    result = cvat.read(tmp_path / "annotations.xml")
    item = result.items[0]
    mask = rasterize(item, label_map, 64, 48).mask
    assert mask[24, 18] == 0 and mask[24, 22] == 2
    assert iou(mask == 1, records[0].mask == 1) >= 0.99


def test_coco_written_loads_in_pycocotools(tmp_path: Path, records: list[ExportRecord], label_map: LabelMap) -> None:
    for option in ("rle", "polygon"):
        (path,) = coco.write(tmp_path / option, records, label_map, coco_masks=option)
        api = COCO(str(path))
        person = [a for a in api.loadAnns(api.getAnnIds(imgIds=[1])) if a["category_id"] == 1]
        mask = api.annToMask(person[0]).astype(bool)
        expected = records[0].mask == 1
        if option == "rle":
            assert (mask == expected).all()
        else:  # COCO polygons cannot carry holes: the hole is filled.
            assert mask[24, 18] and iou(mask, expected) < 0.99


def test_coco_categories_fallback_and_results_refused(fixtures: Path) -> None:
    result = coco.read(fixtures / "coco" / "rikai_train2017_subset" / "coco.json")
    assert any("COCO 2017" in n for n in result.notices)
    assert sum(s.label == "person" for i in result.items for s in i.shapes) >= 110
    assert any(s.attributes.get("iscrowd") == 1 and s.kind == "bitmap" for i in result.items for s in i.shapes)
    noncontiguous = coco.read(fixtures / "coco" / "datumaro_coco_test_assets" / "annotations" / "instances_val.json")
    assert noncontiguous.items[0].image_path is not None
    with pytest.raises(UnsupportedFormatError, match="results"):
        coco.read(fixtures / "coco" / "cocoapi_compressed_rle_results" / "instances_val2014_fakesegm100_results.json")


def test_supervisely_polygon_interiors(tmp_path: Path, records: list[ExportRecord], label_map: LabelMap) -> None:
    supervisely.write(tmp_path, records, label_map, supervisely_shapes="polygon")
    ann = json.loads((tmp_path / "ds0" / "ann" / "img0.jpg.json").read_text())
    assert any(o["points"]["interior"] for o in ann["objects"])
    item = supervisely.read(tmp_path).items[0]
    mask = rasterize(item, label_map, 64, 48).mask
    assert mask[24, 18] == 0 and iou(mask == 1, records[0].mask == 1) >= 0.99


@pytest.mark.parametrize(
    ("values", "mode", "rule", "expected"),
    [
        ([0, ALPHA_MAX], "L", "binary", {0, 1}),
        ([0, 1], "L", "binary", {0, 1}),
        ([0, 1, IGNORE_INDEX], "L", "class-index", {0, 1, IGNORE_INDEX}),
        ([0, 2, IGNORE_INDEX], "P", "palette", {0, 2, IGNORE_INDEX}),
        (list(range(0, 256, 4)), "L", "soft", {0, 1}),
    ],
)
def test_mask_folder_value_rules(tmp_path: Path, values: list[int], mode: str, rule: str, expected: set[int]) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    arr = np.array(values * 4, dtype=np.uint8).reshape(4, -1)
    if mode == "P":
        write_palette_mask(tmp_path / "masks" / "a.png", arr)
    else:
        Image.fromarray(arr).save(tmp_path / "masks" / "a.png")
    Image.new("RGB", arr.shape[::-1]).save(tmp_path / "images" / "a.jpg")
    result = mask_folder.read(tmp_path)
    (item,) = result.items
    assert item.meta["mask_rule"] == rule and item.image_name == "a.jpg"
    mask = rasterize(item, LabelMap(["person", "hat"]), arr.shape[1], arr.shape[0]).mask
    assert set(np.unique(mask).tolist()) == expected


def test_portrait_masks_are_binary_person(fixtures: Path) -> None:
    result = mask_folder.read(fixtures / "portrait" / "picsart_sample")
    assert len(result.items) == 40 and not result.problems
    item = result.items[0]
    assert item.meta["mask_rule"] == "binary" and item.image_path is not None
    assert (item.width, item.height) == (240, 320)
