"""`calops simulate` as a command: its options become one SimulationSettings, bounds enforced."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from calopsctl.cli import app
from calopsctl.simulator import main as simulator_main
from calopsctl.simulator.settings import DEFAULT_DURATION_S, DriftKind, SimulationSettings

runner = CliRunner()


@pytest.fixture
def runs(isolated_home: Path, monkeypatch: pytest.MonkeyPatch) -> list[SimulationSettings]:
    """The settings each `calops simulate` hands to run_simulation (which then does nothing)."""
    seen: list[SimulationSettings] = []

    def run_simulation(settings: SimulationSettings, *, json_output: bool) -> int:
        seen.append(settings)
        return 0

    monkeypatch.setattr(simulator_main, "run_simulation", run_simulation)
    monkeypatch.delenv("URL", raising=False)
    monkeypatch.delenv("CALOPS_URL", raising=False)
    return seen


def test_options_become_one_settings_object(runs: list[SimulationSettings]) -> None:
    """Every option lands in the SimulationSettings the run gets."""
    argv = ["simulate", "--url", "http://h:1/", "--count", "5", "--rps", "7.5"]
    argv += ["--batch-size", "4", "--drift", "concept", "--feedback-fraction", "0.5"]
    result = runner.invoke(app, argv)
    assert result.exit_code == 0, result.output
    (settings,) = runs
    assert (settings.url, settings.count, settings.duration) == ("http://h:1", 5, None)
    assert (settings.rps, settings.batch_size, settings.feedback_fraction) == (7.5, 4, 0.5)
    assert settings.drift is DriftKind.CONCEPT


@pytest.mark.parametrize(
    ("argv", "variables", "first_line"),
    [
        (["--url", "http://h:1/"], {}, "Target: http://h:1 (from --url)."),
        ([], {"CALOPS_URL": "http://h:2"}, "Target: http://h:2 (from CALOPS_URL)."),
        ([], {"URL": "http://h:3/"}, "Target: http://h:3 (from URL)."),
    ],
)
def test_first_line_names_the_given_target_and_its_source(
    runs: list[SimulationSettings],
    monkeypatch: pytest.MonkeyPatch,
    argv: list[str],
    variables: dict[str, str],
    first_line: str,
) -> None:
    """A target given by option or variable is named, with where it came from, on stderr."""
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    result = runner.invoke(app, ["simulate", "--count", "1", "--json", *argv])
    assert result.exit_code == 0, result.output
    assert result.stderr.splitlines()[0] == first_line


def test_first_line_names_the_stack_when_it_gives_the_target(
    runs: list[SimulationSettings], isolated_home: Path
) -> None:
    """Without a given URL the stack folder is named (here none is recorded: 8000)."""
    result = runner.invoke(app, ["simulate", "--count", "1"])
    assert result.exit_code == 0, result.output
    assert result.stderr.splitlines()[0] == f"Stack: {isolated_home / '.calops'} (CALOPS_HOME)."
    assert runs[0].url == "http://127.0.0.1:8000"


def test_no_length_given_runs_for_the_default_duration(runs: list[SimulationSettings]) -> None:
    """Without --duration or --count the run lasts the default duration."""
    assert runner.invoke(app, ["simulate"]).exit_code == 0
    assert runs[0].duration == DEFAULT_DURATION_S
    assert runs[0].count is None


def test_seed_url_variable_picks_the_target(
    runs: list[SimulationSettings], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The hand-out's `URL=...` sets the target when --url and CALOPS_URL are not given."""
    monkeypatch.setenv("URL", "http://127.0.0.1:8010/")
    assert runner.invoke(app, ["simulate", "--count", "1"]).exit_code == 0
    assert runs[0].url == "http://127.0.0.1:8010"


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("--rps", "0"),
        ("--rps", "inf"),
        ("--rps", "nan"),
        ("--duration", "0"),
        ("--count", "0"),
        ("--feedback-delay", "-1"),
        ("--feedback-fraction", "1.5"),
        ("--drift-start", "-1"),
        ("--batch-size", "0"),
        ("--max-in-flight", "0"),
        ("--timeout", "0"),
        ("--rps", "fast"),
        ("--count", "1.5"),
        ("--seed", "x"),
        ("--drift", "sideways"),
    ],
)
def test_out_of_range_option_is_a_usage_error_naming_it(
    runs: list[SimulationSettings], option: str, value: str
) -> None:
    """A bad value exits 2 naming the option, without pydantic's prefix, and nothing is sent."""
    result = runner.invoke(app, ["simulate", option, value])
    assert result.exit_code == 2
    assert option in result.output
    assert "Value error" not in result.output
    assert runs == []


def test_unknown_drift_lists_the_choices_in_one_sentence(runs: list[SimulationSettings]) -> None:
    """--drift sideways: a usage error saying the value and the real choices, nothing more."""
    result = runner.invoke(app, ["simulate", "--drift", "sideways"])
    assert result.exit_code == 2
    words = " ".join(result.output.replace("│", " ").split())  # the error box wraps it
    message = (
        "Invalid value for '--drift': 'sideways' is not one of none, covariate, concept, both."
    )
    assert message in words
    assert runs == []


def test_every_drift_kind_is_accepted(runs: list[SimulationSettings]) -> None:
    """The parser that words the error still turns each choice into its DriftKind."""
    for kind in DriftKind:
        assert runner.invoke(app, ["simulate", "--drift", kind.value]).exit_code == 0
    assert [settings.drift for settings in runs] == list(DriftKind)


def test_duration_and_count_together_are_refused(runs: list[SimulationSettings]) -> None:
    """--duration and --count exclude each other: one usage error naming both."""
    result = runner.invoke(app, ["simulate", "--duration", "5", "--count", "5"])
    assert result.exit_code == 2
    assert "--duration / --count" in result.output
    assert runs == []


def test_interrupted_run_exits_130(isolated_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The exit code run_simulation returns (130 after Ctrl-C) is the command's."""
    monkeypatch.setattr(simulator_main, "run_simulation", lambda settings, json_output: 130)
    assert runner.invoke(app, ["simulate", "--count", "1"]).exit_code == 130
