"""``dataeng review export|import|close`` through the CLI, and the open review in ``dataeng status``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dataeng.cli import app
from tests.engine.review.test_review import box, edit_labelme, queue_workspace

runner = CliRunner()


def _invoke(*args: str) -> tuple[int, str]:
    """Exit code and stdout (--json) or everything printed (the progress bar goes to stderr)."""
    result = runner.invoke(app, list(args))
    return result.exit_code, result.stdout if "--json" in args else result.output


@pytest.mark.parametrize("command", ["export", "import", "push", "pull", "close"])
def test_every_review_command_has_help(command: str) -> None:
    code, out = _invoke("review", command, "--help")
    assert code == 0 and "Usage" in out


def test_export_status_import_close_round_trip(tmp_path: Path) -> None:
    ws, _, _ = queue_workspace(tmp_path)
    out = tmp_path / "review"
    code, text = _invoke("review", "export", str(out), "--format", "labelme", "--limit", "2", "-w", str(ws.root),
                         "--json")
    assert code == 0, text
    exported = json.loads(text)
    assert exported["items"] == 2 and exported["open_command"] == f"labelme {out} --flags reviewed"
    code, text = _invoke("status", "-w", str(ws.root), "--json")
    assert [r["id"] for r in json.loads(text)["open_reviews"]] == [exported["review_id"]]
    code, text = _invoke("status", "-w", str(ws.root))
    assert f"open review {exported['review_id']}: 2 exported, 0 back" in text
    items = json.loads((out / "manifest.json").read_text())["items"]
    edit_labelme(out / items[0]["file"], shapes=[box(4, 4, 40, 40)])
    edit_labelme(out / items[1]["file"], reviewed=True)
    code, text = _invoke("review", "import", str(out), "-w", str(ws.root), "--json")
    assert code == 0, text
    imported = json.loads(text)
    assert (imported["imported"], imported["unchanged"], imported["refused"]) == (2, 1, 0)
    assert imported["reviews"][0]["status"] == "closed" and 0 < imported["median_edit_iou"] < 1
    code, text = _invoke("status", "-w", str(ws.root), "--json")
    assert json.loads(text)["open_reviews"] == []
    code, text = _invoke("review", "import", str(out), "-w", str(ws.root))
    assert code == 0 and "0 imported" in text and "2 already imported" in text


def test_human_output_names_the_next_steps_and_refused_files(tmp_path: Path) -> None:
    ws, _, _ = queue_workspace(tmp_path)
    out = tmp_path / "review"
    code, text = _invoke("review", "export", str(out), "--limit", "2", "-w", str(ws.root))
    assert code == 0 and "labelme" in text and "--flags reviewed" in text and "dataeng review import" in text
    items = json.loads((out / "manifest.json").read_text())["items"]
    (out / items[0]["file"]).write_text('{"shapes": [')
    code, text = _invoke("review", "import", str(out), "-w", str(ws.root))
    assert code == 0 and "1 refused" in text and items[0]["file"] in text
    code, text = _invoke("review", "close", "1", "-w", str(ws.root), "--json")
    assert code == 0 and json.loads(text)["states"] == {"abandoned": 2}


def test_cvat_export_with_polygons_through_the_cli(tmp_path: Path) -> None:
    ws, _, _ = queue_workspace(tmp_path)
    out = tmp_path / "cvat"
    code, text = _invoke("review", "export", str(out), "--format", "cvat", "--cvat-shapes", "polygon", "-w",
                         str(ws.root), "--json")
    assert code == 0, text
    assert json.loads(text)["items"] == 4 and "<polygon" in (out / "annotations.xml").read_text()
    assert len(list((out / "images").iterdir())) == 4


@pytest.mark.parametrize(("args", "message"), [
    (["review", "export", "{tmp}/full"], "new or empty"),
    (["review", "export", "{tmp}/x", "--queue", "eval"], None),
    (["review", "import", "{tmp}/nothing"], "no such file"),
    (["review", "import", "{tmp}/full/x.txt"], "expected a folder"),
    (["review", "close", "99"], "no review"),
])
def test_errors_are_one_line(tmp_path: Path, args: list[str], message: str | None) -> None:
    ws, _, _ = queue_workspace(tmp_path)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x.txt").write_text("x")
    code, text = _invoke(*[a.format(tmp=tmp_path) for a in args], "-w", str(ws.root))
    if message is None:  # the eval queue works too (4 unlabelled val/test images, no teacher)
        assert code == 0, text
        return
    assert code == 1 and message in text and "Traceback" not in text
