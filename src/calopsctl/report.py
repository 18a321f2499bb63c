"""`calops report`: every dashboard panel as a PNG chart over a past span, and an index.html.

The charts come from range queries of the panels' own PromQL (calopsctl.panels), drawn with
matplotlib's Agg backend: no display, no Grafana. A panel without data still gets its chart,
saying so, so a missing signal is seen rather than silently left out.
"""

from __future__ import annotations

import html
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Final

from calapi.errors import CalopsError
from calopsctl.panels import (
    UNIT_LABELS,
    Alert,
    PanelData,
    Span,
    buckets,
    connect,
    fetch,
    load_panels,
    on_grid,
    rate_interval,
    span_over,
)

if TYPE_CHECKING:
    import numpy as np
    from matplotlib.axes import Axes
    from numpy.typing import NDArray

LEGEND_MAX: Final = 12  # more series than this: a legend would hide the chart
POINTS: Final = 240  # range-query steps per chart: finer than a chart this wide can show
INDEX: Final = "index.html"
NO_DATA: Final = "no data"


@dataclass(frozen=True)
class Chart:
    """One panel's PNG: its file name and how much data it drew."""

    data: PanelData
    file: str

    @property
    def summary(self) -> str:
        if self.data.errors:
            return "query error: " + "; ".join(self.data.errors)
        if not self.data.points:
            return NO_DATA
        return f"{len(self.data.series)} series, {self.data.points} points"


def write_report(url: str, since_s: float, since: str, folder: Path) -> Path:
    """Draw every panel over the last ``since_s`` from the Prometheus at ``url`` into
    ``folder`` (``since`` as the user wrote it, for the page); the index.html written."""
    _require_matplotlib()
    panels = load_panels()
    with connect(url) as prometheus:
        scrape_s = prometheus.scrape_interval()
        span = span_over(since_s, POINTS, scrape_s, time.time())
        rate = rate_interval(span.step, scrape_s)
        found = [fetch(prometheus, panel, rate, span) for panel in panels]
        alerts = prometheus.firing_alerts()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        charts = [draw(data, span, folder) for data in found]
        index = folder / INDEX
        index.write_text(_page(charts, alerts, url, since, span), encoding="utf-8")
    except OSError as exc:
        why = exc.strerror or str(exc)
        raise CalopsError(f"Cannot write the report into {folder}: {why}.") from None
    return index


def _require_matplotlib() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise CalopsError(
            "calops report draws its charts with matplotlib, which is not installed; "
            "install it (pip install matplotlib) and try again."
        ) from None


def chart_file(data: PanelData) -> str:
    """``07-predicted-calories-distribution.png``: the panel's id keeps the dashboard's order."""
    slug = re.sub(r"[^a-z0-9]+", "-", data.panel.title.lower()).strip("-")
    return f"{data.panel.id:02d}-{slug}.png"


def draw(data: PanelData, span: Span, folder: Path) -> Chart:
    """The panel's chart as a PNG in ``folder``, drawn as its Grafana type suggests."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(9, 3.4), dpi=100)
    FigureCanvasAgg(figure)  # Agg: renders without a display
    axes = figure.add_subplot()
    axes.set_title(data.panel.title, loc="left")
    chart = Chart(data, chart_file(data))
    if data.points:
        DRAWERS.get(data.panel.kind, _lines)(axes, data, span)
    else:
        _nothing(axes, chart.summary)
    figure.tight_layout()
    figure.savefig(folder / chart.file)
    return chart


def _times(moments: list[float]) -> NDArray[np.datetime64]:
    """Unix seconds as the datetimes matplotlib puts on a time axis (to the millisecond)."""
    import numpy as np

    return np.array([round(moment * 1000) for moment in moments], dtype="datetime64[ms]")


def _time_axis(axes: Axes, span: Span) -> None:
    """The span on the x axis, labelled in this machine's time zone."""
    axes.xaxis_date(tz=datetime.now().astimezone().tzinfo)
    axes.set_xlim(*_times([span.start, span.end]))


