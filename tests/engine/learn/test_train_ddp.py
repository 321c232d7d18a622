"""`torchrun --nproc_per_node 2 -m dataeng train` on CPU (gloo): one run, rank 0 writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import select

from dataeng.db.schema import Run
from tests.factories import make_workspace


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_torchrun_two_processes(tmp_path):
    ws, _ = make_workspace(tmp_path, n_train=8, n_val=2, n_test=2)  # 2 steps per rank and epoch
    torchrun = Path(sys.executable).with_name("torchrun")
    cmd = [str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "dataeng", "train", "-w", str(ws.root),
           "--epochs", "2", "--encoder", "tu-mobilenetv3_small_050", "--encoder-depth", "3", "--image-size", "64",
           "64", "--batch-size", "2", "--num-workers", "0", "--device", "cpu", "--json"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[3])}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=280, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout)  # only rank 0 prints
    with ws.session() as session:
        runs = session.scalars(select(Run)).all()
    assert len(runs) == 1 and runs[0].id == out["run_id"] and runs[0].status == "finished"
    assert runs[0].config["world_size"] == 2 and runs[0].metrics["world_size"] == 2
    assert out["test"]["images"] == 2
    assert (ws.run_dir(out["run_id"]) / "checkpoint.pt").is_file()


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_torchrun_semi_supervised(tmp_path):
    """UniMatch's two forward passes per step and its feature-perturbed wrapper train under DDP."""
    from tests.factories import add_label

    ws, made = make_workspace(tmp_path, n_train=8, n_val=1, n_test=1, labelled=False)
    with ws.session() as session:
        for m in [*made[:4], *made[8:]]:
            add_label(session, ws, m.image_id, m.mask)
    torchrun = Path(sys.executable).with_name("torchrun")
    cmd = [str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "dataeng", "train", "-w", str(ws.root),
           "--epochs", "2", "--encoder", "tu-mobilenetv3_small_050", "--encoder-depth", "3", "--image-size", "64",
           "64", "--batch-size", "2", "--num-workers", "0", "--device", "cpu", "--semi", "unimatch", "--json"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[3])}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=280, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout)
    with ws.session() as session:
        run = session.get(Run, out["run_id"])
        assert run.status == "finished" and run.config["semi"] == "unimatch" and run.config["world_size"] == 2
        assert run.metrics["unlabelled_images"] == 4
        assert all(h["unlabelled_loss"] is not None for h in run.metrics["history"])
