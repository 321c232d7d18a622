"""``manifest.json`` of a review export: which file is which registered image and pre-label.

The manifest travels with the files to the annotators and comes back with them. It maps
each annotation file (Labelme: the JSON; CVAT: the image name inside ``annotations.xml``)
to an item of the review row, by item number and image sha256. The registry's row stays
the authority on pre-labels and states: an edited manifest can only point a file at
another item of the same review, and an image sha256 the registry does not know is
refused.

Example::

    {"dataeng_review": 1, "review_id": 3, "queue": "uncertain", "format": "labelme",
     "workspace": "/data/ws", "created_at": "2026-11-24T10:00:00+00:00",
     "items": [{"n": 0, "file": "a_1f2e3d4c.json", "image": "a_1f2e3d4c.jpg",
                "original_name": "a.jpg", "image_sha256": "1f2e...", "image_id": 41,
                "label_id": 97, "score": null}]}
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from dataeng.errors import InputError
from dataeng.storage import atomic_write_text

MANIFEST_NAME = "manifest.json"
MANIFEST_VERSION = 1


@dataclass(frozen=True)
class ManifestItem:
    """One exported image: its annotation file, image file, registry identity and pre-label."""

    n: int
    file: str
    image: str
    original_name: str
    image_sha256: str
    image_id: int
    label_id: int | None
    score: float | None = None


@dataclass(frozen=True)
class Manifest:
    """A whole manifest; ``items`` holds the entries that passed validation."""

    review_id: int
    queue: str
    format: str
    workspace: str
    created_at: str
    items: tuple[ManifestItem, ...]


def write_manifest(path: Path, manifest: Manifest) -> None:
    """Write ``manifest`` as indented JSON, atomically."""
    data = {"dataeng_review": MANIFEST_VERSION, **asdict(manifest)}
    data["items"] = [asdict(item) for item in manifest.items]
    atomic_write_text(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def _int(raw: dict[str, Any], key: str, path: Path, where: str, optional: bool = False) -> int | None:
    value = raw.get(key)
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InputError("expected a non-negative integer", path=path, field=f"{where}{key}", value=value)
    return value


def _str(raw: dict[str, Any], key: str, path: Path, where: str) -> str:
    value = raw.get(key)
    if not isinstance(value, str) or not value:
        raise InputError("expected a non-empty string", path=path, field=f"{where}{key}", value=value)
    return value


def _item(raw: Any, i: int, path: Path) -> ManifestItem:
    where = f"items[{i}]."
    if not isinstance(raw, dict):
        raise InputError("expected an object", path=path, field=f"items[{i}]", value=raw)
    sha = _str(raw, "image_sha256", path, where)
    if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
        raise InputError("expected a sha256 hex digest", path=path, field=f"{where}image_sha256", value=sha)
    score = raw.get("score")
    if score is not None and (isinstance(score, bool) or not isinstance(score, int | float)):
        raise InputError("expected a number or null", path=path, field=f"{where}score", value=score)
    return ManifestItem(
        n=_int(raw, "n", path, where) or 0,
        file=_str(raw, "file", path, where),
        image=_str(raw, "image", path, where),
        original_name=str(raw.get("original_name") or ""),
        image_sha256=sha,
        image_id=_int(raw, "image_id", path, where) or 0,
        label_id=_int(raw, "label_id", path, where, optional=True),
        score=None if score is None else float(score),
    )


def read_manifest(path: Path) -> tuple[Manifest, list[InputError]]:
    """Read and check a manifest.

    Returns:
        The manifest with its valid items, and one error per invalid item (the caller
        records them; the other items import).

    Raises:
        InputError: unreadable or truncated JSON, not a dataeng review manifest, or a bad
            ``review_id`` (nothing in the file can be trusted then).
    """
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"cannot read: {e}", path=path) from e
    except json.JSONDecodeError as e:
        raise InputError(f"invalid JSON ({e.msg}); fix it, or delete it to match images by sha256", path=path,
                         field=f"line {e.lineno} column {e.colno}") from e
    if not isinstance(data, dict) or "dataeng_review" not in data:
        raise InputError("not a dataeng review manifest (no 'dataeng_review' key)", path=path)
    if data["dataeng_review"] != MANIFEST_VERSION:
        raise InputError(f"unsupported manifest version; expected {MANIFEST_VERSION}", path=path,
                         field="dataeng_review", value=data["dataeng_review"])
    review_id = _int(data, "review_id", path, "")
    raw_items = data.get("items")
    if not isinstance(raw_items, list):
        raise InputError("expected a list", path=path, field="items", value=type(raw_items).__name__)
    items: list[ManifestItem] = []
    problems: list[InputError] = []
    for i, raw in enumerate(raw_items):
        try:
            items.append(_item(raw, i, path))
        except InputError as e:
            problems.append(e)
    manifest = Manifest(review_id=review_id or 0, queue=str(data.get("queue", "")), format=str(data.get("format", "")),
                        workspace=str(data.get("workspace", "")), created_at=str(data.get("created_at", "")),
                        items=tuple(items))
    return manifest, problems
