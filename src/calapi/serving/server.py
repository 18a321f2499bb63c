"""Run the API under uvicorn in the foreground (what ``calops serve`` calls)."""

from __future__ import annotations

import copy
import errno
import os
import socket
import tempfile
from typing import Any

from calapi.errors import CalopsError
from calapi.serving.settings import ApiSettings


def bind_error(host: str, port: int) -> OSError | None:
    """Why ``host:port`` cannot be listened on now, or None when it can.

    SO_REUSEADDR, like the servers: a closed connection's TIME_WAIT does not count as taken.
    """
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            return exc
    return None


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    """True when nothing listens on ``host:port``."""
    return bind_error(host, port) is None


def check_port_free(host: str, port: int) -> None:
    """Raise CalopsError naming the port and the flag when ``serve`` cannot listen there."""
    error = bind_error(host, port)
    if error is None:
        return
    if error.errno == errno.EADDRINUSE:
        raise CalopsError(
            f"Port {port} on {host} is already in use; pick another with --port (or CALOPS_PORT)."
        )
    raise CalopsError(f"Cannot listen on {host}:{port} ({error.strerror}).")


def listen(host: str, port: int, *, reuse_port: bool = False) -> socket.socket:
    """A listening socket; with ``reuse_port`` other processes may listen on the same port."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        check_port_free(host, port)  # the one-sentence error
        raise
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def serve(settings: ApiSettings) -> None:
    """Serve ``create_app(settings)`` until interrupted: one process, or ``settings.workers``
    processes sharing the port, the prediction log and their metrics."""
    if settings.workers > 1:
        _serve_workers(settings)
        return
    import uvicorn

    from calapi.serving.app import create_app

    if not settings.reuse_port:
        check_port_free(settings.host, settings.port)
    sockets = [listen(settings.host, settings.port, reuse_port=settings.reuse_port)]
    if settings.own_port is not None:
        sockets.append(listen(settings.host, settings.own_port))
    config = uvicorn.Config(create_app(settings), **_uvicorn_options())
    uvicorn.Server(config).run(sockets=sockets)


def _serve_workers(settings: ApiSettings) -> None:
    """uvicorn's worker processes, each building the app from the same CALOPS_* variables.

    Their counters and histograms go to files in one folder (prometheus-client's
    multiprocess mode), so /metrics on any worker shows the totals of all of them.
    """
    import uvicorn

    if settings.reuse_port or settings.own_port is not None:
        raise CalopsError(
            "--workers runs its processes on one port by itself; drop CALOPS_REUSE_PORT and "
            "CALOPS_OWN_PORT, or run one process per replica."
        )
    check_port_free(settings.host, settings.port)
    with tempfile.TemporaryDirectory(prefix="calapi-metrics-") as metrics:
        os.environ.update(settings.as_environment())
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics
        uvicorn.run(
            "calapi.serving.app:create_app", factory=True, host=settings.host,
            port=settings.port, workers=settings.workers, **_uvicorn_options(),
        )  # fmt: skip


def _uvicorn_options() -> dict[str, Any]:
    import uvicorn

    log_config = copy.deepcopy(uvicorn.config.LOGGING_CONFIG)
    log_config["loggers"]["calapi"] = {"handlers": ["default"], "level": "INFO"}
    # No access log: every request is already counted in /metrics, and a log line per
    # request costs more than the prediction itself.
    return {
        "access_log": False,
        "log_level": "info",
        "log_config": log_config,
        "timeout_graceful_shutdown": 10,
    }
