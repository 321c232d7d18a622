"""Create a PostgreSQL registry database (``dataeng init --registry postgresql+psycopg://...``)."""

from __future__ import annotations

from sqlalchemy import create_engine, text
from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError, ProgrammingError

from dataeng.db.session import CONNECT_TIMEOUT_S, connection_error
from dataeng.db.url import FIELD, masked
from dataeng.errors import RegistryError

MAINTENANCE_DB = "postgres"
"""The database every PostgreSQL server has, to connect to while ours does not exist yet."""


def create_database(url: URL) -> bool:
    """Create the database ``url`` names on its server unless it exists.

    Connects to the server's ``postgres`` database with the same user and password (the URL's,
    $PGPASSWORD or ~/.pgpass) and runs ``CREATE DATABASE`` outside a transaction.

    Returns:
        True when the database was created, False when it already existed.

    Raises:
        RegistryError: the server cannot be reached, refuses the login, or the user may not create
            databases (naming the masked URL).
    """
    name = str(url.database)
    engine = create_engine(url.set(database=MAINTENANCE_DB), isolation_level="AUTOCOMMIT",
                           connect_args={"connect_timeout": CONNECT_TIMEOUT_S})
    try:
        with engine.connect() as conn:
            if conn.execute(text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name}).first():
                return False
            quoted = conn.dialect.identifier_preparer.quote_identifier(name)
            conn.execute(text(f"CREATE DATABASE {quoted}"))  # an identifier cannot be a bind parameter
            return True
    except ProgrammingError as e:  # e.g. permission denied to create database
        reason = str(e.orig).strip().splitlines()[0]
        raise RegistryError(f"cannot create database {name!r}: {reason}; create it with `createdb {name}` or grant "
                            "the user CREATEDB", field=FIELD, value=masked(url)) from e
    except (OperationalError, InterfaceError) as e:
        raise connection_error(url, e) from e
    except DBAPIError as e:  # pragma: no cover - any other refusal, still one line
        raise RegistryError(f"cannot create database {name!r}: {str(e.orig).strip().splitlines()[0]}",
                            field=FIELD, value=masked(url)) from e
    finally:
        engine.dispose()
