"""Shared fixtures: real files from ../shared/fixtures, small images made on the fly."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

SHARED_FIXTURES = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures"
TORCH_THREADS = min(2, os.cpu_count() or 1)
"""Torch intra-op threads in tests: one per core of the 2-core CI machine, never more, so a loaded
machine does not oversubscribe (torch's default also counts hyper-threads)."""


def pytest_configure(config: pytest.Config) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", str(TORCH_THREADS))


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


@pytest.fixture
def workspace(tmp_path: Path):
    """A fresh workspace with the default config."""
    from dataeng.workspace import Workspace

    return Workspace.init(tmp_path / "ws")
