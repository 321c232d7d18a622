"""``dataeng report [--out DIR] [--json] [--open]``: thin over engine.report."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from dataeng.cli.app import JsonOption, WorkspaceOption, app, cli_errors, console, open_workspace, print_json
from dataeng.cli.tables import dataset_table, growth_table, quality_table


@app.command()
def report(
    workspace: WorkspaceOption = None,
    out: Annotated[Path | None, typer.Option("--out", help="Folder for report.html and report.json "
                                                            "(default: <workspace>/reports).")] = None,
    json_out: JsonOption = False,
    open_browser: Annotated[bool, typer.Option("--open", help="Open report.html in the web browser.")] = False,
    gallery: Annotated[bool, typer.Option("--gallery/--no-gallery",
                                          help="Draw the galleries (runs the best model on its worst test "
                                               "images).")] = True,
) -> None:
    """Write reports/report.html (self-contained) and report.json: dataset, growth, quality, galleries."""
    from dataeng.engine.report.build import build_report, write_report

    with cli_errors(json_out):
        ws = open_workspace(workspace)
        with ws.session() as session:
            rep = build_report(ws, session, gallery=gallery)
        html_path, json_path = write_report(rep, out if out is not None else ws.root / "reports")
    if json_out:
        print_json(rep.to_dict())
    else:
        _print_summary(rep)
        console.print(f"wrote [bold]{html_path}[/bold] and {json_path.name}", soft_wrap=True)
    if open_browser:
        import webbrowser

        webbrowser.open(html_path.resolve().as_uri())


def _print_summary(rep: Any) -> None:
    for note in rep.notes:
        console.print(f"[yellow]{note}[/yellow]", soft_wrap=True)
    d = rep.dataset
    console.print(dataset_table(d))
    console.print("labels: " + (", ".join(f"{k} {v:,}" for k, v in sorted(d.labels_by_origin.items())) or "none")
                  + f"; near-duplicate groups {d.near_duplicate_groups:,}; refused inputs {d.refused_total:,}")
    if rep.growth:
        console.print(growth_table(rep.growth))
    if rep.quality:
        console.print(quality_table(rep.quality))
