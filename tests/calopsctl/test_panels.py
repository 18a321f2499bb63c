"""The dashboard's panels as `calops watch` and `calops report` read them, how they draw them,
and how both commands fail: from the real dashboard JSON and real HTTP servers."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from matplotlib.image import imread
from rich.console import Console
from typer.testing import CliRunner

from calapi.errors import CalopsError
from calopsctl.cli import app
from calopsctl.panels import (
    Series,
    Span,
    buckets,
    legend_name,
    load_panels,
    on_grid,
    rate_interval,
    resolve_url,
    span_over,
)
from calopsctl.state import StackState, save_state
from calopsctl.watchview import distribution, format_value, sparkline, vertical_bars
from stacktools import dashboard_panels, load_dashboard, serve_json
from support import free_port

runner = CliRunner(env={"COLUMNS": "200"})
EMPTY: dict[str, Any] = {"status": "success", "data": {"resultType": "vector", "result": []}}
NO_ALERTS: dict[str, Any] = {"status": "success", "data": {"alerts": []}}
NO_TARGETS: dict[str, Any] = {"status": "success", "data": {"activeTargets": []}}


# ---------------------------------------------------------------- the dashboard


def test_every_dashboard_panel_with_a_query_becomes_a_panel() -> None:
    """Same titles, types and PromQL as the dashboard JSON, in its order, none left out."""
    raw = [p for p in dashboard_panels(load_dashboard()) if p.get("targets")]
    panels = load_panels()
    assert [(p.title, p.kind) for p in panels] == [(r["title"], r["type"]) for r in raw]
    for panel, source in zip(panels, raw, strict=True):
        assert [q.expr for q in panel.queries] == [t["expr"] for t in source["targets"]]
        assert [q.legend for q in panel.queries] == [t.get("legendFormat", "") for t in
                                                     source["targets"]]  # fmt: skip


def test_rate_interval_is_substituted_and_recording_rules_kept() -> None:
    """No Grafana variable reaches Prometheus; a `calops:` recording rule target stays as is."""
    queries = [q for panel in load_panels() for q in panel.queries]
    assert any("$__rate_interval" in q.expr for q in queries)
    assert all("$__" not in q.concrete("20s") for q in queries)
    assert any("[20s]" in q.concrete("20s") for q in queries)
    assert "calops:app_rolling_rmsle_5m" in [q.concrete("20s") for q in queries]


def test_rows_are_walked_and_hidden_or_empty_targets_dropped(tmp_path: Path) -> None:
    """A panel inside a collapsed row counts; a hidden target and a panel without one do not."""
    dashboard = {
        "panels": [
            {"id": 1, "type": "text", "title": "Notes"},
            {"id": 2, "type": "row", "title": "Row", "panels": [
                {"id": 3, "type": "stat", "title": "Inner", "fieldConfig": {"defaults": {}},
                 "options": {"textMode": "name"},
                 "targets": [{"refId": "A", "expr": "up"},
                             {"refId": "B", "expr": "down", "hide": True}]},
            ]},
        ]
    }  # fmt: skip
    path = tmp_path / "dashboard.json"
    path.write_text(json.dumps(dashboard))
    (inner,) = load_panels(path)
    assert (inner.id, inner.title, inner.unit, inner.text_mode) == (3, "Inner", "none", "name")
    assert [q.expr for q in inner.queries] == ["up"]


def test_an_unreadable_dashboard_is_one_sentence(tmp_path: Path) -> None:
    """Broken JSON is a CalopsError naming the file."""
    path = tmp_path / "dashboard.json"
    path.write_text("{")
    with pytest.raises(CalopsError, match=r"Cannot read the dashboard .*dashboard\.json"):
        load_panels(path)


@pytest.mark.parametrize(
    ("step", "scrape", "expected"),
    [(1.0, 5.0, "20s"), (23.0, 5.0, "28s"), (0.5, 1.0, "4s"), (60.0, 15.0, "75s")],
)
def test_rate_interval_follows_grafana(step: float, scrape: float, expected: str) -> None:
    """max(step + scrape, 4 x scrape), as Grafana computes $__rate_interval."""
    assert rate_interval(step, scrape) == expected


def test_a_span_ends_now_and_steps_no_finer_than_a_scrape() -> None:
    """The last point is the end; the step never drops below the scrape interval or 1 s."""
    span = span_over(900, 40, 5.0, end=1000.0)
    assert span.step == 23.0
    assert span.grid()[-1] == 1000.0
    assert len(span.grid()) == 40
    assert span_over(60, 240, 5.0, end=0.0).step == 5.0
    assert span_over(60, 240, 0.2, end=0.0).step == 1.0


def test_legend_names_follow_grafana() -> None:
    """{{label}} filled in (missing ones empty), else the labels, else the query."""
    assert legend_name("{{version}} {{alias}}", {"version": "3", "alias": "champion"}, "q") == (
        "3 champion"
    )
    assert legend_name("{{version}} {{ alias }}", {"version": "3"}, "q") == "3"
    assert legend_name("", {"route": "/predict"}, "q") == '{route="/predict"}'
    assert legend_name("", {}, "sum(up)") == "sum(up)"


def test_points_land_on_their_step_of_the_grid() -> None:
    """Each point at its step; steps without one are None."""
    span = Span(end=100.0, seconds=40.0, step=10.0)
    series = Series("s", {}, ((70.0, 1.5), (100.0, 2.0)))
    assert span.grid() == [60.0, 70.0, 80.0, 90.0, 100.0]
    assert on_grid(series, span) == [None, 1.5, None, None, 2.0]


def test_cumulative_buckets_become_counts_per_bucket() -> None:
    """le series (unordered, cumulative) give each bucket's own count, named by its range."""
    cumulative = [
        Series("+Inf", {"le": "+Inf"}, ((1.0, 10.0),)),
        Series("100", {"le": "100.0"}, ((1.0, 4.0),)),
        Series("200", {"le": "200.0"}, ((1.0, 9.0),)),
    ]
    found = [(b.name, b.last) for b in buckets(cumulative)]
    assert found == [("0-100", 4.0), ("100-200", 5.0), ("> 200", 1.0)]


