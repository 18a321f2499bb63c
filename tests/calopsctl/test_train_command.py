"""`calops train` orchestrated with a fake tracker: run folders, the pointer, the gate, errors."""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import textwrap
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from calapi.errors import CalopsError, ConfigError, ModelError
from calapi.model.artifact import file_sha256
from calapi.model.config import TrainConfig, flatten
from calapi.model.runrecord import RunInfo
from calapi.serving.sources import LoadedModel, LocalSource
from calopsctl import lifecycle, tracking
from calopsctl.cli import app
from calopsctl.lifecycle import AliasPointer, FolderPointer
from calopsctl.runs import RunFolders, read_run
from calopsctl.tracking import (
    TAG_DATA_SOURCE,
    TAG_EVALUATED_ON,
    TAG_MODEL_SHA256,
    TAG_SYNTHETIC,
    TAG_TRAINER,
    LoggedRun,
    Registered,
    RunRecord,
    TrackingError,
    TrackingTarget,
)
from calopsctl.training import (
    ScriptError,
    TrainOptions,
    TrainSummary,
    numeric_metrics,
    pointer_for,
    serving_names,
    train_and_track,
)
from conftest import small_config
from support import free_port

NAME, ALIAS = "calories", "champion"
LOGGED = [
    "model.skops",
    "config.yaml",
    "model.joblib",
    "metrics.json",
    "model_card.json",
    "train.log",
]
RUN_FILES = {
    "model.skops",
    "model.joblib",
    "metrics.json",
    "model_card.json",
    "train.log",
    "run.json",
}
FILE_STORE = "file:./mlruns"  # an explicit store: the registry alias decides what serves


# -- the fake tracker -----------------------------------------------------------------------------


@dataclass
class Version:
    info: RunInfo
    files: Path  # the fake's own copy of the logged artifacts, as MLflow keeps them


@dataclass
class FakeTracker:
    """The whole Tracker protocol in memory; logged artifacts are copied into ``store``."""

    store: Path
    fail: str | None = None  # log_run raises TrackingError with this message
    target: TrackingTarget | None = None
    calls: int = 0  # how many times calops built it
    records: list[RunRecord] = field(default_factory=list)
    registered: dict[str, list[Version]] = field(default_factory=dict)
    aliases: dict[str, dict[str, str]] = field(default_factory=dict)
    tags: dict[str, dict[str, str]] = field(default_factory=dict)
    loads: list[str] = field(default_factory=list)

    def __call__(self, target: TrackingTarget) -> FakeTracker:
        self.target = target
        self.calls += 1
        return self

    def log_run(self, record: RunRecord) -> LoggedRun:
        if self.fail is not None:
            raise TrackingError(self.fail)
        self.records.append(record)
        versions = self.registered.setdefault(record.model_name, [])
        number = str(len(versions) + 1)
        run_id = secrets.token_hex(16)
        files = self.store / run_id
        files.mkdir(parents=True)
        for path in record.artifacts:
            shutil.copy2(path, files / path.name)
        tags = record.tags
        info = RunInfo(
            run_id=run_id,
            model_name=record.model_name,
            version=number,
            created=datetime.now(UTC).isoformat(timespec="seconds"),
            data_source=tags[TAG_DATA_SOURCE],
            synthetic=tags[TAG_SYNTHETIC] == "true",
            evaluated_on=tags[TAG_EVALUATED_ON],
            rmsle=record.metrics.get("rmsle"),
            trainer=tags[TAG_TRAINER],
            sha256=tags[TAG_MODEL_SHA256],
            tracking_uri=self.target.uri if self.target else None,
            experiment=record.experiment,
        )
        versions.append(Version(info, files))
        uri = f"models:/{record.model_name}/{number}"
        return LoggedRun(run_id, "1", number, files.as_uri(), uri)

    def _aliases_of(self, model_name: str, version: str | None) -> tuple[str, ...]:
        named = self.aliases.get(model_name, {})
        return tuple(sorted(alias for alias, to in named.items() if to == version))

    def _version(self, model_name: str, version: str) -> Version | None:
        found = [v for v in self.registered.get(model_name, []) if v.info.version == version]
        return found[0] if found else None

    def aliased(self, model_name: str, alias: str) -> Registered | None:
        number = self.aliases.get(model_name, {}).get(alias)
        found = None if number is None else self._version(model_name, number)
        return None if found is None else (found.info, self._aliases_of(model_name, number))

    def versions(self, model_name: str) -> list[Registered]:
        return [
            (v.info, self._aliases_of(model_name, v.info.version))
            for v in self.registered.get(model_name, [])
        ]

    def set_alias(self, model_name: str, alias: str, version: str) -> None:
        if self._version(model_name, version) is None:
            raise TrackingError(f"Registered model {model_name} has no version {version}.")
        self.aliases.setdefault(model_name, {})[alias] = version

    def model_tag(self, model_name: str, key: str) -> str | None:
        return self.tags.get(model_name, {}).get(key)

    def set_model_tag(self, model_name: str, key: str, value: str) -> None:
        self.tags.setdefault(model_name, {})[key] = value

    def load_version(self, model_name: str, version: str) -> LoadedModel:
        found = self._version(model_name, version)
        if found is None:
            raise ModelError(f"MLflow has no model models:/{model_name}/{version}.")
        self.loads.append(version)
        return LocalSource(found.files / "model.skops").load()

    def alias(self) -> str | None:
        return self.aliases.get(NAME, {}).get(ALIAS)

    def history(self) -> list[dict[str, Any]]:
        raw = self.model_tag(NAME, lifecycle.HISTORY_TAG)
        events: list[dict[str, Any]] = json.loads(raw) if raw else []
        return events


