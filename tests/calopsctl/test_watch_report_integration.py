"""`calops watch` and `calops report` against a real Prometheus scraping the real API after
real /predict and /feedback traffic: every dashboard panel shows, the RMSLE has a value."""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from calopsctl.cli import app
from calopsctl.panels import load_panels
from stacktools import local_prometheus, wait_for_query

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("prometheus") is None, reason="prometheus is not installed"),
]
runner = CliRunner(env={"COLUMNS": "200"})
ROUNDS, ROWS, DRIFT_ROWS = 3, 12, 250  # DRIFT_ROWS: above the API's drift minimum
# An alert that fires as soon as it is evaluated, so the alerts panel has one to show.
ALWAYS_FIRING = {
    "groups": [
        {
            "name": "watch-test",
            "rules": [
                {
                    "alert": "WatchTestAlwaysFiring",
                    "expr": "vector(1)",
                    "labels": {"severity": "info"},
                    "annotations": {"summary": "fires for the watch test"},
                }
            ],
        }
    ]
}


@pytest.fixture(scope="module")
def prometheus(live_api: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Debian's prometheus on a free loopback port, scraping the live API each second, with
    the shipped rules and an alert that always fires."""
    folder = tmp_path_factory.mktemp("prometheus")
    firing = folder / "firing.yml"
    firing.write_text(yaml.safe_dump(ALWAYS_FIRING))
    with local_prometheus(live_api, folder, extra_rules=[firing]) as url:
        yield url


def rows(count: int, seed: int) -> list[dict[str, Any]]:
    """Synthetic rows with ids and their true calories."""
    from calapi.model.synthetic import generate

    frame = generate(count, seed=seed)
    frame["id"] = [f"watch-{seed}-{i}" for i in range(count)]
    return list(frame.to_dict("records"))


def predict_and_answer(client: httpx.Client, batch: list[dict[str, Any]]) -> None:
    """/predict each row, then send its true calories to /feedback."""
    for row in batch:
        features = {key: value for key, value in row.items() if key != "Calories"}
        client.post("/predict", json=features).raise_for_status()
    for row in batch:
        answer = {"id": row["id"], "Calories": row["Calories"]}
        client.post("/feedback", json=answer).raise_for_status()


@pytest.fixture(scope="module")
def fed(live_api: str, prometheus: str) -> str:
    """Rounds of predictions with feedback, each seen by scrapes so the RMSLE has a history,
    and one large batch so drift has a value; the Prometheus URL once the alert fires."""
    wait_for_query(prometheus, 'up{job="api"}', at_least=1)
    history = "count_over_time((app_rolling_rmsle_5m >= 0)[1m:1s])"  # seconds with an RMSLE
    with httpx.Client(base_url=live_api, timeout=30.0) as client:
        for seed in range(ROUNDS):
            predict_and_answer(client, rows(ROWS, seed))
            wait_for_query(prometheus, history, at_least=2 * (seed + 1))
        drifted = [{k: v for k, v in r.items() if k not in ("id", "Calories")} for r in
                   rows(DRIFT_ROWS, ROUNDS)]  # fmt: skip
        client.post("/predict", json={"instances": drifted}).raise_for_status()
    wait_for_query(prometheus, "app_drift_window_rows", at_least=DRIFT_ROWS)
    wait_for_query(prometheus, 'ALERTS{alertname="WatchTestAlwaysFiring"}', at_least=1)
    return prometheus


def test_watch_once_shows_every_panel_and_the_rmsle(fed: str, isolated_home: Path) -> None:
    """One frame names every dashboard panel and the firing alert, and the RMSLE is a number."""
    result = runner.invoke(app, ["watch", "--once", "--prometheus", fed])
    assert result.exit_code == 0, result.output
    for panel in load_panels():
        assert panel.title in result.stdout
    assert "WatchTestAlwaysFiring" in result.stdout
    rmsle = re.search(r"│\s*RMSLE\s+(\d+\.\d+)", result.stdout)
    assert rmsle is not None, result.stdout
    assert 0 < float(rmsle[1]) < 5


def colourful_pixels(png: Path) -> int:
    """Pixels that are not grey: the lines and cells of a chart; a "no data" text has none."""
    from matplotlib.image import imread

    rgb = np.asarray(imread(png))[..., :3]
    spread = rgb.max(axis=-1) - rgb.min(axis=-1)
    return int((spread > 0.1).sum())


def test_report_draws_every_panel_and_the_rmsle_history(fed: str, isolated_home: Path) -> None:
    """A non-empty PNG per panel, listed in index.html; the RMSLE chart draws its points."""
    folder = isolated_home / "report"
    result = runner.invoke(
        app, ["report", "--since", "90s", "--out", str(folder), "--prometheus", fed]
    )
    assert result.exit_code == 0, result.output
    index = folder / "index.html"
    assert result.stdout.strip() == str(index)
    page = index.read_text()
    pngs = sorted(folder.glob("*.png"))
    assert len(pngs) == len(load_panels())
    for png in pngs:
        assert png.stat().st_size > 1000, png
        assert f'src="{png.name}"' in page
    (rmsle_png,) = folder.glob("*-rolling-rmsle-over-time.png")
    # A line of a few seconds in a 90 s chart; the no-data chart has no coloured pixel at all.
    assert colourful_pixels(rmsle_png) > 100
    drawn = re.search(r"Rolling RMSLE over time</h2>.*?\"meta\">(\d+) series, (\d+) points", page)
    assert drawn is not None, page
    assert int(drawn[2]) >= 2 * ROUNDS  # the seconds the fixture waited for, at a 1 s step
