"""Pseudo-labelling: the kernel on hand-made maps, and the engine on tiny registries."""

from __future__ import annotations

import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import func, select
from typer.testing import CliRunner

from dataeng.annotation.masks import read_confidence, read_mask
from dataeng.annotation.types import IGNORE_INDEX
from dataeng.cli import app
from dataeng.config import AcceptConfig, PseudolabelConfig
from dataeng.db.schema import Image, Label, Problem, ProblemKind, Run
from dataeng.engine.learn.pseudolabel import (
    PseudoScores,
    accepts,
    label_from_probabilities,
    pseudolabel,
    stability,
    uncertainty,
)
from dataeng.engine.learn.runs import RunRef
from dataeng.errors import ModelError, NothingToDoError
from tests.engine.learn.pseudolabel_helpers import add_teacher_run, save_constant_teacher
from tests.factories import add_label, make_workspace

CONFIDENT, UNSURE = 8.0, 0.0  # teacher logits: sigmoid 0.9997 everywhere, or 0.5 everywhere


# ---------------------------------------------------------------- kernel
def test_threshold_ignore_and_scores_on_a_hand_made_map() -> None:
    fg = np.array([[0.99, 0.97, 0.60],
                   [0.02, 0.40, 0.50]], np.float32)
    probs = np.stack([1 - fg, fg])
    out = label_from_probabilities(probs, pixel_threshold=0.95, stability_delta=0.1)
    assert out.mask.tolist() == [[1, 1, IGNORE_INDEX], [0, IGNORE_INDEX, IGNORE_INDEX]]
    np.testing.assert_allclose(out.confidence, [[0.99, 0.97, 0.60], [0.98, 0.60, 0.50]], atol=1e-6)
    assert out.scores.confident_fraction == pytest.approx(3 / 6)
    assert out.scores.mean_confidence == pytest.approx((0.99 + 0.97 + 0.6 + 0.98 + 0.6 + 0.5) / 6)
    # p > 0.4: 0.99, 0.97, 0.60, 0.50 (4 pixels); p > 0.6: 0.99, 0.97 (2) -> IoU 2/4
    assert out.scores.stability == pytest.approx(0.5)


def test_multiclass_argmax_and_confidence() -> None:
    probs = np.array([[[0.1, 0.96]], [[0.85, 0.02]], [[0.05, 0.02]]], np.float32)  # K=3, 1x2
    out = label_from_probabilities(probs, pixel_threshold=0.8, stability_delta=0.1)
    assert out.mask.tolist() == [[1, 0]]
    # foreground = 1 - P(background) = 0.9, 0.04
    assert out.scores.stability == 1.0


@pytest.mark.parametrize(("fg", "expected"), [
    (np.zeros((4, 4)), 1.0),  # nothing anywhere, confidently: stable
    (np.full((4, 4), 0.5), 0.0),  # everything on the fence
    (np.array([[0.9, 0.9, 0.55, 0.1]]), 2 / 3),
    (np.array([[0.61, 0.59, 0.41, 0.39]]), 1 / 3),
])
def test_stability_is_iou_of_masks_at_half_minus_and_plus_delta(fg: np.ndarray, expected: float) -> None:
    assert stability(fg, 0.1) == pytest.approx(expected)


def test_accept_needs_all_three_scores() -> None:
    rule = AcceptConfig(min_confident_fraction=0.9, min_mean_confidence=0.9, min_stability=0.9)
    assert accepts(PseudoScores(0.95, 0.95, 0.95), rule)
    assert accepts(PseudoScores(0.9, 0.9, 0.9), rule)
    for scores in (PseudoScores(0.89, 1, 1), PseudoScores(1, 0.89, 1), PseudoScores(1, 1, 0.89)):
        assert not accepts(scores, rule)


