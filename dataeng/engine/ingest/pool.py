"""The process pool of ingest's per-file work, whose workers never outlive the ingest.

After ``kill -9`` of the main process a plain ProcessPoolExecutor's workers stay alive
for minutes, holding the registry open. On Linux each worker asks the kernel to kill it
when its parent dies (``prctl(PR_SET_PDEATHSIG, SIGKILL)``), and checks that the parent
did not die before that request was in place.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from concurrent.futures import ProcessPoolExecutor

PR_SET_PDEATHSIG = 1


def _die_with_parent(parent: int) -> None:
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):
            return  # no prctl: workers end when their queue closes, as before
    if os.getppid() != parent:  # the parent died between fork and prctl
        os._exit(1)


def process_pool(workers: int) -> ProcessPoolExecutor:
    """A ProcessPoolExecutor of ``workers`` processes that die with this process."""
    return ProcessPoolExecutor(max_workers=workers, initializer=_die_with_parent, initargs=(os.getpid(),))
