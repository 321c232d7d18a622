"""``dataeng status``: what the registry holds."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from dataeng.cli.app import (
    JsonOption,
    WorkspaceOption,
    app,
    cli_errors,
    console,
    one_line,
    open_workspace,
    print_json,
)
from dataeng.cli.tables import labels_table, splits_table


@app.command()
def status(
    workspace: WorkspaceOption = None,
    problems: Annotated[int | None, typer.Option(
        "--problems", help="Also list the newest N refused inputs (file, field, value, why).", min=1)] = None,
    json_out: JsonOption = False,
) -> None:
    """Counts by split, labels by origin and status, refused inputs, last runs and open reviews."""
    from dataeng.db.queries import recent_problems
    from dataeng.db.queries import status as query_status

    with cli_errors(json_out):
        ws = open_workspace(workspace)
        with ws.session() as session:
            data = query_status(session)
            if problems is not None:
                data["recent_problems"] = recent_problems(session, problems)
        if json_out:
            print_json(data)
            return
        _print_status(data, ws.root)


def _print_status(data: dict[str, Any], root: Any) -> None:
    console.print(splits_table(data, root))
    if data["labels"]:
        console.print(labels_table(data["labels"]))
    if data["problems"]:
        console.print("refused inputs by kind: " + ", ".join(f"{k} {v}" for k, v in sorted(data["problems"].items())))
    for p in data.get("recent_problems", []):
        where = ", ".join(x for x in (p["path"], p["field"] and f"field {p['field']!r}",
                                      p["value"] and f"value {p['value']!r}") if x)
        console.print(f"[yellow]{p['kind']}[/yellow] {one_line(where)}: {one_line(p['message'])}", soft_wrap=True)
    for run in data["runs"]:
        console.print(f"run {run['id']} {run['kind']} {run['status']} {run['metrics']}")
    for review in data["open_reviews"]:
        console.print(
            f"open review {review['id']}: {review['exported']} exported, "
            f"{review['imported']} back, {review['out_dir']}"
        )
