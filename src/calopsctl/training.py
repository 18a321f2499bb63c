"""``calops train``: train into a run folder, log it to MLflow, and let the gate decide.

The order matters:

1. every input is checked (config, data file, script) before any tracking store is created;
2. the tracking store is checked before any training (an unreachable or broken server fails
   in one sentence, not after minutes of fitting);
3. the trainer (built-in, or the user's script) writes into ``runs/.staging-*``, never over
   what serves; the folder gets its final name, ``runs/<run-id>``, only once the run is logged,
   and is removed when anything fails;
4. only then may anything that serves change: a model served straight from the outputs
   folder gets its own run folder (a script, which writes there itself, has it moved aside
   before it runs and put back if the run is not logged), and the serving pointer moves only
   through the gate (the champion re-scored on the new run's holdout) or ``--promote``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from calapi.errors import ConfigError
from calapi.model.config import (
    TrainConfig,
    flatten,
    load_config,
    packaged_config_path,
    read_yaml,
)
from calapi.model.runrecord import RunInfo
from calopsctl import lifecycle, paths, tracking
from calopsctl.lifecycle import FolderPointer, ServingPointer, Verdict
from calopsctl.runs import LEGACY_FILES, PROMOTIONS, RunFolders
from calopsctl.scripts import ScriptConfig, ScriptError
from calopsctl.tracking import LoggedRun, RunRecord, Tracker, TrackingTarget

if TYPE_CHECKING:
    import pandas as pd

    from calapi.model.config import OutputsConfig
    from calapi.model.data import LoadedData

Report = Callable[[str], None]
TrackerFactory = Callable[[TrackingTarget], Tracker]

INPUT_EXAMPLE_ROWS = 5
HOLDOUT = "holdout"
BUILTIN = "calapi.model.train"
LOG_FILE = "train.log"
PROJECT_CONFIG = "config.yaml"

__all__ = ["ScriptError", "TrainOptions", "TrainSummary", "train_and_track"]


@dataclass(frozen=True)
class TrainOptions:
    """What the user asked ``calops train`` for."""

    config_path: Path | None = None
    data: str | None = None
    holdout: bool = True
    tracking: str | None = None
    script: Path | None = None
    script_args: tuple[str, ...] = ()
    promote: bool = False
    experiment: str = "calops"


@dataclass(frozen=True)
class Plan:
    """The run as it will actually happen, checked before anything is created."""

    config_path: Path | None  # the file logged as config.yaml (None: a script with no config)
    model_name: str
    alias: str
    outputs: Path  # absolute outputs folder: runs/ and the local pointer live here
    params: dict[str, Any]  # the config as written, with the command line's overrides
    config: TrainConfig | None = None  # the built-in trainer's config, paths made absolute
    script: ScriptConfig | None = None


@dataclass(frozen=True)
class Produced:
    """What a trainer left in the run folder, read back from disk."""

    model_path: Path
    metrics_path: Path
    card_path: Path
    log_path: Path
    metrics: dict[str, Any]
    params: dict[str, Any]
    data_source: str
    synthetic: bool
    trainer: str
    evaluation: pd.DataFrame | None = field(default=None, repr=False)
    model: Any = field(default=None, repr=False)  # already loaded (a script's), else None
    pickle_path: Path | None = None  # the same model as joblib, beside the safe model_path
    safe: bool = True  # model_path is model.skops; False: only a pickle (a script's) exists

    @property
    def evaluated_on(self) -> str:
        return str(self.metrics.get("evaluated_on", HOLDOUT))


@dataclass(frozen=True)
class TrainSummary:
    """What ``calops train`` did, for the closing table or ``--json``."""

    run_id: str
    experiment: str
    tracking_uri: str
    tracking_origin: str
    model_name: str
    model_version: str
    model_uri: str
    serving_pointer: str
    promoted: bool
    promotion_reason: str
    champion: str | None
    metrics: dict[str, float]
    evaluated_on: str
    run_folder: str
    run_artifacts: str
    data_source: str
    synthetic: bool
    trainer: str
    log: str
    compared: dict[str, Any] = field(default_factory=dict)


def train_and_track(
    options: TrainOptions,
    *,
    home: Path,
    base: Path | None = None,
    report: Report = lambda _message: None,
    echo: Report | None = None,
    tracker_factory: TrackerFactory | None = None,
) -> TrainSummary:
    """Train into a new run folder, log and register it, and move the pointer if it earns it.

    ``home`` is the state folder (its stack's MLflow, else its SQLite store, when no
    ``options.tracking`` is given); ``base`` the folder relative config paths are read from
    (the project folder; default the working folder); ``echo`` shows a script's output lines.
    """
    plan = make_plan(options, base or Path.cwd())
    target = tracking.resolve_target(options.tracking, home=home)
    report(f"Tracking to {target.shown} ({target.origin}).")
    tracking.check_reachable(target)
    tracker = (tracker_factory or tracking.MlflowTracker)(target)
    pointer = choose_pointer(target, tracker, plan)
    report(f"What serves: {pointer.where}.")
    folders = RunFolders(plan.outputs)
    staging = folders.staging()
    # A script writes into the outputs folder itself: a model served from there moves aside
    # first, and back if the run is not logged. Otherwise nothing that serves is touched
    # until the run is logged.
    undo = _adopt_legacy(pointer, report) if plan.script is not None else None
    try:
        champion = pointer.champion()
        produced = _train(plan, options, staging, report, echo or report)
        report(f"Logging the run to {target.shown} and registering the model.")
        logged = tracker.log_run(run_record(plan, produced, options))
        folder = folders.finish(staging, run_info(plan, produced, logged, target, options))
    except BaseException:
        folders.discard(staging, keep=(LOG_FILE,))
        if undo is not None:
            undo()
        raise
    if undo is None and _adopt_legacy(pointer, report) is not None:
        champion = pointer.champion()
    verdict = _judge(
        pointer, champion, plan=plan, produced=produced, folder=folder, logged=logged,
        force=options.promote,
    )  # fmt: skip
    if verdict.move:
        lifecycle.move_to(
            pointer, lifecycle.find_run(pointer, logged.run_id), verdict.how, verdict.reason
        )
    return _summary(
        plan, options, target=target, produced=produced, logged=logged, folder=folder,
        pointer=pointer, champion=champion, verdict=verdict,
    )  # fmt: skip


# -- the plan: everything checked before a store exists -------------------------------------------


def make_plan(options: TrainOptions, base: Path) -> Plan:
    """Read and check the config, data and script; relative paths in a config are from ``base``."""
    if options.script is not None:
        return _script_plan(options, base)
    config_path = options.config_path or project_config(base) or packaged_config_path()
    written = load_config(config_path)
    from calapi.model.pipeline import check_model_config  # scikit-learn: only when training

    check_model_config(written.model)
    source = options.data if options.data is not None else written.data.source
    # What the run uses, as the user wrote it (logged as params) and with absolute paths.
    stated = written.model_copy(
        update={
            "data": written.data.model_copy(update={"source": source}),
            "holdout": written.holdout.model_copy(
                update={"enabled": written.holdout.enabled and options.holdout}
            ),
        }
    )
    outputs = _absolute(written.outputs.dir, base)
    config = stated.model_copy(
        update={
            "data": stated.data.model_copy(
                update={"source": _data_path(source, base, options.data)}
            ),
            "outputs": stated.outputs.model_copy(update={"dir": outputs}),
        }
    )
    params = flatten(stated.model_dump(mode="json"))
    return Plan(config_path, config.model.name, config.model.alias, outputs, params, config=config)


def _script_plan(options: TrainOptions, base: Path) -> Plan:
    from calopsctl.scripts import script_config

    if options.data is not None or not options.holdout:
        raise ConfigError(
            "--data and --no-holdout drive the built-in trainer; with --script, pass your "
            "script's own arguments after `--`."
        )
    if not options.script or not options.script.is_file():
        raise ScriptError(f"Training script {options.script} does not exist; pass --script PATH.")
    found = script_config(options.script_args, options.config_path, cwd=Path.cwd())
    name, alias = _names(found.params)
    outputs = found.model_path.parent.resolve()
    return Plan(found.path, name, alias, outputs, found.params, script=found)


def project_config(base: Path) -> Path | None:
    """The project's ``config.yaml`` (in ``base``), else None for the packaged default."""
    local = base / PROJECT_CONFIG
    return local if local.is_file() else None


