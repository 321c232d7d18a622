"""The workspace: a folder with ``dataeng.toml``, the registry and the file store.

Every command finds its workspace from ``--workspace``, ``DATAENG_WORKSPACE`` or the
current directory upward, then opens it with :meth:`Workspace.open`, which validates
the config and migrates the registry to the current schema.

Example::

    ws = Workspace.init(Path("ws"), classes=["person"])
    with ws.session() as session:
        ...
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

from dataeng.config import CONFIG_FILE, Config, load_config, render_config
from dataeng.db.migrate import upgrade
from dataeng.db.session import make_engine, make_sessionmaker, session_scope
from dataeng.errors import WorkspaceError

if TYPE_CHECKING:
    from sqlalchemy import Engine
    from sqlalchemy.orm import Session, sessionmaker

ENV_VAR = "DATAENG_WORKSPACE"
REGISTRY_FILE = "registry.db"


@dataclass
class Workspace:
    """Paths and the registry of one workspace; cheap to create, opened lazily."""

    root: Path
    config: Config
    on_migrate: Callable[[str | None, str], None] | None = field(default=None, repr=False)

    # ---------------------------------------------------------------- creation
    @classmethod
    def init(cls, root: Path, config: Config | None = None) -> Workspace:
        """Create a workspace folder with a config and an empty, migrated registry.

        Raises:
            WorkspaceError: ``root`` already holds a dataeng.toml.
        """
        root = root.resolve()
        cfg_path = root / CONFIG_FILE
        if cfg_path.exists():
            raise WorkspaceError("a workspace already exists here", path=cfg_path)
        root.mkdir(parents=True, exist_ok=True)
        config = config or Config()
        tmp = cfg_path.with_suffix(".toml.tmp")
        tmp.write_text(render_config(config), encoding="utf-8")
        os.replace(tmp, cfg_path)
        ws = cls(root, config)
        for sub in ("store/images", "store/masks", "store/alpha", "store/conf", "runs", "reviews", "reports"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        ws.migrate()
        return ws

    @classmethod
    def find(cls, start: Path | None = None, explicit: Path | None = None) -> Path:
        """Locate a workspace root: explicit path, then $DATAENG_WORKSPACE, then upward from cwd.

        Raises:
            WorkspaceError: none found.
        """
        if explicit is None and os.environ.get(ENV_VAR):
            explicit = Path(os.environ[ENV_VAR])
        if explicit is not None:
            explicit = Path(explicit)
            if not (explicit / CONFIG_FILE).is_file():
                raise WorkspaceError(f"no {CONFIG_FILE} here; run `dataeng init {explicit}` first", path=explicit)
            return explicit.resolve()
        here = (start or Path.cwd()).resolve()
        for folder in (here, *here.parents):
            if (folder / CONFIG_FILE).is_file():
                return folder
        raise WorkspaceError(
            f"no dataeng workspace in this folder or its parents; run `dataeng init DIR` "
            f"or pass --workspace / set {ENV_VAR}",
            path=here,
        )

    @classmethod
    def open(
        cls,
        explicit: Path | None = None,
        on_migrate: Callable[[str | None, str], None] | None = None,
    ) -> Workspace:
        """Find, validate and migrate a workspace."""
        root = cls.find(explicit=explicit)
        ws = cls(root, load_config(root / CONFIG_FILE), on_migrate=on_migrate)
        ws.migrate()
        return ws

    # ---------------------------------------------------------------- paths
    @property
    def config_path(self) -> Path:
        return self.root / CONFIG_FILE

    @property
    def store(self) -> Path:
        return self.root / "store"

    def image_path(self, store_path: str) -> Path:
        """Absolute path of a store-relative path kept in the registry."""
        return self.root / store_path

    def mask_rel(self, label_id: int, kind: str = "masks") -> str:
        """Store-relative path of a label's mask (``masks``), alpha (``alpha``) or confidence (``conf``)."""
        return f"store/{kind}/{label_id // 1000:04d}/{label_id}.png"

    def run_dir(self, run_id: int) -> Path:
        return self.root / "runs" / str(run_id)

    def review_dir(self, review_id: int) -> Path:
        return self.root / "reviews" / str(review_id)

    # ---------------------------------------------------------------- registry
    @property
    def db_url(self) -> str:
        return self.config.db_url or f"sqlite:///{self.root / REGISTRY_FILE}"

    @cached_property
    def engine(self) -> Engine:

        return make_engine(self.db_url)

    @cached_property
    def _sessionmaker(self) -> sessionmaker[Session]:

        return make_sessionmaker(self.engine)

    def migrate(self) -> tuple[str | None, str]:
        """Upgrade the registry schema; reports through ``on_migrate`` when it changed."""
        before, after = upgrade(self.engine)
        if before != after and before is not None and self.on_migrate is not None:
            self.on_migrate(before, after)
        return before, after

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A unit of work on the registry: commit on success, roll back on error."""
        with session_scope(self._sessionmaker) as session:
            yield session

    def new_session(self) -> Session:
        """A session the caller commits and closes itself (long jobs commit per batch)."""
        return self._sessionmaker()
