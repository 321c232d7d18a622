"""The Supervisely export is what the Supervisely SDK itself reads, and a project the SDK wrote is
what our reader reads.

One subprocess under ``.venv-interop`` (the SDK import takes seconds) opens every project with
``sly.Project(path, sly.OpenMode.READ)``, renders each label with the SDK's own
``geometry.draw`` and prints the pixels per class as JSON; it also writes a project with the
SDK (bitmap with an origin, polygon with a hole, rectangle) for our reader. The SDK runs with
HOME and its caches in a temporary folder, so it writes nothing under the real home.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image
from sqlalchemy import select

import dataeng.engine.export_labels as export_labels_module
from dataeng.annotation.formats import supervisely
from dataeng.annotation.masks import read_mask
from dataeng.annotation.rasterize import rasterize
from dataeng.annotation.types import IGNORE_INDEX, IGNORE_LABEL, ExportRecord, LabelMap
from dataeng.db.schema import Image as ImageRow
from dataeng.db.schema import Label
from dataeng.engine.export_labels import export_labels
from tests.annotation.conftest import donut_mask, iou
from tests.factories import add_label, make_workspace

SDK_SCRIPT = r'''
import json, sys
import numpy as np
import supervisely as sly

real, paths = sys.argv[1], sys.argv[2:]

# A project written by the SDK itself, for our reader.
h, w = 40, 50
project = sly.Project(real, sly.OpenMode.CREATE)
person, hat, box = (sly.ObjClass("person", sly.Bitmap), sly.ObjClass("hat", sly.Polygon),
                    sly.ObjClass("box", sly.Rectangle))
project.set_meta(sly.ProjectMeta(obj_classes=[person, hat, box]))
dataset = project.create_dataset("real")
blob = np.zeros((20, 16), bool)
blob[2:18, 1:15] = True
blob[8:12, 5:9] = False
points = lambda ring: [sly.PointLocation(row=y, col=x) for x, y in ring]
labels = [
    sly.Label(sly.Bitmap(blob, origin=sly.PointLocation(row=5, col=3)), person),
    sly.Label(sly.Polygon(points([(25, 4), (45, 4), (45, 20), (25, 20)]),
                          [points([(30, 9), (38, 9), (38, 15), (30, 15)])]), hat),
    sly.Label(sly.Rectangle(top=28, left=30, bottom=35, right=47), box),
]
dataset.add_item_np("real.png", np.full((h, w, 3), 90, np.uint8), ann=sly.Annotation((h, w), labels))

report = {}
for path in [real, *paths]:
    project = sly.Project(path, sly.OpenMode.READ)
    meta = project.meta
    datasets = {}
    for ds in project.datasets:
        items = {}
        for name in ds.get_items_names():
            ann = ds.get_ann(name, meta)
            masks = {}
            for label in ann.labels:
                canvas = np.zeros(ann.img_size, np.uint8)
                label.geometry.draw(canvas, 1)
                title = label.obj_class.name
                masks[title] = masks.get(title, np.zeros(ann.img_size, bool)) | canvas.astype(bool)
            items[name] = {
                "size": list(ann.img_size),
                "image": ds.get_img_path(name).split("/")[-1],
                "pixels": {title: np.flatnonzero(m).tolist() for title, m in masks.items()},
                "tags": {tag.name: tag.value for tag in ann.img_tags},
            }
        datasets[ds.name] = items
    report[path] = {
        "datasets": datasets,
        "classes": {c.name: c.geometry_type.geometry_name() for c in meta.obj_classes},
        "tag_metas": {t.name: t.value_type for t in meta.tag_metas},
    }
print("REPORT" + json.dumps(report))
'''


def _run_sdk(interop_python: Path, tmp_path: Path, paths: list[Path]) -> dict:
    home = tmp_path / "sdk_home"
    home.mkdir()
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "LANG": "C.UTF-8",
        "HOME": str(home),
        "XDG_CACHE_HOME": str(home / "cache"),
        "XDG_CONFIG_HOME": str(home / "config"),
        "XDG_DATA_HOME": str(home / "data"),
        "MPLCONFIGDIR": str(home / "mpl"),
        "TMPDIR": str(home),
        "PYTHONNOUSERSITE": "1",
        "OMP_NUM_THREADS": "1",
    }
    script = tmp_path / "sdk_read.py"
    script.write_text(SDK_SCRIPT)
    done = subprocess.run(
        [str(interop_python), str(script), str(tmp_path / "sdk_written"), *map(str, paths)],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith("REPORT")), None)
    assert line is not None, (done.stdout[-2000:], done.stderr[-2000:])
    return json.loads(line[len("REPORT"):])


def _pixels(report_item: dict, title: str, shape: tuple[int, int]) -> np.ndarray:
    mask = np.zeros(shape[0] * shape[1], bool)
    mask[report_item["pixels"].get(title, [])] = True
    return mask.reshape(shape)


def _labelled_workspace(tmp_path: Path):
    """Two train, one val, one test image; person masks with a hole and an ignore strip.

    Returns:
        (workspace, {(split, exported file name): (label id, mask, a pixel of the hole)}).
    """
    ws, made = make_workspace(tmp_path, n_train=2, n_val=1, n_test=1, labelled=False)
    holes = {}
    with ws.session() as s:
        for m in made:
            mask = m.mask.copy()
            ys, xs = np.nonzero(mask == 1)
            cy, cx = int(np.median(ys)), int(np.median(xs))
            assert (mask[cy - 6:cy + 6, cx - 6:cx + 6] == 1).all()
            mask[cy - 3:cy + 3, cx - 3:cx + 3] = 0  # a hole: polygons need an interior
            mask[1:4, 2:30] = IGNORE_INDEX
            holes[add_label(s, ws, m.image_id, mask).id] = (cy, cx)
        s.commit()
    with ws.session() as s:
        rows = s.execute(select(Label, ImageRow).join(ImageRow, ImageRow.id == Label.image_id)).all()
        expected = {
            (image.split, f"{Path(image.original_path).stem}_{image.sha256[:8]}{Path(image.store_path).suffix}"):
                (label.id, read_mask(ws.root / label.mask_path), holes[label.id])
            for label, image in rows
        }
    return ws, expected


@pytest.fixture()
def misc_records(tmp_path: Path) -> list[ExportRecord]:
    """Names without a folder (dataset ds0) and with two folders (a nested dataset)."""
    out = []
    for i, name in enumerate(["loose.jpg", "extra/deep/nested.jpg"]):
        image_path = tmp_path / "src" / f"{i}.jpg"
        image_path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((48, 64, 3), 120, np.uint8)).save(image_path)
        out.append(ExportRecord(name, 64, 48, donut_mask(), image_path=image_path, meta={"label_id": i}))
    return out


def test_the_sdk_reads_our_export_and_we_read_the_sdks_project(
    interop_python: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, misc_records: list[ExportRecord]
) -> None:
    ws, expected = _labelled_workspace(tmp_path)
    with ws.session() as s:
        export_labels(ws, s, tmp_path / "bitmap", "supervisely")
    polygon_format = SimpleNamespace(write=functools.partial(supervisely.write, supervisely_shapes="polygon"))
    with monkeypatch.context() as m:
        m.setattr(export_labels_module, "get_format", lambda name: polygon_format)
        with ws.session() as s:
            export_labels(ws, s, tmp_path / "polygon", "supervisely")
    supervisely.write(tmp_path / "misc", misc_records, LabelMap(["person", "hat"]))

    report = _run_sdk(interop_python, tmp_path, [tmp_path / "bitmap", tmp_path / "polygon", tmp_path / "misc"])

    for shape in ("bitmap", "polygon"):
        project = report[str(tmp_path / shape)]
        assert project["classes"] == {"person": shape, IGNORE_LABEL: shape}
        assert project["tag_metas"] == {
            f"dataeng_{k}": "any_string"
            for k in ("image_sha256", "label_id", "origin", "round", "run_id", "source", "split")
        }
        datasets = project["datasets"]
        assert sorted(datasets) == ["test", "train", "val"]
        assert {split: len(items) for split, items in datasets.items()} == {"train": 2, "val": 1, "test": 1}
        assert sorted((split, name) for split, items in datasets.items() for name in items) == sorted(expected)
        for (split, name), (label_id, mask, hole) in expected.items():
            item = datasets[split][name]
            assert item["size"] == list(mask.shape) and item["image"] == name
            assert item["tags"]["dataeng_label_id"] == str(label_id)
            assert item["tags"]["dataeng_origin"] == "human" and item["tags"]["dataeng_run_id"] == ""
            person = _pixels(item, "person", mask.shape)
            ignore = _pixels(item, IGNORE_LABEL, mask.shape)
            if shape == "bitmap":
                assert np.array_equal(person, mask == 1), (split, name)
                assert np.array_equal(ignore, mask == IGNORE_INDEX), (split, name)
            else:
                assert iou(person, mask == 1) >= 0.98, (split, name)
                assert not person[hole], (split, name)  # the interior is a hole, not filled
                assert iou(ignore, mask == IGNORE_INDEX) >= 0.98, (split, name)

    misc = report[str(tmp_path / "misc")]["datasets"]
    assert {ds: sorted(items) for ds, items in misc.items() if items} == {
        "ds0": ["loose.jpg"], "extra/deep": ["nested.jpg"]
    }
    for ds, name in (("ds0", "loose.jpg"), ("extra/deep", "nested.jpg")):
        truth = donut_mask()
        for value, title in ((1, "person"), (2, "hat"), (IGNORE_INDEX, IGNORE_LABEL)):
            assert np.array_equal(_pixels(misc[ds][name], title, truth.shape), truth == value), (ds, title)

    # The other way: a project the SDK wrote reads here as the SDK draws it.
    real = report[str(tmp_path / "sdk_written")]["datasets"]["real"]["real.png"]
    result = supervisely.read(tmp_path / "sdk_written")
    assert not result.problems and len(result.items) == 1
    (item,) = result.items
    assert item.image_path is not None and item.image_path.is_file()
    raster = rasterize(item, LabelMap(["person", "hat", "box"]), item.width, item.height)
    assert not raster.unknown_labels
    for value, title in ((1, "person"), (2, "hat"), (3, "box")):
        # Integer vertices: both rasterisers fill the same pixels (the rectangle is inclusive).
        assert np.array_equal(raster.mask == value, _pixels(real, title, (item.height, item.width))), title
    assert raster.mask[12, 34] == 0 and raster.mask[15, 9] == 0  # the polygon's and the bitmap's holes


def test_the_new_layout_is_a_dataset_per_split_and_reads_back(tmp_path: Path) -> None:
    ws, expected = _labelled_workspace(tmp_path)
    with ws.session() as s:
        export_labels(ws, s, tmp_path / "out", "supervisely")
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == ["meta.json", "test", "train", "val"]
    for split, name in expected:
        assert (out / split / "img" / name).is_file() and (out / split / "ann" / f"{name}.json").is_file()
    result = supervisely.read(out)
    assert not result.problems and len(result.items) == len(expected)
    by_name = {item.image_name: item for item in result.items}
    label_map = LabelMap(["person"])
    for (split, name), (label_id, mask, _) in expected.items():
        item = by_name[name]
        assert item.image_path == out / split / "img" / name
        assert item.meta["provenance"]["label_id"] == str(label_id)
        raster = rasterize(item, label_map, item.width, item.height)
        assert np.array_equal(raster.mask, mask)  # __ignore__ comes back as 255


def test_old_ds0_split_folder_exports_still_read(tmp_path: Path, records: list[ExportRecord],
                                                 label_map: LabelMap) -> None:
    """Exports written before dataset-per-split: ds0/ann/train/<file>.json beside ds0/img/train/<file>."""
    new = tmp_path / "new"
    supervisely.write(new, [ExportRecord(f"train/{r.image_name}", r.width, r.height, r.mask,
                                         image_path=r.image_path, meta=r.meta) for r in records], label_map)
    old = tmp_path / "old"
    (old / "ds0" / "ann" / "train").mkdir(parents=True)
    (old / "ds0" / "img" / "train").mkdir(parents=True)
    (old / "meta.json").write_bytes((new / "meta.json").read_bytes())
    for r in records:
        (old / "ds0" / "ann" / "train" / f"{r.image_name}.json").write_bytes(
            (new / "train" / "ann" / f"{r.image_name}.json").read_bytes())
        (old / "ds0" / "img" / "train" / r.image_name).write_bytes((new / "train" / "img" / r.image_name).read_bytes())
    assert supervisely.detect(old)
    result = supervisely.read(old)
    assert not result.problems and len(result.items) == len(records)
    for item, record in zip(sorted(result.items, key=lambda i: i.image_name), records, strict=True):
        assert item.image_name == f"train/{record.image_name}"
        assert item.image_path == old / "ds0" / "img" / "train" / record.image_name
        assert np.array_equal(rasterize(item, label_map, record.width, record.height).mask, record.mask)


def test_a_project_below_a_folder_named_ann_reads(tmp_path: Path, records: list[ExportRecord],
                                                  label_map: LabelMap) -> None:
    out = tmp_path / "ann" / "project"
    supervisely.write(out, records, label_map)
    result = supervisely.read(out)
    assert not result.problems and len(result.items) == len(records)


@pytest.mark.parametrize(
    ("names", "match"),
    [(["img/a.jpg"], "reserved"), (["x/datasets/a.jpg"], "reserved"), (["a.jpg", "ds0/a.jpg"], "both item")],
)
def test_names_the_sdk_cannot_hold_are_refused(tmp_path: Path, records: list[ExportRecord], label_map: LabelMap,
                                               names: list[str], match: str) -> None:
    renamed = [ExportRecord(n, r.width, r.height, r.mask) for n, r in zip(names, records, strict=False)]
    with pytest.raises(ValueError, match=match):
        supervisely.write(tmp_path / "out", renamed, label_map)
    assert not (tmp_path / "out").exists()
