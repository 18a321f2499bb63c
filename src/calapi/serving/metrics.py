"""The API's Prometheus metrics (names are a contract with the dashboards) and their middleware."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Final

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Histogram, Summary, multiprocess
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from calapi.model.features import FEATURES, FloatArray
from calapi.serving.drift import DriftSnapshot
from calapi.serving.predlog import PredictionLog, rmsle

# Requests are answered in about a millisecond; the tail reaches a big batch's 0.1-0.5 s.
LATENCY_BUCKETS: Final = (
    0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5,
)  # fmt: skip
# Sessions burn about 1-314 kcal; finer where most predictions fall.
CALORIE_BUCKETS: Final = (
    5, 10, 20, 30, 40, 50, 60, 70, 80, 90, 100, 120, 140, 160, 180, 200, 225, 250, 275, 300,
    350, 400,
)  # fmt: skip
# Ground truth arrives after seconds (simulator) up to the store's maximum age (1 h default).
LAG_BUCKETS: Final = (0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200)
BATCH_ROW_BUCKETS: Final = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096, 10000)
UNMATCHED_ROUTE: Final = "unmatched"
KNOWN_METHODS: Final = frozenset(("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"))
RELOAD_RESULTS: Final = ("loaded", "unchanged", "failed", "refused")


class ApiMetrics:
    """Every metric the API exports, registered on the registry it is given."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        # Set when several worker processes serve one port (``calops serve --workers N``).
        self.multiprocess_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None
        self.exposed = registry  # what GET /metrics shows
        self.requests = Counter(
            "app_requests", "HTTP requests answered, by route template, method and status.",
            ("route", "method", "status"), registry=registry,
        )  # fmt: skip
        self.latency = Histogram(
            "app_request_latency_seconds", "Time to answer a request, by route template [s].",
            ("route",), buckets=LATENCY_BUCKETS, registry=registry,
        )  # fmt: skip
        self.pred_calories = BulkHistogram(
            "app_pred_calories", "Predicted energy expenditure per row [kcal].",
            buckets=CALORIE_BUCKETS, registry=registry,
        )  # fmt: skip
        self.feedback_lag = Histogram(
            "app_feedback_lag_seconds", "Feedback time minus prediction time [s].",
            buckets=LAG_BUCKETS, registry=registry,
        )  # fmt: skip
        self.squared_log_error = Summary(
            "app_feedback_squared_log_error", "Squared log error of each matched feedback: "
            "its _sum and _count make the RMSLE of any window, summed over API processes.",
            registry=registry,
        )  # fmt: skip
        self._init_model_metrics(registry)
        self._init_feedback_metrics(registry)

    def _init_model_metrics(self, registry: CollectorRegistry) -> None:
        self.model_reloads = Counter(
            "app_model_reloads", "Looks at the model source (start, watcher changes, POST "
            "/reload), by result: loaded, unchanged, failed or refused (unsafe to load).",
            ("result",), registry=registry,
        )  # fmt: skip
        for result in RELOAD_RESULTS:
            self.model_reloads.labels(result)
        self.model_stale = False  # a failed load left an older model serving
        self.out_of_range = Counter(
            "app_out_of_range_rows", "Rows served with a feature outside its training range.",
            ("feature",), registry=registry,
        )  # fmt: skip
        self.batch_rows = Histogram(
            "app_predict_batch_rows", "Rows per model call after micro-batching [rows].",
            buckets=BATCH_ROW_BUCKETS, registry=registry,
        )  # fmt: skip
        self.current_model: tuple[str, str, str, str] | None = None
        self.out_of_range_children = {name: self.out_of_range.labels(name) for name in FEATURES}

    def _init_feedback_metrics(self, registry: CollectorRegistry) -> None:
        self.evictions = Counter(
            "app_feedback_evictions", "Unanswered predictions dropped from the log, by reason.",
            ("reason",), registry=registry,
        )  # fmt: skip
        for reason in ("capacity", "age"):
            self.evictions.labels(reason)

    def show_model(
        self, version: str | None, sha256: str = "", source: str = "", *, alias: str | None = None
    ) -> None:
        """Point app_model_info at the model now answering (or at none): one series, one model."""
        if version is None:
            self.current_model = None
        else:
            self.current_model = (version, alias or "", sha256[:12], source)

    def bind_state(
        self, *, drift: Callable[[], DriftSnapshot | None], log: PredictionLog,
        window_seconds: float,
    ) -> None:  # fmt: skip
        """Export what is read at scrape time: this process's model and drift window, and the
        shared log's awaiting predictions and rolling RMSLE."""
        collectors = (
            StateCollector(
                lambda: self.current_model, log, window_seconds, stale=lambda: self.model_stale
            ),
            DriftCollector(drift),
        )
        for collector in collectors:
            self.registry.register(collector)
        if self.multiprocess_dir:
            # Counters and histograms of every worker come from their files; the state is
            # read by whichever worker answers the scrape.
            self.exposed = CollectorRegistry()
            multiprocess.MultiProcessCollector(  # type: ignore[no-untyped-call]
                self.exposed, self.multiprocess_dir
            )
            for collector in collectors:
                self.exposed.register(collector)

    def record_batch(self, calories: FloatArray, out_of_range: dict[str, int]) -> None:
        """One model call: its rows, each predicted value, rows outside the training range."""
        self.batch_rows.observe(len(calories))
        self.pred_calories.observe_many(calories)
        for name, count in out_of_range.items():
            if count:
                self.out_of_range_children[name].inc(count)


