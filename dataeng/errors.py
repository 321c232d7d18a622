"""The DataEngError hierarchy.

Every error a user can cause derives from :class:`DataEngError`. Its message names the
file, the field and the value, and what was expected, so the CLI can print it on one
line and exit 1. Unexpected errors (bugs) are not wrapped and keep their traceback.
"""

from __future__ import annotations

from pathlib import Path


class DataEngError(Exception):
    """Base of every expected error: bad input, bad config, missing workspace."""

    def __init__(
        self,
        message: str,
        *,
        path: str | Path | None = None,
        field: str | None = None,
        value: object = None,
    ) -> None:
        self.path = str(path) if path is not None else None
        self.field = field
        self.value = value
        self.reason = message
        parts = []
        if self.path is not None:
            parts.append(self.path)
        if field is not None:
            parts.append(f"field {field!r}")
        if value is not None:
            shown = repr(value)
            parts.append(f"value {shown[:80] + '...' if len(shown) > 80 else shown}")
        prefix = ": ".join([", ".join(parts)]) if parts else ""
        super().__init__(f"{prefix}: {message}" if prefix else message)


class ConfigError(DataEngError):
    """dataeng.toml is missing, malformed or has an invalid or unknown key."""


class WorkspaceError(DataEngError):
    """No workspace found, or the workspace is not usable."""


class InputError(DataEngError):
    """An input file (image or annotation) is refused; the batch goes on."""


class AnnotationError(InputError):
    """An annotation file or one of its shapes is invalid."""


class UnsupportedFormatError(AnnotationError):
    """A file is of a format or variant that dataeng does not read (e.g. CVAT video)."""


class RegistryError(DataEngError):
    """The registry refuses an operation (it would break an invariant)."""


class ServiceError(DataEngError):
    """A server dataeng talks to (Label Studio) is down or refuses a request; the message names
    the URL and the HTTP status, never a token."""


class ModelError(DataEngError):
    """A model, architecture, encoder or checkpoint cannot be used."""


class NothingToDoError(DataEngError):
    """The command has no input to work on (not a failure: the CLI exits 0)."""
