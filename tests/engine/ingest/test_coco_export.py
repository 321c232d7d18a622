"""`export labels --format coco` writes instances (or, asked, one annotation per class), ignore as marked
crowd regions; ingesting the export into a fresh workspace reproduces every mask, ignore included."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from sqlalchemy import select

from dataeng.annotation.masks import read_mask
from dataeng.annotation.types import IGNORE_INDEX
from dataeng.config import Config
from dataeng.db.schema import Image, Label
from dataeng.engine.export_labels import export_labels
from dataeng.engine.ingest.ingest import ingest
from dataeng.errors import DataEngError
from dataeng.workspace import Workspace
from tests.annotation.test_coco_instances import scene_mask
from tests.factories import add_label, make_workspace

CLASSES = ["person", "hat"]


def _components(pixels: np.ndarray) -> int:
    return int(cv2.connectedComponents(pixels.astype(np.uint8), connectivity=8)[0]) - 1


def coco_workspace(tmp_path: Path) -> tuple[Workspace, dict[str, np.ndarray]]:
    """Four labelled 64x64 images, each the scene shifted down: several regions per class, four ignore regions.

    Returns:
        (workspace, {image sha8: mask}).
    """
    ws, made = make_workspace(tmp_path, n_train=2, n_val=1, n_test=1, labelled=False, config=Config(classes=CLASSES))
    base = np.zeros((64, 64), np.uint8)
    base[:48] = scene_mask()
    with ws.session() as s:
        for i, m in enumerate(made):
            add_label(s, ws, m.image_id, np.roll(base, 4 * i, axis=0))
        s.commit()
    with ws.session() as s:
        rows = s.execute(select(Label, Image).join(Image, Image.id == Label.image_id)).all()
        masks = {image.sha256[:8]: read_mask(ws.root / label.mask_path) for label, image in rows}
    return ws, masks


@pytest.mark.parametrize("mode", [None, "instances", "semantic"])
def test_coco_export_annotations_and_ingest_round_trip(tmp_path: Path, mode: str | None) -> None:
    ws, masks = coco_workspace(tmp_path)
    out = tmp_path / "out"
    with ws.session() as s:
        summary = export_labels(ws, s, out, "coco", coco_annotations=mode)  # type: ignore[arg-type]
    assert summary.labels == len(masks)
    data = json.loads((out / "annotations" / "instances_default.json").read_text())
    assert [c["name"] for c in data["categories"]] == CLASSES
    for image in data["images"]:
        mask = masks[image["file_name"].rsplit("_", 1)[1][:8]]
        anns = [a for a in data["annotations"] if a["image_id"] == image["id"]]
        plain = [a["category_id"] for a in anns if not a["iscrowd"]]
        crowd = [a for a in anns if a["iscrowd"]]
        if mode == "semantic":
            assert sorted(plain) == [1, 2]
        else:
            assert sorted(plain) == sorted(c for c in (1, 2) for _ in range(_components(mask == c)))
            assert len(crowd) == _components(mask == IGNORE_INDEX) == 4
        assert crowd and all(a["attributes"] == {"dataeng_ignore": True} for a in crowd)
        assert all(a["dataeng"]["image_sha256"].startswith(image["file_name"].rsplit("_", 1)[1][:8]) for a in anns)

    fresh = Workspace.init(tmp_path / "fresh", Config(classes=CLASSES))
    with fresh.session() as s:
        result = ingest(fresh, s, [out], workers=1)
    assert result.to_dict()["problems"] == [] and result.labels.labels_added == len(masks)
    with fresh.session() as s:
        rows = s.execute(select(Label, Image).join(Image, Image.id == Label.image_id)).all()
        back = {image.sha256[:8]: read_mask(fresh.root / label.mask_path) for label, image in rows}
    assert sorted(back) == sorted(masks)
    for sha8, mask in masks.items():
        np.testing.assert_array_equal(back[sha8], mask)  # ignore (255) included


def test_coco_annotations_is_refused_with_another_format(tmp_path: Path) -> None:
    ws, _ = coco_workspace(tmp_path)
    with ws.session() as s, pytest.raises(DataEngError, match="--format coco only"):
        export_labels(ws, s, tmp_path / "out", "labelme", coco_annotations="semantic")
    assert not (tmp_path / "out").exists()
