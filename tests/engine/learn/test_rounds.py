"""Teacher-student rounds: round 0, promotion only on improvement, round rows, the CLI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from dataeng.annotation.masks import read_mask
from dataeng.cli import app
from dataeng.config import AcceptConfig, Config, PseudolabelConfig, TrainConfig
from dataeng.db.schema import Label, Round, Run
from dataeng.engine.learn import rounds as rounds_mod
from dataeng.engine.learn.rounds import run_rounds
from dataeng.engine.learn.runs import beaten_teachers, best_run, rejected_students
from tests.factories import TINY_TRAIN, add_label, make_workspace

TINY_CONFIG = Config(train=TrainConfig(encoder="tu-mobilenetv3_small_050", image_size=(64, 64), batch_size=4,
                                       num_workers=0, device="cpu", warmup_epochs=0.0, lr=3e-3, epochs=1))


def _half_labelled(tmp_path: Path, config: Config | None = None, registry: str | None = None):
    ws, made = make_workspace(tmp_path, n_train=8, n_val=2, n_test=1, labelled=False, config=config,
                              registry=registry)
    with ws.session() as s:
        for m in made:
            if m.split != "train" or m.image_id % 2:  # val/test and half of train
                add_label(s, ws, m.image_id, m.mask)
    return ws


def test_round_zero_then_promotion_only_on_improvement(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Every pseudo-label is accepted, so each new teacher changes the students' train set.
    ws = _half_labelled(tmp_path, Config(pseudolabel=PseudolabelConfig(accept=AcceptConfig(
        min_confident_fraction=0, min_mean_confidence=0, min_stability=0))))
    scores: dict[int, float] = {}
    # Evaluation is forced so that the comparison is known: student 1 beats, student 2 does not.
    monkeypatch.setattr(rounds_mod, "val_miou", lambda ws_, s, run_id, device=None: scores[run_id])
    overrides = {**TINY_TRAIN, "epochs": 1}

    def scripted(run_id_scores: list[float]):
        it = iter(run_id_scores)

        def fake_pseudolabel(*args, **kwargs):
            from dataeng.engine.learn.pseudolabel import pseudolabel

            result = pseudolabel(*args, **kwargs)
            nxt = next(it)
            scores.setdefault(result.teacher_run_id, nxt[0])
            scores[result.run_id + 1] = nxt[1]  # the student's run id is the next one
            return result

        return fake_pseudolabel

    monkeypatch.setattr(rounds_mod, "pseudolabel", scripted([(0.5, 0.7), (0.7, 0.6)]))
    with ws.session() as s:
        results = run_rounds(ws, s, rounds=2, overrides=overrides)
    r0, r1, r2 = results
    assert (r0.number, r0.teacher_run_id, r0.promoted) == (0, None, True)
    assert (r1.number, r1.teacher_run_id, r1.promoted) == (1, r0.student_run_id, True)
    assert (r1.teacher_val_miou, r1.student_val_miou) == (0.5, 0.7)
    assert (r2.number, r2.teacher_run_id, r2.promoted) == (2, r1.student_run_id, False)
    assert r2.teacher_after == r1.student_run_id
    assert r1.accepted + r1.queued == 4  # the unlabelled train images
    assert r2.superseded == r1.accepted + r1.queued  # the new teacher relabelled them all

    with ws.session() as s:
        rows = s.scalars(select(Round).order_by(Round.id)).all()
        assert [(r.number, r.status, r.promoted) for r in rows] == [(0, "finished", True), (1, "finished", True),
                                                                    (2, "finished", False)]
        assert rows[1].metrics["student_val_miou"] == 0.7
        student2 = s.get(Run, r2.student_run_id)
        assert (student2.round, student2.teacher_run_id, student2.config["strong_augment"]) == (
            2, r1.student_run_id, True)
        # The refused student never becomes the default teacher, whatever its stored val score.
        best = best_run(s)
        assert best is not None and best.id != r2.student_run_id
        labels = s.scalars(select(Label).where(Label.origin == "pseudo", Label.status != "superseded")).all()
        assert {(x.run_id, x.round) for x in labels} == {(r1.student_run_id, 2)}
        trained = s.query(Run).filter(Run.kind == "train").count()

    # Round 3: same teacher, nothing new to label -> the same labels as student 2: not trained again.
    with ws.session() as s:
        (r3,) = run_rounds(ws, s, rounds=1, overrides=overrides)
    assert (r3.number, r3.teacher_run_id, r3.student_run_id, r3.promoted) == (
        3, r1.student_run_id, r2.student_run_id, False)
    with ws.session() as s:
        assert s.query(Run).filter(Run.kind == "train").count() == trained
        row = s.scalars(select(Round).where(Round.number == 3)).one()
        assert row.metrics["reused_student"] == r2.student_run_id and row.status == "finished"
    # A new human label (an annotator's correction) changes the train set: the next round trains again.
    with ws.session() as s:
        pseudo = s.scalars(select(Label).where(Label.origin == "pseudo", Label.status == "active")).first()
        assert pseudo is not None
        pseudo.status = "superseded"
        s.flush()
        add_label(s, ws, pseudo.image_id, (read_mask(ws.root / pseudo.mask_path) == 1).astype(np.uint8))
    scores[r2.student_run_id + 1] = 0.1  # the next run: rounds 3 and 4 had nothing to pseudo-label
    with ws.session() as s:
        (r4,) = run_rounds(ws, s, rounds=1, overrides=overrides)
    assert r4.student_run_id not in (r2.student_run_id, r1.student_run_id) and not r4.promoted


@pytest.mark.backends  # the one round run on PostgreSQL too: two tiny trainings each
def test_cli_round_trains_round_zero_and_a_student(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   registry_url: str | None) -> None:
    ws = _half_labelled(tmp_path, TINY_CONFIG, registry_url)
    monkeypatch.setattr(rounds_mod, "val_miou", lambda ws_, s, run_id, device=None: 0.5)  # a tie: no promotion
    result = CliRunner().invoke(app, ["round", "-w", str(ws.root), "--rounds", "1", "--epochs", "1", "--json"])
    assert result.exit_code == 0, result.output
    assert '"round": 0' in result.stdout and '"round": 1' in result.stdout
    assert '"promoted": false' in result.stdout
    with ws.session() as s:
        assert [r.promoted for r in s.scalars(select(Round).order_by(Round.id))] == [True, False]
    table = CliRunner().invoke(app, ["round", "-w", str(ws.root), "--rounds", "0"])
    assert table.exit_code == 0 and "rounds" in table.output


@pytest.mark.backends
def test_a_promoted_student_reused_by_a_later_round_stays_the_teacher(tmp_path: Path, registry_url: str | None
                                                                      ) -> None:
    from tests.engine.learn.pseudolabel_helpers import add_teacher_run

    ws, _ = make_workspace(tmp_path, n_train=2, n_val=1, n_test=1, labelled=False, registry=registry_url)
    supervised = add_teacher_run(ws, 2.0, val_miou=0.60)
    student = add_teacher_run(ws, 2.0, val_miou=0.55, round=1)  # its stored val is lower: promotion decides
    refused = add_teacher_run(ws, 2.0, val_miou=0.90, round=2)
    with ws.session() as s:
        s.add_all([Round(number=0, student_run_id=supervised, promoted=True, status="finished"),
                   Round(number=1, teacher_run_id=supervised, student_run_id=student, promoted=True,
                         status="finished"),
                   # Round 2 had nothing new to learn from: it reused the student, promoting nothing.
                   Round(number=2, teacher_run_id=student, student_run_id=student, promoted=False,
                         status="finished", metrics={"reused_student": student}),
                   Round(number=3, teacher_run_id=student, student_run_id=refused, promoted=False,
                         status="finished")])
    with ws.session() as s:
        assert (rejected_students(s), beaten_teachers(s)) == ({refused}, {supervised})
        best = best_run(s)
        # Not the refused student (best stored val), nor the supervised run its student beat on one val set.
        assert best is not None and best.id == student


def test_a_warm_started_student_begins_from_its_teachers_weights(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from dataeng.engine.learn import loop
    from dataeng.models.checkpoint import load_checkpoint

    ws = _half_labelled(tmp_path, Config(pseudolabel=PseudolabelConfig(accept=AcceptConfig(
        min_confident_fraction=0, min_mean_confidence=0, min_stability=0))))
    monkeypatch.setattr(rounds_mod, "val_miou", lambda ws_, s, run_id, device=None: 0.5)
    seen: list[dict[str, torch.Tensor]] = []
    real_fit = loop.fit

    def fit_spy(training, *args, **kwargs):  # the weights a run starts from, before its first step
        seen.append({k: v.detach().clone() for k, v in training.module.state_dict().items()})
        return real_fit(training, *args, **kwargs)

    monkeypatch.setattr(loop, "fit", fit_spy)
    overrides = {**TINY_TRAIN, "epochs": 1, "warm_start": True}
    with ws.session() as s:
        r0, r1 = run_rounds(ws, s, rounds=1, overrides=overrides)
    with ws.session() as s:
        teacher, student = s.get(Run, r0.student_run_id), s.get(Run, r1.student_run_id)
        assert student.config["init_run"] == teacher.id and teacher.config["init_run"] is None
    taught = load_checkpoint(ws.root / teacher.checkpoint_path).model
    assert all(torch.equal(seen[1][k], taught[k]) for k in taught)  # the student began as the teacher
    assert not all(torch.equal(seen[0][k], taught[k]) for k in taught)  # the teacher began fresh
    assert "from the weights of run" in (ws.run_dir(student.id) / "log").read_text()

    # Off (the default), or a teacher of another model: fresh weights, and the round says why.
    with ws.session() as s:
        assert rounds_mod.warm_start(ws, s, teacher.id, {**TINY_TRAIN}).run_id is None
        other = rounds_mod.warm_start(ws, s, teacher.id, {**overrides, "encoder_depth": 4})
        assert other.run_id is None and "encoder_depth 3 vs 4" in (other.note or "")


def test_train_init_refuses_a_run_of_another_model(tmp_path: Path) -> None:
    from dataeng.engine.learn.train import train
    from dataeng.errors import ModelError

    ws = _half_labelled(tmp_path)
    with ws.session() as s:
        first = train(ws, s, {**TINY_TRAIN, "epochs": 1})
    with ws.session() as s, pytest.raises(ModelError, match="encoder_depth=3, this run needs 4"):
        train(ws, s, {**TINY_TRAIN, "epochs": 1, "encoder_depth": 4, "init_run": first.run_id})
    with ws.session() as s, pytest.raises(ModelError, match="no finished train run"):
        train(ws, s, {**TINY_TRAIN, "epochs": 1, "init_run": first.run_id + 100})
    with ws.session() as s:
        assert s.query(Run).filter(Run.kind == "train").count() == 1  # a refused start registers nothing