def _data_path(source: str, base: Path, given: str | None) -> str:
    """``synthetic``, or an existing file: from the command line, relative to the working
    folder; from the config, relative to the project folder."""
    if source == "synthetic":
        return source
    path = Path(source).expanduser()
    path = path.resolve() if given is not None else _absolute(path, base)
    if not path.is_file():
        raise ConfigError(
            f"Training data {path} does not exist; fix data.source in the config or pass --data."
        )
    return str(path)


def _absolute(path: Path, base: Path) -> Path:
    return path if path.is_absolute() else (base / path).resolve()


def _names(params: Mapping[str, Any]) -> tuple[str, str]:
    """The registered name and alias a script's config asks for, else calops's defaults."""
    defaults = TrainConfig().model
    name, alias = params.get("model.name"), params.get("model.alias")
    return (
        name if isinstance(name, str) and name else defaults.name,
        alias if isinstance(alias, str) and alias else defaults.alias,
    )


def serving_names(config_path: Path | None, base: Path) -> tuple[str, str, Path]:
    """Model name, alias and absolute outputs folder from a config, read leniently.

    ``calops promote`` and ``calops models`` need only these three, and must work with a
    hand-out config that calops's own trainer would not accept.
    """
    path = config_path or project_config(base)
    flat = flatten(read_yaml(path)) if path is not None else {}
    name, alias = _names(flat)
    outputs = flat.get("outputs.dir")
    folder = Path(outputs) if isinstance(outputs, str) and outputs else TrainConfig().outputs.dir
    return name, alias, _absolute(folder, base)


