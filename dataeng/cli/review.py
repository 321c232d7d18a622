"""``dataeng review export|import|push|pull|close``: the annotator loop, thin over engine.review."""

from __future__ import annotations

from contextlib import closing
from pathlib import Path
from typing import Annotated, Any

import typer

from dataeng.cli.app import (
    JsonOption,
    WorkspaceOption,
    cli_errors,
    console,
    open_workspace,
    print_json,
    print_refused,
    review_app,
)
from dataeng.cli.choices import CvatShapes, Device, LabelStudioShapes, Queue, ReviewFormat, value

SHOWN_NOTICES = 20  # skipped images named after an export


@review_app.command("export")
def export_command(
    out: Annotated[Path, typer.Argument(help="Folder to create for the annotators (new or empty).")],
    fmt: Annotated[ReviewFormat, typer.Option("--format", help="Annotation tool.")] = ReviewFormat.labelme,
    queue: Annotated[Queue, typer.Option(help="uncertain (needs_review pseudo-labels) | issues (human labels that "
                                              "look wrong) | eval (unlabelled val/test images).")] = Queue.uncertain,
    limit: Annotated[int, typer.Option(help="At most this many images.")] = 50,
    folds: Annotated[int, typer.Option(help="issues queue: cross-validation folds of the out-of-sample "
                                            "predictions (0: its default).")] = 0,
    cvat_shapes: Annotated[CvatShapes, typer.Option(help="CVAT pre-labels as mask (RLE, exact) | polygon.")
                           ] = CvatShapes.mask,
    shapes: Annotated[LabelStudioShapes, typer.Option(help="Label Studio predictions as brush (its RLE, exact) | "
                                                           "polygon.")] = LabelStudioShapes.brush,
    device: Annotated[Device | None, typer.Option(help="PyTorch device for the eval and issues queues (default: "
                                                       "train.device in dataeng.toml).")] = None,
    workspace: WorkspaceOption = None,
    json_out: JsonOption = False,
) -> None:
    """Write the next images of a review queue, pre-filled, as Labelme files, a CVAT task export or Label Studio
    tasks with predictions."""
    with cli_errors(json_out):
        from dataeng.engine.review.export import export_review
        from dataeng.progress import rich_progress

        ws = open_workspace(workspace)
        with closing(ws.new_session()) as session, rich_progress("img") as progress:
            done = export_review(ws, session, out, fmt=fmt.value, queue=queue.value, limit=limit, folds=folds,
                                 device=value(device), cvat_shapes=cvat_shapes.value,
                                 labelstudio_shapes=shapes.value, progress=progress)
    if json_out:
        print_json(done.to_dict())
        return
    sources = ", ".join(f"{n} {k}" for k, n in sorted(done.prefill.items()))
    console.print(f"review [bold]{done.review_id}[/bold]: {done.items} images of the {done.queue} queue as "
                  f"{done.format} in {done.out} (pre-filled: {sources})")
    for line in done.notices[:SHOWN_NOTICES]:
        console.print(f"[yellow]skipped[/yellow] {line}", soft_wrap=True)
    console.print(f"next: {done.open_command}", soft_wrap=True)
    if done.format != "labelstudio":
        console.print(f"then: dataeng review import {done.out}", soft_wrap=True)


@review_app.command("import")
def import_command(
    path: Annotated[Path, typer.Argument(help="The corrected export folder, a CVAT annotations.xml or task zip, or a "
                                              "Label Studio JSON / JSON_MIN export.")],
    manifest: Annotated[Path | None, typer.Option(help="The export's manifest.json, when it is not in or beside "
                                                       "PATH (default: match images by sha256).")] = None,
    workspace: WorkspaceOption = None,
    json_out: JsonOption = False,
) -> None:
    """Turn reviewed files into human labels (source review); untouched files stay in the queue."""
    with cli_errors(json_out):
        from dataeng.engine.review.importing import import_review
        from dataeng.progress import rich_progress

        ws = open_workspace(workspace)
        with closing(ws.new_session()) as session, rich_progress("img") as progress:
            done = import_review(ws, session, path, manifest=manifest, progress=progress)
    data = done.to_dict()
    if json_out:
        print_json(data)
        return
    _print_import(done, data["median_edit_iou"])


