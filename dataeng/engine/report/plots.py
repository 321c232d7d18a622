"""The report's plots: matplotlib (Agg) figures encoded as PNG ``data:`` URIs.

Figures are small (a few hundred pixels wide, 90 dpi) so the report stays light; each
plot is drawn only when it has data. Axes that count labels have integer ticks, and the
growth and quality legends sit outside the axes (right of them), so they never hide a point.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from dataeng.engine.report.records import METRIC_KEYS, Picture

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from dataeng.engine.report.records import Report, RoundGrowth, RoundQuality

DPI = 90
METRIC_NAMES = {"iou": "foreground IoU", "miou": "mIoU", "boundary_f1": "boundary F1",
                "boundary_iou": "Boundary IoU"}


def _figure(width: float = 6.0, height: float = 3.2) -> Figure:
    # The object API (no pyplot) needs no global state and no display: Agg only.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def _integer_ticks(axis: Any) -> None:
    # Label counts are whole: without this a plot of 3..5 labels has ticks at 3.5 and 4.5.
    from matplotlib.ticker import MaxNLocator

    axis.set_major_locator(MaxNLocator(integer=True))


def _legend_outside(ax: Axes, fontsize: float) -> None:
    """The legend right of the axes, top-aligned: it never covers data; ``tight_layout`` makes room."""
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, fontsize=fontsize)


def png_uri(fig: Figure) -> str:
    """A figure as a PNG ``data:`` URI."""
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=DPI)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def growth_figure(growth: Sequence[RoundGrowth]) -> Figure:
    """Stacked area over rounds: human labels, corrections, accepted pseudo-labels, queued."""
    rounds = [g.round for g in growth]
    layers = [("human labels", [g.human for g in growth], "#4c72b0"),
              ("corrected by annotators", [g.corrected for g in growth], "#55a868"),
              ("accepted pseudo-labels", [g.accepted_pseudo for g in growth], "#dd8452"),
              ("queued for review", [g.queued for g in growth], "#c44e52")]
    fig = _figure(7.5)
    ax = fig.add_subplot()
    if len(rounds) == 1:
        # An area over one point is invisible; one stacked bar says the same.
        bottom = 0
        for name, values, colour in layers:
            ax.bar(rounds, values, bottom=bottom, label=name, color=colour, width=0.5)
            bottom += values[0]
    else:
        ax.stackplot(rounds, *[v for _, v, _ in layers], labels=[n for n, _, _ in layers],
                     colors=[c for _, _, c in layers], alpha=0.85)
    ax.set_xticks(rounds)
    _integer_ticks(ax.yaxis)
    ax.set_xlabel("round")
    ax.set_ylabel("labels")
    ax.set_title("Dataset growth")
    _legend_outside(ax, 8)
    return fig


def growth_plot(report: Report) -> Picture | None:
    """:func:`growth_figure` of the report's rounds, or None without rounds."""
    if not report.growth:
        return None
    return Picture("Labels per round (human and corrected cumulative; pseudo-labels of each round's teacher)",
                   png_uri(growth_figure(report.growth)))


def quality_figure(quality: Sequence[RoundQuality]) -> Figure:
    """Val (dashed) and test (solid) metrics of each round's student against its human labels.

    The x axis counts human labels (integer ticks); the legend is outside the axes.
    """
    fig = _figure(7.5)
    ax = fig.add_subplot()
    x = [q.human_labels for q in quality]
    colours = dict(zip(METRIC_KEYS, ("#4c72b0", "#dd8452", "#55a868", "#8172b3"), strict=True))
    for key in METRIC_KEYS:
        for split, style in (("test", "-"), ("val", "--")):
            pts = [(xi, (getattr(q, split) or {}).get(key)) for xi, q in zip(x, quality, strict=True)]
            pts = [(a, b) for a, b in pts if b is not None]
            if pts:
                ax.plot(*zip(*pts, strict=True), style, marker="o", color=colours[key],
                        label=f"{split} {METRIC_NAMES[key]}")
    for xi, q in zip(x, quality, strict=True):
        ax.annotate(f"r{q.round}", (xi, 0.0), textcoords="offset points", xytext=(0, 3), ha="center", fontsize=7)
    ax.set_ylim(0, 1.02)
    _integer_ticks(ax.xaxis)
    ax.set_xlabel("human labels (incl. corrections)")
    ax.set_ylabel("score")
    ax.set_title("Model quality per round")
    _legend_outside(ax, 7)
    return fig


def quality_plot(report: Report) -> Picture | None:
    """:func:`quality_figure` of the report's rounds, or None without rounds."""
    if not report.quality:
        return None
    return Picture("Student metrics per round against the number of human labels (solid: test, dashed: val)",
                   png_uri(quality_figure(report.quality)))


def histogram_plot(counts: list[int], title: str, xlabel: str, threshold: float | None = None,
                   colour: str = "#4c72b0") -> Picture | None:
    """A histogram over [0, 1] from bin counts (None when there is nothing to show)."""
    if not counts or not sum(counts):
        return None
    bins = len(counts)
    fig = _figure(4.2, 2.8)
    ax = fig.add_subplot()
    ax.bar([(i + 0.5) / bins for i in range(bins)], counts, width=1 / bins, color=colour, edgecolor="white")
    if threshold is not None:
        ax.axvline(threshold, color="#c44e52", linestyle="--", label=f"accept >= {threshold:g}")
        ax.legend(fontsize=7, loc="best")  # "best" keeps clear of the bars
    ax.set_xlim(0, 1)
    _integer_ticks(ax.yaxis)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("labels")
    ax.set_title(title, fontsize=10)
    return Picture(title, png_uri(fig))


def draw_all(report: Report) -> dict[str, Picture]:
    """Every plot that has data, by name (``growth``, ``quality``, ``confidence``, ...)."""
    pseudo: dict[str, Any] = report.pseudo
    thresholds = pseudo["accept_thresholds"]
    rnd = pseudo["last_round"]
    candidates = {
        "growth": growth_plot(report),
        "quality": quality_plot(report),
        "confidence": histogram_plot(pseudo["histograms"].get("mean_confidence", []),
                                     f"Mean confidence, round {rnd}", "mean confidence",
                                     thresholds["min_mean_confidence"]),
        "confident_fraction": histogram_plot(pseudo["histograms"].get("confident_fraction", []),
                                             f"Confident fraction, round {rnd}", "confident pixel fraction",
                                             thresholds["min_confident_fraction"], "#8172b3"),
        "stability": histogram_plot(pseudo["histograms"].get("stability", []), f"Stability, round {rnd}",
                                    "stability", thresholds["min_stability"], "#dd8452"),
        "edit_iou": histogram_plot(report.review["edit_iou_histogram"], "Edit IoU of corrections",
                                   "IoU(pre-label, correction)", None, "#55a868"),
    }
    return {name: pic for name, pic in candidates.items() if pic is not None}
