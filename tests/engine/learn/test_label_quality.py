"""engine.label_quality: cleanlab scores on out-of-sample predictions, which labels each model may score.

Most tests replace the model's probabilities by near-perfect ones read off the image (the
images here are the truth drawn bright on dark), so the ranking is deterministic; one test
trains real fold models end to end.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from sqlalchemy import select

from dataeng.annotation.masks import alpha_to_mask, read_mask
from dataeng.annotation.types import IGNORE_INDEX
from dataeng.db.schema import Image, Label
from dataeng.engine.learn import label_quality
from dataeng.engine.learn.label_quality import (
    downsample_mask,
    fold_of,
    label_quality_scores,
    rank_label_issues,
)
from dataeng.errors import DataEngError, ModelError, NothingToDoError
from dataeng.models.inference import class_mask
from dataeng.workspace import Workspace
from tests.engine.learn.pseudolabel_helpers import add_teacher_run
from tests.factories import TINY_TRAIN, add_image, add_label, blob_portrait

NO_WORKERS = {"num_workers": 0}


def _truth(i: int, size: tuple[int, int] = (64, 64)) -> tuple[np.ndarray, np.ndarray]:
    """(image, mask): a person-like blob, drawn bright on a dark background with noise."""
    rng = np.random.default_rng([7, i])
    _, alpha = blob_portrait(rng, *size)
    mask = alpha_to_mask(alpha)
    image = np.where(mask[..., None] == 1, 210.0, 45.0) + rng.normal(0, 12, (*size, 3))
    return np.clip(image, 0, 255).astype(np.uint8), mask


def _add(ws: Workspace, i: int, split: str, label: str = "truth", size: tuple[int, int] = (64, 64),
         group_of: int | None = None) -> tuple[int, int]:
    """Add image i with a human label (``truth``, ``inverted``, ``empty``); returns (image id, label id)."""
    image, mask = _truth(i, size)
    mask = {"truth": mask, "inverted": (1 - mask).astype(np.uint8), "empty": np.zeros_like(mask)}[label]
    with ws.session() as s:
        row = add_image(s, ws, image, split, name=f"{split}_{i}")
        if group_of is not None:
            row.group_id = group_of
        return row.id, add_label(s, ws, row.id, mask).id


def _near_perfect(predictors, inputs: np.ndarray) -> np.ndarray:
    """Probabilities read off the (bright person, dark background) image: 0.97 on the truth, in
    between where resizing blended the two (as a good model is unsure on the outline)."""
    fg = torch.sigmoid((torch.from_numpy(inputs).float().mean(dim=1) - 128) / 12).clamp(0.03, 0.97)
    return torch.stack([1 - fg, fg], dim=1).numpy()


@pytest.fixture
def perfect_model(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(label_quality, "probabilities", _near_perfect)


class _Recorder:
    """A Progress that remembers its tasks and counts what was advanced."""

    def __init__(self) -> None:
        self.tasks: list[str] = []
        self.advanced = 0

    def task(self, description: str, total: int | None) -> None:
        self.tasks.append(description)

    def advance(self, n: int = 1, **fields) -> None:
        self.advanced += n


def _rank(ws: Workspace, **kw) -> list[label_quality.LabelIssue]:
    session = ws.new_session()
    try:
        return rank_label_issues(ws, session, device="cpu", overrides={**NO_WORKERS, **kw.pop("overrides", {})},
                                 **kw)
    finally:
        session.close()


def _meta(ws: Workspace) -> dict[int, dict | None]:
    with ws.session() as s:
        return {label.id: (label.meta or {}).get("label_quality") for label in s.scalars(select(Label))}


def _write_dataset_json(ws: Workspace, run_id: int, train_label_ids: list[int]) -> None:
    path = ws.run_dir(run_id) / "dataset.json"
    path.write_text(json.dumps({"train": train_label_ids, "val": [], "test": []}))


# ---------------------------------------------------------------- kernels
def test_ignored_pixels_do_not_lower_the_score() -> None:
    _, truth = _truth(0)
    fg = np.where(truth == 1, 0.97, 0.03)
    probs = np.stack([1 - fg, fg])[None].repeat(3, axis=0).astype(np.float32)
    ignored, wrong = truth.copy(), truth.copy()
    ignored[:, :40] = IGNORE_INDEX  # most of the image
    wrong[:, :40] = 1 - truth[:, :40]
    scores = label_quality_scores(np.stack([truth, ignored, wrong]), probs)
    assert scores[1] == pytest.approx(scores[0], abs=1e-9)
    assert scores[0] > 0.9 and scores[2] < 0.1


def test_scores_rank_a_wrong_label_below_a_right_one_and_class_mask() -> None:
    p = np.stack([np.full((2, 2), 0.1), np.full((2, 2), 0.9)])[None].astype(np.float32)
    right, wrong = label_quality_scores(np.ones((1, 2, 2), np.uint8), p), label_quality_scores(
        np.zeros((1, 2, 2), np.uint8), p)
    assert 0 <= wrong[0] < right[0] <= 1
    assert class_mask(np.array([[[0.5, 0.6]], [[0.5, 0.4]]])).tolist() == [[1, 0]]  # p >= 0.5 is person
    three = np.array([[[0.2]], [[0.3]], [[0.5]]])
    assert class_mask(three).tolist() == [[2]]
    with pytest.raises(ValueError, match="must match"):
        label_quality_scores(np.zeros((1, 2, 3), np.uint8), p)


def test_downsample_mask_votes_by_area() -> None:
    mask = np.zeros((8, 8), np.uint8)
    mask[:, :3] = 1  # three of the four columns of each left 4x4 cell
    mask[4:, 4:] = IGNORE_INDEX
    mask[0, 7] = 7  # a value outside the classes counts as ignore
    small = downsample_mask(mask, (2, 2), num_classes=2)
    assert small.tolist() == [[1, 0], [1, IGNORE_INDEX]]
    sliver = np.zeros((8, 8), np.uint8)
    sliver[:, 0] = 1  # a quarter of the left cells: background wins where nearest would keep the sliver
    assert downsample_mask(sliver, (2, 2), 2).tolist() == [[0, 0], [0, 0]]
    assert downsample_mask(mask, (8, 8), 2) is mask


def test_fold_of_is_stable_and_spreads_groups() -> None:
    folds = [fold_of(g, 3) for g in range(300)]
    assert folds == [fold_of(g, 3) for g in range(300)]
    assert set(folds) == {0, 1, 2} and min(folds.count(f) for f in range(3)) > 60


# ---------------------------------------------------------------- best run (folds = 0)
def test_planted_wrong_labels_rank_first_with_full_size_predictions(tmp_path: Path, perfect_model: None) -> None:
    ws = Workspace.init(tmp_path / "ws")
    teacher = add_teacher_run(ws, 0.0)
    right = [_add(ws, i, "val", size=(72, 56))[1] for i in range(5)]
    inverted_image, inverted = _add(ws, 10, "test", "inverted", size=(72, 56))
    _, empty = _add(ws, 11, "val", "empty", size=(72, 56))

    issues = _rank(ws)
    assert [i.label_id for i in issues[:2]] == [inverted, empty]
    assert {i.label_id for i in issues[2:]} == set(right)
    assert issues[0].score < 0.1 and issues[1].score < 0.1 and min(i.score for i in issues[2:]) > 0.7
    assert all(i.source_run_id == teacher for i in issues)
    first = issues[0]
    assert first.image_id == inverted_image
    png = tmp_path / "pred.png"
    png.write_bytes(first.predicted_png)
    predicted = read_mask(png)
    _, truth = _truth(10, (72, 56))
    assert predicted.shape == (72, 56)  # the image's size, not the network's 64 x 64
    assert (predicted == truth).mean() > 0.97

    meta = _meta(ws)
    assert meta[inverted]["score"] == pytest.approx(first.score)
    assert (meta[inverted]["run_id"], meta[inverted]["folds"], meta[inverted]["fold"]) == (teacher, 0, None)
    assert meta[inverted]["scored_at"]

    top = _rank(ws, limit=2)
    assert [i.label_id for i in top] == [inverted, empty]
    assert all(meta[x] is not None for x in right)  # every label is stored, whatever the limit


def test_labels_the_run_trained_on_are_not_scored(tmp_path: Path, perfect_model: None) -> None:
    ws = Workspace.init(tmp_path / "ws")
    teacher = add_teacher_run(ws, 0.0)
    trained = [_add(ws, i, "train") for i in range(3)]
    _write_dataset_json(ws, teacher, [label_id for _, label_id in trained])
    _, val = _add(ws, 3, "val")
    _, later = _add(ws, 4, "train", "inverted")  # labelled after the run: out of sample
    # A correction of an image the run trained on: the model has seen the image, so not scored.
    with ws.session() as s:
        s.get(Label, trained[0][1]).status = "superseded"
        s.flush()
        corrected = add_label(s, ws, trained[0][0], np.zeros((64, 64), np.uint8)).id

    issues = _rank(ws)
    assert [i.label_id for i in issues] == [later, val]
    meta = _meta(ws)
    assert all(meta[x] is None for x in (corrected, trained[1][1], trained[2][1]))

    # Without a record of what a run trained on (an imported checkpoint), no train label is scored.
    (ws.run_dir(teacher) / "dataset.json").unlink()
    assert [i.label_id for i in _rank(ws)] == [val]


def test_nothing_to_score_and_no_model_are_clear_errors(tmp_path: Path, perfect_model: None) -> None:
    ws = Workspace.init(tmp_path / "ws")
    with ws.session() as s:
        add_image(s, ws, _truth(0)[0], "val")
    with pytest.raises(NothingToDoError, match="no active human labels"):
        _rank(ws)
    _, train_label = _add(ws, 1, "train")
    with pytest.raises(ModelError, match=r"dataeng train.*--folds"):
        _rank(ws)
    teacher = add_teacher_run(ws, 0.0)
    _write_dataset_json(ws, teacher, [train_label])
    with pytest.raises(NothingToDoError, match="--folds"):
        _rank(ws)
    for bad in (1, -2):
        with pytest.raises(DataEngError, match="folds"):
            _rank(ws, folds=bad)
    with pytest.raises(DataEngError, match="limit"):
        _rank(ws, limit=0)

    only_val = Workspace.init(tmp_path / "only_val")
    _add(only_val, 2, "val")
    with pytest.raises(ModelError, match="no train labels to train fold models"):
        _rank(only_val, folds=2)


# ---------------------------------------------------------------- cross-validation (folds >= 2)
def test_folds_score_every_train_label_with_a_model_that_did_not_see_it(
        tmp_path: Path, perfect_model: None, monkeypatch: pytest.MonkeyPatch) -> None:
    ws = Workspace.init(tmp_path / "ws")
    train = [_add(ws, i, "train") for i in range(6)]
    twin = _add(ws, 6, "train", group_of=train[0][0])  # a near duplicate of image 0: same group, same fold
    train.append(twin)
    _, val = _add(ws, 7, "val")
    trained_on: dict[int, set[int]] = {}
    real = label_quality._train_fold

    def recording(options, classes, samples, fold, folds, device, workers, progress):
        trained_on[fold] = {s.label_id for s in samples}
        return real(options, classes, samples, fold, folds, device, workers, progress)

    monkeypatch.setattr(label_quality, "_train_fold", recording)
    with ws.session() as s:
        groups = {i.id: i.group_id or i.id for i in s.scalars(select(Image))}
    progress = _Recorder()
    issues = _rank(ws, folds=2, overrides={**TINY_TRAIN, "epochs": 1}, progress=progress)

    assert [t.split(":")[0] for t in progress.tasks if "training" in t] == ["fold 1/2", "fold 2/2"]
    assert progress.advanced == 2 + len(train) + 1  # one epoch per fold model, one per label scored
    assert {i.label_id for i in issues} == {label_id for _, label_id in train} | {val}
    meta = _meta(ws)
    for image_id, label_id in train:
        fold = meta[label_id]["fold"]
        assert fold == fold_of(groups[image_id], 2) and meta[label_id]["folds"] == 2
        assert label_id not in trained_on[fold]
        assert label_id in trained_on[1 - fold]
    assert meta[twin[1]]["fold"] == meta[train[0][1]]["fold"]
    # No trained run: val is scored by the mean of the fold models.
    assert (meta[val]["run_id"], meta[val]["fold"]) == (None, None)
    assert all(i.source_run_id is None for i in issues)

    teacher = add_teacher_run(ws, 0.0)
    _rank(ws, folds=2, overrides={**TINY_TRAIN, "epochs": 1})
    assert _meta(ws)[val]["run_id"] == teacher  # with one, the best run scores val/test


def test_folds_need_train_labels_in_two_folds(tmp_path: Path, perfect_model: None) -> None:
    ws = Workspace.init(tmp_path / "ws")
    first, _ = _add(ws, 0, "train")
    _add(ws, 1, "train", group_of=first)  # one group: both in the same fold
    with pytest.raises(DataEngError, match="at least 2 of the 2 folds"):
        _rank(ws, folds=2, overrides={**TINY_TRAIN, "epochs": 1})


@pytest.mark.slow
def test_end_to_end_fold_models_find_an_inverted_label(tmp_path: Path) -> None:
    """Real tiny fold models on easy shapes, no stand-in: the inverted label scores lowest."""
    ws = Workspace.init(tmp_path / "ws")
    labels = [_add(ws, i, "train", "inverted" if i == 3 else "truth")[1] for i in range(10)]
    issues = _rank(ws, folds=2, overrides={**TINY_TRAIN, "epochs": 6})
    assert len(issues) == 10
    assert issues[0].label_id == labels[3]
    assert issues[0].score < min(i.score for i in issues[1:]) - 0.2