def test_uncertainty_ranks_fewer_confident_pixels_and_less_stability_first() -> None:
    assert uncertainty(1.0, 1.0) == 0.0
    assert uncertainty(0.5, 1.0) > uncertainty(0.8, 0.99) > uncertainty(0.8, 1.0)


# ---------------------------------------------------------------- engine
def _labels(ws, **where) -> list[Label]:
    with ws.session() as s:
        q = select(Label).order_by(Label.id)
        for k, v in where.items():
            q = q.where(getattr(Label, k) == v)
        rows = list(s.scalars(q))
        s.expunge_all()
    return rows


@pytest.mark.backends
def test_accepts_confident_images_and_queues_the_rest_with_provenance(tmp_path: Path, registry_url: str | None) -> None:
    ws, _ = make_workspace(tmp_path, n_train=4, n_val=1, n_test=1, labelled=False, registry=registry_url)
    unsure = add_teacher_run(ws, UNSURE, val_miou=0.4)
    with ws.session() as s:
        r1 = pseudolabel(ws, s, RunRef.parse(unsure), device="cpu", num_workers=0)
    assert (r1.accepted, r1.queued, r1.candidates, r1.round) == (0, 4, 4, 1)
    queued = _labels(ws, origin="pseudo")
    assert {x.status for x in queued} == {"needs_review"}
    first = queued[0]
    assert (first.source, first.run_id, first.round, first.confident_fraction, first.stability) == (
        "teacher", unsure, 1, 0.0, 0.0)
    assert first.meta["pseudolabel_run_id"] == r1.run_id and first.meta["uncertainty"] == 1.0
    assert (read_mask(ws.root / first.mask_path) == IGNORE_INDEX).all()
    assert read_confidence(ws.root / first.conf_path) == pytest.approx(0.5, abs=1 / 255)

    confident = add_teacher_run(ws, CONFIDENT, val_miou=0.9)  # newer and better: the default teacher
    with ws.session() as s:
        r2 = pseudolabel(ws, s, device="cpu", num_workers=0)
    assert (r2.teacher_run_id, r2.accepted, r2.queued, r2.superseded) == (confident, 4, 0, 4)
    assert {x.status for x in _labels(ws, run_id=unsure)} == {"superseded"}
    active = _labels(ws, run_id=confident)
    assert {x.status for x in active} == {"active"}
    assert [x.meta["supersedes"] for x in active] == [x.id for x in queued]
    assert (read_mask(ws.root / active[0].mask_path) == 1).all()
    with ws.session() as s:
        run = s.get(Run, r2.run_id)
        assert (run.kind, run.status, run.teacher_run_id, run.metrics["accepted"]) == (
            "pseudolabel", "finished", confident, 4)
        assert not (ws.run_dir(run.id) / "staging").exists()


@pytest.mark.backends
def test_human_labels_and_val_test_are_never_touched(tmp_path: Path, registry_url: str | None) -> None:
    ws, made = make_workspace(tmp_path, n_train=4, n_val=2, n_test=2, labelled=False, registry=registry_url)
    with ws.session() as s:
        human = add_label(s, ws, made[0].image_id, made[0].mask).id
        old = add_label(s, ws, made[1].image_id, made[1].mask, origin="pseudo", run_id=None)
        old.status = "needs_review"
    teacher = add_teacher_run(ws, CONFIDENT)
    with ws.session() as s:
        result = pseudolabel(ws, s, device="cpu", num_workers=0)
    assert result.candidates == 3 and result.superseded == 1
    by_image = {x.image_id: x for x in _labels(ws, run_id=teacher)}
    assert set(by_image) == {m.image_id for m in made[1:4]}  # not the human-labelled one, not val/test
    assert [(x.status, x.origin) for x in _labels(ws, id=human)] == [("active", "human")]
    with ws.session() as s:
        touched = s.scalars(select(Image.split).join(Label, Label.image_id == Image.id)
                            .where(Label.origin == "pseudo").distinct()).all()
    assert touched == ["train"]
    with ws.session() as s, pytest.raises(NothingToDoError, match="every train image"):
        pseudolabel(ws, s, device="cpu", num_workers=0)  # all done by this teacher: skipped


