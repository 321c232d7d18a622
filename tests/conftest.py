"""Shared fixtures: real files from ../shared/fixtures, small images made on the fly."""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import sqlite3
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from tests.pg import PG_PASSWORD, PgServer, pg_server

__all__ = ["pg_server"]  # a session fixture from tests/pg.py, shared by every test module

SHARED_FIXTURES = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures"
TORCH_THREADS = min(2, os.cpu_count() or 1)
"""Torch intra-op threads in tests: one per core of the 2-core CI machine, never more, so a loaded
machine does not oversubscribe (torch's default also counts hyper-threads)."""


def pytest_configure(config: pytest.Config) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", str(TORCH_THREADS))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Say so at the end, even under ``-q``, when Label Studio tests were skipped (and why)."""
    reasons: dict[str, int] = {}
    for report in terminalreporter.stats.get("skipped", []):
        longrepr = report.longrepr
        reason = str(longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else longrepr)
        if "label studio" in reason.lower() or "label-studio" in reason.lower():
            reasons[reason] = reasons.get(reason, 0) + 1
    for reason, count in reasons.items():
        terminalreporter.write_line(f"{count} Label Studio test(s) skipped: {reason}", yellow=True)


@pytest.fixture(autouse=True, scope="session")
def _pinned_torch_threads() -> None:
    import torch

    torch.set_num_threads(TORCH_THREADS)


INTEROP_PYTHON = Path(__file__).resolve().parents[1] / ".venv-interop" / "bin" / "python"


@pytest.fixture(scope="session")
def interop_python() -> Path:
    """The Python of .venv-interop (Supervisely SDK, FiftyOne, datumaro: `scripts/setup.sh --interop`).

    Skips when it is absent, except under ``DATAENG_REQUIRE_INTEROP=1`` (``scripts/test.sh``, CI),
    where a missing reader fails the test instead of hiding it.
    """
    if not INTEROP_PYTHON.is_file():
        if os.environ.get("DATAENG_REQUIRE_INTEROP") == "1":
            pytest.fail(f"{INTEROP_PYTHON} is missing: run scripts/setup.sh --interop")
        pytest.skip(".venv-interop is absent (scripts/setup.sh --interop)")
    return INTEROP_PYTHON


def labelstudio_sdk_or_skip() -> None:
    """Skip (module-level too) when label-studio-sdk is not installed, except under
    ``DATAENG_REQUIRE_INTEROP=1``, where that fails: ``scripts/setup.sh`` installs it
    (``.[dev,mediapipe,labelstudio]``)."""
    import importlib.util

    if importlib.util.find_spec("label_studio_sdk") is None:
        if os.environ.get("DATAENG_REQUIRE_INTEROP") == "1":
            pytest.fail("label-studio-sdk is missing: run scripts/setup.sh (pip install -e '.[labelstudio]')")
        pytest.skip("label-studio-sdk is not installed (pip install 'dataeng[labelstudio]')", allow_module_level=True)


LABEL_STUDIO = Path(__file__).resolve().parents[1] / ".venv-labelstudio" / "bin" / "label-studio"
LABEL_STUDIO_INSTALLED = LABEL_STUDIO.parents[1] / ".installed"
LABEL_STUDIO_FAILED = LABEL_STUDIO.parents[1] / ".install-failed"
"""Written by scripts/setup.sh --interop: the server is installed, or why it could not be."""
LABEL_STUDIO_DB = "label_studio.sqlite3"
LABEL_STUDIO_START_S = 300
"""Longest wait for a fresh server to answer /health (its migrations take ~45 s on the 2-core CI machine)."""


@dataclass(frozen=True)
class LabelStudioServer:
    """A running Label Studio: its URL, the known legacy token, and the local-files document root."""

    url: str
    token: str
    document_root: Path
    log: Path


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
            return bool(response.status == 200)
    except (OSError, ValueError):
        return False


def _labelstudio_template() -> Path:
    """Where the migrated, empty database of this server install is kept between test sessions (keyed by
    the install's stamp, so a new Label Studio never starts from an old schema)."""
    key = hashlib.sha256(LABEL_STUDIO_INSTALLED.read_bytes()).hexdigest()[:16]
    return LABEL_STUDIO_INSTALLED.parent / "test-template" / f"{key}.sqlite3"


def _save_template(db: Path, template: Path) -> None:
    """Snapshot the running server's fresh database (SQLite's online backup: consistent under WAL)."""
    template.parent.mkdir(exist_ok=True)
    tmp = template.with_name(f".{template.name}.{os.getpid()}")
    with closing(sqlite3.connect(db)) as src, closing(sqlite3.connect(tmp)) as dst:
        src.backup(dst)
    os.replace(tmp, template)


