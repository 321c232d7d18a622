"""Adding a human label to the registry: the one place the human-label rules live.

- The mask (and alpha) file is written under its label id, then the row is committed
  with the caller's transaction, so a crash leaves at worst an orphan file.
- A human label always wins over a pseudo-label (which becomes ``superseded``).
- Importing the same mask again adds nothing (compared by the mask's sha256).
- A newer human label for an image replaces an older one (``superseded``), unless the
  caller asks to refuse that (the review import does: no silent overwrite).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import select
from sqlalchemy.orm import Session

from dataeng.db.schema import Label
from dataeng.errors import RegistryError
from dataeng.storage import atomic_write_bytes
from dataeng.workspace import Workspace

Outcome = Literal["added", "unchanged"]


@dataclass(frozen=True)
class EncodedLabel:
    """A label ready to store: PNG bytes of the class-index mask and optional alpha."""

    mask_png: bytes
    mask_sha256: str
    alpha_png: bytes | None = None

    @classmethod
    def from_png(cls, mask_png: bytes, alpha_png: bytes | None = None) -> EncodedLabel:
        return cls(mask_png, hashlib.sha256(mask_png).hexdigest(), alpha_png)


def active_label(session: Session, image_id: int) -> Label | None:
    """The image's active label, if any."""
    return session.scalars(select(Label).where(Label.image_id == image_id, Label.status == "active")).one_or_none()


def add_human_label(
    session: Session,
    workspace: Workspace,
    image_id: int,
    encoded: EncodedLabel,
    *,
    source: str,
    annotation_path: str | None = None,
    meta: dict[str, Any] | None = None,
    batch_id: int | None = None,
    parent_id: int | None = None,
    edit_iou: float | None = None,
    replace_human: bool = True,
) -> tuple[Outcome, Label]:
    """Add a human label as the image's active label, inside the caller's transaction.

    Returns:
        ("unchanged", existing label) when the same mask is already active, else
        ("added", new label).

    Raises:
        RegistryError: the image already has a different active human label and
            ``replace_human`` is False.
    """
    current = active_label(session, image_id)
    if current is not None and current.origin == "human":
        if (current.meta or {}).get("mask_sha256") == encoded.mask_sha256:
            return "unchanged", current
        if not replace_human:
            raise RegistryError(
                f"image already has human label {current.id} (source {current.source}); not overwritten",
                path=annotation_path,
                field="image_id",
                value=image_id,
            )
    if current is not None:
        current.status = "superseded"
        session.flush()  # the partial unique index allows one active label per image
    label = Label(
        image_id=image_id,
        origin="human",
        source=source,
        mask_path="",
        status="active",
        parent_id=parent_id,
        edit_iou=edit_iou,
        annotation_path=annotation_path,
        meta={**(meta or {}), "mask_sha256": encoded.mask_sha256},
        batch_id=batch_id,
    )
    session.add(label)
    session.flush()
    label.mask_path = workspace.mask_rel(label.id, "masks")
    atomic_write_bytes(workspace.root / label.mask_path, encoded.mask_png)
    if encoded.alpha_png is not None:
        label.alpha_path = workspace.mask_rel(label.id, "alpha")
        atomic_write_bytes(workspace.root / label.alpha_path, encoded.alpha_png)
    return "added", label
