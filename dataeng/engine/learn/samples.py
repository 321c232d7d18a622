"""Samples: the (image, label files) pairs that training and evaluation read.

:func:`registry_samples` takes them from the registry (a split's active labels),
:func:`unlabelled_samples` the train images without one (semi-supervised training),
:func:`folder_samples` from an images/ + masks/ pair of folders outside it. No torch here:
the run bookkeeping and the fingerprint read samples without loading a model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import select

from dataeng.db.schema import Image, Label
from dataeng.errors import DataEngError

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from dataeng.workspace import Workspace

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


@dataclass(frozen=True)
class Sample:
    """One training or evaluation item; paths are absolute.

    ``weighted`` marks a pseudo-label whose pixels are weighted by the teacher's
    confidence (``conf_path``); human pixels weigh 1. ``external`` marks a mask from a
    folder outside the registry, where a binary 0/255 mask means class 1 (see
    :func:`external_mask`).
    """

    image_path: Path
    mask_path: Path | None = None
    alpha_path: Path | None = None
    conf_path: Path | None = None
    weighted: bool = False
    pseudo: bool = False
    image_id: int | None = None
    label_id: int | None = None
    external: bool = False


def registry_samples(workspace: Workspace, session: Session, split: str,
                     human_only: bool | None = None) -> list[Sample]:
    """Samples of a split's images that have an active label, ordered by label id.

    Args:
        split: ``train``, ``val`` or ``test``.
        human_only: only human labels; default True for val/test (they are scored only
            against human labels) and False for train (accepted pseudo-labels train too).
    """
    human_only = split != "train" if human_only is None else human_only
    q = (select(Label, Image).join(Image, Label.image_id == Image.id)
         .where(Image.split == split, Label.status == "active").order_by(Label.id))
    if human_only:
        q = q.where(Label.origin == "human")
    out = []
    for label, image in session.execute(q).tuples():
        out.append(Sample(
            image_path=workspace.image_path(image.store_path),
            mask_path=workspace.image_path(label.mask_path),
            alpha_path=workspace.image_path(label.alpha_path) if label.alpha_path else None,
            conf_path=workspace.image_path(label.conf_path) if label.conf_path else None,
            weighted=label.origin == "pseudo" and label.conf_path is not None,
            pseudo=label.origin == "pseudo", image_id=image.id, label_id=label.id,
        ))
    return out


def unlabelled_samples(workspace: Workspace, session: Session) -> list[Sample]:
    """The train split's images without an active label, by image id: what online semi-supervised
    training learns from without labels. Images whose pseudo-label awaits review count as
    unlabelled; val and test images never do (they measure the model)."""
    active = select(Label.image_id).where(Label.status == "active")
    q = select(Image).where(Image.split == "train", Image.id.not_in(active)).order_by(Image.id)
    return [Sample(image_path=workspace.image_path(image.store_path), image_id=image.id)
            for image in session.scalars(q)]


def folder_samples(images_dir: Path, masks_dir: Path) -> tuple[list[Sample], list[str]]:
    """Pair images with masks by file stem.

    Returns:
        (samples with a mask, image paths without one).

    Raises:
        DataEngError: a folder is missing or holds no images.
    """
    for d, name in ((images_dir, "images"), (masks_dir, "masks")):
        if not d.is_dir():
            raise DataEngError("not a folder", path=d, field=name)
    masks = {p.stem: p for p in sorted(masks_dir.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES}
    images = sorted(p for p in images_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise DataEngError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in this folder", path=images_dir)
    samples = [Sample(image_path=p, mask_path=masks[p.stem], external=True) for p in images if p.stem in masks]
    missing = [str(p) for p in images if p.stem not in masks]
    return samples, missing
