"""``dataeng predict`` and ``dataeng export model`` through typer's CliRunner."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from dataeng.cli import app
from dataeng.config import Config
from dataeng.db.schema import Run
from dataeng.engine.serve.predict import MASK_FOREGROUND
from dataeng.models.checkpoint import save_checkpoint
from dataeng.models.factory import build_model
from dataeng.workspace import Workspace

runner = CliRunner()
META = {"arch": "unet", "encoder": "tu-mobilenetv3_small_050", "encoder_depth": 3, "classes": ["person"],
        "image_size": [64, 64], "epoch": 1}


def _register_run(ws: Workspace, miou: float, seed: int) -> int:
    torch.manual_seed(seed)
    model = build_model("unet", META["encoder"], 1, encoder_depth=3)
    with ws.session() as session:
        run = Run(kind="train", status="finished", metrics={"val": {"miou": miou}})
        session.add(run)
        session.flush()
        path = ws.run_dir(run.id) / "checkpoint.pt"
        save_checkpoint(path, model, META)
        run.checkpoint_path = str(path.relative_to(ws.root))
        return run.id


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A workspace with two tiny runs (the second best on val), some photos, and its ONNX export."""
    root = tmp_path_factory.mktemp("cli")
    ws = Workspace.init(root / "ws")
    _register_run(ws, 0.3, 0)
    best = _register_run(ws, 0.8, 1)
    photos = root / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    for name, (w, h) in {"a.jpg": (80, 60), "b.png": (50, 100)}.items():
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(photos / name)
    (photos / "readme.txt").write_text("hi")
    result = runner.invoke(app, ["export", "model", "best", "--onnx", str(root / "m.onnx"), "--dynamic",
                                 "-w", str(ws.root)])
    assert result.exit_code == 0, result.output
    return ws, photos, root, best, result.output


def _png(path):
    with Image.open(path) as im:
        return np.asarray(im)


def test_help_of_both_commands():
    for args in (["predict", "--help"], ["export", "model", "--help"]):
        result = runner.invoke(app, args)
        assert result.exit_code == 0 and "--onnx" in result.output


def test_export_reports_parity_and_writes_metadata(setup):
    ws, _, root, best, output = setup
    assert f"run {best} ->" in output and "parity with PyTorch" in output
    import onnx

    props = {p.key: p.value for p in onnx.load(str(root / "m.onnx")).metadata_props}
    assert json.loads(props["classes"]) == ["person"] and json.loads(props["image_size"]) == [64, 64]
    again = runner.invoke(app, ["export", "model", "best", "--onnx", str(root / "m.onnx"), "-w", str(ws.root)])
    assert again.exit_code == 1 and "exists (use --overwrite)" in again.output


def test_export_int8_reports_iou_loss(setup, tmp_path):
    ws, _, _, _, _ = setup
    result = runner.invoke(app, ["export", "model", "1", "--onnx", str(tmp_path / "q.onnx"), "--int8", "--json",
                                 "-w", str(ws.root)])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["precision"] == "int8" and 0 <= summary["int8"]["iou_loss"] <= 1
    assert summary["int8"]["int8_bytes"] < summary["int8"]["fp32_bytes"]
    assert [p.name for p in tmp_path.iterdir()] == ["q.onnx"]  # the fp32 intermediate is gone


def test_predict_torch_and_onnx_give_the_same_masks(setup, tmp_path, monkeypatch):
    ws, photos, root, _, _ = setup
    result = runner.invoke(app, ["predict", str(photos), "--out", str(tmp_path / "torch"), "--run", "best",
                                 "-w", str(ws.root)])
    assert result.exit_code == 0, result.output
    assert "wrote 2 mask" in result.output and "readme.txt" in result.output
    # --onnx needs no workspace: run from an empty folder with no $DATAENG_WORKSPACE.
    monkeypatch.delenv("DATAENG_WORKSPACE", raising=False)
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["predict", str(photos / "a.jpg"), str(photos / "b.png"), "--out",
                                 str(tmp_path / "onnx"), "--onnx", str(root / "m.onnx"), "--tta"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["predict", str(photos), "--out", str(tmp_path / "onnx_plain"), "--onnx",
                                 str(root / "m.onnx")])
    assert result.exit_code == 0, result.output
    for name in ("a.png", "b.png"):
        t, o = _png(tmp_path / "torch" / name), _png(tmp_path / "onnx_plain" / name)
        assert set(np.unique(t)) <= {0, MASK_FOREGROUND}
        assert (t == o).mean() > 0.999
        assert _png(tmp_path / "onnx" / name).shape == t.shape


def test_predict_outputs_via_cli(setup, tmp_path):
    ws, photos, _, _, _ = setup
    result = runner.invoke(app, ["predict", str(photos), "--out", str(tmp_path), "--as", "overlay",
                                 "--background", "blue", "--refine", "--json", "-w", str(ws.root)])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["written"] == 2 and [p["path"].endswith("readme.txt") for p in summary["problems"]] == [True]
    assert _png(tmp_path / "b.png").shape == (100, 50, 3)


def test_existing_output_is_kept(setup, tmp_path):
    ws, photos, _, _, _ = setup
    (tmp_path / "a.png").write_bytes(b"mine")
    result = runner.invoke(app, ["predict", str(photos), "--out", str(tmp_path), "-w", str(ws.root)])
    assert result.exit_code == 0 and "skipped 1 existing" in result.output
    assert (tmp_path / "a.png").read_bytes() == b"mine"


def test_onnx_of_other_classes_is_refused(setup, tmp_path):
    _, photos, root, _, _ = setup
    other = Workspace.init(tmp_path / "cats", Config(classes=["cat"]))
    result = runner.invoke(app, ["predict", str(photos), "--out", str(tmp_path / "o"), "--onnx",
                                 str(root / "m.onnx"), "-w", str(other.root)])
    assert result.exit_code == 1 and "expected ['cat']" in result.output
    (tmp_path / "fake.onnx").write_text("nope")
    result = runner.invoke(app, ["predict", str(photos), "--out", str(tmp_path / "o"), "--onnx",
                                 str(tmp_path / "fake.onnx"), "-w", str(other.root)])
    assert result.exit_code == 1 and "not a loadable ONNX model" in result.output


def test_unwritable_output_and_missing_workspace(setup, tmp_path, monkeypatch):
    ws, photos, _, _, _ = setup
    (tmp_path / "f").write_text("x")
    result = runner.invoke(app, ["predict", str(photos), "--out", str(tmp_path / "f" / "o"), "-w", str(ws.root)])
    assert result.exit_code == 1 and "not writable" in result.output
    monkeypatch.delenv("DATAENG_WORKSPACE", raising=False)
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["predict", str(photos), "--out", str(tmp_path / "o")])
    assert result.exit_code == 1 and "no dataeng workspace" in result.output and "--onnx FILE" in result.output
