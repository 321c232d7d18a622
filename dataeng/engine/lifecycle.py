"""The one lifecycle of a bookkeeping row (``runs``, ``rounds``, ``batches``): running, then
finished or failed, whatever the stage that lives it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from sqlalchemy.orm import Session

from dataeng.db.schema import Batch, Round, Run, utcnow

RowT = TypeVar("RowT", Run, Round, Batch)


@contextmanager
def lifecycle(session: Session, row: RowT, on_fail: Callable[[RowT, BaseException], None] | None = None
              ) -> Iterator[RowT]:
    """Live one run, round or batch row: ``running`` while the block runs, then ``finished`` or ``failed``.

    A new row is added; an existing one (a resumed run) is set running again. On an
    exception the session is rolled back, ``on_fail(row, error)`` may adjust the row, the
    row is committed as ``failed`` and the exception re-raised.

    Example::

        with lifecycle(session, Run(kind="evaluate", config={...})) as run:
            run.metrics = ...
    """
    row.status, row.finished_at = "running", None
    session.add(row)
    session.commit()
    try:
        yield row
    except BaseException as e:
        session.rollback()
        row.status, row.finished_at = "failed", utcnow()
        if on_fail is not None:
            on_fail(row, e)
        session.commit()
        raise
    if row.status == "running":
        row.status = "finished"
    row.finished_at = utcnow()
    session.commit()