@pytest.mark.backends
def test_shard_and_limit_select_image_ids(tmp_path: Path, registry_url: str | None) -> None:
    ws, _ = make_workspace(tmp_path, n_train=6, n_val=0, n_test=0, labelled=False, registry=registry_url)
    teacher = add_teacher_run(ws, CONFIDENT)
    with ws.session() as s:
        pseudolabel(ws, s, shard=(1, 2), device="cpu", num_workers=0)
    assert {x.image_id % 2 for x in _labels(ws, run_id=teacher)} == {1}
    with ws.session() as s:
        assert pseudolabel(ws, s, limit=2, device="cpu", num_workers=0).candidates == 2


@pytest.mark.backends
def test_missing_image_is_recorded_and_the_run_goes_on(tmp_path: Path, registry_url: str | None) -> None:
    ws, made = make_workspace(tmp_path, n_train=3, n_val=0, n_test=0, labelled=False, registry=registry_url)
    add_teacher_run(ws, CONFIDENT)
    with ws.session() as s:
        gone = s.get(Image, made[1].image_id)
        (ws.root / gone.store_path).unlink()
    with ws.session() as s:
        result = pseudolabel(ws, s, device="cpu", num_workers=0)
        problems = s.scalars(select(Problem)).all()
        assert (result.accepted, result.problems) == (2, 1)
        assert len(problems) == 1 and problems[0].run_id == result.run_id
        assert problems[0].kind == ProblemKind.MISSING_IMAGE and problems[0].path.endswith(Path(gone.store_path).name)