class BulkHistogram:
    """A histogram that takes a whole batch of values in one numpy pass.

    prometheus_client's ``Histogram.observe`` takes one value per call, a Python loop over
    every predicted row; this counts a batch per bucket with numpy and adds each count to the
    histogram's bucket once. The buckets are the histogram's own values, so the samples and
    the multiprocess files are exactly what ``observe`` would have written.
    """

    def __init__(
        self, name: str, documentation: str, *, buckets: Sequence[float],
        registry: CollectorRegistry,
    ) -> None:  # fmt: skip
        self.histogram = Histogram(name, documentation, buckets=buckets, registry=registry)
        self._bounds = np.asarray(self.histogram._upper_bounds[:-1])  # without +Inf
        self._buckets = self.histogram._buckets
        self._sum = self.histogram._sum

    def observe_many(self, values: FloatArray) -> None:
        """Count every value in its bucket (upper bounds inclusive, as Prometheus's ``le``)."""
        per_bucket = np.bincount(
            np.searchsorted(self._bounds, values, side="left"), minlength=len(self._buckets)
        )
        for index in np.flatnonzero(per_bucket).tolist():
            self._buckets[index].inc(int(per_bucket[index]))
        self._sum.inc(float(values.sum()))


class RequestRecorder:
    """Counts and times one answered HTTP request under its route template."""

    def __init__(self, metrics: ApiMetrics) -> None:
        self.metrics = metrics
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    def record(self, route: str, method: str, status: int, seconds: float) -> None:
        """Add the request to app_requests_total and app_request_latency_seconds."""
        key = (route, method if method in KNOWN_METHODS else "other", status)
        children = self._children.get(key)
        if children is None:
            children = self._make_children(key)
        children[0].inc()
        children[1].observe(seconds)

    def _make_children(self, key: tuple[str, str, int]) -> tuple[Any, Any]:
        template, method, status = key
        children = (
            self.metrics.requests.labels(template, method, str(status)),
            self.metrics.latency.labels(template),
        )
        self._children[key] = children
        return children


class MetricsMiddleware:
    """Pure-ASGI middleware: count and time every HTTP request by its route template."""

    def __init__(self, app: ASGIApp, metrics: ApiMetrics) -> None:
        self.app = app
        self.recorder = RequestRecorder(metrics)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_with_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_with_status)
        finally:
            seconds = time.perf_counter() - start
            self.recorder.record(route_template(scope), scope["method"], status, seconds)


def route_template(scope: Scope) -> str:
    """The template of the route the router matched (never the raw path), else "unmatched"."""
    route = scope.get("route")
    return getattr(route, "path", UNMATCHED_ROUTE) if route is not None else UNMATCHED_ROUTE


