"""What dataeng exported comes back as what it was: pseudo-labels never become human labels, and an
old export never replaces a newer human label (the provenance ``export labels`` writes, per format)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select

from dataeng.annotation.masks import encode_png, read_mask
from dataeng.db.schema import Label, Problem, ProblemKind
from dataeng.engine.export_labels import export_labels
from dataeng.engine.ingest.ingest import ingest
from dataeng.engine.labels import EncodedLabel, ExportedLabel, add_human_label
from tests.engine.learn.pseudolabel_helpers import add_teacher_run
from tests.factories import add_label, make_workspace

FORMATS = ["labelme", "cvat", "coco", "supervisely", "labelstudio", "masks"]


def _active(ws, image_id: int) -> Label:
    with ws.session() as s:
        return s.scalars(select(Label).where(Label.image_id == image_id, Label.status == "active")).one()


@pytest.mark.parametrize("fmt", FORMATS)
def test_an_exported_pseudo_label_is_not_ingested_as_a_human_label(tmp_path: Path, fmt: str) -> None:
    ws, made = make_workspace(tmp_path, n_train=3, n_val=0, n_test=0, labelled=False)
    teacher = add_teacher_run(ws, 4.0)
    with ws.session() as s:
        for m in made:
            add_label(s, ws, m.image_id, m.mask, origin="pseudo", run_id=teacher)
        export_labels(ws, s, tmp_path / "out", fmt, origin="pseudo")  # type: ignore[arg-type]
    with ws.session() as s:
        summary = ingest(ws, s, [tmp_path / "out"], workers=1)
        problems = s.scalars(select(Problem).where(Problem.kind == ProblemKind.PSEUDO_LABEL)).all()
        humans = s.scalars(select(Label).where(Label.origin == "human")).all()
    assert summary.labels.labels_added == 0 and humans == []
    assert len(problems) == 3 and all(p.field == "dataeng.origin" for p in problems)
    assert any("pseudo-label exported by dataeng" in line for line in summary.to_dict()["problems"])
    assert all(_active(ws, m.image_id).origin == "pseudo" for m in made)


@pytest.mark.parametrize("fmt", FORMATS)
def test_an_old_export_never_replaces_a_newer_human_label(tmp_path: Path, fmt: str) -> None:
    ws, made = make_workspace(tmp_path, n_train=2, n_val=0, n_test=0)
    with ws.session() as s:
        export_labels(ws, s, tmp_path / "out", fmt)  # type: ignore[arg-type]
    corrected = made[0].mask.copy()
    corrected[:8, :8] = 1  # a review correction made after the export
    with ws.session() as s:
        _, newer = add_human_label(ws, s, made[0].image_id, EncodedLabel.from_png(encode_png(corrected)),
                                   source="review")
        newer_id = newer.id
    with ws.session() as s:
        summary = ingest(ws, s, [tmp_path / "out"], workers=1)
        stale = s.scalars(select(Problem).where(Problem.kind == ProblemKind.STALE_LABEL)).all()
    assert [p.value for p in stale] == [str(made[0].label_id)]
    active = _active(ws, made[0].image_id)
    assert active.id == newer_id and np.array_equal(read_mask(ws.root / active.mask_path), corrected)
    other = _active(ws, made[1].image_id)  # its export is its current label: imported as usual
    assert other.origin == "human" and summary.labels.refused == 1


def test_provenance_values_parse_whatever_the_format_made_of_them() -> None:
    assert ExportedLabel.parse({"origin": "pseudo", "label_id": "12", "run_id": ""}) == ExportedLabel("pseudo", 12,
                                                                                                     None)
    assert ExportedLabel.parse({"origin": "human", "label_id": 3, "run_id": None}) == ExportedLabel("human", 3, None)
    assert ExportedLabel.parse({}) is None and ExportedLabel.parse("dataeng") is None
    assert ExportedLabel.parse({"label_id": True}) == ExportedLabel(None, None, None)


def test_export_refuses_a_folder_that_is_not_empty_unless_overwrite(tmp_path: Path) -> None:
    from dataeng.errors import DataEngError

    ws, _ = make_workspace(tmp_path, n_train=2, n_val=0, n_test=0)
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.json").write_text("{}")
    with ws.session() as s, pytest.raises(DataEngError, match="must be new or empty"):
        export_labels(ws, s, out, "labelme")
    assert sorted(p.name for p in out.iterdir()) == ["old.json"]
    with ws.session() as s:
        summary = export_labels(ws, s, out, "labelme", overwrite=True)
    assert summary.labels == 2 and (out / "old.json").exists()
