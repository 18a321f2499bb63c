"""Run a user's own training script honestly: show its output, log what it really used.

A hand-out ``train.py`` has its own config layout, its own data and its own estimator. So
calops reads the script's config as plain YAML (never with its own strict schema), streams
the script's output live to the terminal and to ``train.log``, accepts only outputs the
script wrote during this run, moves them into the run folder, and reports the parameters
and data source the script actually used, never calops's defaults.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, Final, cast

import yaml

from calapi.errors import CalopsError, ConfigError
from calapi.model.config import flatten, read_yaml

Echo = Callable[[str], None]

TAIL_LINES: Final = 5
LOG_FILE: Final = "train.log"
METRICS_FILE: Final = "metrics.json"
CARD_FILE: Final = "model_card.json"
DEFAULT_CONFIG: Final = "config.yaml"
UNKNOWN: Final = "unknown"
SYNTHETIC: Final = "synthetic"
HOLDOUT: Final = "holdout"
# How scripts are told where their config is; argparse lets the last occurrence win.
CONFIG_FLAGS: Final = ("--config", "-c")
# Where hand-out configs name their training data, most explicit first.
DATA_KEYS: Final = (
    "source", "path", "file", "csv", "train", "train_path", "train_file", "train_csv",
    "csv_path", "file_path", "filename", "url", "uri",
)  # fmt: skip
TOP_LEVEL_DATA_KEYS: Final = ("data_path", "data_file", "train_path", "train_file", "train_csv")
# Output locations: (config key, default file name) under outputs.dir (default artifacts).
OUTPUT_DIR: Final = ("dir", "artifacts")
OUTPUT_FILES: Final = {
    "model": "model.joblib",
    "metrics": METRICS_FILE,
    "card": CARD_FILE,
}
# A script may report what it used beside metrics.json; calops logs that as params too.
PARAMS_FILES: Final = ("params.json", "params.yaml", "params.yml")
ESTIMATOR_PREFIX: Final = "estimator."
# Where wrappers keep the fitted estimator that does the work (TransformedTargetRegressor,
# search CVs); not ``estimator_``, which in bagging and boosting is only the base template.
WRAPPED_ATTRIBUTES: Final = ("regressor_", "best_estimator_")


class ScriptError(CalopsError):
    """A user's training script failed or did not write what its config says."""


@dataclass(frozen=True)
class ScriptConfig:
    """What calops can honestly learn from the config file the script was given."""

    path: Path | None
    params: dict[str, Any]
    data_source: str
    synthetic: bool
    model_path: Path
    metrics_path: Path
    card_path: Path


@dataclass(frozen=True)
class ScriptRun:
    """What one script run produced, already moved into the run folder ``into``."""

    model_path: Path
    metrics_path: Path
    card_path: Path | None
    log_path: Path
    params: dict[str, Any]
    data_source: str
    synthetic: bool
    estimator: str
    metrics: dict[str, Any] = field(default_factory=dict)  # metrics.json, read once
    model: Any = field(default=None, repr=False)  # the fitted model, loaded once
    safe_path: Path | None = None  # model.skops, made from the script's pickle when it can be
    pickle_note: str | None = None  # why only the pickle serves, when there is no safe_path

    @property
    def served_path(self) -> Path:
        """The file the API loads: model.skops, else the script's own pickle."""
        return self.safe_path or self.model_path


# -- the script's config ------------------------------------------------------------------------


def script_config(args: Sequence[str], fallback: Path | None, *, cwd: Path) -> ScriptConfig:
    """Read the config the script will read, so the logged params are the ones it used.

    The script's own ``--config``/``-c`` argument wins (relative to ``cwd``, where the script
    runs); else calops's ``--config`` (``fallback``); else ``cwd/config.yaml`` when present.
    """
    path = find_config(args, fallback, cwd=cwd)
    raw = read_yaml(path) if path is not None else {}
    source = data_source(raw)
    model_path, metrics_path, card_path = _output_paths(raw)
    return ScriptConfig(
        path=path,
        params=flatten(raw),
        data_source=source,
        synthetic=source.strip().lower() == SYNTHETIC,
        model_path=model_path,
        metrics_path=metrics_path,
        card_path=card_path,
    )


