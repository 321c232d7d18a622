"""``dataeng export labels|model``: send labels (engine.export_labels) or a model (engine.serve.model_export) out.

Nothing heavy is imported at module level (torch, onnx, onnxruntime load inside the commands).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from dataeng.cli.app import JsonOption, WorkspaceOption, cli_errors, console, export_app, open_workspace, print_json
from dataeng.cli.choices import CocoAnnotations, LabelFormat, LabelSplit, Origin


@export_app.command("labels")
def export_labels(
    out: Annotated[Path, typer.Argument(help="Output folder.")],
    fmt: Annotated[LabelFormat, typer.Option("--format", help="Annotation format.")] = LabelFormat.labelme,
    split: Annotated[LabelSplit, typer.Option(help="Registry split, or all.")] = LabelSplit.all,
    origin: Annotated[Origin, typer.Option(help="Human or pseudo-labels, or all.")] = Origin.all,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Write into a folder that is not empty (files of "
                                                                "the same name are replaced).")] = False,
    coco_annotations: Annotated[CocoAnnotations | None, typer.Option(
        "--coco-annotations", help="COCO only: one annotation per connected region of a class (instances, the "
                                   "default) or per class (semantic); ignore pixels are crowd regions either way.",
        show_default=False)] = None,
    workspace: WorkspaceOption = None,
) -> None:
    """Write the registry's active labels in an annotation format, images alongside."""
    from dataeng.engine.export_labels import export_labels as run_export

    with cli_errors():
        ws = open_workspace(workspace)
        with ws.session() as session:
            summary = run_export(ws, session, out, fmt.value, split=split.value, origin=origin.value,
                                 overwrite=overwrite,
                                 coco_annotations=coco_annotations.value if coco_annotations else None)
        console.print(f"exported {summary.labels} labels as {summary.format} to {summary.out} ({summary.files} files)")


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
    with cli_errors(json_out):
        from dataeng.engine.learn.runs import RunRef
        from dataeng.engine.serve.model_export import export_model

        ws = open_workspace(workspace)
        with ws.session() as session:
            result = export_model(ws, session, RunRef.parse(run), onnx, dynamic=dynamic, int8=int8,
                                  overwrite=overwrite)
    if json_out:
        print_json(_model_summary(result))
        return
    _print_model(result)


def _model_summary(result: Any) -> dict[str, Any]:
    return {
        "run_id": result.run_id, "path": str(result.path), "precision": result.meta.precision,
        "dynamic": result.meta.dynamic, "classes": list(result.meta.classes),
        "image_size": list(result.meta.image_size), "parity_max_diff": result.parity_max_diff,
        "parity_sizes": [list(s) for s in result.parity_sizes],
        "int8": result.int8.__dict__ if result.int8 is not None else None,
    }


def _print_model(result: Any) -> None:
    sizes = ", ".join(f"{b}x3x{h}x{w}" for b, h, w in result.parity_sizes)
    console.print(f"run {result.run_id} -> {result.path} ({result.meta.precision}, "
                  f"{'dynamic' if result.meta.dynamic else 'fixed'} {result.meta.image_size[0]}x"
                  f"{result.meta.image_size[1]}, classes {', '.join(result.meta.classes)})")
    console.print(f"fp32 parity with PyTorch: max |diff| {result.parity_max_diff:.2e} on {sizes}")
    if result.int8 is not None:
        r = result.int8
        console.print(f"int8: IoU with fp32 masks {r.mean_iou:.4f} (loss {r.iou_loss:.4f}, min {r.min_iou:.4f}) "
                      f"on {r.images} synthetic portraits; {r.fp32_bytes / 1e6:.2f} MB -> {r.int8_bytes / 1e6:.2f} MB")
