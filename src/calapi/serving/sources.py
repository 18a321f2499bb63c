"""Where the model comes from: a local artifacts folder or an MLflow ``models:/`` URI.

A source answers two questions: ``signature()`` (cheap: has anything changed?) and
``load()`` (the model, ready to predict, with its card). Both run off the event loop.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from collections.abc import Hashable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, Protocol

import numpy as np

from calapi.errors import ModelError
from calapi.model.features import FEATURES, FloatArray
from calapi.model.predictor import Predictor, build_predictor, probe_rows

MODEL_FILE: Final = "model.joblib"
CARD_FILE: Final = "model_card.json"
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


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


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
        estimator = _unpickle(self.model_path)
        card, note = _read_card(self.card_path, sha256)
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
            return _read_card(Path(local), None)
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
    ranges = _training_ranges(card)
    probe = probe_rows(ranges)
    if not callable(getattr(estimator, "predict", None)):
        raise ModelError(f"{source} holds a {type(estimator).__name__}, which cannot predict.")
    try:
        predictor = build_predictor(estimator, probe)
        predictor(probe[:1])
    except Exception as exc:
        raise ModelError(f"The model in {source} fails to predict a valid row: {exc}") from None
    low = np.full(len(FEATURES), -np.inf)
    high = np.full(len(FEATURES), np.inf)
    for index, name in enumerate(FEATURES):
        if ranges and name in ranges:
            low[index], high[index] = ranges[name]
    return LoadedModel(estimator, predictor, source, version, sha256, card, card_note, low, high)


def _training_ranges(card: dict[str, Any] | None) -> dict[str, tuple[float, float]] | None:
    try:
        raw = (card or {})["training_ranges"]
        return {name: (float(v["min"]), float(v["max"])) for name, v in raw.items()}
    except (KeyError, TypeError, ValueError, AttributeError):
        return None


def _stat(path: Path) -> tuple[int, int, int] | None:
    try:
        info = path.stat()
    except OSError:
        return None
    return (info.st_ino, info.st_size, info.st_mtime_ns)


def _unpickle(path: Path) -> Any:
    import joblib

    try:
        return joblib.load(path)
    except Exception as exc:
        raise ModelError(
            f"{path} is not a loadable model ({type(exc).__name__}: {exc}); retrain it."
        ) from None


def _read_card(path: Path, sha256: str | None) -> tuple[dict[str, Any] | None, str | None]:
    try:
        card = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None, f"No model card at {path}; the model is served without one."
    except (OSError, ValueError) as exc:
        return None, f"The model card {path} is unreadable ({exc}); ignored."
    if not isinstance(card, dict):
        return None, f"The model card {path} is not a JSON object; ignored."
    if sha256 and card.get("sha256") not in (None, sha256):
        return None, f"The model card {path} describes another model file (sha256); ignored."
    return card, None


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