def find_config(args: Sequence[str], fallback: Path | None, *, cwd: Path) -> Path | None:
    """The config file the script is given, or None when there is none to find."""
    named = config_argument(args)
    if named is not None:
        path = named if named.is_absolute() else cwd / named
        return _existing(path, "the script's --config")
    if fallback is not None:
        return _existing(fallback, "--config")
    local = cwd / DEFAULT_CONFIG
    return local if local.is_file() else None


def config_argument(args: Sequence[str]) -> Path | None:
    """The value of the last ``--config PATH``, ``--config=PATH`` or ``-c PATH`` in ``args``."""
    found: str | None = None
    for index, arg in enumerate(args):
        if arg == "--":  # what follows is positional, even if it looks like an option
            break
        if arg in CONFIG_FLAGS and index + 1 < len(args):
            found = args[index + 1]
        elif arg.startswith("--config="):
            found = arg.removeprefix("--config=")
    return Path(found) if found else None


def _existing(path: Path, named_by: str) -> Path:
    """``path`` when it is a file: a config named but missing would fail the script anyway."""
    if not path.is_file():
        raise ConfigError(f"Config file {path} (from {named_by}) does not exist.")
    return path


def data_source(raw: Mapping[str, Any]) -> str:
    """Where the config says the training data comes from, else "unknown" (never a guess)."""
    data = raw.get("data")
    if isinstance(data, str) and data:
        return data
    if isinstance(data, Mapping):
        found = _first_source(data)
        if found is not None:
            return found
    for key in TOP_LEVEL_DATA_KEYS:
        value = raw.get(key)
        if isinstance(value, str) and value:
            return value
    return UNKNOWN


def _first_source(data: Mapping[str, Any]) -> str | None:
    """The first data key holding a path, looking one level into e.g. ``train: {path: x}``."""
    for key in DATA_KEYS:
        value = data.get(key)
        if isinstance(value, str) and value:
            return value
        if isinstance(value, Mapping):
            inner = _first_source(value)
            if inner is not None:
                return inner
    return None


def _output_paths(raw: Mapping[str, Any]) -> tuple[Path, Path, Path]:
    """Model, metrics and card paths per ``outputs.*``, relative to the script's folder."""
    outputs = raw.get("outputs")
    section: Mapping[str, Any] = outputs if isinstance(outputs, Mapping) else {}
    key, default = OUTPUT_DIR
    folder = Path(_text(section.get(key), default))
    model, metrics, card = (
        folder / _text(section.get(name), file) for name, file in OUTPUT_FILES.items()
    )
    return model, metrics, card


def _text(value: Any, default: str) -> str:
    return value if isinstance(value, str) and value else default


# -- running it ---------------------------------------------------------------------------------


def run_script(
    script: Path,
    args: Sequence[str],
    config: ScriptConfig,
    *,
    into: Path,
    echo: Echo,
    python: str = sys.executable,
    cwd: Path | None = None,
) -> ScriptRun:
    """Run ``script`` as it is, echo its output live, and take only what this run wrote.

    Whatever the script wrote is moved into ``into`` even when the run then fails, so no
    fresh model is left in its outputs folder to be mistaken for a served one.
    """
    if not script.is_file():
        raise ScriptError(f"Training script {script} does not exist; pass --script PATH.")
    workdir = cwd if cwd is not None else Path.cwd()
    watched = _watched(config, workdir)
    before = {name: stamp(path) for name, path in watched.items()}
    into.mkdir(parents=True, exist_ok=True)
    log_path = into / LOG_FILE
    # Resolved: a relative --script names a file from here, but the script runs in ``workdir``.
    command = [python, str(script.resolve()), *args]
    code, tail = stream(command, cwd=workdir, log_path=log_path, echo=echo)
    fresh = {name: path for name, path in watched.items() if _is_fresh(path, before[name])}
    moved = _move_outputs(fresh, into)
    if code != 0:
        raise ScriptError(_failure(script, code, tail, log_path))
    _require(script, moved, watched, config)
    return _script_run(config, moved, log_path)


