"""``calops train``: run the trainer (built-in or a user's script), then track it in MLflow.

The order matters: the tracking store is checked before any training (an unreachable server
fails in one sentence, not after minutes of fitting), and nothing is logged unless the model,
``metrics.json`` and the model card all exist and were written by this run.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from calapi.errors import CalopsError, ConfigError, ModelError
from calapi.model.config import TrainConfig, default_config_path, flatten, load_config
from calopsctl import paths, tracking
from calopsctl.tracking import AliasedVersion, LoggedRun, RunRecord, Tracker, TrackingTarget

Report = Callable[[str], None]
TrackerFactory = Callable[[TrackingTarget], Tracker]

STDERR_TAIL_LINES = 5
INPUT_EXAMPLE_ROWS = 5
HOLDOUT = "holdout"


class ScriptError(CalopsError):
    """A user's training script failed or did not write what config.yaml says."""


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
class Produced:
    """What a trainer left in the outputs folder, read back from disk."""

    model_path: Path
    metrics_path: Path
    card_path: Path
    metrics: dict[str, Any]
    card: dict[str, Any]

    @property
    def data_source(self) -> str:
        return str(self.card.get("data", {}).get("source", "unknown"))

    @property
    def synthetic(self) -> bool:
        return bool(self.card.get("data", {}).get("synthetic", self.data_source == "synthetic"))

    @property
    def evaluated_on(self) -> str:
        return str(self.metrics.get("evaluated_on", HOLDOUT))


@dataclass(frozen=True)
class AliasDecision:
    """Whether the alias moves to the new version, and the reason in words."""

    move: bool
    reason: str


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
    alias: str
    alias_moved: bool
    alias_reason: str
    metrics: dict[str, float]
    evaluated_on: str
    artifacts_dir: str
    run_artifacts: str
    data_source: str
    synthetic: bool
    trainer: str
    extra: dict[str, Any] = field(default_factory=dict)


def train_and_track(
    options: TrainOptions,
    *,
    home: Path,
    report: Report = lambda _message: None,
    tracker_factory: TrackerFactory | None = None,
) -> TrainSummary:
    """Train (built-in or ``options.script``), log the run to MLflow, move the alias if earned.

    ``home`` is the state folder: its stack's MLflow, else its SQLite store, when no
    ``options.tracking`` is given.
    """
    config_path = options.config_path or default_config_path()
    config = _effective_config(load_config(config_path), options)
    target = tracking.resolve_target(options.tracking, home=home)
    report(f"Tracking to {target.uri} ({target.origin}).")
    tracking.check_reachable(target)
    tracker = (tracker_factory or tracking.MlflowTracker)(target)
    current = tracker.aliased(config.model.name, config.model.alias)
    produced = _train(config, options, report)
    report("Logging the run and registering the model.")
    logged = tracker.log_run(_record(config, config_path, produced, options))
    decision = decide_alias(
        _comparable_rmsle(produced), current, force=options.promote, alias=config.model.alias
    )
    if decision.move:
        tracker.set_alias(config.model.name, config.model.alias, logged.model_version)
    return _summary(
        config, options, target=target, produced=produced, logged=logged, decision=decision
    )


def _effective_config(config: TrainConfig, options: TrainOptions) -> TrainConfig:
    """The config as it will actually run, so the logged params tell the truth."""
    if options.script is not None:
        if options.data is not None or not options.holdout:
            raise ConfigError(
                "--data and --no-holdout drive the built-in trainer; with --script, pass your "
                "script's own arguments after `--`."
            )
        return config
    update: dict[str, Any] = {}
    if options.data is not None:
        update["data"] = config.data.model_copy(update={"source": options.data})
    if not options.holdout:
        update["holdout"] = config.holdout.model_copy(update={"enabled": False})
    return config.model_copy(update=update)


# -- training -----------------------------------------------------------------------------------


def _train(config: TrainConfig, options: TrainOptions, report: Report) -> Produced:
    if options.script is None:
        return run_builtin(config, report)
    return run_script(options.script, options.script_args, config, report)


