"""A PostgreSQL registry against a real server (tests/pg.py): init creates the database, the password
never reaches dataeng.toml or a message, bad URLs and logins get one-line errors, doctor checks the schema."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select, text
from typer.testing import CliRunner

from dataeng.cli import app
from dataeng.db.migrate import current_revision, head_revision
from dataeng.db.schema import Image
from dataeng.errors import ConfigError, RegistryError
from dataeng.workspace import Workspace
from tests.conftest import random_image
from tests.pg import PG_PASSWORD, PgServer

runner = CliRunner()


def _said(result: Any) -> str:
    """The command's output as one line (rich may wrap long lines at the console width)."""
    return " ".join(result.output.split())


@pytest.fixture
def no_password(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No $PGPASSWORD and an empty home (no ~/.pgpass): the password must come from where the test says."""
    monkeypatch.delenv("PGPASSWORD", raising=False)
    monkeypatch.delenv("PGPASSFILE", raising=False)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    return home


def _database_exists(server: PgServer, name: str) -> bool:
    import psycopg

    with psycopg.connect(host=server.host, port=server.port, user=server.user, password=server.password,
                         dbname="postgres") as conn:
        return conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is not None


def test_init_creates_the_database_and_never_writes_the_password(
        pg_server: PgServer, tmp_path: Path, no_password: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    name = "fresh_registry"
    result = runner.invoke(app, ["init", str(tmp_path / "ws"), "--registry", pg_server.url(name)])
    assert result.exit_code == 0, result.output
    assert _database_exists(pg_server, name)
    assert f"created database postgresql+psycopg://{pg_server.user}:***@" in _said(result)
    assert PG_PASSWORD not in result.output
    config = (tmp_path / "ws" / "dataeng.toml").read_text()
    assert PG_PASSWORD not in config
    assert f'url = "postgresql+psycopg://{pg_server.user}@{pg_server.host}:{pg_server.port}/{name}"' in config
    assert not (tmp_path / "ws" / "registry.db").exists()
    # Later commands find no password in the config: without one they say where it must come from...
    result = runner.invoke(app, ["status", "-w", str(tmp_path / "ws")])
    assert result.exit_code == 1
    line = _said(result)
    assert "registry.url" in line and "$PGPASSWORD or ~/.pgpass" in line and PG_PASSWORD not in line
    # ...and with it from the environment they work, at the schema init made.
    monkeypatch.setenv("PGPASSWORD", PG_PASSWORD)
    ws = Workspace.open(tmp_path / "ws")
    assert ws.backend == "postgresql" and current_revision(ws.engine) == head_revision()


def test_password_from_pgpass(pg_server: PgServer, tmp_path: Path, no_password: Path) -> None:
    name = pg_server.new_database()
    pgpass = no_password / ".pgpass"
    pgpass.write_text(f"{pg_server.host}:{pg_server.port}:*:{pg_server.user}:{PG_PASSWORD}\n")
    pgpass.chmod(0o600)
    ws = Workspace.init(tmp_path / "ws", registry=pg_server.url(name, password=False))
    assert not ws.created_database  # it existed: joined, as a second machine does
    with ws.session() as s:
        assert s.execute(text("SELECT current_user")).scalar() == pg_server.user


def test_wrong_password_is_one_line_naming_the_field_and_the_masked_url(
        pg_server: PgServer, tmp_path: Path, no_password: Path) -> None:
    url = pg_server.url(pg_server.new_database()).replace(PG_PASSWORD, "not-the-password")
    with pytest.raises(RegistryError, match=r"password authentication failed") as info:
        Workspace.init(tmp_path / "ws", registry=url)
    message = str(info.value)
    assert "'registry.url'" in message and ":***@" in message and "not-the-password" not in message
    assert "\n" not in message
    assert not (tmp_path / "ws" / "dataeng.toml").exists()  # a failed init leaves no workspace behind


def test_unreachable_server_is_a_clear_error(tmp_path: Path, no_password: Path) -> None:
    from tests.pg import _free_port

    url = f"postgresql+psycopg://someone:secret@127.0.0.1:{_free_port()}/nowhere"
    result = runner.invoke(app, ["init", str(tmp_path / "ws"), "--registry", url])
    assert result.exit_code == 1
    assert "secret" not in result.output and "someone:***@127.0.0.1" in _said(result)
    assert re.search(r"connection .*refused|could not connect|Connection refused", _said(result))


@pytest.mark.parametrize(("url", "expected"), [
    ("mysql://u:pw@h/db", "unsupported database 'mysql'"),
    ("postgresql://u:pw@h", "names no database"),
    ("not a url", "not a database URL"),
])
def test_bad_registry_urls_are_refused_with_the_password_masked(tmp_path: Path, url: str, expected: str) -> None:
    with pytest.raises(ConfigError, match=expected) as info:
        Workspace.init(tmp_path / "ws", registry=url)
    assert "pw" not in str(info.value).replace("postgresql", "")


def test_registry_url_in_the_config_is_checked_when_opened(tmp_path: Path) -> None:
    ws = Workspace.init(tmp_path / "ws")
    cfg = ws.config_path.read_text().replace('url = "sqlite:///registry.db"', 'url = "oracle://me:hunter2@x/y"')
    ws.config_path.write_text(cfg)
    result = runner.invoke(app, ["status", "-w", str(ws.root)])
    assert result.exit_code == 1
    assert "field 'registry.url'" in _said(result) and "oracle://me:***@x/y" in _said(result)
    assert "hunter2" not in result.output


def test_doctor_reports_the_connection_and_schema_revision(pg_server: PgServer, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PGPASSWORD", PG_PASSWORD)
    ws = Workspace.init(tmp_path / "ws", registry=pg_server.url(pg_server.new_database(), password=False))
    result = runner.invoke(app, ["doctor", "-w", str(ws.root), "--json", "--quick"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["schema_revision"] == report["schema_head"] == head_revision()
    assert report["registry"].startswith("postgresql+psycopg://") and report["healthy"]
    # A registry that a newer dataeng migrated further is refused on open, naming the revision.
    with ws.engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '9999'"))
    result = runner.invoke(app, ["doctor", "-w", str(ws.root)])
    assert result.exit_code == 1 and "'9999' is newer than this dataeng knows" in _said(result)


def test_store_outside_the_workspace_keeps_registry_paths_relative(tmp_path: Path) -> None:
    shared = tmp_path / "mnt" / "shared-store"
    result = runner.invoke(app, ["init", str(tmp_path / "a"), "--store", str(shared)])
    assert result.exit_code == 0, result.output
    for i in range(3):
        random_image(tmp_path / "src" / f"{i}.png", seed=i)
    result = runner.invoke(app, ["ingest", str(tmp_path / "src"), "-w", str(tmp_path / "a"), "--workers", "1"])
    assert result.exit_code == 0, result.output
    assert not list((tmp_path / "a" / "store").rglob("*.png"))
    ws = Workspace.open(tmp_path / "a")
    with ws.session() as s:
        paths = list(s.scalars(select(Image.store_path)))
    assert len(paths) == 3 and all(p.startswith("store/images/") for p in paths)
    assert all((shared / p.removeprefix("store/")).is_file() for p in paths)
    # The same registry seen from a machine that mounts the store elsewhere.
    moved = tmp_path / "elsewhere" / "store"
    moved.parent.mkdir()
    os.rename(shared, moved)
    cfg = ws.config_path.read_text().replace(str(shared), str(moved))
    ws.config_path.write_text(cfg)
    result = runner.invoke(app, ["doctor", "-w", str(ws.root), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["images_checked"] == 3
    with Workspace.open(ws.root).session() as s:
        assert s.scalar(select(func.count()).select_from(Image)) == 3
