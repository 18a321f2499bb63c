"""Running a user's own training script: live output, honest params, outputs moved (real runs)."""

from __future__ import annotations

import json
import os
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import yaml

from calapi.errors import ConfigError
from calapi.model.artifact import file_sha256, load_model
from calapi.model.predictor import PlainPredictor, probe_rows
from calapi.model.synthetic import generate
from calopsctl.scripts import (
    ScriptConfig,
    ScriptError,
    ScriptRun,
    run_script,
    script_config,
    write_script_card,
)

HANDOUT_CONFIG = {
    "data": {"path": "data.csv"},
    "model": {
        "type": "random_forest",
        "params": {"n_estimators": 20, "max_depth": 6, "random_state": 0},
    },
    "outputs": {"dir": "artifacts"},
}

# A course hand-out as students get it: argparse, its own config layout, pandas, a Pipeline.
HANDOUT = '''
"""Train a calorie-burn regressor (week 3 hand-out)."""
import argparse
import json
import sys
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
import yaml
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import RandomForestRegressor
from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score
from sklearn.model_selection import train_test_split
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", default="config.yaml")
    args = parser.parse_args()
    with open(args.config) as handle:
        cfg = yaml.safe_load(handle)

    df = pd.read_csv(cfg["data"]["path"])
    print(f"loaded {len(df)} rows")
    X = df.drop(columns=["id", "Calories"])
    y = df["Calories"]
    X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.2, random_state=0)

    pre = ColumnTransformer(
        [("sex", OneHotEncoder(handle_unknown="ignore"), ["Sex"])], remainder="passthrough"
    )
    model = Pipeline([("pre", pre), ("rf", RandomForestRegressor(**cfg["model"]["params"]))])
    print("fitting random forest", file=sys.stderr)
    model.fit(X_train, y_train)

    pred = np.clip(model.predict(X_test), 0, None)
    rmsle = float(np.sqrt(np.mean((np.log1p(pred) - np.log1p(y_test)) ** 2)))
    print(f"rmsle {rmsle:.4f}")
    metrics = {
        "rmsle": rmsle,
        "rmse": float(np.sqrt(mean_squared_error(y_test, pred))),
        "mae": float(mean_absolute_error(y_test, pred)),
        "r2": float(r2_score(y_test, pred)),
    }
    out = Path(cfg["outputs"]["dir"])
    out.mkdir(parents=True, exist_ok=True)
    joblib.dump(model, out / "model.joblib")
    (out / "metrics.json").write_text(json.dumps(metrics))
    print("saved model to", out / "model.joblib")


if __name__ == "__main__":
    main()
'''

# A quick script that writes a real (trivial) model: for behaviour that needs no real fit.
QUICK_HEAD = """
import json, sys, time
from pathlib import Path

import joblib
from sklearn.dummy import DummyRegressor

out = Path("artifacts")
out.mkdir(exist_ok=True)


def save_model():
    joblib.dump(DummyRegressor().fit([[0.0], [1.0]], [10.0, 20.0]), out / "model.joblib")


def save_metrics(payload):
    (out / "metrics.json").write_text(json.dumps(payload))
"""


@dataclass
class Echoed:
    """What `echo` received, with the monotonic time each line arrived."""

    lines: list[str] = field(default_factory=list)
    times: list[float] = field(default_factory=list)

    def __call__(self, line: str) -> None:
        self.lines.append(line)
        self.times.append(time.monotonic())


@dataclass(frozen=True)
class HandoutRun:
    """One real run of the hand-out script, shared by the tests that only read its results."""

    workdir: Path
    into: Path
    run: ScriptRun
    echoed: Echoed


def write_handout(folder: Path, *, rows: int = 400) -> Path:
    """Write the hand-out train.py, its config.yaml and a small S5E5-layout data.csv."""
    folder.mkdir(parents=True, exist_ok=True)
    generate(rows, seed=11).to_csv(folder / "data.csv", index=False)
    (folder / "config.yaml").write_text(yaml.safe_dump(HANDOUT_CONFIG), encoding="utf-8")
    script = folder / "train.py"
    script.write_text(HANDOUT, encoding="utf-8")
    return script


