"""Runs: the one lifecycle, the one reference parser and the one lookup."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from sqlalchemy import select

from dataeng.config import PseudolabelConfig, with_overrides
from dataeng.db.schema import Round, Run
from dataeng.engine.learn.runs import RunRef, best_run, newest_run, resolve_run
from dataeng.engine.lifecycle import lifecycle
from dataeng.errors import ConfigError, ModelError
from tests.factories import make_workspace


def test_run_refs_parse_once() -> None:
    assert RunRef.parse(None) == RunRef("best")
    assert RunRef.parse(None, default="newest") == RunRef("newest")
    assert RunRef.parse(" Best ") == RunRef("best")
    assert RunRef.parse(12) == RunRef.parse("12") == RunRef("id", run_id=12)
    ref = RunRef.parse("teacher.pt")
    assert ref.kind == "file" and ref.path == Path("teacher.pt") and str(ref) == "teacher.pt"


def test_lifecycle_finishes_or_fails_the_row_and_re_raises(tmp_path: Path) -> None:
    ws, _ = make_workspace(tmp_path, n_train=1, n_val=0, n_test=0)
    seen: list[str] = []
    with ws.session() as s:
        with lifecycle(s, Run(kind="evaluate")) as run:
            assert s.get(Run, run.id).status == "running"  # type: ignore[union-attr]
        assert run.status == "finished" and run.finished_at is not None
        with pytest.raises(KeyError), lifecycle(s, Round(number=3), on_fail=lambda r, e: seen.append(type(e).__name__)):
            raise KeyError("boom")
        row = s.scalars(select(Round)).one()
        assert (row.status, row.finished_at is not None, seen) == ("failed", True, ["KeyError"])


def test_best_and_newest_runs(tmp_path: Path) -> None:
    ws, _ = make_workspace(tmp_path, n_train=1, n_val=0, n_test=0)
    with ws.session() as s:
        for miou, status in ((0.5, "finished"), (0.9, "finished"), (0.95, "failed"), (0.7, "finished")):
            s.add(Run(kind="train", status=status, checkpoint_path="runs/x/checkpoint.pt",
                      metrics={"val": {"miou": miou}}))
        s.flush()
        best, newest = best_run(s), newest_run(s)
        assert best is not None and newest is not None
        assert (best.metrics["val"]["miou"], newest.metrics["val"]["miou"]) == (0.9, 0.7)
        assert resolve_run(ws, s, RunRef("newest")).id == newest.id
        with pytest.raises(ModelError, match="no train run with this id"):
            resolve_run(ws, s, RunRef("id", run_id=99))


def test_overrides_merge_nested_sections_and_name_the_bad_key() -> None:
    merged = with_overrides(PseudolabelConfig, PseudolabelConfig(), {"tta": "none", "batch_size": None,
                                                                     "accept": {"min_stability": 0.9}}, "pseudolabel")
    assert (merged.tta, merged.batch_size, merged.accept.min_stability) == ("none", 8, 0.9)
    assert merged.accept.min_mean_confidence == PseudolabelConfig().accept.min_mean_confidence
    with pytest.raises(ConfigError, match=r"pseudolabel\.accept\.min_stability"):
        with_overrides(PseudolabelConfig, PseudolabelConfig(), {"accept": {"min_stability": 2}}, "pseudolabel")
    with pytest.raises(ConfigError, match=r"pseudolabel\.tresh.*unknown option"):
        with_overrides(PseudolabelConfig, PseudolabelConfig(), {"tresh": 1}, "pseudolabel")


def test_the_code_version_lookup_takes_no_git_lock(monkeypatch: pytest.MonkeyPatch) -> None:
    import subprocess

    from dataeng.engine.learn import provenance

    seen: dict[str, str] = {}

    def run(args: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        env = kwargs.get("env")
        assert isinstance(env, dict)
        seen.update(env)
        return subprocess.CompletedProcess(args, 0, "abc1234-dirty\n", "")

    monkeypatch.setattr(provenance.subprocess, "run", run)
    version = provenance.code_version.__wrapped__()
    assert version.endswith("+abc1234-dirty") and seen["GIT_OPTIONAL_LOCKS"] == "0"


def test_training_never_asks_the_network_for_albumentations_updates(monkeypatch: pytest.MonkeyPatch) -> None:
    from dataeng.engine.learn.data import train_transform

    monkeypatch.delenv("NO_ALBUMENTATIONS_UPDATE", raising=False)
    train_transform((32, 32))
    assert os.environ["NO_ALBUMENTATIONS_UPDATE"] == "1"