def run_builtin(config: TrainConfig, report: Report) -> Produced:
    """Fit with calapi's trainer and read back what it wrote."""
    from calapi.model.train import run

    result = run(config, progress=report)
    return _read_outputs(Path(result.model_path), Path(result.metrics_path), Path(result.card_path))


def run_script(script: Path, args: Sequence[str], config: TrainConfig, report: Report) -> Produced:
    """Run a user's ``train.py`` as it is; accept only outputs it wrote during this run."""
    if not script.is_file():
        raise ScriptError(f"Training script {script} does not exist; pass --script PATH.")
    outputs = config.outputs
    before = {path: _stamp(path) for path in (outputs.model_path, outputs.metrics_path)}
    card_before = _stamp(outputs.card_path)
    report(f"Running {script} with {Path(sys.executable).name}.")
    completed = subprocess.run(
        [sys.executable, str(script), *args], capture_output=True, text=True, check=False
    )
    if completed.returncode != 0:
        raise ScriptError(_script_failure(script, completed.returncode, completed.stderr))
    for path, stamp in before.items():
        if _stamp(path) in (None, stamp):
            raise ScriptError(
                f"{script} exited 0 but did not write {path} (config.yaml outputs); make it write "
                "the model and metrics.json where config.yaml says."
            )
    if _stamp(outputs.card_path) in (None, card_before):
        write_card(config, _read_metrics(outputs.metrics_path))
    return _read_outputs(outputs.model_path, outputs.metrics_path, outputs.card_path)


def _stamp(path: Path) -> int | None:
    """Modification time in ns, or None when the file is absent: enough to tell fresh files."""
    try:
        return path.stat().st_mtime_ns
    except FileNotFoundError:
        return None


def _script_failure(script: Path, code: int, stderr: str) -> str:
    tail = [line for line in stderr.strip().splitlines() if line.strip()][-STDERR_TAIL_LINES:]
    said = " | ".join(line.strip() for line in tail) or "no output on stderr"
    return f"{script} failed with exit code {code}; nothing was logged. Its stderr ended: {said}"


