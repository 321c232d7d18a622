"""A review's bookkeeping: what one export sent to annotators, and what came back.

Each ``dataeng review export`` is one ``reviews`` row. Its ``items`` JSON lists the images
sent, one dict each (the registry's record; the ``manifest.json`` in the export folder
only maps files to these items)::

    {"n": 0, "file": "synth_00041_1f2e3d4c.json", "image": "synth_00041_1f2e3d4c.jpg",
     "original_name": "synth_00041.jpg", "image_id": 41, "image_sha256": "1f2e...",
     "label_id": 97, "sent": "reviews/3/sent/0.png", "prefill": "reviews/3/prefill/0.png",
     "prefill_source": "label",
     "score": 0.83, "watermark": 120, "state": "pending",
     "result_label_id": null, "edit_iou": null, "reason": null}

- ``label_id``: the pre-label (a ``needs_review`` pseudo-label, or the human label the
  issues queue suspects); null for an evaluation image.
- ``sent``: the exact mask the pre-fill was traced from (the pre-label; for the uncertain
  queue with its unsure pixels filled by the teacher's best guess); ``prefill``: the
  pre-fill as the annotator received it (the traced polygons drawn back). Both are
  workspace-relative PNGs; ``prefill_source`` is ``label``, ``teacher`` or ``empty``.
- ``watermark``: the highest label id when the export was made. A human label of the
  image with a higher id arrived after the export: the correction is refused as stale.
- ``state``: ``pending`` (with the annotators) -> ``imported`` (a human label came back,
  ``result_label_id``) | ``refused`` (stale, never importable) | ``abandoned`` (the
  review was closed by hand). A review is ``closed`` when no item is pending.
"""

from __future__ import annotations

from typing import Any, Literal

from sqlalchemy import select
from sqlalchemy.orm import Session

from dataeng.db.schema import Review, utcnow
from dataeng.errors import DataEngError

Queue = Literal["uncertain", "issues", "eval"]
ReviewFormat = Literal["labelme", "cvat", "labelstudio"]
ItemState = Literal["pending", "imported", "refused", "abandoned"]
QUEUES: tuple[Queue, ...] = ("uncertain", "issues", "eval")
FORMATS: tuple[ReviewFormat, ...] = ("labelme", "cvat", "labelstudio")


def items_of(review: Review) -> list[dict[str, Any]]:
    """The review's items (a copy: change them through :func:`update_item`)."""
    return [dict(item) for item in (review.items or [])]


def update_item(review: Review, n: int, **changes: Any) -> dict[str, Any]:
    """Change item ``n`` of a review, recount ``imported``, close the review when none is pending.

    The ``items`` JSON is reassigned (not mutated in place) so SQLAlchemy writes it.

    Returns:
        The updated item.
    """
    items = items_of(review)
    items[n].update(changes)
    review.items = items
    review.imported = sum(1 for item in items if item["state"] == "imported")
    if changes.get("state") == "imported":
        review.imported_at = utcnow()
    if not any(item["state"] == "pending" for item in items):
        review.status = "closed"
    return items[n]


def pending_image_ids(session: Session) -> set[int]:
    """Images that are out with annotators in an open review (not exported again meanwhile)."""
    pending: set[int] = set()
    for items in session.scalars(select(Review.items).where(Review.status == "open")):
        pending.update(item["image_id"] for item in items or [] if item.get("state") == "pending")
    return pending


def close_review(session: Session, review_id: int) -> Review:
    """Close a review by hand: its pending items are ``abandoned`` and may be exported again.

    Raises:
        DataEngError: no review has this id.
    """
    review = session.get(Review, review_id)
    if review is None:
        raise DataEngError("no review with this id", field="review", value=review_id)
    items = items_of(review)
    for item in items:
        if item["state"] == "pending":
            item["state"] = "abandoned"
    review.items = items
    review.status = "closed"
    return review


def review_summary(review: Review) -> dict[str, Any]:
    """A review row as JSON-ready data: counts by item state, edit IoUs of what came back."""
    items = items_of(review)
    states: dict[str, int] = {}
    for item in items:
        states[item["state"]] = states.get(item["state"], 0) + 1
    return {"id": review.id, "queue": review.queue, "format": review.format, "out_dir": review.out_dir,
            "status": review.status, "exported": review.exported, "imported": review.imported, "states": states}
