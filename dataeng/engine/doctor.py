"""Check that the registry and the store agree, and clean up after crashes.

First the registry itself: the connection (the masked URL is shown) and the schema revision,
which must be the one this dataeng writes (``dataeng`` migrates on open; a registry another
machine migrated further is refused with a message when it is opened).

Every row's files must exist (and images must still have their sha256); every file
under ``store/`` must belong to a row. Files with no row are orphans, left by a crash
between the file write and the row commit; ``fix=True`` removes them.

Runs and rounds still marked ``running`` were interrupted (killed, or the machine went
down) unless a command is running right now; ``fix=True`` marks them ``failed`` and
removes their staging folders. Their finished work stays: a pseudolabel rerun skips the
images already labelled and ``train --resume`` continues a train run from its last epoch.
Run ``doctor --fix`` only while no other dataeng command works on the workspace.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from typing import Any

from alembic.runtime.migration import MigrationContext
from sqlalchemy import select
from sqlalchemy.orm import Session

from dataeng.db.migrate import head_revision
from dataeng.db.schema import Batch, Image, Label, Round, Run, utcnow
from dataeng.progress import NullProgress, Progress
from dataeng.storage import file_sha256
from dataeng.workspace import Workspace


@dataclass
class DoctorReport:
    """What ``dataeng doctor`` found (and removed, with ``fix``)."""

    registry: str = ""
    """The registry URL, password masked."""
    schema_revision: str | None = None
    schema_head: str | None = None
    images_checked: int = 0
    labels_checked: int = 0
    missing: list[str] = field(default_factory=list)
    corrupt: list[str] = field(default_factory=list)
    orphans: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    interrupted: list[str] = field(default_factory=list)
    closed: list[str] = field(default_factory=list)

    @property
    def schema_current(self) -> bool:
        return self.schema_revision == self.schema_head

    @property
    def healthy(self) -> bool:
        return self.schema_current and not (self.missing or self.corrupt or (set(self.orphans) - set(self.removed))
                    or (set(self.interrupted) - set(self.closed)))

    def to_dict(self) -> dict[str, Any]:
        return {
            "registry": self.registry,
            "schema_revision": self.schema_revision,
            "schema_head": self.schema_head,
            "images_checked": self.images_checked,
            "labels_checked": self.labels_checked,
            "missing": self.missing,
            "corrupt": self.corrupt,
            "orphans": self.orphans,
            "removed": self.removed,
            "interrupted": self.interrupted,
            "closed": self.closed,
            "healthy": self.healthy,
        }


def doctor(
    workspace: Workspace,
    session: Session,
    *,
    fix: bool = False,
    verify_hashes: bool = True,
    progress: Progress | None = None,
) -> DoctorReport:
    """Check every row's files, find orphan files under ``store/`` and interrupted runs.

    Args:
        fix: remove orphan files (never touches a file a row points at); mark interrupted
            runs and rounds failed and remove their staging folders.
        verify_hashes: re-hash every image file (slow on big stores, the default).
    """
    progress = progress or NullProgress()
    # The connection answered (the session is open); the schema must be the one this dataeng writes.
    report = DoctorReport(registry=workspace.db_url, schema_head=head_revision(),
                          schema_revision=MigrationContext.configure(session.connection()).get_current_revision())
    referenced: set[str] = set()
    images = session.execute(select(Image.id, Image.sha256, Image.store_path)).all()
    progress.task("checking images", len(images))
    for image_id, sha, rel in images:
        referenced.add(rel)
        path = workspace.image_path(rel)
        report.images_checked += 1
        if not path.is_file():
            report.missing.append(f"image {image_id}: {rel}")
        elif verify_hashes and file_sha256(path) != sha:
            report.corrupt.append(f"image {image_id}: {rel} no longer has sha256 {sha[:12]}...")
        progress.advance()
    for label_id, *paths in session.execute(select(Label.id, Label.mask_path, Label.alpha_path, Label.conf_path)):
        report.labels_checked += 1
        for label_file in paths:
            if label_file is None:
                continue
            referenced.add(label_file)
            if not workspace.image_path(label_file).is_file():
                report.missing.append(f"label {label_id}: {label_file}")

    store = workspace.store
    if store.is_dir():
        for path in sorted(p for p in store.rglob("*") if p.is_file()):
            rel = workspace.store_rel(path)
            if rel not in referenced:
                report.orphans.append(rel)
                if fix:
                    path.unlink()
                    report.removed.append(rel)
    _interrupted(workspace, session, report, fix)
    return report


def _interrupted(workspace: Workspace, session: Session, report: DoctorReport, fix: bool) -> None:
    for run in session.scalars(select(Run).where(Run.status == "running").order_by(Run.id)):
        line = f"run {run.id} ({run.kind}) started {run.started_at:%Y-%m-%d %H:%M} is still marked running"
        report.interrupted.append(line)
        if fix:
            run.status, run.finished_at = "failed", utcnow()
            run.metrics = {**(run.metrics or {}), "interrupted": True}
            shutil.rmtree(workspace.run_dir(run.id) / "staging", ignore_errors=True)
            report.closed.append(line)
    for row in session.scalars(select(Round).where(Round.status == "running").order_by(Round.id)):
        line = f"round {row.number} (row {row.id}) is still marked running"
        report.interrupted.append(line)
        if fix:
            row.status, row.finished_at, row.promoted = "failed", utcnow(), False
            report.closed.append(line)
    for batch in session.scalars(select(Batch).where(Batch.status == "running").order_by(Batch.id)):
        line = f"batch {batch.id} ({batch.kind}) started {batch.started_at:%Y-%m-%d %H:%M} is still marked running"
        report.interrupted.append(line)
        if fix:
            batch.status, batch.finished_at = "failed", utcnow()
            report.closed.append(line)
    if fix:
        session.commit()
