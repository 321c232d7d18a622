"""Unknown labels never become background: their pixels are ignore, and an image with nothing but
unknown labels gets no label at all (both recorded)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image as PILImage
from sqlalchemy import select

from dataeng.annotation.masks import read_mask
from dataeng.annotation.types import IGNORE_INDEX
from dataeng.db.schema import Image, Label, Problem, ProblemKind
from dataeng.engine.ingest.ingest import ingest
from dataeng.workspace import Workspace


def _labelme(folder: Path, stem: str, shapes: list[tuple[str, list[list[float]]]], seed: int) -> None:
    rng = np.random.default_rng(seed)
    PILImage.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(folder / f"{stem}.png")
    doc = {"version": "5.4.1", "flags": {}, "imagePath": f"{stem}.png", "imageData": None, "imageHeight": 40,
           "imageWidth": 40, "shapes": [{"label": label, "points": points, "shape_type": "rectangle",
                                         "group_id": None, "flags": {}} for label, points in shapes]}
    (folder / f"{stem}.json").write_text(json.dumps(doc), encoding="utf-8")


def _masks(ws: Workspace) -> dict[str, np.ndarray]:
    with ws.session() as s:
        rows = s.execute(select(Image.original_path, Label.mask_path).join(Label, Label.image_id == Image.id)).all()
    return {Path(p).stem: read_mask(ws.root / m) for p, m in rows}


def test_unknown_shapes_are_ignore_and_only_unknown_images_get_no_label(workspace: Workspace, tmp_path: Path) -> None:
    folder = tmp_path / "lm"
    folder.mkdir()
    _labelme(folder, "mixed", [("person", [[0, 0], [20, 40]]), ("car", [[20, 0], [40, 20]])], 0)
    _labelme(folder, "cars", [("car", [[0, 0], [10, 10]])], 1)
    with workspace.session() as s:
        summary = ingest(workspace, s, [folder], workers=1)
        kinds = {p.kind: p for p in s.scalars(select(Problem))}
    masks = _masks(workspace)
    assert set(masks) == {"mixed"} and summary.labels.labels_added == 1
    mixed = masks["mixed"]
    assert (mixed[:, :20] == 1).all() and (mixed[:20, 20:] == IGNORE_INDEX).all() and not mixed[20:, 20:].any()
    assert kinds[ProblemKind.UNKNOWN_LABEL].value == "car"
    assert kinds[ProblemKind.ONLY_UNKNOWN_LABELS].path.endswith("cars.json")
    lines = summary.to_dict()["problems"]
    assert any("every shape's label is unknown" in line for line in lines)


def test_mask_folder_values_beyond_the_classes_are_ignore(workspace: Workspace, tmp_path: Path) -> None:
    (tmp_path / "ds" / "images").mkdir(parents=True)
    (tmp_path / "ds" / "masks").mkdir()
    PILImage.fromarray(np.full((8, 8, 3), 90, np.uint8)).save(tmp_path / "ds" / "images" / "a.png")
    mask = np.zeros((8, 8), np.uint8)
    mask[:, :4] = 1
    mask[:2, 4:] = 7  # no class 7 in a person-only workspace
    PILImage.fromarray(mask, mode="L").save(tmp_path / "ds" / "masks" / "a.png")
    with workspace.session() as s:
        ingest(workspace, s, [tmp_path / "ds"], workers=1)
    stored = _masks(workspace)["a"]
    assert (stored[:, :4] == 1).all() and (stored[:2, 4:] == IGNORE_INDEX).all() and not stored[2:, 4:].any()
