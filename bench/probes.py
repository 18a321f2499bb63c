"""One-off measurements: a big batch's round trip and the CLI's start-up time."""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx


@dataclass(frozen=True)
class BatchResult:
    """Round-trip seconds of one batch request, repeated."""

    rows: int
    runs_s: list[float]
    predictions: list[float]

    @property
    def median_s(self) -> float:
        return statistics.median(self.runs_s)

    def as_dict(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "median_s": self.median_s,
            "min_s": min(self.runs_s),
            "runs_s": self.runs_s,
        }


@dataclass(frozen=True)
class CommandTiming:
    """Wall time of a short command, run many times."""

    command: list[str]
    tool: str
    runs_s: list[float]

    @property
    def median_s(self) -> float:
        return statistics.median(self.runs_s)

    def as_dict(self) -> dict[str, Any]:
        return {
            "command": " ".join(self.command),
            "tool": self.tool,
            "median_s": self.median_s,
            "min_s": min(self.runs_s),
            "runs": len(self.runs_s),
        }


def batch_latency(
    url: str,
    body: str,
    read: Callable[[Any], list[float]],
    *,
    repeats: int = 5,
    timeout_s: float = 60.0,
) -> BatchResult:
    """POST ``body`` once to warm up, then ``repeats`` times, timing each round trip from
    sending the first byte to holding the whole answer (decoding it is the client's cost)."""
    payload = body.encode()
    runs: list[float] = []
    with httpx.Client(timeout=timeout_s, headers={"content-type": "application/json"}) as client:
        predictions = read(_post(client, url, payload).json())
        for _ in range(repeats):
            started = time.perf_counter()
            _post(client, url, payload)
            runs.append(time.perf_counter() - started)
    return BatchResult(len(predictions), runs, predictions)


def _post(client: httpx.Client, url: str, payload: bytes) -> httpx.Response:
    response = client.post(url, content=payload)
    response.raise_for_status()
    return response


def command_time(command: Sequence[str], *, runs: int = 20, warmup: int = 3) -> CommandTiming:
    """Time ``command`` with hyperfine when installed, else with a plain subprocess loop."""
    if shutil.which("hyperfine"):
        return _hyperfine(list(command), runs, warmup)
    return _loop(list(command), runs, warmup)


def _hyperfine(command: list[str], runs: int, warmup: int) -> CommandTiming:
    with tempfile.TemporaryDirectory() as folder:
        export = Path(folder) / "hyperfine.json"
        subprocess.run(
            ["hyperfine", "--shell=none", "--style=none", f"--warmup={warmup}", f"--runs={runs}",
             "--export-json", str(export), " ".join(command)],
            check=True, capture_output=True, timeout=300,
        )  # fmt: skip
        times = json.loads(export.read_text())["results"][0]["times"]
    return CommandTiming(command, "hyperfine", [float(value) for value in times])


def _loop(command: list[str], runs: int, warmup: int) -> CommandTiming:
    times: list[float] = []
    for index in range(warmup + runs):
        started = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True, timeout=60)
        if index >= warmup:
            times.append(time.perf_counter() - started)
    return CommandTiming(command, "subprocess loop", times)