# -- which pointer decides ----------------------------------------------------------------------


def _adopt_legacy(pointer: ServingPointer, report: Report) -> Callable[[], None] | None:
    """Move a model served straight from the outputs folder into its own run folder, served
    from there (same bytes); return what puts every file back as it was, else None."""
    if not isinstance(pointer, FolderPointer):
        return None
    folders = pointer.folders
    history = folders.root / PROMOTIONS
    history_size = history.stat().st_size if history.is_file() else None
    adopted = pointer.adopt_legacy()
    if adopted is None:
        return None
    report(f"Moved the model served from {folders.root} into {adopted} (now {pointer.where}).")

    def put_back() -> None:
        # Linked back before the pointer goes, so a watching API always finds the same model.
        for name in LEGACY_FILES:
            if (adopted / name).is_file():
                _link_or_copy(adopted / name, folders.root / name)
        folders.pointer.unlink(missing_ok=True)
        shutil.rmtree(adopted, ignore_errors=True)
        if history_size is None:
            history.unlink(missing_ok=True)
        else:
            os.truncate(history, history_size)
        report(f"Put the model served back into {folders.root}, as it was.")

    return put_back


def _link_or_copy(source: Path, destination: Path) -> None:
    try:
        os.link(source, destination)
    except OSError:
        shutil.copy2(source, destination)


def choose_pointer(target: TrackingTarget, tracker: Tracker, plan: Plan) -> ServingPointer:
    """The serving pointer this run answers to.

    A stack serving a folder: that folder's ``current``. No tracking server and nobody chose a
    store: the outputs folder's ``current`` (what ``calops serve`` serves). Otherwise the
    registry alias, which the stack's API follows.
    """
    return pointer_for(target, tracker, plan.model_name, plan.alias, plan.outputs)


def pointer_for(
    target: TrackingTarget, tracker: Tracker | None, model_name: str, alias: str, outputs: Path
) -> ServingPointer:
    if target.serves is not None and not target.serves.startswith("models:/"):
        return FolderPointer(Path(target.serves), model_name)
    if target.local_default or tracker is None:
        return FolderPointer(outputs, model_name)
    return lifecycle.AliasPointer(tracker, model_name, alias, target.uri)


# -- training -------------------------------------------------------------------------------------


def _train(plan: Plan, options: TrainOptions, into: Path, report: Report, echo: Report) -> Produced:
    if plan.script is not None and options.script is not None:
        return run_script(
            options.script, options.script_args, plan.script, into=into, echo=echo, report=report
        )
    assert plan.config is not None  # noqa: S101 - a plan without a script has a config
    return run_builtin(plan.config, plan.params, into, report)


