"""How stack results look: rich tables on a terminal, plain lines otherwise, JSON on request."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rich.table import Table

from calopsctl.console import interactive, out
from calopsctl.health import ABSENT, DOWN, Check, ReplicaCheck, healthy

COLOURS = {
    "up": "green",
    "healthy": "green",
    "started": "yellow",
    DOWN: "red",
    "exited": "red",
    ABSENT: "dim",
}


def _colour(status: str) -> str:
    colour = COLOURS.get(status.split(":", maxsplit=1)[0], "yellow")
    return f"[{colour}]{status}[/]"


def _emit(title: str, columns: list[str], rows: list[list[str]]) -> None:
    if interactive():
        table = Table(title=title, title_justify="left")
        for column in columns:
            table.add_column(column, overflow="fold")
        for row in rows:
            table.add_row(*row)
        out.print(table)
        return
    for row in rows:
        out.print("  ".join(cell for cell in row if cell), markup=False)


def show_services(rows: list[dict[str, Any]], replicas: Sequence[dict[str, Any]] = ()) -> None:
    """The table `calops up` ends with: service, URL, status, credentials; several API
    replicas each get a row after the API's, with the address it alone answers at."""
    listed = list(rows)
    if len(replicas) > 1:
        at = next((i + 1 for i, row in enumerate(listed) if row["service"] == "api"), 0)
        listed[at:at] = [
            {
                "service": f"  {r['name']}",
                "url": r["url"] or r["address"],
                "status": r["status"],
                "credentials": None,
            }
            for r in replicas
        ]
    cells = [
        [
            r["service"],
            r["url"] or "-",
            _colour(r["status"]) if interactive() else r["status"],
            r["credentials"] or "",
        ]
        for r in listed
    ]
    _emit("calops stack", ["service", "URL", "status", "credentials"], cells)


def show_health(checks: list[Check]) -> None:
    """One row per check (an API replica's names it and its address), and a closing verdict."""
    cells = [
        [c.service, _check_cell(c), _colour(c.status) if interactive() else c.status, c.detail]
        for c in checks
    ]
    _emit("calops health", ["service", "check", "status", "detail"], cells)
    verdict = "All required services are healthy." if healthy(checks) else "Unhealthy."
    out.print(verdict if not interactive() else f"[bold]{verdict}[/]", markup=interactive())


def _check_cell(check: Check) -> str:
    if isinstance(check, ReplicaCheck):
        return f"{check.name} ({check.address})"
    return check.check


def show_info(data: dict[str, Any]) -> None:
    """The model in service and the stack around it."""
    model = data.get("model") or {}
    lines = [
        f"runtime: {data['runtime']} (project {data['project']}, started {data['started']})",
        f"model: {_model_line(model)}",
        f"tracking URI: {data['tracking_uri']}",
        f"logs: {data['logs']}",
        f"state: {data['state_file']}",
    ]
    replicas = data.get("replicas") or []
    if len(replicas) > 1:
        names = ", ".join(f"{r['name']} {r['url'] or r['address']}" for r in replicas)
        lines.append(f"API replicas: {names}")
    for line in lines:
        out.print(line, markup=False)
    rows = [
        {**row, "status": f"absent: {row['absent']}" if row["absent"] else "part of the stack"}
        for row in data["services"]
    ]
    show_services(rows)


def _model_line(model: dict[str, Any]) -> str:
    """Every value whole: a path or a sha256 cut short identifies nothing (a terminal wraps
    the line instead)."""
    if "error" in model:
        return str(model["error"])
    keys = ("source", "version", "sha256", "created")
    parts = [f"{key} {model[key]}" for key in keys if model.get(key)]
    return ", ".join(parts) or "unknown"


def show_models(data: dict[str, Any]) -> None:
    """The versions, newest first, with the one the API answers with marked."""
    api = data["api"]
    columns = ["", "version", "created", "data", "RMSLE", "last put in service", "aliases"]
    cells = [
        [
            "▶" if row["serving"] else ("*" if row["champion"] else ""),
            str(row["version"]),
            str(row["created"])[:19],
            _data_cell(row),
            _rmsle_cell(row),
            _promoted_cell(row["promoted"]),
            ", ".join(row["aliases"]),
        ]
        for row in data["versions"]
    ]
    if not interactive():
        cells = [[cell or "-" for cell in row] for row in cells]
    _emit(f"models ({data['pointer']})", columns, cells)
    if not api["answered"]:
        status = f"No API answers at {api['url']}."
    else:
        status = f"The API at {api['url']} answers with {api['model_version'] or 'no model'}."
    out.print(f"{status} ▶ serving now, * holds the pointer.", markup=False)


def _data_cell(row: dict[str, Any]) -> str:
    source = str(row["data_source"])
    return f"{source} (synthetic)" if row["synthetic"] and "synthetic" not in source else source


def _rmsle_cell(row: dict[str, Any]) -> str:
    if row["rmsle"] is None:
        return "-"
    return f"{row['rmsle']:.5f} ({row['evaluated_on'] or '?'})"


def _promoted_cell(promoted: dict[str, str] | None) -> str:
    if not promoted:
        return ""
    return f"{promoted['at'][:19]} by {promoted['by']} ({promoted['how']})"
