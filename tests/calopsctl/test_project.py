"""Finding the stack folder from anywhere (calopsctl.project) and the first line naming it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from calopsctl import project
from calopsctl.cli import app
from calopsctl.project import (
    Home,
    describe,
    find_home,
    forget_stack,
    locate,
    remember_stack,
    running_stacks,
)
from calopsctl.services import NAMES
from calopsctl.settings import CliSettings
from calopsctl.simulator.settings import SimulationSettings
from calopsctl.state import StackState, clear_state, save_state
from support import free_port

runner = CliRunner()


@pytest.fixture
def state_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private XDG_STATE_HOME, so the index of running stacks starts empty."""
    state = tmp_path / "xdg-state"
    monkeypatch.setenv("XDG_STATE_HOME", str(state))
    return state


@pytest.fixture
def nowhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, state_home: Path) -> Path:
    """No CALOPS_HOME: commands must find their stack from the working folder."""
    monkeypatch.delenv("CALOPS_HOME", raising=False)
    work = tmp_path / "work"
    work.mkdir()
    return work


def record(home: Path) -> Path:
    """Keep a stack record in ``home`` (which lists it in the index) and return ``home``."""
    save_state(home, StackState(runtime="local", ports={"api": 1}))
    return home


def unused_ports() -> dict[str, int]:
    """Ports nobody listens on, one per service."""
    return {name: free_port() for name in NAMES}


# ---------------------------------------------------------------- find_home


def test_find_home_walks_up_from_nested_folders(tmp_path: Path) -> None:
    """A .calops in an ancestor is found from any depth below it."""
    (tmp_path / ".calops").mkdir()
    deep = tmp_path / "a" / "b" / "c"
    deep.mkdir(parents=True)
    assert find_home(deep) == tmp_path / ".calops"
    assert find_home(tmp_path) == tmp_path / ".calops"


def test_find_home_takes_the_nearest(tmp_path: Path) -> None:
    """With two .calops on the way up, the closer one wins, as with .git."""
    (tmp_path / ".calops").mkdir()
    inner = tmp_path / "inner"
    (inner / ".calops").mkdir(parents=True)
    assert find_home(inner / "x") == inner / ".calops"


def test_find_home_skips_a_calops_file(tmp_path: Path) -> None:
    """A file named .calops is not a state folder; the search goes on above it."""
    (tmp_path / ".calops").mkdir()
    sub = tmp_path / "sub"
    sub.mkdir()
    (sub / ".calops").write_text("not a folder")
    assert find_home(sub) == tmp_path / ".calops"


def test_find_home_none_when_there_is_none(tmp_path: Path) -> None:
    """No .calops up to the root: None (assumes none at the tmp folder's ancestors)."""
    assert find_home(tmp_path) is None


# ---------------------------------------------------------------- locate


def test_locate_explicit_wins_and_is_absolute(tmp_path: Path) -> None:
    """CALOPS_HOME wins over a found folder; a relative one is taken from the working folder."""
    (tmp_path / ".calops").mkdir()
    home = locate(Path("state"), tmp_path)
    assert home == Home(tmp_path / "state", "CALOPS_HOME", tmp_path)
    assert home.project_root == tmp_path


def test_locate_found_and_new(tmp_path: Path) -> None:
    """Found above the working folder, else a new ./.calops that is not created."""
    sub = tmp_path / "proj" / "sub"
    sub.mkdir(parents=True)
    new = locate(None, sub)
    assert (new.path, new.origin) == (sub / ".calops", "new")
    assert not new.path.exists()
    (tmp_path / "proj" / ".calops").mkdir()
    found = locate(None, sub)
    assert (found.path, found.origin) == (tmp_path / "proj" / ".calops", "found")
    assert found.project_root == tmp_path / "proj"


# ---------------------------------------------------------------- the index


def test_index_remembers_forgets_and_prunes(tmp_path: Path, state_home: Path) -> None:
    """save_state lists a stack, clear_state drops it, a deleted record is pruned."""
    first = record(tmp_path / "a" / ".calops")
    second = record(tmp_path / "b" / ".calops")
    remember_stack(first)  # twice is once
    assert running_stacks() == [first, second]
    assert running_stacks(excluding=first) == [second]
    clear_state(first)
    assert running_stacks() == [second]
    (second / "stack.json").unlink()
    assert running_stacks() == []
    index = json.loads((state_home / "calops" / "stacks.json").read_text())
    assert index == {"stacks": []}
    forget_stack(second)  # not listed: nothing to do


