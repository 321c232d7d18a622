"""engine.train: registration, files, label-set fingerprint, resume, refusal without labels."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from sqlalchemy import select

from dataeng.annotation.masks import write_mask
from dataeng.db.schema import ImageMetric, Label, Run
from dataeng.engine.learn.provenance import dataset_fingerprint
from dataeng.engine.learn.samples import registry_samples
from dataeng.engine.learn.train import train
from dataeng.errors import DataEngError
from dataeng.models.checkpoint import load_checkpoint
from dataeng.progress import NullProgress
from tests.factories import TINY_TRAIN, make_workspace


def _train(ws, **kw):
    session = ws.new_session()
    try:
        opts = {**TINY_TRAIN, **kw.pop("opts", {})}
        return train(ws, session, opts, **kw)
    finally:
        session.close()


def test_train_registers_run_files_and_test_metrics(tmp_path):
    ws, _ = make_workspace(tmp_path, n_train=6, n_val=2, n_test=3)
    result = _train(ws, opts={"epochs": 9, "sample_budget": 12}, round=1)  # 12 images seen / 6 = 2 epochs
    with ws.session() as session:
        run = session.get(Run, result.run_id)
        assert (run.kind, run.status, run.round) == ("train", "finished", 1)
        assert run.config["encoder"] == TINY_TRAIN["encoder"] and run.config["epochs"] == 2
        assert run.config["sample_budget"] == 12
        assert run.config["classes"] == ["person"]
        assert run.code_version and run.device == "cpu" and run.finished_at is not None
        assert len(run.metrics["history"]) == 2 and run.metrics["best_epoch"] in (1, 2)
        assert run.metrics["test"]["images"] == 3 and 0 <= run.metrics["test"]["iou"] <= 1
        assert run.metrics["selected_by"] == "val_miou"
        assert run.checkpoint_path == f"runs/{run.id}/checkpoint.pt"
        rows = session.scalars(select(ImageMetric).where(ImageMetric.run_id == run.id)).all()
        assert len(rows) == 3 and {r.split for r in rows} == {"test"}
        assert all(r.model_run_id == run.id and r.image_id is not None for r in rows)
        kept = {p.stem for p in (result.run_dir / "predictions" / "test").iterdir()}
        assert kept == {str(r.image_id) for r in rows}  # fewer than WORST_KEPT test images: all kept
        samples = registry_samples(ws, session, "train")
        assert run.dataset_fingerprint == dataset_fingerprint(samples)
    files = {p.name for p in result.run_dir.iterdir()}
    assert {"config.json", "checkpoint.pt", "last.pt", "metrics.json", "log", "dataset.json"} <= files
    assert json.loads((result.run_dir / "metrics.json").read_text())["test"] == result.test
    assert load_checkpoint(result.checkpoint).meta["epoch"] == result.best_epoch
    assert "finished: best epoch" in (result.run_dir / "log").read_text()
    dataset = json.loads((result.run_dir / "dataset.json").read_text())
    assert len(dataset["train"]) == 6 and dataset["fingerprint"] == result.fingerprint


def test_fingerprint_tracks_the_exact_label_set(tmp_path):
    ws, made = make_workspace(tmp_path, n_train=3, n_val=0, n_test=0, size=32)
    with ws.session() as session:
        before = dataset_fingerprint(registry_samples(ws, session, "train"))
        label = session.get(Label, made[0].label_id)
        changed = made[0].mask.copy()
        changed[0, 0] = 1 - changed[0, 0]
        write_mask(ws.root / label.mask_path, changed)
        after = dataset_fingerprint(registry_samples(ws, session, "train"))
        label.status = "superseded"
        session.flush()
        fewer = dataset_fingerprint(registry_samples(ws, session, "train"))
    assert len({before, after, fewer}) == 3


def test_no_labelled_train_images_is_a_clear_error(tmp_path):
    ws, _ = make_workspace(tmp_path, n_train=3, n_val=1, n_test=0, labelled=False, size=32)
    with pytest.raises(DataEngError, match="no labelled train images"):
        _train(ws, opts={"epochs": 1})
    with ws.session() as session:
        assert session.scalars(select(Run)).all() == []


def test_resume_equals_uninterrupted(tmp_path):
    ws, _ = make_workspace(tmp_path, n_train=6, n_val=2, n_test=0)
    full = _train(ws, opts={"epochs": 2})

    class Killed(KeyboardInterrupt):
        pass

    class KillAfterFirstEpoch(NullProgress):
        def note(self, text: str) -> None:  # the epoch's line: its checkpoint and row are committed
            raise Killed

    with pytest.raises(Killed):
        _train(ws, opts={"epochs": 2}, progress=KillAfterFirstEpoch())
    with ws.session() as session:
        killed = session.scalars(select(Run).order_by(Run.id.desc())).first()
        assert killed.status == "failed" and len(killed.metrics["history"]) == 1
    resumed = _train(ws, resume=killed.id, opts={"epochs": 99})  # stored options win on resume
    assert resumed.run_id == killed.id and resumed.epochs == 2
    a = load_checkpoint(full.run_dir / "last.pt").model
    b = load_checkpoint(resumed.run_dir / "last.pt").model
    for k in a:
        assert torch.allclose(a[k].float(), b[k].float(), atol=1e-5), k
    assert [h["train_loss"] for h in full.history] == pytest.approx([h["train_loss"] for h in resumed.history])
    with ws.session() as session:
        assert session.get(Run, killed.id).status == "finished"
    with pytest.raises(DataEngError, match="already finished"):
        _train(ws, resume=killed.id)


def test_pseudo_labels_and_matting_train(tmp_path):
    from tests.factories import add_image, add_label

    ws, made = make_workspace(tmp_path, n_train=4, n_val=0, n_test=1, size=64, with_alpha=True)
    with ws.session() as session:
        img = add_image(session, ws, made[0].image[:, ::-1].copy(), "train", "flipped")
        add_label(session, ws, img.id, made[0].mask[:, ::-1].copy(), origin="pseudo",
                  confidence=np.full((64, 64), 0.97, np.float32))
    result = _train(ws, opts={"epochs": 1, "loss": "matting", "strong_augment": True})
    assert result.train_images == 5 and result.best_epoch == 1
    assert result.test is not None and result.test["mae"] is not None  # the test label has a matte
    with ws.session() as session:
        run = session.get(Run, result.run_id)
        assert run.metrics["selected_by"] == "last_epoch" and run.config["strong_augment"] is True


def test_val_every_validates_and_checkpoints_every_n_images_and_at_the_end(tmp_path):
    ws, _ = make_workspace(tmp_path, n_train=4, n_val=2, n_test=0)
    notes: list[str] = []

    class Notes(NullProgress):
        def note(self, text: str) -> None:
            notes.append(text)

    # 4 images per epoch: validation after epochs 3 (12 seen), 6 (12 more) and 7 (the last).
    result = _train(ws, opts={"epochs": 7, "val_every": 10}, progress=Notes())
    validated = [h["epoch"] for h in result.history if h["val"] is not None]
    assert validated == [3, 6, 7]
    assert len(result.history) == 7 and result.best_epoch in validated
    assert len(notes) == 7 and all(("val mIoU" in n) == (i + 1 in validated) for i, n in enumerate(notes))
    assert load_checkpoint(result.run_dir / "last.pt").meta["epoch"] == 7
