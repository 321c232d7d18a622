"""``dataeng predict`` and ``dataeng export model``: thin wrappers over engine.predict and
engine.model_export.

Nothing heavy is imported at module level (torch, onnxruntime, cv2 load inside the
commands), so ``dataeng --help`` stays fast.
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
    export_app,
    open_workspace,
    print_json,
)
from dataeng.engine.learn.runs import RunRef

SHOWN_PROBLEMS = 20  # beyond this many refused files, print a count (the JSON has them all)


@app.command("predict")
def predict_command(
    inputs: Annotated[list[Path], typer.Argument(help="Image files and/or folders (walked recursively).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder (created; relative paths are kept).")],
    run: Annotated[str | None, typer.Option(help="Train run id or 'best' (default: best; needs a workspace).")
                   ] = None,
    output: Annotated[str, typer.Option("--as", help="mask (0/255 PNG) | alpha (soft PNG) | cutout (RGBA PNG) | "
                                                     "overlay (person over --background).")] = "mask",
    background: Annotated[str | None, typer.Option(help="For --as overlay: image file, colour name or #rrggbb "
                                                        "(default white).")] = None,
    tta: Annotated[bool, typer.Option("--tta", help="Average with the horizontally flipped prediction.")] = False,
    refine: Annotated[bool, typer.Option("--refine", help="Guided-filter refinement of the soft alpha near the "
                                                          "boundary (alpha, cutout, overlay).")] = False,
    onnx: Annotated[Path | None, typer.Option(help="Use this exported ONNX model (onnxruntime; no workspace needed)."
                                              )] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace existing output files.")] = False,
    batch_size: Annotated[int, typer.Option(help="Images per forward pass.")] = 8,
    device: Annotated[str, typer.Option(help="PyTorch device: auto | cpu | cuda | mps.")] = "auto",
    max_pixels: Annotated[int | None, typer.Option(help="Refuse larger images (default: the workspace's "
                                                        "ingest.max_image_pixels).")] = None,
    workspace: WorkspaceOption = None,
    json_out: JsonOption = False,
) -> None:
    """Predict person masks, soft alpha, cutouts or background replacements for any images."""
    with cli_errors():
        from dataeng.engine.serve.predict import PredictOptions, load_predictor

        ws = _workspace_for(workspace, required=onnx is None)
        classes = list(ws.config.classes) if ws is not None else _default_classes()
        options = PredictOptions(output=output, background=background, tta=tta, refine=refine,  # type: ignore[arg-type]
                                 overwrite=overwrite, batch_size=batch_size,
                                 max_pixels=max_pixels or _max_pixels(ws))
        if onnx is not None:
            predictor = load_predictor(run=RunRef.parse(run) if run else None, onnx=onnx, expected_classes=classes)
        else:
            with ws.session() as session:
                predictor = load_predictor(ws, session, run=RunRef.parse(run), device=device)
        result = _run(predictor, inputs, out, options, quiet=json_out)
    summary = {"out": str(result.out_dir), "backend": result.backend, "written": result.written,
               "skipped": [s.__dict__ for s in result.skipped], "problems": [p.__dict__ for p in result.problems],
               "seconds": round(result.seconds, 3), "images_per_second": round(result.images_per_second, 2)}
    if json_out:
        print_json(summary)
        return
    console.print(f"wrote {result.written} {output} file(s) to {result.out_dir} with {result.backend} "
                  f"({result.images_per_second:.1f} images/s)")
    if result.skipped:
        err_console.print(f"[yellow]skipped {len(result.skipped)} existing output(s) (use --overwrite)[/yellow]")
    if result.problems:
        err_console.print(f"[yellow]refused {len(result.problems)} input(s):[/yellow]")
        for problem in result.problems[:SHOWN_PROBLEMS]:
            err_console.print(f"  {problem.path}: {problem.reason}", soft_wrap=True)
        if len(result.problems) > SHOWN_PROBLEMS:
            err_console.print(f"  ... and {len(result.problems) - SHOWN_PROBLEMS} more (see --json)")


def _run(predictor: Any, inputs: list[Path], out: Path, options: Any, quiet: bool) -> Any:
    from dataeng.engine.serve.predict import predict
    from dataeng.progress import NullProgress, rich_progress

    if quiet:
        return predict(predictor, inputs, out, options, NullProgress())
    with rich_progress("images") as progress:
        return predict(predictor, inputs, out, options, progress)


def _workspace_for(workspace: Path | None, required: bool) -> Any:
    """The workspace when one is given or found; with ``--onnx`` none is needed."""
    from dataeng.errors import WorkspaceError

    try:
        return open_workspace(workspace)
    except WorkspaceError as e:
        if workspace is not None:
            raise
        if required:
            raise WorkspaceError(f"{e.reason}; or predict with an exported model: --onnx FILE",
                                 path=e.path) from e
        return None


def _default_classes() -> list[str]:
    from dataeng.config import Config

    return list(Config().classes)


def _max_pixels(ws: Any) -> int:
    from dataeng.config import Config

    return int((ws.config if ws is not None else Config()).ingest.max_image_pixels)


@export_app.command("model")
def export_model_command(
    run: Annotated[str, typer.Argument(help="Train run id or 'best' (highest val mIoU).")],
    onnx: Annotated[Path, typer.Option(help="ONNX file to write.")],
    dynamic: Annotated[bool, typer.Option("--dynamic", help="Dynamic height and width too (batch is always "
                                                            "dynamic); any multiple of 32.")] = False,
    int8: Annotated[bool, typer.Option("--int8", help="Dynamic int8 quantisation; reports the IoU loss vs fp32."
                                       )] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing file.")] = False,
    workspace: WorkspaceOption = None,
    json_out: JsonOption = False,
) -> None:
    """Export a train run's model to ONNX, checked against PyTorch (max logit difference <= 1e-4)."""
    with cli_errors():
        from dataeng.engine.serve.model_export import export_model

        ws = open_workspace(workspace)
        with ws.session() as session:
            result = export_model(ws, session, RunRef.parse(run), onnx, dynamic=dynamic, int8=int8,
                                  overwrite=overwrite)
    summary: dict[str, Any] = {
        "run_id": result.run_id, "path": str(result.path), "precision": result.meta.precision,
        "dynamic": result.meta.dynamic, "classes": list(result.meta.classes),
        "image_size": list(result.meta.image_size), "parity_max_diff": result.parity_max_diff,
        "parity_sizes": [list(s) for s in result.parity_sizes],
        "int8": result.int8.__dict__ if result.int8 is not None else None,
    }
    if json_out:
        print_json(summary)
        return
    sizes = ", ".join(f"{b}x3x{h}x{w}" for b, h, w in result.parity_sizes)
    console.print(f"run {result.run_id} -> {result.path} ({result.meta.precision}, "
                  f"{'dynamic' if result.meta.dynamic else 'fixed'} {result.meta.image_size[0]}x"
                  f"{result.meta.image_size[1]}, classes {', '.join(result.meta.classes)})")
    console.print(f"fp32 parity with PyTorch: max |diff| {result.parity_max_diff:.2e} on {sizes}")
    if result.int8 is not None:
        r = result.int8
        console.print(f"int8: IoU with fp32 masks {r.mean_iou:.4f} (loss {r.iou_loss:.4f}, min {r.min_iou:.4f}) "
                      f"on {r.images} synthetic portraits; {r.fp32_bytes / 1e6:.2f} MB -> {r.int8_bytes / 1e6:.2f} MB")
