"""``dataeng doctor``: check the registry against the files on disk (thin over engine.doctor)."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from dataeng.cli.app import JsonOption, WorkspaceOption, app, cli_errors, console, open_workspace, print_json


@app.command()
def doctor(
    workspace: WorkspaceOption = None,
    fix: Annotated[bool, typer.Option("--fix", help="Remove orphan files; close interrupted runs.")] = False,
    quick: Annotated[bool, typer.Option("--quick", help="Skip re-hashing image files.")] = False,
    json_out: JsonOption = False,
) -> None:
    """Check every row's files exist with the right hash; find orphans and interrupted runs (--fix cleans up)."""
    from dataeng.engine.doctor import doctor as run_doctor

    with cli_errors(json_out):
        ws = open_workspace(workspace)
        with ws.session() as session:
            report = run_doctor(ws, session, fix=fix, verify_hashes=not quick)
        if json_out:
            print_json(report.to_dict())
        else:
            _print_report(report)
        if not report.healthy:  # scripts and CI can trust the exit code
            raise typer.Exit(1)


def _print_report(report: Any) -> None:
    revision = (f"[green]{report.schema_revision}[/green]" if report.schema_current
                else f"[red]{report.schema_revision}[/red] (this dataeng writes {report.schema_head})")
    console.print(f"registry {report.registry}: connected, schema revision {revision}")
    console.print(f"checked {report.images_checked} images, {report.labels_checked} labels")
    for line in report.missing:
        console.print(f"[red]missing[/red] {line}")
    for line in report.corrupt:
        console.print(f"[red]changed[/red] {line}")
    for line in report.orphans:
        console.print(f"[yellow]{'removed' if line in report.removed else 'orphan'}[/yellow] {line}")
    for line in report.interrupted:
        console.print(f"[yellow]{'closed' if line in report.closed else 'interrupted'}[/yellow] {line}")
    console.print("[green]healthy[/green]" if report.healthy else "[red]problems found[/red]")