def _lines(axes: Axes, data: PanelData, span: Span) -> None:
    """A line per series (stat panels too: their value over time)."""
    scale = 100.0 if data.panel.unit == "percentunit" else 1.0
    for series in data.series:
        values = [math.nan if v is None else v * scale for v in on_grid(series, span)]
        axes.plot(_times(span.grid()), values, label=series.name, marker=".", markersize=3)
    unit = "%" if scale != 1.0 else UNIT_LABELS.get(data.panel.unit, data.panel.unit)
    axes.set_ylabel(unit)
    axes.grid(alpha=0.3)
    if len(data.series) <= LEGEND_MAX:
        axes.legend(loc="upper left", fontsize="small")
    _time_axis(axes, span)


def _heatmap(axes: Axes, data: PanelData, span: Span) -> None:
    """Rows per bucket (y) and step (x), coloured by count: Grafana's heatmap."""
    per_bucket = buckets(data.series)
    matrix = [[v or 0.0 for v in on_grid(bucket, span)] for bucket in per_bucket]
    # Cell edges: each step's cell is centred on its instant.
    edges = _times([moment - span.step / 2 for moment in [*span.grid(), span.end + span.step]])
    mesh = axes.pcolormesh(edges, range(len(per_bucket) + 1), matrix, cmap="viridis")
    axes.set_yticks([i + 0.5 for i in range(len(per_bucket))])
    axes.set_yticklabels([bucket.name for bucket in per_bucket], fontsize="small")
    axes.set_ylabel(UNIT_LABELS.get(data.panel.unit, data.panel.unit))
    axes.figure.colorbar(mesh, ax=axes, label="rows per step")
    _time_axis(axes, span)


def _timeline(axes: Axes, data: PanelData, span: Span) -> None:
    """A band per series where it has points: which model version served when."""
    for row, series in enumerate(data.series):
        values = [math.nan if v is None else row for v in on_grid(series, span)]
        axes.plot(_times(span.grid()), values, linewidth=10, marker="s", solid_capstyle="butt")
    axes.set_yticks(range(len(data.series)))
    axes.set_yticklabels([series.name for series in data.series])
    axes.set_ylim(-0.7, len(data.series) - 0.3)
    _time_axis(axes, span)


def _nothing(axes: Axes, why: str) -> None:
    axes.text(0.5, 0.5, why, ha="center", va="center", transform=axes.transAxes, color="grey")
    axes.set_axis_off()


DRAWERS: Final[dict[str, Callable[[Axes, PanelData, Span], None]]] = {
    "heatmap": _heatmap,
    "state-timeline": _timeline,
}


# ---------------------------------------------------------------- index.html


def _page(charts: list[Chart], alerts: list[Alert], url: str, since: str, span: Span) -> str:
    """index.html: each chart under its title and description, then the firing alerts."""
    taken = datetime.fromtimestamp(span.end).strftime("%Y-%m-%d %H:%M:%S")
    sections = "\n".join(_section(chart) for chart in charts)
    return _PAGE.format(
        since=html.escape(since),
        url=html.escape(url),
        taken=taken,
        step=f"{span.step:g}",
        sections=sections,
        alerts=_alert_list(alerts),
    )


def _section(chart: Chart) -> str:
    title = html.escape(chart.data.panel.title)
    return (
        f"<section><h2>{title}</h2><p>{html.escape(chart.data.panel.description)}</p>"
        f'<img src="{html.escape(chart.file)}" alt="{title}">'
        f'<p class="meta">{html.escape(chart.summary)}</p></section>'
    )


def _alert_list(alerts: list[Alert]) -> str:
    if not alerts:
        return "<p>None firing.</p>"
    items = "".join(
        f"<li><b>{html.escape(a.name)}</b> ({html.escape(a.severity)}) since "
        f"{html.escape(a.active_since)}: {html.escape(a.summary)}</li>"
        for a in alerts
    )
    return f"<ul>{items}</ul>"


_PAGE: Final = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>calops report: last {since}</title>
<style>body{{font-family:sans-serif;max-width:960px;margin:auto}}
img{{max-width:100%}} .meta{{color:#666;font-size:small}}</style></head>
<body><h1>calops report: last {since}</h1>
<p>From {url} at {taken}, a point every {step} s.</p>
{sections}
<h2>Firing alerts</h2>
{alerts}
</body></html>
"""
