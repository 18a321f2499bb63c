"""`calops retrain` with an in-memory registry and traffic in the labelled-traffic layout."""

from __future__ import annotations

import json
import re
import secrets
import shutil
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from calapi.errors import CalopsError, ModelError
from calapi.model.features import FEATURES, TARGET
from calapi.model.runrecord import RunInfo
from calapi.model.synthetic import generate
from calapi.serving.sources import LoadedModel, LocalSource
from calopsctl import lifecycle
from calopsctl.cli import app
from calopsctl.retraining import (
    BASE_SHARE,
    BASE_WEIGHT,
    LINEAGE_FILE,
    NotEnoughTrafficError,
    RetrainOptions,
    RetrainSummary,
    base_sample,
    retrain,
    split_recent,
)
from calopsctl.runs import RunFolders
from calopsctl.tracking import (
    TAG_EVALUATED_ON,
    TAG_MODEL_SHA256,
    TAG_TRAINER,
    LoggedRun,
    Registered,
    RunRecord,
    TrackingTarget,
)
from calopsctl.training import TrainOptions, train_and_track
from conftest import small_config
from support import free_port

NAME, ALIAS = "calories", "champion"
FILE_STORE = "file:./mlruns"  # an explicit store: the registry alias decides what serves
NOW = 1_800_000_000.0
CONCEPT = 1.3  # the simulator's concept drift at full strength


@dataclass
class FakeTracker:
    """The Tracker protocol in memory; logged artifacts are copied into ``store``."""

    store: Path
    calls: int = 0
    records: list[RunRecord] = field(default_factory=list)
    registered: list[tuple[RunInfo, Path]] = field(default_factory=list)
    aliases: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)

    def __call__(self, target: TrackingTarget) -> FakeTracker:
        self.calls += 1
        return self

    def log_run(self, record: RunRecord) -> LoggedRun:
        self.records.append(record)
        number, run_id = str(len(self.registered) + 1), secrets.token_hex(16)
        files = self.store / run_id
        files.mkdir(parents=True)
        for path in record.artifacts:
            shutil.copy2(path, files / path.name)
        info = RunInfo(
            run_id=run_id, model_name=record.model_name, version=number,
            created=datetime.now(UTC).isoformat(), evaluated_on=record.tags[TAG_EVALUATED_ON],
            rmsle=record.metrics.get("rmsle"), trainer=record.tags[TAG_TRAINER],
            sha256=record.tags[TAG_MODEL_SHA256],
        )  # fmt: skip
        self.registered.append((info, files))
        return LoggedRun(run_id, "1", number, files.as_uri(), f"models:/{NAME}/{number}")

    def _aliases(self, version: str | None) -> tuple[str, ...]:
        return tuple(alias for alias, to in self.aliases.items() if to == version)

    def aliased(self, model_name: str, alias: str) -> Registered | None:
        found = [info for info, _ in self.registered if info.version == self.aliases.get(alias)]
        return (found[0], self._aliases(found[0].version)) if found else None

    def versions(self, model_name: str) -> list[Registered]:
        return [(info, self._aliases(info.version)) for info, _ in self.registered]

    def set_alias(self, model_name: str, alias: str, version: str) -> None:
        self.aliases[alias] = version

    def model_tag(self, model_name: str, key: str) -> str | None:
        return self.tags.get(key)

    def set_model_tag(self, model_name: str, key: str, value: str) -> None:
        self.tags[key] = value

    def load_version(self, model_name: str, version: str) -> LoadedModel:
        for info, files in self.registered:
            if info.version == version:
                return LocalSource(files / "model.skops").load()
        raise ModelError(f"No version {version}.")


@pytest.fixture
def fake(tmp_path: Path) -> FakeTracker:
    return FakeTracker(tmp_path / "fake-registry")


@pytest.fixture
def project(isolated_home: Path, fake: FakeTracker) -> Path:
    """A project whose champion (version 1) was trained by `calops train` on synthetic rows."""
    written = small_config(Path("artifacts"), rows=2000, max_iter=30)
    (isolated_home / "config.yaml").write_text(
        yaml.safe_dump(written.model_dump(mode="json")), encoding="utf-8"
    )
    first = train_and_track(
        TrainOptions(tracking=FILE_STORE), home=isolated_home / ".calops", tracker_factory=fake
    )
    assert first.promoted
    return isolated_home


