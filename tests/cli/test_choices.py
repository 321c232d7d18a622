"""Options with a fixed set of values are enums: typer refuses anything else (exit 2, naming the choices), lists
them in ``--help``, and the values are the ones the engine accepts."""

from __future__ import annotations

import typing
from enum import Enum
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dataeng.cli import app
from dataeng.cli import choices as c

runner = CliRunner()


def _squash(text: str) -> str:
    """Drop rich's box drawing and line wrapping so a message split over lines still matches."""
    return " ".join(text.replace("│", " ").replace("╭", " ").replace("╰", " ").replace("─", "").split())


@pytest.mark.parametrize(("args", "option", "choices"), [
    (["train", "--device", "tpu"], "--device", c.Device),
    (["train", "--loss", "dice"], "--loss", c.Loss),
    (["train", "--semi", "meanteacher"], "--semi", c.Semi),
    (["round", "--semi", "cps"], "--semi", c.Semi),
    (["evaluate", "--split", "train"], "--split", c.EvalSplit),
    (["evaluate", "--device", "tpu"], "--device", c.Device),
    (["pseudolabel", "--tta", "rotate"], "--tta", c.Tta),
    (["pseudolabel", "--device", "gpu"], "--device", c.Device),
    (["round", "--device", "gpu"], "--device", c.Device),
    (["review", "export", "{tmp}/x", "--format", "foo"], "--format", c.ReviewFormat),
    (["review", "export", "{tmp}/x", "--format", "coco"], "--format", c.ReviewFormat),
    (["review", "export", "{tmp}/x", "--queue", "all"], "--queue", c.Queue),
    (["review", "export", "{tmp}/x", "--cvat-shapes", "box"], "--cvat-shapes", c.CvatShapes),
    (["review", "export", "{tmp}/x", "--shapes", "rle"], "--shapes", c.LabelStudioShapes),
    (["review", "export", "{tmp}/x", "--device", "tpu"], "--device", c.Device),
    (["export", "labels", "{tmp}/x", "--format", "yolo"], "--format", c.LabelFormat),
    (["export", "labels", "{tmp}/x", "--split", "holdout"], "--split", c.LabelSplit),
    (["export", "labels", "{tmp}/x", "--origin", "machine"], "--origin", c.Origin),
    (["predict", "{tmp}/in", "--out", "{tmp}/o", "--as", "jpeg"], "--as", c.OutputKind),
    (["predict", "{tmp}/in", "--out", "{tmp}/o", "--device", "tpu"], "--device", c.Device),
], ids=lambda v: v if isinstance(v, str) else None)
def test_invalid_choice_exits_2_and_names_the_choices(tmp_path: Path, args: list[str], option: str,
                                                      choices: type[Enum]) -> None:
    result = runner.invoke(app, [a.format(tmp=tmp_path) for a in args])
    assert result.exit_code == 2, result.output
    text = _squash(result.output)
    assert f"Invalid value for '{option}'" in text, text
    assert all(f"'{choice.value}'" in text for choice in choices), text
    assert not (tmp_path / "x").exists() and not (tmp_path / "o").exists()  # refused before doing anything


@pytest.mark.parametrize(("args", "metavar"), [
    (["train", "--help"], "<auto|cpu|cuda|mps>"),
    (["train", "--help"], "<segmentation|matting>"),
    (["train", "--help"], "<none|fixmatch|unimatch>"),
    (["evaluate", "--help"], "<val|test>"),
    (["pseudolabel", "--help"], "<flip|none>"),
    (["review", "export", "--help"], "<labelme|cvat|labelstudio>"),
    (["review", "export", "--help"], "<brush|polygon>"),
    (["review", "export", "--help"], "<uncertain|issues|eval>"),
    (["review", "export", "--help"], "<mask|polygon>"),
    (["export", "labels", "--help"], "<labelme|cvat|coco|supervisely|labelstudio|masks>"),
    (["export", "labels", "--help"], "<train|val|test|all>"),
    (["export", "labels", "--help"], "<human|pseudo|all>"),
    (["predict", "--help"], "<mask|alpha|cutout|overlay>"),
])
def test_help_lists_the_choices(args: list[str], metavar: str) -> None:
    result = runner.invoke(app, args, env={"COLUMNS": "200"})  # wide enough not to wrap a metavar
    assert result.exit_code == 0 and metavar in result.output, result.output


def test_choices_are_str_enums() -> None:
    enums = [v for v in vars(c).values() if isinstance(v, type) and issubclass(v, Enum) and v.__module__ == c.__name__]
    assert len(enums) == 15
    for enum in enums:
        assert issubclass(enum, str) and all(member.value == member.name for member in enum), enum


def _literal(tp: object) -> set[str]:
    return set(typing.get_args(tp))


def test_choices_match_what_the_engine_accepts() -> None:
    from dataeng.annotation import formats
    from dataeng.config import PseudolabelConfig, TrainConfig
    from dataeng.engine.export_labels import FORMAT_NAMES
    from dataeng.engine.review.items import Queue, ReviewFormat
    from dataeng.engine.serve.predict import OutputKind

    fields = {**TrainConfig.model_fields, **{f"pseudolabel.{k}": v for k, v in PseudolabelConfig.model_fields.items()}}
    assert {e.value for e in c.Device} == _literal(fields["device"].annotation)
    assert {e.value for e in c.Loss} == _literal(fields["loss"].annotation)
    assert {e.value for e in c.Semi} == _literal(fields["semi"].annotation)
    assert {e.value for e in c.Tta} == _literal(fields["pseudolabel.tta"].annotation)
    assert {e.value for e in c.LabelFormat} == set(FORMAT_NAMES)
    assert {e.value for e in c.IngestFormat} == set(formats.FORMATS)
    assert {e.value for e in c.ReviewFormat} == _literal(ReviewFormat)
    assert {e.value for e in c.Queue} == _literal(Queue)
    assert {e.value for e in c.OutputKind} == _literal(OutputKind)


def test_optional_choices_stay_optional() -> None:
    """``value`` keeps None (meaning: use dataeng.toml) and gives the engine plain strings."""
    assert c.value(None) is None
    assert c.value(c.Device.cuda) == "cuda" and type(c.value(c.Device.cuda)) is str
