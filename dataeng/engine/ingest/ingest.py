"""Register images (and, through the annotation formats, their labels).

Two phases:
1. In a process pool, each file is read, hashed, fully decoded, pHashed and placed in
   the content-addressed store (see :mod:`dataeng.engine.ingest.inspect_image`).
2. In the main process, in sha256 order (so the result does not depend on the order
   files were given or found), rows are written in transactions of ``chunk`` images:
   exact duplicates are skipped, near duplicates join the nearest image's group and
   split, new groups get the split of their key.

A kill during phase 1 leaves only orphan store files (reused by the next ingest or
removed by ``dataeng doctor``); a kill during phase 2 loses only the transaction in
flight. Running ingest again completes the batch without duplicates.
"""

from __future__ import annotations

import glob
import hashlib
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import bindparam, insert, or_, select, update
from sqlalchemy.orm import Session

from dataeng.db.locks import serialise
from dataeng.db.schema import IMAGES_TABLE, Batch, Image, Problem, ProblemKind, utcnow
from dataeng.engine.ingest.annotations import (
    LabelSummary,
    discover,
    image_files_of,
    read_all,
    record_problems,
    register_labels,
)
from dataeng.engine.ingest.dedup import find_near_many, pairwise_near, signed_chunks
from dataeng.engine.ingest.inspect_image import IMAGE_EXTENSIONS, Inspected, Refused, inspect_image
from dataeng.engine.ingest.pool import process_pool
from dataeng.engine.ingest.split import split_for
from dataeng.engine.lifecycle import lifecycle
from dataeng.errors import InputError
from dataeng.progress import NullProgress, Progress
from dataeng.storage import atomic_write_bytes
from dataeng.workspace import Workspace

DEFAULT_CHUNK = 500


@dataclass
class IngestSummary:
    """What an ingest did; ``to_dict`` is the ``--json`` output."""

    batch_id: int
    scanned: int = 0
    added: int = 0
    duplicates: int = 0
    near_duplicates: int = 0
    refused: int = 0
    per_split: dict[str, int] = field(default_factory=lambda: {"train": 0, "val": 0, "test": 0})
    problems: list[str] = field(default_factory=list)
    image_ids: dict[str, int] = field(default_factory=dict, repr=False)
    labels: LabelSummary = field(default_factory=LabelSummary)

    def to_dict(self) -> dict[str, Any]:
        return {
            "batch_id": self.batch_id,
            "scanned": self.scanned,
            "added": self.added,
            "duplicates": self.duplicates,
            "near_duplicates": self.near_duplicates,
            "refused": self.refused,
            "per_split": dict(self.per_split),
            "problems": list(self.problems) + list(self.labels.problems),
            "labels": {
                "annotation_sets": self.labels.annotation_files,
                "added": self.labels.labels_added,
                "unchanged": self.labels.labels_unchanged,
                "refused": self.labels.refused,
                "notices": self.labels.notices[:100],
            },
        }


def collect_images(inputs: Sequence[str | Path], exclude: Sequence[Path] = ()) -> tuple[list[Path], list[Refused]]:
    """Expand folders (recursively), files and globs into image paths.

    Folders contribute files with an image extension (hidden files skipped); a path given
    explicitly is taken whatever its extension, so a bad one is refused with a reason.
    Files under ``exclude`` (label folders: masks, mattes) are not images to register.
    Returns the unique paths in a stable order, and the inputs that matched nothing.
    """
    skip = tuple(str(e) + os.sep for e in exclude)
    found: dict[str, Path] = {}
    missing: list[Refused] = []

    def add(p: Path) -> None:
        key = os.path.realpath(p)
        if not (skip and (key + os.sep).startswith(skip)) and not (skip and key.startswith(skip)):
            found.setdefault(key, p)

    for raw in inputs:
        text = str(raw)
        p = Path(text)
        if p.is_dir():
            for dirpath, dirnames, filenames in os.walk(p, followlinks=False):
                dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
                if skip and (os.path.realpath(dirpath) + os.sep).startswith(skip):
                    dirnames[:] = []
                    continue
                base = Path(dirpath)
                for d in dirnames:
                    if Path(d).suffix.lower() in IMAGE_EXTENSIONS:
                        add(base / d)  # a folder named like an image: refused with a reason
                for name in sorted(filenames):
                    if not name.startswith(".") and Path(name).suffix.lower() in IMAGE_EXTENSIONS:
                        add(base / name)
        elif p.exists() or p.is_symlink():
            add(p)
        elif glob.has_magic(text):
            matches = sorted(glob.glob(text, recursive=True))
            if not matches:
                missing.append(Refused(text, ProblemKind.NO_MATCH, "path", text, "glob matched no files"))
            for m in matches:
                mp = Path(m)
                if mp.is_dir():
                    for sub in collect_images([mp], exclude)[0]:
                        add(sub)
                elif mp.suffix.lower() in IMAGE_EXTENSIONS:
                    add(mp)
        else:
            missing.append(Refused(text, ProblemKind.NOT_FOUND, "path", text, "no such file or folder"))
    return list(found.values()), missing


