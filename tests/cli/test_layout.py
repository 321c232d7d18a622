"""The CLI stays thin: one module per command (or command group), named after it, with short command bodies."""

from __future__ import annotations

import ast
import inspect
import textwrap
from collections.abc import Iterator
from typing import Any

import typer.main

from dataeng.cli import app

MAX_BODY_LINES = 25  # statements of a command function, docstring and signature left out


def _commands() -> Iterator[tuple[tuple[str, ...], Any]]:
    """(path, callback) of every leaf command."""
    stack: list[tuple[tuple[str, ...], Any]] = [((), typer.main.get_command(app))]
    while stack:
        path, command = stack.pop()
        subcommands = getattr(command, "commands", None)
        if subcommands:
            stack.extend(((*path, name), sub) for name, sub in subcommands.items())
        elif command.callback is not None:
            yield path, command.callback


def _body_lines(callback: Any) -> int:
    function = ast.parse(textwrap.dedent(inspect.getsource(callback))).body[0]
    assert isinstance(function, ast.FunctionDef)
    body = function.body
    if isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        body = body[1:]
    end = body[-1].end_lineno
    assert end is not None
    return end - body[0].lineno + 1


def test_every_command_lives_in_a_module_named_after_it() -> None:
    found = dict(_commands())
    assert len(found) >= 16, sorted(found)
    for path, callback in found.items():
        assert callback.__module__ == f"dataeng.cli.{path[0]}", (path, callback.__module__)


def test_command_bodies_are_short() -> None:
    long = {" ".join(path): n for path, callback in _commands() if (n := _body_lines(callback)) > MAX_BODY_LINES}
    assert not long, f"command bodies over {MAX_BODY_LINES} lines (move formatting to a private function or tables): "\
                     f"{long}"


def test_help_lists_commands_in_workflow_order() -> None:
    from dataeng.cli.app import COMMAND_ORDER

    group = typer.main.get_command(app)
    names = group.list_commands(typer.Context(group))  # type: ignore[attr-defined]
    assert tuple(names) == COMMAND_ORDER