def write_script(folder: Path, body: str, *, quick: bool = True) -> Path:
    """Write a script (after the quick-model helpers when ``quick``) as train.py in ``folder``."""
    script = folder / "train.py"
    head = QUICK_HEAD if quick else ""
    script.write_text(head + textwrap.dedent(body), encoding="utf-8")
    return script


def run_in(
    folder: Path, script: Path, args: tuple[str, ...] = (), echo: Echoed | None = None
) -> ScriptRun:
    """Run ``script`` in ``folder`` with the config it would find, into ``folder/run``."""
    config = script_config(args, None, cwd=folder)
    return run_script(script, args, config, into=folder / "run", echo=echo or Echoed(), cwd=folder)


@pytest.fixture(scope="module")
def handout(tmp_path_factory: pytest.TempPathFactory) -> HandoutRun:
    """The hand-out run once, as `calops train --script train.py -- --config config.yaml`."""
    workdir = tmp_path_factory.mktemp("handout")
    script = write_handout(workdir)
    args = ("--config", "config.yaml")
    echoed = Echoed()
    config = script_config(args, None, cwd=workdir)
    into = workdir / "runs" / ".staging-test"
    run = run_script(script, args, config, into=into, echo=echoed, cwd=workdir)
    return HandoutRun(workdir, into, run, echoed)


# -- the hand-out ------------------------------------------------------------------------------


def test_handout_output_is_echoed_in_order_and_logged(handout: HandoutRun) -> None:
    """Every printed line (stdout and stderr) reaches echo in order and lands in train.log."""
    lines = handout.echoed.lines
    expected = ["loaded 400 rows", "fitting random forest", "rmsle ", "saved model to"]
    positions = [next(i for i, line in enumerate(lines) if line.startswith(e)) for e in expected]
    assert positions == sorted(positions)
    assert handout.run.log_path == handout.into / "train.log"
    assert handout.run.log_path.read_text(encoding="utf-8").splitlines() == lines


def test_handout_params_are_the_scripts_own(handout: HandoutRun) -> None:
    """Params come from the hand-out's config and its fitted estimator, not calops's defaults."""
    params = handout.run.params
    assert params["model.type"] == "random_forest"
    assert params["model.params.n_estimators"] == 20
    assert params["data.path"] == "data.csv"
    assert params["estimator.n_estimators"] == 20
    assert params["estimator.max_depth"] == 6
    assert "model.params.max_iter" not in params
    assert handout.run.estimator == "RandomForestRegressor"


def test_handout_data_source_is_its_csv(handout: HandoutRun) -> None:
    assert handout.run.data_source == "data.csv"
    assert handout.run.synthetic is False


def test_handout_outputs_are_moved_into_the_run_folder(handout: HandoutRun) -> None:
    """Nothing is left in artifacts/ that could be served as if it were this run's model."""
    run = handout.run
    assert run.model_path == handout.into / "model.joblib"
    assert run.metrics_path == handout.into / "metrics.json"
    assert run.card_path is None
    assert set(json.loads(run.metrics_path.read_text(encoding="utf-8"))) == {
        "rmsle",
        "rmse",
        "mae",
        "r2",
    }
    assert list((handout.workdir / "artifacts").iterdir()) == []


def test_handout_model_is_made_safe_and_served_without_pickle(handout: HandoutRun) -> None:
    """calops turns the hand-out's pickle into model.skops, which loads with no pickle allowed."""
    run = handout.run
    assert (run.safe_path, run.pickle_note) == (handout.into / "model.skops", None)
    assert run.served_path == handout.into / "model.skops"
    safe = load_model(handout.into / "model.skops")
    rows = probe_rows(None)
    np.testing.assert_array_equal(PlainPredictor(safe)(rows), PlainPredictor(run.model)(rows))


