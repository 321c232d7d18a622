"""Shared fixtures for the annotation tests: the ../shared/fixtures tree and synthetic records."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dataeng.annotation.types import IGNORE_INDEX, ExportRecord, LabelMap

FIXTURES = Path(__file__).resolve().parents[2].parent / "shared" / "fixtures"


@pytest.fixture(scope="session")
def fixtures() -> Path:
    """The real-tool fixture tree; tests using it skip when it is absent (a user's clone)."""
    if not FIXTURES.is_dir():
        pytest.skip("../shared/fixtures is absent")
    return FIXTURES


@pytest.fixture(scope="session")
def label_map() -> LabelMap:
    return LabelMap(["person", "hat"], {"PEDESTRIAN": "person"})


def donut_mask(width: int = 64, height: int = 48) -> np.ndarray:
    """A person donut (with a hat island inside its hole), a second blob and an ignore strip."""
    mask = np.zeros((height, width), dtype=np.uint8)
    yy, xx = np.mgrid[:height, :width]
    r = np.hypot(xx - 22, yy - 24)
    mask[r < 16] = 1
    mask[r < 7] = 0
    mask[(np.abs(xx - 22) < 2) & (np.abs(yy - 24) < 2)] = 2
    mask[5:20, 45:60] = 2
    mask[40:46, 44:62] = IGNORE_INDEX
    return mask


@pytest.fixture()
def records(tmp_path: Path) -> list[ExportRecord]:
    """Two synthetic labelled images with their JPEG files on disk."""
    out = []
    for i, (w, h) in enumerate([(64, 48), (50, 40)]):
        mask = donut_mask(64, 48)[:h, :w].copy()
        image_path = tmp_path / "src" / f"img{i}.jpg"
        image_path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((h, w, 3), 120, np.uint8)).save(image_path)
        out.append(
            ExportRecord(
                image_name=f"img{i}.jpg",
                width=w,
                height=h,
                mask=mask,
                image_path=image_path,
                meta={"label_id": i + 1, "origin": "human", "source": "test", "run": None, "round": 0},
            )
        )
    return out


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)