@pytest.fixture
def fake(tmp_path: Path) -> FakeTracker:
    return FakeTracker(tmp_path / "fake-registry")


# -- helpers --------------------------------------------------------------------------------------


def config(*, rows: int = 1000, max_iter: int = 40, seed: int = 7) -> TrainConfig:
    """A tiny training config writing under ./artifacts (relative to the project folder)."""
    found = small_config(Path("artifacts"), rows=rows, max_iter=max_iter)
    data = found.data.model_copy(update={"synthetic_seed": seed})
    return found.model_copy(update={"data": data})


def write_config(folder: Path, written: TrainConfig, name: str = "config.yaml") -> Path:
    path = folder / name
    path.write_text(yaml.safe_dump(written.model_dump(mode="json")), encoding="utf-8")
    return path


def train(
    project: Path,
    tracker: FakeTracker,
    config_path: Path | None,
    *,
    said: list[str] | None = None,
    **options: Any,
) -> TrainSummary:
    """`calops train` in ``project`` (its own CALOPS home, no stack) with ``tracker``."""
    return train_and_track(
        TrainOptions(config_path=config_path, **options),
        home=project / ".calops",
        report=(said.append if said is not None else lambda _line: None),
        tracker_factory=tracker,
    )


def artifacts(project: Path) -> Path:
    return project / "artifacts"


def served(project: Path) -> Path | None:
    return RunFolders(artifacts(project)).served()


def complete_runs(project: Path) -> list[str]:
    """Folders under runs/ that look complete (no leading dot)."""
    runs = artifacts(project) / "runs"
    if not runs.is_dir():
        return []
    return sorted(p.name for p in runs.iterdir() if not p.name.startswith("."))


def staging_folders(project: Path) -> list[Path]:
    runs = artifacts(project) / "runs"
    return sorted(p for p in runs.iterdir() if p.name.startswith(".staging-"))


def promotions(project: Path) -> list[dict[str, Any]]:
    return RunFolders(artifacts(project)).promotions()


# -- numbers --------------------------------------------------------------------------------------


def test_numeric_metrics_keep_every_number_under_its_name() -> None:
    """Numbers (ints too, nested ones dotted) become metrics; strings and booleans do not."""
    metrics = {"rmsle": 0.1, "n_train": 80, "evaluated_on": "holdout", "ok": True, "x": {"y": 2}}
    assert numeric_metrics(metrics) == {"rmsle": 0.1, "n_train": 80.0, "x.y": 2.0}


# -- the built-in trainer -------------------------------------------------------------------------


def test_builtin_run_logs_everything_and_writes_a_complete_run_folder(
    isolated_home: Path, fake: FakeTracker
) -> None:
    """Params are flatten(config as written), metrics metrics.json's numbers, five files logged;
    the run lands in artifacts/runs/<run-id>/ with run.json, and nowhere else."""
    written = config()
    path = write_config(isolated_home, written)
    said: list[str] = []
    summary = train(isolated_home, fake, path, said=said)
    (record,) = fake.records
    folder = artifacts(isolated_home) / "runs" / summary.run_id
    assert summary.run_folder == str(folder)
    assert dict(record.params) == flatten(written.model_dump(mode="json"))  # as written
    metrics = json.loads((folder / "metrics.json").read_text(encoding="utf-8"))
    assert dict(record.metrics) == numeric_metrics(metrics)
    assert summary.metrics == numeric_metrics(metrics)
    assert [p.name for p in record.artifacts] == LOGGED
    assert record.artifacts[1] == path
    assert record.model_name == NAME
    assert record.tags[TAG_SYNTHETIC] == "true"
    assert record.tags[TAG_EVALUATED_ON] == "holdout"
    assert record.tags[TAG_TRAINER] == "calapi.model.train"
    assert record.tags[TAG_MODEL_SHA256] == file_sha256(folder / "model.skops")
    assert record.input_example.columns[0] == "Sex"
    assert record.experiment == "calops"
    # The run folder is complete, and the only thing written besides the pointer.
    assert {p.name for p in folder.iterdir()} == RUN_FILES
    info = read_run(folder)
    assert info is not None
    assert info.version == summary.model_version == "1"
    assert info.run_id == summary.run_id
    assert info.rmsle == pytest.approx(metrics["rmsle"])
    assert info.data_source == summary.data_source
    assert info.data_source.startswith("synthetic")
    assert info.evaluated_on == "holdout"
    assert info.sha256 == record.tags[TAG_MODEL_SHA256]
    assert {p.name for p in artifacts(isolated_home).iterdir()} == {
        "runs",
        "current",
        "promotions.jsonl",
    }
    assert complete_runs(isolated_home) == [summary.run_id]
    assert staging_folders(isolated_home) == []
    assert "Fitting on 800 rows" in (folder / "train.log").read_text(encoding="utf-8")
    assert summary.log == str(folder / "train.log")
    assert any(
        line.startswith("Logging the run to ") and line.endswith(" and registering the model.")
        for line in said
    )


