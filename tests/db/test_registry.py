from __future__ import annotations

import pytest
from sqlalchemy import inspect, select, text
from sqlalchemy.exc import IntegrityError

from dataeng.db.migrate import current_revision, head_revision
from dataeng.db.schema import Image, Label
from dataeng.workspace import Workspace

pytestmark = pytest.mark.backends


def _image(sha: str) -> Image:
    return Image(
        sha256=sha, source_sha256=sha, phash=0, ph0=0, ph1=0, ph2=0, width=4, height=4,
        store_path=f"store/images/{sha[:2]}/{sha}.png", original_path="/x", split="train",
    )


def test_init_creates_schema_at_head(workspace: Workspace, backend: str) -> None:
    assert workspace.backend == backend
    assert current_revision(workspace.engine) == head_revision()
    tables = set(inspect(workspace.engine).get_table_names())
    assert {"images", "labels", "runs", "batches", "problems", "reviews"} <= tables
    if backend == "sqlite":
        with workspace.engine.connect() as conn:
            assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
            assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1


def test_older_registry_is_upgraded_and_the_user_is_told(workspace: Workspace) -> None:
    from alembic import command

    from dataeng.db.migrate import _alembic_config

    if head_revision() == "0001":
        pytest.skip("only one schema revision so far")
    # Take the registry back to the first revision, as an older dataeng made it (every downgrade runs).
    cfg = _alembic_config()
    with workspace.engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0001")
    assert current_revision(workspace.engine) == "0001"
    workspace.engine.dispose()
    said: list[tuple[str | None, str]] = []
    ws = Workspace.open(workspace.root, on_migrate=lambda a, b: said.append((a, b)))
    assert said == [("0001", head_revision())]
    assert current_revision(ws.engine) == head_revision()
    assert "image_metrics" in inspect(ws.engine).get_table_names()


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
