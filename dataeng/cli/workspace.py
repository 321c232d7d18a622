"""Workspace commands: init, ingest, status, doctor, synth."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from dataeng.cli.app import (
    JsonOption,
    WorkspaceOption,
    app,
    cli_errors,
    console,
    export_app,
    open_workspace,
    print_json,
)


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


@app.command()
def ingest(
    paths: Annotated[list[str], typer.Argument(help="Image files, folders (recursive) or glob patterns.")],
    workspace: WorkspaceOption = None,
    workers: Annotated[int | None, typer.Option(help="Processes for decoding (default: one per core).")] = None,
    strict: Annotated[bool, typer.Option("--strict", help="Stop at the first refused input.")] = False,
    json_out: JsonOption = False,
) -> None:
    """Register images: dedup by sha256, near-duplicate groups by pHash, stable 7:2:1 splits."""
    from dataeng.engine.ingest.ingest import ingest as run_ingest
    from dataeng.progress import NullProgress, rich_progress

    with cli_errors():
        ws = open_workspace(workspace)
        with ws.session() as session:
            if json_out:
                summary = run_ingest(ws, session, paths, workers=workers, strict=strict, progress=NullProgress())
            else:
                with rich_progress("img") as progress:
                    summary = run_ingest(ws, session, paths, workers=workers, strict=strict, progress=progress)
        if json_out:
            print_json(summary.to_dict())
            return
        table = Table(title=f"ingest batch {summary.batch_id}", show_header=False)
        for key in ("scanned", "added", "duplicates", "near_duplicates", "refused"):
            table.add_row(key.replace("_", "-"), str(getattr(summary, key)))
        for split, n in summary.per_split.items():
            table.add_row(f"added to {split}", str(n))
        console.print(table)
        for line in summary.problems[:20]:
            console.print(f"[yellow]refused[/yellow] {line}", soft_wrap=True)
        if len(summary.problems) > 20:
            console.print(f"... and {len(summary.problems) - 20} more (see `dataeng status`)")


@app.command()
def status(workspace: WorkspaceOption = None, json_out: JsonOption = False) -> None:
    """Counts by split, labels by origin and status, refused inputs, last runs and open reviews."""
    from dataeng.db.queries import status as query_status

    with cli_errors():
        ws = open_workspace(workspace)
        with ws.session() as session:
            data = query_status(session)
        if json_out:
            print_json(data)
            return
        t = Table(title=f"workspace {ws.root}")
        t.add_column("split")
        t.add_column("images", justify="right")
        t.add_column("labelled", justify="right")
        for split, n in data["images"].items():
            t.add_row(split, str(n), str(data["labelled"][split]))
        t.add_row("all", str(sum(data["images"].values())), str(sum(data["labelled"].values())), style="bold")
        console.print(t)
        if data["labels"]:
            lt = Table(title="labels")
            lt.add_column("origin")
            lt.add_column("status")
            lt.add_column("n", justify="right")
            for origin, by_status in sorted(data["labels"].items()):
                for st, n in sorted(by_status.items()):
                    lt.add_row(origin, st, str(n))
            console.print(lt)
        if data["problems"]:
            console.print("refused inputs: " + ", ".join(f"{k} {v}" for k, v in sorted(data["problems"].items())))
        for run in data["runs"]:
            console.print(f"run {run['id']} {run['kind']} {run['status']} {run['metrics']}")
        for review in data["open_reviews"]:
            console.print(
                f"open review {review['id']}: {review['exported']} exported, "
                f"{review['imported']} back, {review['out_dir']}"
            )


@app.command()
def doctor(
    workspace: WorkspaceOption = None,
    fix: Annotated[bool, typer.Option("--fix", help="Remove orphan files; close interrupted runs.")] = False,
    quick: Annotated[bool, typer.Option("--quick", help="Skip re-hashing image files.")] = False,
    json_out: JsonOption = False,
) -> None:
    """Check every row's files exist with the right hash; find orphans and interrupted runs (--fix cleans up)."""
    from dataeng.engine.doctor import doctor as run_doctor

    with cli_errors():
        ws = open_workspace(workspace)
        with ws.session() as session:
            report = run_doctor(ws, session, fix=fix, verify_hashes=not quick)
        if json_out:
            print_json(report.to_dict())
        else:
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
        if report.missing or report.corrupt:
            raise typer.Exit(1)


@app.command()
def synth(
    out: Annotated[Path, typer.Argument(help="Output folder.")],
    n: Annotated[int, typer.Option("--n", help="Labelled images.")] = 100,
    unlabeled: Annotated[int, typer.Option("--unlabeled", help="Unlabelled images.")] = 0,
    seed: Annotated[int, typer.Option(help="Random seed; same seed, same files.")] = 0,
    min_size: Annotated[int, typer.Option(help="Smallest image side.")] = 64,
    max_size: Annotated[int, typer.Option(help="Largest image side.")] = 512,
) -> None:
    """Generate synthetic portraits: images, class-index masks, alpha mattes, Labelme JSON."""
    from dataeng.engine.synth import generate
    from dataeng.progress import rich_progress

    with cli_errors(), rich_progress("img") as progress:
        progress.task("synthesising", n + unlabeled)
        summary = generate(
            out,
            n=n,
            unlabeled=unlabeled,
            seed=seed,
            size_range=(min_size, max_size),
            progress=lambda _done: progress.advance(1),
        )
    console.print(
        f"wrote {summary.n} labelled (images/, masks/, alpha/, labelme/) and {summary.unlabeled} unlabelled "
        f"(unlabeled/, ground truth in truth/) portraits to {out} in {summary.seconds:.1f} s"
    )


@export_app.command("labels")
def export_labels(
    out: Annotated[Path, typer.Argument(help="Output folder.")],
    fmt: Annotated[str, typer.Option("--format", help="labelme, cvat, coco, supervisely or masks.")] = "labelme",
    split: Annotated[str, typer.Option(help="train, val, test or all.")] = "all",
    origin: Annotated[str, typer.Option(help="human, pseudo or all.")] = "all",
    workspace: WorkspaceOption = None,
) -> None:
    """Write the registry's active labels in an annotation format, images alongside."""
    from dataeng.engine.export_labels import FORMAT_NAMES
    from dataeng.engine.export_labels import export_labels as run_export
    from dataeng.errors import DataEngError

    with cli_errors():
        for name, value, allowed in (
            ("--format", fmt, tuple(FORMAT_NAMES)),
            ("--split", split, ("train", "val", "test", "all")),
            ("--origin", origin, ("human", "pseudo", "all")),
        ):
            if value not in allowed:
                raise DataEngError(f"expected one of {', '.join(allowed)}", field=name, value=value)
        ws = open_workspace(workspace)
        with ws.session() as session:
            summary = run_export(ws, session, out, fmt, split=split, origin=origin)  # type: ignore[arg-type]
        console.print(f"exported {summary.labels} labels as {summary.format} to {summary.out} ({summary.files} files)")
