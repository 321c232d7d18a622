"""Architecture guards: no import cycles inside ``dataeng``, a fast CLI, and help text on every command."""

from __future__ import annotations

import ast
import inspect
import json
import os
import subprocess
import sys
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import typer.main
from typer.core import TyperGroup
from typer.testing import CliRunner

import dataeng
from dataeng.cli import app

PACKAGE_DIR = Path(dataeng.__file__).resolve().parent
PACKAGE = PACKAGE_DIR.name
REPO_ROOT = PACKAGE_DIR.parent

# Modules that are slow to import; ``dataeng --help`` must not pull any of them in.
HEAVY_MODULES = ("torch", "segmentation_models_pytorch", "cv2", "albumentations", "matplotlib")
HELP_TIME_LIMIT_S = 1.0


# --------------------------------------------------------------------------------------------------------------------
# 1. Import cycles
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImportSite:
    """Where one module imports another: the file and line, for the failure message."""

    path: Path
    lineno: int

    def __str__(self) -> str:
        return f"{self.path.relative_to(REPO_ROOT)}:{self.lineno}"


def _module_name(path: Path) -> str:
    """Dotted name of a source file: ``pkg/a/b.py`` -> ``pkg.a.b``, ``pkg/a/__init__.py`` -> ``pkg.a``."""
    parts = list(path.relative_to(REPO_ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _discover_modules() -> dict[str, Path]:
    """Every module of the package, by dotted name."""
    return {_module_name(path): path for path in sorted(PACKAGE_DIR.rglob("*.py"))}


def _is_type_checking(test: ast.expr) -> bool:
    """``TYPE_CHECKING`` or ``typing.TYPE_CHECKING`` (or any ``x.TYPE_CHECKING``)."""
    if isinstance(test, ast.Name):
        return test.id == "TYPE_CHECKING"
    if isinstance(test, ast.Attribute):
        return test.attr == "TYPE_CHECKING"
    return False


def _runtime_imports(tree: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """All import statements that can run: module level, in functions, classes, try blocks... but not the body of
    ``if TYPE_CHECKING:`` (its ``else:`` branch does run)."""
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
            continue
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        stack.extend(ast.iter_child_nodes(node))


def _resolve_base(module: str, is_package: bool, node: ast.ImportFrom) -> str | None:
    """The absolute module named by ``from X import ...`` (handles ``from . import``, ``from ..x import``)."""
    if node.level == 0:
        return node.module
    package_parts = module.split(".") if is_package else module.split(".")[:-1]
    if node.level - 1 > len(package_parts):
        return None
    base_parts = package_parts[: len(package_parts) - (node.level - 1)]
    if node.module:
        base_parts = [*base_parts, *node.module.split(".")]
    return ".".join(base_parts) or None


def _import_targets(module: str, path: Path, known: set[str]) -> Iterator[tuple[str, ImportSite]]:
    """The package modules ``module`` imports at run time, with where it does so."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    is_package = path.name == "__init__.py"
    for node in _runtime_imports(tree):
        site = ImportSite(path, node.lineno)
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in known:
                    yield alias.name, site
            continue
        base = _resolve_base(module, is_package, node)
        if base is None:
            continue
        for alias in node.names:
            submodule = f"{base}.{alias.name}"
            if alias.name != "*" and submodule in known:
                yield submodule, site
            elif base in known:
                yield base, site


def _import_graph() -> dict[str, dict[str, list[ImportSite]]]:
    """module -> {imported package module -> sites}. Parent packages implied by ``import a.b.c`` are not edges."""
    modules = _discover_modules()
    known = set(modules)
    graph: dict[str, dict[str, list[ImportSite]]] = {name: {} for name in modules}
    for name, path in modules.items():
        for target, site in _import_targets(name, path, known):
            sites = graph[name].setdefault(target, [])
            if site not in sites:  # `from x import a, b` on one line is one site
                sites.append(site)
    return graph


def _strongly_connected_components(graph: dict[str, dict[str, list[ImportSite]]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative (no recursion limit), in a deterministic order."""
    index: dict[str, int] = {}
    lowlink: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []
    counter = 0

    for root in sorted(graph):
        if root in index:
            continue
        work: list[tuple[str, Iterator[str]]] = [(root, iter(sorted(graph[root])))]
        index[root] = lowlink[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            for child in children:
                if child not in index:
                    index[child] = lowlink[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                    break
                if child in on_stack:
                    lowlink[node] = min(lowlink[node], index[child])
            else:
                work.pop()
                if work:
                    parent = work[-1][0]
                    lowlink[parent] = min(lowlink[parent], lowlink[node])
                if lowlink[node] == index[node]:
                    component: list[str] = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    components.append(sorted(component))
    return components


def _shortest_path(graph: dict[str, dict[str, list[ImportSite]]], start: str, goal: str, within: set[str]) -> list[str]:
    """Breadth-first shortest path ``start -> ... -> goal`` using only modules in ``within``."""
    previous: dict[str, str | None] = {start: None}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        if node == goal:
            path = [node]
            while (before := previous[path[-1]]) is not None:
                path.append(before)
            return path[::-1]
        for child in sorted(graph[node]):
            if child in within and child not in previous:
                previous[child] = node
                queue.append(child)
    raise AssertionError(f"no path {start} -> {goal} inside its strongly connected component")


def _cycles_in(graph: dict[str, dict[str, list[ImportSite]]], component: list[str]) -> list[list[str]]:
    """One shortest cycle through each import edge of the component, deduplicated (rotations are the same cycle)."""
    members = set(component)
    seen: set[tuple[str, ...]] = set()
    cycles: list[list[str]] = []
    for source in component:
        for target in sorted(graph[source]):
            if target not in members:
                continue
            cycle = [source, *_shortest_path(graph, target, source, members)] if target != source else [source]
            ring = cycle[:-1] if len(cycle) > 1 else cycle
            start = ring.index(min(ring))
            key = tuple(ring[start:] + ring[:start])
            if key not in seen:
                seen.add(key)
                cycles.append([*key, key[0]])
    return sorted(cycles, key=lambda c: (len(c), c))


def _describe_cycles(graph: dict[str, dict[str, list[ImportSite]]], components: list[list[str]]) -> str:
    lines = [f"{len(components)} import cycle group(s) inside {PACKAGE} (TYPE_CHECKING-only imports ignored):"]
    for number, component in enumerate(components, 1):
        lines.append("")
        lines.append(f"[{number}] {len(component)} module(s): {', '.join(component)}")
        lines.append("    cycles:")
        lines.extend(f"      {' -> '.join(cycle)}" for cycle in _cycles_in(graph, component))
        lines.append("    imports that close them:")
        members = set(component)
        for source in component:
            for target in sorted(graph[source]):
                if target in members:
                    sites = ", ".join(str(site) for site in graph[source][target])
                    lines.append(f"      {source} -> {target}  ({sites})")
    return "\n".join(lines)


def test_no_import_cycles() -> None:
    graph = _import_graph()
    assert len(graph) > 10, f"found only {len(graph)} modules under {PACKAGE_DIR}"
    cyclic = [
        component
        for component in _strongly_connected_components(graph)
        if len(component) > 1 or component[0] in graph[component[0]]
    ]
    assert not cyclic, _describe_cycles(graph, cyclic)


# --------------------------------------------------------------------------------------------------------------------
# 2. ``dataeng --help`` is fast because the CLI imports nothing heavy
# --------------------------------------------------------------------------------------------------------------------


def _run_python(*args: str) -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, *args],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        env=dict(os.environ),
        timeout=120,
        check=False,
    )
    return result, time.perf_counter() - started


def _heavy_modules_after_cli_import() -> list[str]:
    code = (
        "import json, sys\n"
        "import dataeng.cli\n"
        f"print(json.dumps(sorted(m for m in {HEAVY_MODULES!r} if m in sys.modules)))\n"
    )
    result, _ = _run_python("-c", code)
    assert result.returncode == 0, result.stderr
    loaded: list[str] = json.loads(result.stdout.strip().splitlines()[-1])
    return loaded


def test_cli_help_is_fast() -> None:
    heavy = _heavy_modules_after_cli_import()

    _run_python("-m", PACKAGE, "--help")  # warm the OS file cache and bytecode
    runs = [_run_python("-m", PACKAGE, "--help") for _ in range(3)]
    for result, _ in runs:
        assert result.returncode == 0, (
            f"exit code {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
        )
        assert "Usage" in result.stdout, result.stdout
    best = min(elapsed for _, elapsed in runs)

    assert not heavy, f"`import {PACKAGE}.cli` imports heavy modules {heavy}; import them inside the commands instead"
    assert best < HELP_TIME_LIMIT_S, (
        f"`python -m {PACKAGE} --help` took {best:.2f}s (best of 3, limit {HELP_TIME_LIMIT_S}s); "
        f"heavy modules imported by {PACKAGE}.cli: {heavy or 'none'}; try `python -X importtime -m {PACKAGE} --help`"
    )


# --------------------------------------------------------------------------------------------------------------------
# 3. Every command and group has help text, and ``--help`` shows it
# --------------------------------------------------------------------------------------------------------------------


class _Command(Protocol):
    """What the test needs of a click command (typer >= 0.25 vendors click, so no ``click.Command`` here)."""

    help: str | None


def _walk_commands(command: _Command, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], _Command]]:
    """The root, every group and every command, with the argument path that reaches it.

    Groups are found as ``TyperGroup`` (a ``click.Group`` in older typer, a vendored click command in newer ones).
    """
    yield path, command
    if isinstance(command, TyperGroup):
        for name in sorted(command.commands):
            yield from _walk_commands(command.commands[name], (*path, name))


def _first_help_line(command: _Command) -> str:
    text = inspect.cleandoc(command.help or "")
    return text.splitlines()[0].strip() if text else ""


def _squash(text: str) -> str:
    """Collapse whitespace so help that the formatter wrapped still matches."""
    return " ".join(text.split())


def test_every_command_has_help() -> None:
    runner = CliRunner()
    root = typer.main.get_command(app)
    commands = list(_walk_commands(root))
    assert len(commands) > 5, f"only found {[' '.join(p) for p, _ in commands]}"

    problems: list[str] = []
    for path, command in commands:
        shown = " ".join([PACKAGE, *path])
        result = runner.invoke(app, [*path, "--help"])
        if result.exit_code != 0:
            problems.append(f"`{shown} --help` exited {result.exit_code}: {result.output or result.exception!r}")
            continue
        first_line = _first_help_line(command)
        if not first_line:
            problems.append(f"`{shown}` has no help text (add a docstring or help=)")
        elif _squash(first_line) not in _squash(result.output):
            problems.append(f"`{shown} --help` does not show its help line {first_line!r}:\n{result.output}")
    assert not problems, "\n".join(problems)
