"""Targets, ratios, the printed table and the JSON record of one benchmark run.

Everything here is pure except ``render`` (prints) and ``write`` (files), so the logic that
decides PASS or FAIL is tested on its own.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from rich.console import Console
from rich.table import Table

SERVER_ORDER = ("bare", "mlflow", "calapi")
SERVER_LABELS = {
    "bare": "bare FastAPI",
    "mlflow": "mlflow models serve",
    "calapi": "calapi",
}


@dataclass(frozen=True)
class Target:
    """One goal of the plan, with what this run measured for it."""

    name: str
    value: float | None
    limit: float
    direction: Literal["at least", "under"]
    unit: str

    @property
    def passed(self) -> bool | None:
        """True or False when measured; None when this run could not measure it."""
        if self.value is None:
            return None
        if self.direction == "at least":
            return self.value >= self.limit
        return self.value < self.limit

    @property
    def verdict(self) -> str:
        return {True: "PASS", False: "FAIL", None: "NOT MEASURED"}[self.passed]

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "value": self.value,
            "limit": self.limit,
            "direction": self.direction,
            "unit": self.unit,
            "verdict": self.verdict,
        }


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """numerator / denominator, or None when either is missing or the denominator is 0."""
    if numerator is None or not denominator:
        return None
    return numerator / denominator


def throughput(results: dict[str, Any], server: str) -> float | None:
    """Requests per second a server reached in this run, if it ran."""
    load = results.get("servers", {}).get(server, {}).get("load")
    return None if load is None else float(load["requests_per_s"])


def cpu_per_request(results: dict[str, Any], server: str) -> float | None:
    """Server CPU microseconds per request in this run, if it was metered."""
    load = results.get("servers", {}).get(server, {}).get("load")
    return None if load is None else load.get("cpu_us_per_request")


def ratios(results: dict[str, Any]) -> dict[str, float | None]:
    """calapi's single-row throughput relative to the bare endpoint and to mlflow.

    The ``_by_cpu`` ratios compare server CPU per request instead (other / calapi): what
    the throughput ratio would be if each server had a core to itself, and much less
    swayed by whatever else runs on the machine.
    """
    calapi = throughput(results, "calapi")
    calapi_cpu = cpu_per_request(results, "calapi")
    return {
        "calapi_vs_bare": ratio(calapi, throughput(results, "bare")),
        "calapi_vs_mlflow": ratio(calapi, throughput(results, "mlflow")),
        "calapi_vs_bare_by_cpu": ratio(cpu_per_request(results, "bare"), calapi_cpu),
        "calapi_vs_mlflow_by_cpu": ratio(cpu_per_request(results, "mlflow"), calapi_cpu),
    }


def round_ratios(results: dict[str, Any], other: str) -> list[float | None]:
    """calapi's req/s over ``other``'s, round by round (each pair measured minutes apart)."""
    servers = results.get("servers", {})
    mine = servers.get("calapi", {}).get("rounds", [])
    theirs = servers.get(other, {}).get("rounds", [])
    return [
        ratio(a["requests_per_s"], b["requests_per_s"]) for a, b in zip(mine, theirs, strict=False)
    ]


def targets(results: dict[str, Any]) -> list[Target]:
    """The plan's "done when" list, evaluated on ``results``."""
    found = ratios(results)
    load = results.get("servers", {}).get("calapi", {}).get("load") or {}
    batch = results.get("batch", {}).get("calapi") or {}
    cli = results.get("cli_help") or {}
    connections = results.get("settings", {}).get("load", {}).get("connections", "?")
    p99_name = f"calapi p99 latency at {connections} connections"
    return [
        Target("calapi throughput vs bare", found["calapi_vs_bare"], 0.5, "at least", "x"),
        Target("calapi throughput vs mlflow", found["calapi_vs_mlflow"], 10.0, "at least", "x"),
        Target(p99_name, load.get("p99_ms"), 25.0, "under", "ms"),
        Target("10,000-row batch (median round trip)", batch.get("median_s"), 0.2, "under", "s"),
        Target("calops --help (median)", cli.get("median_s"), 0.3, "under", "s"),
    ]


def finish(results: dict[str, Any]) -> dict[str, Any]:
    """``results`` with the ratios and target verdicts filled in."""
    first: tuple[str, ...] = ("created", "machine", "settings")
    head = {key: results[key] for key in first if key in results}
    return {
        **head,
        "targets": [target.as_dict() for target in targets(results)],
        "ratios": ratios(results),
        "ratios_by_round": {
            "calapi_vs_bare": round_ratios(results, "bare"),
            "calapi_vs_mlflow": round_ratios(results, "mlflow"),
        },
        **results,
    }


def write(results: dict[str, Any], folder: Path) -> list[Path]:
    """Write bench-<timestamp>.json and latest.json into ``folder``; return both paths."""
    folder.mkdir(parents=True, exist_ok=True)
    stamp = datetime.fromisoformat(results["created"]).strftime("%Y%m%dT%H%M%S")
    text = json.dumps(results, indent=2, sort_keys=False) + "\n"
    paths = [folder / f"bench-{stamp}.json", folder / "latest.json"]
    for path in paths:
        path.write_text(text, encoding="utf-8")
    return paths


