"""Run the API under uvicorn in the foreground (what ``calops serve`` calls)."""

from __future__ import annotations

import copy
import errno
import socket

from calapi.errors import CalopsError
from calapi.serving.settings import ApiSettings


def check_port_free(host: str, port: int) -> None:
    """Raise CalopsError naming the port and the flag when something already listens there."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise CalopsError(
                    f"Port {port} on {host} is already in use; pick another with --port "
                    "(or CALOPS_PORT)."
                ) from None
            raise CalopsError(f"Cannot listen on {host}:{port} ({exc.strerror}).") from None


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
