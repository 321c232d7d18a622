"""Everything at once on one PostgreSQL workspace, as a team uses it: 4 ingests, 2 pseudolabel workers under
``torchrun --nproc-per-node 2`` (CPU), a review import and ``status`` in a loop; then a torchrun rank killed
with SIGKILL mid-job, and a rerun that finishes the job."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import func, select

from dataeng.config import Config, PseudolabelConfig
from dataeng.db.schema import Batch, Claim, Image, Label, Run
from dataeng.workspace import Workspace
from tests.conftest import random_image
from tests.engine.learn.pseudolabel_helpers import add_teacher_run
from tests.engine.review.test_review import box, edit_labelme, manifest_items, queue_workspace, run_export
from tests.factories import make_workspace

pytestmark = [pytest.mark.slow, pytest.mark.parametrize("backend", ["postgresql"], indirect=True)]
CONFIDENT = 8.0
ROOT = Path(__file__).resolve().parents[1]
N_KILL = 120
"""Images of the kill test: enough that the surviving rank is still busy when torchrun stops it."""


def _env() -> dict[str, str]:
    # One thread per process: eight processes share the 2-core CI machine.
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def _dataeng(*args: str) -> list[str]:
    return [sys.executable, "-m", "dataeng", *args]


def _torchrun(ws: Workspace, *extra: str) -> list[str]:
    torchrun = Path(sys.executable).with_name("torchrun")
    return [str(torchrun), "--standalone", "--nproc-per-node", "2", "-m", "dataeng", "pseudolabel", "-w",
            str(ws.root), "--device", "cpu", "--num-workers", "0", "--batch-size", "2", *extra]


def _labels_per_image(ws: Workspace, run_id: int) -> tuple[int, int]:
    with ws.session() as s:
        n, distinct = s.execute(select(func.count(), func.count(func.distinct(Label.image_id)))
                                .where(Label.run_id == run_id)).one()
    return int(n), int(distinct)


@pytest.mark.timeout(600)
def test_ingests_pseudolabel_workers_review_import_and_status_all_at_once(tmp_path: Path,
                                                                         registry_url: str | None) -> None:
    assert registry_url is not None
    ws, _, _ = queue_workspace(tmp_path, n_queued=6, registry=registry_url)
    out = tmp_path / "review"
    run_export(ws, out, limit=3)
    corrected = [item["image_id"] for item in manifest_items(out)]
    for item in manifest_items(out):
        edit_labelme(out / item["file"], shapes=[box(6, 6, 44, 44)])
    teacher = add_teacher_run(ws, CONFIDENT, val_miou=0.9)
    with ws.session() as s:
        images_before = s.scalar(select(func.count()).select_from(Image))
    folders = []
    for k in range(4):  # 4 ingests of 10 images each, neighbours sharing 4
        folder = tmp_path / f"in{k}"
        for i in range(10):
            random_image(folder / f"{i}.png", size=(40, 32), seed=1000 + 6 * k + i)
        folders.append(folder)
    expected_new = len({1000 + 6 * k + i for k in range(4) for i in range(10)})

    env = _env()
    statuses: list[subprocess.CompletedProcess[str]] = []
    stop = threading.Event()

    def status_loop() -> None:
        while not stop.is_set():
            statuses.append(subprocess.run(_dataeng("status", "-w", str(ws.root), "--json"), capture_output=True,
                                           text=True, env=env, timeout=120))

    looper = threading.Thread(target=status_loop)
    looper.start()
    try:
        procs = {f"ingest {k}": subprocess.Popen(_dataeng("ingest", str(f), "-w", str(ws.root), "--workers", "1",
                                                          "--json"), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                                 text=True, env=env) for k, f in enumerate(folders)}
        procs["torchrun pseudolabel"] = subprocess.Popen(_torchrun(ws, "--json"), stdout=subprocess.PIPE,
                                                         stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
        procs["review import"] = subprocess.Popen(_dataeng("review", "import", str(out), "-w", str(ws.root),
                                                           "--json"), stdout=subprocess.PIPE,
                                                  stderr=subprocess.PIPE, text=True, env=env)
        results = {name: (p.wait(timeout=500), *p.communicate()) for name, p in procs.items()}
    finally:
        stop.set()
        looper.join(timeout=200)

    for name, (code, _stdout, stderr) in results.items():  # 0 errors shown to the user
        assert code == 0, f"{name}: {stderr[-3000:]}"
        assert "Traceback" not in stderr and "Error" not in stderr, f"{name}: {stderr[-3000:]}"
    assert statuses and all(p.returncode == 0 for p in statuses), [p.stderr for p in statuses if p.returncode]
    for p in statuses:
        json.loads(p.stdout)  # every status answered, in full
    assert results["torchrun pseudolabel"][1].count('"rank":') == 2  # each rank printed its summary

    with ws.session() as s:
        # 0 lost rows: every distinct image of the four folders is registered, every batch finished.
        assert s.scalar(select(func.count()).select_from(Image)) == images_before + expected_new
        assert {b.status for b in s.scalars(select(Batch))} == {"finished"}
        # 0 human labels superseded; the corrections are the active labels of their images.
        assert s.scalar(select(func.count()).select_from(Label).where(
            Label.origin == "human", Label.status == "superseded")) == 0
        for image_id in corrected:
            active = s.scalars(select(Label).where(Label.image_id == image_id, Label.status == "active")).all()
            assert [(x.origin, x.source) for x in active] == [("human", "review")]
        # At most one active label per image, and no image pseudo-labelled twice by the teacher.
        per_image = s.execute(select(Label.image_id, func.count()).where(Label.status == "active")
                              .group_by(Label.image_id)).all()
        assert all(n == 1 for _, n in per_image)
        runs = s.scalars(select(Run).where(Run.kind == "pseudolabel")).all()
        assert len(runs) == 2 and {r.status for r in runs} == {"finished"}
        assert len({r.config["worker"] for r in runs}) == 2  # two processes
        claimed = sum(r.metrics["candidates"] for r in runs)
        assert s.scalar(select(func.count()).select_from(Claim)) == 0
    n, distinct = _labels_per_image(ws, teacher)
    assert n == distinct == claimed > 0


@pytest.mark.timeout(600)
def test_kill_9_of_one_torchrun_rank_then_the_rerun_finishes_without_duplicates(tmp_path: Path,
                                                                                registry_url: str | None) -> None:
    config = Config(pseudolabel=PseudolabelConfig(claim_size=2))
    ws, _ = make_workspace(tmp_path, n_train=N_KILL, n_val=0, n_test=0, labelled=False, config=config,
                           registry=registry_url)
    teacher = add_teacher_run(ws, CONFIDENT)
    env = _env()
    proc = subprocess.Popen(_torchrun(ws, "--json"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, cwd=tmp_path)
    deadline, victim = time.monotonic() + 300, None
    while victim is None and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.5)
        with ws.session() as s:
            done = s.scalar(select(func.count()).select_from(Label).where(Label.run_id == teacher)) or 0
            workers = [r.config["worker"] for r in s.scalars(select(Run).where(Run.kind == "pseudolabel"))]
        if done >= 2 and len(workers) == 2:
            victim = int(workers[1].rpartition(":")[2])
    assert victim is not None, f"the workers did not start: {proc.stderr.read() if proc.poll() is not None else ''}"
    os.kill(victim, signal.SIGKILL)
    proc.communicate(timeout=200)
    assert proc.returncode != 0  # torchrun saw its rank die
    partial, _ = _labels_per_image(ws, teacher)
    assert 0 < partial < N_KILL  # torchrun stopped the other rank too, long before the end
    with ws.session() as s:
        assert s.scalar(select(func.count()).select_from(Claim).where(Claim.state == "claimed")) > 0  # left behind
    with ws.session() as s:
        first = {r.id for r in s.scalars(select(Run).where(Run.kind == "pseudolabel"))}
    rerun = subprocess.run(_torchrun(ws, "--json"), capture_output=True, text=True, env=env, cwd=tmp_path,
                           timeout=400)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    with ws.session() as s:
        again = [r for r in s.scalars(select(Run).where(Run.kind == "pseudolabel")) if r.id not in first]
        assert len(again) == 2 and {r.status for r in again} == {"finished"}
        assert sum(r.metrics["candidates"] for r in again) == N_KILL - partial  # nothing finished is done again
    assert _labels_per_image(ws, teacher) == (N_KILL, N_KILL)
    with ws.session() as s:
        assert s.scalar(select(func.count()).select_from(Claim)) == 0
