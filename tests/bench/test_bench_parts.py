"""The benchmark's own logic: wrk output, verdicts, payloads, memory and process handling."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from bench.bare_app import create_app
from bench.run import parse_args

from bench import loadgen, payloads, report, servers

WRK_OUTPUT = """\
Running 1s test @ http://127.0.0.1:18089/
  1 threads and 8 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.76ms    1.55ms  10.65ms   86.15%
  Latency Distribution
     50%    1.19ms
     99%    7.48ms
  1391 requests in 1.10s, 753.91KB read
Requests/sec:   1264.79
WRKJSON {"requests":1391,"duration_us":1100000,"bytes":772000,"errors":{"connect":0,\
"read":1,"write":0,"status":2,"timeout":0},"latency_us":{"mean":1760.5,"stdev":1550.0,\
"max":10650,"p50":1187,"p90":4020,"p99":7476}}
"""


def load(rps: float, p99_ms: float = 5.0) -> dict[str, Any]:
    """A server's load record as the run stores it."""
    return {"requests_per_s": rps, "p50_ms": 1.0, "p99_ms": p99_ms, "errors": 0}


def results(**servers_load: dict[str, Any]) -> dict[str, Any]:
    """A minimal results record with the given servers' load."""
    return {
        "created": "2026-01-02T03:04:05+00:00",
        "settings": {
            "load": {"connections": 8, "threads": 1, "duration_s": 10, "warmup_s": 2, "rounds": 1}
        },
        "servers": {name: {"load": value} for name, value in servers_load.items()},
        "batch": {"calapi": {"rows": 10_000, "median_s": 0.15, "min_s": 0.1}},
        "cli_help": {"median_s": 0.35, "min_s": 0.2, "runs": 3, "tool": "hyperfine"},
        "errors": [],
    }


def test_parse_report_reads_the_json_line_and_converts_units() -> None:
    """The done-hook line gives requests/s, milliseconds and the sum of every error kind."""
    result = loadgen.parse_report(WRK_OUTPUT)
    assert result.requests == 1391
    assert result.requests_per_s == pytest.approx(1391 / 1.1)
    assert result.p50_ms == pytest.approx(1.187)
    assert result.p99_ms == pytest.approx(7.476)
    assert result.errors == 3


def test_parse_report_without_the_line_names_the_problem() -> None:
    """Output without the machine-readable line raises LoadError quoting the output."""
    with pytest.raises(loadgen.LoadError, match="WRKJSON"):
        loadgen.parse_report("Requests/sec: 10\n")


def test_lua_script_carries_the_body_verbatim() -> None:
    """The JSON body sits unescaped inside Lua long brackets; the terminator is refused."""
    body = payloads.single_body()
    assert f"wrk.body = [==[{body}]==]" in loadgen.lua_script(body)
    with pytest.raises(ValueError, match="terminator"):
        loadgen.lua_script('{"a": "]==]"}')


def test_best_round_is_the_fastest() -> None:
    """Of several rounds the one with the most requests per second is kept."""
    slow = loadgen.parse_report(WRK_OUTPUT)
    fast = loadgen.LoadResult(10, 1.0, 0, 9999.0, 1, 1, 1, 1, 1)
    assert loadgen.best([slow, fast, slow]) is fast
    with pytest.raises(ValueError, match="no rounds"):
        loadgen.best([])


def test_wrk_argv_uses_the_same_settings_for_any_url() -> None:
    """Threads, connections, whole seconds, timeout and --latency come from the LoadSpec."""
    spec = loadgen.LoadSpec(connections=8, threads=1, duration_s=2.6, timeout_s=2.0)
    argv = loadgen.wrk_argv("http://127.0.0.1:1/p", Path("s.lua"), spec, spec.duration_s)
    assert argv == [
        "wrk", "-t1", "-c8", "-d3s", "--timeout=2s", "--latency", "-s", "s.lua",
        "http://127.0.0.1:1/p",
    ]  # fmt: skip


def test_targets_pass_and_fail_on_the_plan_limits() -> None:
    """0.5x bare and 10x mlflow pass at the limit; p99, batch and --help are strict 'under'."""
    record = results(bare=load(2000.0), mlflow=load(100.0), calapi=load(1000.0, p99_ms=25.0))
    verdicts = {target.name: target.verdict for target in report.targets(record)}
    assert verdicts == {
        "calapi throughput vs bare": "PASS",
        "calapi throughput vs mlflow": "PASS",
        "calapi p99 latency at 8 connections": "FAIL",
        "10,000-row batch (median round trip)": "PASS",
        "calops --help (median)": "FAIL",
    }


