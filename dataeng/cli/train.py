"""``dataeng train``: thin over engine.learn.train.

Nothing heavy is imported at module level (torch, smp, cv2 load inside the command),
so ``dataeng --help`` stays fast.
"""

from __future__ import annotations

import os
from contextlib import closing
from typing import Annotated, Any

import typer

from dataeng.cli.app import (
    DeviceOption,
    JsonOption,
    WorkspaceOption,
    app,
    cli_errors,
    console,
    open_workspace,
    print_json,
)
from dataeng.cli.choices import Loss, Semi, value
from dataeng.cli.tables import metrics_table


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
    device: DeviceOption = None,
    encoder_weights: Annotated[str | None, typer.Option(help="none | imagenet (downloads) | PATH to a state dict.")
                               ] = None,
    encoder_depth: Annotated[int | None, typer.Option(help="Encoder stages 3..5 (3 = tiny model).")] = None,
    num_workers: Annotated[int | None, typer.Option(help="DataLoader worker processes.")] = None,
    loss: Annotated[Loss | None, typer.Option(help="Training loss (default: train.loss in "
                                                                 "dataeng.toml).")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of weights, order and augmentation.")] = None,
    strong_augment: Annotated[bool, typer.Option("--strong-augment", help="Noisy-Student strong augmentation.")
                              ] = False,
    human_share: Annotated[float | None, typer.Option(help="With pseudo-labels in the train set: at least this "
                                                           "share of each epoch is human-labelled (0: plain).")
                           ] = None,
    semi: Annotated[Semi | None, typer.Option(help="Also learn from the train split's unlabelled images, online "
                                                   "(default: train.semi in dataeng.toml).")] = None,
    init: Annotated[int | None, typer.Option("--init", help="Start from this finished train run's best checkpoint "
                                                         "(same model): fine-tune it on the current labels.")
                    ] = None,
    resume: Annotated[int | None, typer.Option(help="Continue this killed run from its last epoch.")] = None,
    workspace: WorkspaceOption = None,
    json_out: JsonOption = False,
) -> None:
    """Train on the train split, pick the best epoch on val, test it once, register the run."""
    with cli_errors(json_out):
        from dataeng.engine.learn.train import train

        ws = open_workspace(workspace)
        overrides: dict[str, Any] = {
            "arch": arch, "encoder": encoder, "epochs": epochs, "sample_budget": sample_budget,
            "image_size": image_size, "batch_size": batch_size,
            "lr": lr, "device": value(device), "encoder_weights": encoder_weights, "encoder_depth": encoder_depth,
            "num_workers": num_workers, "loss": value(loss), "seed": seed, "strong_augment": strong_augment or None,
            "human_share": human_share, "semi": value(semi), "init_run": init,
        }
        with closing(ws.new_session()) as session, _progress(enabled=not json_out) as progress:
            result = train(ws, session, overrides, resume=resume, progress=progress)
    if _rank() != 0:
        return
    if json_out:
        print_json(_summary(result))
        return
    console.print(f"run [bold]{result.run_id}[/bold]: best epoch {result.best_epoch}/{result.epochs} on "
                  f"{result.device}, {result.train_images} train images, {result.seconds:.1f}s")
    console.print(metrics_table({"val": result.val, "test": result.test}))
    console.print(f"checkpoint: {result.checkpoint}")


def _summary(result: Any) -> dict[str, Any]:
    return {"run_id": result.run_id, "best_epoch": result.best_epoch, "epochs": result.epochs,
            "device": result.device, "train_images": result.train_images, "fingerprint": result.fingerprint,
            "checkpoint": str(result.checkpoint), "seconds": round(result.seconds, 2), "val": result.val,
            "test": result.test, "worst": result.worst}


def _rank() -> int:
    """This process's rank under torchrun (0 when run alone): only rank 0 prints."""
    return int(os.environ.get("RANK", "0"))


def _progress(enabled: bool) -> Any:
    """A rich progress bar on rank 0 (loss, lr, img/s per step; a line per epoch), else nothing."""
    from contextlib import nullcontext

    from dataeng.progress import NullProgress, rich_progress

    return rich_progress("img") if enabled and _rank() == 0 else nullcontext(NullProgress())
