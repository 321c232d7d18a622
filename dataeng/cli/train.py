"""``dataeng train`` and ``dataeng evaluate``: thin wrappers over engine.train / engine.evaluate.

Nothing heavy is imported at module level (torch, smp, cv2 load inside the commands),
so ``dataeng --help`` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

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
)
from dataeng.engine.learn.runs import RunRef

METRIC_ROWS = ("iou", "miou", "fwiou", "pixel_accuracy", "boundary_f1", "boundary_iou", "mae", "sad", "mse", "grad")


@app.command("train")
def train_command(
    arch: Annotated[str | None, typer.Option(help="smp architecture, e.g. unet, fpn, deeplabv3plus.")] = None,
    encoder: Annotated[str | None, typer.Option(help="smp encoder, e.g. resnet18, or tu-<timm model>.")] = None,
    epochs: Annotated[int | None, typer.Option(help="Epochs to train.")] = None,
    sample_budget: Annotated[int | None, typer.Option(
        help="Images seen instead of --epochs: epochs = ceil(budget / train images).")] = None,
    image_size: Annotated[tuple[int, int] | None, typer.Option(help="Training size H W (multiples of 32).")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Batch size (per process under torchrun).")] = None,
    lr: Annotated[float | None, typer.Option(help="Peak learning rate (AdamW).")] = None,
    device: Annotated[str | None, typer.Option(help="auto | cpu | cuda | mps.")] = None,
    encoder_weights: Annotated[str | None, typer.Option(help="none | imagenet (downloads) | PATH to a state dict.")
                               ] = None,
    encoder_depth: Annotated[int | None, typer.Option(help="Encoder stages 3..5 (3 = tiny model).")] = None,
    num_workers: Annotated[int | None, typer.Option(help="DataLoader worker processes.")] = None,
    loss: Annotated[str | None, typer.Option(help="segmentation | matting.")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of weights, order and augmentation.")] = None,
    strong_augment: Annotated[bool, typer.Option("--strong-augment", help="Noisy-Student strong augmentation.")
                              ] = False,
    human_share: Annotated[float | None, typer.Option(help="With pseudo-labels in the train set: at least this "
                                                           "share of each epoch is human-labelled (0: plain).")
                           ] = None,
    resume: Annotated[int | None, typer.Option(help="Continue this killed run from its last epoch.")] = None,
    workspace: WorkspaceOption = None,
    json_out: JsonOption = False,
) -> None:
    """Train on the train split, pick the best epoch on val, test it once, register the run."""
    with cli_errors():
        from dataeng.engine.learn.train import train

        ws = open_workspace(workspace)
        overrides: dict[str, Any] = {
            "arch": arch, "encoder": encoder, "epochs": epochs, "sample_budget": sample_budget,
            "image_size": image_size, "batch_size": batch_size,
            "lr": lr, "device": device, "encoder_weights": encoder_weights, "encoder_depth": encoder_depth,
            "num_workers": num_workers, "loss": loss, "seed": seed, "strong_augment": strong_augment or None,
            "human_share": human_share,
        }
        session = ws.new_session()
        try:
            with _progress(enabled=not json_out) as progress:
                result = train(ws, session, overrides, resume=resume, progress=progress)
        finally:
            session.close()
    if _rank() != 0:
        return
    summary = {"run_id": result.run_id, "best_epoch": result.best_epoch, "epochs": result.epochs,
               "device": result.device, "train_images": result.train_images, "fingerprint": result.fingerprint,
               "checkpoint": str(result.checkpoint), "seconds": round(result.seconds, 2), "val": result.val,
               "test": result.test, "worst": result.worst}
    if json_out:
        print_json(summary)
        return
    console.print(f"run [bold]{result.run_id}[/bold]: best epoch {result.best_epoch}/{result.epochs} on "
                  f"{result.device}, {result.train_images} train images, {result.seconds:.1f}s")
    console.print(_metrics_table({"val": result.val, "test": result.test}))
    console.print(f"checkpoint: {result.checkpoint}")


@app.command("evaluate")
def evaluate_command(
    run: Annotated[int | None, typer.Argument(help="Train run to evaluate (default: newest finished).")] = None,
    split: Annotated[str, typer.Option(help="val | test.")] = "test",
    images: Annotated[Path | None, typer.Option(help="Folder of images outside the registry.")] = None,
    masks: Annotated[Path | None, typer.Option(help="Folder of masks matching --images by file stem.")] = None,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda | mps.")] = "auto",
    workspace: WorkspaceOption = None,
    json_out: JsonOption = False,
) -> None:
    """Score a run's best checkpoint on a split or on a folder of images and masks."""
    with cli_errors():
        from dataeng.engine.learn.evaluate import evaluate

        ws = open_workspace(workspace)
        session = ws.new_session()
        try:
            result = evaluate(ws, session, RunRef.parse(run, default="newest"), split, images, masks, device)
        finally:
            session.close()
    if json_out:
        print_json({"run_id": result.run_id, "model_run_id": result.model_run_id, "split": result.split,
                    "metrics": result.metrics, "missing": result.missing,
                    "problems": [{"path": p, "message": m} for p, m in result.problems], "worst": result.worst})
        return
    for path in result.missing:
        err_console.print(f"[yellow]missing mask:[/yellow] {path}")
    for path, message in result.problems:
        err_console.print(f"[yellow]skipped:[/yellow] {path}: {message}")
    console.print(f"evaluate run [bold]{result.run_id}[/bold] of train run {result.model_run_id} on "
                  f"{result.split} ({result.metrics['images']} images, {len(result.missing)} missing masks)")
    console.print(_metrics_table({result.split: result.metrics}))


def _rank() -> int:
    import os

    return int(os.environ.get("RANK", "0"))


def _metrics_table(columns: dict[str, dict[str, Any] | None]) -> Any:
    from rich.table import Table

    table = Table(title="metrics")
    table.add_column("metric")
    shown = {k: v for k, v in columns.items() if v}
    for name in shown:
        table.add_column(name, justify="right")
    if not shown:
        table.add_row("(no labelled val/test images)")
        return table
    for metric in ("images", *METRIC_ROWS):
        values = [v.get(metric) for v in shown.values()]
        if all(x is None for x in values):
            continue
        table.add_row(metric, *("-" if x is None else f"{x:.4f}" if isinstance(x, float) else str(x)
                                for x in values))
    return table


def _progress(enabled: bool) -> Any:
    """A rich progress bar on rank 0 (loss, lr, img/s per step; a line per epoch), else nothing."""
    from contextlib import nullcontext

    from dataeng.progress import NullProgress, rich_progress

    return rich_progress("img") if enabled and _rank() == 0 else nullcontext(NullProgress())