class StateCollector(Collector):
    """Gauges read at scrape time: the model this process serves, and from the shared
    prediction log, the predictions awaiting truth and the rolling RMSLE (the same value
    from every process that shares the log)."""

    def __init__(
        self, model: Callable[[], tuple[str, str, str, str] | None], log: PredictionLog,
        window_seconds: float, *, stale: Callable[[], bool] = lambda: False,
    ) -> None:  # fmt: skip
        self._model = model
        self._stale = stale
        self._log = log
        self._window = window_seconds

    def describe(self) -> Iterator[Metric]:
        yield from _state_families()

    def collect(self) -> Iterator[Metric]:
        info, loaded, stale, pending, rolling = _state_families()
        model = self._model()
        loaded.add_metric([], 0 if model is None else 1)
        stale.add_metric([], 1 if model is not None and self._stale() else 0)
        if model is not None:
            info.add_metric(list(model), 1)
        yield from (info, loaded, stale)
        try:
            awaiting = self._log.awaiting()
            total, count = self._log.rolling(self._window)
        except Exception:  # a scrape must answer while the log is away
            return
        pending.add_metric([], awaiting)
        rolling.add_metric([], rmsle(total, count))
        yield from (pending, rolling)


def _state_families() -> tuple[GaugeMetricFamily, ...]:
    return (
        GaugeMetricFamily(
            "app_model_info", "1 for the model answering now: version, alias (empty when "
            "none), sha256 prefix, source.", labels=("version", "alias", "sha256", "source"),
        ),
        GaugeMetricFamily("app_model_loaded", "1 when a model is loaded and serving, else 0."),
        GaugeMetricFamily(
            "app_model_stale", "1 while a failed or refused load left an older model serving.",
        ),
        GaugeMetricFamily(
            "app_feedback_pending_predictions",
            "Predictions in the prediction log still awaiting ground truth (every process).",
        ),
        GaugeMetricFamily(
            "app_rolling_rmsle_5m", "RMSLE of the feedback received in the rolling window "
            "(300 s by default) by every process sharing the prediction log; NaN when none.",
        ),
    )  # fmt: skip


DRIFT_PSI: Final = "app_feature_drift_psi"
DRIFT_ROWS: Final = "app_drift_window_rows"
DRIFT_MALE_SHARE: Final = "app_drift_male_share_ratio"


class DriftCollector(Collector):
    """Drift gauges computed at scrape time from the drift window (none without a reference).

    The hot path only adds bin counts; the PSI is computed here, once per scrape.
    """

    def __init__(self, read: Callable[[], DriftSnapshot | None]) -> None:
        self._read = read

    def describe(self) -> Iterator[Metric]:
        """The metric names, so the registry can refuse a clash without collecting."""
        yield from _drift_families()

    def collect(self) -> Iterator[Metric]:
        """PSI per feature and for the prediction, rows in the window, male share."""
        snapshot = self._read()
        if snapshot is None:
            return
        psi, rows, male = _drift_families()
        for name, value in snapshot.psi.items():
            psi.add_metric([name], value)
        rows.add_metric([], snapshot.rows)
        if snapshot.reference_male_share is not None:
            window = np.nan if snapshot.male_share is None else snapshot.male_share
            male.add_metric(["window"], window)
            male.add_metric(["reference"], snapshot.reference_male_share)
        yield from (psi, rows, male)


def _drift_families() -> tuple[GaugeMetricFamily, GaugeMetricFamily, GaugeMetricFamily]:
    return (
        GaugeMetricFamily(
            DRIFT_PSI, "Population Stability Index of each feature and of the prediction in "
            "the drift window against the model card's training reference; NaN until the "
            "window holds enough rows.", labels=("feature",),
        ),
        GaugeMetricFamily(
            DRIFT_ROWS, "Rows served in the drift window (300 s by default) [rows]."
        ),
        GaugeMetricFamily(
            DRIFT_MALE_SHARE, "Share of male rows: in the drift window and in the training "
            "reference [ratio].", labels=("distribution",),
        ),
    )  # fmt: skip