def _read_outputs(model_path: Path, metrics_path: Path, card_path: Path) -> Produced:
    try:
        card = json.loads(card_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelError(f"Model card {card_path} could not be read ({exc}).") from None
    return Produced(model_path, metrics_path, card_path, _read_metrics(metrics_path), card)


def _read_metrics(path: Path) -> dict[str, Any]:
    try:
        metrics = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelError(f"{path} is not a readable JSON file ({exc}).") from None
    if not isinstance(metrics, dict):
        raise ModelError(f"{path} must hold a JSON object of metric names to numbers.")
    return metrics


# -- the model card for scripts that write none ---------------------------------------------------


def write_card(config: TrainConfig, metrics: Mapping[str, Any]) -> Path:
    """Describe a script's model with what can be known without its training data."""
    from calapi.model.artifact import file_sha256
    from calapi.model.card import CardFacts, build_card, save_card

    model_path = config.outputs.model_path
    facts = CardFacts(
        name=config.model.name,
        model_file=model_path.name,
        sha256=file_sha256(model_path),
        created=datetime.fromtimestamp(model_path.stat().st_mtime, UTC),
        metrics=metrics,
        data={"source": config.data.source, "synthetic": config.data.source == "synthetic"},
        holdout={"enabled": metrics.get("evaluated_on", HOLDOUT) == HOLDOUT},
        written_by="calops train --script (the script wrote no model card)",
    )
    save_card(config.outputs.card_path, build_card(facts))
    return config.outputs.card_path


# -- what gets logged ----------------------------------------------------------------------------


def _record(
    config: TrainConfig, config_path: Path, produced: Produced, options: TrainOptions
) -> RunRecord:
    return RunRecord(
        experiment=options.experiment,
        run_name=None,
        model_name=config.model.name,
        params=flatten(config.model_dump(mode="json")),
        metrics=numeric_metrics(produced.metrics),
        tags=_tags(produced, options),
        artifacts=(produced.model_path, config_path, produced.metrics_path, produced.card_path),
        model=_load_model(produced.model_path),
        input_example=_input_example(config),
        pip_requirements=_pip_requirements(),
    )


def numeric_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """Every number in metrics.json under its own name (nested objects get dotted names)."""
    return {
        name: float(value)
        for name, value in flatten(dict(metrics)).items()
        if isinstance(value, int | float) and not isinstance(value, bool)
    }


def _tags(produced: Produced, options: TrainOptions) -> dict[str, str]:
    tags = {
        tracking.TAG_DATA_SOURCE: produced.data_source,
        tracking.TAG_SYNTHETIC: str(produced.synthetic).lower(),
        tracking.TAG_EVALUATED_ON: produced.evaluated_on,
        tracking.TAG_TRAINER: str(options.script) if options.script else "calapi.model.train",
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


def _input_example(config: TrainConfig) -> Any:
    """A few raw rows as the API receives them (Sex as strings), to record the signature."""
    from calapi.model.features import FEATURES
    from calapi.model.synthetic import generate

    rows = generate(INPUT_EXAMPLE_ROWS, seed=config.data.synthetic_seed)
    return rows[list(FEATURES)]


def _pip_requirements() -> list[str]:
    """Pinned so `mlflow models serve` recreates this environment instead of guessing it."""
    from calapi.model.card import library_versions

    required = ("calops", "scikit-learn", "numpy", "pandas", "mlflow")
    found = library_versions(required)
    return [f"{name}=={found[name]}" for name in required if found[name]]


# -- the alias -----------------------------------------------------------------------------------


def _comparable_rmsle(produced: Produced) -> float | None:
    """The new RMSLE when it was measured on a holdout, else None (not comparable)."""
    if produced.evaluated_on != HOLDOUT:
        return None
    value = produced.metrics.get("rmsle")
    return float(value) if isinstance(value, int | float) else None


def decide_alias(
    new_rmsle: float | None, current: AliasedVersion | None, *, force: bool, alias: str
) -> AliasDecision:
    """Move the alias only to a version at least as good on holdout, unless forced."""
    if force:
        return AliasDecision(True, "forced with --promote")
    if current is None:
        return AliasDecision(True, f"no version had alias {alias!r} yet")
    held = f"version {current.version}"
    if new_rmsle is None or math.isnan(new_rmsle):
        return AliasDecision(
            False,
            f"this run has no holdout RMSLE to compare with {held}; --promote forces it",
        )
    if current.rmsle is None or current.evaluated_on != HOLDOUT:
        return AliasDecision(True, f"{held} has no holdout RMSLE to compare with")
    if new_rmsle <= current.rmsle:
        return AliasDecision(
            True, f"holdout RMSLE {new_rmsle:.5f} is no worse than {current.rmsle:.5f} ({held})"
        )
    return AliasDecision(
        False,
        f"holdout RMSLE {new_rmsle:.5f} is worse than {current.rmsle:.5f} ({held}); "
        "--promote forces it",
    )


def _summary(
    config: TrainConfig,
    options: TrainOptions,
    *,
    target: TrackingTarget,
    produced: Produced,
    logged: LoggedRun,
    decision: AliasDecision,
) -> TrainSummary:
    return TrainSummary(
        run_id=logged.run_id,
        experiment=options.experiment,
        tracking_uri=target.uri,
        tracking_origin=target.origin,
        model_name=config.model.name,
        model_version=logged.model_version,
        model_uri=logged.model_uri,
        alias=config.model.alias,
        alias_moved=decision.move,
        alias_reason=decision.reason,
        metrics=numeric_metrics(produced.metrics),
        evaluated_on=produced.evaluated_on,
        artifacts_dir=str(produced.model_path.parent.resolve()),
        run_artifacts=logged.artifact_uri,
        data_source=produced.data_source,
        synthetic=produced.synthetic,
        trainer=str(options.script) if options.script else "calapi.model.train",
    )
