"""The real thing: uvicorn on loopback, scraped over HTTP, by Prometheus, via calops serve."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from api_support import row
from support import free_port, running

pytestmark = pytest.mark.integration

SEED_QUERIES = (
    "sum by (route) (rate(app_requests_total[1m]))",
    "histogram_quantile(0.95, sum by (le) (rate(app_request_latency_seconds_bucket[1m])))",
    "app_rolling_rmsle_5m",
)


def _seed_curl_loop(url: str) -> None:
    for i in range(1, 21):
        response = httpx.post(f"{url}/predict", json=row(id=i), timeout=10)
        assert response.status_code == 200


def test_live_api_answers_the_seed_loop_and_metrics_over_http(live_api: str) -> None:
    """Under uvicorn, the seed's curl loop gets 200s and /metrics shows them by route template."""
    _seed_curl_loop(live_api)
    feedback = httpx.post(f"{live_api}/feedback", json={"id": 3, "Calories": 180.0}, timeout=10)
    assert feedback.status_code == 200
    text = httpx.get(f"{live_api}/metrics", timeout=10).text
    assert 'app_requests_total{method="POST",route="/predict",status="200"}' in text
    assert 'app_request_latency_seconds_bucket{le="0.005",route="/predict"}' in text
    assert "app_rolling_rmsle_5m " in text
    assert "app_rolling_rmsle_5m NaN" not in text


@pytest.mark.skipif(shutil.which("prometheus") is None, reason="Debian's prometheus is missing")
def test_real_prometheus_answers_the_seed_queries(live_api: str, tmp_path: Path) -> None:
    """Prometheus scraping the API returns data for each of the seed's three queries."""
    port = free_port()
    target = live_api.removeprefix("http://")
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s}\n"
        f"scrape_configs: [{{job_name: api, static_configs: [{{targets: ['{target}']}}]}}]\n"
    )
    argv = [
        "prometheus", f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
    ]  # fmt: skip
    prometheus = f"http://127.0.0.1:{port}"
    with running(argv, ready_url=f"{prometheus}/-/ready", log=tmp_path / "prometheus.log"):
        answered: dict[str, list[dict[str, Any]]] = {}
        for _ in range(60):  # bounded: about a minute of scrapes at most
            _seed_curl_loop(live_api)
            httpx.post(f"{live_api}/feedback", json={"id": 5, "Calories": 170.0}, timeout=10)
            for query in SEED_QUERIES:
                found = httpx.get(f"{prometheus}/api/v1/query", params={"query": query}).json()
                answered[query] = [r for r in found["data"]["result"] if r["value"][1] != "NaN"]
            if all(answered.values()):
                break
            time.sleep(1.0)
    routes = {r["metric"].get("route") for r in answered[SEED_QUERIES[0]]}
    assert "/predict" in routes
    assert all(answered.values()), answered


def test_calops_serve_runs_the_api_and_refuses_a_busy_port(
    trained_model_dir: Path, tmp_path: Path
) -> None:
    """`calops serve` answers the seed loop; a second one on the same port exits 1 naming it."""
    port = free_port()
    calops = str(Path(sys.executable).with_name("calops"))
    argv = [calops, "serve", "--port", str(port), "--model", str(trained_model_dir)]
    url = f"http://127.0.0.1:{port}"
    with running(argv, ready_url=f"{url}/readyz", log=tmp_path / "serve.log"):
        _seed_curl_loop(url)
        second = subprocess.run(argv, check=False, capture_output=True, text=True, timeout=60)
    assert second.returncode == 1
    assert f"Port {port}" in second.stderr
    assert "--port" in second.stderr
    assert "Traceback" not in second.stderr