def test_data_option_trains_on_a_csv(isolated_home: Path, fake: FakeTracker) -> None:
    """--data overrides data.source: logged as given, trained on the file, not synthetic."""
    from calapi.model.synthetic import generate

    generate(600, seed=3).to_csv(isolated_home / "exercise.csv", index=False)
    path = write_config(isolated_home, config())
    summary = train(isolated_home, fake, path, data="exercise.csv")
    (record,) = fake.records
    assert record.params["data.source"] == "exercise.csv"
    assert record.tags[TAG_SYNTHETIC] == "false"
    assert summary.data_source == str(isolated_home / "exercise.csv")
    assert not summary.synthetic
    assert summary.metrics["n_holdout"] == 120


# -- folder mode: no stack, no --tracking -> artifacts/current -------------------------------------


def test_first_run_creates_the_pointer(isolated_home: Path, fake: FakeTracker) -> None:
    summary = train(isolated_home, fake, write_config(isolated_home, config()))
    assert fake.target is not None
    assert fake.target.local_default
    pointer = artifacts(isolated_home) / "current"
    assert summary.serving_pointer == str(pointer)
    assert summary.promoted
    assert "nothing held" in summary.promotion_reason
    assert summary.champion is None
    assert summary.compared == {}
    assert os.readlink(pointer) == os.path.join("runs", summary.run_id)
    assert served(isolated_home) == Path(summary.run_folder).resolve()
    (event,) = promotions(isolated_home)
    assert (event["version"], event["how"]) == ("1", "gate")
    # What `calops serve` on the folder would load: this run, under its registry version.
    assert LocalSource(artifacts(isolated_home)).load().version == f"{NAME}/1"


def test_worse_run_keeps_the_champion_and_promote_forces(
    isolated_home: Path, fake: FakeTracker
) -> None:
    """Both models are scored on the new run's holdout; the worse one waits for --promote."""
    champion = train(isolated_home, fake, write_config(isolated_home, config()))
    worse_config = write_config(isolated_home, config(max_iter=1), "worse.yaml")
    worse = train(isolated_home, fake, worse_config)
    assert not worse.promoted
    assert "worse" in worse.promotion_reason
    assert "`calops promote 2` forces it" in worse.promotion_reason
    assert worse.champion == "1"
    rows = worse.metrics["n_holdout"]
    assert worse.compared["rows"] == rows == 200
    assert f"both on this run's {int(rows):,} holdout rows" in worse.promotion_reason
    assert worse.compared["rmsle"] == pytest.approx(worse.metrics["rmsle"], rel=1e-9)
    assert worse.compared["champion_rmsle"] < worse.compared["rmsle"]
    assert served(isolated_home) == Path(champion.run_folder).resolve()
    assert len(promotions(isolated_home)) == 1
    assert complete_runs(isolated_home) == sorted([champion.run_id, worse.run_id])

    forced = train(isolated_home, fake, worse_config, promote=True)
    assert forced.promoted
    assert forced.promotion_reason == "forced with --promote"
    assert served(isolated_home) == Path(forced.run_folder).resolve()
    assert [(e["version"], e["how"]) for e in promotions(isolated_home)] == [
        ("1", "gate"),
        ("3", "forced"),
    ]
    # and the kept one can still be served by hand, then rolled back
    pointer = FolderPointer(artifacts(isolated_home), NAME)
    lifecycle.promote(pointer, "2")
    assert served(isolated_home) == Path(worse.run_folder).resolve()
    assert lifecycle.rollback(pointer).current.key == "3"


def test_better_run_takes_the_pointer(isolated_home: Path, fake: FakeTracker) -> None:
    poor = train(isolated_home, fake, write_config(isolated_home, config(max_iter=1)))
    better = train(isolated_home, fake, write_config(isolated_home, config(), "better.yaml"))
    assert better.promoted
    assert "no worse" in better.promotion_reason
    assert better.compared["champion_rmsle"] > better.compared["rmsle"]
    assert served(isolated_home) == Path(better.run_folder).resolve()
    assert poor.run_id in complete_runs(isolated_home)


def test_no_holdout_run_never_moves_an_existing_champion(
    isolated_home: Path, fake: FakeTracker
) -> None:
    champion = train(isolated_home, fake, write_config(isolated_home, config(max_iter=1)))
    path = write_config(isolated_home, config(), "better.yaml")
    summary = train(isolated_home, fake, path, holdout=False)
    record = fake.records[-1]
    assert record.params["holdout.enabled"] is False
    assert record.tags[TAG_EVALUATED_ON] == "train"
    assert summary.evaluated_on == "train"
    assert not summary.promoted
    assert "no holdout (--no-holdout)" in summary.promotion_reason
    assert "`calops promote 2` moves it" in summary.promotion_reason
    assert summary.compared == {}
    assert served(isolated_home) == Path(champion.run_folder).resolve()
    assert len(promotions(isolated_home)) == 1


