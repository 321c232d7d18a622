"""Atomic writes: nothing half-written, and files the team can read (the umask's mode, not 0600)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from dataeng.storage import FILE_MODE, atomic_write_bytes, atomic_write_text, link_or_copy


def test_atomic_writes_get_the_mode_open_would_give(tmp_path: Path) -> None:
    plain = tmp_path / "plain.txt"
    with plain.open("w") as f:
        f.write("x")
    want = stat.S_IMODE(plain.stat().st_mode)
    assert want == FILE_MODE
    atomic_write_text(tmp_path / "a" / "report.html", "<html></html>")
    atomic_write_bytes(tmp_path / "mask.png", b"\x89PNG")
    assert link_or_copy(plain, tmp_path / "copy.txt", "copy") == "copy"
    for name in ("a/report.html", "mask.png", "copy.txt"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == want, name
    assert not [p for p in tmp_path.rglob("*.tmp*")]


def test_a_failed_write_leaves_nothing(tmp_path: Path) -> None:
    from dataeng.storage import atomic_write

    def boom(tmp: Path) -> None:
        tmp.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(tmp_path / "out.json", boom)
    assert os.listdir(tmp_path) == []
