"""Bring a registry's schema up to date with Alembic.

Every command calls :func:`upgrade` when it opens a workspace: a registry made by an
older dataeng is migrated in place, and the user is told which revision it came from.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, text

from dataeng.errors import RegistryError

MIGRATIONS = Path(__file__).with_name("migrations")
_MIGRATION_LOCK = 0x64617461656E67  # "dataeng": PostgreSQL advisory lock key held while migrating


def _alembic_config() -> AlembicConfig:
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    return cfg


def head_revision() -> str:
    """The newest schema revision this dataeng knows."""
    head = ScriptDirectory.from_config(_alembic_config()).get_current_head()
    assert head is not None  # the package always ships at least one migration
    return head


def known_revision(revision: str) -> bool:
    """Whether this dataeng ships ``revision`` (a newer dataeng may have migrated the registry further)."""
    from alembic.util import CommandError

    try:
        return ScriptDirectory.from_config(_alembic_config()).get_revision(revision) is not None
    except CommandError:
        return False


def current_revision(engine: Engine) -> str | None:
    """The registry's schema revision, or None for an empty database."""
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def upgrade(engine: Engine) -> tuple[str | None, str]:
    """Migrate the registry to the newest revision.

    Returns:
        (revision before, revision after); equal when nothing had to change.
    """
    before = current_revision(engine)
    head = head_revision()
    if before is not None and before != head and not known_revision(before):
        raise RegistryError(f"the registry's schema revision {before!r} is newer than this dataeng knows (head "
                            f"{head!r}): another machine upgraded it; install the same dataeng version here",
                            field="schema revision", value=before)
    if before != head:
        cfg = _alembic_config()
        with engine.begin() as conn:
            _lock_for_migration(conn)
            before = MigrationContext.configure(conn).get_current_revision()  # another process may have won
            if before != head:
                cfg.attributes["connection"] = conn
                command.upgrade(cfg, "head")
    return before, head


def _lock_for_migration(conn: Connection) -> None:
    # Several commands may open a new registry at once (four ingests): one migrates, the others wait
    # and find it done. SQLite's BEGIN IMMEDIATE already serialises them; PostgreSQL needs a lock,
    # released at the end of the transaction.
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK})