def test_gate_scores_the_champion_on_the_new_runs_holdout(
    isolated_home: Path, fake: FakeTracker, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """A champion trained on other data is still compared on the new run's rows, re-scored."""
    from calapi.model.train import run

    champion = train(isolated_home, fake, write_config(isolated_home, config(rows=1000, seed=7)))
    other = config(rows=600, seed=8, max_iter=20)
    summary = train(isolated_home, fake, write_config(isolated_home, other, "other.yaml"))
    assert champion.metrics["n_holdout"] == 200
    assert summary.metrics["n_holdout"] == 120
    assert summary.compared["rows"] == 120
    # The same rows, rebuilt: the challenger's config gives the same split.
    elsewhere = other.outputs.model_copy(update={"dir": tmp_path_factory.mktemp("again")})
    again = run(other.model_copy(update={"outputs": elsewhere}))
    assert again.evaluation is not None
    assert len(again.evaluation) == 120
    old = LocalSource(Path(champion.run_folder) / "model.skops").load()
    rescored = lifecycle.score(old, again.evaluation)
    assert summary.compared["champion_rmsle"] == pytest.approx(rescored, rel=1e-9)
    assert summary.compared["champion_rmsle"] != pytest.approx(champion.metrics["rmsle"])
    assert summary.compared["rmsle"] == pytest.approx(summary.metrics["rmsle"], rel=1e-9)


def test_pointer_moves_to_this_run_even_when_an_older_run_has_its_version(
    isolated_home: Path, fake: FakeTracker
) -> None:
    """Runs logged to `--tracking file:./mlruns` and to the home's store share artifacts/runs,
    and both registries number from 1."""
    other_store = FakeTracker(isolated_home / "other-registry")
    path = write_config(isolated_home, config(max_iter=1))
    earlier = train(isolated_home, other_store, path, tracking=FILE_STORE)
    assert earlier.model_version == "1"
    assert served(isolated_home) is None  # the alias moved, not artifacts/current
    info = read_run(Path(earlier.run_folder))
    assert info is not None
    # make the earlier run unmistakably older
    older = replace(info, created="2020-01-01T00:00:00+00:00")
    (Path(earlier.run_folder) / "run.json").write_text(json.dumps(older.as_json()))
    summary = train(isolated_home, fake, write_config(isolated_home, config(), "new.yaml"))
    assert summary.model_version == "1"
    assert summary.promoted
    assert served(isolated_home) == Path(summary.run_folder).resolve()


# -- alias mode: an explicit store -> the registry alias -----------------------------------------


def test_alias_moves_on_first_run_stays_on_worse_and_keeps_history(
    isolated_home: Path, fake: FakeTracker
) -> None:
    first = train(isolated_home, fake, write_config(isolated_home, config()), tracking=FILE_STORE)
    assert fake.target is not None
    assert not fake.target.local_default
    assert fake.target.uri == (isolated_home / "mlruns").as_uri()
    assert first.serving_pointer.startswith(f"alias {ALIAS!r} of model {NAME!r}")
    assert first.promoted
    assert fake.alias() == "1"
    (event,) = fake.history()
    assert (event["version"], event["how"]) == ("1", "gate")
    assert "@" in event["by"]

    worse_config = write_config(isolated_home, config(max_iter=1), "worse.yaml")
    worse = train(isolated_home, fake, worse_config, tracking=FILE_STORE)
    assert not worse.promoted
    assert "worse" in worse.promotion_reason
    assert worse.champion == "1"
    assert worse.compared["rows"] == worse.metrics["n_holdout"]
    assert fake.loads == ["1"]  # the champion was loaded from the registry and re-scored
    assert fake.alias() == "1"
    assert len(fake.history()) == 1

    forced = train(isolated_home, fake, worse_config, tracking=FILE_STORE, promote=True)
    assert forced.promoted
    assert fake.alias() == "3"
    assert [(e["version"], e["how"]) for e in fake.history()] == [("1", "gate"), ("3", "forced")]
    # The registry decides: no local pointer, no local history, only run folders.
    assert {p.name for p in artifacts(isolated_home).iterdir()} == {"runs"}
    assert len(complete_runs(isolated_home)) == 3


def test_alias_champion_the_registry_cannot_load_is_kept(
    isolated_home: Path, fake: FakeTracker
) -> None:
    train(isolated_home, fake, write_config(isolated_home, config()), tracking=FILE_STORE)
    shutil.rmtree(fake.registered[NAME][0].files)
    path = write_config(isolated_home, config(), "again.yaml")
    summary = train(isolated_home, fake, path, tracking=FILE_STORE)
    assert not summary.promoted
    assert "version 1 could not be loaded" in summary.promotion_reason
    assert fake.alias() == "1"


# -- failures leave nothing that looks complete ---------------------------------------------------


def test_tracking_failure_leaves_no_run_and_the_pointer_alone(
    isolated_home: Path, fake: FakeTracker
) -> None:
    champion = train(isolated_home, fake, write_config(isolated_home, config(max_iter=1)))
    broken = FakeTracker(isolated_home / "broken", fail="MLflow at x failed while logging.")
    with pytest.raises(TrackingError, match=r"failed while logging"):
        train(isolated_home, broken, write_config(isolated_home, config(), "better.yaml"))
    assert complete_runs(isolated_home) == [champion.run_id]
    assert served(isolated_home) == Path(champion.run_folder).resolve()
    assert len(promotions(isolated_home)) == 1
    (left,) = staging_folders(isolated_home)
    assert [p.name for p in left.iterdir()] == ["train.log"]
    assert RunFolders(artifacts(isolated_home)).listing() == [
        (Path(champion.run_folder), read_run(Path(champion.run_folder)))
    ]


def test_failing_script_keeps_only_its_log_and_points_at_it(
    isolated_home: Path, fake: FakeTracker
) -> None:
    path = write_config(isolated_home, config())
    body = "import sys\nprint('warming up')\nsys.exit('ValueError: bad column')\n"
    with pytest.raises(ScriptError) as raised:
        train(isolated_home, fake, path, script=script(isolated_home, body))
    message = str(raised.value)
    assert "failed with exit code 1 and nothing was logged" in message
    assert "warming up | ValueError: bad column" in message
    found = re.search(r"full output in (\S+train\.log)\)", message)
    assert found is not None
    log = Path(found.group(1))
    assert log.is_file()
    assert log.parent.name.startswith(".staging-")
    assert [p.name for p in log.parent.iterdir()] == ["train.log"]
    assert "warming up" in log.read_text(encoding="utf-8")
    assert complete_runs(isolated_home) == []
    assert served(isolated_home) is None
    assert fake.records == []


# -- inputs are checked before any store ----------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"data": "missing.csv"}, ConfigError, r"Training data .*missing\.csv does not exist"),
        ({"config": "nope.yaml"}, ConfigError, r"Config file nope\.yaml does not exist"),
        ({"script": "nope.py"}, ScriptError, r"Training script nope\.py does not exist"),
        ({"script": "train.py", "data": "x.csv"}, ConfigError, r"after `--`"),
        ({"script": "train.py", "holdout": False}, ConfigError, r"--no-holdout drive"),
        ({"script": "train.py", "script_args": ("-c", "gone.yaml")}, ConfigError, r"gone\.yaml"),
    ],
)
def test_inputs_are_checked_before_any_store(
    isolated_home: Path,
    fake: FakeTracker,
    options: dict[str, Any],
    error: type[CalopsError],
    message: str,
) -> None:
    """A wrong path fails in one sentence before a tracker is built or a folder is made."""
    default = write_config(isolated_home, config())
    script(isolated_home, "")
    given = dict(options)
    path = Path(given.pop("config")) if "config" in given else default
    if "script" in given:
        given["script"] = Path(given["script"])
    with pytest.raises(error, match=message):
        train(isolated_home, fake, path, **given)
    assert fake.calls == 0
    assert not artifacts(isolated_home).exists()
    assert not (isolated_home / ".calops").exists()