def _watched(config: ScriptConfig, workdir: Path) -> dict[str, Path]:
    """Every file the script may write, as absolute paths in its working folder."""
    metrics = workdir / config.metrics_path
    files = {
        "model": workdir / config.model_path,
        "metrics": metrics,
        "card": workdir / config.card_path,
    }
    files.update({name: metrics.with_name(name) for name in PARAMS_FILES})
    return files


def stamp(path: Path) -> tuple[int, int, int] | None:
    """(mtime ns, inode, size), or None when absent: enough to tell a freshly written file."""
    try:
        info = path.stat()
    except FileNotFoundError:
        return None
    return info.st_mtime_ns, info.st_ino, info.st_size


def _is_fresh(path: Path, before: tuple[int, int, int] | None) -> bool:
    now = stamp(path)
    return now is not None and now != before


def stream(
    command: Sequence[str], *, cwd: Path, log_path: Path, echo: Echo
) -> tuple[int, list[str]]:
    """Run ``command`` with its output merged, echoed and logged line by line as it arrives.

    Returns the exit code and the last non-empty lines, for a failure message. If echoing
    fails (or calops is interrupted), the script is stopped rather than left orphaned.
    """
    with log_path.open("w", encoding="utf-8") as log:
        process = _start(command, cwd=cwd)
        output = cast(IO[str], process.stdout)  # PIPE was asked for, so it is there
        try:
            with output:
                tail = _pump(output, log, echo)
        except BaseException:
            process.kill()
            process.wait()
            raise
        return process.wait(), tail


def _start(command: Sequence[str], *, cwd: Path) -> subprocess.Popen[str]:
    """Start the script unbuffered with stderr merged into stdout, so lines arrive in order."""
    try:
        return subprocess.Popen(
            command,
            cwd=cwd,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            encoding="utf-8",
            errors="replace",
            bufsize=1,
        )
    except OSError as exc:
        raise ScriptError(f"Could not start {command[1]} with {command[0]} ({exc}).") from None


def _pump(lines: Iterable[str], log: IO[str], echo: Echo) -> list[str]:
    """Copy every line to ``log`` and ``echo``; a last line without a newline counts too."""
    tail: deque[str] = deque(maxlen=TAIL_LINES)
    for raw in lines:
        line = raw.rstrip("\r\n")
        log.write(line + "\n")
        log.flush()  # the log is whole up to the last line even if calops is killed
        echo(line)
        if line.strip():
            tail.append(line.strip())
    return list(tail)


def _failure(script: Path, code: int, tail: Sequence[str], log_path: Path) -> str:
    said = " | ".join(tail) or "no output"
    return (
        f"{script} failed with exit code {code}{_signal_name(code)} and nothing was logged; "
        f"its output ended: {said} (full output in {log_path})."
    )


def _signal_name(code: int) -> str:
    """`` (killed by SIGKILL)`` for a negative exit code, so a kill is not read as a bug."""
    if code >= 0:
        return ""
    try:
        return f" (killed by {signal.Signals(-code).name})"
    except ValueError:
        return ""


# -- the outputs --------------------------------------------------------------------------------


def _move_outputs(fresh: Mapping[str, Path], into: Path) -> dict[str, Path]:
    """Move this run's files into the run folder; the model keeps its name, the rest are fixed.

    ``shutil.move`` renames when it can and copies across file systems when it must.
    """
    moved: dict[str, Path] = {}
    for name, path in fresh.items():
        target = into / _run_file_name(name, path)
        shutil.move(path, target)
        moved[name] = target
    return moved


def _run_file_name(name: str, path: Path) -> str:
    fixed = {"metrics": METRICS_FILE, "card": CARD_FILE}
    return fixed.get(name, path.name)


