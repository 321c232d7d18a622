from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import inspect, select, text
from sqlalchemy.exc import IntegrityError

from dataeng.db.migrate import current_revision, head_revision
from dataeng.db.schema import Image, Label
from dataeng.workspace import Workspace


def _image(sha: str) -> Image:
    return Image(
        sha256=sha, source_sha256=sha, phash=0, ph0=0, ph1=0, ph2=0, width=4, height=4,
        store_path=f"store/images/{sha[:2]}/{sha}.png", original_path="/x", split="train",
    )


def test_init_creates_schema_at_head(workspace: Workspace) -> None:
    assert current_revision(workspace.engine) == head_revision()
    tables = set(inspect(workspace.engine).get_table_names())
    assert {"images", "labels", "runs", "batches", "problems", "reviews"} <= tables
    with workspace.engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1


def test_older_registry_is_upgraded_and_the_user_is_told(tmp_path: Path) -> None:
    from alembic import command

    from dataeng.db.migrate import _alembic_config

    if head_revision() == "0001":
        pytest.skip("only one schema revision so far")
    ws = Workspace.init(tmp_path / "ws")
    # Rebuild the registry at the first revision, as an older dataeng made it.
    (tmp_path / "ws" / "registry.db").unlink()
    ws.engine.dispose()
    ws2 = Workspace(ws.root, ws.config)
    cfg = _alembic_config()
    with ws2.engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0001")
    assert current_revision(ws2.engine) == "0001"
    said: list[tuple[str | None, str]] = []
    Workspace.open(ws.root, on_migrate=lambda a, b: said.append((a, b)))
    assert said == [("0001", head_revision())]


def test_one_active_label_per_image(workspace: Workspace) -> None:
    with workspace.session() as s:
        img = _image("a" * 64)
        s.add(img)
        s.flush()
        s.add(Label(image_id=img.id, origin="human", source="mask", mask_path="m1", status="active"))
        s.add(Label(image_id=img.id, origin="pseudo", source="teacher", mask_path="m2", status="superseded"))
        s.flush()
    with pytest.raises(IntegrityError), workspace.session() as s:
        image_id = s.scalars(select(Image.id)).one()
        s.add(Label(image_id=image_id, origin="pseudo", source="teacher", mask_path="m3", status="active"))
        s.flush()


def test_duplicate_sha256_is_refused_by_the_schema(workspace: Workspace) -> None:
    with workspace.session() as s:
        s.add(_image("b" * 64))
    with pytest.raises(IntegrityError), workspace.session() as s:
        s.add(_image("b" * 64))
        s.flush()
