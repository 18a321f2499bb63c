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
from datetime import UTC, datetime
from http import HTTPStatus
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlparse

from calapi.errors import CalopsError
from calapi.model.runrecord import RunInfo
from calopsctl.state import load_state

if TYPE_CHECKING:
    from calapi.serving.sources import LoadedModel

# Tag keys written on every run; the API and `calops info` read them back.
TAG_DATA_SOURCE = "calops.data.source"
TAG_SYNTHETIC = "calops.data.synthetic"
TAG_EVALUATED_ON = "calops.evaluated_on"
TAG_TRAINER = "calops.trainer"
TAG_MODEL_SHA256 = "calops.model.sha256"
TAG_GIT_COMMIT = "mlflow.source.git.commit"

HEALTH_TIMEOUT_SECONDS = 3.0
PROBE_TIMEOUT_SECONDS = 10.0
PROGRESS_BAR = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
# MLflow's client retries a failing server 7 times with exponential backoff and waits 120 s
# for each answer (minutes of silence); here a call that fails or hangs is given up within
# about 2 x 8 s + 1 s of backoff, so `calops train` says what is wrong well within 30 s.
HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "8",
}
MAX_LISTED_VERSIONS = 50


class TrackingError(CalopsError):
    """The MLflow tracking store is unreachable or refused an operation."""


@dataclass(frozen=True)
class TrackingTarget:
    """Where runs go: the tracking URI, why it was chosen, and where local artifacts live."""

    uri: str
    origin: str
    artifact_root: Path | None = None  # for local stores: folder new experiments write into
    local_default: bool = False  # the home's own SQLite store: no server, nobody chose it
    serves: str | None = None  # what the stack's API serves, when this is the stack's server

    @property
    def is_remote(self) -> bool:
        return urlparse(self.uri).scheme in ("http", "https")

    @property
    def shown(self) -> str:
        """The URI as calops prints it: credentials and secret query values hidden."""
        from calapi.redaction import redact_uri

        return redact_uri(self.uri)


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
    safe: bool = True  # the model saves as skops with calops's trusted types (else: pickle)


@dataclass(frozen=True)
class LoggedRun:
    """Where a logged run and its registered model version ended up."""

    run_id: str
    experiment_id: str
    model_version: str
    artifact_uri: str
    model_uri: str


Registered = tuple[RunInfo, tuple[str, ...]]  # a registered version's run, and its aliases


class Tracker(Protocol):
    """What training and promotion need from MLflow's tracking store and model registry."""

    def log_run(self, record: RunRecord) -> LoggedRun: ...

    def aliased(self, model_name: str, alias: str) -> Registered | None: ...

    def versions(self, model_name: str) -> list[Registered]: ...

    def set_alias(self, model_name: str, alias: str, version: str) -> None: ...

    def model_tag(self, model_name: str, key: str) -> str | None: ...

    def set_model_tag(self, model_name: str, key: str, value: str) -> None: ...

    def load_version(self, model_name: str, version: str) -> LoadedModel: ...


# -- choosing the tracking URI ---------------------------------------------------------------


