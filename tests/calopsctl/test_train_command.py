"""The orchestration of `calops train` with a fake tracker: alias rule, scripts, errors."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from calapi.errors import CalopsError, ConfigError, DataError
from calapi.model.config import TrainConfig, flatten
from calopsctl.cli import app
from calopsctl.tracking import AliasedVersion, LoggedRun, RunRecord, TrackingTarget
from calopsctl.training import (
    ScriptError,
    TrainOptions,
    decide_alias,
    numeric_metrics,
    train_and_track,
)
from conftest import small_config
from support import free_port

ALIAS = "champion"


class FakeTracker:
    """Records what would be logged; the alias points wherever ``current`` says."""

    def __init__(self, current: AliasedVersion | None = None) -> None:
        self.current = current
        self.target: TrackingTarget | None = None
        self.records: list[RunRecord] = []
        self.aliases: dict[str, str] = {}

    def __call__(self, target: TrackingTarget) -> FakeTracker:
        self.target = target
        return self

    def aliased(self, model_name: str, alias: str) -> AliasedVersion | None:
        return self.current

    def log_run(self, record: RunRecord) -> LoggedRun:
        self.records.append(record)
        version = str(len(self.records) + 1)
        return LoggedRun("run-abc", "1", version, "fake:/artifacts", f"models:/x/{version}")

    def set_alias(self, model_name: str, alias: str, version: str) -> None:
        self.aliases[alias] = version


def write_config(folder: Path, config: TrainConfig) -> Path:
    """Write ``config`` as config.yaml in ``folder``."""
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config.model_dump(mode="json")), encoding="utf-8")
    return path


def tiny(folder: Path) -> TrainConfig:
    return small_config(folder / "artifacts", rows=400, max_iter=5)


# -- the alias rule ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("new", "current", "force", "moves", "why"),
    [
        (0.10, None, False, True, "no version had alias"),
        (0.10, AliasedVersion("3", 0.10, "holdout"), False, True, "no worse than"),
        (0.09, AliasedVersion("3", 0.10, "holdout"), False, True, "no worse than"),
        (0.11, AliasedVersion("3", 0.10, "holdout"), False, False, "is worse than"),
        (0.11, AliasedVersion("3", 0.10, "holdout"), True, True, "forced with --promote"),
        (None, AliasedVersion("3", 0.10, "holdout"), False, False, "no holdout RMSLE"),
        (None, AliasedVersion("3", 0.10, "holdout"), True, True, "forced"),
        (None, None, False, True, "no version had alias"),
        (float("nan"), AliasedVersion("3", 0.10, "holdout"), False, False, "no holdout RMSLE"),
        (0.5, AliasedVersion("3", 0.01, "train"), False, True, "version 3 has no holdout"),
        (0.5, AliasedVersion("3", None, None), False, True, "version 3 has no holdout"),
    ],
)
def test_alias_decision_table(
    new: float | None, current: AliasedVersion | None, force: bool, moves: bool, why: str
) -> None:
    """The alias moves only to a version no worse on holdout, to the first one, or if forced."""
    decision = decide_alias(new, current, force=force, alias=ALIAS)
    assert decision.move is moves
    assert why in decision.reason


def test_numeric_metrics_keep_every_number_under_its_name() -> None:
    """Numbers (ints too, nested ones dotted) become metrics; strings and booleans do not."""
    metrics = {"rmsle": 0.1, "n_train": 80, "evaluated_on": "holdout", "ok": True, "x": {"y": 2}}
    assert numeric_metrics(metrics) == {"rmsle": 0.1, "n_train": 80.0, "x.y": 2.0}


# -- the built-in trainer -------------------------------------------------------------------------


def test_builtin_run_logs_flattened_config_metrics_and_artifacts(isolated_home: Path) -> None:
    """Params are flatten(config), metrics are metrics.json's numbers, four files are logged."""
    config = tiny(isolated_home)
    path = write_config(isolated_home, config)
    fake = FakeTracker()
    summary = train_and_track(
        TrainOptions(config_path=path, tracking="file:./mlruns"),
        home=isolated_home / ".calops",
        tracker_factory=fake,
    )
    (record,) = fake.records
    assert dict(record.params) == flatten(config.model_dump(mode="json"))
    metrics = json.loads((isolated_home / "artifacts" / "metrics.json").read_text())
    assert dict(record.metrics) == numeric_metrics(metrics)
    assert [p.name for p in record.artifacts] == [
        "model.joblib",
        "config.yaml",
        "metrics.json",
        "model_card.json",
    ]
    assert record.tags["calops.data.synthetic"] == "true"
    assert record.input_example.columns[0] == "Sex"
    assert fake.aliases == {ALIAS: summary.model_version}
    assert summary.alias_moved
    assert summary.evaluated_on == "holdout"


