"""The dashboard's panels, read from the Grafana dashboard the stack ships, and the Prometheus
HTTP API that answers their PromQL.

`calops watch` and `calops report` draw the panels without Grafana. Both read them from
stack/grafana/dashboards/calops.json, so a panel added or changed there shows everywhere: there
is one definition of what each panel asks Prometheus.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from calapi.errors import CalopsError
from calopsctl.paths import stack_dir
from calopsctl.services import PROMETHEUS, loopback_url

if TYPE_CHECKING:
    import httpx

RATE_INTERVAL: Final = "$__rate_interval"
# Prometheus's own default scrape interval, used when the api job's cannot be read.
DEFAULT_SCRAPE_S: Final = 15.0
QUERY_TIMEOUT_S: Final = 10.0
UNIT_LABELS: Final = {"reqps": "req/s", "s": "seconds", "percentunit": "share", "none": ""}
_LEGEND_LABEL: Final = re.compile(r"\{\{\s*(\w+)\s*\}\}")


class PrometheusUnreachableError(CalopsError):
    """Nothing answers like Prometheus at the URL."""


class QueryError(CalopsError):
    """Prometheus answered a query with an error (the panel shows it, the others go on)."""


@dataclass(frozen=True)
class Query:
    """One target of a panel: its PromQL as the dashboard writes it and its legend template."""

    ref: str
    expr: str
    legend: str

    def concrete(self, rate_interval: str) -> str:
        """The PromQL Prometheus can run: Grafana's ``$__rate_interval`` made a duration."""
        return self.expr.replace(RATE_INTERVAL, rate_interval)


@dataclass(frozen=True)
class Panel:
    """A dashboard panel with its queries; ``kind`` is Grafana's panel type."""

    id: int
    title: str
    kind: str  # stat, timeseries, heatmap, state-timeline
    unit: str
    description: str
    queries: tuple[Query, ...]
    text_mode: str = "auto"  # a stat's: name, value, value_and_name or auto (both)


@dataclass(frozen=True)
class Series:
    """One series of a query's answer: its legend name and its finite (unix s, value) points."""

    name: str
    labels: dict[str, str] = field(hash=False)
    points: tuple[tuple[float, float], ...]

    @property
    def last(self) -> float | None:
        return self.points[-1][1] if self.points else None


@dataclass(frozen=True)
class PanelData:
    """What Prometheus answered for a panel: its series, and any query's error."""

    panel: Panel
    series: tuple[Series, ...]
    errors: tuple[str, ...] = ()

    @property
    def points(self) -> int:
        return sum(len(series.points) for series in self.series)


