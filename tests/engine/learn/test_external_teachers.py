"""External teachers in the engine: registered as runs, pseudo-labelling, evaluation, a zero-label start."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from dataeng.cli import app
from dataeng.config import AcceptConfig, Config, PseudolabelConfig
from dataeng.db.schema import Label, Problem, Round, Run
from dataeng.engine.learn.evaluate import evaluate
from dataeng.engine.learn.pseudolabel import pseudolabel
from dataeng.engine.learn.rounds import run_rounds
from dataeng.engine.learn.runs import RunRef, best_run
from dataeng.engine.learn.teacher import resolve_teacher
from dataeng.errors import ModelError
from dataeng.models.teachers import MEDIAPIPE_INSTALL
from tests.factories import TINY_TRAIN, make_workspace
from tests.onnx_models import CONTRACT, brightness_model

ACCEPT_ALL = Config(pseudolabel=PseudolabelConfig(accept=AcceptConfig(min_confident_fraction=0,
                                                                      min_mean_confidence=0, min_stability=0)))


def _runs(ws, kind: str) -> list[Run]:
    with ws.session() as s:
        return list(s.scalars(select(Run).where(Run.kind == kind).order_by(Run.id)))


def test_an_onnx_teacher_is_registered_once_and_names_every_pseudo_label(tmp_path: Path) -> None:
    ws, _ = make_workspace(tmp_path, n_train=4, n_val=1, n_test=1, labelled=False)
    model = brightness_model(tmp_path / "models" / "bright.onnx", sidecar=CONTRACT)
    with ws.session() as s:
        result = pseudolabel(ws, s, RunRef.parse(f"onnx:{model}"), device="cpu", num_workers=0)
    [teacher] = _runs(ws, "teacher")
    assert result.teacher_run_id == teacher.id and result.labelled == 4
    config = teacher.config
    assert (config["teacher"], config["name"], config["version"]) == ("onnx", "bright.onnx", "sidecar")
    assert len(config["sha256"]) == 64 and config["contract"]["layout"] == "NCHW"
    stored = ws.root / config["stored_file"]
    assert stored.read_bytes() == model.read_bytes() and stored.with_name(stored.name + ".json").is_file()
    with ws.session() as s:
        labels = s.scalars(select(Label)).all()
        assert {label.run_id for label in labels} == {teacher.id} and {label.origin for label in labels} == {"pseudo"}
    model.unlink()  # the registered copy keeps the run usable
    with ws.session() as s:
        assert resolve_teacher(ws, s, RunRef("id", run_id=teacher.id)).external is not None
    # The same file again: the same run, nothing new to label.
    brightness_model(model, sidecar=CONTRACT)
    with ws.session() as s, pytest.raises(Exception, match="nothing to pseudo-label"):
        pseudolabel(ws, s, RunRef.parse(str(model)), device="cpu", num_workers=0)
    assert len(_runs(ws, "teacher")) == 1


def test_a_refused_onnx_file_registers_nothing(tmp_path: Path) -> None:
    ws, _ = make_workspace(tmp_path, n_train=2, n_val=0, n_test=0, labelled=False)
    flat = brightness_model(tmp_path / "flat.onnx", bad_rank=True, sidecar=CONTRACT)
    with ws.session() as s, pytest.raises(ModelError, match="not a segmentation model"):
        pseudolabel(ws, s, RunRef.parse(f"onnx:{flat}"), device="cpu", num_workers=0)
    assert _runs(ws, "teacher") == []
    with ws.session() as s:
        assert s.scalars(select(Label)).all() == []


def test_a_teacher_returning_nan_records_each_image_and_the_run_goes_on(tmp_path: Path) -> None:
    ws, _ = make_workspace(tmp_path, n_train=3, n_val=0, n_test=0, labelled=False)
    broken = brightness_model(tmp_path / "nan.onnx", nan=True, sidecar=CONTRACT)
    with ws.session() as s:
        result = pseudolabel(ws, s, RunRef.parse(str(broken)), device="cpu", num_workers=0)
    assert (result.problems, result.labelled) == (3, 0)
    with ws.session() as s:
        problems = s.scalars(select(Problem)).all()
        assert {p.kind for p in problems} == {"invalid-prediction"} and len(problems) == 3
        assert all("NaN" in p.message for p in problems)
        assert s.get(Run, result.run_id).status == "finished"


def test_evaluate_scores_an_external_teacher_and_keeps_it_on_its_run(tmp_path: Path) -> None:
    ws, _ = make_workspace(tmp_path, n_train=1, n_val=2, n_test=2)
    model = brightness_model(tmp_path / "bright.onnx", sidecar=CONTRACT)
    with ws.session() as s:
        test = evaluate(ws, s, RunRef.parse(str(model)), split="test", device="cpu")
    [teacher] = _runs(ws, "teacher")
    assert test.model_run_id == teacher.id and 0.0 <= test.metrics["iou"] <= 1.0
    with ws.session() as s:
        val = evaluate(ws, s, RunRef("id", run_id=teacher.id), split="val", device="cpu")
        row = s.get(Run, teacher.id)
        assert row.metrics["test"]["iou"] == pytest.approx(test.metrics["iou"])
        assert row.metrics["val"]["miou"] == pytest.approx(val.metrics["miou"])
        assert best_run(s) is None  # predict/export keep to trained runs
        assert best_run(s, external=True).id == teacher.id  # the default teacher
        from dataeng.engine.report.build import build_report

        [row] = [r for r in build_report(ws, s, gallery=False).runs if r.kind == "teacher"]
        assert row.id == teacher.id and row.test_iou == pytest.approx(test.metrics["iou"])
        assert row.val_miou == pytest.approx(val.metrics["miou"])  # side by side with trained runs


def test_a_zero_label_start_trains_a_student_and_keeps_the_teacher_without_val(tmp_path: Path) -> None:
    ws, _ = make_workspace(tmp_path, n_train=6, n_val=2, n_test=1, labelled=False, config=ACCEPT_ALL)
    model = brightness_model(tmp_path / "bright.onnx", sidecar=CONTRACT)
    with ws.session() as s:
        [result] = run_rounds(ws, s, 1, {**TINY_TRAIN, "epochs": 1}, teacher=RunRef.parse(str(model)))
    [teacher] = _runs(ws, "teacher")
    [student] = _runs(ws, "train")
    assert result.teacher_run_id == teacher.id and result.student_run_id == student.id
    assert result.accepted == 6 and result.promoted is False  # no val label: no evidence, no promotion
    assert student.teacher_run_id == teacher.id and student.status == "finished"
    with ws.session() as s:
        assert s.scalars(select(Round)).one().promoted is False
        # The best model so far is the external teacher: it pre-fills the review queue.
        assert best_run(s, external=True).id == teacher.id
    from tests.engine.review.test_review import run_export

    done = run_export(ws, tmp_path / "eval", queue="eval", limit=5, device="cpu")
    assert done.teacher_run_id == teacher.id and done.prefill == {"teacher": 3}


def test_cli_pseudolabel_without_mediapipe_says_how_to_install(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    ws, _ = make_workspace(tmp_path, n_train=2, n_val=0, n_test=0, labelled=False)
    monkeypatch.setitem(sys.modules, "mediapipe", None)
    result = CliRunner().invoke(app, ["pseudolabel", "--teacher", "mediapipe", "-w", str(ws.root)])
    assert result.exit_code == 1
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and MEDIAPIPE_INSTALL in lines[0]
    assert _runs(ws, "teacher") == []


def test_cli_pseudolabel_with_mediapipe_on_real_portraits(tmp_path: Path, shared_fixtures: Path) -> None:
    pytest.importorskip("mediapipe", reason="the dataeng[mediapipe] extra")
    runner = CliRunner()
    ws = tmp_path / "ws"
    assert runner.invoke(app, ["init", str(ws)]).exit_code == 0
    folder = shared_fixtures / "portrait" / "picsart_sample"
    assert runner.invoke(app, ["ingest", str(folder / "unlabeled"), "-w", str(ws)]).exit_code == 0
    result = runner.invoke(app, ["pseudolabel", "--teacher", "mediapipe", "--json", "-w", str(ws)])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["accepted"] + data["queued"] > 0 and data["problems"] == 0
    from dataeng.workspace import Workspace

    with Workspace.open(ws).session() as s:
        teacher = s.get(Run, data["teacher_run_id"])
        assert teacher.kind == "teacher" and teacher.config["teacher"] == "mediapipe"
        masks = [np.asarray(__import__("PIL.Image", fromlist=["Image"]).open(ws / label.mask_path))
                 for label in s.scalars(select(Label))]
        # Real head-and-shoulders photos: every mask has a person, none is all person.
        assert all(0.05 < (m == 1).mean() < 0.95 for m in masks)


def test_cli_round_from_an_onnx_teacher_without_val_labels_says_nothing_can_be_promoted(tmp_path: Path) -> None:
    from dataeng.cli.round import NO_VAL_NOTE
    from dataeng.config import TrainConfig

    config = Config(train=TrainConfig(encoder="tu-mobilenetv3_small_050", encoder_depth=3, image_size=(64, 64),
                                      batch_size=4, num_workers=0, device="cpu", warmup_epochs=0.0, epochs=1),
                    pseudolabel=ACCEPT_ALL.pseudolabel)
    ws, _ = make_workspace(tmp_path, n_train=4, n_val=1, n_test=1, labelled=False, config=config)
    model = brightness_model(tmp_path / "bright.onnx", sidecar=CONTRACT)
    result = CliRunner().invoke(app, ["round", "--teacher", str(model), "-w", str(ws.root)])
    assert result.exit_code == 0, result.output
    assert " ".join(NO_VAL_NOTE.split()[:8]) in " ".join(result.stdout.split())
    # Next time the registered teacher is the default: no round 0 (which would need human labels).
    result = CliRunner().invoke(app, ["round", "--json", "-w", str(ws.root)])
    assert result.exit_code == 0, result.output
    [row] = json.loads(result.stdout)
    assert row["round"] == 2 and row["teacher_run_id"] == _runs(ws, "teacher")[0].id


def test_the_evaluate_command_takes_an_external_teacher_by_name(tmp_path: Path) -> None:
    ws, _ = make_workspace(tmp_path, n_train=1, n_val=1, n_test=2)
    model = brightness_model(tmp_path / "bright.onnx", sidecar=CONTRACT)
    out = CliRunner().invoke(app, ["evaluate", f"onnx:{model}", "--split", "test", "-w", str(ws.root), "--json"])
    assert out.exit_code == 0, out.output
    data = json.loads(out.stdout)
    [teacher] = _runs(ws, "teacher")
    assert data["model_run_id"] == teacher.id and data["metrics"]["images"] == 2
    with ws.session() as s:
        assert s.get(Run, teacher.id).metrics["test"]["iou"] == pytest.approx(data["metrics"]["iou"])
    # By its run id afterwards, like a trained run; an unknown name is one error line.
    again = CliRunner().invoke(app, ["evaluate", str(teacher.id), "--split", "test", "-w", str(ws.root), "--json"])
    assert again.exit_code == 0 and json.loads(again.stdout)["model_run_id"] == teacher.id
    bad = CliRunner().invoke(app, ["evaluate", "no-such-model.pt", "-w", str(ws.root)])
    assert bad.exit_code == 1 and "no-such-model.pt" in bad.output
