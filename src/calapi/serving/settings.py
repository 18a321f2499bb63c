"""Settings of the inference API, read once from ``CALOPS_*`` environment variables."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from calapi.serving.predlog.base import Retention

# Loopback, the compose services in front of the API and the Kubernetes Service (namespace
# calops). Prometheus and the probes reach replicas by IP address, which is always allowed.
DEFAULT_ALLOWED_HOSTS = ",".join(
    (
        "localhost", "api", "gateway", "api.calops", "api.calops.svc",
        "api.calops.svc.cluster.local",
    )
)  # fmt: skip


class ApiSettings(BaseSettings):
    """Typed settings of the API; build one with ``ApiSettings()`` and pass it to create_app."""

    model_config = SettingsConfigDict(env_prefix="CALOPS_", extra="ignore")

    model: str = Field(
        default="artifacts",
        description="Artifacts folder (or a model file in one), or an MLflow URI "
        "such as models:/calories@champion.",
    )
    allow_pickle: bool = Field(
        default=False,
        description="Also load pickled models (joblib, pickle, cloudpickle), which run code "
        "when loaded: only for model folders and registries nobody untrusted can write.",
    )
    allowed_hosts: str = Field(
        default=DEFAULT_ALLOWED_HOSTS,
        description="Comma-separated Host names the API answers (a name:port is also allowed "
        "for each, IP addresses always are); '*' allows any. Guards against DNS rebinding.",
    )
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    workers: int = Field(
        default=1, ge=1, le=64,
        description="Processes serving the port; they share the prediction log and metrics.",
    )  # fmt: skip
    reuse_port: bool = Field(
        default=False,
        description="Share the port with other API processes (SO_REUSEPORT); the kernel "
        "spreads connections over them.",
    )
    own_port: int | None = Field(
        default=None, ge=1, le=65535,
        description="Also listen on this port alone, so this process can be scraped and "
        "checked by itself when it shares its main port.",
    )  # fmt: skip
    prediction_log: str = Field(
        default=".calops/predictions.db",
        description="Where predictions and their ground truth are kept: a SQLite file "
        "(shared by every API process of this machine) or redis://host:port/db (shared by "
        "every machine).",
    )
    log_flush_ms: float = Field(
        default=20.0, gt=0, le=1000,
        description="Predictions are written together this often; a crash loses at most "
        "this much of the latest ones.",
    )  # fmt: skip
    feedback_max_pending: int = Field(
        default=1_000_000,
        gt=0,
        description="Predictions kept awaiting ground truth; oldest evicted first.",
    )
    feedback_max_bytes: int = Field(
        default=256 * 1024 * 1024, gt=0,
        description="Bytes the predictions awaiting ground truth may take; oldest evicted first.",
    )  # fmt: skip
    feedback_max_age_seconds: float = Field(
        default=3600.0, gt=0, description="A prediction older than this no longer accepts feedback."
    )
    answered_max_age_seconds: float = Field(
        default=86_400.0, gt=0,
        description="How long answered predictions (with their truth) stay in the log.",
    )  # fmt: skip
    answered_max_bytes: int = Field(
        default=256 * 1024 * 1024, gt=0,
        description="Bytes the answered predictions may take; oldest dropped first.",
    )  # fmt: skip
    rolling_window_seconds: float = Field(default=300.0, gt=0)
    drift_window_seconds: float = Field(
        default=300.0, gt=0, description="Served rows compared with the training reference."
    )
    drift_min_rows: int = Field(
        default=200,
        gt=0,
        description="Rows the drift window needs before it reports a PSI; fewer rows make "
        "identical distributions look shifted by chance.",
    )
    max_batch_rows: int = Field(default=10_000, gt=0)
    max_body_bytes: int = Field(
        default=8 * 1024 * 1024, gt=0, description="A 10,000-row batch takes about 1.5 MB."
    )
    reload_interval_seconds: float = Field(
        default=2.0,
        ge=0,
        description="How often the model files are checked for a change; 0 = never.",
    )
    microbatch_max_rows: int = Field(
        default=512,
        gt=0,
        description="Rows from concurrent requests predicted together in one call.",
    )
    microbatch_max_wait_ms: float = Field(
        default=0.0,
        ge=0,
        description="Extra time to gather rows before predicting; 0 predicts whatever queued "
        "while the previous call ran (adaptive).",
    )
    predict_threads: int = Field(
        default=1,
        gt=0,
        description="OpenMP/BLAS threads per model call; batching gives the parallelism.",
    )

    def retention(self) -> Retention:
        """The prediction log's bounds."""
        return Retention(
            max_age_seconds=self.feedback_max_age_seconds,
            max_bytes=self.feedback_max_bytes,
            max_rows=self.feedback_max_pending,
            answered_max_age_seconds=self.answered_max_age_seconds,
            answered_max_bytes=self.answered_max_bytes,
        )

    def as_environment(self) -> dict[str, str]:
        """These settings as the CALOPS_* variables that rebuild them in another process."""
        return {
            f"CALOPS_{name.upper()}": str(value)
            for name, value in self.model_dump().items()
            if value is not None
        }
