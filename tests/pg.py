"""A throwaway PostgreSQL server for the tests: ``initdb`` + ``pg_ctl`` on a free port in a temporary folder.

One server serves the whole test session (:func:`pg_server`); each test that asks for it gets a fresh
database copied from a migrated template (``CREATE DATABASE ... TEMPLATE``: milliseconds, instead of
running the migrations again). The server listens on 127.0.0.1 only and asks for a password
(scram-sha-256), so the tests exercise the same login path as a real deployment.

The binaries come from ``$PATH`` or Debian's ``/usr/lib/postgresql/<version>/bin`` (``scripts/test.sh``
installs the ``postgresql`` package when they are missing). PostgreSQL refuses to run as root: when
the tests run as root (CI, containers), ``initdb``, ``pg_ctl`` and the server run as the unprivileged
``postgres`` user that Debian's package creates, through ``runuser``, in a folder that user owns.
When no binaries can be found the tests that need the server skip, naming why, except under
``DATAENG_REQUIRE_INTEROP=1`` (``scripts/test.sh``, CI), where they fail instead.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

PG_USER = "dataeng"
PG_PASSWORD = "dataeng-test-pw"
RUN_AS = "postgres"
"""The unprivileged OS user that runs the server when the tests run as root."""
TEMPLATE_DB = "dataeng_template"


def find_pg_bin() -> Path | None:
    """The folder holding ``initdb`` and ``pg_ctl``: $PATH first, else the newest Debian install."""
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl"):
        return Path(os.path.realpath(found)).parent
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"),
                      key=lambda p: int(p.parts[-3]) if p.parts[-3].isdigit() else 0)
    return versions[-1].parent if versions else None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class PgServer:
    """A running server: where it listens, the login, and how to make a database for one test."""

    host: str
    port: int
    user: str
    password: str
    data_dir: Path

    def url(self, database: str, *, password: bool = True) -> str:
        """A ``postgresql+psycopg://`` URL for ``database`` (with the password unless ``password=False``)."""
        cred = f"{self.user}:{self.password}" if password else self.user
        return f"postgresql+psycopg://{cred}@{self.host}:{self.port}/{database}"

    def admin(self, sql: str) -> None:
        """Run one statement on the ``postgres`` database outside a transaction (CREATE/DROP DATABASE)."""
        import psycopg

        with psycopg.connect(host=self.host, port=self.port, user=self.user, password=self.password,
                             dbname="postgres", autocommit=True) as conn:
            conn.execute(sql)  # type: ignore[arg-type]

    def new_database(self, template: str | None = TEMPLATE_DB) -> str:
        """A fresh, uniquely named database (a copy of the migrated template by default); its name."""
        name = f"t_{uuid.uuid4().hex[:12]}"
        self.admin(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else ""))
        return name


def _runner() -> tuple[list[str], int | None, int | None]:
    """The command prefix that runs PostgreSQL's tools, and the uid/gid that must own its folder."""
    if os.geteuid() != 0:
        return [], None, None
    try:
        user = pwd.getpwnam(RUN_AS)
    except KeyError as e:
        raise PgUnavailable(f"running as root and there is no {RUN_AS!r} user to run PostgreSQL as "
                            "(apt-get install postgresql creates it)") from e
    return ["runuser", "-u", RUN_AS, "--"], user.pw_uid, user.pw_gid


def _unavailable(reason: str) -> None:
    if os.environ.get("DATAENG_REQUIRE_INTEROP") == "1":
        pytest.fail(f"PostgreSQL tests cannot run: {reason}; scripts/test.sh installs the postgresql package")
    pytest.skip(f"PostgreSQL server not available: {reason}")


class PgUnavailable(RuntimeError):
    """No PostgreSQL binaries (or no user to run them as): the reason, for a skip or a failure."""


@contextmanager
def throwaway_server(extra: str = "") -> Iterator[PgServer]:
    """Start a PostgreSQL server on a free port in a temporary folder; stop it and remove the folder after.

    Args:
        extra: more ``postgres`` options (``-c name=value ...``).

    Raises:
        PgUnavailable: no binaries, or root without a ``postgres`` user.
        RuntimeError: the server did not start (with its log).
    """
    bin_dir = find_pg_bin()
    if bin_dir is None:
        raise PgUnavailable("initdb/pg_ctl not found on $PATH or in /usr/lib/postgresql/*/bin")
    prefix, uid, gid = _runner()
    base = Path(tempfile.mkdtemp(prefix="dataeng-pg-"))  # not under pytest's 0700 tmp: the server user reads it
    data, pwfile, log = base / "data", base / "pw", base / "server.log"
    pwfile.write_text(PG_PASSWORD + "\n")
    if uid is not None and gid is not None:
        for path in (base, pwfile):
            os.chown(path, uid, gid)
    port = _free_port()

    def tool(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*prefix, *args], capture_output=True, text=True, check=check, timeout=120)

    try:
        tool(str(bin_dir / "initdb"), "-D", str(data), "-U", PG_USER, f"--pwfile={pwfile}", "-E", "UTF8",
             "--locale=C", "--auth-host=scram-sha-256", "--auth-local=scram-sha-256", "--no-sync")
        # fsync off: a crash of this throwaway server loses nothing anyone needs; the tests run faster.
        tool(str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(log), "-w", "-t", "60", "-o",
             f"-h 127.0.0.1 -p {port} -k {base} -c fsync=off -c synchronous_commit=off -c full_page_writes=off "
             f"-c max_connections=200 {extra}", "start")
    except subprocess.CalledProcessError as e:
        tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
        shutil.rmtree(base, ignore_errors=True)
        raise RuntimeError(f"PostgreSQL did not start: {' '.join(e.cmd)}: {e.stderr.strip()}\n{tail}") from e
    try:
        yield PgServer("127.0.0.1", port, PG_USER, PG_PASSWORD, data)
    finally:
        tool(str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop", check=False)
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """A PostgreSQL server for the whole test session, stopped (and its folder removed) at the end."""
    try:
        with throwaway_server() as server:
            _make_template(server)
            yield server
    except PgUnavailable as e:
        _unavailable(str(e))
    except RuntimeError as e:
        if "did not start" not in str(e):
            raise
        pytest.fail(str(e))


def _make_template(server: PgServer) -> None:
    """A database migrated to head, which each test's database copies."""
    from dataeng.db.migrate import upgrade
    from dataeng.db.session import make_engine

    server.admin(f'CREATE DATABASE "{TEMPLATE_DB}"')
    engine = make_engine(server.url(TEMPLATE_DB))
    try:
        upgrade(engine)
    finally:
        engine.dispose()  # a template must have no open connections when it is copied
