"""Every bad input becomes a problem naming file, field and value (or a whole-file error)."""

from __future__ import annotations

import base64
import io
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from dataeng.annotation.formats import coco, cvat, labelme, supervisely
from dataeng.annotation.masks import ALPHA_MAX
from dataeng.annotation.rasterize import rasterize
from dataeng.annotation.types import LabelMap
from dataeng.errors import AnnotationError

SQUARE = [[1, 1], [6, 1], [6, 6]]


def _png_b64(width: int, height: int) -> str:
    buffer = io.BytesIO()
    Image.new("L", (width, height), ALPHA_MAX).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def _labelme(shapes: Any = None, **top: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "version": "5.5.0",
        "flags": {},
        "imagePath": "a.jpg",
        "imageData": None,
        "imageHeight": 8,
        "imageWidth": 8,
    }
    doc["shapes"] = [{"label": "person", "points": SQUARE, "shape_type": "polygon"}] if shapes is None else shapes
    doc.update(top)
    return doc


LABELME_CASES = [
    (
        "string coordinate",
        _labelme([{"label": "person", "points": [[1, "x"], [2, 2], [3, 1]]}]),
        "shapes[0].points[0]",
        "number",
    ),
    (
        "NaN coordinate",
        _labelme([{"label": "person", "points": [[1, float("nan")], [2, 2], [3, 1]]}]),
        "shapes[0].points[0]",
        "finite",
    ),
    (
        "inf coordinate",
        _labelme([{"label": "person", "points": [[1, float("inf")], [2, 2], [3, 1]]}]),
        "shapes[0].points[0]",
        "finite",
    ),
    (
        "two-point polygon",
        _labelme([{"label": "person", "points": [[1, 1], [2, 2]], "shape_type": "polygon"}]),
        "shapes[0].points",
        "at least 3",
    ),
    ("missing points", _labelme([{"label": "person", "shape_type": "polygon"}]), "shapes[0].points", "missing points"),
    ("missing shapes", {"imagePath": "a.jpg", "imageData": None}, "shapes", "no 'shapes'"),
    ("another tool's JSON", {"images": [], "annotations": [], "categories": []}, "shapes", "not a labelme file"),
    (
        "unknown shape type",
        _labelme([{"label": "person", "points": SQUARE, "shape_type": "blob"}]),
        "shapes[0].shape_type",
        "unknown",
    ),
    ("imageData not base64", _labelme(imageData="@@@ not base64 @@@"), "imageData", "not an image|not base64"),
    (
        "imageData not an image",
        _labelme(imageData=base64.b64encode(b"hello world").decode()),
        "imageData",
        "not an image",
    ),
    ("path escaping the root", _labelme(imagePath="../../etc/x.jpg"), "imagePath", "escapes"),
    ("absolute path elsewhere", _labelme(imagePath="/etc/passwd"), "imagePath", "escapes"),
    ("windows path elsewhere", _labelme(imagePath="C:\\Windows\\x.jpg"), "imagePath", "another drive|escapes"),
    (
        "mask not base64 PNG",
        _labelme([{"label": "person", "points": [[0, 0], [3, 3]], "shape_type": "mask", "mask": "eA=="}]),
        "shapes[0].mask",
        "not an image",
    ),
]


@pytest.mark.parametrize(("case", "doc", "field", "match"), LABELME_CASES, ids=[c[0] for c in LABELME_CASES])
def test_labelme_bad_item_is_a_problem(tmp_path: Path, case: str, doc: dict[str, Any], field: str, match: str) -> None:
    root = tmp_path / "data"
    root.mkdir()
    (root / "good.json").write_text(json.dumps(_labelme()))
    (root / "bad.json").write_text(json.dumps(doc))
    result = labelme.read(root / "bad.json", root=root)
    assert not result.items
    (problem,) = result.problems
    assert problem.field == field
    assert problem.path is not None and problem.path.endswith("bad.json")
    with pytest.raises(AnnotationError, match=match):
        raise problem
    folder = labelme.read(root)
    assert len(folder.items) + len(folder.problems) >= 1 and any(
        i.annotation_path.name == "good.json" for i in folder.items
    )


def test_labelme_truncated_json(tmp_path: Path) -> None:
    (tmp_path / "t.json").write_text(json.dumps(_labelme())[:40])
    (problem,) = labelme.read(tmp_path / "t.json").problems
    with pytest.raises(AnnotationError, match="invalid JSON"):
        raise problem


def test_labelme_mask_patch_larger_than_image_is_clipped(tmp_path: Path) -> None:
    doc = _labelme([{"label": "person", "points": [[4, 4], [23, 23]], "shape_type": "mask", "mask": _png_b64(20, 20)}])
    (tmp_path / "m.json").write_text(json.dumps(doc))
    (item,) = labelme.read(tmp_path / "m.json").items
    raster = rasterize(item, LabelMap(["person"]), 8, 8)
    assert raster.mask[4:, 4:].all() and not raster.mask[:4].any()
    assert any("clipped" in n for n in raster.notices)