def test_index_respects_xdg_state_home(tmp_path: Path, state_home: Path) -> None:
    """The index lives in $XDG_STATE_HOME/calops/stacks.json with absolute paths."""
    home = record(tmp_path / ".calops")
    index = json.loads((state_home / "calops" / "stacks.json").read_text())
    assert index == {"stacks": [str(home)]}


def test_index_defaults_under_the_user_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without XDG_STATE_HOME (or with a relative one) it is ~/.local/state/calops."""
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("XDG_STATE_HOME")
    assert project.index_path() == tmp_path / ".local" / "state" / "calops" / "stacks.json"
    monkeypatch.setenv("XDG_STATE_HOME", "relative/state")
    assert project.index_path() == tmp_path / ".local" / "state" / "calops" / "stacks.json"


@pytest.mark.parametrize("content", ["{not json", '["/a"]', '{"stacks": 3}', "\xff"])
def test_corrupt_index_counts_as_empty(tmp_path: Path, state_home: Path, content: str) -> None:
    """A damaged index is read as empty and replaced on the next write."""
    index = state_home / "calops" / "stacks.json"
    index.parent.mkdir(parents=True)
    index.write_text(content, encoding="latin-1")
    assert running_stacks() == []
    home = record(tmp_path / ".calops")
    assert running_stacks() == [home]


def test_unwritable_index_is_skipped(tmp_path: Path, state_home: Path) -> None:
    """An index that cannot be written (its folder is a file) never makes a command fail."""
    state_home.write_text("a file where the state folder should be")
    home = record(tmp_path / ".calops")
    assert running_stacks() == []
    clear_state(home)
    assert not (home / "stack.json").exists()


# ---------------------------------------------------------------- describe


def test_describe_found_and_explicit(tmp_path: Path, state_home: Path) -> None:
    """Found folders name where the search started; CALOPS_HOME says so."""
    root = tmp_path / "proj"
    sub = root / "sub"
    sub.mkdir(parents=True)
    (root / ".calops").mkdir()
    assert describe(locate(None, sub)) == f"Stack: {root}/.calops (found from {sub})."
    assert describe(locate(None, root)) == f"Stack: {root}/.calops (in the current folder)."
    explicit = locate(Path("/x/.calops"), sub)
    assert describe(explicit) == "Stack: /x/.calops (CALOPS_HOME)."


def test_describe_new_without_and_with_a_stack_elsewhere(tmp_path: Path, state_home: Path) -> None:
    """Nothing here: say so, and where another stack runs with how to reach it."""
    here = tmp_path / "y"
    here.mkdir()
    home = locate(None, here)
    assert describe(home) == f"No calops stack in {here} or its parents."
    other = record(tmp_path / "proj" / ".calops")
    assert describe(home) == (
        f"No calops stack in {here} or its parents; a stack runs from {other.parent} "
        f"(set CALOPS_HOME={other} or run from there)."
    )
    assert describe(home, starting=True) == (
        f"New stack: {here}/.calops (none in {here} or its parents); a stack runs from "
        f"{other.parent} (set CALOPS_HOME={other} or run from there)."
    )


def test_describe_names_several_stacks_and_odd_homes(tmp_path: Path, state_home: Path) -> None:
    """Several stacks are listed; a home not named .calops is named with its variable."""
    here = locate(None, tmp_path)
    odd = record(tmp_path / "custom state")
    assert describe(here).endswith(f"; a stack runs in {odd} (set CALOPS_HOME='{odd}' to use it).")
    other = record(tmp_path / "proj" / ".calops")
    assert describe(here).endswith(
        f"; stacks run from {odd}, {other.parent} "
        f"(set CALOPS_HOME='{odd}' or run from one of them)."
    )


def test_describe_found_folder_where_nothing_is_up(tmp_path: Path, state_home: Path) -> None:
    """A found folder without a record points at the stack that does run."""
    (tmp_path / "here" / ".calops").mkdir(parents=True)
    other = record(tmp_path / "proj" / ".calops")
    home = locate(None, tmp_path / "here")
    assert describe(home) == (
        f"Stack: {home.path} (in the current folder), where nothing is up; a stack runs from "
        f"{other.parent} (set CALOPS_HOME={other} or run from there)."
    )
    assert describe(home, starting=True) == f"Stack: {home.path} (in the current folder)."


# ---------------------------------------------------------------- settings


def test_settings_find_the_home_above(nowhere: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without CALOPS_HOME the settings carry the found folder and how it was found."""
    (nowhere / ".calops").mkdir()
    sub = nowhere / "sub"
    sub.mkdir()
    monkeypatch.chdir(sub)
    settings = CliSettings()
    assert settings.home == nowhere / ".calops"
    assert settings.home_info.origin == "found"
    monkeypatch.setenv("CALOPS_HOME", "")
    assert CliSettings().home_info.origin == "found"
    monkeypatch.setenv("CALOPS_HOME", "mine")
    assert CliSettings().home_info == Home(sub / "mine", "CALOPS_HOME", sub)