def _require(
    script: Path, moved: Mapping[str, Path], watched: Mapping[str, Path], config: ScriptConfig
) -> None:
    """The model and metrics.json must come from this run, not from an earlier one."""
    for name in ("model", "metrics"):
        if name not in moved:
            key = f"outputs.dir/outputs.{name}"
            where = (
                f"where {key} in {config.path} says"
                if config.path is not None
                else f"the default, as no config file was found to set {key}"
            )
            raise ScriptError(
                f"{script} exited 0 but did not write {watched[name]} during this run "
                f"({where}); nothing was logged."
            )


def _script_run(config: ScriptConfig, moved: Mapping[str, Path], log_path: Path) -> ScriptRun:
    metrics = read_metrics(moved["metrics"])
    estimator = _load(moved["model"])
    params = {**config.params, **_params_file(moved), **estimator_params(estimator)}
    safe_path, pickle_note = make_safe(estimator, moved["model"])
    return ScriptRun(
        model_path=moved["model"],
        metrics_path=moved["metrics"],
        card_path=moved.get("card"),
        log_path=log_path,
        params=params,
        data_source=config.data_source,
        synthetic=config.synthetic,
        estimator=type(final_estimator(estimator)).__name__,
        metrics=metrics,
        model=estimator,
        safe_path=safe_path,
        pickle_note=pickle_note,
    )


def read_metrics(path: Path) -> dict[str, Any]:
    """metrics.json as a dict; anything else cannot be logged as metrics."""
    try:
        metrics = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ScriptError(f"{path} written by the script is not readable JSON ({exc}).") from None
    if not isinstance(metrics, dict):
        raise ScriptError(f"{path} must hold a JSON object of metric names to numbers.")
    return metrics


def _params_file(moved: Mapping[str, Path]) -> dict[str, Any]:
    """The parameters the script says it used, when it wrote a params file this run."""
    params: dict[str, Any] = {}
    for name in PARAMS_FILES:
        if name in moved:
            params.update(_read_params(moved[name]))
    return params


def _read_params(path: Path) -> dict[str, Any]:
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))  # JSON is YAML too
    except (OSError, yaml.YAMLError):
        raise ScriptError(f"{path} written by the script is not readable JSON/YAML.") from None
    if not isinstance(raw, dict):
        raise ScriptError(f"{path} must hold a mapping of parameter names to values.")
    return flatten({str(key): value for key, value in raw.items()})


def _load(path: Path) -> Any:
    """The fitted model, checked to predict valid rows (as the API will need it to).

    The script has just written it in this run, and this is the user's own process, so its
    pickle is loaded here; the API never unpickles it unless told to.
    """
    from calapi.model.artifact import load_model

    return load_model(path, allow_pickle=True)


def make_safe(model: Any, pickled: Path) -> tuple[Path | None, str | None]:
    """Write the script's model as model.skops beside its pickle, when that is faithful.

    Returns the safe file and None, or None and the sentence saying why only the pickle
    can serve: a type calops does not trust, or a model skops cannot save or rebuild
    exactly.
    """
    from calapi.model.safeformat import ALLOW_PICKLE, SAFE_FILE, SAFE_SUFFIX

    if pickled.suffix == SAFE_SUFFIX:  # the script wrote the safe format itself
        return pickled, None
    safe = pickled.with_name(SAFE_FILE)
    try:
        _write_safe(model, safe)
    except CalopsError as exc:
        safe.unlink(missing_ok=True)
        reason = str(exc).split(";")[0].rstrip(".")
        return None, (
            f"{pickled.name} will be served only with {ALLOW_PICKLE}, because calops could not "
            f"turn it into {SAFE_FILE} ({reason}) and loading a pickle can run any code "
            "written into it."
        )
    return safe, None


