"""The report command: ``dataeng report [--out DIR] [--json] [--open]``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from dataeng.cli.app import JsonOption, WorkspaceOption, app, cli_errors, console, open_workspace, print_json


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

    with cli_errors():
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


def _print_summary(rep: object) -> None:
    from dataeng.engine.report.build import Report

    assert isinstance(rep, Report)
    for note in rep.notes:
        console.print(f"[yellow]{note}[/yellow]", soft_wrap=True)
    d = rep.dataset
    t = Table(title="dataset")
    for col in ("split", "images", "labelled", "human", "fraction"):
        t.add_column(col, justify="left" if col == "split" else "right")
    for split, n in d.images.items():
        frac = d.labelled_fraction[split]
        t.add_row(split, f"{n:,}", f"{d.labelled[split]:,}", f"{d.human_labelled[split]:,}",
                  "-" if frac is None else f"{100 * frac:.1f}%")
    console.print(t)
    console.print("labels: " + (", ".join(f"{k} {v:,}" for k, v in sorted(d.labels_by_origin.items())) or "none")
                  + f"; near-duplicate groups {d.near_duplicate_groups:,}; refused inputs {d.refused_total:,}")
    if rep.growth:
        g = Table(title="growth per round")
        for col in ("round", "human", "corrected", "accepted pseudo", "queued"):
            g.add_column(col, justify="right")
        for row in rep.growth:
            g.add_row(str(row.round), f"{row.human:,}", f"{row.corrected:,}", f"{row.accepted_pseudo:,}",
                      f"{row.queued:,}")
        console.print(g)
    if rep.quality:
        q = Table(title="model quality per round (student)")
        for col in ("round", "run", "teacher", "human labels", "val mIoU", "test IoU", "test mIoU", "test BF1",
                    "test BIoU"):
            q.add_column(col, justify="right")
        for row in rep.quality:
            test = row.test or {}
            cells = [(row.val or {}).get("miou"), *(test.get(k) for k in ("iou", "miou", "boundary_f1",
                                                                             "boundary_iou"))]
            q.add_row(str(row.round), str(row.student_run_id), str(row.teacher_run_id or "-"), f"{row.human_labels:,}",
                      *("-" if v is None else f"{v:.3f}" for v in cells))
        console.print(q)