def run_builtin(
    config: TrainConfig,
    params: dict[str, Any],
    into: Path,
    report: Report,
    data: LoadedData | None = None,
) -> Produced:
    """Fit with calapi's trainer into ``into``, keeping its progress lines in train.log;
    ``data``: rows already loaded, instead of the config's data source."""
    from calapi.model.train import run

    log_path = into / LOG_FILE
    with log_path.open("w", encoding="utf-8") as log:

        def progress(message: str) -> None:
            log.write(f"{message}\n")
            log.flush()
            report(message)

        result = run(_into(config, into), data=data, progress=progress)
    return Produced(
        model_path=Path(result.model_path),
        metrics_path=Path(result.metrics_path),
        card_path=Path(result.card_path),
        log_path=log_path,
        metrics=result.metrics,
        params=params,
        data_source=str(result.card["data"]["source"]),
        synthetic=bool(result.card["data"]["synthetic"]),
        trainer=BUILTIN,
        evaluation=result.evaluation,
        pickle_path=result.pickle_path,
    )


def _into(config: TrainConfig, folder: Path) -> TrainConfig:
    outputs: OutputsConfig = config.outputs.model_copy(update={"dir": folder})
    return config.model_copy(update={"outputs": outputs})


def run_script(
    script: Path,
    args: tuple[str, ...],
    config: ScriptConfig,
    *,
    into: Path,
    echo: Report,
    report: Report,
) -> Produced:
    """Run a user's ``train.py`` as it is, showing its output; log what it really did."""
    from calopsctl.scripts import run_script as run
    from calopsctl.scripts import write_script_card

    report(f"Running {script} with {Path(sys.executable).name}; its output follows.")
    ran = run(script, args, config, into=into, echo=echo)
    metrics = ran.metrics
    if ran.pickle_note is not None:
        report(ran.pickle_note)
    card_path = write_script_card(ran, model_name=_names(config.params)[0], metrics=metrics)
    return Produced(
        model_path=ran.served_path,
        metrics_path=ran.metrics_path,
        card_path=card_path,
        log_path=ran.log_path,
        metrics=metrics,
        params=ran.params,
        data_source=ran.data_source,
        synthetic=ran.synthetic,
        trainer=str(script),
        model=ran.model,
        pickle_path=ran.model_path if ran.safe_path is not None else None,
        safe=ran.safe_path is not None,
    )


# -- what gets logged -----------------------------------------------------------------------------


def run_record(
    plan: Plan,
    produced: Produced,
    options: TrainOptions,
    *,
    tags: Mapping[str, str] | None = None,
    artifacts_too: tuple[Path, ...] = (),
) -> RunRecord:
    """What the run logs: the produced files and metrics, with more ``tags`` and files."""
    artifacts = [produced.model_path, produced.metrics_path, produced.card_path]
    if produced.pickle_path is not None:
        artifacts.insert(1, produced.pickle_path)
    if plan.config_path is not None:
        artifacts.insert(1, plan.config_path)
    artifacts += [produced.log_path, *artifacts_too]
    return RunRecord(
        experiment=options.experiment,
        run_name=None,
        model_name=plan.model_name,
        params=produced.params,
        metrics=numeric_metrics(produced.metrics),
        tags={**_tags(produced), **(tags or {})},
        artifacts=tuple(artifacts),
        model=produced.model if produced.model is not None else _load_model(produced.model_path),
        input_example=_input_example(plan),
        pip_requirements=_pip_requirements(),
        safe=produced.safe,
    )


def numeric_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """Every number in metrics.json under its own name (nested objects get dotted names)."""
    return {
        name: float(value)
        for name, value in flatten(dict(metrics)).items()
        if isinstance(value, int | float) and not isinstance(value, bool)
    }


def _tags(produced: Produced) -> dict[str, str]:
    from calapi.model.artifact import file_sha256

    tags = {
        tracking.TAG_DATA_SOURCE: produced.data_source,
        tracking.TAG_SYNTHETIC: str(produced.synthetic).lower(),
        tracking.TAG_EVALUATED_ON: produced.evaluated_on,
        tracking.TAG_TRAINER: produced.trainer,
        tracking.TAG_MODEL_SHA256: file_sha256(produced.model_path),
    }
    commit = git_commit()
    if commit:
        tags[tracking.TAG_GIT_COMMIT] = commit
    return tags


