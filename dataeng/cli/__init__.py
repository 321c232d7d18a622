"""Command line: ``dataeng COMMAND``. One module per command or command group, each registering on ``app``
(or its ``review`` / ``export`` sub-apps); ``app.COMMAND_ORDER`` sets the order of ``--help``."""

from __future__ import annotations

from dataeng.cli import doctor as _doctor  # noqa: F401  (the imports register the commands)
from dataeng.cli import evaluate as _evaluate  # noqa: F401
from dataeng.cli import export as _export  # noqa: F401
from dataeng.cli import ingest as _ingest  # noqa: F401
from dataeng.cli import init as _init  # noqa: F401
from dataeng.cli import predict as _predict  # noqa: F401
from dataeng.cli import pseudolabel as _pseudolabel  # noqa: F401
from dataeng.cli import report as _report  # noqa: F401
from dataeng.cli import review as _review  # noqa: F401
from dataeng.cli import round as _round  # noqa: F401
from dataeng.cli import status as _status  # noqa: F401
from dataeng.cli import synth as _synth  # noqa: F401
from dataeng.cli import train as _train  # noqa: F401
from dataeng.cli.app import app

__all__ = ["app"]
