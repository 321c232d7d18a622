"""``export labels --format labelstudio`` and back: every fixture of ../shared/fixtures keeps its mask."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select

from dataeng.annotation.masks import read_mask
from dataeng.db.schema import Image, Label
from dataeng.engine.export_labels import export_labels
from dataeng.engine.ingest.ingest import ingest
from dataeng.workspace import Workspace
from tests.conftest import labelstudio_sdk_or_skip

labelstudio_sdk_or_skip()


def _masks(ws: Workspace) -> dict[str, np.ndarray]:
    with ws.session() as s:
        rows = s.execute(select(Label, Image).join(Image, Image.id == Label.image_id).where(Label.status == "active"))
        return {image.sha256: read_mask(ws.root / label.mask_path) for label, image in rows}


@pytest.mark.slow
def test_every_fixture_survives_a_label_studio_round_trip(tmp_path: Path, shared_fixtures: Path) -> None:
    ws = Workspace.init(tmp_path / "ws")
    with ws.session() as s:
        ingest(ws, s, [shared_fixtures], workers=1)
        summary = export_labels(ws, s, tmp_path / "out", "labelstudio")
    before = _masks(ws)
    assert summary.labels == len(before) >= 40  # the portraits alone are 40
    fresh = Workspace.init(tmp_path / "fresh")
    with fresh.session() as s:
        back = ingest(fresh, s, [tmp_path / "out"], workers=1)
    assert back.labels.labels_added == len(before) and back.labels.refused == 0
    after = _masks(fresh)
    assert set(after) == set(before)
    for sha, mask in before.items():
        np.testing.assert_array_equal(after[sha], mask, err_msg=sha)
