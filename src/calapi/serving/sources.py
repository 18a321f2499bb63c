"""Where the model comes from: a local artifacts folder or an MLflow ``models:/`` URI.

A source answers two questions: ``signature()`` (cheap: has anything changed?) and
``load()`` (the model, ready to predict, with its card). Both run off the event loop.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Hashable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, Protocol

import numpy as np

from calapi.errors import ModelError
from calapi.model.artifact import checked_predictor, read_model
from calapi.model.card import (
    CARD_FILE,
    names_another_file,
    read_card,
    stated_sha256,
    training_ranges,
)
from calapi.model.features import FEATURES, FloatArray
from calapi.model.predictor import Predictor, probe_rows
from calapi.model.runrecord import POINTER, RUN_FILE, RunInfo, read_run
from calapi.model.safeformat import PICKLE_FILE, SAFE_FILE, SAFE_SUFFIX, is_pickle

log = logging.getLogger("calapi")
POINTER_ALIAS: Final = POINTER  # the alias a model served through the folder pointer shows
MLFLOW_SCHEME: Final = "models:/"
# The safe format first: a version holding both is loaded from model.skops.
MLFLOW_MODEL_FILES: Final = ("model.skops", "model.pkl", "model.joblib", "model.cloudpickle")


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
    alias: str | None = None
    run_id: str | None = None
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


def source_for(reference: str, *, allow_pickle: bool = False) -> ModelSource:
    """The source for a setting: an MLflow ``models:/`` URI, else a local path.

    ``allow_pickle``: also load pickled models, which run code when loaded.
    """
    if reference.startswith(MLFLOW_SCHEME):
        return MlflowSource(reference, allow_pickle=allow_pickle)
    return LocalSource(Path(reference), allow_pickle=allow_pickle)


@dataclass(frozen=True)
class RunFolder:
    """Where one load reads from, fixed once so model, card and run.json are of one run."""

    model_path: Path
    card_path: Path
    target: Path | None = None
    run: RunInfo | None = None
    run_note: str | None = None

    def signature(self) -> Hashable:
        """The run folder and its files' stats: a pointer switch or a rewrite changes it."""
        stats = (_stat(self.model_path), _stat(self.card_path))
        if self.target is None:
            return (None, *stats)
        return (str(self.target), *stats, _stat(self.target / RUN_FILE))


class LocalSource:
    """A folder's ``current`` run (or its own ``model.skops``), or a model file.

    ``current`` is the local serving pointer ``calops promote`` and ``rollback`` switch; a
    folder without one is the legacy layout, with the model and its card inside. A pickle
    (``model.joblib``) is loaded only when ``allow_pickle``.
    """

    def __init__(self, path: Path, *, allow_pickle: bool = False) -> None:
        self.path = path
        self.allow_pickle = allow_pickle
        is_file = path.suffix == SAFE_SUFFIX or is_pickle(path)
        self.pointer = None if is_file else path / POINTER
        self.model_path = path if is_file else _model_in(path)
        self.description = str(path)

    def signature(self) -> Hashable:
        return self.run_folder().signature()

    def run_folder(self) -> RunFolder:
        """The files to load now: those of the run ``current`` resolves to, else the legacy ones."""
        if self.pointer is None or not os.path.lexists(self.pointer):
            model_path = _model_in(self.path) if self.pointer is not None else self.model_path
            return RunFolder(model_path, model_path.with_name(CARD_FILE))
        target = Path(os.path.realpath(self.pointer))
        run, note = read_run(target / RUN_FILE)
        model_path = target / run.model_file if run else _model_in(target)
        return RunFolder(model_path, target / CARD_FILE, target, run, note)

    def load(self) -> LoadedModel:
        folder = self.run_folder()
        self._check_present(folder)
        card, note = read_card(folder.card_path, None)
        run = folder.run if folder.target is not None else _sibling_run(folder.model_path)
        estimator, sha256 = read_model(
            folder.model_path,
            stated=_stated(folder.model_path.name, card, folder.card_path, run),
            allow_pickle=self.allow_pickle,
        )
        if names_another_file(card, folder.model_path.name):
            card, note = None, f"The model card {folder.card_path} describes another model file."
        source = str(folder.model_path)
        if folder.target is None:
            return assemble(estimator, source, sha256[:12], sha256, card, note)
        version, run_id, run_note = run_identity(folder.run, sha256)
        if (problem := folder.run_note or run_note) is not None:
            log.warning("%s", problem)
        return assemble(
            estimator, source, version, sha256, card, note, alias=POINTER_ALIAS, run_id=run_id
        )

    def _check_present(self, folder: RunFolder) -> None:
        if folder.target is not None and not folder.target.is_dir():
            raise ModelError(
                f"The serving pointer {self.pointer} leads to {folder.target}, which is not an "
                "existing run folder; run `calops promote` or `calops rollback` to repoint it."
            )
        if folder.model_path.is_file():
            return
        if folder.target is not None:
            raise ModelError(
                f"No model at {folder.model_path}, in the run {self.pointer} points to; run "
                "`calops promote` or `calops rollback` to repoint it at a complete run."
            )
        if self.pointer is None:
            raise ModelError(
                f"No model at {self.model_path}; run `calops train` or set CALOPS_MODEL."
            )
        raise ModelError(
            f"No model at {self.path} (no {self.pointer} and no {SAFE_FILE}); run "
            "`calops train` or set CALOPS_MODEL."
        )