@pytest.fixture(scope="session")
def labelstudio_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabelStudioServer]:
    """A real Label Studio server (``.venv-labelstudio``, ``scripts/setup.sh --interop``) on a free
    127.0.0.1 port, for the whole test session: a temporary data dir and SQLite database, one user
    with a known legacy API token, local-files serving below a temporary document root. Stopped at
    the end of the session. The first session snapshots the freshly migrated database into
    ``.venv-labelstudio/test-template/`` and later ones start from a copy of it (Label Studio's
    migrations take most of a minute). Skips when the server is not installed, except under
    ``DATAENG_REQUIRE_INTEROP=1`` (``scripts/test.sh``, CI), where that fails instead.
    """
    if LABEL_STUDIO_FAILED.is_file():  # setup.sh tried and could not: skip, naming why (even in CI)
        pytest.skip(f"Label Studio server not installed: {LABEL_STUDIO_FAILED.read_text().strip()}")
    if not (LABEL_STUDIO.is_file() and LABEL_STUDIO_INSTALLED.is_file()):
        if os.environ.get("DATAENG_REQUIRE_INTEROP") == "1":
            pytest.fail(f"{LABEL_STUDIO} is missing: run scripts/setup.sh --interop")
        pytest.skip("Label Studio server not installed: .venv-labelstudio is absent (scripts/setup.sh --interop)")
    base = tmp_path_factory.mktemp("labelstudio")
    data, root = base / "data", base / "files"
    data.mkdir()
    root.mkdir()
    port, token = _free_port(), "dataeng-test-token-0123456789"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LABEL_STUDIO_", "DJANGO_"))}
    env.update({
        "LABEL_STUDIO_BASE_DATA_DIR": str(data), "DJANGO_DB": "sqlite",
        "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED": "true", "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": str(root),
        # Nothing may leave the machine: no version check, no analytics, no Sentry.
        "LATEST_VERSION_CHECK": "false", "COLLECT_ANALYTICS": "false", "SENTRY_DSN": "", "FRONTEND_SENTRY_DSN": "",
        "SECRET_KEY": "dataeng-tests-only",
    })
    url = f"http://127.0.0.1:{port}"
    log = base / "server.log"
    template = _labelstudio_template()
    if template.is_file():  # a migrated database with the user and token: starts in seconds, not a minute
        shutil.copyfile(template, data / LABEL_STUDIO_DB)
    with log.open("wb") as out:
        process = subprocess.Popen(
            [str(LABEL_STUDIO), "start", "--no-browser", "--internal-host", "127.0.0.1", "--port", str(port),
             "--data-dir", str(data), "--username", "dataeng@example.com", "--password", "dataeng-test-pw",
             "--user-token", token, "--enable-legacy-api-token"],
            cwd=base, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + LABEL_STUDIO_START_S
        while not _healthy(url):
            if process.poll() is not None or time.monotonic() > deadline:
                tail = log.read_text(errors="replace")[-3000:]
                pytest.fail(f"Label Studio did not start at {url} (exit {process.poll()}):\n{tail}")
            time.sleep(1)
        if not template.is_file():
            _save_template(data / LABEL_STUDIO_DB, template)
        yield LabelStudioServer(url, token, root, log)
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=30)


@pytest.fixture(scope="session")
def shared_fixtures() -> Path:
    """../shared/fixtures, or skip when this clone has none beside it."""
    if not SHARED_FIXTURES.is_dir():
        pytest.skip("../shared/fixtures is absent")
    return SHARED_FIXTURES


def random_image(path: Path, size: tuple[int, int] = (48, 40), seed: int = 0, fmt: str | None = None) -> Path:
    """Write a distinct, structured image (blocks of colour, not noise) so pHashes differ."""
    rng = np.random.default_rng(seed)
    w, h = size
    blocks = rng.integers(0, 256, size=(4, 4, 3), dtype=np.uint8)
    arr = np.kron(blocks, np.ones((h // 4 + 1, w // 4 + 1, 1), dtype=np.uint8))[:h, :w]
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, format=fmt)
    return path


BACKENDS = ("sqlite", "postgresql")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Tests marked ``backends`` (a module's ``pytestmark`` or one test) run once per registry backend,
    when they use a workspace; the others keep the SQLite default."""
    explicit = any("backend" in m.args[0] for m in metafunc.definition.iter_markers("parametrize"))
    if "backend" in metafunc.fixturenames and metafunc.definition.get_closest_marker("backends") and not explicit:
        metafunc.parametrize("backend", BACKENDS, indirect=True)


@pytest.fixture
def backend(request: pytest.FixtureRequest) -> str:
    """The registry backend of this test's workspace: ``sqlite`` unless the test is marked ``backends``."""
    return str(getattr(request, "param", "sqlite"))


@pytest.fixture
def registry_url(backend: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str | None:
    """None for SQLite (the workspace's own registry.db); for PostgreSQL a fresh database on the session's
    server, as a URL without the password, which comes from $PGPASSWORD (set for this test, so that
    subprocesses find it too, as a deployment's commands would)."""
    if backend == "sqlite":
        return None
    server: PgServer = request.getfixturevalue("pg_server")
    monkeypatch.setenv("PGPASSWORD", PG_PASSWORD)
    return server.url(server.new_database(), password=False)


@pytest.fixture
def make_workspace(tmp_path: Path, registry_url: str | None):
    """Make a workspace on this test's backend: ``make_workspace(name="ws", config=None)``."""
    from dataeng.workspace import Workspace

    def make(name: str = "ws", config: Any = None):
        return Workspace.init(tmp_path / name, config, registry=registry_url)

    return make


@pytest.fixture
def workspace(make_workspace: Any):
    """A fresh workspace with the default config, on this test's backend (SQLite unless marked ``backends``)."""
    return make_workspace()
