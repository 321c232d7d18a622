"""Work claiming through the registry: disjoint chunks, leases, reclaimed chunks, workers sharing one set."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select, update

from dataeng.config import Config, PseudolabelConfig
from dataeng.db.schema import Claim, Label, Run, utcnow
from dataeng.engine.learn import claims
from dataeng.engine.learn.pseudolabel import pseudolabel
from tests.engine.learn.pseudolabel_helpers import add_teacher_run
from tests.factories import make_workspace

pytestmark = pytest.mark.backends
CONFIDENT = 8.0


def _within(lease_s: float) -> object:
    """A lease that ends within ``lease_s`` from now, and not long before (a loaded CI machine may take a
    while between the claim and the look)."""
    return pytest.approx(lease_s - 30, abs=30)


def _worker_run(ws, teacher: int) -> int:
    with ws.session() as s:
        run = Run(kind="pseudolabel", teacher_run_id=teacher)
        s.add(run)
        s.flush()
        return run.id


def test_claims_are_disjoint_leased_and_reclaimed_when_they_expire(tmp_path: Path, registry_url: str | None) -> None:
    ws, made = make_workspace(tmp_path, n_train=10, n_val=2, n_test=0, labelled=False, registry=registry_url)
    teacher = add_teacher_run(ws, CONFIDENT)
    a, b = _worker_run(ws, teacher), _worker_run(ws, teacher)
    train_ids = sorted(m.image_id for m in made if m.split == "train")
    with ws.session() as s:
        assert claims.enqueue(s, teacher) == 10
        assert claims.enqueue(s, teacher) == 0  # a second worker queues nothing twice
        first = claims.claim(s, teacher, a, 4, lease_s=60, worker="hostA:1")
        second = claims.claim(s, teacher, b, 4, lease_s=60, worker="hostB:1")
        assert first == train_ids[:4] and second == train_ids[4:8]
        assert claims.backlog(s, teacher) == claims.Backlog(free=2, held=8, next_expiry_s=_within(60))
        # Worker A dies: once its lease has run out its chunk is free again, and goes to B.
        s.execute(update(Claim).where(Claim.run_id == a).values(expires_at=utcnow() - timedelta(seconds=1)))
        s.commit()
        assert claims.claim(s, teacher, b, 10, lease_s=60, worker="hostB:1") == [*train_ids[:4], *train_ids[8:]]
        assert claims.renew(s, b, lease_s=60) == 10 and claims.renew(s, a, lease_s=60) == 0
        claims.release(s, teacher, train_ids[:3])
        s.commit()
        assert claims.backlog(s, teacher) == claims.Backlog(free=0, held=7, next_expiry_s=_within(60))


def test_a_dead_local_worker_frees_its_claims_at_once(tmp_path: Path, registry_url: str | None) -> None:
    ws, _ = make_workspace(tmp_path, n_train=4, n_val=0, n_test=0, labelled=False, registry=registry_url)
    teacher = add_teacher_run(ws, CONFIDENT)
    run = _worker_run(ws, teacher)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    host = claims.worker_name().rpartition(":")[0]
    with ws.session() as s:
        claims.enqueue(s, teacher)
        assert len(claims.claim(s, teacher, run, 3, lease_s=600, worker=f"{host}:{dead.stdout.strip()}")) == 3
        assert len(claims.claim(s, teacher, run, 1, lease_s=600, worker="elsewhere:1")) == 1
        assert claims.free_dead_local(s, teacher) == 3  # not the other machine's claim: only its lease frees it
        assert claims.backlog(s, teacher) == claims.Backlog(free=3, held=1, next_expiry_s=_within(600))


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)  # PostgreSQL: tests/test_concurrency_pg.py
def test_two_worker_processes_share_one_candidate_set(tmp_path: Path, registry_url: str | None) -> None:
    """Two `dataeng pseudolabel` processes started together: whichever finds the queue already emptied by
    its peer says so and exits 0 (a late torchrun rank must not fail the job)."""
    ws, _ = make_workspace(tmp_path, n_train=12, n_val=0, n_test=0, labelled=False, registry=registry_url)
    teacher = add_teacher_run(ws, CONFIDENT)
    args = [sys.executable, "-m", "dataeng", "pseudolabel", "--json", "--workspace", str(ws.root), "--device", "cpu",
            "--num-workers", "0", "--batch-size", "2", "--claim-size", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # two workers on a 2-core machine
    procs = [subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [e for _, e in outs]
    done = [json.loads(o) for o, _ in outs]
    assert sum(d.get("candidates", 0) for d in done) == 12, done  # none missed, none done twice
    assert all("candidates" in d or d["status"] == "nothing-to-do" for d in done), done
    with ws.session() as s:
        n, distinct = s.execute(select(func.count(), func.count(func.distinct(Label.image_id)))
                                .where(Label.run_id == teacher)).one()
        assert n == distinct == 12
        assert s.scalar(select(func.count()).select_from(Claim)) == 0  # the queue is empty


def test_a_worker_waits_for_a_peers_chunk_and_takes_it_over_when_its_lease_ends(
        tmp_path: Path, registry_url: str | None) -> None:
    config = Config(pseudolabel=PseudolabelConfig(claim_size=4, lease_s=1.5))
    ws, _ = make_workspace(tmp_path, n_train=6, n_val=0, n_test=0, labelled=False, config=config,
                           registry=registry_url)
    teacher = add_teacher_run(ws, CONFIDENT)
    peer = _worker_run(ws, teacher)
    with ws.session() as s:
        claims.enqueue(s, teacher)
        held = claims.claim(s, teacher, peer, 2, lease_s=1.5, worker="other-machine:7")  # and it never comes back
    started = time.monotonic()
    with ws.session() as s:
        result = pseudolabel(ws, s, device="cpu", num_workers=0)
    assert result.candidates == 6 and time.monotonic() - started >= 1.0  # waited for the lease
    with ws.session() as s:
        labelled = set(s.scalars(select(Label.image_id).where(Label.run_id == teacher)))
    assert set(held) <= labelled and len(labelled) == 6


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)  # SQLite: one writer, the second one waits
def test_skip_locked_lets_a_second_claimer_pass_a_chunk_being_claimed(tmp_path: Path, registry_url: str | None
                                                                      ) -> None:
    ws, _ = make_workspace(tmp_path, n_train=6, n_val=0, n_test=0, labelled=False, registry=registry_url)
    teacher = add_teacher_run(ws, CONFIDENT)
    run = _worker_run(ws, teacher)
    with ws.session() as s:
        claims.enqueue(s, teacher)
    first = ws.new_session()
    try:  # a claimer that has locked the 3 lowest rows and not yet committed
        locked = list(first.scalars(select(Claim.image_id).order_by(Claim.image_id).limit(3)
                                    .with_for_update(skip_locked=True)))
        second = ws.new_session()
        try:
            got = claims.claim(second, teacher, run, 3, lease_s=60)
        finally:
            second.close()
        assert not set(got) & set(locked) and len(got) == 3
    finally:
        first.rollback()
        first.close()


def test_cli_claim_size_is_a_validated_pseudolabel_option(tmp_path: Path, registry_url: str | None) -> None:
    from typer.testing import CliRunner

    from dataeng.cli import app

    ws, _ = make_workspace(tmp_path, n_train=3, n_val=0, n_test=0, labelled=False, registry=registry_url)
    add_teacher_run(ws, CONFIDENT)
    args = ["pseudolabel", "-w", str(ws.root), "--device", "cpu", "--num-workers", "0", "--tta", "none"]
    bad = CliRunner().invoke(app, [*args, "--claim-size", "0"])
    assert bad.exit_code == 1 and "pseudolabel.claim_size" in bad.output
    result = CliRunner().invoke(app, [*args, "--claim-size", "1", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["candidates"] == 3
    with ws.session() as s:
        (run,) = s.scalars(select(Run).where(Run.kind == "pseudolabel")).all()
        assert run.config["claim_size"] == 1 and run.config["worker"] == claims.worker_name()


def test_a_worker_that_fails_gives_its_chunk_back_at_once(tmp_path: Path, registry_url: str | None) -> None:
    ws, _ = make_workspace(tmp_path, n_train=6, n_val=0, n_test=0, labelled=False, registry=registry_url)
    teacher = add_teacher_run(ws, CONFIDENT)

    class Boom:
        def task(self, description: str, total: int) -> None:
            pass

        def advance(self, n: int = 1, **fields: object) -> None:
            raise RuntimeError("disk full")

    with ws.session() as s, pytest.raises(RuntimeError, match="disk full"):
        pseudolabel(ws, s, config=PseudolabelConfig(batch_size=2, claim_size=4), device="cpu", num_workers=0,
                    progress=Boom())
    with ws.session() as s:
        assert claims.backlog(s, teacher) == claims.Backlog(free=6, held=0, next_expiry_s=None)
        assert s.scalars(select(Run.status).where(Run.kind == "pseudolabel")).all() == ["failed"]
