"""Every fixed set of option values, as ``StrEnum``s (both ``str`` and ``Enum``): typer validates them (exit 2,
naming the choices) and lists them in ``--help``.
Commands pass ``.value`` (or :func:`value` for optional ones) to the engine.

The values mirror the engine's ``Literal`` types; ``tests/cli/test_choices.py`` keeps them in step.
"""

from __future__ import annotations

from enum import Enum, StrEnum


class Device(StrEnum):
    """PyTorch device (``[train] device``)."""

    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"
    mps = "mps"


class Loss(StrEnum):
    """Training loss (``[train] loss``)."""

    segmentation = "segmentation"
    matting = "matting"


class Semi(StrEnum):
    """Online semi-supervised training (``[train] semi``)."""

    none = "none"
    fixmatch = "fixmatch"
    unimatch = "unimatch"


class Tta(StrEnum):
    """Test-time augmentation of the pseudo-labelling teacher (``[pseudolabel] tta``)."""

    flip = "flip"
    none = "none"


class EvalSplit(StrEnum):
    """The registry split ``dataeng evaluate`` scores."""

    val = "val"
    test = "test"


class LabelSplit(StrEnum):
    """The registry split ``dataeng export labels`` writes."""

    train = "train"
    val = "val"
    test = "test"
    all = "all"


class Origin(StrEnum):
    """Which labels ``dataeng export labels`` writes."""

    human = "human"
    pseudo = "pseudo"
    all = "all"


class LabelFormat(StrEnum):
    """Annotation formats of ``dataeng export labels``."""

    labelme = "labelme"
    cvat = "cvat"
    coco = "coco"
    supervisely = "supervisely"
    labelstudio = "labelstudio"
    masks = "masks"


class IngestFormat(StrEnum):
    """Annotation formats ``dataeng ingest --format`` reads (default: detected per file)."""

    labelme = "labelme"
    cvat = "cvat"
    coco = "coco"
    supervisely = "supervisely"
    mask_folder = "mask_folder"
    alpha_folder = "alpha_folder"
    labelstudio = "labelstudio"


class ReviewFormat(StrEnum):
    """Annotation tools of ``dataeng review export``."""

    labelme = "labelme"
    cvat = "cvat"
    labelstudio = "labelstudio"


class Queue(StrEnum):
    """Review queues of ``dataeng review export``."""

    uncertain = "uncertain"
    issues = "issues"
    eval = "eval"


class CvatShapes(StrEnum):
    """How ``dataeng review export --format cvat`` writes its pre-labels."""

    mask = "mask"
    polygon = "polygon"


class LabelStudioShapes(StrEnum):
    """How ``dataeng review export --format labelstudio`` writes its predictions."""

    brush = "brush"
    polygon = "polygon"


class OutputKind(StrEnum):
    """What ``dataeng predict --as`` writes per image."""

    mask = "mask"
    alpha = "alpha"
    cutout = "cutout"
    overlay = "overlay"


def value(choice: Enum | None) -> str | None:
    """The engine's string for an optional choice: None stays None (use dataeng.toml)."""
    return None if choice is None else str(choice.value)


class CocoAnnotations(StrEnum):
    """How ``dataeng export labels --format coco`` splits a mask into annotations."""

    instances = "instances"
    semantic = "semantic"
