"""The MLflow side of ``calops train``: where to track, and one small logger interface.

Everything that talks to MLflow lives here, behind ``Tracker``; the orchestration in
``calopsctl.training`` only sees plain dataclasses, so its logic is tested with a fake.
"""

from __future__ import annotations

import io
import logging
import os
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlparse

from calapi.errors import CalopsError
from calopsctl.state import load_state

# Tag keys written on every run; the API and `calops info` read them back.
TAG_DATA_SOURCE = "calops.data.source"
TAG_SYNTHETIC = "calops.data.synthetic"
TAG_EVALUATED_ON = "calops.evaluated_on"
TAG_TRAINER = "calops.trainer"
TAG_GIT_COMMIT = "mlflow.source.git.commit"

HEALTH_TIMEOUT_SECONDS = 3.0
PROGRESS_BAR = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"


class TrackingError(CalopsError):
    """The MLflow tracking store is unreachable or refused an operation."""


@dataclass(frozen=True)
class TrackingTarget:
    """Where runs go: the tracking URI, why it was chosen, and where local artifacts live."""

    uri: str
    origin: str
    artifact_root: Path | None = None  # for local stores: folder new experiments write into

    @property
    def is_remote(self) -> bool:
        return urlparse(self.uri).scheme in ("http", "https")


@dataclass(frozen=True)
class AliasedVersion:
    """The registered version an alias points at, with the numbers needed to compare it."""

    version: str
    rmsle: float | None
    evaluated_on: str | None


@dataclass(frozen=True)
class RunRecord:
    """Everything one training run logs."""

    experiment: str
    run_name: str | None
    model_name: str
    params: Mapping[str, Any]
    metrics: Mapping[str, float]
    tags: Mapping[str, str]
    artifacts: Sequence[Path]
    model: Any
    input_example: Any  # a DataFrame of raw feature rows
    pip_requirements: Sequence[str] = field(default_factory=tuple)


@dataclass(frozen=True)
class LoggedRun:
    """Where a logged run and its registered model version ended up."""

    run_id: str
    experiment_id: str
    model_version: str
    artifact_uri: str
    model_uri: str


class Tracker(Protocol):
    """The three things training needs from a model registry."""

    def aliased(self, model_name: str, alias: str) -> AliasedVersion | None: ...

    def log_run(self, record: RunRecord) -> LoggedRun: ...

    def set_alias(self, model_name: str, alias: str, version: str) -> None: ...


# -- choosing the tracking URI ---------------------------------------------------------------


def resolve_target(explicit: str | None, *, home: Path) -> TrackingTarget:
    """``--tracking`` (or MLFLOW_TRACKING_URI), else the stack in ``home``, else SQLite there."""
    if explicit:
        return _target_for(explicit, "--tracking / MLFLOW_TRACKING_URI")
    stack_url = _running_stack_mlflow(home)
    if stack_url:
        return TrackingTarget(stack_url, "the running stack's MLflow server")
    return TrackingTarget(
        f"sqlite:///{home / 'mlflow.db'}", "local SQLite store", home / "mlartifacts"
    )


def _target_for(uri: str, origin: str) -> TrackingTarget:
    parsed = urlparse(uri)
    if parsed.scheme == "sqlite":
        # Beside the database, not wherever the command happens to run.
        database = Path(uri.removeprefix("sqlite:///")).resolve()
        return TrackingTarget(uri, origin, database.parent / "mlartifacts")
    if parsed.scheme == "file":
        # Absolute, so the summary says where runs went and MLflow's per-URI store cache
        # cannot confuse two working folders.
        local = Path(parsed.netloc + parsed.path) if parsed.netloc else Path(parsed.path)
        return TrackingTarget(local.resolve().as_uri(), origin)
    if parsed.scheme in ("http", "https", "") or parsed.scheme.startswith("databricks"):
        return TrackingTarget(uri, origin)
    raise TrackingError(
        f"Tracking URI {uri!r} is not supported; use file:./mlruns, sqlite:///PATH.db "
        "or http://HOST:PORT."
    )


def _running_stack_mlflow(home: Path) -> str | None:
    state = load_state(home)
    if state is None or "mlflow" not in state.ports:
        return None
    url = state.url("mlflow")
    return url if _answers(url) else None


def _answers(url: str) -> bool:
    import httpx

    try:
        response = httpx.get(f"{url.rstrip('/')}/health", timeout=HEALTH_TIMEOUT_SECONDS)
    except httpx.HTTPError:
        return False
    return response.status_code == HTTPStatus.OK


def check_reachable(target: TrackingTarget) -> None:
    """Fail in one sentence, before any training, when a tracking server does not answer."""
    if target.is_remote and not _answers(target.uri):
        raise TrackingError(
            f"MLflow tracking server {target.uri} does not answer on /health; start it "
            "(`calops up`) or pass another --tracking URI such as file:./mlruns."
        )


# -- the real thing ---------------------------------------------------------------------------


