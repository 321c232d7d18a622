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
    ws, _ = make_workspace(tmp_path, n_train=6, n_val=2, n_test=2)
    torchrun = Path(sys.executable).with_name("torchrun")
    cmd = [str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "dataeng", "train", "-w", str(ws.root),
           "--epochs", "1", "--encoder", "tu-mobilenetv3_small_050", "--encoder-depth", "3", "--image-size", "64",
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
