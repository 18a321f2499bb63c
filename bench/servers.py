"""Start the servers under test in their own process groups, wait for them, measure and stop them.

Every server runs under uvicorn with one worker and the same settings, given through uvicorn's
``UVICORN_*`` environment variables: that is the only way to reach the uvicorn that
``mlflow models serve`` starts itself, so all three get their settings the same way.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path

import httpx

# uvloop and httptools are what uvicorn[standard] picks on its own ("auto"); naming them
# makes a missing extra fail loudly instead of silently benchmarking the slow fallbacks.
UVICORN_SETTINGS: Mapping[str, str] = {
    "UVICORN_WORKERS": "1",
    "UVICORN_LOOP": "uvloop",
    "UVICORN_HTTP": "httptools",
    "UVICORN_LOG_LEVEL": "warning",
    "UVICORN_ACCESS_LOG": "false",
}


@dataclass(frozen=True)
class ServerSpec:
    """One server under test: how to start it and what to send it."""

    name: str
    argv: list[str]
    port: int
    ready_path: str
    predict_path: str
    single_body: str
    env: Mapping[str, str] = field(default_factory=dict)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def predict_url(self) -> str:
        return self.base_url + self.predict_path


class ServerError(RuntimeError):
    """A server did not start or did not answer as expected."""


def free_port() -> int:
    """A loopback TCP port nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def uvicorn_argv(app: str, port: int, *, app_dir: Path) -> list[str]:
    """``python -m uvicorn --factory APP`` on 127.0.0.1:``port``; settings come from the env."""
    return [
        sys.executable, "-m", "uvicorn", "--factory", app,
        "--app-dir", str(app_dir), "--host", "127.0.0.1", "--port", str(port),
    ]  # fmt: skip


def venv_path_env() -> dict[str, str]:
    """PATH with this interpreter's bin folder first: mlflow starts ``uvicorn`` by name."""
    bin_dir = str(Path(sys.executable).parent)
    return {"PATH": os.pathsep.join([bin_dir, os.environ.get("PATH", "")])}


def mlflow_serve_argv(model_uri: str, port: int) -> list[str]:
    """``mlflow models serve`` of ``model_uri`` from this interpreter's environment."""
    mlflow = Path(sys.executable).with_name("mlflow")
    return [
        str(mlflow), "models", "serve", "-m", model_uri, "--env-manager", "local",
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
    ]  # fmt: skip


@contextmanager
def serving(spec: ServerSpec, log: Path, *, timeout_s: float = 180.0) -> Iterator[int]:
    """Run ``spec`` until the block ends and yield its process-group id; always stop it."""
    with log.open("wb") as sink:
        process = subprocess.Popen(
            spec.argv,
            env={**os.environ, **UVICORN_SETTINGS, **spec.env},
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            _wait_ready(spec, process, log, timeout_s)
            yield process.pid
        finally:
            stop(process)


def stop(process: subprocess.Popen[bytes], grace_s: float = 10.0) -> None:
    """SIGTERM the whole process group, then SIGKILL whatever is left of it."""
    if process.poll() is None:
        _signal_group(process.pid, signal.SIGTERM)
        with suppress(subprocess.TimeoutExpired):
            process.wait(timeout=grace_s)
    # Children (mlflow's uvicorn) may outlive the leader; the group id still names them.
    _signal_group(process.pid, signal.SIGKILL)
    if process.poll() is None:
        process.wait(timeout=grace_s)


def _signal_group(pgid: int, signum: int) -> None:
    with suppress(ProcessLookupError):
        os.killpg(pgid, signum)


def _wait_ready(
    spec: ServerSpec, process: subprocess.Popen[bytes], log: Path, timeout_s: float
) -> None:
    deadline = time.monotonic() + timeout_s
    url = spec.base_url + spec.ready_path
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ServerError(f"{spec.name} exited with {process.returncode}:\n{_tail(log)}")
        try:
            if httpx.get(url, timeout=2.0).status_code == HTTPStatus.OK:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise ServerError(f"{spec.name} was not ready at {url} within {timeout_s:.0f}s:\n{_tail(log)}")


def _tail(log: Path, size: int = 3000) -> str:
    return log.read_text(errors="replace")[-size:]


def group_rss_bytes(pgid: int, proc: Path = Path("/proc")) -> int:
    """Resident memory of every process in group ``pgid`` (a server and any children)."""
    total = 0
    for entry in proc.iterdir():
        if entry.name.isdigit() and _pgid(entry) == pgid:
            total += _rss_bytes(entry)
    return total


def group_cpu_seconds(pgid: int, proc: Path = Path("/proc")) -> float:
    """User plus system CPU seconds used so far by the live processes of group ``pgid``."""
    ticks = 0
    for entry in proc.iterdir():
        fields = _stat_fields(entry) if entry.name.isdigit() else None
        if fields is not None and int(fields[2]) == pgid:
            ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def _pgid(entry: Path) -> int | None:
    fields = _stat_fields(entry)
    return None if fields is None else int(fields[2])


def _stat_fields(entry: Path) -> list[str] | None:
    """/proc/PID/stat from field 3 (state) on: 2 = pgrp, 11 = utime, 12 = stime."""
    try:
        stat = (entry / "stat").read_text()
    except OSError:
        return None
    # The command name before them is in parentheses and may hold spaces.
    return parse_stat(stat)


def parse_stat(stat: str) -> list[str]:
    """The fields of a /proc/PID/stat line after the parenthesised command name."""
    return stat[stat.rindex(")") + 2 :].split()


def _rss_bytes(entry: Path) -> int:
    try:
        status = (entry / "status").read_text()
    except OSError:
        return 0
    return parse_vmrss(status)


def parse_vmrss(status: str) -> int:
    """Bytes of the ``VmRSS`` line of a /proc/PID/status text; 0 when absent (a zombie)."""
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            value, unit = line.split()[1:3]
            if unit != "kB":  # the kernel has always written kB; anything else is not RSS
                raise ValueError(f"VmRSS in {unit!r}, expected kB")
            return int(value) * 1024
    return 0
