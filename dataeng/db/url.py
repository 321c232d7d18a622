"""Registry URLs: which backends dataeng opens, and how a URL is shown without its password.

Two backends are supported: SQLite (``sqlite:///registry.db``, the embedded default; a relative
path is inside the workspace) and PostgreSQL through psycopg 3 (``postgresql+psycopg://user@host/db``;
``postgresql://`` and ``postgres://`` mean the same). The password of a PostgreSQL registry comes
from the URL, from ``$PGPASSWORD`` or from ``~/.pgpass`` (libpq reads both when the URL has none),
and is never written to dataeng.toml or shown in a message: every message uses :func:`masked`.

Example::

    url = resolve_url("postgresql://ann@db.lan/faces", root=Path("ws"))
    url.drivername           # "postgresql+psycopg"
    masked(url)              # "postgresql+psycopg://ann@db.lan/faces"
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from dataeng.errors import ConfigError

Backend = Literal["sqlite", "postgresql"]
FIELD = "registry.url"
_DRIVERS: dict[str, tuple[Backend, str]] = {
    "sqlite": ("sqlite", "sqlite"),
    "sqlite+pysqlite": ("sqlite", "sqlite"),
    "postgresql": ("postgresql", "postgresql+psycopg"),
    "postgres": ("postgresql", "postgresql+psycopg"),
    "postgresql+psycopg": ("postgresql", "postgresql+psycopg"),
}


def masked(url: URL | str) -> str:
    """The URL as text with any password replaced by ``***`` (safe for messages and logs)."""
    if isinstance(url, str):
        try:
            return make_url(url).render_as_string(hide_password=True)
        except ArgumentError:
            return _mask_text(url)
    return url.render_as_string(hide_password=True)


def _mask_text(text: str) -> str:
    # An unparsable URL may still hold "user:secret@": hide what lies between ':' and '@'.
    head, sep, tail = text.partition("://")
    if sep and "@" in tail:
        creds, _, rest = tail.rpartition("@")
        user = creds.split(":", 1)[0]
        return f"{head}{sep}{user}{':***' if ':' in creds else ''}@{rest}"
    return text


def parse_url(text: str, field: str = FIELD) -> URL:
    """Parse and check a registry URL, naming the backend's canonical driver.

    Raises:
        ConfigError: not a URL, or a backend dataeng does not support (naming the field and the
            masked value).
    """
    try:
        url = make_url(text)
    except ArgumentError as e:
        raise ConfigError("not a database URL; expected sqlite:///registry.db or postgresql+psycopg://user@host/db",
                          field=field, value=_mask_text(text)) from e
    known = _DRIVERS.get(url.drivername)
    if known is None:
        raise ConfigError(f"unsupported database {url.drivername!r}; expected one of sqlite, postgresql+psycopg",
                          field=field, value=masked(url))
    backend, driver = known
    if backend == "postgresql" and not url.database:
        raise ConfigError("the URL names no database; expected postgresql+psycopg://user@host/db",
                          field=field, value=masked(url))
    if backend == "sqlite" and not url.database:
        raise ConfigError("the URL names no file; expected sqlite:///registry.db", field=field, value=masked(url))
    return url.set(drivername=driver)


def backend_of(url: URL) -> Backend:
    """``sqlite`` or ``postgresql``."""
    return "sqlite" if url.get_backend_name() == "sqlite" else "postgresql"


def resolve_url(text: str, root: Path, field: str = FIELD) -> URL:
    """A registry URL ready to open: a relative SQLite path is made absolute inside ``root``.

    Raises:
        ConfigError: see :func:`parse_url`.
    """
    url = parse_url(text, field)
    if backend_of(url) == "sqlite" and url.database not in (None, ":memory:"):
        path = Path(str(url.database))
        if not path.is_absolute():
            url = url.set(database=str(root / path))
    return url


def without_password(url: URL) -> URL:
    """The same URL with no password (what may be written to dataeng.toml)."""
    return url._replace(password=None)  # URL.set(password=None) would keep it: None means "unchanged" there
