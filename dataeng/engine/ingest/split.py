"""Stable train/val/test assignment.

An image's split is a pure function of its near-duplicate group key (the sha256 of
the group's first image) and the configured ratios: adding images never moves an
existing one, and the order of arrival does not matter.
"""

from __future__ import annotations

import hashlib

from dataeng.db.schema import SPLITS, Split

_SCALE = float(1 << 64)


def split_for(group_key: str, ratios: tuple[float, float, float], salt: str = "") -> Split:
    """Map a group key to a split with the given (train, val, test) ratios.

    Example::

        split_for("9f86d08...", (0.7, 0.2, 0.1))  # -> "train" for ~70% of keys
    """
    digest = hashlib.sha256(f"{salt}:{group_key}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / _SCALE
    edge = 0.0
    for split, ratio in zip(SPLITS, ratios, strict=True):
        edge += ratio
        if u < edge:
            return split
    return SPLITS[-1] if ratios[-1] > 0 else SPLITS[max(i for i, r in enumerate(ratios) if r > 0)]
