"""Drive an HTTP endpoint with wrk (POST bodies via a Lua script) and read back its numbers.

wrk's ``done`` hook prints one machine-readable line, so nothing depends on the layout of
its human-readable report.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

MARKER = "WRKJSON "

# Lua long brackets keep the JSON body verbatim (no escaping of quotes or backslashes).
_SCRIPT = """\
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = [==[@BODY@]==]

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '@MARKER@{"requests":%d,"duration_us":%d,"bytes":%d,'
    .. '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},'
    .. '"latency_us":{"mean":%.1f,"stdev":%.1f,"max":%d,"p50":%d,"p90":%d,"p99":%d}}\\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.mean, latency.stdev, latency.max,
    latency:percentile(50), latency:percentile(90), latency:percentile(99)))
end
"""


@dataclass(frozen=True)
class LoadSpec:
    """How hard and how long to push: the same for every server in a run."""

    connections: int = 8
    threads: int = 1
    duration_s: float = 10.0
    warmup_s: float = 2.0
    timeout_s: float = 2.0


@dataclass(frozen=True)
class LoadResult:
    """What one wrk run measured."""

    requests: int
    duration_s: float
    errors: int
    requests_per_s: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    max_ms: float
    # CPU seconds the server's processes used during the measured run (None: not metered).
    server_cpu_s: float | None = None

    @property
    def cpu_us_per_request(self) -> float | None:
        """Server CPU per answered request: steadier than req/s on a busy machine."""
        if self.server_cpu_s is None or not self.requests:
            return None
        return self.server_cpu_s / self.requests * 1e6

    def as_dict(self) -> dict[str, float | int | None]:
        return {**asdict(self), "cpu_us_per_request": self.cpu_us_per_request}


class LoadError(RuntimeError):
    """wrk could not run or printed nothing we can read."""


def lua_script(body: str) -> str:
    """The wrk script that POSTs ``body`` as JSON and reports as one JSON line."""
    if "]==]" in body:
        raise ValueError("the request body contains the Lua long-bracket terminator ]==]")
    # The body goes in last so that nothing inside it is taken for a placeholder.
    return _SCRIPT.replace("@MARKER@", MARKER).replace("@BODY@", body)


def parse_report(output: str) -> LoadResult:
    """Read the line the Lua ``done`` hook printed; raise LoadError when it is missing."""
    for line in output.splitlines():
        if line.startswith(MARKER):
            return _result(json.loads(line[len(MARKER) :]))
    raise LoadError(f"wrk printed no {MARKER.strip()} line:\n{output[-2000:]}")


def _result(raw: dict[str, Any]) -> LoadResult:
    latency = {key: float(value) / 1000.0 for key, value in raw["latency_us"].items()}
    requests = int(raw["requests"])
    duration_s = int(raw["duration_us"]) / 1e6
    return LoadResult(
        requests=requests,
        duration_s=duration_s,
        errors=sum(int(value) for value in raw["errors"].values()),
        requests_per_s=requests / duration_s if duration_s > 0 else 0.0,
        p50_ms=latency["p50"],
        p90_ms=latency["p90"],
        p99_ms=latency["p99"],
        mean_ms=latency["mean"],
        max_ms=latency["max"],
    )


def wrk_argv(url: str, script: Path, spec: LoadSpec, duration_s: float) -> list[str]:
    """The wrk command line for one run of ``duration_s`` seconds."""
    return [
        "wrk",
        f"-t{spec.threads}",
        f"-c{spec.connections}",
        f"-d{max(1, round(duration_s))}s",
        f"--timeout={spec.timeout_s:g}s",
        "--latency",
        "-s",
        str(script),
        url,
    ]


def run_wrk(
    url: str,
    body: str,
    spec: LoadSpec,
    workdir: Path,
    *,
    cpu_meter: Callable[[], float] | None = None,
) -> LoadResult:
    """Warm ``url`` up, then measure it; ``cpu_meter`` (cumulative server CPU s) is read
    around the measured run only. Both runs are bounded by wrk's own duration."""
    if shutil.which("wrk") is None:
        raise LoadError("wrk is not installed; install it with `apt-get install wrk`.")
    script = workdir / "post.lua"
    script.write_text(lua_script(body), encoding="utf-8")
    if spec.warmup_s > 0:
        _wrk(wrk_argv(url, script, spec, spec.warmup_s), spec.warmup_s)
    before = cpu_meter() if cpu_meter else None
    result = parse_report(_wrk(wrk_argv(url, script, spec, spec.duration_s), spec.duration_s))
    if cpu_meter is None or before is None:
        return result
    return replace(result, server_cpu_s=cpu_meter() - before)


def _wrk(argv: list[str], duration_s: float) -> str:
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=duration_s + 30, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise LoadError(f"wrk did not finish within {duration_s + 30:.0f}s") from exc
    if done.returncode != 0:
        raise LoadError(f"wrk exited with {done.returncode}: {done.stderr.strip()[-1000:]}")
    return done.stdout


def best(rounds: list[LoadResult]) -> LoadResult:
    """The round with the most requests per second: the one other processes disturbed least."""
    if not rounds:
        raise ValueError("no rounds to choose from")
    return max(rounds, key=lambda result: result.requests_per_s)
