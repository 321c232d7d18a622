"""Work claiming: many pseudolabel processes share one candidate set through the registry.

No scheduler and no queue server: the ``claims`` table is the queue. Each worker (a process,
e.g. one torchrun rank, on any machine that reaches the registry)

1. :func:`enqueue`\\ s the candidates (train images with no live human label and no label from
   this teacher) as ``todo`` rows, skipping those already queued (``INSERT ... ON CONFLICT DO
   NOTHING``), under the label writers' lock so that an image labelled meanwhile is not queued again;
2. :func:`claim`\\ s a chunk: the lowest free rows (``todo``, or ``claimed`` with an expired lease),
   locked with ``SELECT ... FOR UPDATE SKIP LOCKED`` on PostgreSQL, so concurrent claimers take
   disjoint chunks without waiting for each other, and under SQLite's one write lock
   (``BEGIN IMMEDIATE``) there; the rows become ``claimed`` by this run with a lease;
3. registers each finished image's pseudo-label and deletes its row in one transaction
   (:func:`release`), while a heartbeat thread :func:`renew`\\ s the leases of the rows it holds.

So no image is done twice (a row is held by one worker; a labelled image is never queued again)
and none is missed (a row leaves the queue only with its label, or when its image could not be
read, which is recorded as a problem). A killed worker's chunk is claimed again when its lease
runs out, or at once by a worker on the same machine that finds the holder's process gone.
Machines' clocks must agree to well within the lease (NTP does).
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import delete, exists, func, literal, or_, select, update
from sqlalchemy.orm import Session

from dataeng.db.locks import insert_missing, serialise
from dataeng.db.schema import CLAIMS_TABLE, Claim, Image, Label, utcnow
from dataeng.engine.labels import LIVE_STATUSES

Shard = tuple[int, int]


def worker_name() -> str:
    """``host:pid`` of this process: who holds a claim, and whether it is still alive here."""
    return f"{socket.gethostname()}:{os.getpid()}"


def enqueue(session: Session, teacher_run_id: int, shard: Shard = (0, 1)) -> int:
    """Queue this teacher's candidates that are not queued yet, and commit.

    Returns:
        Rows added (0 when another worker queued them first).
    """
    i, n = shard
    serialise(session, "labels")  # no registration commits between our look at the labels and our insert
    human = exists().where(Label.image_id == Image.id, Label.origin == "human", Label.status.in_(LIVE_STATUSES))
    mine = exists().where(Label.image_id == Image.id, Label.run_id == teacher_run_id, Label.origin == "pseudo")
    rows = (select(literal(teacher_run_id), Image.id, literal("todo"))
            .where(Image.split == "train", ~human, ~mine, Image.id % n == i).order_by(Image.id))
    added = insert_missing(session, CLAIMS_TABLE, ["teacher_run_id", "image_id", "state"], rows)
    session.commit()
    return added


@dataclass(frozen=True)
class Backlog:
    """What is left of a teacher's queue (one shard): free rows, rows other live workers hold, and
    when the first of those leases ends."""

    free: int
    held: int
    next_expiry_s: float | None

    @property
    def empty(self) -> bool:
        return self.free == 0 and self.held == 0


def backlog(session: Session, teacher_run_id: int, shard: Shard = (0, 1)) -> Backlog:
    """Count the queue of ``teacher_run_id`` (read only; ends the read transaction)."""
    i, n = shard
    now = utcnow()
    free_ = or_(Claim.state == "todo", Claim.expires_at < now)
    base = (Claim.teacher_run_id == teacher_run_id, Claim.image_id % n == i)
    free = session.scalar(select(func.count()).select_from(Claim).where(*base, free_)) or 0
    held, first = session.execute(select(func.count(), func.min(Claim.expires_at)).where(
        *base, Claim.state == "claimed", Claim.expires_at >= now)).one()
    session.commit()
    wait = None if first is None else max(0.0, (_aware(first) - now).total_seconds())
    return Backlog(int(free), int(held or 0), wait)


def claim(session: Session, teacher_run_id: int, run_id: int, limit: int, lease_s: float,
          shard: Shard = (0, 1), worker: str | None = None) -> list[int]:
    """Take up to ``limit`` free images of the queue for ``run_id``, lowest ids first, and commit.

    Returns:
        The image ids now held by this run (empty when nothing is free).
    """
    if limit <= 0:
        return []
    i, n = shard
    now = utcnow()
    labelled = exists().where(Label.image_id == Claim.image_id, Label.run_id == teacher_run_id,
                              Label.origin == "pseudo")
    q = (select(Claim.image_id)
         .where(Claim.teacher_run_id == teacher_run_id, or_(Claim.state == "todo", Claim.expires_at < now),
                Claim.image_id % n == i, ~labelled)
         .order_by(Claim.image_id).limit(limit)
         .with_for_update(skip_locked=True))  # PostgreSQL: rows another claimer locked are skipped
    ids = list(session.scalars(q))
    if ids:
        session.execute(update(Claim).where(Claim.teacher_run_id == teacher_run_id, Claim.image_id.in_(ids))
                        .values(state="claimed", run_id=run_id, worker=worker or worker_name(),
                                expires_at=now + timedelta(seconds=lease_s)))
    session.commit()
    return ids


def release(session: Session, teacher_run_id: int, image_ids: list[int]) -> None:
    """Remove finished images from the queue, inside the caller's transaction (the one that
    registers their labels or problems)."""
    if image_ids:
        session.execute(delete(Claim).where(Claim.teacher_run_id == teacher_run_id, Claim.image_id.in_(image_ids)))


def renew(session: Session, run_id: int, lease_s: float) -> int:
    """Extend the leases of every row ``run_id`` holds, and commit. Returns the rows renewed."""
    done = session.execute(update(Claim).where(Claim.run_id == run_id, Claim.state == "claimed")
                           .values(expires_at=utcnow() + timedelta(seconds=lease_s)))
    session.commit()
    return int(done.rowcount or 0)  # type: ignore[attr-defined]


def give_back(session: Session, run_id: int) -> int:
    """Return every row ``run_id`` still holds to the queue (a worker that stops on an error), and commit."""
    session.rollback()
    done = session.execute(update(Claim).where(Claim.run_id == run_id, Claim.state == "claimed")
                           .values(state="todo", run_id=None, worker=None, expires_at=None))
    session.commit()
    return int(done.rowcount or 0)  # type: ignore[attr-defined]


def free_dead_local(session: Session, teacher_run_id: int) -> int:
    """Expire at once the claims of processes on this machine that no longer exist (a killed
    worker), instead of waiting for their leases; commits. Returns the rows freed."""
    host = socket.gethostname()
    holders = session.scalars(select(Claim.worker).where(
        Claim.teacher_run_id == teacher_run_id, Claim.state == "claimed", Claim.expires_at >= utcnow(),
        Claim.worker.like(f"{host}:%")).distinct()).all()
    dead = [w for w in holders if w is not None and not _alive(w.rpartition(":")[2])]
    freed = 0
    if dead:
        freed = int(session.execute(update(Claim).where(
            Claim.teacher_run_id == teacher_run_id, Claim.state == "claimed", Claim.worker.in_(dead))
            .values(state="todo", run_id=None, worker=None, expires_at=None)).rowcount or 0)  # type: ignore[attr-defined]
    session.commit()
    return freed


def _alive(pid_text: str) -> bool:
    try:
        pid = int(pid_text)
    except ValueError:
        return True  # not ours to judge
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _aware(t: datetime) -> datetime:
    return t if t.tzinfo is not None else t.replace(tzinfo=UTC)  # SQLite hands timestamps back naive


class Heartbeat:
    """A daemon thread that renews a run's leases every ``lease_s / 3`` seconds on its own session,
    so a slow chunk (a big model on a CPU) never loses its claim while its worker lives."""

    def __init__(self, new_session: Callable[[], Session], run_id: int, lease_s: float) -> None:
        self._new_session = new_session
        self._run_id, self._lease_s = run_id, lease_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="claims-heartbeat", daemon=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _loop(self) -> None:
        while not self._stop.wait(self._lease_s / 3):
            session = self._new_session()
            try:
                renew(session, self._run_id, self._lease_s)
            except Exception:  # a busy or briefly unreachable registry: the next beat tries again
                session.rollback()
            finally:
                session.close()
