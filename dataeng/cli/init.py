"""``dataeng init``: create a workspace."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from dataeng.cli.app import app, cli_errors, console


@app.command()
def init(
    directory: Annotated[Path, typer.Argument(help="Folder to make the workspace in (created if needed).")],
    classes: Annotated[str, typer.Option(help="Comma-separated class names, in mask index order (1..N).")] = "person",
) -> None:
    """Create a workspace: dataeng.toml, an empty registry and the store folders."""
    from dataeng.config import parse_config
    from dataeng.workspace import Workspace

    with cli_errors():
        names = [c.strip() for c in classes.split(",") if c.strip()]
        ws = Workspace.init(directory, parse_config({"classes": names}, source="--classes"))
        console.print(f"created workspace [bold]{ws.root}[/bold] (classes: {', '.join(names)})")