def test_a_model_with_an_untrusted_type_keeps_only_its_pickle(tmp_path: Path) -> None:
    """A function calops does not trust: no model.skops, and one sentence on --allow-pickle."""
    script = write_script(
        tmp_path,
        """
        import operator
        from sklearn.compose import TransformedTargetRegressor
        model = TransformedTargetRegressor(
            regressor=DummyRegressor(), func=operator.pos, inverse_func=operator.pos,
            check_inverse=False,
        ).fit([[0.0], [1.0]], [10.0, 20.0])
        joblib.dump(model, out / "model.joblib")
        save_metrics({"rmsle": 0.5})
        """,
    )
    run = run_in(tmp_path, script)
    assert run.safe_path is None
    assert run.served_path == tmp_path / "run" / "model.joblib"
    assert not (tmp_path / "run" / "model.skops").exists()
    assert run.pickle_note is not None
    assert "--allow-pickle (CALOPS_ALLOW_PICKLE=true)" in run.pickle_note
    assert "_operator.pos" in run.pickle_note
    assert run.pickle_note.count(". ") == 0


def test_card_for_the_handout_names_its_data(handout: HandoutRun) -> None:
    """The card calops writes says data.csv, never the synthetic default the script did not use."""
    metrics = json.loads(handout.run.metrics_path.read_text(encoding="utf-8"))
    path = write_script_card(handout.run, model_name="calories", metrics=metrics)
    card = json.loads(path.read_text(encoding="utf-8"))
    assert path == handout.into / "model_card.json"
    assert card["data"] == {"source": "data.csv", "synthetic": False}
    assert card["model_file"] == "model.skops"
    assert card["sha256"] == file_sha256(handout.into / "model.skops")
    assert card["model_files"]["model.joblib"] == file_sha256(handout.into / "model.joblib")
    assert card["metrics"]["rmsle"] == metrics["rmsle"]
    assert "written_by" in card


# -- live output -------------------------------------------------------------------------------


def test_lines_arrive_while_the_script_runs(tmp_path: Path) -> None:
    """The first line reaches echo about a second before the script's last one is printed."""
    script = write_script(
        tmp_path,
        """
        print("starting")
        time.sleep(1.0)
        save_model()
        save_metrics({"rmsle": 0.5})
        sys.stdout.write("finished without a newline")
        """,
    )
    echoed = Echoed()
    run_in(tmp_path, script, echo=echoed)
    assert echoed.lines == ["starting", "finished without a newline"]
    assert echoed.times[1] - echoed.times[0] >= 0.8
    log = (tmp_path / "run" / "train.log").read_text(encoding="utf-8")
    assert log == "starting\nfinished without a newline\n"


def test_undecodable_output_is_replaced_not_fatal(tmp_path: Path) -> None:
    script = write_script(
        tmp_path,
        """
        sys.stdout.buffer.write(b"bad byte \\xff here\\n")
        save_model()
        save_metrics({"rmsle": 0.5})
        """,
    )
    echoed = Echoed()
    run_in(tmp_path, script, echo=echoed)
    assert echoed.lines == ["bad byte \ufffd here"]


# -- failures ----------------------------------------------------------------------------------


def test_failing_script_says_code_last_lines_and_log(tmp_path: Path) -> None:
    """Exit 3 after printing: the message has the code, the last 5 lines and the log's path."""
    script = write_script(
        tmp_path,
        """
        import sys
        for n in range(1, 8):
            print(f"step {n}")
            print()
        sys.exit(3)
        """,
        quick=False,
    )
    with pytest.raises(ScriptError) as caught:
        run_in(tmp_path, script)
    message = str(caught.value)
    log = tmp_path / "run" / "train.log"
    assert "exit code 3" in message
    assert "nothing was logged" in message
    assert "step 3 | step 4 | step 5 | step 6 | step 7" in message
    assert "step 2" not in message
    assert str(log) in message
    assert [line for line in log.read_text(encoding="utf-8").splitlines() if line] == [
        f"step {n}" for n in range(1, 8)
    ]


