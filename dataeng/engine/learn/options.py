"""Train options: ``[train]`` of dataeng.toml plus the per-call options, resolved once."""

from __future__ import annotations

import math
from typing import Any

from pydantic import Field

from dataeng.config import TrainConfig, with_overrides


class TrainOptions(TrainConfig):
    """``[train]`` of dataeng.toml plus per-call options that are not workspace defaults."""

    augment: bool = Field(default=True, description="geometric and colour augmentation of train images")
    init_run: int | None = Field(default=None, ge=1, description=(
        "start from this finished train run's best checkpoint (same arch, encoder, depth and classes) "
        "instead of fresh weights: fine-tuning, and a warm-started round's student"))
    sample_budget: int | None = Field(default=None, ge=1, description=(
        "train for ceil(sample_budget / train images) epochs instead of `epochs`: the same number of images "
        "seen whatever the train set's size (used to compare runs on growing label sets fairly)"))


def resolve_options(base: TrainConfig, overrides: dict[str, Any] | None = None) -> TrainOptions:
    """Defaults from dataeng.toml, then the non-None ``overrides`` (validated).

    Raises:
        ConfigError: an unknown option or an invalid value, naming it.
    """
    return with_overrides(TrainOptions, base, overrides, "train")


def budgeted(options: TrainOptions, train_images: int) -> TrainOptions:
    """``options`` with ``epochs`` = ceil(sample_budget / train images) when a sample budget is set."""
    if options.sample_budget is None or train_images < 1:
        return options
    return options.model_copy(update={"epochs": max(1, math.ceil(options.sample_budget / train_images))})