class MlflowTracker:
    """``Tracker`` backed by MLflow (fluent API for the run, ``MlflowClient`` for the registry)."""

    def __init__(self, target: TrackingTarget) -> None:
        import mlflow

        _quiet_loggers()  # after the import: importing mlflow sets its own logger's level

        self._target = target
        self._mlflow = mlflow
        with mlflow_environment(target):  # the client builds its tracking store right away
            mlflow.set_tracking_uri(target.uri)
            mlflow.set_registry_uri(target.uri)
            self._client = mlflow.MlflowClient(tracking_uri=target.uri, registry_uri=target.uri)

    def aliased(self, model_name: str, alias: str) -> AliasedVersion | None:
        """The version ``alias`` points at, or None when the model or the alias does not exist."""
        from mlflow.exceptions import MlflowException

        with self._step("reading the registered model"):
            try:
                model = self._client.get_registered_model(model_name)
            except MlflowException as exc:
                if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
                    return None
                raise
            version = model.aliases.get(alias)
            if version is None:
                return None
            return self._describe(model_name, str(version))

    def _describe(self, model_name: str, version: str) -> AliasedVersion:
        from mlflow.exceptions import MlflowException

        run_id = self._client.get_model_version(model_name, version).run_id
        if not run_id:
            return AliasedVersion(version, None, None)
        try:
            run = self._client.get_run(run_id)
        except MlflowException:  # the run was deleted; the version has nothing to compare
            return AliasedVersion(version, None, None)
        return AliasedVersion(
            version, run.data.metrics.get("rmsle"), run.data.tags.get(TAG_EVALUATED_ON)
        )

    def log_run(self, record: RunRecord) -> LoggedRun:
        """Log params, metrics, tags, artifacts and the model; register a new model version."""
        mlflow = self._mlflow
        with self._step("logging the run"):
            experiment_id = self._experiment_id(record.experiment)
            with mlflow.start_run(
                experiment_id=experiment_id, run_name=record.run_name, tags=dict(record.tags)
            ) as run:
                mlflow.log_params(dict(record.params))
                mlflow.log_metrics(dict(record.metrics))
                for path in record.artifacts:
                    mlflow.log_artifact(str(path))
                info = self._log_model(record)
        return LoggedRun(
            run_id=run.info.run_id,
            experiment_id=experiment_id,
            model_version=str(info.registered_model_version),
            artifact_uri=run.info.artifact_uri,
            model_uri=f"models:/{record.model_name}/{info.registered_model_version}",
        )

    def _log_model(self, record: RunRecord) -> Any:
        from mlflow.models import infer_signature

        example = record.input_example
        signature = infer_signature(example, record.model.predict(example))
        return self._mlflow.sklearn.log_model(
            record.model,
            name="model",
            registered_model_name=record.model_name,
            input_example=example,
            signature=signature,
            pip_requirements=list(record.pip_requirements) or None,
            # The estimator holds calapi's own transformer and numpy ufuncs, which skops
            # would refuse to load unless each type were declared trusted; the same bytes
            # are already trusted as model.joblib, so pickle adds no new exposure.
            serialization_format="cloudpickle",
        )

    def _experiment_id(self, name: str) -> str:
        experiment = self._client.get_experiment_by_name(name)
        if experiment is not None:
            return str(experiment.experiment_id)
        location = None
        if self._target.artifact_root is not None:
            self._target.artifact_root.mkdir(parents=True, exist_ok=True)
            location = self._target.artifact_root.resolve().as_uri()
        return str(self._client.create_experiment(name, artifact_location=location))

    def set_alias(self, model_name: str, alias: str, version: str) -> None:
        """Point ``alias`` at ``version`` (registry aliases; stages are deprecated)."""
        with self._step(f"setting alias {alias!r}"):
            self._client.set_registered_model_alias(model_name, alias, version)

    @contextmanager
    def _step(self, what: str) -> Iterator[None]:
        """Keep MLflow's own chatter off the terminal and turn its failures into one sentence."""
        import requests
        from mlflow.exceptions import MlflowException

        sink = io.StringIO()
        try:
            with (
                mlflow_environment(self._target),
                warnings.catch_warnings(),
                redirect_stdout(sink),
                redirect_stderr(sink),
            ):
                warnings.simplefilter("ignore")
                yield
        except (MlflowException, requests.RequestException, OSError) as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise TrackingError(
                f"MLflow at {self._target.uri} failed while {what}: {reason.rstrip('.')}."
            ) from None


@contextmanager
def mlflow_environment(target: TrackingTarget) -> Iterator[None]:
    """Variables MLflow reads while it builds a store or copies artifacts, set only meanwhile.

    MLflow reads them from ``os.environ`` (its store classes check MLFLOW_ALLOW_FILE_STORE when
    constructed), so they are set around each MLflow call and the previous values put back.
    """
    wanted = {PROGRESS_BAR: os.environ.get(PROGRESS_BAR, "false")}  # a user's choice wins
    if urlparse(target.uri).scheme == "file":
        # MLflow 3.13+ refuses file stores unless told; `--tracking file:./mlruns` is a
        # supported choice here, so say yes on the user's behalf.
        wanted["MLFLOW_ALLOW_FILE_STORE"] = "true"
    with scoped_environ(wanted):
        yield


@contextmanager
def scoped_environ(values: Mapping[str, str]) -> Iterator[None]:
    """Set ``values`` in ``os.environ`` for the block; restore (or remove) them afterwards."""
    previous = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _quiet_loggers() -> None:
    """MLflow's INFO lines (table creation, migrations) are noise in a CLI's output."""
    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.ERROR)
