"""The running stack's record (``<home>/stack.json``), shared by every command.

``calops up`` writes it, ``calops down`` removes it; ``train``, ``simulate``, ``health`` and
``info`` read it to find the stack's URLs without being told. Saving or clearing it also updates
the user-level index of running stacks (calopsctl.project), so other folders can point here.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from calopsctl.project import forget_stack, remember_stack
from calopsctl.services import NAMES, loopback_url


@dataclass
class StackState:
    """What ``calops up`` started and where to find it."""

    runtime: str  # "docker" | "local"
    ports: dict[str, int]
    project: str = "calops"
    started: str = ""
    services: list[str] = field(default_factory=lambda: list(NAMES))
    replicas: int = 1  # API processes behind the one API address (`calops up --replicas`)
    pids: dict[str, int] = field(default_factory=dict)  # local runtime: process name -> pid
    logs: str = ""  # folder of per-service logs (local) or "" (docker: `calops logs`)
    extra: dict[str, Any] = field(default_factory=dict)

    def url(self, service: str) -> str:
        """Loopback URL of a service, e.g. ``http://127.0.0.1:8000``."""
        return loopback_url(self.ports[service])


def state_path(home: Path) -> Path:
    return home / "stack.json"


def load_state(home: Path) -> StackState | None:
    """The stack recorded in ``home``, or None when nothing was brought up from there."""
    try:
        raw = json.loads(state_path(home).read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return StackState(**raw)


def save_state(home: Path, state: StackState) -> None:
    """Write the record atomically and list ``home`` among the running stacks."""
    path = state_path(home)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(state), indent=2), encoding="utf-8")
    os.replace(tmp, path)
    remember_stack(home)


def clear_state(home: Path) -> None:
    """Remove the record; the stack is no longer listed as running."""
    state_path(home).unlink(missing_ok=True)
    forget_stack(home)
