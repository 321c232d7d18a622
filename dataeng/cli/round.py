"""``dataeng round``: teacher-student rounds, thin over engine.learn.rounds (torch loads inside the command)."""

from __future__ import annotations

from contextlib import closing
from typing import Annotated, Any

import typer

from dataeng.cli.app import (
    DeviceOption,
    JsonOption,
    TeacherOption,
    WorkspaceOption,
    app,
    cli_errors,
    console,
    open_workspace,
    print_json,
)
from dataeng.cli.choices import Semi, value
from dataeng.cli.tables import rounds_table
from dataeng.errors import DataEngError


@app.command("round")
def round_command(
    rounds: Annotated[int, typer.Option("--rounds", help="Teacher-student rounds to run.")] = 1,
    epochs: Annotated[int | None, typer.Option(help="Epochs per student (and for the round-0 teacher).")] = None,
    sample_budget: Annotated[int | None, typer.Option(
        help="Images seen per model instead of --epochs: epochs = ceil(budget / train images), so students on "
             "growing label sets cost the same.")] = None,
    teacher: TeacherOption = None,
    device: DeviceOption = None,
    num_workers: Annotated[int | None, typer.Option(help="DataLoader worker processes.")] = None,
    semi: Annotated[Semi | None, typer.Option(help="Students (and a round-0 teacher) also learn online from the "
                                                   "unlabelled train images, including pseudo-labels sent to "
                                                   "review (default: train.semi).")] = None,
    warm_start: Annotated[bool | None, typer.Option("--warm-start/--no-warm-start", help=(
        "Start each student from its teacher's weights when the teacher is a dataeng run of the same model "
        "(default: train.warm_start)."))] = None,
    workspace: WorkspaceOption = None,
    json_out: JsonOption = False,
) -> None:
    """Pseudo-label, train a student on human + accepted labels, promote it if it beats the teacher on val."""
    with cli_errors(json_out):
        from dataeng.engine.learn.rounds import run_rounds
        from dataeng.engine.learn.runs import RunRef
        from dataeng.progress import rich_progress

        if rounds < 0:
            raise DataEngError("must be >= 0", field="rounds", value=rounds)
        ws = open_workspace(workspace)
        overrides = {"epochs": epochs, "sample_budget": sample_budget, "device": value(device),
                     "num_workers": num_workers, "semi": value(semi), "warm_start": warm_start}
        with closing(ws.new_session()) as session, rich_progress("img") as progress:
            results = run_rounds(ws, session, rounds, overrides, teacher=RunRef.parse(teacher) if teacher else None,
                                 progress=progress)
    rows = [_row(r) for r in results]
    if json_out:
        print_json(rows)
        return
    console.print(rounds_table(rows))
    if any(r.teacher_val_miou is None and r.student_val_miou is None and not r.promoted for r in results
           if r.number > 0):
        console.print(NO_VAL_NOTE)


NO_VAL_NOTE = ("No val image has a human label, so no student could be promoted (the teacher stays). Label some: "
               "`dataeng review export OUT --queue eval`, correct them, then `dataeng review import OUT`.")


def _row(r: Any) -> dict[str, Any]:
    return {"round": r.number, "round_id": r.round_id, "teacher_run_id": r.teacher_run_id,
            "pseudolabel_run_id": r.pseudolabel_run_id, "student_run_id": r.student_run_id, "promoted": r.promoted,
            "accepted": r.accepted, "queued": r.queued, "superseded": r.superseded,
            "teacher_val_miou": r.teacher_val_miou, "student_val_miou": r.student_val_miou,
            "student_test_iou": (r.student_test or {}).get("iou")}