# ---------------------------------------------------------------- drawing


def test_sparkline_spans_the_lowest_to_the_highest() -> None:
    """Lowest value the lowest block, highest the full one, gaps blank, a flat line mid."""
    assert sparkline([0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]) == "▁▂▃▄▅▆▇█"
    assert sparkline([1.0, None, 3.0]) == "▁ █"
    assert sparkline([2.0, 2.0]) == "▄▄"
    assert sparkline([None, None]) == "  "


def test_calorie_bars_stand_as_tall_as_their_count() -> None:
    """A column per bucket in eighth blocks, the fullest full height; any count shows."""
    assert vertical_bars([0.0, 4.0, 8.0], 1) == ["  ▄▄██"]
    assert vertical_bars([1.0, 8.0], 2) == ["  ██", "▂▂██"]
    assert vertical_bars([0.0, 0.0], 1) == ["    "]


def test_the_distribution_names_its_range_and_fullest_bucket() -> None:
    """Below the bars: the lowest bound left, the top bucket right, then the fullest bucket."""
    per_bucket = [Series("0-100", {}, ((1.0, 3.0),)), Series("> 100", {}, ((1.0, 1.0),))]
    assert distribution(per_bucket, "kcal")[-2:] == [
        "0 > 100 kcal",
        "most rows: 0-100 kcal (3 of 4)",
    ]


@pytest.mark.parametrize(
    ("value", "unit", "shown"),
    [
        (None, "s", "no data"),
        (0.0123, "s", "12.3 ms"),
        (2.5, "s", "2.50 s"),
        (0.015, "percentunit", "1.50%"),
        (12.345, "reqps", "12.35 req/s"),
        (0.05571, "none", "0.0557"),
        (2500.0, "rows/s", "2,500 rows/s"),
        (250.0, "none", "250"),
    ],
)
def test_values_read_as_their_grafana_unit(value: float | None, unit: str, shown: str) -> None:
    """Seconds as ms below one, shares as percent, rates with their unit, none as no data."""
    assert format_value(value, unit) == shown


# ---------------------------------------------------------------- the commands


def test_a_bad_duration_is_a_usage_error(isolated_home: Path) -> None:
    """--since and --window read durations as `calops traffic export` does: exit 2 otherwise."""
    for argv in (["report", "--since", "1w"], ["watch", "--window", "0s", "--once"]):
        result = runner.invoke(app, argv)
        assert result.exit_code == 2, result.output
        assert "90s, 30m, 1h or 2d" in result.output


def test_the_stacks_prometheus_is_the_default(isolated_home: Path) -> None:
    """--prometheus first; else the recorded stack's port; else 9090; a stack without one fails."""
    home = isolated_home / ".calops"
    assert resolve_url("http://prom:9090/", home) == "http://prom:9090"
    assert resolve_url(None, home) == "http://127.0.0.1:9090"
    save_state(home, StackState(runtime="local", ports={"prometheus": 9123}))
    assert resolve_url(None, home) == "http://127.0.0.1:9123"
    absent = {"absent": {"prometheus": "prometheus is not installed"}}
    save_state(home, StackState("local", {}, services=["api"], extra=absent))
    with pytest.raises(CalopsError, match=r"runs without Prometheus \(prometheus is not install"):
        resolve_url(None, home)


def test_an_unreachable_prometheus_is_one_sentence_and_exit_1(isolated_home: Path) -> None:
    """Nothing listening at --prometheus: the one sentence on stderr, exit 1, no traceback."""
    url = f"http://127.0.0.1:{free_port()}"
    for command in (["watch", "--once"], ["report", "--out", "r"]):
        result = runner.invoke(app, [*command, "--prometheus", url])
        assert result.exit_code == 1
        assert (
            f"Error: Prometheus is not reachable at {url}; start the stack with `calops up` or "
            "pass --prometheus." in " ".join(result.stderr.split())
        )
        assert "Traceback" not in result.output