def test_unreachable_server_fails_before_training(isolated_home: Path, fake: FakeTracker) -> None:
    """An http tracking URI nobody answers on stops the command before any training."""
    path = write_config(isolated_home, config())
    with pytest.raises(CalopsError, match=r"does not answer"):
        train(isolated_home, fake, path, tracking=f"http://127.0.0.1:{free_port()}")
    assert fake.calls == 0
    assert not artifacts(isolated_home).exists()


# -- which pointer decides ----------------------------------------------------------------------


def test_pointer_for_each_kind_of_target(tmp_path: Path, fake: FakeTracker) -> None:
    """The stack's served folder, else the outputs folder without a chosen store, else the alias."""
    outputs = tmp_path / "artifacts"

    def pointer(target: TrackingTarget, tracker: FakeTracker | None = fake) -> Any:
        return pointer_for(target, tracker, NAME, ALIAS, outputs)

    stack_folder = pointer(TrackingTarget("http://127.0.0.1:5000", "stack", serves="/srv/models"))
    assert isinstance(stack_folder, FolderPointer)
    assert stack_folder.where == str(Path("/srv/models") / "current")
    stack_alias = pointer(TrackingTarget("http://h:5000", "stack", serves="models:/calories@x"))
    assert isinstance(stack_alias, AliasPointer)
    assert stack_alias.alias == ALIAS
    local = pointer(TrackingTarget("sqlite:///x.db", "home", local_default=True))
    assert isinstance(local, FolderPointer)
    assert local.where == str(outputs / "current")
    assert isinstance(pointer(TrackingTarget("file:///m", "given"), None), FolderPointer)
    assert isinstance(pointer(TrackingTarget("file:///m", "given")), AliasPointer)