XXE = """<?xml version="1.0"?>
<!DOCTYPE annotations [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<annotations><version>1.1</version><image id="0" name="&xxe;" width="4" height="4"/></annotations>"""
LAUGHS = """<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">]>
<annotations><version>1.1</version><image id="0" name="&lol3;" width="4" height="4"/></annotations>"""


@pytest.mark.parametrize(
    ("text", "match"),
    [
        (XXE, "refused XML"),
        (LAUGHS, "refused XML"),
        ("<annotations><version>1.1</version><image id='0'", "invalid XML"),
        ("<?xml version='1.0'?><root><version>1.1</version></root>", "not a CVAT"),
    ],
    ids=["external entity", "billion laughs", "truncated", "other XML"],
)
def test_cvat_whole_file_refused(tmp_path: Path, text: str, match: str) -> None:
    (tmp_path / "a.xml").write_text(text)
    with pytest.raises(AnnotationError, match=match):
        cvat.read(tmp_path / "a.xml")


def _cvat(image_body: str) -> str:
    return (
        "<annotations><version>1.1</version><meta/>"
        f'<image id="0" name="bad.jpg" width="8" height="8">{image_body}</image>'
        '<image id="1" name="good.jpg" width="8" height="8">'
        '<box label="person" xtl="1" ytl="1" xbr="3" ybr="3" z_order="0"/></image>'
        "</annotations>"
    )


CVAT_CASES = [
    ("rle sum", '<mask label="person" rle="1, 2, 3" left="0" top="0" width="2" height="2"/>', "rle", "sum to 6"),
    ("nan point", '<polygon label="person" points="1,1;nan,2;3,3"/>', "points", "finite"),
    ("string point", '<polygon label="person" points="1,1;a,2;3,3"/>', "points", "finite"),
    ("two points", '<polygon label="person" points="1,1;2,2"/>', "points", "at least 3"),
    ("box inf", '<box label="person" xtl="inf" ytl="0" xbr="2" ybr="2"/>', "xtl", "finite"),
    ("escaping name", "", "name", "escapes"),
    ("rotation text", '<box label="person" xtl="1" ytl="1" xbr="3" ybr="3" rotation="abc"/>', "rotation", "finite"),
    ("rotation nan", '<box label="person" xtl="1" ytl="1" xbr="3" ybr="3" rotation="nan"/>', "rotation", "finite"),
    ("huge mask box", '<mask label="person" rle="10000000000" left="0" top="0" width="100000" height="100000"/>',
     "width", "larger than its image 8x8"),
    ("huge coordinate", '<polygon label="person" points="1,1;1e30,2;3,3"/>', "points", "coordinate bound"),
]


@pytest.mark.parametrize(("case", "body", "field_end", "match"), CVAT_CASES, ids=[c[0] for c in CVAT_CASES])
def test_cvat_bad_image_is_a_problem(tmp_path: Path, case: str, body: str, field_end: str, match: str) -> None:
    text = _cvat(body)
    if case == "escaping name":
        text = text.replace('name="bad.jpg"', 'name="../../../x.jpg"')
    (tmp_path / "a.xml").write_text(text)
    result = cvat.read(tmp_path / "a.xml")
    assert [i.image_name for i in result.items] == ["good.jpg"]
    (problem,) = result.problems
    assert problem.field is not None and problem.field.endswith(field_end)
    with pytest.raises(AnnotationError, match=match):
        raise problem


def _coco(segmentation: Any, **image: Any) -> dict[str, Any]:
    return {
        "images": [
            {"id": 1, "file_name": "a.jpg", "width": 8, "height": 8, **image},
            {"id": 2, "file_name": "b.jpg", "width": 8, "height": 8},
        ],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "segmentation": segmentation, "iscrowd": 0}],
        "categories": [{"id": 1, "name": "person"}],
    }


COCO_CASES = [
    ("unknown segmentation type", _coco("polygon please"), "annotations[0].segmentation", "unknown segmentation"),
    ("nan polygon", _coco([[1, 1, float("nan"), 2, 3, 3]]), "annotations[0].segmentation[0]", "finite"),
    ("short polygon", _coco([[1, 1, 2, 2]]), "annotations[0].segmentation[0]", "at least 3"),
    ("rle size mismatch", _coco({"size": [4, 4], "counts": [16]}), "annotations[0].segmentation", "differs"),
    ("rle sum mismatch", _coco({"size": [8, 8], "counts": [3, 2]}), "annotations[0].segmentation", "sum"),
    ("escaping file_name", _coco([[1, 1, 5, 1, 5, 5]], file_name="../../../x.jpg"), "images[0].file_name", "escapes"),
    ("bad size", _coco([[1, 1, 5, 1, 5, 5]], width="8"), "images[0]", "positive integer"),
    ("huge polygon coordinate", _coco([[1, 1, 1e30, 1, 5, 5]]), "annotations[0].segmentation[0]", "finite"),
    ("garbage compressed rle", _coco({"size": [8, 8], "counts": "\x7f\x7f~~}}"}), "annotations[0].segmentation",
     "bad RLE"),
    ("compressed rle of another size", _coco({"size": [8, 8], "counts": "04"}), "annotations[0].segmentation",
     "height\\*width"),
]


