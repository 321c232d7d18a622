"""``dataeng ingest``: register images (thin over engine.ingest)."""

from __future__ import annotations

from typing import Annotated

import typer

from dataeng.cli.app import (
    JsonOption,
    WorkspaceOption,
    app,
    cli_errors,
    console,
    err_console,
    open_workspace,
    print_json,
    print_refused,
)
from dataeng.cli.choices import IngestFormat, value
from dataeng.cli.tables import ingest_table


@app.command()
def ingest(
    paths: Annotated[list[str], typer.Argument(help="Image files, folders (recursive) or glob patterns.")],
    workspace: WorkspaceOption = None,
    workers: Annotated[int | None, typer.Option(help="Processes for decoding (default: one per core).")] = None,
    strict: Annotated[bool, typer.Option("--strict", help="Stop at the first refused input.")] = False,
    fmt: Annotated[IngestFormat | None, typer.Option("--format", help="Read every annotation as this format "
                                                     "(default: detected per file).")] = None,
    json_out: JsonOption = False,
) -> None:
    """Register images: dedup by sha256, near-duplicate groups by pHash, stable 7:2:1 splits."""
    from dataeng.engine.ingest.ingest import ingest as run_ingest
    from dataeng.progress import NullProgress, rich_progress

    with cli_errors(json_out):
        ws = open_workspace(workspace)
        with ws.session() as session:
            if json_out:
                summary = run_ingest(ws, session, paths, workers=workers, strict=strict, fmt=value(fmt),
                                     progress=NullProgress())
            else:
                with rich_progress("img") as progress:
                    summary = run_ingest(ws, session, paths, workers=workers, strict=strict, fmt=value(fmt),
                                         progress=progress)
        if json_out:
            print_json(summary.to_dict())
        else:
            console.print(ingest_table(summary))
            print_refused(summary.problems + summary.labels.problems, more="`dataeng status --problems 100`")
    if summary.scanned == 0 and summary.labels.annotation_files == 0:
        err_console.print("[red]error:[/red] nothing was read: no image or annotation file in "
                          + ", ".join(paths), soft_wrap=True)
        raise typer.Exit(1)
