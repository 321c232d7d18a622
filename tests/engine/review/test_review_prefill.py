"""Review export pre-fills follow ``[review]`` in dataeng.toml (issue 17): few shapes, few vertices, same mask."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from dataeng.annotation.formats import cvat
from dataeng.annotation.formats.export import HOLE_LABEL
from dataeng.annotation.masks import read_mask
from dataeng.config import Config, ReviewConfig
from dataeng.db.schema import Review
from dataeng.engine.review.export import export_review
from dataeng.engine.review.manifest import MANIFEST_NAME
from tests.annotation.prelabels import nearly_full_frame, noisy_prelabel
from tests.factories import add_label, make_workspace


def _export(tmp_path: Path, prelabel: np.ndarray, review: ReviewConfig, **kwargs) -> tuple[Path, np.ndarray]:
    """One needs_review pseudo-label exported; returns (the export folder, its pre-fill as stored)."""
    ws, made = make_workspace(tmp_path, n_train=1, n_val=0, n_test=0, size=prelabel.shape[0], labelled=False,
                              config=Config(review=review))
    with ws.session() as s:
        add_label(s, ws, made[0].image_id, prelabel, origin="pseudo", status="needs_review")
    out = tmp_path / "review"
    session = ws.new_session()
    try:
        done = export_review(ws, session, out, **{"fmt": "labelme", **kwargs})
    finally:
        session.close()
    with ws.session() as s:
        review_row = s.get(Review, done.review_id)
        assert review_row is not None
        (item,) = review_row.items
        prefill = read_mask(ws.root / item["prefill"])
    return out, prefill


def _labelme_shapes(out: Path) -> list[dict]:
    (item,) = json.loads((out / MANIFEST_NAME).read_text())["items"]
    return json.loads((out / item["file"]).read_text())["shapes"]


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


@pytest.mark.parametrize(("review", "holes"), [(ReviewConfig(), 0), (ReviewConfig(min_region_fraction=0.0), 50)])
def test_labelme_pre_fill_drops_pin_holes_as_review_min_region_fraction_says(tmp_path: Path, review: ReviewConfig,
                                                                           holes: int) -> None:
    prelabel = nearly_full_frame(256, seed=2, holes=60)
    out, prefill = _export(tmp_path, prelabel, review)
    labels = Counter(s["label"] for s in _labelme_shapes(out))
    assert labels["person"] == 1
    if holes:
        assert labels[HOLE_LABEL] >= holes
    else:
        assert labels[HOLE_LABEL] == 0
    assert _iou(prefill == 1, prelabel == 1) >= 0.98


@pytest.mark.parametrize(("max_vertices", "fits"), [(400, False), (80, True)])
def test_labelme_pre_fill_keeps_review_max_vertices(tmp_path: Path, max_vertices: int, fits: bool) -> None:
    prelabel = noisy_prelabel(256, seed=256, holes=16, islands=8)
    out, prefill = _export(tmp_path, prelabel, ReviewConfig(max_vertices=max_vertices))
    shapes = _labelme_shapes(out)
    vertices = sum(len(s["points"]) for s in shapes)
    assert vertices <= max_vertices
    assert (vertices <= 80) == fits  # the default cap leaves more than 80: the configured cap did this
    if not fits:
        assert len(shapes) <= 3  # the specks are gone (a tight cap may keep some to afford a coarser outline)
    assert _iou(prefill == 1, prelabel == 1) >= 0.98


def test_cvat_polygon_pre_fill_follows_review_too(tmp_path: Path) -> None:
    prelabel = nearly_full_frame(256, seed=3, holes=60)
    out, prefill = _export(tmp_path, prelabel, ReviewConfig(), fmt="cvat", cvat_shapes="polygon")
    (annotation,) = cvat.read(out / "annotations.xml").items
    assert Counter(s.label for s in annotation.shapes) == {"person": 1}
    assert _iou(prefill == 1, prelabel == 1) >= 0.98