def test_no_holdout_run_does_not_displace_the_alias(isolated_home: Path) -> None:
    """A --no-holdout run logs training metrics and leaves an existing alias where it is."""
    path = write_config(isolated_home, tiny(isolated_home))
    fake = FakeTracker(AliasedVersion("1", 0.5, "holdout"))
    summary = train_and_track(
        TrainOptions(config_path=path, holdout=False, tracking="file:./mlruns"),
        home=isolated_home / ".calops",
        tracker_factory=fake,
    )
    assert fake.records[0].params["holdout.enabled"] is False
    assert fake.records[0].tags["calops.evaluated_on"] == "train"
    assert not summary.alias_moved
    assert "no holdout RMSLE" in summary.alias_reason
    assert fake.aliases == {}


def test_worse_run_keeps_alias_and_promote_forces_it(isolated_home: Path) -> None:
    """A run worse than the aliased one keeps the alias; --promote moves it anyway."""
    path = write_config(isolated_home, tiny(isolated_home))
    best = AliasedVersion("1", 1e-9, "holdout")
    kept = train_and_track(
        TrainOptions(config_path=path, tracking="file:./mlruns"),
        home=isolated_home / ".calops",
        tracker_factory=FakeTracker(best),
    )
    assert not kept.alias_moved
    assert "is worse than" in kept.alias_reason
    forced = FakeTracker(best)
    summary = train_and_track(
        TrainOptions(config_path=path, tracking="file:./mlruns", promote=True),
        home=isolated_home / ".calops",
        tracker_factory=forced,
    )
    assert summary.alias_moved
    assert forced.aliases == {ALIAS: summary.model_version}


def test_missing_data_file_logs_nothing(isolated_home: Path) -> None:
    """A --data path that does not exist fails with DataError before anything is logged."""
    path = write_config(isolated_home, tiny(isolated_home))
    fake = FakeTracker()
    with pytest.raises(DataError, match=r"does not exist"):
        train_and_track(
            TrainOptions(config_path=path, data="missing.csv", tracking="file:./mlruns"),
            home=isolated_home / ".calops",
            tracker_factory=fake,
        )
    assert fake.records == []
    assert not (isolated_home / "artifacts" / "model.joblib").exists()


def test_unreachable_server_fails_before_training(isolated_home: Path) -> None:
    """An http tracking URI nobody answers on stops the command before any training."""
    path = write_config(isolated_home, tiny(isolated_home))
    fake = FakeTracker()
    with pytest.raises(CalopsError, match=r"does not answer"):
        train_and_track(
            TrainOptions(config_path=path, tracking=f"http://127.0.0.1:{free_port()}"),
            home=isolated_home / ".calops",
            tracker_factory=fake,
        )
    assert fake.target is None
    assert not (isolated_home / "artifacts").exists()


# -- a user's script ------------------------------------------------------------------------------

TRAINS_WITH_CALAPI = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from calapi.model.config import load_config
    from calapi.model.train import run

    run(load_config(Path(sys.argv[sys.argv.index("--config") + 1])))
    """
)

WRITES_NO_CARD = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    import joblib
    from calapi.model.config import load_config
    from calapi.model.features import FEATURES, TARGET
    from calapi.model.pipeline import build_model
    from calapi.model.synthetic import generate

    config = load_config(Path("config.yaml"))
    frame = generate(300, seed=1)
    model = build_model(config.model).fit(frame[list(FEATURES)], frame[TARGET])
    config.outputs.dir.mkdir(parents=True, exist_ok=True)
    joblib.dump(model, config.outputs.model_path)
    config.outputs.metrics_path.write_text(json.dumps({"rmsle": 0.2, "rmse": 9.0}))
    """
)


def script(folder: Path, body: str) -> Path:
    path = folder / "train.py"
    path.write_text(body, encoding="utf-8")
    return path