def _model_in(folder: Path) -> Path:
    """A folder's model file: ``model.skops``, else a ``model.joblib`` of older calops."""
    safe = folder / SAFE_FILE
    pickled = folder / PICKLE_FILE
    return pickled if not safe.is_file() and pickled.is_file() else safe


def _sibling_run(model_path: Path) -> RunInfo | None:
    """The run record beside a model file named directly (a run folder's file)."""
    if not (model_path.parent / RUN_FILE).is_file():
        return None
    return read_run(model_path.parent / RUN_FILE)[0]


def _stated(
    name: str, card: dict[str, Any] | None, card_path: Path, run: RunInfo | None
) -> dict[str, str]:
    """Who states a sha256 for the model file ``name``: its card, its run record, or neither."""
    stated = {}
    if (sha256 := stated_sha256(card, name)) is not None:
        stated[f"the model card {card_path}"] = sha256
    if run is not None and run.model_file == name and run.sha256:
        stated[f"its {RUN_FILE}"] = run.sha256
    return stated


def run_identity(run: RunInfo | None, sha256: str) -> tuple[str, str | None, str | None]:
    """Version, run id and a note: the registry's "name/version" when the record names both
    and describes this very model file, else the sha256 prefix the legacy layout reports."""
    if run is None:
        return sha256[:12], None, None
    if run.sha256 not in (None, sha256):
        return sha256[:12], None, f"{RUN_FILE} describes another model file (sha256); ignored."
    if not run.model_name or run.version is None:  # an adopted legacy model has no version
        return sha256[:12], run.run_id, None
    return f"{run.model_name}/{run.version}", run.run_id, None


class MlflowSource:
    """A registered model: ``models:/name@alias`` or ``models:/name/version``.

    Its ``model.skops`` is loaded with calops's own trusted types, never the list MLflow's
    MLmodel file carries (whoever registers a version writes that too); a version with only
    a pickle is loaded only when ``allow_pickle``.
    """

    def __init__(self, uri: str, *, allow_pickle: bool = False) -> None:
        self.uri = uri
        self.description = uri
        self.allow_pickle = allow_pickle
        self.name, self.alias, self.version = _parse_models_uri(uri)

    def signature(self) -> Hashable:
        version: Hashable = self._model_version().version
        return version

    def load(self) -> LoadedModel:
        found = self._model_version()
        with tempfile.TemporaryDirectory(prefix="calops-model-") as folder:
            local = self._download(found.version, folder)
            estimator, sha256 = read_model(
                _mlflow_model_file(local, self.uri), allow_pickle=self.allow_pickle
            )
            card, note = self._card(found.run_id, folder)
        version = f"{self.name}/{found.version}"
        return assemble(
            estimator, self.uri, version, sha256, card, note, alias=self.alias,
            run_id=found.run_id,
        )  # fmt: skip

    def _download(self, version: str, folder: str) -> Path:
        import mlflow

        try:
            return Path(
                mlflow.artifacts.download_artifacts(
                    artifact_uri=f"models:/{self.name}/{version}", dst_path=folder
                )
            )
        except Exception as exc:
            raise ModelError(f"Could not download {self.uri} from MLflow: {exc}") from None

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
            # The card's sha256 is that of the run folder's model.skops, not of MLflow's own
            # serialisation, so it cannot be compared here; the run ties them together.
            return read_card(Path(local), None)
        return None, f"The MLflow run {run_id} has no {CARD_FILE}."


def _mlflow_model_file(local: Path, uri: str) -> Path:
    """The version's ``model.skops``, else its pickle (refused unless pickles are allowed)."""
    for name in MLFLOW_MODEL_FILES:
        if (local / name).is_file():
            return local / name
    raise ModelError(f"The MLflow model {uri} holds none of {', '.join(MLFLOW_MODEL_FILES)}.")


def assemble(  # noqa: PLR0917 - each argument is one fact /info reports
    estimator: Any,
    source: str,
    version: str,
    sha256: str,
    card: dict[str, Any] | None,
    card_note: str | None,
    *,
    alias: str | None = None,
    run_id: str | None = None,
) -> LoadedModel:
    """Check the estimator can predict, pick its fastest exact predictor, read its ranges."""
    ranges = training_ranges(card)
    predictor = checked_predictor(estimator, source, probe_rows(ranges))
    low = np.full(len(FEATURES), -np.inf)
    high = np.full(len(FEATURES), np.inf)
    for index, name in enumerate(FEATURES):
        if ranges and name in ranges:
            low[index], high[index] = ranges[name]
    return LoadedModel(
        estimator, predictor, source, version, sha256, card, card_note, low, high, alias, run_id
    )


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
