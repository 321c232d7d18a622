"""The test factories write rows as ingest does, so engine code treats them the same."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dataeng.db.schema import Image
from dataeng.engine.ingest.dedup import find_near, to_unsigned
from tests.factories import make_workspace


def test_factory_images_are_found_by_the_near_duplicate_lookup(tmp_path: Path) -> None:
    ws, made = make_workspace(tmp_path, n_train=3, n_val=0, n_test=0)
    with ws.session() as s:
        for m in made:
            row = s.get(Image, m.image_id)
            assert row is not None
            found = find_near(s, to_unsigned(row.phash), 0)
            assert [image_id for _, image_id, _ in found] == [m.image_id]
    assert np.unique([m.image_id for m in made]).size == 3
