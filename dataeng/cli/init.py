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
    registry: Annotated[str | None, typer.Option(
        help="Registry URL, e.g. postgresql+psycopg://user@host/db (the database is created if missing; a "
             "password in the URL is used now and never written: later commands read $PGPASSWORD or "
             "~/.pgpass). Default: sqlite:///registry.db in the workspace.")] = None,
    store: Annotated[str | None, typer.Option(
        help="Store folder, e.g. a shared mount (default: store/ in the workspace).")] = None,
) -> None:
    """Create a workspace: dataeng.toml, an empty registry and the store folders."""
    from dataeng.config import parse_config
    from dataeng.workspace import Workspace

    with cli_errors():
        names = [c.strip() for c in classes.split(",") if c.strip()]
        data: dict[str, object] = {"classes": names}
        if store is not None:
            data["store"] = {"root": store}
        ws = Workspace.init(directory, parse_config(data, source="--classes/--store"), registry=registry)
        console.print(f"created workspace [bold]{ws.root}[/bold] (classes: {', '.join(names)})")
        if ws.backend == "postgresql":
            what = "created database" if ws.created_database else "joined existing database"
            console.print(f"registry: {what} {ws.db_url} at schema {ws.migrate()[1]}")
