"""Output that goes to a pipe keeps whole table headers (rich would wrap and cut them at 80 columns)."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from dataeng.cli import app
from dataeng.cli.app import StreamConsole
from dataeng.cli.tables import ROUND_COLUMNS, rounds_table
from dataeng.progress import PIPED_WIDTH, console_width


def test_console_width_is_wide_off_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("COLUMNS", raising=False)
    assert console_width(io.StringIO()) == PIPED_WIDTH
    monkeypatch.setenv("COLUMNS", "132")
    assert console_width(io.StringIO()) == 132

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    assert console_width(Tty()) is None  # a terminal keeps its own width


def test_the_round_table_keeps_its_headers_when_piped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("COLUMNS", raising=False)
    row = {key: 1 for key in ROUND_COLUMNS}
    out = io.StringIO()
    Console(file=out, width=console_width(out)).print(rounds_table([row]))
    text = out.getvalue()
    assert "…" not in text
    for title in ROUND_COLUMNS.values():
        for word in title.split():
            assert word in text, (word, text)


def test_the_cli_consoles_are_wide_when_piped() -> None:
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    code = "from dataeng.cli.app import console, err_console; print(console.width, err_console.width)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.split() == [str(PIPED_WIDTH), str(PIPED_WIDTH)]


def test_the_width_follows_the_stream_at_each_print(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("COLUMNS", raising=False)
    console = StreamConsole()  # made while stdout is whatever it is now...
    monkeypatch.setattr(sys, "stdout", io.StringIO())  # ...then printing to a pipe
    assert console.width == PIPED_WIDTH
    monkeypatch.setenv("COLUMNS", "123")
    assert console.width == 123
    assert StreamConsole(width=90).width == 90  # an explicit width still wins


def test_the_report_printed_through_the_cli_keeps_whole_headers(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.engine.report.test_report import make_registry

    monkeypatch.delenv("COLUMNS", raising=False)
    ws = make_registry(tmp_path)
    result = CliRunner().invoke(app, ["report", "--workspace", str(ws.root), "--no-gallery"])
    assert result.exit_code == 0, result.output
    assert "…" not in result.output
    for header in ("model quality per round (student)", "teacher", "human labels", "val mIoU", "test mIoU",
                   "test BF1", "test BIoU", "growth per round", "accepted pseudo", "corrected", "labelled",
                   "fraction"):
        assert header in result.output, (header, result.output)