def traffic(rows: int, *, scale: float = 1.0, seed: int = 3) -> pd.DataFrame:
    """Labelled traffic in the contract's columns, one prediction a second ending at NOW,
    its truth ``scale`` times the synthetic one (concept drift)."""
    frame = generate(rows, seed=seed)
    at = NOW - rows + np.arange(rows, dtype=np.float64)
    labelled = pd.DataFrame(
        {
            "id": [f"r{i}" for i in range(rows)],
            "predicted_at": at,
            "answered_at": at + 5.0,
            "model_version": f"{NAME}/1",
        }
    )
    for name in FEATURES:
        labelled[name] = frame[name].to_numpy()
    labelled["predicted"] = frame[TARGET].to_numpy()
    labelled[TARGET] = frame[TARGET].to_numpy() * scale
    return labelled


def reader(frame: pd.DataFrame, asked: list[tuple[float, str | None]] | None = None) -> Any:
    def read(home: Path, since_seconds: float, log: str | None = None) -> pd.DataFrame:
        if asked is not None:
            asked.append((since_seconds, log))
        return frame

    return read


def run(project: Path, fake: FakeTracker, frame: pd.DataFrame, **options: Any) -> RetrainSummary:
    return retrain(
        RetrainOptions(tracking=FILE_STORE, **options),
        home=project / ".calops",
        tracker_factory=fake,
        traffic=reader(frame),
    )


def run_folders(project: Path) -> list[str]:
    return sorted(folder.name for folder, _ in RunFolders(project / "artifacts").listing())


# -- the rows -------------------------------------------------------------------------------------


def test_split_keeps_the_newest_rows_by_prediction_time_out_of_training() -> None:
    """The window is the newest fraction by predicted_at, whatever order the rows came in."""
    frame = traffic(100).sample(frac=1.0, random_state=1)
    split = split_recent(frame, 0.2)
    assert len(split.window) == 20
    assert len(split.train) == 80
    assert split.train["predicted_at"].max() < split.window["predicted_at"].min()
    assert split.window_end == datetime.fromtimestamp(NOW - 1, UTC).isoformat(timespec="seconds")
    assert set(split.train["id"]).isdisjoint(split.window["id"])


def test_split_always_leaves_a_row_on_each_side() -> None:
    """A tiny or extreme fraction still trains on one row and judges on one."""
    assert len(split_recent(traffic(2), 0.9).train) == 1
    assert len(split_recent(traffic(50), 0.001).window) == 1


def test_base_rows_are_a_seeded_quarter_of_the_traffic_at_most() -> None:
    """At most BASE_SHARE base rows per traffic row, the same rows every time; none: no base."""
    config = small_config(Path("artifacts"), rows=2000)
    first = base_sample(config, None, 400)
    assert first is not None
    assert len(first.frame) == int(400 * BASE_SHARE)
    again = base_sample(config, None, 400)
    assert again is not None
    pd.testing.assert_frame_equal(first.frame, again.frame)
    assert "(100 of 2000 rows)" in first.source
    everything = base_sample(config, None, 100_000)
    assert everything is not None
    assert len(everything.frame) == 2000
    assert base_sample(config, "none", 400) is None


def test_too_few_rows_is_one_sentence_and_nothing_is_created(
    project: Path, fake: FakeTracker
) -> None:
    """Below --min-rows: the sentence names the count, the window and the way out; no run."""
    before = (run_folders(project), len(fake.registered), fake.calls)
    with pytest.raises(NotEnoughTrafficError) as raised:
        run(project, fake, traffic(12), since="1h")
    assert str(raised.value) == (
        "Only 12 labelled predictions in the last 1h (need 200); send feedback to /feedback "
        "or lower --min-rows."
    )
    assert (run_folders(project), len(fake.registered), fake.calls) == before
    assert not list((project / "artifacts" / "runs").glob(".staging-*"))


# -- the gate on the recent window ---------------------------------------------------------------


def test_drifted_traffic_trains_a_better_challenger_that_is_promoted(
    project: Path, fake: FakeTracker
) -> None:
    """Concept drift: the challenger beats the champion on the same recent rows and serves."""
    summary = run(project, fake, traffic(1500, scale=CONCEPT))
    assert summary.promoted
    assert summary.champion == "1"
    assert summary.model_version == "2"
    assert summary.champion_rmsle is not None
    assert summary.challenger_rmsle < summary.champion_rmsle / 2
    assert summary.outcome.startswith(f"promoted {NAME}/2 (was {NAME}/1): challenger RMSLE ")
    assert "on the same 300 recent rows" in summary.outcome
    assert (summary.rows_traffic, summary.rows_evaluated, summary.rows_base) == (1200, 300, 300)
    assert fake.aliases[ALIAS] == "2"
    assert summary.window_start == datetime.fromtimestamp(NOW - 300, UTC).isoformat(
        timespec="seconds"
    )