def resolve_target(explicit: str | None, *, home: Path) -> TrackingTarget:
    """``--tracking`` (or MLFLOW_TRACKING_URI), else the stack in ``home``, else SQLite there."""
    if explicit:
        return _target_for(explicit, "--tracking / MLFLOW_TRACKING_URI")
    stack = _running_stack_mlflow(home)
    if stack:
        url, serves = stack
        return TrackingTarget(url, f"the MLflow server of the stack in {home}", serves=serves)
    return TrackingTarget(
        f"sqlite:///{home / 'mlflow.db'}",
        f"no stack runs from {home}: its local SQLite store",
        home / "mlartifacts",
        local_default=True,
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


def _running_stack_mlflow(home: Path) -> tuple[str, str | None] | None:
    """The URL of the MLflow server of the stack in ``home`` (if it answers), and what its API
    serves."""
    state = load_state(home)
    if state is None or "mlflow" not in state.services:
        return None
    url = state.url("mlflow")
    served = state.extra.get("model")
    return (url, str(served) if served else None) if _answers(url) else None


def _answers(url: str) -> bool:
    import httpx

    try:
        response = httpx.get(f"{url.rstrip('/')}/health", timeout=HEALTH_TIMEOUT_SECONDS)
    except httpx.HTTPError:
        return False
    return response.status_code == HTTPStatus.OK


def check_reachable(target: TrackingTarget) -> None:
    """Fail in one sentence, before any training, when a tracking server cannot track.

    A server can answer /health and still fail every call (a broken database, a proxy in
    front of it), so one real, cheap API call is made too, with a short timeout.
    """
    if not target.is_remote:
        return
    if not _answers(target.uri):
        raise TrackingError(
            f"MLflow tracking server {target.shown} does not answer on /health; start it "
            "(`calops up`) or pass another --tracking URI such as file:./mlruns."
        )
    import httpx

    url = f"{target.uri.rstrip('/')}/api/2.0/mlflow/experiments/search"
    try:
        response = httpx.get(url, params={"max_results": 1}, timeout=PROBE_TIMEOUT_SECONDS)
    except httpx.HTTPError as exc:
        raise TrackingError(
            f"MLflow at {target.shown} answers /health but not its API ({type(exc).__name__}); "
            "check the server's log (`calops logs mlflow`)."
        ) from None
    if response.status_code != HTTPStatus.OK:
        raise TrackingError(
            f"MLflow at {target.shown} answers /health but its API failed (HTTP "
            f"{response.status_code}: {response.text.strip()[:120]}); check the server's log "
            "(`calops logs mlflow`)."
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

    def aliased(self, model_name: str, alias: str) -> Registered | None:
        """The version ``alias`` points at, or None when the model or the alias does not exist."""
        with self._step("reading the registered model"):
            model = self._registered(model_name)
            if model is None or alias not in model.aliases:
                return None
            version = self._client.get_model_version(model_name, str(model.aliases[alias]))
            return self._describe(model_name, version, _aliases_of(model))

    def versions(self, model_name: str) -> list[Registered]:
        """The newest registered versions of ``model_name``, oldest first."""
        with self._step("listing the registered versions"):
            model = self._registered(model_name)
            if model is None:
                return []
            found = self._client.search_model_versions(
                f"name = '{model_name}'", max_results=MAX_LISTED_VERSIONS,
                order_by=["version_number DESC"],
            )  # fmt: skip
            aliases = _aliases_of(model)
            described = [self._describe(model_name, version, aliases) for version in found]
        return sorted(described, key=lambda item: int(item[0].version or 0))

    def _registered(self, model_name: str) -> Any:
        from mlflow.exceptions import MlflowException

        try:
            return self._client.get_registered_model(model_name)
        except MlflowException as exc:
            if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
                return None
            raise

    def _describe(
        self, model_name: str, version: Any, aliases: Mapping[str, tuple[str, ...]]
    ) -> Registered:
        from mlflow.exceptions import MlflowException

        number = str(version.version)
        tags: Mapping[str, str] = {}
        metrics: Mapping[str, float] = {}
        if version.run_id:
            try:
                run = self._client.get_run(version.run_id)
                tags, metrics = run.data.tags, run.data.metrics
            except MlflowException:  # the run was deleted; the version keeps its number
                pass
        info = RunInfo(
            run_id=version.run_id or None,
            model_name=model_name,
            version=number,
            created=_iso(version.creation_timestamp),
            data_source=tags.get(TAG_DATA_SOURCE, "unknown"),
            synthetic=tags.get(TAG_SYNTHETIC) == "true",
            evaluated_on=tags.get(TAG_EVALUATED_ON),
            rmsle=metrics.get("rmsle"),
            trainer=tags.get(TAG_TRAINER),
            sha256=tags.get(TAG_MODEL_SHA256),
            tracking_uri=self._target.shown,
        )
        return info, aliases.get(number, ())

    def model_tag(self, model_name: str, key: str) -> str | None:
        with self._step("reading the registered model"):
            model = self._registered(model_name)
            return None if model is None else model.tags.get(key)

    def set_model_tag(self, model_name: str, key: str, value: str) -> None:
        with self._step("recording the promotion"):
            self._client.set_registered_model_tag(model_name, key, value)

    def load_version(self, model_name: str, version: str) -> LoadedModel:
        """The registered model, loaded and checked as the API would load it."""
        from calapi.serving.sources import MlflowSource

        with self._step(f"loading version {version}"):
            return MlflowSource(f"models:/{model_name}/{version}").load()

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

        from calapi.model.safeformat import TRUSTED_TYPES

        example = record.input_example
        signature = infer_signature(example, record.model.predict(example))
        # skops, with calops's own trusted types: a version loads without running code. A
        # script's model skops cannot hold safely is logged as a pickle, which the API loads
        # only with --allow-pickle (training said so).
        formats: dict[str, Any] = {
            "serialization_format": self._mlflow.sklearn.SERIALIZATION_FORMAT_SKOPS,
            "skops_trusted_types": list(TRUSTED_TYPES),
        }
        if not record.safe:
            formats = {
                "serialization_format": self._mlflow.sklearn.SERIALIZATION_FORMAT_CLOUDPICKLE
            }
        return self._mlflow.sklearn.log_model(
            record.model,
            name="model",
            registered_model_name=record.model_name,
            input_example=example,
            signature=signature,
            pip_requirements=list(record.pip_requirements) or None,
            **formats,
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
                f"MLflow at {self._target.shown} failed while {what}: {reason.rstrip('.')}."
            ) from None


@contextmanager
def mlflow_environment(target: TrackingTarget) -> Iterator[None]:
    """Variables MLflow reads while it builds a store or copies artifacts, set only meanwhile.

    MLflow reads them from ``os.environ`` (its store classes check MLFLOW_ALLOW_FILE_STORE when
    constructed), so they are set around each MLflow call and the previous values put back.
    """
    # A user's own setting of any of these wins.
    wanted = {PROGRESS_BAR: os.environ.get(PROGRESS_BAR, "false")}
    wanted |= {name: os.environ.get(name, value) for name, value in HTTP_DEFAULTS.items()}
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


def _aliases_of(model: Any) -> dict[str, tuple[str, ...]]:
    """Version number -> the aliases pointing at it."""
    found: dict[str, list[str]] = {}
    for alias, version in model.aliases.items():
        found.setdefault(str(version), []).append(alias)
    return {version: tuple(sorted(names)) for version, names in found.items()}


def _iso(milliseconds: int | None) -> str:
    if not milliseconds:
        return ""
    return datetime.fromtimestamp(milliseconds / 1000, UTC).isoformat(timespec="seconds")


def _quiet_loggers() -> None:
    """MLflow's INFO lines (table creation, migrations) are noise in a CLI's output."""
    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.ERROR)
