"""`dataeng train` / `dataeng evaluate` through typer's CliRunner."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image as PILImage
from sqlalchemy import select
from typer.testing import CliRunner

from dataeng.cli import app
from dataeng.db.schema import ImageMetric, Run
from tests.factories import add_label, make_workspace

runner = CliRunner()
TINY_ARGS = ["--encoder", "tu-mobilenetv3_small_050", "--encoder-depth", "3", "--image-size", "64", "64",
             "--batch-size", "4", "--num-workers", "0", "--device", "cpu"]


def test_help_mentions_options():
    out = runner.invoke(app, ["train", "--help"])
    assert out.exit_code == 0 and "--encoder-weights" in out.output and "--resume" in out.output
    out = runner.invoke(app, ["evaluate", "--help"])
    assert out.exit_code == 0 and "--images" in out.output and "--split" in out.output


def test_train_then_evaluate(tmp_path):
    ws, _ = make_workspace(tmp_path, n_train=4, n_val=2, n_test=2)
    out = runner.invoke(app, ["train", "-w", str(ws.root), "--epochs", "1", *TINY_ARGS, "--json"])
    assert out.exit_code == 0, out.output
    data = json.loads(out.stdout)
    assert data["best_epoch"] == 1 and data["test"]["images"] == 2 and data["device"] == "cpu"
    with ws.session() as session:
        run = session.get(Run, data["run_id"])
        assert run.status == "finished" and run.config["image_size"] == [64, 64]
    out = runner.invoke(app, ["train", "-w", str(ws.root), "--epochs", "1", *TINY_ARGS])
    assert out.exit_code == 0, out.output
    assert "best epoch 1/1" in out.output and "boundary_iou" in out.output and "test" in out.output

    ext = tmp_path / "ext"
    (ext / "images").mkdir(parents=True)
    (ext / "masks").mkdir()
    for stem in ("a", "b"):
        PILImage.fromarray(np.full((40, 40, 3), 100, np.uint8)).save(ext / "images" / f"{stem}.jpg")
    PILImage.fromarray(np.zeros((40, 40), np.uint8)).save(ext / "masks" / "a.png")
    out = runner.invoke(app, ["evaluate", "-w", str(ws.root), "--images", str(ext / "images"),
                              "--masks", str(ext / "masks"), "--device", "cpu"])
    assert out.exit_code == 0, out.output
    assert "missing mask" in out.output and "b.jpg" in out.output and "1 missing masks" in out.output
    out = runner.invoke(app, ["evaluate", str(data["run_id"]), "-w", str(ws.root), "--split", "val",
                              "--device", "cpu", "--json"])
    assert out.exit_code == 0, out.output
    ev = json.loads(out.stdout)
    assert ev["split"] == "val" and ev["metrics"]["images"] == 2 and ev["model_run_id"] == data["run_id"]
    with ws.session() as session:
        assert len(session.scalars(select(ImageMetric).where(ImageMetric.run_id == ev["run_id"])).all()) == 2


def test_train_errors_are_one_line(tmp_path):
    ws, _ = make_workspace(tmp_path, n_train=2, n_val=0, n_test=0, labelled=False, size=32)
    out = runner.invoke(app, ["train", "-w", str(ws.root), *TINY_ARGS])
    assert out.exit_code == 1 and "no labelled train images" in out.output
    out = runner.invoke(app, ["train", "-w", str(ws.root), "--arch", "unnet"])
    assert out.exit_code == 1 and "unknown architecture" in out.output and "deeplabv3plus" in out.output
    out = runner.invoke(app, ["train", "-w", str(ws.root), "--image-size", "100", "100"])
    assert out.exit_code == 1 and "multiples of 32" in out.output


def test_train_semi_option_reaches_the_run(tmp_path):
    ws, made = make_workspace(tmp_path, n_train=6, n_val=1, n_test=1, labelled=False)
    with ws.session() as session:
        for m in made[:2] + made[6:]:
            add_label(session, ws, m.image_id, m.mask)
    out = runner.invoke(app, ["train", "-w", str(ws.root), "--epochs", "1", *TINY_ARGS, "--semi", "fixmatch",
                              "--json"])
    assert out.exit_code == 0, out.output
    data = json.loads(out.stdout)
    with ws.session() as session:
        run = session.get(Run, data["run_id"])
        assert run.config["semi"] == "fixmatch" and run.metrics["unlabelled_images"] == 4
        assert run.metrics["history"][0]["confident_share"] is not None
