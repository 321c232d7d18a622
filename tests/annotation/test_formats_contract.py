"""Contract tests run over every registered format."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dataeng.annotation import formats
from dataeng.annotation.formats import FORMATS, ReadResult, find_annotations, get_format
from dataeng.annotation.rasterize import rasterize
from dataeng.annotation.types import IGNORE_INDEX, ExportRecord, LabelMap
from dataeng.errors import UnsupportedFormatError
from tests.annotation.conftest import iou
from tests.conftest import labelstudio_sdk_or_skip

# Where each format's own real fixture is (None: no real fixture; its writer's output is used).
OWN_FIXTURE: dict[str, str | None] = {
    "labelme": "labelme/semantic_segmentation/2011_000003.json",
    "cvat": "cvat/datumaro_test_assets/for_images/export_task/train.xml",
    "coco": "coco/airo_val2017_small/instances_val2017_small.json",
    "supervisely": None,
    "mask_folder": "portrait/picsart_sample",
    "alpha_folder": None,
    "labelstudio": None,
}
HOLES = {"labelme", "cvat", "coco", "supervisely", "mask_folder", "labelstudio"}


def _written(name: str, out: Path, records: list[ExportRecord], label_map: LabelMap) -> Path:
    if name == "labelstudio":
        labelstudio_sdk_or_skip()  # brush RLE is the SDK's
    paths = get_format(name).write(out, records, label_map)
    assert paths and all(p.is_file() for p in paths)
    return out


def _read_back(name: str, path: Path) -> ReadResult:
    result = get_format(name).read(path)
    assert not result.problems, result.problems
    return result


@pytest.mark.parametrize("name", list(FORMATS))
def test_round_trip(name: str, tmp_path: Path, records: list[ExportRecord], label_map: LabelMap) -> None:
    path = _written(name, tmp_path / "out", records, label_map)
    result = _read_back(name, path)
    assert len(result.items) == len(records)
    by_name = {Path(item.image_name).name: item for item in result.items}
    for record in records:
        item = by_name[record.image_name]
        assert (item.width, item.height) == (record.width, record.height)
        assert item.image_path is not None and item.image_path.is_file()
        raster = rasterize(item, label_map, record.width, record.height)
        assert raster.mask.shape == record.mask.shape
        assert not raster.unknown_labels
        values = set(np.unique(raster.mask).tolist())
        assert values <= set(range(label_map.num_classes + 1)) | {IGNORE_INDEX}
        classes = [1] if name == "alpha_folder" else [1, 2, IGNORE_INDEX]
        for value in classes:
            expected = (record.mask == value) if name != "alpha_folder" else (record.mask == 1) | (record.mask == 2)
            score = iou(expected, raster.mask == value)
            assert score >= 0.99, (name, value, score)
        if name in HOLES:
            assert raster.mask[24, 22 - 4] == 0, "the donut lost its hole"
            assert raster.mask[24, 22] == 2, "the island inside the hole was lost"


@pytest.mark.parametrize("name", list(FORMATS))
def test_detects_own_and_rejects_others(
    name: str, fixtures: Path, tmp_path: Path, records: list[ExportRecord], label_map: LabelMap
) -> None:
    fixture = OWN_FIXTURE[name]
    own = fixtures / fixture if fixture else _written(name, tmp_path / name, records, label_map)
    assert FORMATS[name].detect(own)
    assert formats.detect(own) == name
    for other in FORMATS:
        if other != name:
            assert not FORMATS[other].detect(own), f"{other} claims {name}'s {own}"


@pytest.mark.parametrize("name", list(FORMATS))
def test_fixture_masks_fit_images(
    name: str, fixtures: Path, tmp_path: Path, records: list[ExportRecord], label_map: LabelMap
) -> None:
    fixture = OWN_FIXTURE[name]
    path = fixtures / fixture if fixture else _written(name, tmp_path / name, records, label_map)
    result = FORMATS[name].read(path)
    assert result.items and not result.problems
    lm = LabelMap(["person", "hat", "bottle", "label1"])
    for item in result.items[:5]:
        assert item.width and item.height
        raster = rasterize(item, lm, item.width, item.height)
        assert raster.mask.shape == (item.height, item.width)
        assert set(np.unique(raster.mask).tolist()) <= set(range(lm.num_classes + 1)) | {IGNORE_INDEX}


def test_find_annotations(fixtures: Path) -> None:
    found = find_annotations(fixtures)
    kinds = {name for name, _ in found}
    assert {"labelme", "cvat", "coco", "mask_folder"} <= kinds
    by_path = {p.relative_to(fixtures).as_posix(): n for n, p in found}
    assert by_path["portrait/picsart_sample"] == "mask_folder"
    assert by_path["cvat/urban_scene_cvat_project/annotations.xml"] == "cvat"
    assert by_path["cvat/urban_scene_cvat_project/instances_default.json"] == "coco"
    assert by_path["labelme/primitives/primitives_v3.5.0.json"] == "labelme"
    assert not any(p.suffix == ".png" for _, p in found)


def test_get_format_lists_valid_names() -> None:
    with pytest.raises(UnsupportedFormatError, match="labelme, cvat, coco"):
        get_format("voc")
