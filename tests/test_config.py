from __future__ import annotations

from pathlib import Path

import pytest

from dataeng.config import Config, load_config, parse_config, render_config
from dataeng.errors import ConfigError


def test_defaults_round_trip_through_toml(tmp_path: Path) -> None:
    config = Config(classes=["person", "hair"], aliases={"PEDESTRIAN": "person"})
    path = tmp_path / "dataeng.toml"
    path.write_text(render_config(config))
    assert load_config(path) == config
    assert config.split.ratios == (0.7, 0.2, 0.1)


@pytest.mark.parametrize(
    ("data", "match"),
    [
        ({"train": {"epoch": 3}}, r"field 'train.epoch': unknown key"),
        ({"colour": "red"}, r"field 'colour': unknown key"),
        ({"split": {"ratios": [0.5, 0.2, 0.2]}}, r"split.ratios.*sum to 1"),
        ({"train": {"image_size": [100, 128]}}, r"train.image_size.*multiples of 32"),
        ({"classes": []}, r"classes.*at least one class"),
        ({"classes": ["person"], "aliases": {"PED": "car"}}, r"alias 'PED' points at 'car'"),
        ({"pseudolabel": {"pixel_threshold": 1.5}}, r"pseudolabel.pixel_threshold"),
        ({"split": {"ratios": [0.7, 0.2, float("nan")]}}, r"split.ratios.*must be >= 0 and sum to 1"),
        ({"classes": ["person", "__ignore__"]}, r"classes.*'__ignore__' is a reserved label name"),
        ({"classes": ["_background_"]}, r"classes.*'_background_' is a reserved label name"),
        ({"aliases": {"background": "person"}}, r"alias 'background' is a reserved label name"),
        ({"review": {"max_vertices": 2}}, r"review.max_vertices"),
        ({"review": {"min_iou": 1.5}}, r"review.min_iou"),
        ({"review": {"simplify": 0.1}}, r"field 'review.simplify': unknown key"),
    ],
)
def test_invalid_config_is_refused_naming_the_key(data: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        parse_config(data)


def test_config_file_that_is_not_toml(tmp_path: Path) -> None:
    path = tmp_path / "dataeng.toml"
    path.write_text("classes = [person")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(path)


def test_train_keys_of_the_toml_reach_every_run(tmp_path: Path) -> None:
    from dataeng.engine.learn.options import resolve_options

    config = parse_config({"train": {"encoder_depth": 3, "human_share": 0.25}})
    options = resolve_options(config.train, {"epochs": 2})
    assert (options.encoder_depth, options.human_share, options.epochs) == (3, 0.25, 2)
    assert resolve_options(config.train, {"encoder_depth": 4}).encoder_depth == 4  # the CLI still overrides
    with pytest.raises(ConfigError, match="encoder_depth"):
        parse_config({"train": {"encoder_depth": 6}})


def test_config_file_that_is_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "dataeng.toml"
    path.write_bytes(b'classes = ["caf\xe9"]\n')
    with pytest.raises(ConfigError, match=r"dataeng.toml: not UTF-8 text \(byte 15"):
        load_config(path)

