"""The provisioned Grafana dashboard shows data: every panel's PromQL answers from a real
Prometheus scraping the real API after real traffic."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from stacktools import (
    dashboard_panels,
    instant_query,
    load_dashboard,
    local_prometheus,
    unanswered_panels,
    wait_for_query,
)

pytestmark = pytest.mark.integration

ROWS = 24
DRIFT_ROWS = 250  # above the API's default CALOPS_DRIFT_MIN_ROWS, so drift has a value


@pytest.fixture(scope="module")
def prometheus(live_api: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Debian's prometheus on a free loopback port, scraping the live API each second."""
    if shutil.which("prometheus") is None:
        pytest.skip("prometheus not found: install Debian's `prometheus` package")
    with local_prometheus(live_api, tmp_path_factory.mktemp("prometheus")) as url:
        yield url


def synthetic_rows(count: int) -> list[dict[str, Any]]:
    """Plausible rows with their true calories, from the synthetic generator."""
    from calapi.model.synthetic import generate

    frame = generate(count, seed=11)
    frame["id"] = [f"dash-{i}" for i in range(count)]
    return list(frame.to_dict("records"))


def send_traffic(api_url: str, rows: list[dict[str, Any]]) -> None:
    """Predict each row, send feedback for each, and one rejected row (a 4xx)."""
    with httpx.Client(base_url=api_url, timeout=10.0) as client:
        for row in rows:
            features = {key: value for key, value in row.items() if key != "Calories"}
            client.post("/predict", json=features).raise_for_status()
        for row in rows:
            feedback = {"id": row["id"], "Calories": row["Calories"]}
            client.post("/feedback", json=feedback).raise_for_status()
        bad = {**{k: v for k, v in rows[0].items() if k != "Calories"}, "Weight": -5}
        assert client.post("/predict", json=bad).status_code == 422


def send_batch(api_url: str, rows: list[dict[str, Any]]) -> None:
    """Predict ``rows`` in one batch request (no feedback): enough rows for drift."""
    instances = [{k: v for k, v in row.items() if k not in ("Calories", "id")} for row in rows]
    response = httpx.post(f"{api_url}/predict", json={"instances": instances}, timeout=30.0)
    response.raise_for_status()


@pytest.fixture(scope="module")
def traffic(live_api: str, prometheus: str) -> str:
    """Two rounds of traffic, each seen by a scrape, so every rate() has an increase."""
    predicted = 'sum(app_requests_total{route="/predict", status=~"2.."})'
    rows = synthetic_rows(2 * ROWS)
    wait_for_query(prometheus, 'up{job="api"}', at_least=1)
    before = sum(float(s["value"][1]) for s in instant_query(prometheus, predicted))
    send_traffic(live_api, rows[:ROWS])
    wait_for_query(prometheus, predicted, at_least=before + ROWS)
    send_traffic(live_api, rows[ROWS:])
    wait_for_query(prometheus, predicted, at_least=before + 2 * ROWS)
    wait_for_query(prometheus, "sum(app_feedback_lag_seconds_count)", at_least=2 * ROWS)
    send_batch(live_api, synthetic_rows(DRIFT_ROWS))
    wait_for_query(prometheus, "app_drift_window_rows", at_least=DRIFT_ROWS)
    # The recording rules' group runs every 5 s: the RMSLE over every process needs one pass.
    wait_for_query(prometheus, "calops:app_rolling_rmsle_5m", at_least=0)
    return prometheus


def test_every_panel_query_returns_data(traffic: str) -> None:
    """Each target of each dashboard panel returns at least one finite sample."""
    assert unanswered_panels(traffic) == []


def test_model_panel_shows_the_served_version_and_its_alias(live_api: str, traffic: str) -> None:
    """The "Model version" panel groups by version and alias, and names what /info reports."""
    (panel,) = [p for p in dashboard_panels(load_dashboard()) if p["title"] == "Model version"]
    (target,) = panel["targets"]
    assert target["legendFormat"] == "{{version}} {{alias}}"
    (series,) = instant_query(traffic, target["expr"])
    served = httpx.get(f"{live_api}/info", timeout=10.0).json()["model"]
    assert series["metric"].get("version") == served["version"]
    assert series["metric"].get("alias", "") == (served["alias"] or "")


def test_versions_panel_shows_the_served_version_over_time(live_api: str, traffic: str) -> None:
    """ "Model versions over time" is a timeline with one row per version: the served one."""
    (panel,) = [
        p for p in dashboard_panels(load_dashboard()) if p["title"] == "Model versions over time"
    ]
    assert panel["type"] == "state-timeline"
    (target,) = panel["targets"]
    (series,) = instant_query(traffic, target["expr"])
    served = httpx.get(f"{live_api}/info", timeout=10.0).json()["model"]
    assert series["metric"] == {"version": served["version"]}


def test_model_change_annotation_marks_when_a_version_starts(live_api: str, traffic: str) -> None:
    """The "Model changes" annotation query names the served version when it first answered,
    and nothing a minute after (a version serving on is no change)."""
    (annotation,) = [
        a for a in load_dashboard()["annotations"]["list"] if a["name"] == "Model changes"
    ]
    history = instant_query(traffic, "app_model_info[1h]")
    first = min(float(sample[0]) for series in history for sample in series["values"])
    served = httpx.get(f"{live_api}/info", timeout=10.0).json()["model"]["version"]
    assert query_at(traffic, annotation["expr"], first) == [served]
    assert query_at(traffic, annotation["expr"], first + 61) == []


def query_at(prometheus_url: str, expr: str, moment: float) -> list[str]:
    """The ``version`` label of each series ``expr`` returns at ``moment`` (unix s)."""
    params = {"query": expr, "time": repr(moment)}
    body = httpx.get(f"{prometheus_url}/api/v1/query", params=params, timeout=10.0).json()
    assert body["status"] == "success", body
    return [series["metric"]["version"] for series in body["data"]["result"]]


def test_api_alerts_load_in_prometheus(traffic: str) -> None:
    """The alert rules load into the real Prometheus and the API is not reported down."""
    rules = httpx.get(f"{traffic}/api/v1/rules", timeout=10.0).json()["data"]["groups"]
    names = {r["name"] for group in rules for r in group["rules"] if r["type"] == "alerting"}
    assert names == {
        "ApiDown",
        "ApiGone",
        "ApiLatencyP95High",
        "RollingRmsleHigh",
        "NoFeedbackReceived",
        "FeatureDrift",
        "ModelStale",
    }
    assert instant_query(traffic, 'ALERTS{alertname="ApiDown"}') == []
    assert instant_query(traffic, 'ALERTS{alertname="ApiGone"}') == []
    assert instant_query(traffic, 'ALERTS{alertname="ModelStale"}') == []
