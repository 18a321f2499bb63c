"""`calops watch`: the dashboard's panels as a live terminal view, refreshed every few seconds.

Each panel is drawn by its Grafana type: a stat as its values, a time series as its last value
and a sparkline over the window, the calorie heatmap as a small bar chart (a column per
bucket), the version timeline as a bar where each version served. Firing alerts come first.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Final

from rich.console import Group, RenderableType
from rich.panel import Panel as Box
from rich.table import Table
from rich.text import Text

from calopsctl.console import out
from calopsctl.panels import (
    Alert,
    Panel,
    PanelData,
    Prometheus,
    PrometheusUnreachableError,
    Series,
    Span,
    buckets,
    connect,
    fetch,
    load_panels,
    on_grid,
    rate_interval,
    span_over,
)

SPARK_BARS: Final = "▁▂▃▄▅▆▇█"
SPARK_WIDTH: Final = 40  # points per sparkline: one range-query step each
BAR_HEIGHT: Final = 4  # lines of the calorie bars
PANEL_WIDTH: Final = 64  # a second column of panels once the terminal fits two
RANGE_KINDS: Final = frozenset({"timeseries", "state-timeline"})
NO_DATA: Final = "no data"
THOUSAND: Final = 1000  # from here on a value reads best without decimals


@dataclass(frozen=True)
class Frame:
    """One refresh: every panel's data over the window and the firing alerts."""

    url: str
    window_s: float
    span: Span
    data: list[PanelData]
    alerts: list[Alert]


def watch(url: str, *, window_s: float, refresh_s: float, once: bool) -> None:
    """Show the panels from the Prometheus at ``url`` until Ctrl-C (exit 0), or one frame with
    ``once``. An unreachable Prometheus fails at once; later, a frame says so and the next
    refresh tries again."""
    panels = load_panels()
    try:
        with connect(url) as prometheus:
            scrape_s = prometheus.scrape_interval()
            first = render(snapshot(prometheus, panels, window_s, scrape_s))
            if once:
                out.print(first)
                return
            _live(first, lambda: _refreshed(prometheus, panels, window_s, scrape_s), refresh_s)
    except KeyboardInterrupt:
        return  # Ctrl-C is how a watch ends: quietly, exit 0


def _refreshed(
    prometheus: Prometheus, panels: list[Panel], window_s: float, scrape_s: float
) -> RenderableType:
    try:
        return render(snapshot(prometheus, panels, window_s, scrape_s))
    except PrometheusUnreachableError as exc:
        return Text(f"{exc} Retrying…", style="red")


def _live(first: RenderableType, next_frame: Callable[[], RenderableType], every: float) -> None:
    """Replace the frame every ``every`` seconds, on the alternate screen as top does: the
    shell comes back as it was when the watch ends."""
    from rich.live import Live

    with Live(first, console=out, auto_refresh=False, screen=True) as live:
        while True:
            time.sleep(every)
            live.update(next_frame(), refresh=True)


def snapshot(
    prometheus: Prometheus, panels: Sequence[Panel], window_s: float, scrape_s: float
) -> Frame:
    """Every panel over the last ``window_s``: time series as ranges, the rest at this instant."""
    span = span_over(window_s, SPARK_WIDTH, scrape_s, time.time())
    rate = rate_interval(span.step, scrape_s)
    # A heatmap's cells cover the whole window in Grafana; its bars here count the same rows.
    window = f"{round(window_s)}s"
    data = [
        fetch(prometheus, panel, rate, span)
        if panel.kind in RANGE_KINDS
        else fetch(prometheus, panel, window if panel.kind == "heatmap" else rate)
        for panel in panels
    ]
    return Frame(prometheus.url, window_s, span, data, prometheus.firing_alerts())


# ---------------------------------------------------------------- drawing