# ---------------------------------------------------------------- through the CLI


def test_health_from_a_subfolder_checks_the_stack_above(
    nowhere: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """From /proj/sub, health names /proj/.calops first and probes its (down) services."""
    save_state(nowhere / ".calops", StackState(runtime="local", ports=unused_ports()))
    sub = nowhere / "sub" / "deeper"
    sub.mkdir(parents=True)
    monkeypatch.chdir(sub)
    result = runner.invoke(app, ["health", "--json"])
    assert result.exit_code == 1
    first = result.stderr.splitlines()[0]
    assert first == f"Stack: {nowhere}/.calops (found from {sub})."
    assert "Nothing is up" not in result.stderr
    report = json.loads(result.stdout)
    assert report["healthy"] is False
    assert {check["status"] for check in report["checks"]} == {"down"}


def test_health_elsewhere_names_the_running_stack(
    nowhere: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """From an unrelated folder, the first line says where a stack runs and how to reach it."""
    save_state(nowhere / ".calops", StackState(runtime="local", ports=unused_ports()))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    result = runner.invoke(app, ["health"])
    assert result.exit_code == 1
    lines = result.stderr.splitlines()
    assert lines[0] == (
        f"No calops stack in {elsewhere} or its parents; a stack runs from {nowhere} "
        f"(set CALOPS_HOME={nowhere}/.calops or run from there)."
    )
    assert "Nothing is up" in lines[1]
    assert not (elsewhere / ".calops").exists()


def test_down_from_a_subfolder_takes_the_stack_above_down(
    nowhere: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """down from a subfolder removes the record above it and the stack leaves the index."""
    home = nowhere / ".calops"
    save_state(home, StackState(runtime="local", ports=unused_ports()))
    (nowhere / "sub").mkdir()
    monkeypatch.chdir(nowhere / "sub")
    result = runner.invoke(app, ["down"])
    assert result.exit_code == 0, result.output
    assert result.stderr.splitlines()[0] == f"Stack: {home} (found from {nowhere / 'sub'})."
    assert not (home / "stack.json").exists()
    assert running_stacks() == []


def test_simulate_names_the_stack_it_targets(
    nowhere: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without --url, CALOPS_URL or URL, simulate says which stack it takes its target from."""
    from calopsctl.simulator import main as simulator_main

    ports = unused_ports()
    save_state(nowhere / ".calops", StackState(runtime="local", ports=ports))
    (nowhere / "sub").mkdir()
    monkeypatch.chdir(nowhere / "sub")
    for name in ("URL", "CALOPS_URL"):
        monkeypatch.delenv(name, raising=False)
    urls: list[str] = []

    def run_simulation(run: SimulationSettings, *, json_output: bool) -> int:
        urls.append(run.url)
        return 0

    monkeypatch.setattr(simulator_main, "run_simulation", run_simulation)
    result = runner.invoke(app, ["simulate", "--count", "1"])
    assert result.exit_code == 0, result.output
    assert result.stderr.splitlines()[0].startswith(f"Stack: {nowhere}/.calops (found from ")
    assert urls == [f"http://127.0.0.1:{ports['api']}"]