def test_a_server_that_is_not_prometheus_is_one_sentence(isolated_home: Path) -> None:
    """A web server answering 404 (e.g. the API's port): exit 1 naming the URL and the fix."""
    with serve_json({}) as (url, _asked):
        result = runner.invoke(app, ["watch", "--once", "--prometheus", url])
    assert result.exit_code == 1
    assert (
        f"Error: {url} answers /api/v1/targets with HTTP 404, not as Prometheus does; pass "
        "Prometheus's URL with --prometheus." in " ".join(result.stderr.split())
    )


def prometheus_routes(query: dict[str, Any]) -> dict[str, Any]:
    """A Prometheus answering every query with ``query``, no targets and no alerts."""
    return {
        "/api/v1/query": lambda: (200 if query["status"] == "success" else 400, query),
        "/api/v1/query_range": lambda: (200 if query["status"] == "success" else 400, query),
        "/api/v1/targets": lambda: (200, NO_TARGETS),
        "/api/v1/alerts": lambda: (200, NO_ALERTS),
    }


def test_panels_without_data_say_so(isolated_home: Path) -> None:
    """An empty Prometheus: watch shows "no data" in each panel, report draws "no data" charts."""
    with serve_json(prometheus_routes(EMPTY)) as (url, _asked):
        watched = runner.invoke(app, ["watch", "--once", "--prometheus", url])
        reported = runner.invoke(app, ["report", "--out", "r", "--prometheus", url])
    assert watched.exit_code == 0, watched.output
    assert watched.stdout.count("no data") == len(load_panels())
    assert "none firing" in watched.stdout
    assert reported.exit_code == 0, reported.output
    page = (isolated_home / "r" / "index.html").read_text()
    assert page.count('class="meta">no data<') == len(load_panels())
    pngs = list((isolated_home / "r").glob("*.png"))
    assert len(pngs) == len(load_panels())
    rgb = np.asarray(imread(pngs[0]))[..., :3]
    assert (rgb.max(axis=-1) - rgb.min(axis=-1)).max() < 0.1, "a no-data chart is grey only"


def test_an_unwritable_report_folder_is_one_sentence(isolated_home: Path) -> None:
    """--out naming a file: exit 1 with one sentence naming the folder, no traceback."""
    (isolated_home / "taken").write_text("a file, not a folder")
    with serve_json(prometheus_routes(EMPTY)) as (url, _asked):
        result = runner.invoke(app, ["report", "--out", "taken", "--prometheus", url])
    assert result.exit_code == 1
    assert "Error: Cannot write the report into taken: File exists." in result.stderr
    assert "Traceback" not in result.output


def test_a_rejected_query_shows_in_its_panel(isolated_home: Path) -> None:
    """Prometheus refusing the PromQL: each panel shows the error, the command still exits 0."""
    refused = {"status": "error", "errorType": "bad_data", "error": "parse error at char 3"}
    with serve_json(prometheus_routes(refused)) as (url, _asked):
        result = runner.invoke(app, ["watch", "--once", "--prometheus", url])
    assert result.exit_code == 0, result.output
    assert "A: parse error at char 3" in result.stdout


def test_ctrl_c_ends_a_watch_quietly_with_exit_0(tmp_path: Path) -> None:
    """SIGINT while watching: exit 0, nothing on stderr but the line naming the Prometheus."""
    with serve_json(prometheus_routes(EMPTY)) as (url, asked):
        # A shell's background job inherits SIGINT ignored, and Python then leaves it so: the
        # child gets Python's own handler back, as it has when started from a terminal.
        code = (
            "import signal; signal.signal(signal.SIGINT, signal.default_int_handler); "
            "from calopsctl.cli import app; app()"
        )
        argv = [sys.executable, "-c", code, "watch", "--refresh", "0.5", "--prometheus", url]
        env = {**os.environ, "CALOPS_HOME": str(tmp_path / ".calops")}
        with subprocess.Popen(argv, env=env, cwd=tmp_path, stderr=subprocess.PIPE,
                              stdout=subprocess.DEVNULL, text=True) as watching:  # fmt: skip
            try:
                deadline = time.monotonic() + 60
                while asked.count("/api/v1/alerts") < 2 and time.monotonic() < deadline:
                    time.sleep(0.1)  # two frames: the live loop runs
                watching.send_signal(signal.SIGINT)
                _out, stderr = watching.communicate(timeout=30)
            finally:
                watching.kill()
    assert asked.count("/api/v1/alerts") >= 2
    assert watching.returncode == 0, stderr
    assert stderr.strip() == f"Prometheus: {url} (from --prometheus)."


def test_a_frame_renders_on_a_narrow_terminal() -> None:
    """80 columns: one column of panels, every title whole."""
    from calopsctl.panels import PanelData
    from calopsctl.watchview import Frame, render

    span = span_over(900, 40, 5.0, end=time.time())
    data = [PanelData(panel, ()) for panel in load_panels()]
    console = Console(width=80, record=True, file=io.StringIO())
    console.print(render(Frame("http://prom", 900, span, data, []), width=80))
    text = console.export_text()
    assert all(f"─ {panel.title} ─" in text for panel in load_panels())
    assert max(len(line) for line in text.splitlines()) <= 80