@dataclass(frozen=True)
class Span:
    """The extent of range queries: ``seconds`` up to ``end`` (unix s), a point every ``step``."""

    end: float
    seconds: float
    step: float

    @property
    def start(self) -> float:
        """Whole steps before ``end``, so the last point is now, not up to a step ago."""
        return self.end - (self.seconds // self.step) * self.step

    def grid(self) -> list[float]:
        """The instants a range query answers at, oldest first."""
        count = int(self.seconds // self.step) + 1
        return [self.start + i * self.step for i in range(count)]


@dataclass(frozen=True)
class Alert:
    """A firing alert, as Prometheus's /api/v1/alerts reports it."""

    name: str
    severity: str
    summary: str
    active_since: str


# ---------------------------------------------------------------- the dashboard


def dashboard_file() -> Path:
    """The dashboard Grafana provisions: inside the wheel, else in the checkout."""
    return stack_dir() / "grafana" / "dashboards" / "calops.json"


def load_panels(path: Path | None = None) -> list[Panel]:
    """Every panel with a query, those nested in rows included, in the dashboard's order."""
    source = path or dashboard_file()
    try:
        dashboard = json.loads(source.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CalopsError(f"Cannot read the dashboard {source}: {exc}.") from None
    found = (_panel(raw) for raw in _walk(dashboard.get("panels", [])))
    return [panel for panel in found if panel.queries]


def _walk(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _walk(panel.get("panels", []))  # a collapsed row holds its panels


def _panel(raw: dict[str, Any]) -> Panel:
    defaults = raw.get("fieldConfig", {}).get("defaults", {})
    queries = tuple(
        Query(str(t.get("refId", "")), str(t["expr"]), str(t.get("legendFormat", "")))
        for t in raw.get("targets", [])
        if t.get("expr") and not t.get("hide")
    )
    return Panel(
        id=int(raw.get("id", 0)),
        title=str(raw.get("title", "")),
        kind=str(raw.get("type", "")),
        unit=str(defaults.get("unit", "none")),
        description=str(raw.get("description", "")),
        queries=queries,
        text_mode=str(raw.get("options", {}).get("textMode", "auto")),
    )


def legend_name(template: str, labels: dict[str, str], expr: str) -> str:
    """The series' name as Grafana's legend shows it: ``{{label}}`` filled in, else its labels,
    else the query."""
    named = _LEGEND_LABEL.sub(lambda found: labels.get(found[1], ""), template).strip()
    if named:
        return named
    if labels:
        return "{" + ", ".join(f'{key}="{value}"' for key, value in sorted(labels.items())) + "}"
    return expr


def rate_interval(step_s: float, scrape_s: float) -> str:
    """Grafana's ``$__rate_interval``: the step plus one scrape, and at least four scrapes, so
    every rate() window holds enough samples."""
    seconds = max(step_s + scrape_s, 4 * scrape_s)
    return f"{max(1, math.ceil(seconds))}s"


def span_over(seconds: float, points: int, scrape_s: float, end: float) -> Span:
    """About ``points`` steps over the last ``seconds``; no finer than one scrape, which adds
    nothing."""
    step = max(1.0, scrape_s, seconds / points)
    return Span(end=end, seconds=seconds, step=float(math.ceil(step)))


def on_grid(series: Series, span: Span) -> list[float | None]:
    """The series' values at each instant of ``span``'s grid, None where it has no point."""
    values: list[float | None] = [None] * len(span.grid())
    for moment, value in series.points:
        index = round((moment - span.start) / span.step)
        if 0 <= index < len(values):
            values[index] = value
    return values


def buckets(cumulative: Sequence[Series]) -> list[Series]:
    """Histogram series by ``le`` (cumulative counts) as one series per bucket, lowest first,
    each point the count in that bucket alone and named by its range."""
    ordered = sorted((s for s in cumulative if "le" in s.labels), key=lambda s: _bound(s.labels))
    per_bucket: list[Series] = []
    below: dict[float, float] = {}  # the next lower bucket's cumulative count at each instant
    lower = "0"
    for series in ordered:
        upper = f"{_bound(series.labels):g}"
        counts = tuple((t, max(0.0, value - below.get(t, 0.0))) for t, value in series.points)
        name = f"> {lower}" if upper == "inf" else f"{lower}-{upper}"
        per_bucket.append(Series(name, series.labels, counts))
        below, lower = dict(series.points), upper
    return per_bucket


def _bound(labels: dict[str, str]) -> float:
    return float(labels["le"])  # "+Inf" reads as infinity


# ---------------------------------------------------------------- Prometheus


def resolve_url(explicit: str | None, home: Path) -> str:
    """``--prometheus``, else the Prometheus of the stack recorded in ``home``, else the
    default port on this machine."""
    if explicit:
        return explicit.rstrip("/")
    from calopsctl.state import load_state

    state = load_state(home)
    if state is None:
        return loopback_url(PROMETHEUS.default_port)
    if PROMETHEUS.name not in state.services:
        why = state.extra.get("absent", {}).get(PROMETHEUS.name, "not part of this stack")
        raise CalopsError(
            f"The stack in {home} runs without Prometheus ({why}); pass --prometheus."
        )
    return state.url(PROMETHEUS.name)


class Prometheus:
    """The HTTP API of the Prometheus at ``url``."""

    def __init__(self, url: str, client: httpx.Client) -> None:
        self.url = url
        self._client = client

    def _data(self, path: str, params: dict[str, str] | None = None) -> Any:
        """The ``data`` of a successful answer; QueryError when Prometheus refuses the query,
        PrometheusUnreachableError when nothing answers as Prometheus does."""
        import httpx

        try:
            response = self._client.get(f"{self.url}{path}", params=params)
        except httpx.HTTPError:
            raise PrometheusUnreachableError(
                f"Prometheus is not reachable at {self.url}; start the stack with `calops up` "
                "or pass --prometheus."
            ) from None
        body = _json_object(response)
        if body.get("status") not in ("success", "error"):
            raise PrometheusUnreachableError(
                f"{self.url} answers {path} with HTTP {response.status_code}, not as Prometheus "
                "does; pass Prometheus's URL with --prometheus."
            )
        if body["status"] != "success":
            raise QueryError(str(body.get("error") or f"HTTP {response.status_code}"))
        return body.get("data") or {}

    def query(self, expr: str) -> list[dict[str, Any]]:
        """The instant vector ``expr`` evaluates to now."""
        data = self._data("/api/v1/query", {"query": expr})
        return list(data.get("result", []))

    def query_range(self, expr: str, span: Span) -> list[dict[str, Any]]:
        """The matrix of ``expr`` over ``span``."""
        params = {"query": expr, "start": repr(span.start), "end": repr(span.end)}
        data = self._data("/api/v1/query_range", {**params, "step": f"{span.step:g}s"})
        return list(data.get("result", []))

    def firing_alerts(self) -> list[Alert]:
        """The alerts firing now, oldest first."""
        found = self._data("/api/v1/alerts").get("alerts", [])
        firing = [a for a in found if a.get("state") == "firing"]
        return [_alert(a) for a in sorted(firing, key=lambda a: str(a.get("activeAt", "")))]

    def scrape_interval(self) -> float:
        """Seconds between scrapes of the API (job ``api``), which bounds useful rate windows."""
        from calopsctl.trafficdata import parse_duration

        targets = self._data("/api/v1/targets", {"state": "active"}).get("activeTargets", [])
        for target in targets:
            if target.get("labels", {}).get("job") == "api" and target.get("scrapeInterval"):
                return parse_duration(str(target["scrapeInterval"]))
        return DEFAULT_SCRAPE_S


def _json_object(response: httpx.Response) -> dict[str, Any]:
    """The body as a JSON object; empty when it is not one (an HTML page, a list)."""
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _alert(raw: dict[str, Any]) -> Alert:
    labels, annotations = raw.get("labels", {}), raw.get("annotations", {})
    return Alert(
        name=str(labels.get("alertname", "?")),
        severity=str(labels.get("severity", "")),
        summary=str(annotations.get("summary", "")),
        active_since=_local_time(str(raw.get("activeAt", ""))),
    )


def _local_time(stamp: str) -> str:
    """Prometheus's UTC RFC 3339 time as this machine's local time, to the second."""
    try:
        moment = datetime.fromisoformat(stamp)
    except ValueError:
        return stamp
    return moment.astimezone().strftime("%Y-%m-%d %H:%M:%S")


@contextmanager
def connect(url: str) -> Iterator[Prometheus]:
    """A Prometheus client for the block; the first request says whether it answers."""
    import httpx

    with httpx.Client(timeout=QUERY_TIMEOUT_S) as client:
        yield Prometheus(url, client)


def fetch(prometheus: Prometheus, panel: Panel, rate: str, span: Span | None = None) -> PanelData:
    """The panel's series: at this instant, or over ``span`` when given. A query Prometheus
    rejects becomes the panel's error; an unreachable Prometheus raises."""
    series: list[Series] = []
    errors: list[str] = []
    for query in panel.queries:
        expr = query.concrete(rate)
        try:
            found = prometheus.query(expr) if span is None else prometheus.query_range(expr, span)
        except QueryError as exc:
            errors.append(f"{query.ref}: {exc}")
            continue
        series.extend(_series(raw, query.legend, expr) for raw in found)
    return PanelData(panel, tuple(series), tuple(errors))


def _series(raw: dict[str, Any], legend: str, expr: str) -> Series:
    labels = {str(k): str(v) for k, v in raw.get("metric", {}).items()}
    samples = raw["values"] if "values" in raw else [raw.get("value")]
    points = tuple(
        (float(t), float(v)) for t, v in (s for s in samples if s) if math.isfinite(float(v))
    )
    return Series(legend_name(legend, labels, expr), labels, points)
