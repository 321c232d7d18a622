"""The layouts the masks and CVAT writers produce (datumaro-readable), and dataeng reading old and new ones."""

from __future__ import annotations

import dataclasses
import json
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

from dataeng.annotation.formats import cvat, cvat_labels, mask_folder, unreadable_json
from dataeng.annotation.rasterize import rasterize
from dataeng.annotation.types import ExportRecord, LabelMap


def _split(records: list[ExportRecord], splits: list[str]) -> list[ExportRecord]:
    """Records named and tagged as ``export labels`` makes them: ``<split>/<stem>_<sha8><ext>``."""
    return [dataclasses.replace(r, image_name=f"{s}/{Path(r.image_name).stem}_0000000{i}.jpg",
                                meta={**r.meta, "split": s}) for i, (r, s) in enumerate(zip(records, splits,
                                                                                              strict=True))]


def test_masks_export_is_flat_with_a_class_map_and_old_nested_exports_still_read(
    tmp_path: Path, records: list[ExportRecord], label_map: LabelMap
) -> None:
    named = _split(records, ["val", "train"])
    files = mask_folder.write(tmp_path / "new", named, label_map)
    assert (tmp_path / "new" / "dataset_meta.json") in files
    assert sorted(p.relative_to(tmp_path / "new").as_posix() for p in (tmp_path / "new").rglob("*.*")) == [
        "dataeng.json", "dataset_meta.json", "images/img0_00000000.jpg", "images/img1_00000001.jpg",
        "masks/img0_00000000.png", "masks/img1_00000001.png"]
    meta = json.loads((tmp_path / "new" / "dataset_meta.json").read_text())
    assert meta["label_map"] == {"0": "_background_", "1": "person", "2": "hat", "255": "__ignore__"}
    # the layout of exports before the class map: split folders under images/ and masks/
    old = tmp_path / "old"
    for r in named:
        split, name = r.image_name.split("/")
        for folder, suffix in (("images", ".jpg"), ("masks", ".png")):
            (old / folder / split).mkdir(parents=True, exist_ok=True)
            shutil.copy(tmp_path / "new" / folder / Path(name).with_suffix(suffix), old / folder / split)
    for folder, prefix in ((tmp_path / "new", ""), (old, "split/")):
        result = mask_folder.read(folder)
        assert not result.problems and len(result.items) == 2
        for item in result.items:
            record = next(r for r in named if r.image_name.endswith(Path(item.image_name).name))
            assert item.image_path is not None and item.image_path.is_file()
            assert item.image_name.count("/") == prefix.count("/")
            mask = rasterize(item, label_map, record.width, record.height).mask
            np.testing.assert_array_equal(mask, record.mask)


def test_flat_layouts_refuse_two_images_with_one_stem(
    tmp_path: Path, records: list[ExportRecord], label_map: LabelMap
) -> None:
    clash = [dataclasses.replace(records[0], image_name="train/a.jpg"),
             dataclasses.replace(records[1], image_name="val/a.png")]
    with pytest.raises(ValueError, match="stems must be unique"):
        mask_folder.write(tmp_path, clash, label_map)


def test_cvat_project_export_with_splits_task_export_without(
    tmp_path: Path, records: list[ExportRecord], label_map: LabelMap
) -> None:
    named = _split(records, ["val", "train"])
    files = cvat.write(tmp_path / "project", list(reversed(named)), label_map)
    assert files == [tmp_path / "project" / "annotations.xml", tmp_path / "project" / "cvat_labels.json"]
    root = ET.parse(files[0]).getroot()
    assert root.find("meta/project") is not None and root.find("meta/task") is None
    subsets = {t.findtext("subset"): t.findtext("id") for t in root.iterfind("meta/project/tasks/task")}
    assert sorted(subsets) == ["train", "val"]
    images = [(im.get("id"), im.get("name"), im.get("subset"), im.get("task_id")) for im in root.iterfind("image")]
    assert images == [("0", "img0_00000000.jpg", "val", subsets["val"]),
                      ("1", "img1_00000001.jpg", "train", subsets["train"])]
    assert (tmp_path / "project" / "images" / "val" / "img0_00000000.jpg").is_file()
    assert (tmp_path / "project" / "images" / "train" / "img1_00000001.jpg").is_file()
    task = cvat.write(tmp_path / "task", list(reversed(records)), label_map, tags=["reviewed"])
    root = ET.parse(task[0]).getroot()
    assert root.find("meta/task") is not None and root.find("meta/project") is None
    assert [(im.get("id"), im.get("name"), im.get("subset")) for im in root.iterfind("image")] == [
        ("0", "img0.jpg", None), ("1", "img1.jpg", None)]
    types = {label.findtext("name"): label.findtext("type") for label in root.iterfind("meta/task/labels/label")}
    assert types == {"person": "any", "hat": "any", "__ignore__": "any", "reviewed": "tag"}
    assert (tmp_path / "task" / "images" / "img0.jpg").is_file()


def test_cvat_reader_finds_images_of_old_and_new_exports(
    tmp_path: Path, records: list[ExportRecord], label_map: LabelMap
) -> None:
    named = _split(records, ["val", "train"])
    cvat.write(tmp_path / "new", named, label_map)
    old = tmp_path / "old"  # before subsets: the split in the name, no subset attribute, same files
    shutil.copytree(tmp_path / "new" / "images", old / "images")
    xml = (tmp_path / "new" / "annotations.xml").read_text()
    assert 'name="img0_00000000.jpg" subset="val"' in xml
    for r in named:
        split, name = r.image_name.split("/")
        xml = xml.replace(f'name="{name}" subset="{split}"', f'name="{split}/{name}"')
    (old / "annotations.xml").write_text(xml)
    for folder in (tmp_path / "new", old):
        result = cvat.read(folder / "annotations.xml")
        assert not result.problems and len(result.items) == 2
        for item, record in zip(result.items, named, strict=True):
            split, name = record.image_name.split("/")
            assert item.image_path == folder / "images" / split / name
            np.testing.assert_array_equal(rasterize(item, label_map, record.width, record.height).mask, record.mask)


def test_label_spec_tags_and_what_ingest_leaves_alone(tmp_path: Path, label_map: LabelMap) -> None:
    spec = cvat_labels.label_spec(label_map, ["origin"], holes=True, tags=["reviewed"])
    assert [(s["name"], s["type"], s["color"]) for s in spec] == [
        ("person", "any", "#800000"), ("hat", "any", "#008000"), ("__ignore__", "any", "#e0e0c0"),
        ("_background_", "any", "#000000"), ("reviewed", "tag", "#808000")]
    assert spec[0]["attributes"] == [{"name": "dataeng_origin", "mutable": False, "input_type": "text",
                                      "default_value": "", "values": [""]}]
    assert spec[-1]["attributes"] == []
    with pytest.raises(ValueError, match="also a shape label"):
        cvat_labels.label_spec(label_map, tags=["person"])
    (tmp_path / "cvat_labels.json").write_text(json.dumps(spec))
    (tmp_path / "results.json").write_text("[]")
    assert [Path(str(e.path)) for e in unreadable_json(tmp_path, set())] == [tmp_path / "results.json"]
