"""What /info says about the process: versions, host and the MLflow URI without secrets."""

from __future__ import annotations

import os
import socket
from typing import Any, Final

from calapi.model.card import library_versions
from calapi.redaction import redact_uri

PACKAGES: Final = (
    "fastapi", "uvicorn", "pydantic", "prometheus-client", "scikit-learn", "numpy", "numba",
    "mlflow-skinny",
)  # fmt: skip


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
