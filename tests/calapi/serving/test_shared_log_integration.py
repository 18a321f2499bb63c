"""Ground truth that survives restarts and joins on any worker, with real processes.

`calops serve` under real uvicorn (two workers sharing one port), a real Prometheus with the
shipped recording rules, SIGTERM and SIGKILL in the middle of traffic.
"""

from __future__ import annotations

import http.client
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from api_support import row
from stacktools import PROMETHEUS_CONFIG, finite_values, instant_query
from support import free_port, running, stop

pytestmark = pytest.mark.integration

CALOPS = str(Path(sys.executable).with_name("calops"))
RECORDING_RULES = PROMETHEUS_CONFIG.parent / "recording.yml"
needs_prometheus = pytest.mark.skipif(
    shutil.which("prometheus") is None, reason="Debian's prometheus is missing"
)


def serve_argv(port: int, model: Path, log: Path, *extra: str) -> list[str]:
    return [CALOPS, "serve", "--port", str(port), "--model", str(model),
            "--prediction-log", str(log), *extra]  # fmt: skip


def post_fresh(url: str, path: str, body: dict[str, object]) -> tuple[int, dict[str, object]]:
    """POST over a new connection, so the kernel may hand it to any worker."""
    address = urlsplit(url)
    connection = http.client.HTTPConnection(address.netloc, timeout=10)
    try:
        connection.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
        response = connection.getresponse()
        return response.status, json.loads(response.read() or b"{}")
    finally:
        connection.close()


def predict_all(url: str, ids: list[str], *, threads: int = 8) -> dict[str, float]:
    """Predict one row per id over fresh connections; the prediction of each id."""

    def one(index: int, key: str) -> tuple[str, float]:
        status, answer = post_fresh(url, "/predict", row(id=key, Duration=1 + index % 30))
        assert status == 200, answer
        return key, float(answer["Calories"])  # type: ignore[arg-type]

    with ThreadPoolExecutor(threads) as pool:
        return dict(pool.map(one, range(len(ids)), ids))


def send_feedback(url: str, truths: dict[str, float], *, threads: int = 8) -> list[int]:
    """POST each truth over fresh connections; the status of each answer."""

    def one(item: tuple[str, float]) -> int:
        return post_fresh(url, "/feedback", {"id": item[0], "Calories": item[1]})[0]

    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(one, truths.items()))


def answering_pids(url: str, *, requests: int = 400, threads: int = 8) -> set[int]:
    """The worker processes that answered concurrent requests over fresh connections."""
    address = urlsplit(url).netloc

    def one(_: int) -> int:
        connection = http.client.HTTPConnection(address, timeout=10)
        try:
            connection.request("GET", "/info")
            return int(json.loads(connection.getresponse().read())["environment"]["pid"])
        finally:
            connection.close()

    with ThreadPoolExecutor(threads) as pool:
        return set(pool.map(one, range(requests)))


def truths_for(predicted: dict[str, float]) -> dict[str, float]:
    """A true value per id, off its prediction by a varying amount."""
    return {key: value * (0.8 + (n % 9) / 20) for n, (key, value) in enumerate(predicted.items())}


def client_rmsle(predicted: dict[str, float], truths: dict[str, float]) -> float:
    terms = [(math.log1p(predicted[k]) - math.log1p(truths[k])) ** 2 for k in truths]
    return math.sqrt(math.fsum(terms) / len(terms))


def metric(url: str, name: str) -> float:
    """One unlabelled sample from the API's /metrics."""
    for line in httpx.get(f"{url}/metrics", timeout=10).text.splitlines():
        if line.startswith(f"{name} "):
            return float(line.split()[1])
    raise AssertionError(f"{name} is not in {url}/metrics")


@contextmanager
def prometheus_scraping(target: str, folder: Path) -> Iterator[str]:
    """A real Prometheus scraping ``target`` every second, with the shipped recording rules."""
    port = free_port()
    config = folder / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        f"rule_files: ['{RECORDING_RULES}']\n"
        f"scrape_configs: [{{job_name: api, static_configs: [{{targets: ['{target}']}}]}}]\n"
    )
    argv = ["prometheus", f"--config.file={config}", f"--storage.tsdb.path={folder / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}"]  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    with running(argv, ready_url=f"{url}/-/ready", log=folder / "prometheus.log"):
        yield url


def settled(prometheus: str, expr: str, expected: float, *, attempts: int = 60) -> float:
    """Poll ``expr`` until it equals ``expected`` (Prometheus scraped after the traffic)."""
    last: list[float] = []
    for _ in range(attempts):
        last = finite_values(instant_query(prometheus, expr))
        if last and last[0] == expected:
            return last[0]
        time.sleep(0.5)
    raise AssertionError(f"{expr} never reached {expected} (last: {last})")


def scalar(prometheus: str, expr: str) -> float:
    values = finite_values(instant_query(prometheus, expr))
    assert len(values) == 1, (expr, values)
    return values[0]


