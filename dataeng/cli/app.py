"""The typer app and what every command shares: options, workspace lookup, error mapping, output."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console, ConsoleDimensions
from rich.markup import escape
from typer.core import TyperGroup

from dataeng.cli.choices import Device
from dataeng.errors import DataEngError, NothingToDoError
from dataeng.progress import console_width

# The order of ``dataeng --help``: the dataset loop first, maintenance last.
COMMAND_ORDER = ("init", "ingest", "status", "train", "evaluate", "pseudolabel", "round", "review", "report",
                 "predict", "export", "doctor", "synth")


class OrderedGroup(TyperGroup):
    """Lists commands in :data:`COMMAND_ORDER` (typer would list sub-apps after all plain commands)."""

    def list_commands(self, ctx: Any) -> list[str]:
        names = super().list_commands(ctx)
        return sorted(names, key=lambda n: COMMAND_ORDER.index(n) if n in COMMAND_ORDER else len(COMMAND_ORDER))


class StreamConsole(Console):
    """A rich Console whose width follows where its output goes at each print: a terminal's own
    width, else :func:`~dataeng.progress.console_width` ($COLUMNS or 200), so ``dataeng report | less``,
    a log file or typer's ``CliRunner`` get whole table headers, never "teac…", even when the
    module was imported while stdout was a terminal. A width given to the constructor still wins.
    """

    def __init__(self, *, width: int | None = None, **kwargs: Any) -> None:
        super().__init__(width=width, **kwargs)
        if width is None:
            self._width = None  # rich froze $COLUMNS here: read it at each print instead

    @property
    def size(self) -> ConsoleDimensions:
        size = super().size
        width = console_width(self.file) if self._width is None else None
        return size if width is None else ConsoleDimensions(width, size.height)

    @size.setter
    def size(self, new_size: tuple[int, int]) -> None:
        self._width, self._height = new_size


app = typer.Typer(
    name="dataeng",
    cls=OrderedGroup,
    help="Grow a portrait segmentation dataset: ingest, train, pseudo-label, review, report.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
export_app = typer.Typer(help="Send labels or models out of dataeng.", no_args_is_help=True)
app.add_typer(export_app, name="export")
review_app = typer.Typer(help="Annotator loop: export masks to Labelme/CVAT and import corrections.",
                         no_args_is_help=True)
app.add_typer(review_app, name="review")

console = StreamConsole(highlight=False)
err_console = StreamConsole(stderr=True, highlight=False)


def _print_version(show: bool) -> None:
    if show:
        from dataeng import __version__

        console.print(f"dataeng {__version__}")
        raise typer.Exit()


@app.callback()
def _main(version: Annotated[bool, typer.Option("--version", callback=_print_version, is_eager=True,
                                                help="Print the version and exit.")] = False) -> None:
    """Grow a portrait segmentation dataset: ingest, train, pseudo-label, review, report."""

WorkspaceOption = Annotated[
    Path | None,
    typer.Option("--workspace", "-w", help="Workspace folder (default: $DATAENG_WORKSPACE or search upward)."),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout.")]
TeacherOption = Annotated[str | None, typer.Option(
    "--teacher", help="best (default: the run with the best val mIoU, external teachers included), a run id, a "
                      "checkpoint file, mediapipe (the dataeng[mediapipe] extra), or onnx:PATH (an ONNX person "
                      "model; see the README for its contract).")]

DeviceOption = Annotated[Device | None, typer.Option(
    "--device", help="PyTorch device (default: train.device in dataeng.toml).")]

SHOWN_PROBLEMS = 20  # beyond this many refused inputs, print a count


@contextmanager
def cli_errors(json_out: bool = False) -> Iterator[None]:
    """Turn expected errors into one red line and exit 1 (exit 0 when there was nothing to do).

    Under ``--json`` a command's output stays machine-readable: nothing to do is a JSON result
    on stdout (``{"status": "nothing-to-do", "message": ...}``), an error is one JSON object
    on stderr (``{"error": message, "path", "field", "value"}``).
    """
    try:
        yield
    except NothingToDoError as e:
        if json_out:
            print_json({"status": "nothing-to-do", "message": one_line(str(e))})
        else:
            err_console.print(f"[yellow]{escape(one_line(str(e)))}[/yellow]")
        raise typer.Exit(0) from None
    except DataEngError as e:
        if json_out:
            sys.stderr.write(json.dumps({"error": one_line(str(e)), "path": e.path, "field": e.field,
                                         "value": None if e.value is None else str(e.value)}, default=str) + "\n")
        else:
            err_console.print(f"[red]error:[/red] {escape(one_line(str(e)))}", soft_wrap=True)
        raise typer.Exit(1) from None


def one_line(text: str) -> str:
    """A message as one line, whatever it quotes (a file name with a newline, say)."""
    return " ".join(text.splitlines())


def open_workspace(workspace: Path | None) -> Any:
    """Open the workspace, telling the user when its registry was migrated."""
    from dataeng.workspace import Workspace

    def _said(before: str | None, after: str) -> None:
        err_console.print(f"[cyan]registry upgraded from schema {before} to {after}[/cyan]")

    return Workspace.open(workspace, on_migrate=_said)


def print_json(data: Any) -> None:
    """Machine-readable output: JSON on stdout, nothing else."""
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def print_refused(problems: list[str], more: str = "see `dataeng status`") -> None:
    """One yellow line per refused input, the first :data:`SHOWN_PROBLEMS` of them, then a count."""
    for line in problems[:SHOWN_PROBLEMS]:
        console.print(f"[yellow]refused[/yellow] {line}", soft_wrap=True)
    if len(problems) > SHOWN_PROBLEMS:
        console.print(f"... and {len(problems) - SHOWN_PROBLEMS} more ({more})")
