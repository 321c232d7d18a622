"""The report's plots: integer ticks where labels are counted, legends that hide no data."""

from __future__ import annotations

import numpy as np
import pytest

from dataeng.engine.report.plots import growth_figure, png_uri, quality_figure
from dataeng.engine.report.records import RoundGrowth, RoundQuality


def _metrics(v: float) -> dict[str, float | None]:
    return {"iou": v, "miou": min(1.0, v + 0.05), "boundary_f1": v - 0.1, "boundary_iou": v - 0.3}


# Few labels (3..5: matplotlib's own ticks would be 2.75, 3.0, 3.25, ...) and points in the corners where
# legends used to go (quality: lower right; growth: a stack reaching the upper left).
QUALITY = [RoundQuality(r, 10 + r, None if r == 0 else 9 + r, n, None, _metrics(v), _metrics(v - 0.02))
           for r, (n, v) in enumerate([(3, 0.95), (4, 0.6), (5, 0.3)])]
GROWTH = [RoundGrowth(r, 10, r, 2, 1, 2) for r in range(3)]
FEW_LABELS = [RoundGrowth(r, 1, 0, r, 0, r) for r in range(3)]  # 1..3 labels: ticks 0.5 apart by default


def _drawn(fig):
    png_uri(fig)  # lays the figure out (tight_layout) and renders it, as the report does
    fig.canvas.draw()
    (ax,) = fig.axes
    return ax, fig.canvas.get_renderer()


def _points(ax) -> np.ndarray:
    """Every plotted point (line vertices, stack and bar corners) in display pixels."""
    pts = [ax.transData.transform(line.get_xydata()) for line in ax.get_lines()]
    for collection in ax.collections:
        for path in collection.get_paths():
            pts.append(ax.transData.transform(path.vertices))
    for patch in ax.patches:
        pts.append(patch.get_window_extent().get_points())
    return np.concatenate(pts)


@pytest.mark.parametrize(("make", "data", "axis"), [(quality_figure, QUALITY, "x"), (growth_figure, FEW_LABELS, "y")])
def test_label_counts_have_integer_ticks(make, data, axis: str) -> None:
    ax, _ = _drawn(make(data))
    lo, hi = ax.get_xlim() if axis == "x" else ax.get_ylim()
    ticks = [t for t in (ax.get_xticks() if axis == "x" else ax.get_yticks()) if lo <= t <= hi]
    assert len(ticks) >= 2
    assert all(float(t).is_integer() for t in ticks), ticks


@pytest.mark.parametrize(("make", "data"), [(quality_figure, QUALITY), (growth_figure, GROWTH)])
def test_the_legend_covers_no_data_and_is_not_cut_off(make, data) -> None:
    fig = make(data)
    ax, renderer = _drawn(fig)
    legend = ax.get_legend()
    assert legend is not None and len(legend.get_texts()) >= 4
    box = legend.get_window_extent(renderer)
    points = _points(ax)
    inside = (points[:, 0] >= box.x0) & (points[:, 0] <= box.x1) & (points[:, 1] >= box.y0) & (points[:, 1] <= box.y1)
    assert not inside.any(), points[inside]
    assert not box.overlaps(ax.get_window_extent(renderer))  # outside the axes altogether
    figure_box = fig.bbox
    assert box.x0 >= 0 and box.y0 >= 0 and box.x1 <= figure_box.x1 and box.y1 <= figure_box.y1  # not cropped
