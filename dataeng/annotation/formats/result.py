"""What every format reader returns."""

from __future__ import annotations

from dataclasses import dataclass, field

from dataeng.annotation.types import ImageAnnotation
from dataeng.errors import AnnotationError


@dataclass
class ReadResult:
    """Items read, items refused and remarks, from one annotation file or folder.

    Attributes:
        items: one :class:`ImageAnnotation` per image that was read.
        problems: one :class:`AnnotationError` per refused item (file, field, value).
        notices: remarks that refuse nothing (skipped lines and points, fallbacks).
    """

    items: list[ImageAnnotation] = field(default_factory=list)
    problems: list[AnnotationError] = field(default_factory=list)
    notices: list[str] = field(default_factory=list)

    def extend(self, other: ReadResult) -> None:
        """Append another result's items, problems and notices to this one."""
        self.items.extend(other.items)
        self.problems.extend(other.problems)
        self.notices.extend(other.notices)
