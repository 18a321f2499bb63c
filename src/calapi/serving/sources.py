"""Where the model comes from: a local artifacts folder or an MLflow ``models:/`` URI.

A source answers two questions: ``signature()`` (cheap: has anything changed?) and
``load()`` (the model, ready to predict, with its card). Both run off the event loop.
"""

from __future__ import annotations

import tempfile
from collections.abc import Hashable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, Protocol

import numpy as np

from calapi.errors import ModelError
from calapi.model.artifact import checked_predictor, file_sha256, map_moved_modules, read_model
from calapi.model.card import CARD_FILE, read_card, training_ranges
from calapi.model.features import FEATURES, FloatArray
from calapi.model.predictor import Predictor, probe_rows

MODEL_FILE: Final = "model.joblib"
MLFLOW_SCHEME: Final = "models:/"
MLFLOW_MODEL_FILES: Final = ("model.pkl", "model.joblib", "model.skops", "model.cloudpickle")


@dataclass(frozen=True)
class LoadedModel:
    """A model ready to answer, and everything /info says about it."""

    estimator: Any
    predict: Predictor
    source: str
    version: str
    sha256: str
    card: dict[str, Any] | None
    card_note: str | None
    low: FloatArray
    high: FloatArray
    loaded_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))

    def out_of_range(self, raw: FloatArray) -> dict[str, int]:
        """Rows outside the training range, per feature (empty without a card)."""
        outside = ((raw < self.low) | (raw > self.high)).sum(axis=0)
        return {name: int(count) for name, count in zip(FEATURES, outside, strict=True) if count}


class ModelSource(Protocol):
    """Somewhere a model can be loaded from."""

    description: str

    def signature(self) -> Hashable:
        """A value that changes whenever the model would load differently."""
        ...

    def load(self) -> LoadedModel:
        """Load the model; raise ModelError with one sentence when it cannot be used."""
        ...


def source_for(reference: str) -> ModelSource:
    """The source for a setting: an MLflow ``models:/`` URI, else a local path."""
    if reference.startswith(MLFLOW_SCHEME):
        return MlflowSource(reference)
    return LocalSource(Path(reference))


class LocalSource:
    """``model.joblib`` + ``model_card.json`` in a folder (or a model file and its folder)."""

    def __init__(self, path: Path) -> None:
        self.model_path = path if path.suffix in {".joblib", ".pkl"} else path / MODEL_FILE
        self.card_path = self.model_path.with_name(CARD_FILE)
        self.description = str(self.model_path)

    def signature(self) -> Hashable:
        return (_stat(self.model_path), _stat(self.card_path))

    def load(self) -> LoadedModel:
        if not self.model_path.is_file():
            raise ModelError(
                f"No model at {self.model_path}; run `calops train` or set CALOPS_MODEL."
            )
        sha256 = file_sha256(self.model_path)
        estimator = read_model(self.model_path)
        card, note = read_card(self.card_path, sha256)
        return assemble(estimator, str(self.model_path), sha256[:12], sha256, card, note)


class MlflowSource:
    """A registered model: ``models:/name@alias`` or ``models:/name/version``."""

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self.description = uri
        self.name, self.alias, self.version = _parse_models_uri(uri)

    def signature(self) -> Hashable:
        version: Hashable = self._model_version().version
        return version

    def load(self) -> LoadedModel:
        import mlflow

        found = self._model_version()
        with tempfile.TemporaryDirectory(prefix="calops-model-") as folder:
            try:
                local = Path(
                    mlflow.artifacts.download_artifacts(
                        artifact_uri=f"models:/{self.name}/{found.version}", dst_path=folder
                    )
                )
                map_moved_modules()
                estimator = mlflow.sklearn.load_model(str(local))
            except Exception as exc:
                raise ModelError(f"Could not load {self.uri} from MLflow: {exc}") from None
            files = [local / name for name in MLFLOW_MODEL_FILES if (local / name).is_file()]
            sha256 = file_sha256(files[0]) if files else ""
            card, note = self._card(found.run_id, folder)
        version = f"{self.name}/{found.version}"
        return assemble(estimator, self.uri, version, sha256, card, note)

    def _model_version(self) -> Any:
        from mlflow import MlflowClient

        try:
            client = MlflowClient()
            if self.alias is not None:
                return client.get_model_version_by_alias(self.name, self.alias)
            return client.get_model_version(self.name, str(self.version))
        except Exception as exc:
            raise ModelError(
                f"MLflow has no model {self.uri} ({type(exc).__name__}); check "
                "MLFLOW_TRACKING_URI and the registered name and alias."
            ) from None

    def _card(self, run_id: str | None, folder: str) -> tuple[Any, str | None]:
        import mlflow

        for path in (CARD_FILE, f"model/{CARD_FILE}", f"artifacts/{CARD_FILE}"):
            try:
                local = mlflow.artifacts.download_artifacts(
                    run_id=run_id, artifact_path=path, dst_path=folder
                )
            except Exception:  # noqa: S112 - absent at this path: try the next one
                continue
            # The card's sha256 is that of the run's model.joblib, not of MLflow's own
            # serialisation, so it cannot be compared here; the run ties them together.
            return read_card(Path(local), None)
        return None, f"The MLflow run {run_id} has no {CARD_FILE}."


def assemble(  # noqa: PLR0917 - each argument is one fact /info reports
    estimator: Any,
    source: str,
    version: str,
    sha256: str,
    card: dict[str, Any] | None,
    card_note: str | None,
) -> LoadedModel:
    """Check the estimator can predict, pick its fastest exact predictor, read its ranges."""
    ranges = training_ranges(card)
    predictor = checked_predictor(estimator, source, probe_rows(ranges))
    low = np.full(len(FEATURES), -np.inf)
    high = np.full(len(FEATURES), np.inf)
    for index, name in enumerate(FEATURES):
        if ranges and name in ranges:
            low[index], high[index] = ranges[name]
    return LoadedModel(estimator, predictor, source, version, sha256, card, card_note, low, high)


def _stat(path: Path) -> tuple[int, int, int] | None:
    try:
        info = path.stat()
    except OSError:
        return None
    return (info.st_ino, info.st_size, info.st_mtime_ns)


def _parse_models_uri(uri: str) -> tuple[str, str | None, str | None]:
    rest = uri[len(MLFLOW_SCHEME) :].strip("/")
    if "@" in rest:
        name, alias = rest.split("@", 1)
        if name and alias:
            return name, alias, None
    elif "/" in rest:
        name, version = rest.rsplit("/", 1)
        if name and version.isdigit():
            return name, None, version
    raise ModelError(f"{uri} is not models:/NAME@ALIAS or models:/NAME/VERSION.")