def test_base_rows_do_not_pull_a_drifted_fit_back(project: Path, fake: FakeTracker) -> None:
    """Base rows count BASE_WEIGHT of a traffic row: under concept drift the challenger scores
    close to one trained on the traffic alone, and the data source says so."""
    drifted = traffic(1500, scale=CONCEPT)
    mixed = run(project, fake, drifted)
    alone = run(project, fake, drifted, base_data="none")
    assert mixed.rows_base == 300
    assert f"(weight {BASE_WEIGHT:g})" in fake.records[-2].params["data.source"]
    assert mixed.challenger_rmsle < 1.25 * alone.challenger_rmsle


def test_lineage_is_logged_and_kept_in_the_run_folder(project: Path, fake: FakeTracker) -> None:
    """Window, rows, the champion compared and both RMSLEs: MLflow params, tags, metrics,
    retrain.json in the run folder (logged too) and run.json's evaluated_on / rmsle."""
    summary = run(project, fake, traffic(1000, scale=CONCEPT), base_data="none")
    record = fake.records[-1]
    assert record.params["retrain.window_start"] == summary.window_start
    assert record.params["retrain.window_end"] == summary.window_end
    assert record.params["retrain.rows_traffic"] == 800
    assert record.params["retrain.rows_base"] == 0
    assert record.params["retrain.rows_evaluated"] == 200
    assert record.params["retrain.champion"] == "1"
    assert record.params["holdout.enabled"] is False
    assert record.params["data.source"].startswith("labelled traffic (800 rows predicted ")
    assert record.tags["calops.retrain.champion"] == "1"
    assert record.metrics["window.challenger_rmsle"] == pytest.approx(summary.challenger_rmsle)
    assert record.metrics["window.champion_rmsle"] == pytest.approx(summary.champion_rmsle)
    folder = Path(summary.run_folder)
    lineage = json.loads((folder / LINEAGE_FILE).read_text())
    assert lineage["champion_rmsle"] == pytest.approx(summary.champion_rmsle)
    assert lineage["base_data"] == "none"
    assert any(path.name == LINEAGE_FILE for path in record.artifacts)
    run_json = json.loads((folder / "run.json").read_text())
    assert run_json["evaluated_on"] == "recent traffic (200 rows)"
    assert record.tags[TAG_EVALUATED_ON] == "recent traffic (200 rows)"
    assert record.metrics["train.rmsle"] < record.metrics["rmsle"]
    assert run_json["rmsle"] == pytest.approx(summary.challenger_rmsle)


def test_undrifted_traffic_keeps_the_champion_and_says_so(project: Path, fake: FakeTracker) -> None:
    """No drift and little traffic: the challenger is not better; it is registered, not served."""
    summary = run(project, fake, traffic(300), min_rows=100)
    assert not summary.promoted
    assert summary.champion_rmsle is not None
    assert summary.challenger_rmsle >= summary.champion_rmsle
    assert summary.outcome.startswith(f"kept {NAME}/1: challenger RMSLE ")
    assert summary.outcome.endswith(" on the same 60 recent rows")
    assert "not better; `calops promote 2` forces it" in summary.promotion_reason
    assert fake.aliases[ALIAS] == "1"
    assert len(fake.registered) == 2


def test_promote_forces_a_challenger_that_is_not_better(project: Path, fake: FakeTracker) -> None:
    """--promote serves the new version whatever the scores, and says it was forced."""
    summary = run(project, fake, traffic(300), min_rows=100, promote=True)
    assert summary.promoted
    assert summary.outcome.startswith(f"promoted {NAME}/2 (was {NAME}/1, forced with --promote)")
    assert fake.aliases[ALIAS] == "2"


def test_the_retrain_gate_needs_strictly_better() -> None:
    """A tie keeps the champion under the retrain rule (strict), moves it under train's."""
    champion = lifecycle.Candidate("1", RunInfo("r", NAME, "1", "now"), f"{NAME}/1", "x")
    tie = lifecycle.Scores(0.1, 0.1, 10)

    unused: Any = None  # neither the pointer nor the challenger is asked: the scores are given

    def verdict(strict: bool) -> lifecycle.Verdict:
        return lifecycle.gate(
            unused, champion, key="2", challenger=lambda: unused,
            evaluation=pd.DataFrame({"x": range(10)}), no_evaluation="", force=False,
            strict=strict, rows_named="the same 10 recent rows", scored=tie,
        )  # fmt: skip

    assert not verdict(strict=True).move
    assert "both on the same 10 recent rows: not better" in verdict(strict=True).reason
    assert verdict(strict=False).move


