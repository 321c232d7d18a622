"""scripts/demo.sh at reduced size: the engine learns, the rounds do not undo it, the cutouts cut.

The full demo (600 synthetic portraits, 10,000 images seen by the teacher) takes minutes; this runs
the same script, every step included, on half the images, a third of the budget and one round
before the review, and checks the figures it writes to ``summary.json``.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]

SUPERVISED_FLOOR = 0.6
"""The reduced demo's supervised teacher scores about 0.7 test IoU; a broken engine scores far less."""


@pytest.mark.slow
def test_the_demo_learns_and_its_rounds_do_not_make_it_worse(tmp_path: Path) -> None:
    demo = tmp_path / "demo"
    env = {**os.environ, "DEMO_DIR": str(demo), "DEMO_LABELLED": "60", "DEMO_UNLABELLED": "240",
           "DEMO_TEACHER_BUDGET": "3000", "DEMO_BUDGET": "1500", "DEMO_ROUNDS": "1", "COLUMNS": "160"}
    done = subprocess.run(["bash", "scripts/demo.sh"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=1500)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads((demo / "summary.json").read_text(encoding="utf-8"))

    assert summary["test_images"] >= 20, summary  # the evaluation sets were labelled through the review loop
    assert summary["start"]["kind"] == "train" and summary["start"]["test_iou"] > SUPERVISED_FLOOR, summary
    assert summary["best"]["test_iou"] >= summary["start"]["test_iou"], summary
    assert summary["gain_test_iou"] == pytest.approx(summary["best"]["test_iou"] - summary["start"]["test_iou"])
    assert "what the rounds gained" in done.stdout and f"{summary['gain_test_iou']:+.3f}" in done.stdout

    review = summary["review"]
    assert review["files"] == 5 and review["corrections"] == 5, review
    assert 1 <= review["median_shapes"] <= 10 and review["median_vertices"] <= 400, review

    # Three RGBA cutouts whose opaque part is the person (the synthetic truth), and the strip of them.
    cutouts = sorted((demo / "cutouts").glob("*.png"))
    assert len(cutouts) == 3
    ious = []
    for path in cutouts:
        kept = np.asarray(Image.open(path))[..., 3] >= 128
        person = np.asarray(Image.open(demo / "data" / "truth" / "masks" / path.name)) > 0
        union = (kept | person).sum()
        ious.append((kept & person).sum() / union if union else 1.0)
    assert np.mean(ious) > SUPERVISED_FLOOR, ious
    strip = Image.open(demo / "cutouts.png")
    assert strip.height == 160 and strip.width > 6 * 60