def ingest(
    workspace: Workspace,
    session: Session,
    inputs: Sequence[str | Path],
    *,
    workers: int | None = None,
    chunk: int = DEFAULT_CHUNK,
    progress: Progress | None = None,
    strict: bool = False,
    fmt: str | None = None,
) -> IngestSummary:
    """Register the images under ``inputs`` in the workspace.

    Args:
        session: open registry session; committed per chunk.
        workspace: the workspace (store root, config).
        inputs: folders, files or glob patterns.
        workers: processes for phase 1 (default: ``ingest.workers`` or one per core).
        chunk: images per registry transaction.
        progress: progress reporter.
        strict: raise :class:`InputError` on the first refused input.
        fmt: read annotations as this format instead of auto-detecting them.

    Returns:
        An :class:`IngestSummary`. Refused inputs are ``problems`` rows of the batch.

    Example::

        with ws.session() as s:
            summary = ingest(ws, s, ["photos/"])
    """
    progress = progress or NullProgress()
    cfg = workspace.config.ingest
    with lifecycle(session, Batch(kind="ingest", args={"inputs": [str(i) for i in inputs]})) as batch:
        summary = IngestSummary(batch_id=batch.id)

        sets = discover(inputs, fmt)
        items, ann_problems = read_all(sets, summary.labels)
        if strict and ann_problems:
            raise ann_problems[0]
        items = _materialise_embedded(workspace, items)
        paths, refused = collect_images(inputs, sets.label_dirs)
        known_paths = {os.path.realpath(p) for p in paths}
        for extra in image_files_of(items):  # images an annotation names outside the inputs
            if os.path.realpath(extra) not in known_paths:
                known_paths.add(os.path.realpath(extra))
                paths.append(extra)
        summary.scanned = len(paths)
        inspected = _inspect_all(paths, workspace, cfg.workers if workers is None else workers, cfg, progress, refused)
        if strict and refused:
            r = refused[0]
            raise InputError(r.message, path=r.path, field=r.field, value=r.value)
        _record_problems(session, batch.id, refused, summary)
        session.commit()

        inspected.sort(key=lambda r: (r.sha256, r.path))
        progress.task("registering", len(inspected))
        for start in range(0, len(inspected), chunk):
            part = inspected[start : start + chunk]
            _register_chunk(workspace, session, batch.id, part, summary)
            session.commit()
            progress.advance(len(part))

        record_problems(session, batch.id, ann_problems, summary.labels)
        session.commit()
        register_labels(
            workspace,
            session,
            batch.id,
            items,
            summary.image_ids,
            summary.labels,
            workers=cfg.workers if workers is None else workers,
            progress=progress,
        )
        batch.summary = summary.to_dict()
    return summary


def _materialise_embedded(workspace: Workspace, items: list[tuple[str, object]]) -> list[tuple[str, object]]:
    """Images that exist only inside an annotation (labelme imageData) become files to ingest."""
    out = []
    for name, item in items:
        data = getattr(item, "image_data", None)
        image_path = getattr(item, "image_path", None)
        if data and (image_path is None or not Path(image_path).is_file()):
            sha = hashlib.sha256(data).hexdigest()
            suffix = Path(getattr(item, "image_name", "") or "x.png").suffix.lower() or ".png"
            tmp = workspace.root / "tmp" / "embedded" / f"{sha}{suffix}"
            if not tmp.exists():
                atomic_write_bytes(tmp, data)
            item = item.replace(image_path=tmp)  # type: ignore[attr-defined]
        out.append((name, item))
    return out


