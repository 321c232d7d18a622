"""`export labels --format masks|cvat` and `review export --format cvat`, read by datumaro itself.

One datumaro subprocess (from .venv-interop) for the whole module loads the masks export as
``common_semantic_segmentation``, the labels export and a review export as ``cvat``, and prints
what it found as JSON; each test checks one promise against what dataeng wrote.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import select

from dataeng.annotation.masks import read_mask
from dataeng.annotation.types import IGNORE_INDEX
from dataeng.config import Config
from dataeng.db.schema import Image, Label
from dataeng.engine.export_labels import export_labels
from dataeng.engine.ingest.ingest import ingest
from dataeng.workspace import Workspace
from tests.engine.review.test_review import queue_workspace, run_export
from tests.factories import add_label, make_workspace

CLASSES = ["person", "hat"]
NAMES = {0: "_background_", 1: "person", 2: "hat", IGNORE_INDEX: "__ignore__"}

DATUMARO = r"""
import json, sys
import datumaro as dm


def load(path, fmt):
    try:
        ds = dm.Dataset.import_from(path, fmt)
        cats = ds.categories()[dm.AnnotationType.label]
        items = []
        for item in ds:
            shapes = []
            for ann in item.annotations:
                label = cats[ann.label].name if getattr(ann, "label", None) is not None else None
                shape = {"type": ann.type.name, "label": label, "attributes": dict(ann.attributes)}
                if ann.type == dm.AnnotationType.mask:
                    shape["pixels"] = int(ann.image.astype(bool).sum())
                shapes.append(shape)
            media = item.media.path if item.media is not None else None
            items.append({"id": item.id, "subset": item.subset, "media": media, "shapes": shapes})
        return {"labels": [c.name for c in cats], "items": items}
    except Exception as e:  # reported per dataset, so that each test fails on its own promise
        return {"error": f"{type(e).__name__}: {e}"}


