"""Helpers for tests that run real processes on loopback (import as ``support``)."""

from __future__ import annotations

import itertools
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

# Ports below the kernel's ephemeral range (32768 up), split into one block per pytest-xdist
# worker: the kernel's "any free port" can hand one worker the port another worker has just
# been given and not yet started its server on, and that server then answers the first
# worker's requests.
PORT_LOW, PORT_HIGH = 20000, 32000
_handed_out = itertools.count()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now and no other worker hands out."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    worker = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw"))
    block = (PORT_HIGH - PORT_LOW) // max(workers, 1)
    low = PORT_LOW + worker * block
    for _ in range(block):
        port = low + next(_handed_out) % block
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:  # in use, or lingering from an earlier run
                continue
            return port
    raise RuntimeError(f"no free loopback port in {low}-{low + block - 1}")


def wait_http(url: str, *, timeout: float = 30.0, ok: Sequence[int] = (200,)) -> httpx.Response:
    """Poll ``url`` until it answers one of ``ok``; raise TimeoutError with the last answer."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            response = httpx.get(url, timeout=2.0)
            if response.status_code in ok:
                return response
            last = response.status_code
        except httpx.HTTPError as exc:
            last = exc
        time.sleep(0.1)
    raise TimeoutError(f"{url} did not answer {list(ok)} within {timeout}s (last: {last!r})")


@contextmanager
def running(
    argv: Sequence[str],
    *,
    ready_url: str,
    env: Mapping[str, str] | None = None,
    log: Path | None = None,
    timeout: float = 60.0,
    ready_ok: Sequence[int] = (200,),
) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``argv`` in its own process group until the block ends; wait for ``ready_url``."""
    sink = log.open("wb") if log else subprocess.DEVNULL
    process = subprocess.Popen(
        list(argv),
        env={**os.environ, **(env or {})},
        stdout=sink,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        try:
            wait_http(ready_url, timeout=timeout, ok=ready_ok)
        except TimeoutError:
            tail = log.read_text(errors="replace")[-3000:] if log else ""
            raise TimeoutError(f"{argv[0]} never became ready at {ready_url}\n{tail}") from None
        yield process
    finally:
        stop(process)
        if log:
            sink.close()  # type: ignore[union-attr]


def stop(process: subprocess.Popen[Any], grace: float = 10.0) -> None:
    """SIGTERM the process group, then SIGKILL it if it lingers."""
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=grace)


def api_argv(port: int) -> list[str]:
    """The command that serves calapi under uvicorn on 127.0.0.1:``port``."""
    return [
        sys.executable,
        "-m",
        "uvicorn",
        "--factory",
        "calapi.serving.app:create_app",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--log-level",
        "warning",
    ]


@contextmanager
def mlflow_server(root: Path) -> Iterator[str]:
    """A real `mlflow server --serve-artifacts` on a free loopback port; yields its URL.

    Its store is ``root/server.db`` and its artifacts ``root/artifacts``.
    """
    port = free_port()
    argv = [
        str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1",
        "--port", str(port), "--backend-store-uri", f"sqlite:///{root / 'server.db'}",
        "--serve-artifacts", "--artifacts-destination", str(root / "artifacts"),
        "--workers", "1",
    ]  # fmt: skip
    # The job queue (huey workers) is for MLflow's GenAI features; tracking does not need it.
    env = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    url = f"http://127.0.0.1:{port}"
    with running(argv, ready_url=f"{url}/health", env=env, log=root / "server.log", timeout=240):
        yield url