def _print_import(done: Any, median: float | None) -> None:
    console.print(f"review import batch [bold]{done.batch_id}[/bold]: {done.files} files, "
                  f"[green]{done.imported} imported[/green] ({done.unchanged} unchanged), "
                  f"{done.untouched} untouched (still in the queue), {done.already} already imported, "
                  f"[yellow]{done.refused} refused[/yellow]"
                  + (f"; median edit IoU {median:.3f}" if median is not None else ""))
    print_refused(done.problems)
    for review in done.reviews:
        console.print(f"review {review['id']} ({review['queue']}): {review['imported']}/{review['exported']} back, "
                      f"{review['status']}")


@review_app.command("push")
def push_command(
    review_id: Annotated[int | None, typer.Argument(help="The review (exported with --format labelstudio); default: "
                                                         "the newest one not pushed yet.")] = None,
    labelstudio: Annotated[str, typer.Option("--labelstudio", help="The Label Studio server, e.g. "
                                                                  "http://127.0.0.1:8080 (token: LABEL_STUDIO_API_KEY)."
                                             )] = "",
    project: Annotated[str | None, typer.Option(help="Project title to create or reuse (default: "
                                                     "'dataeng review ID').")] = None,
    document_root: Annotated[Path | None, typer.Option(help="The server's LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT "
                                                            "(default: that variable here, else /).")] = None,
    workspace: WorkspaceOption = None,
    json_out: JsonOption = False,
) -> None:
    """Send a Label Studio review to a server: project, local-files storage, tasks with predictions."""
    with cli_errors(json_out):
        from dataeng.engine.review.labelstudio_api import push_review
        from dataeng.errors import DataEngError

        if not labelstudio:
            raise DataEngError("give the server with --labelstudio URL", field="--labelstudio")
        ws = open_workspace(workspace)
        with closing(ws.new_session()) as session:
            done = push_review(ws, session, labelstudio, review_id=review_id, project=project,
                               document_root=document_root)
    if json_out:
        print_json(done.to_dict())
        return
    console.print(f"review [bold]{done.review_id}[/bold]: {done.tasks} tasks in project {done.project_id} "
                  f"({done.project!r}, {'reused' if done.project_reused else 'created'}) at {done.url}", soft_wrap=True)
    console.print(f"annotate at {done.url}/projects/{done.project_id}, then: dataeng review pull {done.review_id}",
                  soft_wrap=True)


@review_app.command("pull")
def pull_command(
    review_id: Annotated[int, typer.Argument(help="The pushed review.")],
    labelstudio: Annotated[str | None, typer.Option("--labelstudio", help="The server (default: the one it was "
                                                                         "pushed to).")] = None,
    workspace: WorkspaceOption = None,
    json_out: JsonOption = False,
) -> None:
    """Fetch the submitted annotations of a pushed review and import them as human labels."""
    with cli_errors(json_out):
        from dataeng.engine.review.labelstudio_api import pull_review
        from dataeng.progress import rich_progress

        ws = open_workspace(workspace)
        with closing(ws.new_session()) as session, rich_progress("img") as progress:
            done = pull_review(ws, session, review_id, url=labelstudio, progress=progress)
    data = done.to_dict()
    if json_out:
        print_json(data)
        return
    _print_import(done, data["median_edit_iou"])


@review_app.command("close")
def close_command(
    review_id: Annotated[int, typer.Argument(help="The review to close.")],
    workspace: WorkspaceOption = None,
    json_out: JsonOption = False,
) -> None:
    """Close a review whose remaining files will not come back; their images can be exported again."""
    with cli_errors(json_out):
        from dataeng.engine.review.items import close_review, review_summary

        ws = open_workspace(workspace)
        with ws.session() as session:
            data = review_summary(close_review(session, review_id))
    if json_out:
        print_json(data)
        return
    console.print(f"review {data['id']} closed: {data['imported']}/{data['exported']} came back, "
                  f"{data['states'].get('abandoned', 0)} abandoned")