print(json.dumps({name: load(path, fmt) for name, (path, fmt) in json.loads(sys.argv[1]).items()}, default=str))
"""


@dataclass(frozen=True)
class Exported:
    masks: Path
    cvat: Path
    review: Path
    expected: dict[str, tuple[str, np.ndarray]]
    """item id (``<stem>_<sha8>``) -> (split, class-index mask)."""
    datumaro: dict[str, Any]


def _mask(rng: np.random.Generator, size: int) -> np.ndarray:
    mask = np.zeros((size, size), np.uint8)
    x, y = rng.integers(4, size // 2, 2)
    mask[y : y + 20, x : x + 16] = 1
    mask[y : y + 5, x + 4 : x + 10] = 2
    mask[y + 20 : y + 22, x : x + 16] = IGNORE_INDEX
    return mask


def _env(home: Path) -> dict[str, str]:
    home.mkdir(parents=True, exist_ok=True)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home), "TMPDIR": str(home)}
    for var in ("XDG_CACHE_HOME", "XDG_CONFIG_HOME", "XDG_DATA_HOME", "MPLCONFIGDIR"):
        env[var] = str(home / var.lower())
    return env


def _tag_first_image(xml_path: Path, label: str) -> None:
    """What an annotator does in CVAT to approve an image unchanged: add the ``reviewed`` tag."""
    text = xml_path.read_text()
    start = text.index("<image ")
    end = text.index(">", start) + 1
    xml_path.write_text(text[:end] + f'\n    <tag label="{label}" source="manual" />' + text[end:])


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory, interop_python: Path) -> Exported:
    tmp = tmp_path_factory.mktemp("datumaro")
    ws, made = make_workspace(tmp, n_train=3, n_val=2, n_test=1, labelled=False, config=Config(classes=CLASSES))
    rng = np.random.default_rng(0)
    with ws.session() as s:
        for m in reversed(made):  # label ids against name order: the ids must still follow the names
            add_label(s, ws, m.image_id, _mask(rng, m.mask.shape[0]))
        s.commit()
    with ws.session() as s:
        export_labels(ws, s, tmp / "masks", "masks")
        export_labels(ws, s, tmp / "cvat", "cvat")
        expected = {}
        for label, image in s.execute(select(Label, Image).join(Image, Image.id == Label.image_id)).all():
            item_id = f"{Path(image.original_path).stem}_{image.sha256[:8]}"
            expected[item_id] = (image.split, read_mask(ws.root / label.mask_path))
    review_ws, _, queued = queue_workspace(tmp / "review_ws")
    with review_ws.session() as s:  # the most uncertain last by name: queue order is not name order
        for i, label_id in enumerate(queued):
            label = s.get(Label, label_id)
            assert label is not None
            label.confident_fraction = 0.9 - 0.1 * i
        s.commit()
    run_export(review_ws, tmp / "review", fmt="cvat", limit=3)
    _tag_first_image(tmp / "review" / "annotations.xml", "reviewed")
    datasets = {"masks": [str(tmp / "masks"), "common_semantic_segmentation"], "cvat": [str(tmp / "cvat"), "cvat"],
                "review": [str(tmp / "review"), "cvat"]}
    done = subprocess.run([str(interop_python), "-c", DATUMARO, json.dumps(datasets)], capture_output=True,
                          text=True, timeout=120, env=_env(tmp / "home"), cwd=tmp)
    assert done.returncode == 0, done.stderr[-3000:]
    return Exported(tmp / "masks", tmp / "cvat", tmp / "review", expected, json.loads(done.stdout.splitlines()[-1]))


def _loaded(exported: Exported, name: str) -> dict[str, Any]:
    found = exported.datumaro[name]
    assert "error" not in found, found["error"]
    return found


def _counts(mask: np.ndarray) -> dict[str, int]:
    values, counts = np.unique(mask, return_counts=True)
    return {NAMES[int(v)]: int(c) for v, c in zip(values, counts, strict=True)}


# ---------------------------------------------------------------- masks (common_semantic_segmentation)
def test_masks_export_loads_in_datumaro_with_our_class_pixel_counts(exported: Exported) -> None:
    found = _loaded(exported, "masks")
    assert found["labels"] == ["_background_", "person", "hat", "__ignore__"]
    items = {item["id"]: item for item in found["items"]}
    assert set(items) == set(exported.expected)
    for item_id, (_, mask) in exported.expected.items():
        item = items[item_id]
        assert item["media"] == str(exported.masks / "images" / f"{item_id}.png")  # each mask has its image
        assert {s["label"]: s["pixels"] for s in item["shapes"]} == _counts(mask)


def test_masks_class_map_names_every_mask_value_with_its_palette_colour(exported: Exported) -> None:
    from PIL import Image as PILImage

    meta = json.loads((exported.masks / "dataset_meta.json").read_text())
    assert meta["label_map"] == {str(k): v for k, v in NAMES.items()} and meta["background_label"] == "0"
    for mask_file in sorted((exported.masks / "masks").glob("*.png")):
        with PILImage.open(mask_file) as im:
            palette = im.getpalette()
            values = set(np.unique(np.asarray(im)).tolist())
        assert palette is not None
        assert values <= {int(k) for k in meta["label_map"]}
        for value in meta["label_map"]:
            index = int(value)
            assert meta["segmentation_colors"][index] == palette[3 * index : 3 * index + 3]


# ---------------------------------------------------------------- CVAT (export labels)
def test_cvat_export_subsets_are_our_splits_and_names_lose_the_split(exported: Exported) -> None:
    found = _loaded(exported, "cvat")
    items = {item["id"]: item for item in found["items"]}
    assert set(items) == set(exported.expected)
    for item_id, (split, mask) in exported.expected.items():
        item = items[item_id]
        assert item["subset"] == split
        assert item["media"] == str(exported.cvat / "images" / split / f"{item_id}.png")
        pixels = {s["label"]: s["pixels"] for s in item["shapes"]}
        assert pixels == {k: v for k, v in _counts(mask).items() if k != "_background_"}
        assert {s["attributes"]["dataeng_split"] for s in item["shapes"]} == {split}


def _xml(path: Path) -> ET.Element:
    return ET.parse(path / "annotations.xml").getroot()


def _declared(root: ET.Element) -> dict[str, str]:
    return {label.findtext("name", ""): label.findtext("type", "") for label in root.iterfind("./meta//labels/label")}


def _used(root: ET.Element) -> set[str]:
    return {shape.get("label", "") for image in root.iterfind("image") for shape in image}


def test_cvat_every_label_used_is_declared(exported: Exported) -> None:
    for name in ("cvat", "review"):  # the review's: the reviewed tag an annotator adds
        found = _loaded(exported, name)
        used = {s["label"] for item in found["items"] for s in item["shapes"]}
        assert None not in used and used <= set(found["labels"]), name
        root = _xml(getattr(exported, name))
        declared = _declared(root)
        assert _used(root) <= set(declared), name
    assert declared["reviewed"] == "tag" and "reviewed" in used
    assert {s["type"] for item in found["items"] for s in item["shapes"] if s["label"] == "reviewed"} == {"label"}


def test_cvat_image_ids_follow_name_order(exported: Exported) -> None:
    for name in ("cvat", "review"):
        images = _xml(getattr(exported, name)).findall("image")
        assert [int(im.get("id", "-1")) for im in images] == list(range(len(images))), name
        names = [im.get("name", "") for im in images]
        assert names == sorted(names) and all("/" not in n for n in names), name


@pytest.mark.parametrize("name", ["cvat", "review"])
def test_cvat_labels_json_is_a_raw_label_spec_with_every_label(exported: Exported, name: str) -> None:
    folder = getattr(exported, name)
    spec = json.loads((folder / "cvat_labels.json").read_text())
    assert isinstance(spec, list) and spec
    for label in spec:
        assert isinstance(label["name"], str) and label["name"]
        assert re.fullmatch(r"#[0-9a-f]{6}", label["color"])  # what CVAT's Raw editor accepts (older: lower case)
        assert label["type"] in ("any", "tag")
        for attribute in label["attributes"]:
            assert isinstance(attribute["name"], str) and isinstance(attribute["mutable"], bool)
            assert attribute["input_type"] in ("checkbox", "radio", "number", "text", "select")
            assert isinstance(attribute["default_value"], str)
            values = attribute["values"]  # CVAT: a non-empty list of unique strings
            assert isinstance(values, list) and values and len(set(values)) == len(values)
            assert all(isinstance(v, str) for v in values)
        assert len({a["name"] for a in label["attributes"]}) == len(label["attributes"])
    assert len({label["name"] for label in spec}) == len(spec)
    root = _xml(folder)
    assert {label["name"]: label["type"] for label in spec} == _declared(root)
    assert _used(root) <= {label["name"] for label in spec}
    shape_attributes = {a["name"] for label in spec if label["type"] == "any" for a in label["attributes"]}
    used_attributes = {a.get("name") for image in root.iterfind("image") for shape in image
                       for a in shape.iterfind("attribute")}
    assert used_attributes <= shape_attributes
    if name == "cvat":
        assert {"dataeng_label_id", "dataeng_origin", "dataeng_split"} <= shape_attributes


# ---------------------------------------------------------------- and back into dataeng
@pytest.mark.parametrize("fmt", ["masks", "cvat"])
def test_the_class_map_and_label_list_are_left_alone_by_ingest(exported: Exported, tmp_path: Path, fmt: str) -> None:
    folder = getattr(exported, fmt)
    assert (folder / ("dataset_meta.json" if fmt == "masks" else "cvat_labels.json")).is_file()
    fresh = Workspace.init(tmp_path / "fresh", Config(classes=CLASSES))
    with fresh.session() as s:
        summary = ingest(fresh, s, [folder], workers=1)
    assert summary.to_dict()["problems"] == [] and summary.labels.labels_added == len(exported.expected)
    with fresh.session() as s:
        rows = s.execute(select(Label, Image).join(Image, Image.id == Label.image_id)).all()
        back = {image.sha256[:8]: read_mask(fresh.root / label.mask_path) for label, image in rows}
    assert len(back) == len(exported.expected)
    for item_id, (_, mask) in exported.expected.items():  # (the factory's splits are not the hash ingest uses)
        np.testing.assert_array_equal(back[item_id.rsplit("_", 1)[1]], mask)  # the ids end in the sha8
