"""Settings of the inference API, read once from ``CALOPS_*`` environment variables."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class ApiSettings(BaseSettings):
    """Typed settings of the API; build one with ``ApiSettings()`` and pass it to create_app."""

    model_config = SettingsConfigDict(env_prefix="CALOPS_", extra="ignore")

    model: str = Field(
        default="artifacts",
        description="Artifacts folder (or a model file in one), or an MLflow URI "
        "such as models:/calories@champion.",
    )
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    feedback_max_pending: int = Field(
        default=100_000,
        gt=0,
        description="Predictions kept awaiting ground truth; oldest evicted first.",
    )
    feedback_max_age_seconds: float = Field(
        default=3600.0, gt=0, description="A prediction older than this no longer accepts feedback."
    )
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