def test_failing_script_leaves_no_fresh_model_behind(tmp_path: Path) -> None:
    """A model written before a crash is moved out of artifacts/, so it cannot be served."""
    script = write_script(tmp_path, "save_model()\nraise SystemExit(2)\n")
    with pytest.raises(ScriptError, match="exit code 2"):
        run_in(tmp_path, script)
    assert not (tmp_path / "artifacts" / "model.joblib").exists()
    assert (tmp_path / "run" / "model.joblib").is_file()


def test_script_without_metrics_is_refused(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text("outputs: {dir: artifacts}\n", encoding="utf-8")
    script = write_script(tmp_path, "save_model()\n")
    with pytest.raises(ScriptError) as caught:
        run_in(tmp_path, script)
    message = str(caught.value)
    assert "metrics.json" in message
    assert "outputs.dir/outputs.metrics" in message
    assert "config.yaml" in message


def test_stale_outputs_from_an_earlier_run_are_not_accepted(tmp_path: Path) -> None:
    """Model and metrics left by an earlier run do not count as this run's."""
    artifacts = tmp_path / "artifacts"
    artifacts.mkdir()
    for name in ("model.joblib", "metrics.json"):
        (artifacts / name).write_text("{}", encoding="utf-8")
        os.utime(artifacts / name, (1_000_000, 1_000_000))
    script = write_script(tmp_path, 'print("did nothing")\n', quick=False)
    with pytest.raises(ScriptError, match=r"did not write .*model\.joblib during this run"):
        run_in(tmp_path, script)
    assert (artifacts / "model.joblib").is_file()
    assert not (tmp_path / "run" / "model.joblib").exists()


def test_metrics_must_be_a_json_object(tmp_path: Path) -> None:
    script = write_script(tmp_path, "save_model()\nsave_metrics([0.1, 0.2])\n")
    with pytest.raises(ScriptError, match="must hold a JSON object"):
        run_in(tmp_path, script)


def test_missing_script_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ScriptError, match="does not exist"):
        run_in(tmp_path, tmp_path / "nope.py")


# -- what the script wrote besides the model ---------------------------------------------------


def test_params_file_and_card_are_taken_and_moved(tmp_path: Path) -> None:
    """A params.json beside metrics.json is logged and moved; a card the script wrote is kept."""
    script = write_script(
        tmp_path,
        """
        save_model()
        save_metrics({"rmsle": 0.5})
        (out / "params.json").write_text(json.dumps({"lr": 0.1, "opt": {"name": "adam"}}))
        (out / "model_card.json").write_text(json.dumps({"name": "mine"}))
        """,
    )
    run = run_in(tmp_path, script)
    assert run.params["lr"] == 0.1
    assert run.params["opt.name"] == "adam"
    assert run.params["estimator.strategy"] == "mean"
    assert run.estimator == "DummyRegressor"
    assert run.card_path == tmp_path / "run" / "model_card.json"
    assert write_script_card(run, model_name="calories", metrics={}) == run.card_path
    assert json.loads(run.card_path.read_text(encoding="utf-8")) == {"name": "mine"}
    assert (tmp_path / "run" / "params.json").is_file()
    assert list((tmp_path / "artifacts").iterdir()) == []


def test_outputs_follow_the_config(tmp_path: Path) -> None:
    """outputs.dir and outputs.model say where the script writes; the model keeps its name."""
    config = {"data": {"source": "synthetic"}, "outputs": {"dir": "out", "model": "rf.pkl"}}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    script = write_script(
        tmp_path,
        """
        from sklearn.dummy import DummyRegressor as Dummy
        Path("out").mkdir()
        joblib.dump(Dummy().fit([[0.0]], [1.0]), "out/rf.pkl")
        Path("out/metrics.json").write_text("{}")
        """,
    )
    run = run_in(tmp_path, script)
    assert run.model_path == tmp_path / "run" / "rf.pkl"
    assert run.synthetic is True
    assert run.data_source == "synthetic"


# -- finding and reading the config -------------------------------------------------------------


def write_yaml(path: Path, payload: object) -> Path:
    path.write_text(yaml.safe_dump(payload), encoding="utf-8")
    return path


