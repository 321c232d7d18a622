"""Output that goes to a pipe keeps whole table headers (rich would wrap and cut them at 80 columns)."""

from __future__ import annotations

import io
import os
import subprocess
import sys

import pytest
from rich.console import Console

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
