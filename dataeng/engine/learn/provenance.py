"""What a run records so it can be repeated: the code version and the fingerprint of its labels."""

from __future__ import annotations

import hashlib
import os
import subprocess
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path

from dataeng import __version__
from dataeng.engine.learn.samples import Sample
from dataeng.storage import file_sha256


@lru_cache(maxsize=1)
def code_version() -> str:
    """``<package version>+<git describe>`` when run from a git checkout, else the version.

    The lookup is read-only: ``GIT_OPTIONAL_LOCKS=0`` keeps git from refreshing the index
    (which takes ``.git/index.lock`` and would write into the source tree), and a package
    installed outside a checkout never asks an enclosing repository.
    """
    repo = Path(__file__).resolve().parents[3]
    if not (repo / ".git").exists():
        return __version__
    try:
        out = subprocess.run(["git", "describe", "--always", "--dirty", "--tags"], cwd=repo, capture_output=True,
                             text=True, timeout=5, check=True,
                             env={**os.environ, "GIT_OPTIONAL_LOCKS": "0"}).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return __version__
    return f"{__version__}+{out}"[:64] if out else __version__


def dataset_fingerprint(samples: Iterable[Sample]) -> str:
    """sha256 over the sorted (label id, mask sha, alpha sha, confidence sha) trained on.

    A run can be repeated exactly when the fingerprint matches; any changed label,
    added or removed label changes it.
    """
    h = hashlib.sha256()
    for s in sorted(samples, key=lambda s: s.label_id or 0):
        parts = [str(s.label_id)] + [file_sha256(p) if p is not None else "-"
                                     for p in (s.mask_path, s.alpha_path, s.conf_path)]
        h.update((":".join(parts) + "\n").encode())
    return h.hexdigest()