def _bad_files(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    marker = tmp_path / "unpickled"

    class Evil:
        def __reduce__(self):
            return (Path.touch, (marker,))

    evil = tmp_path / "evil.pt"
    evil.write_bytes(pickle.dumps(Evil()))
    good = save_constant_teacher(tmp_path / "good.pt", CONFIDENT)
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    return {
        "not a checkpoint": (evil, "not a checkpoint"),
        "corrupt": (corrupt, "not a checkpoint|not a loadable checkpoint"),
        "other classes": (save_constant_teacher(tmp_path / "cls.pt", CONFIDENT, ["person", "cat"]), "classes"),
        "other architecture": (save_constant_teacher(tmp_path / "arch.pt", CONFIDENT, arch="linknet", meta_arch="unet"),
                               "do not fit"),
        "missing": (tmp_path / "nope.pt", "neither 'best', a train run id nor a checkpoint file"),
    }


def test_bad_teacher_files_are_refused_clearly_without_unpickling(tmp_path: Path) -> None:
    ws, _ = make_workspace(tmp_path, n_train=2, n_val=0, n_test=0, labelled=False)
    for name, (path, message) in _bad_files(tmp_path).items():
        with ws.session() as s, pytest.raises(ModelError, match=message) as refused:
            pseudolabel(ws, s, RunRef.parse(path), device="cpu", num_workers=0)
        assert not (tmp_path / "unpickled").exists(), name
        assert refused.value.path == str(path), name  # the user's file, not a copy in runs/
        with ws.session() as s:
            assert s.scalars(select(Run)).all() == [], name  # refused before anything is registered
    assert _labels(ws) == []
    with ws.session() as s, pytest.raises(ModelError, match="no finished train run"):
        pseudolabel(ws, s, device="cpu", num_workers=0)


def test_teacher_file_outside_the_registry_is_imported_once(tmp_path: Path) -> None:
    ws, _ = make_workspace(tmp_path, n_train=2, n_val=0, n_test=0, labelled=False)
    path = save_constant_teacher(tmp_path / "t.pt", CONFIDENT)
    with ws.session() as s:
        first = pseudolabel(ws, s, RunRef.parse(path), device="cpu", num_workers=0)
    with ws.session() as s:
        run = s.get(Run, first.teacher_run_id)
        assert (run.kind, run.status) == ("train", "imported")
        assert (ws.root / run.checkpoint_path).is_file()
        with pytest.raises(NothingToDoError):
            pseudolabel(ws, s, RunRef.parse(path), device="cpu", num_workers=0)


_KILLER = textwrap.dedent(
    """
    import os, signal, sys
    from dataeng.config import PseudolabelConfig
    from dataeng.engine.learn.pseudolabel import pseudolabel
    from dataeng.workspace import Workspace

    ws = Workspace.open(sys.argv[1])

    class KillAt:
        seen = 0
        def task(self, description, total):
            pass
        def advance(self, n=1, **fields):
            self.seen += n
            if self.seen >= int(sys.argv[2]):
                os.kill(os.getpid(), signal.SIGKILL)

    with ws.session() as s:
        pseudolabel(ws, s, config=PseudolabelConfig(batch_size=2), device="cpu", num_workers=0,
                    commit_every=4, progress=KillAt())
    """
)


# SQLite only: tests/test_concurrency_pg.py kills a torchrun rank on PostgreSQL.
def test_kill_9_then_rerun_resumes_without_redoing_or_duplicating(tmp_path: Path, registry_url: str | None) -> None:
    ws, _ = make_workspace(tmp_path, n_train=16, n_val=0, n_test=0, labelled=False, registry=registry_url)
    teacher = add_teacher_run(ws, CONFIDENT)
    proc = subprocess.run([sys.executable, "-c", _KILLER, str(ws.root), "12"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == -9, proc.stderr
    partial = len(_labels(ws, run_id=teacher))
    assert 0 < partial < 16
    with ws.session() as s:
        result = pseudolabel(ws, s, device="cpu", num_workers=0)
    assert result.candidates == 16 - partial  # nothing finished is redone
    with ws.session() as s:
        n, distinct = s.execute(select(func.count(), func.count(func.distinct(Label.image_id)))
                                .where(Label.run_id == teacher)).one()
    assert n == distinct == 16
    for label in _labels(ws, run_id=teacher):
        assert (ws.root / label.mask_path).is_file() and (ws.root / label.conf_path).is_file()


# ---------------------------------------------------------------- CLI
def test_cli_pseudolabel_json_and_thresholds(tmp_path: Path) -> None:
    ws, _ = make_workspace(tmp_path, n_train=3, n_val=0, n_test=0, labelled=False)
    teacher = add_teacher_run(ws, 1.0)  # sigmoid(1) = 0.73 everywhere
    runner = CliRunner()
    args = ["pseudolabel", "-w", str(ws.root), "--device", "cpu", "--num-workers", "0", "--tta", "none"]
    result = runner.invoke(app, [*args, "--pixel-threshold", "0.7", "--accept-mean-confidence", "0.7", "--json"])
    assert result.exit_code == 0, result.output
    assert '"accepted": 3' in result.stdout
    assert {(x.status, x.confident_fraction) for x in _labels(ws, run_id=teacher)} == {("active", 1.0)}
    again = runner.invoke(app, args)
    assert again.exit_code == 0 and "nothing to pseudo-label" in again.output
    bad = runner.invoke(app, [*args, "--shard", "2/2"])
    assert bad.exit_code == 1 and "shard" in bad.output
    bad = runner.invoke(app, [*args, "--pixel-threshold", "1.5"])
    assert bad.exit_code == 1 and "pixel_threshold" in bad.output


def test_config_defaults_are_the_documented_ones() -> None:
    c = PseudolabelConfig()
    assert (c.pixel_threshold, c.tta, c.stability_delta) == (0.95, "flip", 0.1)
    assert (c.accept.min_confident_fraction, c.accept.min_mean_confidence, c.accept.min_stability) == (0.7, 0.85, 0.8)
