"""``dataeng export labels``: the registry's active labels, out in any annotation format.

Images go alongside (the format writers copy them; records are named ``<split>/<stem>_<sha8><ext>``,
so that two source files with the same name never collide; the masks writer flattens the
split away, CVAT writes it as each image's ``subset`` and Label Studio puts the images under
``images/<split>/``: human labels as annotations, pseudo-labels as predictions), ignore regions as
``__ignore__`` shapes (COCO: crowd regions marked ``dataeng_ignore``), provenance (label
id, origin, source, run, round) in each format's metadata. Ingesting the export into a
fresh workspace reproduces the masks and, because splits are a hash of image content,
the splits.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from sqlalchemy import select
from sqlalchemy.orm import Session

from dataeng.annotation.formats import get_format
from dataeng.annotation.formats.coco import CocoAnnotations
from dataeng.annotation.masks import read_alpha, read_mask
from dataeng.annotation.types import ExportRecord, LabelMap
from dataeng.db.schema import Image, Label
from dataeng.errors import DataEngError, NothingToDoError
from dataeng.progress import NullProgress, Progress
from dataeng.workspace import Workspace

FORMAT_NAMES = {
    "labelme": "labelme",
    "cvat": "cvat",
    "coco": "coco",
    "supervisely": "supervisely",
    "labelstudio": "labelstudio",
    "masks": "mask_folder",
}


@dataclass(frozen=True)
class ExportSummary:
    out: Path
    format: str
    labels: int
    files: int


def export_labels(
    workspace: Workspace,
    session: Session,
    out: Path,
    fmt: Literal["labelme", "cvat", "coco", "supervisely", "labelstudio", "masks"],
    *,
    split: Literal["train", "val", "test", "all"] = "all",
    origin: Literal["human", "pseudo", "all"] = "all",
    overwrite: bool = False,
    coco_annotations: CocoAnnotations | None = None,
    progress: Progress | None = None,
) -> ExportSummary:
    """Write the active labels (filtered by split and origin) to ``out`` in format ``fmt``.

    Args:
        overwrite: write into a folder that is not empty (files of the same name are
            replaced, others stay); without it such a folder is refused, so an export never
            mixes silently with an older one.
        coco_annotations: COCO only: ``instances`` (default: one annotation per connected
            region of a class) or ``semantic`` (one per class per image).

    Raises:
        DataEngError: ``out`` is a file, or a folder that is not empty (without ``overwrite``);
            ``coco_annotations`` with a format other than COCO.
        NothingToDoError: no label matches the filters.
    """
    if coco_annotations is not None and fmt != "coco":
        raise DataEngError("--coco-annotations is an option of --format coco only", field="format", value=fmt)
    if out.exists() and (not out.is_dir() or (not overwrite and any(out.iterdir()))):
        raise DataEngError("the export folder must be new or empty (or pass --overwrite)", path=out)
    progress = progress or NullProgress()
    stmt = select(Label, Image).join(Image, Image.id == Label.image_id).where(Label.status == "active")
    if split != "all":
        stmt = stmt.where(Image.split == split)
    if origin != "all":
        stmt = stmt.where(Label.origin == origin)
    rows = session.execute(stmt.order_by(Image.split, Label.id)).all()
    if not rows:
        raise NothingToDoError(f"no active labels with split={split} origin={origin}; nothing exported")
    progress.task("exporting labels", len(rows))
    records = []
    for label, image in rows:
        stem = Path(image.original_path).stem
        ext = Path(image.store_path).suffix
        records.append(
            ExportRecord(
                image_name=f"{image.split}/{stem}_{image.sha256[:8]}{ext}",
                width=image.width,
                height=image.height,
                mask=read_mask(workspace.image_path(label.mask_path)),
                alpha=read_alpha(workspace.image_path(label.alpha_path)) if label.alpha_path else None,
                image_path=workspace.image_path(image.store_path),
                meta={
                    "label_id": label.id,
                    "origin": label.origin,
                    "source": label.source,
                    "run_id": label.run_id,
                    "round": label.round,
                    "split": image.split,
                    "image_sha256": image.sha256,
                },
            )
        )
        progress.advance()
    label_map = LabelMap(workspace.config.classes, workspace.config.aliases)
    options: dict[str, Any] = {}
    if fmt == "coco":
        options["coco_annotations"] = coco_annotations or "instances"
    files = get_format(FORMAT_NAMES[fmt]).write(out, records, label_map, **options)
    if fmt == "masks" and any(r.alpha is not None for r in records):
        # provenance is already in the masks' dataeng.json: no meta, so it is not overwritten
        mattes = [dataclasses.replace(r, meta={}) for r in records if r.alpha is not None]
        files += get_format("alpha_folder").write(out, mattes, label_map, copy_images=False)
    return ExportSummary(out=out, format=fmt, labels=len(records), files=len(files))