def test_script_runs_with_its_arguments(isolated_home: Path) -> None:
    """--script runs the user's file with this Python and the arguments after `--`."""
    path = write_config(isolated_home, tiny(isolated_home))
    fake = FakeTracker()
    summary = train_and_track(
        TrainOptions(
            config_path=path,
            tracking="file:./mlruns",
            script=script(isolated_home, TRAINS_WITH_CALAPI),
            script_args=("--config", str(path)),
        ),
        home=isolated_home / ".calops",
        tracker_factory=fake,
    )
    assert summary.trainer.endswith("train.py")
    assert fake.records[0].tags["calops.trainer"].endswith("train.py")
    assert summary.alias_moved


def test_script_without_a_card_gets_one_built(isolated_home: Path) -> None:
    """When the script writes only model and metrics, a card with the model's sha256 is added."""
    config = tiny(isolated_home)
    path = write_config(isolated_home, config)
    fake = FakeTracker()
    train_and_track(
        TrainOptions(
            config_path=path, tracking="file:./mlruns", script=script(isolated_home, WRITES_NO_CARD)
        ),
        home=isolated_home / ".calops",
        tracker_factory=fake,
    )
    from calapi.model.artifact import file_sha256

    card = json.loads((isolated_home / "artifacts" / "model_card.json").read_text())
    assert card["sha256"] == file_sha256(isolated_home / "artifacts" / "model.joblib")
    assert card["features"][0] == "Sex"
    assert card["metrics"]["rmsle"] == 0.2
    assert dict(fake.records[0].metrics) == {"rmsle": 0.2, "rmse": 9.0}


def test_failing_script_reports_exit_code_and_stderr(isolated_home: Path) -> None:
    """A script exiting non-zero gives its code and last stderr line; nothing is logged."""
    path = write_config(isolated_home, tiny(isolated_home))
    body = "import sys\nprint('warming up')\nsys.exit('ValueError: bad column')\n"
    fake = FakeTracker()
    with pytest.raises(ScriptError, match=r"exit code 1; nothing was logged.*bad column"):
        train_and_track(
            TrainOptions(
                config_path=path, tracking="file:./mlruns", script=script(isolated_home, body)
            ),
            home=isolated_home / ".calops",
            tracker_factory=fake,
        )
    assert fake.records == []


def test_script_leaving_stale_outputs_is_refused(isolated_home: Path) -> None:
    """Outputs that existed before the script ran are not taken for this run's model."""
    config = tiny(isolated_home)
    path = write_config(isolated_home, config)
    config.outputs.dir.mkdir(parents=True)
    config.outputs.model_path.write_bytes(b"old")
    config.outputs.metrics_path.write_text("{}")
    fake = FakeTracker()
    with pytest.raises(ScriptError, match=r"did not write"):
        train_and_track(
            TrainOptions(
                config_path=path, tracking="file:./mlruns", script=script(isolated_home, "")
            ),
            home=isolated_home / ".calops",
            tracker_factory=fake,
        )
    assert fake.records == []


def test_data_option_is_refused_with_a_script(isolated_home: Path) -> None:
    """--data belongs to the built-in trainer; with --script it is a config error."""
    path = write_config(isolated_home, tiny(isolated_home))
    with pytest.raises(ConfigError, match=r"after `--`"):
        train_and_track(
            TrainOptions(
                config_path=path,
                data="x.csv",
                tracking="file:./mlruns",
                script=script(isolated_home, ""),
            ),
            home=isolated_home / ".calops",
            tracker_factory=FakeTracker(),
        )


# -- the command line -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--data", "missing.csv"], "does not exist"),
        (["--tracking", "http://127.0.0.1:{port}"], "does not answer"),
        (["--script", "nope.py"], "does not exist"),
        (["--config", "nope.yaml"], "does not exist"),
    ],
)
def test_cli_errors_are_one_line_and_exit_1(
    isolated_home: Path, args: list[str], message: str
) -> None:
    """Expected failures print one 'Error:' line, exit 1 and show no traceback."""
    write_config(isolated_home, tiny(isolated_home))
    argv = ["train", *(a.format(port=free_port()) for a in args)]
    if "--tracking" not in args:
        argv += ["--tracking", "file:./mlruns"]
    result = CliRunner().invoke(app, argv)
    assert result.exit_code == 1, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, (result.stdout, result.stderr, result.exception)
    assert "Traceback" not in result.output
    assert message in errors[0]


def test_cli_help_lists_the_options() -> None:
    """`calops train --help` documents every option of the plan."""
    result = CliRunner().invoke(app, ["train", "--help"], env={"COLUMNS": "200"})
    for option in ("--config", "--data", "--no-holdout", "--tracking", "--script", "--promote"):
        assert option in result.output