def test_serving_names_read_leniently(tmp_path: Path) -> None:
    """promote/models need name, alias and outputs only, even from a hand-out config."""
    assert serving_names(None, tmp_path) == (NAME, ALIAS, tmp_path / "artifacts")
    handout = tmp_path / "handout.yaml"
    handout.write_text(
        yaml.safe_dump(
            {"model": {"name": "kcal", "type": "random_forest"}, "outputs": {"dir": "out"}}
        ),
        encoding="utf-8",
    )
    assert serving_names(handout, tmp_path) == ("kcal", ALIAS, tmp_path / "out")
    (tmp_path / "config.yaml").write_text("- a list\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"must hold a YAML mapping"):
        serving_names(None, tmp_path)
    (tmp_path / "bad.yaml").write_text("a: [", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"not valid YAML"):
        serving_names(tmp_path / "bad.yaml", tmp_path)
    with pytest.raises(ConfigError, match=r"does not exist"):
        serving_names(tmp_path / "gone.yaml", tmp_path)


# -- the layout before run folders ----------------------------------------------------------------


def legacy_model(project: Path, *, max_iter: int) -> str:
    """A model written straight into artifacts/ as `python -m calapi.model.train` did."""
    from calapi.model.train import run

    run(small_config(artifacts(project), rows=1000, max_iter=max_iter))
    return file_sha256(artifacts(project) / "model.skops")


def test_legacy_model_is_adopted_once_the_run_is_logged(
    isolated_home: Path, fake: FakeTracker
) -> None:
    """After logging, it moves into runs/legacy-<sha12>/, `current` points there, and the API
    sees the same model; then the new run is gated against it like any champion."""
    sha = legacy_model(isolated_home, max_iter=40)
    before = LocalSource(artifacts(isolated_home)).load()
    assert (before.version, before.sha256) == (sha[:12], sha)
    said: list[str] = []
    path = write_config(isolated_home, config(max_iter=1), "worse.yaml")
    summary = train(isolated_home, fake, path, said=said)
    adopted = artifacts(isolated_home) / "runs" / f"legacy-{sha[:12]}"
    moved = next(i for i, line in enumerate(said) if line.startswith("Moved the model served"))
    logging = next(i for i, line in enumerate(said) if line.startswith("Logging the run"))
    assert str(adopted) in said[moved]
    assert moved > logging
    assert file_sha256(adopted / "model.skops") == sha
    assert not (artifacts(isolated_home) / "model.skops").exists()
    assert summary.champion == adopted.name
    assert not summary.promoted
    assert "worse" in summary.promotion_reason
    assert served(isolated_home) == adopted.resolve()
    after = LocalSource(artifacts(isolated_home)).load()
    assert (after.version, after.sha256) == (sha[:12], sha)
    assert sorted(complete_runs(isolated_home)) == sorted([adopted.name, summary.run_id])


def test_legacy_model_is_not_touched_when_the_registry_decides(
    isolated_home: Path, fake: FakeTracker
) -> None:
    sha = legacy_model(isolated_home, max_iter=1)
    summary = train(isolated_home, fake, write_config(isolated_home, config()), tracking=FILE_STORE)
    assert summary.promoted  # the alias had no version yet
    assert file_sha256(artifacts(isolated_home) / "model.skops") == sha
    assert served(isolated_home) is None


def test_rollback_after_the_first_promotion_returns_to_the_adopted_model(
    isolated_home: Path, fake: FakeTracker
) -> None:
    sha = legacy_model(isolated_home, max_iter=1)
    summary = train(isolated_home, fake, write_config(isolated_home, config()))
    assert summary.promoted
    moved = lifecycle.rollback(FolderPointer(artifacts(isolated_home), NAME))
    assert moved.current.key == f"legacy-{sha[:12]}"
    assert LocalSource(artifacts(isolated_home)).load().sha256 == sha


# -- what serves changes only once the run is logged ----------------------------------------------


@dataclass
class FullDiskTracker(FakeTracker):
    """Stores the first artifact, then fails as MLflow does on a full disk."""

    def log_run(self, record: RunRecord) -> LoggedRun:
        self.store.mkdir(parents=True, exist_ok=True)
        shutil.copy2(record.artifacts[0], self.store / record.artifacts[0].name)
        raise TrackingError(
            "MLflow at x failed while logging the run: [Errno 28] No space left on device."
        )


def snapshot(folder: Path) -> dict[str, bytes | str]:
    """Every file's bytes and every symlink's target under ``folder``, but a failed run's
    staging folder (kept for its train.log)."""
    found: dict[str, bytes | str] = {}
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder)
        if any(part.startswith(".staging-") for part in relative.parts):
            continue
        if path.is_symlink():
            found[str(relative)] = f"-> {os.readlink(path)}"
        elif path.is_file():
            found[str(relative)] = path.read_bytes()
    return found


def test_failed_logging_leaves_a_legacy_layout_as_it_was(isolated_home: Path) -> None:
    """A model served straight from artifacts/: a run whose logging fails moves nothing."""
    legacy_model(isolated_home, max_iter=5)
    before = snapshot(artifacts(isolated_home))
    full = FullDiskTracker(isolated_home / "registry")
    with pytest.raises(TrackingError, match=r"No space left"):
        train(isolated_home, full, write_config(isolated_home, config(), "next.yaml"))
    assert snapshot(artifacts(isolated_home)) == before
    assert served(isolated_home) is None


