"""``dataeng synth``: synthetic portraits for demos and tests (thin over engine.synth)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from dataeng.cli.app import app, cli_errors, console


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
        summary = generate(
            out,
            n=n,
            unlabeled=unlabeled,
            seed=seed,
            size_range=(min_size, max_size),
            progress=progress,
        )
    console.print(
        f"wrote {summary.n} labelled (images/, masks/, alpha/, labelme/) and {summary.unlabeled} unlabelled "
        f"(unlabeled/, ground truth in truth/) portraits to {out} in {summary.seconds:.1f} s"
    )
