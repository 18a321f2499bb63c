"""What the stack commands do: bring the stack up, probe it, describe it, take it down.

The runtime (Docker or local processes) does the starting and stopping; this module decides
what to start, refuses taken ports before anything starts, trains a first model when there is
none, waits for health (of every API replica too) and keeps the record in
``<home>/stack.json``.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from calapi.errors import CalopsError
from calapi.serving.server import port_free
from calopsctl import health
from calopsctl.health import ABSENT, DOWN, Check, ReplicaCheck
from calopsctl.paths import project_base
from calopsctl.runtime import runtime_named, select_runtime
from calopsctl.runtime.base import Replica, Runtime, StackSpec
from calopsctl.secrets import GRAFANA_ADMIN_USER, grafana_admin_password, stored_password
from calopsctl.services import API, GRAFANA, MLFLOW, NAMES, PROMETHEUS, RuntimeChoice, by_name
from calopsctl.state import StackState, clear_state, load_state, save_state, state_path

if TYPE_CHECKING:
    from calopsctl.settings import CliSettings

Say = Callable[[str], None]
EXITED = "exited"
MODELS_SCHEME = "models:/"
PROBE_TIMEOUT = 3.0


@dataclass(frozen=True)
class UpOptions:
    """What `calops up` was asked for."""

    ports: dict[str, int]
    runtime: RuntimeChoice = RuntimeChoice.AUTO
    build: bool = True
    wait: bool = True
    timeout: float = 180.0
    config: Path | None = None
    model: str | None = None  # CALOPS_MODEL for the API; default: models:/NAME@ALIAS
    replicas: int | None = None  # API processes; None: 1, or whatever already runs
    allow_pickle: bool = False  # the API also loads pickled models (they can run code)
    # The services whose port was asked for (option or variable), not left at its default:
    # a running stack refuses those that differ from its own.
    given_ports: frozenset[str] = frozenset()


@dataclass
class UpResult:
    state: StackState
    already_running: bool
    checks: list[Check] = field(default_factory=list)
    replicas: list[Replica] = field(default_factory=list)


# ---------------------------------------------------------------- up


def up(options: UpOptions, settings: CliSettings, say: Say) -> UpResult:
    """Start the stack, or report the one already running; wait for health when asked."""
    running = _running_stack(settings, say)
    if running is not None:
        state, runtime = running
        _refuse_other_replicas(state, options.replicas)
        _refuse_other_ports(state, {name: options.ports[name] for name in options.given_ports})
        replicas = f", {state.replicas} API replicas" if state.replicas > 1 else ""
        say(
            f"The stack is already running ({state.runtime} runtime{replicas}, "
            f"started {state.started})."
        )
        checks = probe(state, runtime)
        return UpResult(state, True, checks, _replicas(runtime, state))
    selection = select_runtime(options.runtime, settings)
    say(f"Runtime: {selection.runtime.name} ({selection.reason}).")
    return _start(options, settings, selection.runtime, say)


def _refuse_other_replicas(state: StackState, wanted: int | None) -> None:
    """A running stack keeps its number of API replicas; changing it means starting anew."""
    if wanted is None or wanted == state.replicas:
        return
    raise CalopsError(
        f"The stack already runs {state.replicas} API replica{'s' * (state.replicas > 1)} "
        f"({state.runtime} runtime); to run {wanted}, take it down with `calops down` and "
        f"run `calops up --replicas {wanted}`."
    )


def _refuse_other_ports(state: StackState, asked: dict[str, int]) -> None:
    """A running stack keeps its ports: a port asked for that differs is refused, not ignored."""
    moved = [
        f"{by_name(name).description} on {state.ports[name]}"
        for name in NAMES
        if name in asked and name in state.services and asked[name] != state.ports.get(name)
    ]
    if moved:
        raise CalopsError(
            f"The stack already runs with {' and '.join(moved)}; run `calops down` first to "
            "change ports."
        )


def _start(options: UpOptions, settings: CliSettings, runtime: Runtime, say: Say) -> UpResult:
    """Start MLflow first, make sure the registry has a champion, then start the rest.

    The API serves the registry alias, so it can only become healthy once a version holds it:
    on a fresh stack the default model is trained and registered between the two steps.
    """
    spec = _spec(options, settings)
    available = runtime.availability(spec)
    for name, reason in available.absent.items():
        say(f"{by_name(name).label} is left out: {reason}.")
    if spec.model.startswith(MODELS_SCHEME) and MLFLOW.name not in available.services:
        raise CalopsError(
            f"The API would serve {spec.model} but this stack has no MLflow server; pass "
            "--model with an artifacts folder."
        )
    check_ports(spec.ports, available.services)
    spec = _with_grafana_login(spec, available.services, settings)
    spec.artifacts.mkdir(parents=True, exist_ok=True)  # bind-mounted into the API container
    state = StackState(
        runtime=runtime.name,
        ports=dict(spec.ports),
        started=datetime.now(UTC).isoformat(timespec="seconds"),
        services=available.services,
        replicas=spec.replicas,
        extra={"absent": available.absent, "model": spec.model, "artifacts": str(spec.artifacts)},
    )
    first = [name for name in available.services if name == MLFLOW.name]
    rest = [name for name in available.services if name not in first]
    _start_step(runtime, spec, state, settings=settings, services=first, say=say)
    prepare_model(state, runtime, spec, config=options.config, settings=settings, say=say)
    _start_step(runtime, spec, state, settings=settings, services=rest, say=say)
    checks = wait_healthy(state, runtime, spec.timeout) if spec.wait else []
    return UpResult(state, False, checks, _replicas(runtime, state))


def _start_step(
    runtime: Runtime,
    spec: StackSpec,
    state: StackState,
    *,
    settings: CliSettings,
    services: list[str],
    say: Say,
) -> None:
    if not services:
        return
    say(f"Starting {', '.join(services)}...")
    runtime.up(spec, state, lambda record: save_state(settings.home, record), services)
    save_state(settings.home, state)


def prepare_model(
    state: StackState,
    runtime: Runtime,
    spec: StackSpec,
    *,
    config: Path | None,
    settings: CliSettings,
    say: Say,
) -> None:
    """Once MLflow answers, make sure something holds what the API is about to serve."""
    if MLFLOW.name in state.services:
        wait_healthy(state, runtime, spec.timeout, only=[MLFLOW.name])
    ensure_champion(spec.model, config, settings, say)


def _running_stack(settings: CliSettings, say: Say) -> tuple[StackState, Runtime] | None:
    """The recorded stack if anything of it still runs; a stale record is cleaned away."""
    state = load_state(settings.home)
    if state is None:
        return None
    runtime = runtime_named(state.runtime, settings)
    if any(_alive(runtime, state).values()):
        return state, runtime
    say("Found the record of a stack that no longer runs; clearing it.")
    try:
        runtime.down(state, volumes=False)
    except CalopsError as exc:
        say(f"Could not clean the old stack: {exc}")
    clear_state(settings.home)
    return None


def _with_grafana_login(spec: StackSpec, services: list[str], settings: CliSettings) -> StackSpec:
    """``spec`` with Grafana's admin password when Grafana runs: only then is one generated
    and stored (a stack without Grafana has no login to keep)."""
    if GRAFANA.name not in services:
        return spec
    return replace(spec, grafana_password=grafana_admin_password(settings))


def _spec(options: UpOptions, settings: CliSettings) -> StackSpec:
    from calopsctl.training import serving_names

    name, alias, artifacts = serving_names(options.config, project_base(settings.home_info))
    return StackSpec(
        ports=dict(options.ports),
        artifacts=artifacts,
        model=options.model or f"{MODELS_SCHEME}{name}@{alias}",
        build=options.build,
        wait=options.wait,
        timeout=options.timeout,
        replicas=options.replicas or 1,
        allow_pickle=options.allow_pickle,
    )


# ---------------------------------------------------------------- ports and model


def suggest_port(port: int, taken: set[int]) -> int:
    """A free port near ``port`` (the seed's tip moves 8000 to 8010)."""
    for candidate in range(port + 10, port + 110):
        if candidate not in taken and port_free(candidate):
            return candidate
    return port + 10


def check_ports(ports: dict[str, int], services: list[str]) -> None:
    """Raise before anything starts when two services share a port or a port is taken."""
    wanted = {by_name(name): ports[name] for name in services}
    if len(set(wanted.values())) < len(wanted):
        listing = ", ".join(f"{s.label} {p}" for s, p in wanted.items())
        raise CalopsError(f"Two services were given the same port ({listing}); pick distinct ones.")
    for taken, port in wanted.items():
        if not port_free(port):
            other = suggest_port(port, set(wanted.values()))
            raise CalopsError(
                f"Port {port} ({taken.label}) is already in use; pick another with "
                f"{taken.port_flag} {other} (or {taken.port_env}={other})."
            )


def ensure_champion(model: str, config: Path | None, settings: CliSettings, say: Say) -> None:
    """Train and register the configured model when nothing holds what the API will serve.

    Runs once MLflow is up, through ``calops train`` itself, so the first model is tracked,
    registered and promoted exactly like every later one.
    """
    from calopsctl.lifecycle import FolderPointer
    from calopsctl.training import TrainOptions, train_and_track

    if model.startswith(MODELS_SCHEME):
        name, _, alias = model.removeprefix(MODELS_SCHEME).partition("@")
        if not alias or _registered_alias(settings, name, alias):
            return
        what = f"no version of model {name!r} holds alias {alias!r} in the stack's MLflow"
    else:
        if FolderPointer(Path(model), "").champion() is not None:
            return
        what = f"{model} has no model to serve"
    say(f"First start: {what}; training and registering the configured model first.")
    summary = train_and_track(
        TrainOptions(config_path=config),
        home=settings.home,
        base=project_base(settings.home_info),
        report=say,
    )
    say(
        f"Registered {summary.model_name} version {summary.model_version} "
        f"({_rmsle(summary.metrics)}); {summary.promotion_reason}."
    )


def _registered_alias(settings: CliSettings, name: str, alias: str) -> bool:
    from calopsctl.tracking import MlflowTracker, resolve_target

    target = resolve_target(None, home=settings.home)
    return MlflowTracker(target).aliased(name, alias) is not None


def _rmsle(metrics: Any) -> str:
    value = metrics.get("rmsle") if isinstance(metrics, dict) else None
    return f"holdout RMSLE {value:.4f}" if isinstance(value, float) else "metrics in metrics.json"


# ---------------------------------------------------------------- health


def probe(state: StackState, runtime: Runtime, only: Collection[str] | None = None) -> list[Check]:
    """One pass over every check (or those of ``only``), each API replica's row after the
    API's; a service or replica whose process or container died is marked so."""
    alive = _alive(runtime, state)
    absent: dict[str, str] = state.extra.get("absent", {})
    checks: list[Check] = []
    with httpx.Client(timeout=PROBE_TIMEOUT) as client:
        for name in NAMES:
            if only is not None and name not in only:
                continue
            if name not in state.services:
                reason = absent.get(name, "not part of this stack")
                checks.append(Check(name, "-", ABSENT, reason, required=False))
                continue
            found = health.probe_service(client, name, state.url(name))
            if alive.get(name) is False:
                found = [_exited(check, check.service, runtime, state) for check in found]
            checks.extend(found)
            if name == API.name:
                checks.extend(_probe_replicas(client, state, runtime))
    return checks


def _probe_replicas(client: httpx.Client, state: StackState, runtime: Runtime) -> list[Check]:
    try:
        replicas = runtime.replicas(state)
    except CalopsError as exc:
        return [Check(API.name, "replicas", DOWN, f"cannot list the API replicas: {exc}")]
    prometheus = state.url(PROMETHEUS.name) if PROMETHEUS.name in state.services else None
    found = health.probe_replicas(client, replicas, prometheus)
    return [
        check if replica.running else _exited(check, replica.name, runtime, state)
        for replica, check in zip(replicas, found, strict=True)
    ]


def _exited(check: Check, name: str, runtime: Runtime, state: StackState) -> Check:
    """``check`` as down because the process or container ``name`` no longer runs."""
    where = runtime.log_hint(state, name)
    detail = f"{EXITED}: {name} is no longer running; its log: {where}"
    return replace(check, status=DOWN, detail=detail)


def _alive(runtime: Runtime, state: StackState) -> dict[str, bool]:
    try:
        return runtime.alive(state)
    except CalopsError:
        return {}


def wait_healthy(
    state: StackState, runtime: Runtime, timeout: float, only: Collection[str] | None = None
) -> list[Check]:
    """Probe until healthy; on timeout or a dead process name the service and show its log."""
    checks = health.retry(
        lambda: probe(state, runtime, only),
        timeout=timeout,
        give_up=lambda found: any(c.detail.startswith(EXITED) for c in found),
    )
    bad = health.failing(checks)
    if bad:
        first = bad[0]
        if isinstance(first, ReplicaCheck):
            label, name = f"API replica {first.name} ({first.address})", first.name
        else:
            label, name = by_name(first.service).label, first.service
        tail = runtime.log_tail(state, name) or "(the log is empty)"
        raise CalopsError(
            f"{label} did not become healthy ({first.check}: {first.detail}); "
            f"last lines of its log:\n{tail}\nRun `calops down` to remove what was started."
        )
    return checks


def stack_health(settings: CliSettings, wait: float) -> tuple[StackState, list[Check]]:
    """The recorded stack and its checks, retried up to ``wait`` seconds."""
    state = require_state(settings.home)
    runtime = runtime_named(state.runtime, settings)
    return state, health.retry(lambda: probe(state, runtime), timeout=wait)


# ---------------------------------------------------------------- down, info, logs


def require_state(home: Path) -> StackState:
    state = load_state(home)
    if state is None:
        raise CalopsError(f"Nothing is up (no stack recorded in {home}); run `calops up`.")
    return state


def down(settings: CliSettings, *, volumes: bool, say: Say) -> list[str]:
    """Remove the recorded stack; saying so (and exiting 0) when nothing is up."""
    state = load_state(settings.home)
    if state is None:
        say(f"Nothing to take down: no stack is recorded in {settings.home}.")
        return []
    stopped = runtime_named(state.runtime, settings).down(state, volumes=volumes)
    clear_state(settings.home)
    say(f"Stopped: {', '.join(stopped)}." if stopped else "No service was still running.")
    if volumes:
        say(
            "Removed the stack's data (MLflow runs, Prometheus and Grafana data, the prediction "
            "log)."
        )
    return stopped


def info(settings: CliSettings) -> dict[str, Any]:
    """The API's /info plus what the stack is and where to find its parts."""
    state = require_state(settings.home)
    runtime = runtime_named(state.runtime, settings)
    api = _api_info(state.url("api"))
    return {
        "runtime": state.runtime,
        "project": state.project,
        "started": state.started,
        "model": api.get("model") if "error" not in api else {"error": api["error"]},
        "services": _service_rows(state, settings),
        "replicas": [asdict(replica) for replica in _replicas(runtime, state)],
        "tracking_uri": state.url("mlflow"),
        "logs": runtime.where_logs(state),
        "state_file": str(state_path(settings.home)),
        "api": api,
    }


def _replicas(runtime: Runtime, state: StackState) -> list[Replica]:
    try:
        return runtime.replicas(state)
    except CalopsError:
        return []


def _api_info(url: str) -> dict[str, Any]:
    try:
        response = httpx.get(f"{url}/info", timeout=PROBE_TIMEOUT)
        response.raise_for_status()
        body = response.json()
    except (httpx.HTTPError, ValueError) as exc:
        return {"error": f"{url}/info did not answer: {exc}"}
    return body if isinstance(body, dict) else {"info": body}


def _service_rows(state: StackState, settings: CliSettings) -> list[dict[str, Any]]:
    absent: dict[str, str] = state.extra.get("absent", {})
    rows = []
    for name in NAMES:
        running = name in state.services
        rows.append(
            {
                "service": name,
                "url": state.url(name) if running else None,
                "port": state.ports.get(name) if running else None,
                "credentials": _credentials(name, settings) if running else None,
                "absent": None if running else absent.get(name, "not part of this stack"),
            }
        )
    return rows


def _credentials(name: str, settings: CliSettings) -> str | None:
    if name != "grafana":
        return None
    return f"{GRAFANA_ADMIN_USER} / {stored_password(settings) or '(not generated yet)'}"


def summary_rows(result: UpResult, settings: CliSettings) -> list[dict[str, Any]]:
    """Service, URL, status and credentials for the table `calops up` ends with."""
    status = {
        c.service: c.status
        for c in result.checks
        if c.status == DOWN and not isinstance(c, ReplicaCheck)
    }
    rows = _service_rows(result.state, settings)
    for row in rows:
        if row["absent"]:
            row["status"] = f"absent: {row['absent']}"
        elif result.checks:
            row["status"] = status.get(row["service"], "healthy")
        else:
            row["status"] = "started"
    return rows


def replica_rows(result: UpResult) -> list[dict[str, Any]]:
    """Each API replica after `calops up`: name, address, URL and its health status (or
    started / exited when up did not wait for health)."""
    status = {c.name: c.status for c in result.checks if isinstance(c, ReplicaCheck)}
    return [
        {
            "name": replica.name,
            "address": replica.address,
            "url": replica.url,
            "status": status.get(replica.name, "started" if replica.running else EXITED),
        }
        for replica in result.replicas
    ]


def logs(settings: CliSettings, name: str | None, *, follow: bool, tail: int) -> None:
    state = require_state(settings.home)
    if name is not None and name not in state.services:
        raise CalopsError(
            f"No service named {name!r} in this stack; choose one of {', '.join(state.services)}."
        )
    services = [name] if name else list(state.services)
    runtime_named(state.runtime, settings).stream_logs(state, services, follow=follow, tail=tail)
