"""Command line: ``dataeng COMMAND``. Each module registers one command group on ``app``."""

from __future__ import annotations

from dataeng.cli import predict as _predict  # noqa: F401
from dataeng.cli import pseudolabel as _pseudolabel  # noqa: F401
from dataeng.cli import report as _report  # noqa: F401
from dataeng.cli import review as _review  # noqa: F401
from dataeng.cli import train as _train  # noqa: F401
from dataeng.cli import workspace as _workspace  # noqa: F401  (registers commands)
from dataeng.cli.app import app

__all__ = ["app"]