def test_missing_calapi_is_not_measured_rather_than_failed() -> None:
    """Without calapi the ratios are None and its targets read NOT MEASURED."""
    record = results(bare=load(2000.0), mlflow=load(50.0))
    record["servers"]["calapi"] = {"skipped": "calapi.serving.app is not available yet"}
    assert set(report.ratios(record).values()) == {None}
    verdicts = [target.verdict for target in report.targets(record)[:3]]
    assert verdicts == ["NOT MEASURED"] * 3


def test_round_ratios_pair_rounds_in_order() -> None:
    """Round i of calapi is compared with round i of the other server."""
    record = results()
    record["servers"] = {
        "calapi": {"rounds": [load(1000.0), load(1500.0)]},
        "bare": {"rounds": [load(2000.0), load(2000.0)]},
    }
    assert report.round_ratios(record, "bare") == [0.5, 0.75]
    assert report.round_ratios(record, "mlflow") == []


def test_ratio_guards_missing_and_zero() -> None:
    """A ratio is None when a side is missing or the denominator is zero."""
    assert report.ratio(10.0, 4.0) == 2.5
    assert report.ratio(None, 4.0) is None
    assert report.ratio(1.0, 0.0) is None


def test_write_and_render_a_partial_run(tmp_path: Path) -> None:
    """A run with a skipped server still renders and writes the timestamped and latest JSON."""
    from rich.console import Console

    record = results(bare=load(2000.0))
    record["servers"]["calapi"] = {"skipped": "no trained model"}
    finished = report.finish(record)
    console = Console(record=True, width=120)
    report.render(finished, console)
    text = console.export_text()
    assert "NOT MEASURED" in text
    assert "(no trained model)" in text
    paths = report.write(finished, tmp_path)
    assert [path.name for path in paths] == ["bench-20260102T030405.json", "latest.json"]
    assert json.loads(paths[1].read_text())["ratios"]["calapi_vs_bare"] is None


def test_mlflow_body_uses_sex_and_floats_without_id() -> None:
    """The seed row becomes one dataframe record with Sex (from Gender) and float measures."""
    body = json.loads(payloads.mlflow_body([payloads.SEED_ROW]))
    assert body == {
        "dataframe_records": [
            {"Sex": "male", "Age": 25.0, "Height": 180.0, "Weight": 75.0, "Duration": 30.0,
             "Heart_Rate": 120.0, "Body_Temp": 37.0}
        ]
    }  # fmt: skip


def test_predictions_are_read_from_each_answer_shape() -> None:
    """calapi's single and batch answers and mlflow's answer all give a list of floats."""
    assert payloads.calapi_predictions({"id": 1, "Calories": 5, "model_version": "x"}) == [5.0]
    batch = {"predictions": [{"id": 1, "Calories": 1.5}, {"id": 2, "Calories": 2.5}]}
    assert payloads.calapi_predictions(batch) == [1.5, 2.5]
    assert payloads.mlflow_predictions({"predictions": [3, 4.5]}) == [3.0, 4.5]
    assert payloads.max_abs_difference([1.0, 2.0], [1.0, 2.5]) == 0.5
    with pytest.raises(ValueError, match="against"):
        payloads.max_abs_difference([1.0], [])


def test_parse_vmrss_reads_kilobytes() -> None:
    """VmRSS in kB becomes bytes; a status without it (a zombie) counts 0."""
    assert servers.parse_vmrss("Name:\tx\nVmRSS:\t  2048 kB\n") == 2048 * 1024
    assert servers.parse_vmrss("Name:\tx\nState:\tZ (zombie)\n") == 0


def test_group_rss_counts_this_process() -> None:
    """The resident memory of this test's own process group is found in /proc."""
    own = servers.parse_vmrss(Path("/proc/self/status").read_text())
    assert servers.group_rss_bytes(os.getpgid(0)) >= own > 0


def test_parse_stat_skips_a_command_name_with_spaces_and_parentheses() -> None:
    """Fields are counted after the last ')', so an odd process name cannot shift them."""
    stat = "42 (we (ird) name) S 1 42 42 0 -1 4194560 10 0 0 0 150 25 0 0"
    fields = servers.parse_stat(stat)
    assert (fields[0], fields[2], fields[11], fields[12]) == ("S", "42", "150", "25")


