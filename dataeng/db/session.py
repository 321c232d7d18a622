"""Database engine and sessions.

SQLite is opened in WAL mode with foreign keys on and a generous busy timeout, and
every write transaction starts with ``BEGIN IMMEDIATE``: two dataeng processes on one
workspace queue for the write lock instead of failing with "database is locked".
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

BUSY_TIMEOUT_S = 120.0


def make_engine(db_url: str) -> Engine:
    """Create an engine for a registry URL (``sqlite:///path`` or any SQLAlchemy URL)."""
    if not db_url.startswith("sqlite"):
        return create_engine(db_url, pool_pre_ping=True)
    engine = create_engine(
        db_url,
        connect_args={"timeout": BUSY_TIMEOUT_S, "isolation_level": None},
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: sqlite3.Connection, _record: Any) -> None:
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA synchronous=NORMAL")
        # 64 MiB page cache (default 2 MiB): index lookups and inserts stay in memory on
        # million-row registries instead of re-reading B-tree pages.
        cur.execute("PRAGMA cache_size=-65536")
        cur.execute("PRAGMA temp_store=MEMORY")
        cur.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_S * 1000)}")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        # pysqlite's own BEGIN is deferred; a deferred transaction that later writes
        # can fail with SQLITE_BUSY without waiting. IMMEDIATE takes the lock up front.
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    """A sessionmaker whose objects stay readable after commit."""
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def session_scope(factory: sessionmaker[Session]) -> Iterator[Session]:
    """One unit of work: commit on success, roll back on any error, always close."""
    session = factory()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()
