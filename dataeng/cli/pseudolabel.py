"""``dataeng pseudolabel``: thin over engine.learn.pseudolabel.

torch and the models load inside the command, so ``dataeng --help`` stays fast.
"""

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
from dataeng.cli.choices import Tta, value
from dataeng.errors import DataEngError


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
    tta: Annotated[Tta | None, typer.Option(help="Test-time augmentation of the teacher (default flip).")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Images per forward pass.")] = None,
    shard: Annotated[str | None, typer.Option(help="i/n: only images whose id % n == i.")] = None,
    limit: Annotated[int | None, typer.Option(help="At most this many images.")] = None,
    claim_size: Annotated[int | None, typer.Option(
        help="Images claimed from the shared queue at a time (default 256; smaller spreads a small set "
             "over more workers).")] = None,
    device: DeviceOption = None,
    num_workers: Annotated[int | None, typer.Option(help="DataLoader decode workers.")] = None,
    workspace: WorkspaceOption = None,
    json_out: JsonOption = False,
) -> None:
    """Label the train images without a human label with the teacher; queue the uncertain ones.

    Any number may run at once against one registry (`torchrun --nproc-per-node G -m dataeng pseudolabel`:
    one worker per rank, each on its own GPU): they claim chunks of the same candidates from the registry.
    """
    with cli_errors(json_out):
        from dataeng.engine.learn.pseudolabel import Rank, pseudolabel
        from dataeng.engine.learn.runs import RunRef

        rank = Rank.from_env()
        ws = open_workspace(workspace)
        config = _pseudolabel_config(ws.config.pseudolabel, pixel_threshold, value(tta), accept_confident_fraction,
                                     accept_mean_confidence, accept_stability, batch_size, claim_size)
        shard_ = parse_shard(shard)
        device_ = rank.device(value(device) or ws.config.train.device)
        with closing(ws.new_session()) as session, _progress(rank.local_rank == 0) as progress:
            result = pseudolabel(ws, session, RunRef.parse(teacher), config=config, shard=shard_, limit=limit,
                                 device=device_, num_workers=num_workers, progress=progress)
    _print_result(result, rank, json_out)


def _progress(enabled: bool) -> Any:
    """A progress bar on the first rank of each machine (torchrun), else nothing."""
    from contextlib import nullcontext

    from dataeng.progress import NullProgress, rich_progress

    return rich_progress("img") if enabled else nullcontext(NullProgress())


def _print_result(result: Any, rank: Any, json_out: bool) -> None:
    if json_out:
        print_json({**_summary(result), "rank": rank.rank} if rank.world_size > 1 else _summary(result))
        return
    if rank.world_size > 1:
        console.print(f"rank {rank.rank}/{rank.world_size}: ", end="")
    console.print(f"pseudolabel run [bold]{result.run_id}[/bold] with teacher run {result.teacher_run_id} "
                  f"(round {result.round}): {result.candidates} images, [green]{result.accepted} accepted[/green], "
                  f"[yellow]{result.queued} queued for review[/yellow], {result.superseded} superseded, "
                  f"{result.problems} problems, {result.images_per_s:.1f} img/s")


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
                        mean_confidence: float | None, stability: float | None, batch_size: int | None,
                        claim_size: int | None = None) -> Any:
    """``[pseudolabel]`` of dataeng.toml with the options given on the command line, validated."""
    from dataeng.config import PseudolabelConfig, with_overrides

    accept = {"min_confident_fraction": confident_fraction, "min_mean_confidence": mean_confidence,
              "min_stability": stability}
    return with_overrides(PseudolabelConfig, base, {"pixel_threshold": pixel_threshold, "tta": tta,
                                                    "batch_size": batch_size, "claim_size": claim_size,
                                                    "accept": accept}, "pseudolabel")


def _summary(result: Any) -> dict[str, Any]:
    return {"run_id": result.run_id, "teacher_run_id": result.teacher_run_id, "round": result.round,
            "candidates": result.candidates, "accepted": result.accepted, "queued": result.queued,
            "superseded": result.superseded, "problems": result.problems, "skipped": result.skipped,
            "seconds": round(result.seconds, 2), "images_per_s": round(result.images_per_s, 2)}
