"""engine.evaluate: metrics at original resolution, registry splits, external folders."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image as PILImage
from sqlalchemy import select

from dataeng.annotation.masks import read_mask
from dataeng.annotation.types import IGNORE_INDEX
from dataeng.db.schema import ImageMetric, Problem, ProblemKind, Run
from dataeng.engine.learn.evaluate import evaluate, evaluate_samples, prediction_path
from dataeng.engine.learn.runs import RunRef
from dataeng.engine.learn.samples import Sample, folder_samples
from dataeng.engine.learn.train import train
from dataeng.errors import ModelError
from dataeng.models.inference import TorchPredictor
from tests.factories import TINY_TRAIN, make_workspace


class BrightIsPerson(torch.nn.Module):
    """A 'model' that calls bright pixels the person: exact up to resizing."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :1] * 20.0


def _bright() -> TorchPredictor:
    return TorchPredictor(BrightIsPerson(), ["person"], (64, 64), torch.device("cpu"))


def _write_pair(folder, stem, size=(90, 70), ignore=False):
    h, w = size
    mask = np.zeros((h, w), np.uint8)
    mask[20:70, 15:50] = 1
    image = np.stack([mask * 220 + 10] * 3, axis=-1).astype(np.uint8)
    (folder / "images").mkdir(exist_ok=True)
    (folder / "masks").mkdir(exist_ok=True)
    PILImage.fromarray(image).save(folder / "images" / f"{stem}.png")
    out = mask * IGNORE_INDEX  # binary 0/255 -> class 1
    if ignore:
        out = mask.copy()
        out[:5] = IGNORE_INDEX
    PILImage.fromarray(out.astype(np.uint8)).save(folder / "masks" / f"{stem}.png")
    return mask


def test_metrics_are_computed_at_original_resolution(tmp_path):
    _write_pair(tmp_path, "a", size=(90, 70))
    _write_pair(tmp_path, "b", size=(50, 130), ignore=True)
    samples, missing = folder_samples(tmp_path / "images", tmp_path / "masks")
    assert missing == []
    outcome = evaluate_samples(_bright(), samples, 1, batch_size=2)
    assert outcome.metrics["images"] == 2 and outcome.problems == []
    assert outcome.metrics["iou"] > 0.95 and outcome.metrics["boundary_f1"] > 0.9


def test_the_worst_predictions_are_kept_lowest_iou_first(tmp_path):
    sizes = [(90, 70), (50, 130), (64, 64), (80, 40)]
    for k, size in enumerate(sizes):
        _write_pair(tmp_path, f"im{k}", size=size)
    samples, _ = folder_samples(tmp_path / "images", tmp_path / "masks")
    # Darken part of each image so the model misses a different share of the person in each.
    for k, sample in enumerate(samples):
        array = np.asarray(PILImage.open(sample.image_path)).copy()
        array[: array.shape[0] * k // 6] = 10
        PILImage.fromarray(array).save(sample.image_path)
    outcome = evaluate_samples(_bright(), samples, 1, keep_worst=2)
    by_iou = sorted(outcome.images, key=lambda s: s.scores.iou)
    assert [img.sample.image_path for img, _ in outcome.worst_predictions] == [s.sample.image_path
                                                                              for s in by_iou[:2]]
    for image, pred in outcome.worst_predictions:
        truth = np.asarray(PILImage.open(tmp_path / "masks" / image.sample.image_path.name)) != 0
        assert pred.shape == truth.shape  # at the image's own size
        inter, union = np.count_nonzero((pred == 1) & truth), np.count_nonzero((pred == 1) | truth)
        assert inter / union == pytest.approx(image.scores.iou)
    assert evaluate_samples(_bright(), samples, 1).worst_predictions == []


def _trained(tmp_path):
    ws, _ = make_workspace(tmp_path, n_train=4, n_val=2, n_test=2)
    session = ws.new_session()
    try:
        result = train(ws, session, {**TINY_TRAIN, "epochs": 1})
    finally:
        session.close()
    return ws, result


def test_evaluate_registry_split_and_external_folder(tmp_path):
    ws, trained = _trained(tmp_path)
    with ws.session() as session:
        res = evaluate(ws, session, split="val", device="cpu")
    assert res.model_run_id == trained.run_id and res.split == "val" and res.metrics["images"] == 2
    assert res.metrics["miou"] == pytest.approx(trained.val["miou"])  # same checkpoint, same images
    with ws.session() as session:  # the evaluation kept its predictions for the report
        ids = session.scalars(select(ImageMetric.image_id).where(ImageMetric.run_id == res.run_id)).all()
    kept = [prediction_path(ws.run_dir(trained.run_id), "val", i) for i in ids]
    assert all(p.is_file() and read_mask(p).shape == (64, 64) for p in kept)
    ext = tmp_path / "ext"
    ext.mkdir()
    _write_pair(ext, "one")
    _write_pair(ext, "two")
    PILImage.fromarray(np.zeros((20, 20, 3), np.uint8)).save(ext / "images" / "lonely.png")
    with ws.session() as session:
        out = evaluate(ws, session, RunRef.parse(trained.run_id), images_dir=ext / "images",
                       masks_dir=ext / "masks",
                       device="cpu")
    assert out.missing == [str(ext / "images" / "lonely.png")] and out.metrics["images"] == 2
    with ws.session() as session:
        run = session.get(Run, out.run_id)
        assert run.kind == "evaluate" and run.status == "finished" and run.config["model_run_id"] == trained.run_id
        rows = session.scalars(select(ImageMetric).where(ImageMetric.run_id == out.run_id)).all()
        assert len(rows) == 2 and all(r.image_id is None and r.split == "external" for r in rows)
        problems = session.scalars(select(Problem).where(Problem.run_id == out.run_id)).all()
        assert [(p.kind, p.path) for p in problems] == [(ProblemKind.MISSING_MASK, str(ext / "images" / "lonely.png"))]


def test_evaluate_refuses_unknown_runs(tmp_path):
    ws, _ = make_workspace(tmp_path, n_train=1, n_val=0, n_test=0, size=32)
    with ws.session() as session, pytest.raises(ModelError, match="no finished train run"):
        evaluate(ws, session)
    with ws.session() as session, pytest.raises(ModelError, match="no train run with this id"):
        evaluate(ws, session, RunRef.parse(42))


def test_unreadable_image_is_reported_and_rest_go_on(tmp_path):
    _write_pair(tmp_path, "a")
    samples, _ = folder_samples(tmp_path / "images", tmp_path / "masks")
    bad = Sample(image_path=tmp_path / "nope.png", mask_path=samples[0].mask_path, external=True)
    outcome = evaluate_samples(_bright(), [bad, *samples], 1)
    assert outcome.metrics["images"] == 1 and outcome.problems[0][0].endswith("nope.png")
