"""Render a :class:`~dataeng.engine.report.records.Report` as one self-contained HTML page.

The page comes from the packaged jinja2 template ``engine/report/templates/report.html.j2``
with autoescaping on; pictures are already ``data:`` URIs, the CSS is inline and there
is no script, so the file opens offline and references nothing outside itself.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from dataeng.engine.report.records import Report

TEMPLATE = "report.html.j2"


def fmt(value: object, digits: int = 3) -> str:
    """A number for a table cell: floats rounded, None as an en dash."""
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def pct(value: float | None) -> str:
    """A fraction as a percentage (None as an en dash)."""
    return "–" if value is None else f"{100 * value:.1f}%"


def render_html(report: Report) -> str:
    """The report page as a string."""
    from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

    env = Environment(loader=PackageLoader("dataeng.engine.report", "templates"),
                      autoescape=select_autoescape(default=True, default_for_string=True),
                      undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["fmt"] = fmt
    env.filters["pct"] = pct
    return env.get_template(TEMPLATE).render(r=report, d=report.dataset)