def git_commit() -> str | None:
    """The commit of the working folder's repository, else of the calops checkout, if any."""
    for folder in (Path.cwd(), paths.source_root()):
        if folder is None:
            continue
        try:
            completed = subprocess.run(
                ["git", "rev-parse", "HEAD"],
                cwd=folder,
                capture_output=True,
                text=True,
                timeout=10,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired):
            return None
        if completed.returncode == 0:
            return completed.stdout.strip()
    return None


def _load_model(path: Path) -> Any:
    from calapi.model.artifact import load_model

    return load_model(path)


def _input_example(plan: Plan) -> Any:
    """A few raw rows as the API receives them (Sex as strings), to record the signature."""
    from calapi.model.features import FEATURES
    from calapi.model.synthetic import generate

    seed = plan.config.data.synthetic_seed if plan.config else 0
    rows = generate(INPUT_EXAMPLE_ROWS, seed=seed)
    return rows[list(FEATURES)]


def _pip_requirements() -> list[str]:
    """Pinned so `mlflow models serve` recreates this environment instead of guessing it."""
    from calapi.model.card import library_versions

    required = ("calops", "scikit-learn", "numpy", "pandas", "mlflow", "skops")
    found = library_versions(required)
    return [f"{name}=={found[name]}" for name in required if found[name]]


def run_info(
    plan: Plan, produced: Produced, logged: LoggedRun, target: TrackingTarget, options: TrainOptions
) -> RunInfo:
    from datetime import UTC, datetime

    from calapi.model.artifact import file_sha256

    rmsle = produced.metrics.get("rmsle")
    return RunInfo(
        run_id=logged.run_id,
        model_name=plan.model_name,
        version=logged.model_version,
        created=datetime.now(UTC).isoformat(timespec="seconds"),
        data_source=produced.data_source,
        synthetic=produced.synthetic,
        evaluated_on=produced.evaluated_on,
        rmsle=float(rmsle) if isinstance(rmsle, int | float) else None,
        trainer=produced.trainer,
        sha256=file_sha256(produced.model_path),
        model_file=produced.model_path.name,
        tracking_uri=target.shown,
        experiment=options.experiment,
    )


# -- the gate -------------------------------------------------------------------------------------


def _judge(
    pointer: ServingPointer,
    champion: lifecycle.Candidate | None,
    *,
    plan: Plan,
    produced: Produced,
    folder: Path,
    logged: LoggedRun,
    force: bool,
) -> Verdict:
    from calapi.serving.sources import LocalSource

    if produced.evaluated_on != HOLDOUT:
        why = "this run has no holdout (--no-holdout): nothing to score both models on"
    elif plan.script is not None:
        why = (
            "a --script run's holdout is its own, so calops cannot score the champion on the "
            "same rows; compare them with `calops models`"
        )
    else:
        why = "this run has no holdout rows to score both models on"
    return lifecycle.gate(
        pointer,
        champion,
        key=logged.model_version,
        challenger=lambda: LocalSource(folder / produced.model_path.name).load(),
        evaluation=produced.evaluation if plan.script is None else None,
        no_evaluation=why,
        force=force,
    )


def _summary(
    plan: Plan,
    options: TrainOptions,
    *,
    target: TrackingTarget,
    produced: Produced,
    logged: LoggedRun,
    folder: Path,
    pointer: ServingPointer,
    champion: lifecycle.Candidate | None,
    verdict: Verdict,
) -> TrainSummary:
    compared: dict[str, Any] = {}
    if verdict.rows:
        compared = {
            "rows": verdict.rows,
            "rmsle": verdict.challenger_rmsle,
            "champion_rmsle": verdict.champion_rmsle,
        }
    return TrainSummary(
        run_id=logged.run_id,
        experiment=options.experiment,
        tracking_uri=target.shown,
        tracking_origin=target.origin,
        model_name=plan.model_name,
        model_version=logged.model_version,
        model_uri=logged.model_uri,
        serving_pointer=pointer.where,
        promoted=verdict.move,
        promotion_reason=verdict.reason,
        champion=champion.key if champion else None,
        metrics=numeric_metrics(produced.metrics),
        evaluated_on=produced.evaluated_on,
        run_folder=str(folder),
        run_artifacts=logged.artifact_uri,
        data_source=produced.data_source,
        synthetic=produced.synthetic,
        trainer=produced.trainer,
        log=str(folder / produced.log_path.name),
        compared=compared,
    )
