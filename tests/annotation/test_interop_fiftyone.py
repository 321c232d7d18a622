"""The COCO export as FiftyOne's COCO importer reads it: one detection per connected region of a class,
ignore as crowd detections of a real class (no ``__ignore__`` class), masks pixel-exact.

One subprocess under ``.venv-interop`` (importing FiftyOne takes seconds) loads an instances and a
semantic export with ``label_types=["segmentations"]`` and prints, per image, each detection's
label, crowd flag, ignore marker and pixels (its mask pasted at its box) as JSON. With a MongoDB
(``mongod`` of fiftyone-db, or ``FIFTYONE_DATABASE_URI``) it goes through
``fo.Dataset.from_dir`` (a non-persistent dataset); without one (fiftyone-db downloads MongoDB
when it is installed, which an offline machine cannot) it iterates the importer that
``from_dir`` builds, ``fiftyone.utils.data.build_dataset_importer`` with the same arguments: the
same parsing, minus the database. HOME, FiftyOne's database and dataset folders point into a
temporary folder, and tracking is off.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from dataeng.annotation.formats import coco
from dataeng.annotation.types import IGNORE_INDEX, ExportRecord, LabelMap
from tests.annotation.conftest import donut_mask
from tests.annotation.test_coco_instances import OWNERS, scene_mask

LABEL_MAP = LabelMap(["person", "hat"])

FIFTYONE = r'''
import json, os, sys
import fiftyone as fo
import fiftyone.utils.data as foud
from fiftyone.core.service import DatabaseService


def have_database():
    if os.environ.get("FIFTYONE_DATABASE_URI"):
        return True
    try:
        DatabaseService.find_mongod()
        return True
    except Exception:
        return False


def samples(data_path, labels_path, via):
    kwargs = dict(dataset_type=fo.types.COCODetectionDataset, data_path=data_path, labels_path=labels_path,
                  label_types=["segmentations"])
    if via == "from_dir":
        dataset = fo.Dataset.from_dir(label_field="segmentations", persistent=False, **kwargs)
        items = [(s.filepath, s.metadata.width, s.metadata.height, s.segmentations) for s in dataset]
        return items, dataset.info.get("classes")
    importer, _ = foud.build_dataset_importer(**kwargs)
    with importer:
        out = [(path, meta.width, meta.height, label) for path, meta, label in importer]
        return out, importer.get_dataset_info().get("classes")


via = "from_dir" if have_database() else "importer"
report = {"via": via}
for name, (data_path, labels_path) in json.loads(sys.argv[1]).items():
    items, classes = samples(data_path, labels_path, via)
    images = {}
    for path, width, height, label in items:
        dets = []
        for det in (label.detections if label is not None else []):
            x, y, w, h = det.bounding_box
            x0, y0 = round(x * width), round(y * height)
            pixels = []
            if det.mask is not None:
                rows, cols = det.mask.nonzero()
                pixels = ((rows + y0) * width + cols + x0).tolist()
            dets.append({"label": det.label, "iscrowd": det["iscrowd"], "pixels": pixels,
                         "ignore": det["dataeng_ignore"] if det.has_field("dataeng_ignore") else None})
        images[os.path.relpath(path, data_path)] = {"size": [height, width], "detections": dets}
    report[name] = {"classes": classes, "images": images}
print("REPORT" + json.dumps(report))
'''


def _env(home: Path) -> dict[str, str]:
    home.mkdir(parents=True, exist_ok=True)
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "LANG": "C.UTF-8",
        "HOME": str(home),
        "TMPDIR": str(home),
        "PYTHONNOUSERSITE": "1",
        "OMP_NUM_THREADS": "1",
        "FIFTYONE_DATABASE_DIR": str(home / "fiftyone_db"),
        "FIFTYONE_DEFAULT_DATASET_DIR": str(home / "fiftyone_datasets"),
        "FIFTYONE_DO_NOT_TRACK": "true",
        "FIFTYONE_SHOW_PROGRESS_BARS": "false",
    }
    for var in ("XDG_CACHE_HOME", "XDG_CONFIG_HOME", "XDG_DATA_HOME", "MPLCONFIGDIR"):
        env[var] = str(home / var.lower())
    return env


def _records(tmp_path: Path) -> list[ExportRecord]:
    out = []
    for i, (name, mask) in enumerate([("scene.png", scene_mask()), ("sub/donut.png", donut_mask())]):
        image_path = tmp_path / "src" / f"{i}.png"
        image_path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((*mask.shape, 3), 90, np.uint8)).save(image_path)
        out.append(ExportRecord(name, mask.shape[1], mask.shape[0], mask, image_path=image_path, meta={"label_id": i}))
    return out


def _components(pixels: np.ndarray) -> int:
    return int(cv2.connectedComponents(pixels.astype(np.uint8), connectivity=8)[0]) - 1


def _mask(pixels: list[int], shape: tuple[int, int]) -> np.ndarray:
    flat = np.zeros(shape[0] * shape[1], bool)
    flat[pixels] = True
    return flat.reshape(shape)


def test_fiftyone_reads_instances_crowd_ignore_and_semantic(interop_python: Path, tmp_path: Path) -> None:
    records = _records(tmp_path)
    for mode in ("instances", "semantic"):
        coco.write(tmp_path / mode, records, LABEL_MAP, coco_annotations=mode)  # type: ignore[arg-type]
    paths = {mode: [str(tmp_path / mode / "images"), str(tmp_path / mode / "annotations" / "instances_default.json")]
             for mode in ("instances", "semantic")}
    started = time.monotonic()
    done = subprocess.run([str(interop_python), "-c", FIFTYONE, json.dumps(paths)], capture_output=True, text=True,
                          env=_env(tmp_path / "home"), cwd=tmp_path, timeout=180)
    seconds = time.monotonic() - started
    assert done.returncode == 0, done.stderr[-3000:]
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith("REPORT")), None)
    assert line is not None, (done.stdout[-2000:], done.stderr[-2000:])
    report = json.loads(line[len("REPORT"):])
    print(f"FiftyOne ({report['via']}) read both exports in {seconds:.1f} s")
    names = {1: "person", 2: "hat"}

    for mode in ("instances", "semantic"):
        found = report[mode]
        assert found["classes"] == ["person", "hat"], found["classes"]  # no __ignore__ category
        assert sorted(found["images"]) == sorted(r.image_name for r in records)
        for record in records:
            image = found["images"][record.image_name]
            assert image["size"] == [record.height, record.width]
            dets = image["detections"]
            assert {d["label"] for d in dets} <= {"person", "hat"}, mode  # never __ignore__
            plain = [d for d in dets if not d["iscrowd"]]
            crowd = [d for d in dets if d["iscrowd"]]
            ignore = record.mask == IGNORE_INDEX
            for value, label in names.items():
                expected = record.mask == value
                mine = [_mask(d["pixels"], expected.shape) for d in plain if d["label"] == label]
                count = _components(expected) if mode == "instances" else int(expected.any())
                assert len(mine) == count, (mode, record.image_name, label)
                assert np.array_equal(np.logical_or.reduce(mine), expected), (mode, record.image_name, label)
                assert sum(int(m.sum()) for m in mine) == int(expected.sum())
            assert crowd and all(d["iscrowd"] == 1 and d["ignore"] is True for d in crowd)
            assert all(d["ignore"] is None for d in plain)
            crowd_masks = [_mask(d["pixels"], ignore.shape) for d in crowd]
            assert np.array_equal(np.logical_or.reduce(crowd_masks), ignore), (mode, record.image_name)
            assert sum(int(m.sum()) for m in crowd_masks) == int(ignore.sum())
            if mode == "instances":
                assert len(crowd) == _components(ignore)
                assert len(dets) == sum(_components(record.mask == v) for v in (1, 2, IGNORE_INDEX))
                if record.image_name == "scene.png":
                    owners = {}
                    for d, m in zip(crowd, crowd_masks, strict=True):
                        ys, xs = np.nonzero(m)
                        owners[(int(ys.min()), int(xs.min()))] = d["label"]
                    assert owners == {k: names[v] for k, v in OWNERS.items()}
            else:
                assert len({d["label"] for d in crowd}) == len(crowd)
