"""``dataeng pseudolabel`` and ``dataeng round``: thin wrappers over engine.pseudolabel / engine.rounds.

torch and the models load inside the commands, so ``dataeng --help`` stays fast.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from dataeng.cli.app import JsonOption, WorkspaceOption, app, cli_errors, console, open_workspace, print_json
from dataeng.engine.learn.runs import RunRef
from dataeng.errors import DataEngError

TeacherOption = Annotated[str | None, typer.Option(
    "--teacher", help="best (default: finished train run with the best val mIoU), a train run id, or a checkpoint "
                      "file.")]


def parse_shard(text: str | None) -> tuple[int, int]:
    """``"i/n"`` -> (i, n); None -> (0, 1).

    Raises:
        DataEngError: not of the form i/n with 0 <= i < n.
    """
    if text is None:
        return 0, 1
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError as e:
        raise DataEngError("expected i/n, e.g. 0/4", field="shard", value=text) from e
    if n < 1 or not 0 <= i < n:
        raise DataEngError("shard must be i/n with 0 <= i < n", field="shard", value=text)
    return i, n


def _pseudolabel_config(base: Any, pixel_threshold: float | None, tta: str | None, confident_fraction: float | None,
                        mean_confidence: float | None, stability: float | None, batch_size: int | None) -> Any:
    from pydantic import ValidationError

    from dataeng.config import PseudolabelConfig
    from dataeng.errors import ConfigError

    accept = base.accept.model_dump()
    for key, value in (("min_confident_fraction", confident_fraction), ("min_mean_confidence", mean_confidence),
                       ("min_stability", stability)):
        if value is not None:
            accept[key] = value
    data = base.model_dump()
    data.update({k: v for k, v in (("pixel_threshold", pixel_threshold), ("tta", tta), ("batch_size", batch_size))
                 if v is not None})
    data["accept"] = accept
    try:
        return PseudolabelConfig.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        raise ConfigError(err["msg"], field="pseudolabel." + ".".join(str(p) for p in err["loc"]),
                          value=err.get("input")) from e


@app.command("pseudolabel")
def pseudolabel_command(
    teacher: TeacherOption = None,
    pixel_threshold: Annotated[float | None, typer.Option(help="Pixels below this confidence are ignored "
                                                              "(default 0.95).")] = None,
    accept_confident_fraction: Annotated[float | None, typer.Option(
        help="Accept when at least this share of pixels is confident (default 0.7).")] = None,
    accept_mean_confidence: Annotated[float | None, typer.Option(
        help="Accept when the mean confidence is at least this (default 0.85).")] = None,
    accept_stability: Annotated[float | None, typer.Option(
        help="Accept when the mask IoU at 0.5-d vs 0.5+d is at least this (default 0.8).")] = None,
    tta: Annotated[str | None, typer.Option(help="flip | none (default flip).")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Images per forward pass.")] = None,
    shard: Annotated[str | None, typer.Option(help="i/n: only images whose id % n == i.")] = None,
    limit: Annotated[int | None, typer.Option(help="At most this many images.")] = None,
    device: Annotated[str | None, typer.Option(help="auto | cpu | cuda | mps.")] = None,
    num_workers: Annotated[int | None, typer.Option(help="DataLoader decode workers.")] = None,
    workspace: WorkspaceOption = None,
    json_out: JsonOption = False,
) -> None:
    """Label the train images without a human label with the teacher; queue the uncertain ones."""
    with cli_errors():
        from dataeng.engine.learn.pseudolabel import pseudolabel
        from dataeng.progress import rich_progress

        ws = open_workspace(workspace)
        config = _pseudolabel_config(ws.config.pseudolabel, pixel_threshold, tta, accept_confident_fraction,
                                     accept_mean_confidence, accept_stability, batch_size)
        shard_ = parse_shard(shard)
        session = ws.new_session()
        try:
            with rich_progress("img") as progress:
                result = pseudolabel(ws, session, RunRef.parse(teacher), config=config, shard=shard_, limit=limit,
                                     device=device, num_workers=num_workers, progress=progress)
        finally:
            session.close()
    summary = {"run_id": result.run_id, "teacher_run_id": result.teacher_run_id, "round": result.round,
               "candidates": result.candidates, "accepted": result.accepted, "queued": result.queued,
               "superseded": result.superseded, "problems": result.problems, "skipped": result.skipped,
               "seconds": round(result.seconds, 2), "images_per_s": round(result.images_per_s, 2)}
    if json_out:
        print_json(summary)
        return
    console.print(f"pseudolabel run [bold]{result.run_id}[/bold] with teacher run {result.teacher_run_id} "
                  f"(round {result.round}): {result.candidates} images, [green]{result.accepted} accepted[/green], "
                  f"[yellow]{result.queued} queued for review[/yellow], {result.superseded} superseded, "
                  f"{result.problems} problems, {result.images_per_s:.1f} img/s")


@app.command("round")
def round_command(
    rounds: Annotated[int, typer.Option("--rounds", help="Teacher-student rounds to run.")] = 1,
    epochs: Annotated[int | None, typer.Option(help="Epochs per student (and for the round-0 teacher).")] = None,
    sample_budget: Annotated[int | None, typer.Option(
        help="Images seen per model instead of --epochs: epochs = ceil(budget / train images), so students on "
             "growing label sets cost the same.")] = None,
    teacher: TeacherOption = None,
    device: Annotated[str | None, typer.Option(help="auto | cpu | cuda | mps.")] = None,
    num_workers: Annotated[int | None, typer.Option(help="DataLoader worker processes.")] = None,
    workspace: WorkspaceOption = None,
    json_out: JsonOption = False,
) -> None:
    """Pseudo-label, train a student on human + accepted labels, promote it if it beats the teacher on val."""
    with cli_errors():
        from dataeng.engine.learn.rounds import run_rounds
        from dataeng.progress import rich_progress

        if rounds < 0:
            raise DataEngError("must be >= 0", field="rounds", value=rounds)
        ws = open_workspace(workspace)
        session = ws.new_session()
        try:
            overrides = {"epochs": epochs, "sample_budget": sample_budget, "device": device,
                         "num_workers": num_workers}
            with rich_progress("img") as progress:
                results = run_rounds(ws, session, rounds, overrides, teacher=RunRef.parse(teacher) if teacher else None,
                                     progress=progress)
        finally:
            session.close()
    rows = [{"round": r.number, "round_id": r.round_id, "teacher_run_id": r.teacher_run_id,
             "pseudolabel_run_id": r.pseudolabel_run_id, "student_run_id": r.student_run_id, "promoted": r.promoted,
             "accepted": r.accepted, "queued": r.queued, "superseded": r.superseded,
             "teacher_val_miou": r.teacher_val_miou, "student_val_miou": r.student_val_miou,
             "student_test_iou": (r.student_test or {}).get("iou")} for r in results]
    if json_out:
        print_json(rows)
        return
    from rich.table import Table

    table = Table(title="rounds")
    for col in ("round", "teacher", "student", "accepted", "queued", "superseded", "teacher val mIoU",
                "student val mIoU", "student test IoU", "promoted"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(*(_cell(r[k]) for k in ("round", "teacher_run_id", "student_run_id", "accepted", "queued",
                                              "superseded", "teacher_val_miou", "student_val_miou",
                                              "student_test_iou", "promoted")))
    console.print(table)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return f"{value:.4f}" if isinstance(value, float) else str(value)