def test_config_without_data_key_has_unknown_source(tmp_path: Path) -> None:
    write_yaml(tmp_path / "config.yaml", {"model": {"type": "ridge"}})
    config = script_config((), None, cwd=tmp_path)
    assert config.path == tmp_path / "config.yaml"
    assert config.data_source == "unknown"
    assert config.synthetic is False
    assert config.params == {"model.type": "ridge"}


@pytest.mark.parametrize(
    ("data", "source"),
    [
        ({"source": "synthetic"}, "synthetic"),
        ({"file": "x.csv"}, "x.csv"),
        ({"csv": "y.csv"}, "y.csv"),
        ({"train": "t.csv", "test": "v.csv"}, "t.csv"),
        ({"train_path": "tp.csv"}, "tp.csv"),
        ({"train": {"path": "nested.csv"}}, "nested.csv"),
        ("plain.csv", "plain.csv"),
        ({"rows": 5}, "unknown"),
    ],
)
def test_data_source_keys(tmp_path: Path, data: object, source: str) -> None:
    write_yaml(tmp_path / "config.yaml", {"data": data})
    config = script_config((), None, cwd=tmp_path)
    assert config.data_source == source
    assert config.synthetic is (source == "synthetic")


@pytest.mark.parametrize(
    "args",
    [
        ("--config", "conf/exp.yaml"),
        ("--config=conf/exp.yaml",),
        ("-c", "conf/exp.yaml"),
        ("--epochs", "3", "--config", "other.yaml", "--config", "conf/exp.yaml"),
    ],
)
def test_config_named_in_the_scripts_arguments(tmp_path: Path, args: tuple[str, ...]) -> None:
    """The script's own --config wins over calops's and over ./config.yaml."""
    (tmp_path / "conf").mkdir()
    write_yaml(tmp_path / "conf" / "exp.yaml", {"data": {"path": "exp.csv"}})
    write_yaml(tmp_path / "other.yaml", {"data": {"path": "other.csv"}})
    write_yaml(tmp_path / "config.yaml", {"data": {"path": "local.csv"}})
    fallback = write_yaml(tmp_path / "calops.yaml", {"data": {"path": "calops.csv"}})
    config = script_config(args, fallback, cwd=tmp_path)
    assert config.path == tmp_path / "conf" / "exp.yaml"
    assert config.data_source == "exp.csv"


def test_fallback_then_local_config_then_none(tmp_path: Path) -> None:
    fallback = write_yaml(tmp_path / "calops.yaml", {"data": {"path": "calops.csv"}})
    write_yaml(tmp_path / "config.yaml", {"data": {"path": "local.csv"}})
    assert script_config(("--epochs", "3"), fallback, cwd=tmp_path).data_source == "calops.csv"
    assert script_config((), None, cwd=tmp_path).data_source == "local.csv"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert script_config((), None, cwd=empty) == ScriptConfig(
        path=None,
        params={},
        data_source="unknown",
        synthetic=False,
        model_path=Path("artifacts/model.joblib"),
        metrics_path=Path("artifacts/metrics.json"),
        card_path=Path("artifacts/model_card.json"),
    )


def test_arguments_after_double_dash_are_not_options(tmp_path: Path) -> None:
    config = script_config(("--", "--config", "x.yaml"), None, cwd=tmp_path)
    assert config.path is None


def test_handout_keys_calops_schema_would_refuse_are_fine(tmp_path: Path) -> None:
    """A config with keys calops's TrainConfig forbids is read as plain YAML."""
    write_yaml(tmp_path / "config.yaml", {"seed": 1, "model": {"type": "rf", "extra": [1, 2]}})
    config = script_config((), None, cwd=tmp_path)
    assert config.params == {"seed": 1, "model.type": "rf", "model.extra": [1, 2]}


def test_invalid_yaml_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text("data: [unclosed\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"is not valid YAML"):
        script_config(("--config", "config.yaml"), None, cwd=tmp_path)


def test_non_mapping_yaml_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text("- a\n- b\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="mapping"):
        script_config((), None, cwd=tmp_path)


def test_named_config_that_does_not_exist_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        script_config(("--config", "missing.yaml"), None, cwd=tmp_path)
