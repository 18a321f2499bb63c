"""What /info says about the process: versions, host and the MLflow URI without secrets."""

from __future__ import annotations

import os
import socket
from typing import Any, Final
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from calapi.model.card import library_versions

PACKAGES: Final = (
    "fastapi", "uvicorn", "pydantic", "prometheus-client", "scikit-learn", "numpy", "numba",
    "mlflow-skinny",
)  # fmt: skip
SECRET_WORDS: Final = ("token", "password", "secret", "key", "signature", "credential")
REDACTED: Final = "***"


def describe_environment() -> dict[str, Any]:
    """Python and key library versions, host name, and MLFLOW_TRACKING_URI redacted."""
    versions = library_versions(PACKAGES)
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    return {
        "versions": versions,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "MLFLOW_TRACKING_URI": redact_uri(uri) if uri else None,
    }


def redact_uri(uri: str) -> str:
    """``uri`` with any user/password and secret-looking query values replaced by ***."""
    parts = urlsplit(uri)
    netloc = parts.netloc
    if "@" in netloc:
        netloc = f"{REDACTED}@{netloc.rsplit('@', 1)[1]}"
    query = urlencode(
        [
            (key, REDACTED if any(word in key.lower() for word in SECRET_WORDS) else value)
            for key, value in parse_qsl(parts.query, keep_blank_values=True)
        ],
        safe="*",
    )
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