@pytest.mark.parametrize(("case", "doc", "field", "match"), COCO_CASES, ids=[c[0] for c in COCO_CASES])
def test_coco_bad_image_is_a_problem(tmp_path: Path, case: str, doc: dict[str, Any], field: str, match: str) -> None:
    (tmp_path / "c.json").write_text(json.dumps(doc))
    result = coco.read(tmp_path / "c.json")
    assert [i.image_name for i in result.items] == ["b.jpg"]
    (problem,) = result.problems
    assert problem.field == field
    with pytest.raises(AnnotationError, match=match):
        raise problem


@pytest.mark.parametrize(
    ("text", "match"),
    [('{"images": [], "annotations": [', "invalid JSON"), ('{"shapes": []}', "not a COCO")],
    ids=["truncated", "another tool"],
)
def test_coco_whole_file_refused(tmp_path: Path, text: str, match: str) -> None:
    (tmp_path / "c.json").write_text(text)
    with pytest.raises(AnnotationError, match=match):
        coco.read(tmp_path / "c.json")


def test_supervisely_bad_bitmap_is_a_problem(tmp_path: Path) -> None:
    ann = tmp_path / "ds" / "ann"
    ann.mkdir(parents=True)
    obj = {"classTitle": "person", "geometryType": "bitmap", "bitmap": {"data": "!!!", "origin": [0, 0]}}
    (ann / "a.jpg.json").write_text(json.dumps({"size": {"width": 4, "height": 4}, "objects": [obj]}))
    (tmp_path / "meta.json").write_text("{}")
    result = supervisely.read(tmp_path)
    (problem,) = result.problems
    assert problem.field == "objects[0].bitmap.data"
    assert not result.items


def test_values_out_of_label_map_refused_by_writers(tmp_path: Path) -> None:
    from dataeng.annotation.types import ExportRecord

    record = ExportRecord("a.jpg", 4, 4, np.full((4, 4), 7, np.uint8))
    with pytest.raises(ValueError, match="not in the label map"):
        labelme.write(tmp_path, [record], LabelMap(["person"]))
    with pytest.raises(ValueError, match="relative path"):
        labelme.write(tmp_path, [ExportRecord("../a.jpg", 4, 4, np.zeros((4, 4), np.uint8))], LabelMap(["person"]))


@pytest.mark.parametrize("key", ["image_id", "category_id"])
def test_coco_ids_that_are_lists_or_dicts_are_problems_not_crashes(tmp_path: Path, key: str) -> None:
    doc = _coco([[1, 1, 5, 1, 5, 5]])
    doc["annotations"].append({"id": 2, "image_id": 2, "category_id": 1, "segmentation": [[1, 1, 5, 1, 5, 5]]})
    doc["annotations"][0][key] = {"nested": [1]}
    (tmp_path / "c.json").write_text(json.dumps(doc))
    result = coco.read(tmp_path / "c.json")
    assert [p.field for p in result.problems] == [f"annotations[0].{key}"]
    assert [len(i.shapes) for i in result.items] == [0, 1]  # the rest imports


def test_coco_category_id_a_list_and_silent_losses_are_recorded(tmp_path: Path) -> None:
    doc = _coco([[1, 1, 5, 1, 5, 5]])
    doc["categories"].append({"id": [2], "name": "hat"})
    doc["images"].append({"id": 1, "file_name": "c.jpg", "width": 8, "height": 8})  # a second image with id 1
    doc["annotations"].append({"id": 9, "image_id": 77, "category_id": 1, "segmentation": [[1, 1, 5, 1, 5, 5]]})
    (tmp_path / "c.json").write_text(json.dumps(doc))
    result = coco.read(tmp_path / "c.json")
    fields = {p.field: str(p) for p in result.problems}
    assert set(fields) == {"categories[1].id", "images[2].id", "annotations[1].image_id"}
    assert "same id as images[0]" in fields["images[2].id"] and "no image has this id" in fields[
        "annotations[1].image_id"]
    assert [i.image_name for i in result.items] == ["a.jpg", "b.jpg"]
    doc = _coco([[1, 1, 5, 1, 5, 5]], id=[1])  # an image id that is a list
    (tmp_path / "c.json").write_text(json.dumps(doc))
    result = coco.read(tmp_path / "c.json")
    assert [p.field for p in result.problems] == ["images[0].id", "annotations[0].image_id"]
    assert [i.image_name for i in result.items] == ["b.jpg"]


def test_deeply_nested_json_is_refused_not_a_crash(tmp_path: Path) -> None:
    path = tmp_path / "deep.json"
    path.write_text('{"shapes": [], "imagePath": "a.jpg", "x": ' + "[" * 100_000 + "]" * 100_000 + "}")
    with pytest.raises(AnnotationError, match="nested too deeply"):
        labelme.read_file(path)
    with pytest.raises(AnnotationError, match="nested too deeply"):
        coco.read(path)


def test_a_fifo_is_never_opened_as_json(tmp_path: Path) -> None:
    fifo = tmp_path / "x.json"
    os.mkfifo(fifo)
    with pytest.raises(AnnotationError, match="not a regular file"):
        labelme.read_file(fifo)