def test_group_cpu_seconds_grows_with_work() -> None:
    """CPU seconds of a process group are read from /proc and increase with its work (a group
    of its own: this test's group holds other workers and children that come and go)."""
    burn = "import sys, time\nsys.stdin.readline()\nend = time.process_time() + 0.5\n"
    burn += "while time.process_time() < end: pass\ntime.sleep(60)\n"
    argv = [sys.executable, "-c", burn]
    with subprocess.Popen(argv, stdin=subprocess.PIPE, start_new_session=True) as process:
        try:
            idle = servers.group_cpu_seconds(process.pid)
            process.stdin.write(b"go\n")  # type: ignore[union-attr]
            process.stdin.flush()  # type: ignore[union-attr]
            deadline = time.monotonic() + 30
            # /proc counts whole clock ticks: ask for most of the 0.5 s, not all of it.
            while (spent := servers.group_cpu_seconds(process.pid)) < idle + 0.4:
                assert time.monotonic() < deadline, f"the group's CPU stayed at {spent} s"
                time.sleep(0.05)
        finally:
            process.kill()


def test_cpu_per_request_and_its_ratios() -> None:
    """CPU per request divides metered seconds by requests; the by-CPU ratio is other/calapi."""
    metered = loadgen.LoadResult(1000, 1.0, 0, 1000.0, 1, 1, 1, 1, 1, server_cpu_s=0.5)
    assert metered.cpu_us_per_request == 500.0
    assert loadgen.LoadResult(1, 1.0, 0, 1.0, 1, 1, 1, 1, 1).cpu_us_per_request is None
    record = results(
        bare={**load(2000.0), "cpu_us_per_request": 300.0},
        mlflow={**load(50.0), "cpu_us_per_request": 20_000.0},
        calapi={**load(1000.0), "cpu_us_per_request": 400.0},
    )
    found = report.ratios(record)
    assert found["calapi_vs_bare_by_cpu"] == 0.75
    assert found["calapi_vs_mlflow_by_cpu"] == 50.0


def test_stop_kills_the_whole_process_group() -> None:
    """stop() ends a server's children too, not only the process it started."""
    code = "import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', " \
        "'import time; time.sleep(60)']); print('up', flush=True); time.sleep(60)"  # fmt: skip
    process = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, start_new_session=True
    )
    assert process.stdout is not None
    assert process.stdout.readline().strip() == b"up"
    servers.stop(process, grace_s=5.0)
    deadline = time.monotonic() + 5.0
    while servers.group_rss_bytes(process.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert servers.group_rss_bytes(process.pid) == 0
    process.stdout.close()


async def bare_statuses(bodies: list[dict[str, Any]]) -> list[int]:
    """Status codes of the bare app (in process) for each body POSTed to /predict."""
    transport = httpx.ASGITransport(app=create_app())
    async with httpx.AsyncClient(transport=transport, base_url="http://bare") as client:
        return [(await client.post("/predict", json=body)).status_code for body in bodies]


def test_bare_endpoint_validates_like_calapi() -> None:
    """The baseline accepts the seed body with Gender and rejects implausible rows with 422."""
    seed = payloads.SEED_ROW
    bodies = [seed, {**seed, "Age": 500}, {**seed, "Gender": "x"}]
    assert asyncio.run(bare_statuses(bodies)) == [200, 422, 422]


def test_quick_shortens_the_run() -> None:
    """--quick measures 3 s once; the default is 10 s after 2 s warm-up, two rounds, 8 conns."""
    quick, full = parse_args(["--quick"]), parse_args([])
    assert (quick.load.duration_s, quick.rounds) == (3.0, 1)
    assert (full.load.duration_s, full.load.warmup_s, full.rounds) == (10.0, 2.0, 2)
    assert (full.load.connections, full.load.threads) == (8, 1)


@pytest.mark.integration
@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed: apt-get install wrk")
def test_wrk_drives_the_real_bare_endpoint(tmp_path: Path) -> None:
    """wrk POSTs the body to the bare app under uvicorn and every answer is a 2xx."""
    port = servers.free_port()
    root = Path(__file__).resolve().parents[2]
    argv = servers.uvicorn_argv("bench.bare_app:create_app", port, app_dir=root)
    spec = servers.ServerSpec("bare", argv, port, "/healthz", "/predict", payloads.single_body())
    spec_load = loadgen.LoadSpec(connections=2, duration_s=1.0, warmup_s=0.0)
    with servers.serving(spec, tmp_path / "bare.log", timeout_s=60.0):
        result = loadgen.run_wrk(spec.predict_url, spec.single_body, spec_load, tmp_path)
    assert result.requests > 0
    assert result.errors == 0
