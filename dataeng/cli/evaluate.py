"""``dataeng evaluate``: thin over engine.learn.evaluate (torch loads inside the command)."""

from __future__ import annotations

from contextlib import closing
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
from dataeng.cli.choices import Device, EvalSplit
from dataeng.cli.tables import metrics_table


@app.command("evaluate")
def evaluate_command(
    run: Annotated[str | None, typer.Argument(help="A run id, best, newest (the default: the newest finished train "
                                                   "run), mediapipe or onnx:PATH (an external teacher, registered "
                                                   "on first use).")] = None,
    split: Annotated[EvalSplit, typer.Option(help="Registry split to score.")] = EvalSplit.test,
    images: Annotated[Path | None, typer.Option(help="Folder of images outside the registry.")] = None,
    masks: Annotated[Path | None, typer.Option(help="Folder of masks matching --images by file stem.")] = None,
    device: Annotated[Device, typer.Option(help="PyTorch device.")] = Device.auto,
    workspace: WorkspaceOption = None,
    json_out: JsonOption = False,
) -> None:
    """Score a run's best checkpoint on a split or on a folder of images and masks."""
    with cli_errors(json_out):
        from dataeng.engine.learn.evaluate import evaluate
        from dataeng.engine.learn.runs import RunRef

        ws = open_workspace(workspace)
        with closing(ws.new_session()) as session:
            result = evaluate(ws, session, RunRef.parse(run, default="newest"), split.value, images, masks,
                              device.value)
    if json_out:
        print_json(_summary(result))
        return
    for path in result.missing:
        err_console.print(f"[yellow]missing mask:[/yellow] {path}")
    for path, message in result.problems:
        err_console.print(f"[yellow]skipped:[/yellow] {path}: {message}")
    console.print(f"evaluate run [bold]{result.run_id}[/bold] of run {result.model_run_id} on "
                  f"{result.split} ({result.metrics['images']} images, {len(result.missing)} missing masks)")
    console.print(metrics_table({result.split: result.metrics}))


def _summary(result: Any) -> dict[str, Any]:
    return {"run_id": result.run_id, "model_run_id": result.model_run_id, "split": result.split,
            "metrics": result.metrics, "missing": result.missing,
            "problems": [{"path": p, "message": m} for p, m in result.problems], "worst": result.worst}
