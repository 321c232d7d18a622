"""Progress reporting for long jobs, kept apart from the engine.

Every long engine function takes one :class:`Progress` (the only progress protocol):
``task(description, total)`` starts a bar, ``advance(n, **fields)`` moves it and shows the
fields (loss, counts), ``note(text)`` prints a line above it (an epoch's summary). The CLI
passes :class:`RichProgress` (a rich progress bar on stderr); tests and library users get
the silent default.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Protocol


class Progress(Protocol):
    def task(self, description: str, total: int | None) -> None: ...
    def advance(self, n: int = 1, **fields: Any) -> None: ...
    def note(self, text: str) -> None: ...


class NullProgress:
    """Reports nothing."""

    def task(self, description: str, total: int | None) -> None:
        pass

    def advance(self, n: int = 1, **fields: Any) -> None:
        pass

    def note(self, text: str) -> None:
        pass


class RichProgress:
    """A rich progress bar with rate and ETA; one bar per ``task`` call."""

    def __init__(self, progress: Any) -> None:
        self._progress = progress
        self._task: Any = None

    def task(self, description: str, total: int | None) -> None:
        if self._task is not None:
            self._progress.update(self._task, completed=self._progress.tasks[-1].total or 0)
        self._task = self._progress.add_task(description, total=total, info="")

    def advance(self, n: int = 1, **fields: Any) -> None:
        if self._task is None:
            return
        info = "  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in fields.items())
        self._progress.update(self._task, advance=n, **({"info": info} if info else {}))

    def note(self, text: str) -> None:
        self._progress.console.print(text, highlight=False)


def _rate_column_class() -> Any:
    from rich.progress import ProgressColumn
    from rich.text import Text

    class RateColumn(ProgressColumn):
        def __init__(self, unit: str) -> None:
            super().__init__()
            self.unit = unit

        def render(self, task: Any) -> Text:
            speed = task.finished_speed or task.speed
            return Text("" if speed is None else f"{speed:,.1f} {self.unit}/s", style="cyan")

    return RateColumn


@contextmanager
def rich_progress(unit: str = "items") -> Iterator[RichProgress]:
    """A live rich progress bar on stderr for the duration of the block."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        TaskProgressColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
    from rich.progress import Progress as _Progress

    _RateColumn = _rate_column_class()
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        _RateColumn(unit),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
    )
    with _Progress(*columns, console=Console(stderr=True, width=console_width(sys.stderr)), transient=False) as p:
        yield RichProgress(p)


PIPED_WIDTH = 200
"""Columns of output that goes to a pipe or file: rich's 80 would cut table headers to "teac…"."""


def console_width(stream: object) -> int | None:
    """None (the terminal's own width) on a terminal; else $COLUMNS or :data:`PIPED_WIDTH`."""
    if getattr(stream, "isatty", lambda: False)():
        return None
    columns = os.environ.get("COLUMNS", "")
    return int(columns) if columns.isdigit() and int(columns) > 0 else PIPED_WIDTH