def test_failed_logging_of_a_script_run_puts_the_legacy_model_back(
    isolated_home: Path, trained_model_dir: Path
) -> None:
    """A script writes into artifacts/ itself, so the served model moves aside while it runs;
    when logging then fails, every served file is back, byte for byte."""
    legacy_model(isolated_home, max_iter=5)
    before = snapshot(artifacts(isolated_home))
    said: list[str] = []
    with pytest.raises(TrackingError, match=r"No space left"):
        train_and_track(
            TrainOptions(
                config_path=write_config(isolated_home, config()),
                script=script(isolated_home, COPIES_MODEL_CARD_METRICS),
                script_args=("--from", str(trained_model_dir)),
            ),
            home=isolated_home / ".calops",
            report=said.append,
            tracker_factory=FullDiskTracker(isolated_home / "registry"),
        )
    assert snapshot(artifacts(isolated_home)) == before
    assert any(line.startswith("Put the model served back") for line in said)


def test_failed_logging_leaves_the_pointer_and_its_runs_as_they_were(
    isolated_home: Path, fake: FakeTracker
) -> None:
    """With run folders and `current`: after a failed logging, byte-identical."""
    train(isolated_home, fake, write_config(isolated_home, config(max_iter=5)))
    before = snapshot(artifacts(isolated_home))
    full = FullDiskTracker(isolated_home / "registry")
    with pytest.raises(TrackingError, match=r"No space left"):
        train(isolated_home, full, write_config(isolated_home, config(), "better.yaml"))
    assert snapshot(artifacts(isolated_home)) == before


# -- a user's script ------------------------------------------------------------------------------

# Scripts that stand for a user's train.py; they copy an already trained model, so that only
# Python's start-up is paid for, while calops still checks, moves and logs what they wrote.
COPIES_MODEL_CARD_METRICS = textwrap.dedent(
    """
    import shutil, sys
    from pathlib import Path

    args = sys.argv[1:]
    print("args:", " ".join(args))
    source = Path(args[args.index("--from") + 1])
    Path("artifacts").mkdir(exist_ok=True)
    for name in ("model.joblib", "model_card.json", "metrics.json"):
        shutil.copy(source / name, Path("artifacts") / name)
    """
)

WRITES_NO_CARD = textwrap.dedent(
    """
    import json, shutil, sys
    from pathlib import Path

    source = Path(sys.argv[sys.argv.index("--from") + 1])
    Path("artifacts").mkdir(exist_ok=True)
    shutil.copy(source / "model.joblib", "artifacts/model.joblib")
    Path("artifacts/metrics.json").write_text(json.dumps({"rmsle": 0.2, "rmse": 9.0}))
    """
)


def script(folder: Path, body: str) -> Path:
    path = folder / "train.py"
    path.write_text(body, encoding="utf-8")
    return path


def test_script_runs_with_its_arguments_into_a_run_folder(
    isolated_home: Path, fake: FakeTracker, trained_model_dir: Path
) -> None:
    """--script runs the user's file with its arguments; its outputs land in the run folder."""
    path = write_config(isolated_home, config())
    lines: list[str] = []
    args = ("--config", str(path), "--from", str(trained_model_dir))
    summary = train_and_track(
        TrainOptions(
            config_path=path,
            script=script(isolated_home, COPIES_MODEL_CARD_METRICS),
            script_args=args,
        ),
        home=isolated_home / ".calops",
        echo=lines.append,
        tracker_factory=fake,
    )
    assert f"args: {' '.join(args)}" in lines
    assert fake.records[0].params["data.synthetic_rows"] == 1000  # its config, as written
    assert summary.trainer.endswith("train.py")
    assert fake.records[0].tags[TAG_TRAINER].endswith("train.py")
    assert [p.name for p in fake.records[0].artifacts] == LOGGED
    assert summary.promoted  # nothing served yet
    folder = Path(summary.run_folder)
    assert folder.parent == artifacts(isolated_home) / "runs"
    assert {p.name for p in folder.iterdir()} == RUN_FILES
    assert {p.name for p in artifacts(isolated_home).iterdir()} == {
        "runs",
        "current",
        "promotions.jsonl",
    }
    assert staging_folders(isolated_home) == []


def test_script_run_does_not_displace_a_champion(
    isolated_home: Path, fake: FakeTracker, trained_model_dir: Path
) -> None:
    """A script's holdout is its own: calops cannot score both on the same rows, so it waits."""
    path = write_config(isolated_home, config(max_iter=1))
    champion = train(isolated_home, fake, path)
    summary = train(
        isolated_home,
        fake,
        path,
        script=script(isolated_home, WRITES_NO_CARD),
        script_args=("--from", str(trained_model_dir)),
    )
    assert not summary.promoted
    assert "a --script run's holdout is its own" in summary.promotion_reason
    assert served(isolated_home) == Path(champion.run_folder).resolve()
    # It wrote no card: one is built, with the model's sha256, in the run folder.
    folder = Path(summary.run_folder)
    card = json.loads((folder / "model_card.json").read_text(encoding="utf-8"))
    assert card["sha256"] == file_sha256(folder / "model.skops")
    assert card["features"][0] == "Sex"
    assert card["metrics"]["rmsle"] == 0.2
    assert dict(fake.records[-1].metrics) == {"rmsle": 0.2, "rmse": 9.0}


