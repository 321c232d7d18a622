"""The one JSON reader of the format modules: every way a file can fail is an AnnotationError.

Truncated or invalid JSON, non-UTF-8 text, nesting deep enough to exhaust Python's
recursion, special files (a FIFO would block forever, ``/dev/zero`` never ends) and files
over :data:`MAX_JSON_BYTES` are refused with the file named, so one bad file never stops
a batch.
"""

from __future__ import annotations

import json
import stat
from pathlib import Path
from typing import Any

from dataeng.errors import AnnotationError

MAX_JSON_BYTES = 1 << 30
"""Largest annotation file read (1 GiB; COCO files of a million annotations stay well below)."""


def load_json(path: Path) -> Any:
    """Parse a JSON annotation file.

    Raises:
        AnnotationError: naming the file, and the line and column of a syntax error.
    """
    try:
        info = path.stat()
        if not stat.S_ISREG(info.st_mode):
            raise AnnotationError("not a regular file", path=path)
        if info.st_size > MAX_JSON_BYTES:
            raise AnnotationError(f"larger than {MAX_JSON_BYTES >> 20} MiB", path=path, field="size",
                                  value=info.st_size)
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise AnnotationError(f"cannot read: {e}", path=path) from e
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise AnnotationError(f"invalid JSON ({e.msg})", path=path, field=f"line {e.lineno} column {e.colno}") from e
    except RecursionError as e:
        raise AnnotationError("JSON nested too deeply", path=path) from e
