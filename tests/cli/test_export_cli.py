"""``dataeng export labels --format coco --coco-annotations instances|semantic`` through the CLI."""

from __future__ import annotations

import json
import typing
from pathlib import Path

from typer.testing import CliRunner

from dataeng.cli import app
from dataeng.cli.export import CocoAnnotations
from tests.cli.test_choices import _squash
from tests.engine.ingest.test_coco_export import coco_workspace

runner = CliRunner()


def _annotations(out: Path) -> list[tuple[int, int, int]]:
    data = json.loads((out / "annotations" / "instances_default.json").read_text())
    return [(a["image_id"], a["category_id"], a["iscrowd"]) for a in data["annotations"]]


def test_instances_by_default_semantic_on_request(tmp_path: Path) -> None:
    ws, masks = coco_workspace(tmp_path)
    runs = {"default": [], "instances": ["--coco-annotations", "instances"], "semantic": ["--coco-annotations",
                                                                                          "semantic"]}
    for name, extra in runs.items():
        result = runner.invoke(app, ["export", "labels", str(tmp_path / name), "--format", "coco", "-w", str(ws.root),
                                     *extra])
        assert result.exit_code == 0, result.output
        assert f"exported {len(masks)} labels as coco" in result.output
    assert _annotations(tmp_path / "default") == _annotations(tmp_path / "instances")
    instances, semantic = _annotations(tmp_path / "instances"), _annotations(tmp_path / "semantic")
    for image_id in range(1, len(masks) + 1):
        assert sorted((c, k) for i, c, k in semantic if i == image_id) == [(1, 0), (1, 1), (2, 0), (2, 1)]
        assert sorted((c, k) for i, c, k in instances if i == image_id) == [(1, 0)] * 4 + [(1, 1)] * 2 + [
            (2, 0)] * 3 + [(2, 1)] * 2


def test_coco_annotations_choices_and_other_formats(tmp_path: Path) -> None:
    result = runner.invoke(app, ["export", "labels", str(tmp_path / "x"), "--format", "coco",
                                 "--coco-annotations", "panoptic"])
    assert result.exit_code == 2, result.output
    text = _squash(result.output)
    assert "Invalid value for '--coco-annotations'" in text and all(f"'{c.value}'" in text for c in CocoAnnotations)
    help_text = runner.invoke(app, ["export", "labels", "--help"], env={"COLUMNS": "200"}).output
    assert "<instances|semantic>" in help_text
    ws, _ = coco_workspace(tmp_path)
    result = runner.invoke(app, ["export", "labels", str(tmp_path / "y"), "--format", "labelme",
                                 "--coco-annotations", "semantic", "-w", str(ws.root)])
    assert result.exit_code != 0 and "--format coco only" in _squash(result.output)
    assert not (tmp_path / "y").exists()


def test_cli_values_are_what_the_writer_accepts() -> None:
    from dataeng.annotation.formats import coco

    assert {c.value for c in CocoAnnotations} == set(typing.get_args(coco.CocoAnnotations))
