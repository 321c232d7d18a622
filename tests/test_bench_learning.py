"""The CI version of scripts/bench_learning.py on real photos (../shared/benchmarks/ccp, 64x64).

It asserts what the strong-teacher benchmark shows at any scale: MediaPipe is strong on these
photos and a student distilled from it with no human label matches a supervised model on N labels;
and of the semi-supervised one: UniMatch on the same labels plus the unlabelled pool grows confident
and does no worse than the supervised model trained with the same strong augmentation.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
CCP = ROOT.parent / "shared" / "benchmarks" / "ccp"


def _bench(monkeypatch: pytest.MonkeyPatch) -> Any:
    if not (CCP / "images").is_dir():
        pytest.skip("../shared/benchmarks/ccp is absent")
    spec = importlib.util.spec_from_file_location("bench_learning", ROOT / "scripts" / "bench_learning.py")
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "bench_learning", bench)  # its dataclasses look their module up
    spec.loader.exec_module(bench)
    return bench


@pytest.mark.slow
def test_a_student_from_mediapipe_with_no_labels_matches_supervised_on_real_photos(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """At this size every from-scratch student is limited by its training compute, so MediaPipe's labels
    match the human ones rather than beat them (seeds 0-2: d - a = -0.027, -0.025, +0.072; see BENCHMARKS).
    What holds on every draw: MediaPipe is strong, its kept pixels are right, and a student of it with no
    human label at all comes within 0.05 of the supervised model; a broken distillation falls far below."""
    bench = _bench(monkeypatch)
    pytest.importorskip("mediapipe", reason="the dataeng[mediapipe] extra")
    rows = bench.main(["--small", "--rows", "acde", "--workers", "0", "--out", str(tmp_path / "bench")])
    iou = {name: row.metrics["iou"] for name, row in rows.items()}
    assert iou["c"] > 0.85, iou  # MediaPipe on real full-body photos
    assert iou["d"] > iou["a"] - 0.05, iou  # 0 labels + MediaPipe ~ N supervised labels
    assert iou["e"] > iou["a"] - 0.05, iou  # N labels + MediaPipe: no worse than N labels alone
    pseudo = rows["d"].extra["pseudo_labels"]
    assert pseudo["scored"] > 0 and pseudo["median_iou_kept"] > 0.9, pseudo


@pytest.mark.slow
def test_unimatch_grows_confident_and_holds_supervised_with_the_same_augmentation_on_real_photos(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bench = _bench(monkeypatch)
    rows = bench.main(["--suite", "semi", "--small", "--rows", "Ah", "--workers", "0",
                       "--out", str(tmp_path / "bench")])
    iou = {name: row.metrics["iou"] for name, row in rows.items()}
    # Seeds 0-2 give (h) - (a') = +0.032, -0.000, -0.016: at this size the sign is noise (see BENCHMARKS),
    # so this holds UniMatch's path to no worse than its baseline, not to a win; a broken unlabelled loss
    # (wrong targets, an inverted mask) falls far below.
    assert iou["h"] > iou["A"] - 0.05, iou
    curves = rows["h"].extra["history"]
    assert all(0 <= share <= 1 for share in curves["confident_share"]), curves
    assert curves["confident_share"][-1] > curves["confident_share"][0], curves  # the model grows confident
