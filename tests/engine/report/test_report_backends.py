"""The report and status on PostgreSQL: the same registry gives the same numbers as on SQLite."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import pytest

from dataeng.db.queries import status
from dataeng.engine.report.build import build_report
from tests.engine.report import test_report
from tests.factories import make_workspace
from tests.pg import PG_PASSWORD, PgServer

VOLATILE = ("generated_at", "workspace", "plots", "gallery", "html", "registry")
"""Keys that name where and when a report was made (or hold pictures), not what the registry holds."""


def _numbers(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: _numbers(v) for k, v in data.items() if k not in VOLATILE and not k.endswith(("_at", "_path"))}
    if isinstance(data, list):
        return [_numbers(v) for v in data]
    if isinstance(data, float):
        return round(data, 9)
    return data


def _registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, registry: str | None) -> Any:
    with monkeypatch.context() as m:
        m.setattr(test_report, "make_workspace", functools.partial(make_workspace, registry=registry))
        return test_report.make_registry(tmp_path)


def test_report_and_status_are_the_same_on_both_backends(tmp_path: Path, pg_server: PgServer,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PGPASSWORD", PG_PASSWORD)
    lite = _registry(tmp_path / "sqlite", monkeypatch, None)
    pg = _registry(tmp_path / "pg", monkeypatch, pg_server.url(pg_server.new_database(), password=False))
    assert (lite.backend, pg.backend) == ("sqlite", "postgresql")
    out = []
    for ws in (lite, pg):
        with ws.session() as s:
            out.append((_numbers(build_report(ws, s, gallery=False).to_dict()), _numbers(status(s))))
    (lite_report, lite_status), (pg_report, pg_status) = out
    assert lite_status == pg_status
    assert lite_status["labels"]  # something to compare
    assert lite_report == pg_report
