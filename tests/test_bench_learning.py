"""The CI version of scripts/bench_learning.py on real photos (../shared/benchmarks/ccp, 64x64).

It asserts what the strong-teacher issue promises at any scale: a student distilled from
MediaPipe beats a supervised model on the same human labels, with or without those labels.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CCP = ROOT.parent / "shared" / "benchmarks" / "ccp"


@pytest.mark.slow
def test_students_from_mediapipe_beat_supervised_on_real_photos(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    if not (CCP / "images").is_dir():
        pytest.skip("../shared/benchmarks/ccp is absent")
    pytest.importorskip("mediapipe", reason="the dataeng[mediapipe] extra")
    spec = importlib.util.spec_from_file_location("bench_learning", ROOT / "scripts" / "bench_learning.py")
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "bench_learning", bench)  # its dataclasses look their module up
    spec.loader.exec_module(bench)
    rows = bench.main(["--small", "--rows", "acde", "--workers", "0", "--out", str(tmp_path / "bench")])
    iou = {name: row.metrics["iou"] for name, row in rows.items()}
    assert iou["c"] > 0.85, iou  # MediaPipe on real full-body photos
    assert iou["d"] > iou["a"], iou  # 0 labels + MediaPipe beats N supervised labels
    assert iou["e"] > iou["a"], iou  # N labels + MediaPipe beats N labels alone
    pseudo = rows["d"].extra["pseudo_labels"]
    assert pseudo["scored"] > 0 and pseudo["median_iou_kept"] > 0.9, pseudo