def test_script_leaving_stale_outputs_is_refused(isolated_home: Path, fake: FakeTracker) -> None:
    """Outputs that existed before the script ran are not taken for this run's model."""
    path = write_config(isolated_home, config())
    outputs = artifacts(isolated_home)
    outputs.mkdir()
    (outputs / "model.joblib").write_bytes(b"old")
    (outputs / "metrics.json").write_text("{}", encoding="utf-8")
    with pytest.raises(ScriptError, match=r"did not write"):
        train(isolated_home, fake, path, tracking=FILE_STORE, script=script(isolated_home, ""))
    assert fake.records == []
    assert complete_runs(isolated_home) == []
    assert (outputs / "model.joblib").read_bytes() == b"old"


# -- the command line -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--data", "missing.csv"], "does not exist"),
        (["--tracking", "http://127.0.0.1:{port}"], "does not answer"),
        (["--script", "nope.py"], "does not exist"),
        (["--config", "nope.yaml"], "does not exist"),
        (["--script", "train.py", "--no-holdout"], "after `--`"),
    ],
)
def test_cli_errors_are_one_line_and_exit_1(
    isolated_home: Path, args: list[str], message: str
) -> None:
    """Expected failures print one 'Error:' line, exit 1 and show no traceback."""
    write_config(isolated_home, config())
    script(isolated_home, "")
    argv = ["train", *(a.format(port=free_port()) for a in args)]
    if "--tracking" not in args:
        argv += ["--tracking", FILE_STORE]
    result = CliRunner().invoke(app, argv)
    assert result.exit_code == 1, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, (result.stdout, result.stderr, result.exception)
    assert "Traceback" not in result.output
    assert message in errors[0]


def test_cli_help_lists_the_options() -> None:
    """`calops train --help` documents every option of the plan."""
    result = CliRunner().invoke(app, ["train", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    for option in (
        "--config", "--data", "--no-holdout", "--tracking", "--script", "--promote",
        "--experiment", "--json",
    ):  # fmt: skip
        assert option in result.output


def test_cli_json_summary(
    isolated_home: Path, fake: FakeTracker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`calops train --json` (no stack: the folder pointer) prints the summary for scripts."""
    monkeypatch.setattr(tracking, "MlflowTracker", fake)
    write_config(isolated_home, config())
    result = CliRunner().invoke(app, ["train", "--json"])
    assert result.exit_code == 0, (result.stdout, result.stderr)
    summary = json.loads(result.stdout)
    assert {"promoted", "promotion_reason", "run_folder", "model_version"} <= summary.keys()
    assert summary["promoted"] is True
    assert summary["model_version"] == "1"
    assert Path(summary["run_folder"]) == artifacts(isolated_home) / "runs" / summary["run_id"]
    assert served(isolated_home) == Path(summary["run_folder"]).resolve()
    assert fake.calls == 1

    worse = write_config(isolated_home, config(max_iter=1), "worse.yaml")
    plain = CliRunner().invoke(app, ["train", "--config", str(worse)])
    assert plain.exit_code == 0, plain.stderr
    assert "serving: not promoted: RMSLE" in plain.stdout
    # The score next to Keytel's equations on the same rows, so a user sees what was learned.
    assert re.search(r"rmsle: [\d.]+ \(Keytel's equations alone: [\d.]+\)", plain.stdout)
    assert summary["metrics"]["baseline_rmsle"] > summary["metrics"]["rmsle"]
    assert f"run folder: {artifacts(isolated_home) / 'runs'}" in plain.stdout


def test_cli_from_an_unrelated_folder_says_where_it_logs(
    tmp_path: Path, fake: FakeTracker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No .calops here or above while a stack runs elsewhere: the first line names that stack,
    the next says which new local store this run goes to."""
    from calopsctl.project import remember_stack
    from calopsctl.state import StackState, save_state

    elsewhere = tmp_path / "project" / ".calops"
    save_state(elsewhere, StackState(runtime="local", ports={"mlflow": free_port()}))
    remember_stack(elsewhere)
    unrelated = tmp_path / "unrelated"
    unrelated.mkdir()
    monkeypatch.chdir(unrelated)
    monkeypatch.delenv("CALOPS_HOME", raising=False)
    monkeypatch.setattr(tracking, "MlflowTracker", fake)
    write_config(unrelated, config())
    result = CliRunner().invoke(app, ["train", "--json"])
    assert result.exit_code == 0, (result.stdout, result.stderr)
    first, second = result.stderr.splitlines()[:2]
    assert first == (
        f"No calops stack in {unrelated} or its parents; a stack runs from {elsewhere.parent} "
        f"(set CALOPS_HOME={elsewhere} or run from there)."
    )
    assert second.startswith(f"Tracking to sqlite:///{unrelated / '.calops' / 'mlflow.db'} (")
    assert json.loads(result.stdout)["tracking_uri"].endswith("unrelated/.calops/mlflow.db")
