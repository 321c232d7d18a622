"""Writer locks that hold on both backends.

SQLite has one writer at a time: every write transaction starts with ``BEGIN IMMEDIATE``, so
read-check-write sequences (is there a human label? which group does this near duplicate join?)
cannot interleave. PostgreSQL runs writers side by side under READ COMMITTED, so two of them could
both find "no human label yet" and both write. :func:`serialise` restores SQLite's rule for one
kind of write on PostgreSQL with a transaction-scoped advisory lock; readers never wait for it.
:func:`insert_missing` is the portable ``INSERT OR IGNORE``.
"""

from __future__ import annotations

from typing import Any, Literal

from sqlalchemy import Table, text
from sqlalchemy.orm import Session

WriteKind = Literal["images", "labels"]
_KEYS: dict[WriteKind, int] = {"images": 0x64650001, "labels": 0x64650002}


def serialise(session: Session, kind: WriteKind) -> None:
    """Hold the ``kind`` writer lock until the session's transaction ends (a no-op on SQLite, whose
    write transactions already exclude each other). Take ``images`` before ``labels`` when both."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _KEYS[kind]})


def insert_missing(session: Session, table: Table, columns: list[str], rows: Any) -> int:
    """``INSERT INTO table (columns) <rows: a SELECT>`` that skips rows whose key already exists: ``ON CONFLICT
    DO NOTHING`` on both backends (SQLite's ``INSERT OR IGNORE``, in the form PostgreSQL also speaks).

    Returns:
        The number of rows inserted.
    """
    if session.get_bind().dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        stmt: Any = pg_insert(table).from_select(columns, rows).on_conflict_do_nothing()
    else:
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        stmt = sqlite_insert(table).from_select(columns, rows).on_conflict_do_nothing()
    # RETURNING counts what went in on both (psycopg reports no rowcount for INSERT ... SELECT here).
    return len(session.execute(stmt.returning(table.c[columns[0]])).all())