@needs_prometheus
def test_two_workers_join_feedback_anywhere_and_prometheus_shows_exact_totals(
    trained_model_dir: Path, tmp_path: Path
) -> None:
    """`calops serve --workers 2`: 2,000 predictions and their feedback over fresh connections,
    every feedback 200 and every duplicate 409 wherever it lands; Prometheus's request counts
    are exact and its RMSLE equals the client's to 1e-6."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    argv = serve_argv(port, trained_model_dir, tmp_path / "predictions.db", "--workers", "2")
    with (
        running(argv, ready_url=f"{url}/readyz", log=tmp_path / "serve.log"),
        prometheus_scraping(f"127.0.0.1:{port}", tmp_path) as prometheus,
    ):
        assert len(answering_pids(url)) == 2, "both workers must answer"
        # As in a stack, Prometheus has seen the counters before the traffic: increase() over
        # the window counts from that first sample.
        settled(prometheus, "sum(app_feedback_squared_log_error_count)", 0)
        predicted = predict_all(url, [f"p{n}" for n in range(2000)])
        truths = truths_for(predicted)
        statuses = send_feedback(url, truths)
        duplicates = send_feedback(url, dict(list(truths.items())[:100]))
        assert statuses == [200] * 2000
        assert duplicates == [409] * 100
        expected = client_rmsle(predicted, truths)

        requests = 'sum(app_requests_total{route="%s",status="%s"})'
        settled(prometheus, requests % ("/feedback", "409"), 100)
        assert scalar(prometheus, requests % ("/predict", "200")) == 2000
        assert scalar(prometheus, requests % ("/feedback", "200")) == 2000
        assert scalar(prometheus, "sum(app_pred_calories_count)") == 2000
        from_counters = scalar(
            prometheus,
            "sqrt(sum(app_feedback_squared_log_error_sum)"
            " / sum(app_feedback_squared_log_error_count))",
        )
        assert from_counters == pytest.approx(expected, rel=1e-6)
        assert metric(url, "app_rolling_rmsle_5m") == pytest.approx(expected, rel=1e-6)
        recorded = recorded_after_last_scrape(prometheus, "calops:app_rolling_rmsle_5m")
        assert recorded == pytest.approx(expected, rel=1e-6)
        assert metric(url, "app_feedback_pending_predictions") == 0


def recorded_after_last_scrape(prometheus: str, rule: str, *, attempts: int = 40) -> float:
    """The recording rule's value from an evaluation after the counters' latest scrape."""
    scraped = scalar(prometheus, "max(timestamp(app_feedback_squared_log_error_count))")
    for _ in range(attempts):
        evaluated = finite_values(instant_query(prometheus, f"timestamp({rule})"))
        if evaluated and evaluated[0] > scraped:
            return scalar(prometheus, rule)
        time.sleep(1.0)
    raise AssertionError(f"{rule} was not evaluated after the last scrape")


def test_predictions_survive_a_sigterm_and_their_feedback_counts(
    trained_model_dir: Path, tmp_path: Path
) -> None:
    """Predict 500, SIGTERM the API, start it again: all 500 feedbacks are 200 and the rolling
    RMSLE is theirs."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    argv = serve_argv(port, trained_model_dir, tmp_path / "predictions.db")
    with running(argv, ready_url=f"{url}/readyz", log=tmp_path / "first.log") as first:
        predicted = predict_all(url, [f"r{n}" for n in range(500)])
        stop(first)  # SIGTERM to the process group, as a service manager would
    with running(argv, ready_url=f"{url}/readyz", log=tmp_path / "second.log"):
        assert metric(url, "app_feedback_pending_predictions") == 500
        truths = truths_for(predicted)
        assert send_feedback(url, truths) == [200] * 500
        assert metric(url, "app_rolling_rmsle_5m") == pytest.approx(
            client_rmsle(predicted, truths), rel=1e-9
        )


class Prober:
    """Predicts one row at a time in a thread and notes when each answer arrived."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.answered: dict[str, float] = {}  # id -> wall time its 200 arrived
        self.predicted: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Prober:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=2.0) as client:
            for n in range(100_000):
                if self._stop.is_set():
                    return
                key = f"probe-{n}"
                try:
                    response = client.post("/predict", json=row(id=key))
                except httpx.HTTPError:
                    time.sleep(0.01)
                    continue
                if response.status_code == 200:
                    self.answered[key] = time.time()
                    self.predicted[key] = response.json()["Calories"]
                time.sleep(0.002)


def test_a_kill_9_during_traffic_loses_at_most_the_last_flush(
    trained_model_dir: Path, tmp_path: Path
) -> None:
    """SIGKILL while `calops simulate` sends 200 req/s: after a restart, the feedback of every
    prediction whose record was committed is accepted. The loss window is measured: only
    predictions answered in the last 100 ms before the kill (5 flush intervals of 20 ms) may be
    lost."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    argv = serve_argv(port, trained_model_dir, tmp_path / "predictions.db")
    simulate = [CALOPS, "simulate", "--url", url, "--rps", "200", "--duration", "30",
                "--feedback-delay", "60", "--json"]  # fmt: skip
    with (
        running(argv, ready_url=f"{url}/readyz", log=tmp_path / "first.log") as api,
        (tmp_path / "simulate.log").open("wb") as sink,
    ):
        traffic = subprocess.Popen(simulate, stdout=sink, stderr=subprocess.STDOUT)
        try:
            with Prober(url) as prober:
                time.sleep(3.0)
                killed_at = time.time()
                os.killpg(api.pid, signal.SIGKILL)
                api.wait(timeout=10)
                time.sleep(0.3)
        finally:
            traffic.kill()
            traffic.wait(timeout=10)
    assert len(prober.answered) > 100, "the prober must have been answered before the kill"
    with running(argv, ready_url=f"{url}/readyz", log=tmp_path / "second.log"):
        truths = dict.fromkeys(prober.answered, 100.0)
        statuses = dict(zip(truths, send_feedback(url, truths), strict=True))
    lost = [prober.answered[key] for key, status in statuses.items() if status == 404]
    assert set(statuses.values()) <= {200, 404}
    window = killed_at - min(lost) if lost else 0.0
    print(f"kill -9: {len(lost)} of {len(statuses)} answered predictions lost; "
          f"the oldest was answered {window * 1000:.0f} ms before the kill")  # fmt: skip
    assert window <= 0.1