# -- the command ----------------------------------------------------------------------------------


def test_help_lists_the_options_and_examples() -> None:
    """`calops retrain --help` shows every option and examples."""
    result = CliRunner().invoke(app, ["retrain", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    for option in ("--since", "--min-rows", "--base-data", "--recent", "--promote", "--json"):
        assert option in result.output
    assert "calops retrain --since 30m --json" in result.output


def test_command_with_too_few_rows_prints_one_sentence(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The CLI turns too little traffic into one line on stderr and exit 1, no traceback."""
    asked: list[tuple[float, str | None]] = []
    monkeypatch.setattr("calopsctl.trafficdata.labelled_traffic", reader(traffic(5), asked))
    result = CliRunner().invoke(
        app, ["retrain", "--since", "30m", "--log", "p.db", "--tracking", FILE_STORE]
    )
    assert result.exit_code == 1
    assert "Only 5 labelled predictions in the last 30m (need 200)" in result.output
    assert "Traceback" not in result.output
    assert asked == [(1800.0, "p.db")]


def test_command_refuses_a_bad_duration() -> None:
    """--since takes 90s / 30m / 1h / 2d; anything else is a usage error."""
    result = CliRunner().invoke(app, ["retrain", "--since", "soon"], env={"COLUMNS": "200"})
    assert result.exit_code == 2
    assert "is not a duration" in result.output


def test_command_json_shows_both_scores(
    project: Path, fake: FakeTracker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--json: both RMSLEs side by side, the counts, the window and what moved."""
    monkeypatch.setattr("calopsctl.trafficdata.labelled_traffic", reader(traffic(600, scale=1.3)))
    monkeypatch.setattr("calopsctl.tracking.MlflowTracker", fake)
    result = CliRunner().invoke(app, ["retrain", "--json", "--tracking", FILE_STORE])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["promoted"] is True
    assert data["challenger_rmsle"] < data["champion_rmsle"]
    assert (data["rows_traffic"], data["rows_base"], data["rows_evaluated"]) == (480, 120, 120)
    assert data["outcome"].startswith(f"promoted {NAME}/2 (was {NAME}/1)")
    assert data["window_start"] < data["window_end"]


def test_base_data_none_trains_on_traffic_only(project: Path, fake: FakeTracker) -> None:
    """--base-data none: the config's data source is never read (here: a missing CSV)."""
    config = yaml.safe_load((project / "config.yaml").read_text())
    config["data"]["source"] = "gone.csv"
    (project / "config.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    summary = run(project, fake, traffic(300, scale=CONCEPT), min_rows=100, base_data="none")
    assert (summary.rows_traffic, summary.rows_base) == (240, 0)
    assert summary.base_data == "none"


def test_command_lines_show_both_scores_and_what_moved(
    project: Path, fake: FakeTracker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without --json (not a terminal): `key: value` lines, both RMSLEs on one line."""
    monkeypatch.setattr("calopsctl.trafficdata.labelled_traffic", reader(traffic(300)))
    monkeypatch.setattr("calopsctl.tracking.MlflowTracker", fake)
    result = CliRunner().invoke(app, ["retrain", "--min-rows", "100", "--tracking", FILE_STORE])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert any(line.startswith(f"outcome: kept {NAME}/1: challenger RMSLE ") for line in lines)
    assert any(re.match(r"RMSLE: challenger 0\.\d{5} \| champion \(1\) 0\.\d{5}$", line)
               for line in lines)  # fmt: skip
    assert "evaluated on: 60 recent rows predicted " in result.stdout
    assert "trained on: 240 traffic rows (from " in result.stdout


def test_unreachable_tracking_fails_before_training(project: Path, fake: FakeTracker) -> None:
    """An http tracking URI nobody answers on: one sentence, no run folder, nothing logged."""
    before = (run_folders(project), len(fake.registered))
    with pytest.raises(CalopsError, match=r"does not answer"):
        retrain(
            RetrainOptions(tracking=f"http://127.0.0.1:{free_port()}"),
            home=project / ".calops", tracker_factory=fake, traffic=reader(traffic(400)),
        )  # fmt: skip
    assert (run_folders(project), len(fake.registered)) == before
    assert not list((project / "artifacts" / "runs").glob(".staging-*"))