def render(results: dict[str, Any], console: Console) -> None:
    """Print the servers table, the one-off measurements and the verdict per target."""
    console.print(_servers_table(results))
    for line in _other_lines(results):
        console.print(line)
    console.print(_targets_table(results))
    for error in results.get("errors", []):
        console.print(f"[red]error:[/red] {error}", highlight=False)


def _servers_table(results: dict[str, Any]) -> Table:
    load = results["settings"]["load"]
    table = Table(
        title="Single-row POST /predict",
        caption=f"wrk: {load['threads']} thread, {load['connections']} connections, "
        f"{load['duration_s']:g} s after {load['warmup_s']:g} s warm-up; "
        f"best of {load['rounds']} round(s)",
    )
    columns = ("server", "req/s", "p50 ms", "p99 ms", "errors", "vs bare", "CPU µs/req", "RSS MiB")
    for column in columns:
        table.add_column(column, justify="left" if column == "server" else "right")
    bare = throughput(results, "bare")
    for name in SERVER_ORDER:
        table.add_row(SERVER_LABELS[name], *_server_cells(results["servers"].get(name), bare))
    return table


def _server_cells(server: dict[str, Any] | None, bare: float | None) -> list[str]:
    if not server or server.get("load") is None:
        reason = (server or {}).get("skipped") or (server or {}).get("error") or "not run"
        return [f"({_short(reason)})", "", "", "", "", "", ""]
    load = server["load"]
    relative = ratio(load["requests_per_s"], bare)
    rss = server.get("rss_bytes")
    cpu = load.get("cpu_us_per_request")
    return [
        f"{load['requests_per_s']:,.0f}",
        f"{load['p50_ms']:.2f}",
        f"{load['p99_ms']:.2f}",
        str(load["errors"]),
        "" if relative is None else f"{relative:.2f}x",
        "" if cpu is None else f"{cpu:,.0f}",
        "" if rss is None else f"{rss / 2**20:,.0f}",
    ]


def _short(text: str, size: int = 60) -> str:
    first = str(text).splitlines()[0] if text else ""
    return first if len(first) <= size else first[: size - 1] + "…"


def _other_lines(results: dict[str, Any]) -> list[str]:
    lines = []
    found = ratios(results)
    by_round = [f"{value:.2f}x" for value in round_ratios(results, "bare") if value is not None]
    if len(by_round) > 1:
        lines.append(f"calapi vs bare round by round: {', '.join(by_round)}")
    if found["calapi_vs_bare_by_cpu"] is not None:
        versus_mlflow = found["calapi_vs_mlflow_by_cpu"]
        lines.append(
            f"by server CPU per request, calapi is {found['calapi_vs_bare_by_cpu']:.2f}x the bare "
            "endpoint" + ("" if versus_mlflow is None else f" and {versus_mlflow:.1f}x mlflow")
        )
    for name, batch in results.get("batch", {}).items():
        if batch and "median_s" in batch:
            lines.append(
                f"{batch['rows']:,}-row batch, {SERVER_LABELS.get(name, name)}: "
                f"median {batch['median_s'] * 1000:,.0f} ms (min {batch['min_s'] * 1000:,.0f} ms)"
            )
    if results.get("agreement_max_abs_kcal") is not None:
        lines.append(
            "calapi vs mlflow on the batch: largest difference "
            f"{results['agreement_max_abs_kcal']:.3g} kcal"
        )
    cli = results.get("cli_help")
    if cli:
        lines.append(
            f"`calops --help`: median {cli['median_s'] * 1000:.0f} ms "
            f"(min {cli['min_s'] * 1000:.0f} ms, {cli['runs']} runs, {cli['tool']})"
        )
    training = results.get("training")
    if training and "seconds" in training:
        fit = training["metrics"].get("fit_seconds", float("nan"))
        lines.append(
            f"training on {training['rows']:,} rows: {training['seconds']:.1f} s (fit {fit:.1f} s)"
        )
    machine = results.get("machine", {})
    if machine:
        lines.append(
            f"load average before/after: {machine.get('load_before')} / "
            f"{machine.get('load_after')} on {machine.get('cpus')} CPUs"
        )
    return lines


def _targets_table(results: dict[str, Any]) -> Table:
    table = Table(title="Targets")
    for column in ("target", "measured", "goal", "verdict"):
        table.add_column(column, justify="left" if column in ("target", "verdict") else "right")
    for target in targets(results):
        style = {"PASS": "green", "FAIL": "bold red"}.get(target.verdict, "yellow")
        measured = "" if target.value is None else f"{target.value:,.3g} {target.unit}"
        table.add_row(
            target.name,
            measured,
            f"{target.direction} {target.limit:g} {target.unit}",
            f"[{style}]{target.verdict}[/{style}]",
        )
    return table