def _inspect_all(
    paths: list[Path],
    workspace: Workspace,
    workers: int,
    cfg: Any,
    progress: Progress,
    refused: list[Refused],
) -> list[Inspected]:
    progress.task("reading images", len(paths))
    args = (str(workspace.store), cfg.link, cfg.max_image_pixels)
    results: Iterable[Inspected | Refused]
    n_workers = workers or os.cpu_count() or 1
    inspected: list[Inspected] = []
    if n_workers <= 1 or len(paths) < 16:
        results = (inspect_image(str(p), *args) for p in paths)
        for r in results:
            (inspected if isinstance(r, Inspected) else refused).append(r)  # type: ignore[arg-type]
            progress.advance()
        return inspected
    chunksize = max(1, min(32, len(paths) // (n_workers * 8)))
    with process_pool(n_workers) as pool:
        for r in pool.map(_inspect_star, ((str(p), *args) for p in paths), chunksize=chunksize):
            (inspected if isinstance(r, Inspected) else refused).append(r)  # type: ignore[arg-type]
            progress.advance()
    return inspected


def _inspect_star(a: tuple[str, str, str, int]) -> Inspected | Refused:
    return inspect_image(*a)


def _record_problems(session: Session, batch_id: int, refused: list[Refused], summary: IngestSummary) -> None:
    for r in refused:
        session.add(
            Problem(batch_id=batch_id, path=r.path, kind=r.kind, field=r.field, value=r.value, message=r.message)
        )
        summary.problems.append(r.line())
    summary.refused += len(refused)


_INSERT_IMAGE = insert(IMAGES_TABLE)
"""Core executemany of a chunk's images (no ORM objects: 2,000 rows a chunk stay cheap on both backends)."""
_SET_GROUP = (update(IMAGES_TABLE).where(IMAGES_TABLE.c.id == bindparam("image_id"))
              .values(group_id=bindparam("root_id")))


@dataclass(frozen=True)
class _Group:
    """The near-duplicate group a new image joins: a registered group (its root's id), or one whose
    root is new in this chunk (its index in the chunk's new images)."""

    split: str
    registered_id: int | None = None
    chunk_root: int | None = None


def _register_chunk(
    workspace: Workspace, session: Session, batch_id: int, part: list[Inspected], summary: IngestSummary
) -> None:
    """Insert one chunk of inspected images inside the current transaction.

    Group assignment per image, in sha256 order: the nearest registered image within
    the radius (its group and split), else the nearest earlier image of this chunk,
    else a new group whose key is the image's own sha256.
    """
    serialise(session, "images")  # near duplicates arriving in two ingests at once must join one group
    shas = {r.sha256 for r in part} | {r.source_sha256 for r in part}
    known: dict[str, int] = {}
    for image_id, sha, source_sha in session.execute(
        select(Image.id, Image.sha256, Image.source_sha256).where(
            or_(Image.sha256.in_(shas), Image.source_sha256.in_(shas))
        )
    ):
        known[sha] = image_id
        known[source_sha] = image_id

    config = workspace.config
    radius = config.ingest.near_duplicate_distance
    fresh: list[Inspected] = []
    same_as_fresh: list[Inspected] = []  # exact duplicates of an image new in this chunk
    fresh_shas: set[str] = set()
    for r in part:
        existing = known.get(r.sha256) or known.get(r.source_sha256)
        if existing is not None or r.sha256 in fresh_shas:
            summary.duplicates += 1
            if existing is not None:
                summary.image_ids[os.path.realpath(r.path)] = existing
            else:
                same_as_fresh.append(r)
            continue
        fresh.append(r)
        fresh_shas.add(r.sha256)
    if not fresh:
        return

    earlier = pairwise_near([r.phash for r in fresh], radius)
    nearest = [near[0][2] if near else None for near in find_near_many(session, [r.phash for r in fresh], radius)]
    roots = {g for g in nearest if g is not None}
    split_of = dict(session.execute(select(Image.id, Image.split).where(Image.id.in_(roots))).tuples().all()) \
        if roots else {}
    group_of: list[_Group] = []
    for i, r in enumerate(fresh):
        group_id = nearest[i]
        if group_id is not None:
            group_of.append(_Group(split_of[group_id], registered_id=group_id))
            summary.near_duplicates += 1
        elif earlier[i]:
            group_of.append(group_of[earlier[i][0]])
            summary.near_duplicates += 1
        else:
            group_of.append(_Group(split_for(r.sha256, config.split.ratios, config.split.salt), chunk_root=i))

    now = utcnow()
    session.execute(
        _INSERT_IMAGE,
        [
            {"sha256": r.sha256, "source_sha256": r.source_sha256, **signed_chunks(r.phash), "width": r.width,
             "height": r.height, "store_path": r.store_path, "original_path": _display_path(r.path),
             "group_id": g.registered_id, "split": g.split, "batch_id": batch_id, "created_at": now}
            for r, g in zip(fresh, group_of, strict=True)
        ],
    )
    ids = dict(session.execute(select(Image.sha256, Image.id).where(Image.sha256.in_([r.sha256 for r in fresh]))).all())
    new_groups = [
        {"root_id": ids[fresh[g.chunk_root].sha256], "image_id": ids[r.sha256]}
        for r, g in zip(fresh, group_of, strict=True) if g.chunk_root is not None
    ]
    if new_groups:
        session.execute(_SET_GROUP, new_groups)
    for r in same_as_fresh:
        summary.image_ids[os.path.realpath(r.path)] = ids[r.sha256]
    for r, g in zip(fresh, group_of, strict=True):
        summary.image_ids[os.path.realpath(r.path)] = ids[r.sha256]
        summary.added += 1
        summary.per_split[g.split] += 1


def _display_path(path: str) -> str:
    # Non-UTF-8 file names survive as surrogate escapes; store them printable.
    return os.path.abspath(path).encode("utf-8", "backslashreplace").decode("utf-8")