def render(frame: Frame, width: int | None = None) -> RenderableType:
    """The frame as rich renderables: a heading, the firing alerts (first: a tall frame loses
    its bottom on a short terminal), the panels in two columns when ``width`` (default: the
    terminal's) fits them."""
    alerts = Box(_alerts(frame.alerts), title="Firing alerts", title_align="left")
    boxes = [_box(data, frame.span) for data in frame.data]
    columns = max(1, min(2, (width or out.width) // PANEL_WIDTH))
    grid = Table.grid(expand=True, padding=(0, 1))
    for _ in range(columns):
        grid.add_column(ratio=1)
    for start in range(0, len(boxes), columns):
        row = boxes[start : start + columns]
        grid.add_row(*row, *[""] * (columns - len(row)))
    return Group(_heading(frame), alerts, grid)


def _heading(frame: Frame) -> Text:
    taken = datetime.fromtimestamp(frame.span.end).strftime("%H:%M:%S")
    window = _duration(frame.window_s)
    line = f"calops watch · {frame.url} · window {window} · {taken} · Ctrl-C to quit"
    return Text(line, style="bold")


def _duration(seconds: float) -> str:
    for unit, size in (("d", 86_400), ("h", 3_600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"


def _box(data: PanelData, span: Span) -> Box:
    return Box(_body(data, span), title=data.panel.title, title_align="left")


def _body(data: PanelData, span: Span) -> RenderableType:
    """What the panel shows: its rows, else why there are none."""
    if not data.points:
        reason = "; ".join(data.errors) or NO_DATA
        return Text(reason, style="red" if data.errors else "dim")
    kind, unit = data.panel.kind, data.panel.unit
    if kind == "heatmap":
        return Text("\n".join(distribution(buckets(data.series), unit)))
    if kind == "state-timeline":
        return _rows([[s.name, _timeline(on_grid(s, span))] for s in data.series])
    if kind == "timeseries":
        return _rows([_series_row(s, unit, span) for s in data.series])
    return _rows([_stat_row(s, unit, data.panel.text_mode) for s in data.series])


def _stat_row(series: Series, unit: str, text_mode: str) -> list[str]:
    """A stat's name and value, or only the one its panel shows (the model version: its name)."""
    value = format_value(series.last, unit)
    return {"name": [series.name], "value": [value]}.get(text_mode, [series.name, value])


def _rows(rows: list[list[str]]) -> Table:
    table = Table.grid(padding=(0, 2))
    for row in rows:
        table.add_row(*(Text(cell) for cell in row))
    return table


def _series_row(series: Series, unit: str, span: Span) -> list[str]:
    return [series.name, format_value(series.last, unit), sparkline(on_grid(series, span))]


def distribution(per_bucket: Sequence[Series], unit: str) -> list[str]:
    """A small bar chart: a column per bucket, lowest first, as tall as its count; the range
    below it, and the fullest bucket."""
    counts = [bucket.last or 0.0 for bucket in per_bucket]
    bars = vertical_bars(counts, BAR_HEIGHT)
    width = len(bars[0]) if bars else 0
    lowest, highest = per_bucket[0].name.split("-")[0], f"{per_bucket[-1].name} {unit}"
    peak = max(range(len(counts)), key=counts.__getitem__)
    return [
        *bars,
        f"{lowest} {highest:>{max(0, width - len(lowest) - 1)}}",
        f"most rows: {per_bucket[peak].name} {unit} ({counts[peak]:,.0f} of {sum(counts):,.0f})",
    ]


def vertical_bars(counts: Sequence[float], height: int) -> list[str]:
    """Vertical bars two characters wide, ``height`` lines of eighth blocks, top line first;
    a bucket with any count shows at least its lowest eighth."""
    largest = max(counts, default=0.0) or 1.0
    eighths = [max(1, round(8 * height * c / largest)) if c > 0 else 0 for c in counts]
    return [
        "".join(_eighth(level - 8 * line) * 2 for level in eighths)
        for line in reversed(range(height))
    ]


def _eighth(level: int) -> str:
    return " " if level <= 0 else SPARK_BARS[min(level, 8) - 1]


def _alerts(alerts: list[Alert]) -> RenderableType:
    if not alerts:
        return Text("none firing", style="green")
    return _rows([[a.name, a.severity, f"since {a.active_since}", a.summary] for a in alerts])


def sparkline(values: Sequence[float | None]) -> str:
    """One block per value, as high as the value between the lowest and the highest; a blank
    where there is no value; a flat line at mid height when every value is the same."""
    known = [value for value in values if value is not None]
    if not known:
        return " " * len(values)
    low, high = min(known), max(known)
    top = len(SPARK_BARS) - 1
    return "".join(
        " "
        if value is None
        else SPARK_BARS[top // 2 if high == low else round(top * (value - low) / (high - low))]
        for value in values
    )


def _timeline(values: Sequence[float | None]) -> str:
    """A full block for each instant the series existed (the version served), blank elsewhere."""
    return "".join(" " if value is None else "█" for value in values)


def format_value(value: float | None, unit: str) -> str:
    """A value as the panel's Grafana unit shows it; "no data" for none."""
    if value is None:
        return NO_DATA
    if unit == "percentunit":
        return f"{value * 100:.2f}%"
    if unit == "s":
        return f"{value * 1000:.1f} ms" if abs(value) < 1 else f"{value:.2f} s"
    suffix = {"reqps": "req/s", "none": "", "": ""}.get(unit, unit)
    return f"{_number(value)} {suffix}".rstrip()


def _number(value: float) -> str:
    if value.is_integer() or abs(value) >= THOUSAND:
        return f"{value:,.0f}"
    return f"{value:.2f}" if abs(value) >= 1 else f"{value:.4f}"
