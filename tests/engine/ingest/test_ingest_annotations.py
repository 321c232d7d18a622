"""Annotations beside images become human labels; labels leave and come back unchanged."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage
from sqlalchemy import select

from dataeng.annotation.masks import encode_png, read_alpha, read_mask
from dataeng.annotation.types import IGNORE_INDEX
from dataeng.db.schema import Image, Label, Problem, ProblemKind
from dataeng.engine.export_labels import export_labels
from dataeng.engine.ingest.ingest import ingest
from dataeng.engine.labels import EncodedLabel, add_human_label
from dataeng.engine.synth import generate
from dataeng.workspace import Workspace


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    generate(out, n=12, unlabeled=4, seed=3, size_range=(48, 96))
    return out


def _labels(ws: Workspace) -> dict[str, tuple[np.ndarray, str, Label]]:
    """sha256 -> (mask, split, label) of the active labels."""
    with ws.session() as s:
        rows = s.execute(select(Label, Image).join(Image).where(Label.status == "active")).all()
    return {img.sha256: (read_mask(ws.root / lab.mask_path), img.split, lab) for lab, img in rows}


def test_mask_and_alpha_folders_become_one_label_each(workspace: Workspace, synth_dir: Path) -> None:
    inputs = [synth_dir / "images", synth_dir / "masks", synth_dir / "alpha", synth_dir / "unlabeled"]
    with workspace.session() as s:
        summary = ingest(workspace, s, inputs, workers=1)
    assert summary.added == 16 and summary.labels.labels_added == 12
    labels = _labels(workspace)
    with workspace.session() as s:
        originals = dict(s.execute(select(Image.sha256, Image.original_path)).all())
    for sha, (mask, _, label) in labels.items():
        stem = Path(originals[sha]).stem
        truth = np.asarray(PILImage.open(synth_dir / "masks" / f"{stem}.png"))
        assert np.array_equal(mask, truth)
        assert label.origin == "human" and label.source == "mask" and label.alpha_path
        alpha = read_alpha(workspace.root / label.alpha_path)
        expected = np.asarray(PILImage.open(synth_dir / "alpha" / f"{stem}.png"), dtype=np.float32) / 255
        assert np.abs(alpha - expected).max() < 1e-6
    with workspace.session() as s:  # the same folders again: nothing new
        again = ingest(workspace, s, inputs, workers=2)
    assert (again.added, again.labels.labels_added, again.labels.labels_unchanged) == (0, 0, 12)


def test_portrait_masks_match_their_files(workspace: Workspace, shared_fixtures: Path) -> None:
    sample = shared_fixtures / "portrait" / "picsart_sample"
    with workspace.session() as s:
        summary = ingest(workspace, s, [sample])
    assert summary.added == 80 and summary.labels.labels_added == 40
    with workspace.session() as s:
        originals = dict(s.execute(select(Image.sha256, Image.original_path)).all())
    for sha, (mask, _, _) in _labels(workspace).items():
        source = np.asarray(PILImage.open(sample / "masks" / f"{Path(originals[sha]).stem}.png").convert("L"))
        assert np.array_equal(mask, (source > 127).astype(np.uint8))


def test_cvat_project_with_missing_photos(workspace: Workspace, shared_fixtures: Path) -> None:
    xml = shared_fixtures / "cvat" / "urban_scene_cvat_project" / "annotations.xml"
    cfg = workspace.config.model_copy(update={"aliases": {"PEDESTRIAN": "person"}})
    ws = Workspace(workspace.root, cfg)
    with ws.session() as s:
        summary = ingest(ws, s, [xml, *sorted(xml.parent.glob("*.jpg"))])
        problems = s.scalars(select(Problem)).all()
    # The third annotated photo holds only CAR and ROAD_SURFACE: no label, not an all-background one.
    assert summary.labels.labels_added == 1
    only_unknown = [p for p in problems if p.kind == ProblemKind.ONLY_UNKNOWN_LABELS]
    assert len(only_unknown) == 1 and "CAR" in (only_unknown[0].value or "")
    missing = [p for p in problems if p.kind == "missing-image"]
    assert len(missing) == 18 and all(p.path == str(xml) for p in missing)
    unknown = sorted(p.value for p in problems if p.kind == "unknown-label")
    assert unknown == sorted(set(unknown)) and "CAR" in unknown  # reported once per label
    masks = [mask for mask, _, _ in _labels(ws).values()]
    assert all(set(np.unique(m)) <= {0, 1, IGNORE_INDEX} for m in masks) and any((m == 1).any() for m in masks)


def test_human_label_supersedes_pseudo_and_older_human(workspace: Workspace, synth_dir: Path) -> None:
    with workspace.session() as s:
        ingest(workspace, s, [synth_dir / "unlabeled"], workers=1)
        image_id = s.scalars(select(Image.id)).first()
        assert image_id is not None
        pseudo = Label(image_id=image_id, origin="pseudo", source="teacher", mask_path="x", status="active")
        s.add(pseudo)
        s.flush()
        mask = np.zeros((8, 8), np.uint8)
        outcome, first = add_human_label(workspace, s, image_id, EncodedLabel.from_png(encode_png(mask)), source="mask")
        assert outcome == "added" and pseudo.status == "superseded" and first.status == "active"
        same, _ = add_human_label(workspace, s, image_id, EncodedLabel.from_png(encode_png(mask)), source="mask")
        assert same == "unchanged"
        mask[2:5, 2:5] = 1
        _, second = add_human_label(workspace, s, image_id, EncodedLabel.from_png(encode_png(mask)), source="labelme")
        assert first.status == "superseded" and second.status == "active"
        assert np.array_equal(read_mask(workspace.root / second.mask_path), mask)


@pytest.mark.parametrize("fmt", ["labelme", "cvat", "coco", "supervisely", "labelstudio", "masks"])
def test_export_then_ingest_reproduces_masks_and_splits(
    workspace: Workspace, synth_dir: Path, tmp_path: Path, fmt: str
) -> None:
    with workspace.session() as s:
        ingest(workspace, s, [synth_dir / "images", synth_dir / "masks"], workers=1)
        summary = export_labels(workspace, s, tmp_path / "out", fmt)  # type: ignore[arg-type]
    assert summary.labels == 12
    fresh = Workspace.init(tmp_path / "fresh")
    with fresh.session() as s:
        back = ingest(fresh, s, [tmp_path / "out"], workers=1)
    assert back.labels.labels_added == 12, back.to_dict()
    before, after = _labels(workspace), _labels(fresh)
    assert set(before) == set(after)
    for sha, (mask, split, _) in before.items():
        mask2, split2, _ = after[sha]
        assert split == split2
        inter = np.logical_and(mask == 1, mask2 == 1).sum()
        union = np.logical_or(mask == 1, mask2 == 1).sum()
        assert union == 0 or inter / union >= 0.99, (fmt, sha, inter / union)


def test_unusable_json_in_an_ingested_folder_is_recorded_not_skipped(workspace: Workspace, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "truncated.json").write_text('{"shapes": [', encoding="utf-8")
    (src / "latin1.json").write_bytes(b'{"label": "caf\xe9"}')
    (src / "results.json").write_text("[]", encoding="utf-8")
    (src / "settings.json").write_text('{"theme": "dark"}', encoding="utf-8")  # some tool's: left alone
    with workspace.session() as s:
        summary = ingest(workspace, s, [src], workers=1)
        rows = s.scalars(select(Problem).where(Problem.kind == ProblemKind.ANNOTATION)).all()
    assert sorted(Path(p.path).name for p in rows) == ["latin1.json", "results.json", "truncated.json"]
    lines = summary.to_dict()["problems"]
    assert any("invalid JSON" in line for line in lines) and any("JSON list" in line for line in lines)
