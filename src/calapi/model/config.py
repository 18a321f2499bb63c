"""The training configuration (``config.yaml``), typed."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from calapi.errors import ConfigError, validation_reason


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataConfig(_Section):
    source: str = "synthetic"
    synthetic_rows: Annotated[int, Field(gt=0)] = 100_000
    synthetic_seed: int = 42
    # "low" (like the original Kaggle data), "high" (like Playground S5E5) or a log-normal sigma.
    synthetic_noise: str | float = "low"

    @field_validator("synthetic_noise")
    @classmethod
    def _known_noise(cls, value: str | float) -> str | float:
        from calapi.model.synthetic import noise_sigma

        noise_sigma(value)
        return value


class ModelConfig(_Section):
    name: str = "calories"
    alias: str = "champion"
    params: dict[str, Any] = Field(default_factory=dict)
    random_state: int = 42


class HoldoutConfig(_Section):
    enabled: bool = True
    fraction: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.2
    seed: int = 42


class OutputsConfig(_Section):
    dir: Path = Path("artifacts")
    model: str = "model.joblib"
    metrics: str = "metrics.json"
    card: str = "model_card.json"

    @property
    def model_path(self) -> Path:
        return self.dir / self.model

    @property
    def metrics_path(self) -> Path:
        return self.dir / self.metrics

    @property
    def card_path(self) -> Path:
        return self.dir / self.card


class TrainConfig(_Section):
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    holdout: HoldoutConfig = Field(default_factory=HoldoutConfig)
    outputs: OutputsConfig = Field(default_factory=OutputsConfig)


def default_config_path() -> Path:
    """``./config.yaml`` when present, else the copy shipped inside the package."""
    local = Path("config.yaml")
    return local if local.is_file() else packaged_config_path()


def packaged_config_path() -> Path:
    """The default configuration shipped with calops (the checkout's config.yaml in a clone)."""
    packaged = Path(__file__).with_name("default_config.yaml")
    if packaged.is_file():
        return packaged
    return Path(__file__).resolve().parents[3] / "config.yaml"


def load_config(path: Path | None = None) -> TrainConfig:
    """Read and validate a training configuration; raise ConfigError with one clear sentence."""
    path = path or default_config_path()
    raw = read_yaml(path)
    try:
        return TrainConfig.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ConfigError(f"Config file {path}: {where}: {validation_reason(first)}.") from None


def read_yaml(path: Path) -> dict[str, Any]:
    """A YAML file holding a mapping, as plain data (an empty file is ``{}``).

    Also how calops reads configs it does not own (a hand-out train.py's), so nothing here
    knows calops's schema. Every failure is a ConfigError in one sentence.
    """
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"Config file {path} does not exist; pass --config PATH.") from None
    except OSError as exc:
        raise ConfigError(f"Config file {path} could not be read ({exc}).") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" (line {mark.line + 1})" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "unreadable"
        raise ConfigError(f"Config file {path} is not valid YAML{at}: {problem}.") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"Config file {path} must hold a YAML mapping of keys to values.")
    return {str(key): value for key, value in raw.items()}


def flatten(mapping: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flatten nested mappings into dotted keys, e.g. ``{"model.params.max_iter": 600}``."""
    flat: dict[str, Any] = {}
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat
