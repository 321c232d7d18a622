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

from sqlalchemy.exc import InterfaceError, OperationalError

from dataeng.config import CONFIG_FILE, Config, load_config, render_config
from dataeng.db.migrate import upgrade
from dataeng.db.session import connection_error, make_engine, make_sessionmaker, session_scope
from dataeng.db.url import backend_of, masked, parse_url, resolve_url, without_password
from dataeng.errors import WorkspaceError
from dataeng.storage import STORE_PREFIX, in_store

if TYPE_CHECKING:
    from sqlalchemy import Engine
    from sqlalchemy.engine import URL
    from sqlalchemy.orm import Session, sessionmaker

ENV_VAR = "DATAENG_WORKSPACE"
REGISTRY_FILE = "registry.db"


@dataclass
class Workspace:
    """Paths and the registry of one workspace; cheap to create, opened lazily."""

    root: Path
    config: Config
    on_migrate: Callable[[str | None, str], None] | None = field(default=None, repr=False)
    password_url: URL | None = field(default=None, repr=False)
    """The registry URL with a password given to :meth:`init` (used by this process only, never written)."""
    created_database: bool = field(default=False, repr=False)
    """:meth:`init` created the PostgreSQL database."""

    # ---------------------------------------------------------------- creation
    @classmethod
    def init(cls, root: Path, config: Config | None = None, registry: str | None = None) -> Workspace:
        """Create a workspace folder with a config and an empty, migrated registry.

        Args:
            registry: a registry URL for ``[registry] url`` (default: the config's, SQLite in the folder).
                A PostgreSQL database that does not exist yet is created (the user needs CREATEDB);
                one that exists is migrated and shared (a second machine joining the registry). A
                password in the URL is used now and never written: later commands read it from
                $PGPASSWORD or ~/.pgpass.

        Raises:
            WorkspaceError: ``root`` already holds a dataeng.toml.
            ConfigError: an unsupported registry URL.
            RegistryError: the server cannot be reached, refuses the login, or will not create the database.
        """
        root = root.resolve()
        cfg_path = root / CONFIG_FILE
        if cfg_path.exists():
            raise WorkspaceError("a workspace already exists here", path=cfg_path)
        config = config or Config()
        password_url = None
        if registry is not None:
            url = parse_url(registry, field="--registry")
            password_url = url if url.password is not None else None
            stored = without_password(url)  # a relative SQLite path stays relative: inside the workspace
            config = config.model_copy(update={"registry": config.registry.model_copy(
                update={"url": stored.render_as_string(hide_password=False)}), "db_url": None})
        root.mkdir(parents=True, exist_ok=True)
        ws = cls(root, config, password_url=password_url)
        if backend_of(ws.registry_url) == "postgresql":
            from dataeng.db.create import create_database

            ws.created_database = create_database(ws.registry_url)
        tmp = cfg_path.with_suffix(".toml.tmp")
        tmp.write_text(render_config(config), encoding="utf-8")
        for sub in ("images", "masks", "alpha", "conf"):
            (ws.store / sub).mkdir(parents=True, exist_ok=True)
        for sub in ("runs", "reviews", "reports"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        try:
            ws.migrate()
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        os.replace(tmp, cfg_path)  # last: a failed init leaves no workspace behind that cannot open
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
        """The store folder: ``[store] root``, relative to the workspace or absolute (a shared mount)."""
        return self.root / os.path.expanduser(self.config.store.root)

    def image_path(self, store_path: str) -> Path:
        """Absolute path of a file the registry names: ``store/...`` lies in :attr:`store` (wherever
        ``[store] root`` puts it), anything else (``reviews/...``) in the workspace."""
        return self.root / in_store(self.store, store_path)

    def store_rel(self, path: Path) -> str:
        """The registry path of a file in the store (the inverse of :meth:`image_path`)."""
        return STORE_PREFIX + path.relative_to(self.store).as_posix()

    def mask_rel(self, label_id: int, kind: str = "masks") -> str:
        """Store-relative path of a label's mask (``masks``), alpha (``alpha``) or confidence (``conf``)."""
        return f"store/{kind}/{label_id // 1000:04d}/{label_id}.png"

    def run_dir(self, run_id: int) -> Path:
        return self.root / "runs" / str(run_id)

    def review_dir(self, review_id: int) -> Path:
        return self.root / "reviews" / str(review_id)

    # ---------------------------------------------------------------- registry
    @cached_property
    def registry_url(self) -> URL:
        """The registry's URL, ready to open (a relative SQLite path made absolute; no password
        unless :meth:`init` was given one).

        Raises:
            ConfigError: an unsupported or malformed ``[registry] url``.
        """
        if self.password_url is not None:
            return self.password_url
        field = "db_url" if self.config.db_url is not None else "registry.url"
        return resolve_url(self.config.registry_url, self.root, field)

    @property
    def db_url(self) -> str:
        """The registry URL as text, password masked (for messages)."""
        return masked(self.registry_url)

    @property
    def backend(self) -> str:
        """``sqlite`` or ``postgresql``."""
        return backend_of(self.registry_url)

    @cached_property
    def engine(self) -> Engine:
        return make_engine(self.registry_url)

    @cached_property
    def _sessionmaker(self) -> sessionmaker[Session]:

        return make_sessionmaker(self.engine)

    def migrate(self) -> tuple[str | None, str]:
        """Upgrade the registry schema; reports through ``on_migrate`` when it changed.

        Raises:
            RegistryError: the registry cannot be reached or refuses the login (the URL masked).
        """
        try:
            before, after = upgrade(self.engine)
        except (OperationalError, InterfaceError) as e:  # unreachable, refused login, no such database
            raise connection_error(self.registry_url, e) from e
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
