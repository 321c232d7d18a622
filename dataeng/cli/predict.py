"""``dataeng predict``: thin over engine.serve.predict.

Nothing heavy is imported at module level (torch, onnxruntime, cv2 load inside the
command), so ``dataeng --help`` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from dataeng.cli.app import (
    SHOWN_PROBLEMS,
    JsonOption,
    WorkspaceOption,
    app,
    cli_errors,
    console,
    err_console,
    open_workspace,
    print_json,
)
from dataeng.cli.choices import Device, OutputKind


@app.command("predict")
def predict_command(
    inputs: Annotated[list[Path], typer.Argument(help="Image files and/or folders (walked recursively).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder (created; relative paths are kept).")],
    run: Annotated[str | None, typer.Option(help="Train run id or 'best' (default: best; needs a workspace).")
                   ] = None,
    output: Annotated[OutputKind, typer.Option("--as", help="mask (0/255 PNG) | alpha (soft PNG) | cutout (RGBA PNG) "
                                                            "| overlay (person over --background).")
                      ] = OutputKind.mask,
    background: Annotated[str | None, typer.Option(help="For --as overlay: image file, colour name or #rrggbb "
                                                        "(default white).")] = None,
    tta: Annotated[bool, typer.Option("--tta", help="Average with the horizontally flipped prediction.")] = False,
    refine: Annotated[bool, typer.Option("--refine", help="Guided-filter refinement of the soft alpha near the "
                                                          "boundary (alpha, cutout, overlay).")] = False,
    onnx: Annotated[Path | None, typer.Option(help="Use this exported ONNX model (onnxruntime; no workspace needed)."
                                              )] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace existing output files.")] = False,
    batch_size: Annotated[int, typer.Option(help="Images per forward pass.")] = 8,
    device: Annotated[Device, typer.Option(help="PyTorch device.")] = Device.auto,
    max_pixels: Annotated[int | None, typer.Option(help="Refuse larger images (default: the workspace's "
                                                        "ingest.max_image_pixels).")] = None,
    workspace: WorkspaceOption = None,
    json_out: JsonOption = False,
) -> None:
    """Predict person masks, soft alpha, cutouts or background replacements for any images."""
    with cli_errors(json_out):
        from dataeng.engine.learn.runs import RunRef
        from dataeng.engine.serve.predict import PredictOptions, load_predictor

        ws = _workspace_for(workspace, required=onnx is None)
        classes = list(ws.config.classes) if ws is not None else _default_classes()
        options = PredictOptions(output=output.value, background=background, tta=tta,
                                 refine=refine, overwrite=overwrite, batch_size=batch_size,
                                 max_pixels=max_pixels or _max_pixels(ws))
        if onnx is not None:
            predictor = load_predictor(run=RunRef.parse(run) if run else None, onnx=onnx, expected_classes=classes)
        else:
            with ws.session() as session:
                predictor = load_predictor(ws, session, run=RunRef.parse(run), device=device.value)
        result = _run(predictor, inputs, out, options, quiet=json_out)
    if json_out:
        print_json(_summary(result))
        return
    _print_result(result, output.value)


def _run(predictor: Any, inputs: list[Path], out: Path, options: Any, quiet: bool) -> Any:
    from dataeng.engine.serve.predict import predict
    from dataeng.progress import NullProgress, rich_progress

    if quiet:
        return predict(predictor, inputs, out, options, NullProgress())
    with rich_progress("images") as progress:
        return predict(predictor, inputs, out, options, progress)


def _summary(result: Any) -> dict[str, Any]:
    return {"out": str(result.out_dir), "backend": result.backend, "written": result.written,
            "skipped": [s.__dict__ for s in result.skipped], "problems": [p.__dict__ for p in result.problems],
            "seconds": round(result.seconds, 3), "images_per_second": round(result.images_per_second, 2)}


def _print_result(result: Any, output: str) -> None:
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