def _write_safe(model: Any, safe: Path) -> None:
    """Save ``model`` as skops, read it back as the API would and check it predicts the same."""
    import numpy as np

    from calapi.errors import ModelError
    from calapi.model.artifact import checked_predictor, read_model
    from calapi.model.predictor import probe_rows
    from calapi.model.safeformat import dump_safe, unsafe_types

    data = dump_safe(model)
    untrusted = unsafe_types(data, safe.name)
    if untrusted:
        raise ModelError(f"it holds types calops does not trust: {', '.join(untrusted)}")
    safe.write_bytes(data)
    restored, _sha256 = read_model(safe)
    rows = probe_rows(None)
    before = checked_predictor(model, str(safe))(rows)
    after = checked_predictor(restored, str(safe))(rows)
    if not np.array_equal(before, after):
        raise ModelError("read back from skops, it predicts differently")


def final_estimator(model: Any) -> Any:
    """The estimator that does the fitting inside pipelines and target transformers."""
    for _ in range(10):  # wrappers nest a few levels at most; never loop forever
        inner = _unwrap(model)
        if inner is None:
            return model
        model = inner
    return model


def _unwrap(model: Any) -> Any | None:
    """The fitted estimator a wrapper delegates to, else None (ensembles are not wrappers)."""
    steps = getattr(model, "steps", None)
    candidates = [steps[-1][-1]] if isinstance(steps, list) and steps else []
    candidates += [getattr(model, name, None) for name in WRAPPED_ATTRIBUTES]
    return next((inner for inner in candidates if hasattr(inner, "predict")), None)


def estimator_params(model: Any) -> dict[str, Any]:
    """The final estimator's own scalar hyper-parameters, as ``estimator.<name>``."""
    get_params = getattr(final_estimator(model), "get_params", None)
    if not callable(get_params):
        return {}
    try:
        raw = get_params(deep=False)
    except Exception:  # a user's estimator can raise anything; its params are optional
        return {}
    return {
        f"{ESTIMATOR_PREFIX}{name}": _plain(value)
        for name, value in dict(raw).items()
        if _is_scalar(value)
    }


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, str | int | float | bool) or _is_numpy_scalar(value)


def _is_numpy_scalar(value: Any) -> bool:
    import numpy as np

    return isinstance(value, np.generic)


def _plain(value: Any) -> Any:
    return value.item() if _is_numpy_scalar(value) else value


# -- the model card for scripts that write none ---------------------------------------------------


def write_script_card(run: ScriptRun, *, model_name: str, metrics: Mapping[str, Any]) -> Path:
    """Describe the script's model with what is known: its data source, never calops's default.

    A card the script wrote itself is kept as it is, except that where it names a model file
    or a sha256, those are restated for the file that serves (it may be calops's model.skops).
    """
    from calapi.model.artifact import file_sha256
    from calapi.model.card import CardFacts, build_card, save_card

    served = run.served_path
    files = {path.name: file_sha256(path) for path in dict.fromkeys((served, run.model_path))}
    if run.card_path is not None:
        _restate_card(run.card_path, served.name, files)
        return run.card_path
    facts = CardFacts(
        name=model_name,
        model_file=served.name,
        sha256=files[served.name],
        model_files=files if len(files) > 1 else {},
        created=datetime.fromtimestamp(run.model_path.stat().st_mtime, UTC),
        metrics=metrics,
        data={"source": run.data_source, "synthetic": run.synthetic},
        holdout={"enabled": metrics.get("evaluated_on", HOLDOUT) == HOLDOUT},
        written_by="calops train --script (the script wrote no model card)",
    )
    path = served.parent / CARD_FILE
    save_card(path, build_card(facts))
    return path


def _restate_card(path: Path, served: str, files: Mapping[str, str]) -> None:
    """Point a script's own card at the served file, when it names a model file at all."""
    from calapi.model.card import save_card

    try:
        card = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return  # the API reports an unreadable card; nothing here to restate
    if not isinstance(card, dict) or not {"model_file", "sha256"} & card.keys():
        return
    card.update(model_file=served, sha256=files[served])
    if len(files) > 1:
        card["model_files"] = dict(files)
    save_card(path, card)
