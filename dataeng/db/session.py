"""Database engine and sessions.

SQLite is opened in WAL mode with foreign keys on and a generous busy timeout, and
every write transaction starts with ``BEGIN IMMEDIATE``: two dataeng processes on one
workspace queue for the write lock instead of failing with "database is locked".

PostgreSQL (psycopg 3) needs none of that: it locks rows, not the database, and its
transactions start at the first statement (READ COMMITTED). Code that must not race
another process takes row locks itself (``SELECT ... FOR UPDATE [SKIP LOCKED]``, see
``dataeng.engine.learn.claims``), which SQLite ignores because its one writer already
excludes everyone else.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from dataeng.db.url import FIELD, backend_of, masked, parse_url
from dataeng.errors import RegistryError

BUSY_TIMEOUT_S = 120.0
CONNECT_TIMEOUT_S = 10
"""How long a PostgreSQL connection attempt may take before the command says the server is unreachable."""


def make_engine(db_url: str | URL) -> Engine:
    """Create an engine for a registry URL (``sqlite:///path`` or ``postgresql+psycopg://user@host/db``).

    Nothing connects yet; the first use does (see :func:`connection_error`).

    Raises:
        ConfigError: an unsupported or malformed URL.
    """
    url = db_url if isinstance(db_url, URL) else parse_url(db_url)
    if backend_of(url) == "postgresql":
        # No password in the URL: libpq reads $PGPASSWORD, then ~/.pgpass (or $PGPASSFILE).
        return create_engine(url, pool_pre_ping=True, connect_args={"connect_timeout": CONNECT_TIMEOUT_S})
    engine = create_engine(
        url,
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


def connection_error(url: URL, error: DBAPIError) -> RegistryError:
    """A one-line error for a registry that cannot be reached or refuses us, naming the masked URL.

    The driver's first line says why (unreachable host, wrong password, no such database); when the
    server asked for a password and none was given, the message says where dataeng looks for one.
    """
    reason = str(error.orig).strip().splitlines()[0] if error.orig is not None else str(error)
    hint = ""
    if "no password supplied" in reason or "password authentication failed" in reason:
        hint = ("; the password comes from the URL, $PGPASSWORD or ~/.pgpass "
                "(host:port:database:user:password, mode 0600)")
    return RegistryError(f"cannot open the registry: {reason}{hint}", field=FIELD, value=masked(url))


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
