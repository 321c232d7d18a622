"""Label Studio format: brush RLE through the SDK, polygons in percent, tasks read and written."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from dataeng.annotation.formats import FORMATS, labelstudio
from dataeng.annotation.formats import labelstudio_regions as regions
from dataeng.annotation.rasterize import rasterize
from dataeng.annotation.types import IGNORE_INDEX, ExportRecord, LabelMap, Shape
from dataeng.errors import AnnotationError
from tests.annotation.conftest import donut_mask
from tests.conftest import labelstudio_sdk_or_skip

labelstudio_sdk_or_skip()

LM = LabelMap(["person", "hat"])


def _record(mask: np.ndarray, name: str = "a.png", **meta: object) -> ExportRecord:
    return ExportRecord(image_name=name, width=mask.shape[1], height=mask.shape[0], mask=mask, meta=dict(meta))


def _drawn(item, width: int, height: int) -> np.ndarray:
    return rasterize(item, LM, width, height).mask


# ---------------------------------------------------------------- brush
@pytest.mark.parametrize("seed", range(4))
def test_brush_rle_round_trips_exactly_through_the_sdk(seed: int) -> None:
    rng = np.random.default_rng(seed)
    mask = rng.random((23, 37)) < rng.uniform(0.05, 0.95)
    rle = regions.encode_brush(mask)
    assert rle[:4] == list((23 * 37 * 4).to_bytes(4, "big"))  # the SDK's header: RGBA values
    np.testing.assert_array_equal(regions.decode_brush(rle, 37, 23, path="x", field="rle"), mask)


def test_brush_rle_is_what_the_sdk_makes_of_an_alpha_image() -> None:
    from label_studio_sdk.converter import brush

    mask = np.zeros((8, 10), bool)
    mask[2:5, 3:9] = True
    assert regions.encode_brush(mask) == brush.mask2rle(mask.astype(np.uint8) * 255)
    layers = brush.decode_from_annotation("brush", [{"type": "brushlabels", "rle": regions.encode_brush(mask),
                                                     "original_width": 10, "original_height": 8,
                                                     "brushlabels": ["person"]}])
    np.testing.assert_array_equal(next(iter(layers.values())) > 0, mask)


@pytest.mark.parametrize(("rle", "match"), [
    (None, "list of bytes"),
    ([0, 0, 1], "list of bytes"),
    ([0, 0, 1, 300], "list of bytes"),
    ([*(5 * 5 * 4).to_bytes(4, "big"), 0], "holds 100 values, the 10x8 image needs 320"),
    (list((10 * 8 * 4).to_bytes(4, "big")), "readable"),  # a header and nothing else
])
def test_bad_brush_rle_is_refused(rle: object, match: str) -> None:
    with pytest.raises(AnnotationError, match=match):
        regions.decode_brush(rle, 10, 8, path="export.json", field="[0].result[0].value.rle")


# ---------------------------------------------------------------- polygons
def test_percent_points_put_pixel_centres_on_pixel_centres() -> None:
    ring = ((2.0, 3.0), (7.0, 3.0), (7.0, 5.0), (2.0, 5.0))
    points = regions.to_percent(ring, 10, 8)
    assert points[0] == [25.0, 43.75]  # centre of pixel 2 = 2.5 / 10 of the width
    assert regions.from_percent(points, 10, 8, path="x", field="p") == ring
    item = labelstudio.ImageAnnotation("a.png", None, 10, 8, (Shape("person", "polygon", ring),), "labelstudio",
                                       Path("x"))
    expected = np.zeros((8, 10), np.uint8)
    expected[3:6, 2:8] = 1
    np.testing.assert_array_equal(_drawn(item, 10, 8), expected)


@pytest.mark.parametrize("points", [[[1, 2], [3, 4]], [[1, 2], [3, "x"], [5, 6]], "abc", [[1, 2], [3, 4], [5]]])
def test_bad_polygon_points_are_refused(points: object) -> None:
    with pytest.raises(AnnotationError, match=r"points|percent"):
        regions.from_percent(points, 10, 8, path="x", field="points")


def test_polygon_export_keeps_holes_as_later_background_polygons(tmp_path: Path) -> None:
    mask = donut_mask()
    labelstudio.write(tmp_path, [_record(mask)], LM, labelstudio_shapes="polygon", copy_images=False)
    task = json.loads((tmp_path / "tasks.json").read_text())[0]
    labels = [r["value"]["polygonlabels"][0] for r in task["annotations"][0]["result"]]
    assert "_background_" in labels and labels.index("_background_") > labels.index("person")
    assert all(0 <= c <= 100 for r in task["annotations"][0]["result"] for p in r["value"]["points"] for c in p)
    tasks, _ = labelstudio.read_tasks(tmp_path / "tasks.json")
    drawn = _drawn(tasks[0].annotation, 64, 48)
    assert drawn[24, 18] == 0 and drawn[24, 22] == 2  # the hole, and the hat island inside it
    for value in (1, 2, IGNORE_INDEX):
        inter = np.logical_and(drawn == value, mask == value).sum()
        assert inter / np.logical_or(drawn == value, mask == value).sum() >= 0.97


# ---------------------------------------------------------------- tasks
def test_writer_declares_the_labels_and_splits_annotations_from_predictions(tmp_path: Path) -> None:
    mask = donut_mask()
    human = _record(mask, "train/a.png", origin="human", label_id=1)
    pseudo = _record(mask, "train/b.png", origin="pseudo", label_id=2, run_id=7)
    written = labelstudio.write(tmp_path, [human, pseudo], LM, document_root=tmp_path.parent, copy_images=False)
    assert [p.name for p in written] == ["tasks.json", "labeling_config.xml"]
    config = (tmp_path / "labeling_config.xml").read_text()
    assert "<BrushLabels" in config and "<PolygonLabels" in config
    assert regions.declared_labels(tmp_path / "labeling_config.xml") == {
        "brush": {"person", "hat", "__ignore__"}, "polygon": {"person", "hat", "__ignore__", "_background_"}}
    tasks = json.loads((tmp_path / "tasks.json").read_text())
    assert tasks[0]["data"]["image"] == f"/data/local-files/?d={tmp_path.name}/images/train/a.png"
    assert tasks[0]["data"]["dataeng_image"] == "images/train/a.png"
    assert "annotations" in tasks[0] and "predictions" not in tasks[0]
    assert tasks[1]["predictions"][0]["model_version"] == "run-7" and "annotations" not in tasks[1]
    assert {r["value"]["brushlabels"][0] for r in tasks[0]["annotations"][0]["result"]} == {"person", "hat",
                                                                                             "__ignore__"}
    # Read back: the human label is an item; the pseudo-label too, with its provenance (ingest refuses it).
    result = labelstudio.read(tmp_path)
    assert [i.meta["provenance"]["origin"] for i in result.items] == ["human", "pseudo"]
    np.testing.assert_array_equal(_drawn(result.items[0], 64, 48), mask)


def _task(annotations: list[dict] | None = None, predictions: list[dict] | None = None, **data: object) -> dict:
    return {"id": 5, "data": {"image": "/data/upload/1/x.png", **data}, "annotations": annotations or [],
            "predictions": predictions or []}


def _brush_result(mask: np.ndarray, label: str = "person") -> dict:
    return {"from_name": "brush", "to_name": "image", "type": "brushlabels", "original_width": mask.shape[1],
            "original_height": mask.shape[0], "value": {"format": "rle", "rle": regions.encode_brush(mask),
                                                        "brushlabels": [label]}}


def test_the_latest_submitted_annotation_counts_and_skips_are_skips(tmp_path: Path) -> None:
    old, new = np.zeros((6, 8), bool), np.zeros((6, 8), bool)
    old[1:3, 1:3] = True
    new[2:6, 4:8] = True
    tasks = [
        _task([{"id": 1, "updated_at": "2026-01-01T00:00:00Z", "result": [_brush_result(old)]},
               {"id": 2, "updated_at": "2026-01-02T00:00:00Z", "result": [_brush_result(new)]},
               {"id": 3, "updated_at": "2026-01-03T00:00:00Z", "was_cancelled": True, "result": []}]),
        _task([{"id": 4, "was_cancelled": True, "result": []}], [{"result": [_brush_result(old)]}]),
        _task(None, [{"model_version": "run-1", "result": [_brush_result(old)]}]),
        _task(),
    ]
    (tmp_path / "export.json").write_text(json.dumps(tasks))
    read, _ = labelstudio.read_tasks(tmp_path / "export.json")
    assert [t.state for t in read] == ["annotated", "skipped", "predicted", "empty"]
    assert read[0].annotation_id == 2
    np.testing.assert_array_equal(_drawn(read[0].annotation, 8, 6), new.astype(np.uint8))
    assert [i.meta["annotation_id"] for i in labelstudio.read(tmp_path / "export.json").items] == [2]


def test_json_min_rows_are_read_like_full_exports(tmp_path: Path) -> None:
    mask = np.zeros((6, 8), bool)
    mask[1:4, 2:7] = True
    polygon = {"points": regions.to_percent(((0, 0), (2, 0), (2, 2), (0, 2)), 8, 6), "closed": True,
               "polygonlabels": ["hat"], "original_width": 8, "original_height": 6}
    row = {"image": "/data/local-files/?d=set/images/x.png", "dataeng_review": 3, "id": 9, "annotation_id": 4,
           "brush": [{**_brush_result(mask)["value"], "original_width": 8, "original_height": 6}],
           "polygon": [polygon], "annotator": 1, "created_at": "2026-01-01", "updated_at": "2026-01-01"}
    (tmp_path / "min.json").write_text(json.dumps([row]))
    assert labelstudio.detect(tmp_path / "min.json")
    (task,), _ = labelstudio.read_tasks(tmp_path / "min.json")
    assert (task.state, task.task_id, task.annotation_id, task.data["dataeng_review"]) == ("annotated", 9, 4, 3)
    drawn = _drawn(task.annotation, 8, 6)
    expected = mask.astype(np.uint8)
    expected[0:3, 0:3] = 2
    np.testing.assert_array_equal(drawn, expected)


def test_a_bad_task_is_refused_and_the_others_read(tmp_path: Path) -> None:
    good = np.ones((6, 8), bool)
    wrong_size = _brush_result(np.ones((5, 8), bool))
    wrong_size.update(original_width=8, original_height=6)  # an RLE of 5 rows for a 6-row image
    tasks = [_task([{"result": [_brush_result(good)]}]), _task([{"result": [wrong_size]}]),
             _task([{"result": [_brush_result(good, "car")]}])]
    (tmp_path / "export.json").write_text(json.dumps(tasks))
    (tmp_path / regions.CONFIG_FILE).write_text(regions.labeling_config(LM))
    result = labelstudio.read(tmp_path / "export.json")
    assert len(result.items) == 1
    messages = [str(p) for p in result.problems]
    assert len(messages) == 2
    assert "[1].annotations[0].result[0].value.rle" in messages[0] and "needs 192" in messages[0]
    assert "not declared" in messages[1] and "'car'" in messages[1]


def test_detect_claims_label_studio_files_only(tmp_path: Path) -> None:
    files = {
        "ls.json": [_task()],
        "cvat_labels.json": [{"name": "person", "attributes": []}],
        "results.json": [{"image_id": 1, "category_id": 1, "segmentation": {"counts": "", "size": [1, 1]}}],
        "labelme.json": {"shapes": [], "imagePath": "x.png", "data": {}},
    }
    for name, content in files.items():
        (tmp_path / name).write_text(json.dumps(content))
    assert [n for n in files if labelstudio.detect(tmp_path / n)] == ["ls.json"]
    assert [n for n in FORMATS if n != "labelstudio" and FORMATS[n].detect(tmp_path / "ls.json")] == []


def test_images_are_found_from_the_url_when_dataeng_did_not_write_the_task(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "x.png").write_bytes(b"not read")
    (tmp_path / "export.json").write_text(json.dumps([_task([{"result": []}], image="/data/local-files/?d=a/x.png")]))
    (task,), _ = labelstudio.read_tasks(tmp_path / "export.json")
    assert task.annotation is not None and task.annotation.image_path == (tmp_path / "images" / "x.png").resolve()
    assert task.annotation.shapes == ()


def test_a_dataeng_image_path_may_not_leave_the_folder(tmp_path: Path) -> None:
    (tmp_path / "export.json").write_text(json.dumps([_task([{"result": []}], dataeng_image="../../etc/passwd")]))
    (task,), _ = labelstudio.read_tasks(tmp_path / "export.json")
    assert task.error is not None and "escapes" in str(task.error)
