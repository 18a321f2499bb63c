"""Run the API under uvicorn in the foreground (what ``calops serve`` calls)."""

from __future__ import annotations

import copy
import errno
import socket

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


def serve(settings: ApiSettings) -> None:
    """Serve ``create_app(settings)`` on settings.host:settings.port until interrupted."""
    import uvicorn

    from calapi.serving.app import create_app

    check_port_free(settings.host, settings.port)
    log_config = copy.deepcopy(uvicorn.config.LOGGING_CONFIG)
    log_config["loggers"]["calapi"] = {"handlers": ["default"], "level": "INFO"}
    # No access log: every request is already counted in /metrics, and a log line per
    # request costs more than the prediction itself.
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        access_log=False,
        log_level="info",
        log_config=log_config,
        timeout_graceful_shutdown=10,
    )
