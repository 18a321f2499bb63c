"""Choosing the tracking store, checking it answers, and MLflow's scoped environment."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from calapi.errors import CalopsError
from calopsctl import tracking
from calopsctl.services import DEFAULT_PORTS
from calopsctl.state import StackState, save_state
from support import free_port

FILE_STORE = "MLFLOW_ALLOW_FILE_STORE"


@pytest.fixture
def home(isolated_home: Path) -> Path:
    """The state folder of isolated_home."""
    return isolated_home / ".calops"


def test_explicit_sqlite_keeps_artifacts_beside_the_database(
    isolated_home: Path, home: Path
) -> None:
    """A given sqlite URI is used as is, with artifacts in mlartifacts/ next to the .db file."""
    target = tracking.resolve_target(f"sqlite:///{isolated_home}/store/runs.db", home=home)
    assert target.uri == f"sqlite:///{isolated_home}/store/runs.db"
    assert target.artifact_root == isolated_home / "store" / "mlartifacts"
    assert not target.is_remote


def test_explicit_file_store_is_used_as_given(isolated_home: Path, home: Path) -> None:
    """file:./mlruns is accepted, made absolute, and keeps artifacts inside the file store."""
    target = tracking.resolve_target("file:./mlruns", home=home)
    assert target.uri == (isolated_home / "mlruns").as_uri()
    assert target.artifact_root is None


def test_http_target_is_remote(home: Path) -> None:
    """An http URI is a remote server (checked with /health before training)."""
    assert tracking.resolve_target("http://127.0.0.1:5000", home=home).is_remote


def test_unknown_scheme_is_one_sentence(home: Path) -> None:
    """An unsupported URI scheme fails with a CalopsError naming the supported ones."""
    with pytest.raises(CalopsError, match=r"not supported; use file:\./mlruns"):
        tracking.resolve_target("ftp://example/store", home=home)


def test_default_is_local_sqlite_under_the_home_given(tmp_path: Path) -> None:
    """With nothing given and no stack, runs go to <home>/mlflow.db, artifacts beside."""
    home = tmp_path / "state"
    target = tracking.resolve_target(None, home=home)
    assert target.uri == f"sqlite:///{home / 'mlflow.db'}"
    assert target.artifact_root == home / "mlartifacts"
    assert target.origin == f"no stack runs from {home}: its local SQLite store"
    assert target.local_default


def test_a_recorded_stack_that_does_not_answer_is_skipped(home: Path) -> None:
    """A stack record whose MLflow port is closed falls back to the local SQLite store."""
    save_state(home, StackState(runtime="local", ports={**DEFAULT_PORTS, "mlflow": free_port()}))
    assert tracking.resolve_target(None, home=home).uri.startswith("sqlite:///")


def test_unreachable_server_fails_before_training(home: Path) -> None:
    """check_reachable raises one sentence for an http server that does not answer."""
    target = tracking.resolve_target(f"http://127.0.0.1:{free_port()}", home=home)
    with pytest.raises(tracking.TrackingError, match=r"does not answer on /health"):
        tracking.check_reachable(target)


def test_local_stores_need_no_reachability_check(isolated_home: Path, home: Path) -> None:
    """File and SQLite stores are not probed over HTTP."""
    tracking.check_reachable(tracking.resolve_target("file:./mlruns", home=home))
    tracking.check_reachable(tracking.resolve_target(f"sqlite:///{isolated_home}/x.db", home=home))


def test_scoped_environ_sets_then_restores(monkeypatch: pytest.MonkeyPatch) -> None:
    """Values hold inside the block; afterwards a replaced one is back and a new one is gone."""
    monkeypatch.setenv("CALOPS_TEST_KEPT", "before")
    monkeypatch.delenv("CALOPS_TEST_NEW", raising=False)
    with tracking.scoped_environ({"CALOPS_TEST_KEPT": "inside", "CALOPS_TEST_NEW": "inside"}):
        assert os.environ["CALOPS_TEST_KEPT"] == os.environ["CALOPS_TEST_NEW"] == "inside"
    assert os.environ["CALOPS_TEST_KEPT"] == "before"
    assert "CALOPS_TEST_NEW" not in os.environ


def test_file_store_opt_in_only_for_file_stores(monkeypatch: pytest.MonkeyPatch) -> None:
    """file: targets get MLFLOW_ALLOW_FILE_STORE inside the scope; a user's progress bar wins."""
    monkeypatch.delenv(FILE_STORE, raising=False)
    monkeypatch.setenv(tracking.PROGRESS_BAR, "true")
    with tracking.mlflow_environment(tracking.TrackingTarget("file:///tmp/mlruns", "test")):
        assert os.environ[FILE_STORE] == "true"
        assert os.environ[tracking.PROGRESS_BAR] == "true"
    with tracking.mlflow_environment(tracking.TrackingTarget("sqlite:///x.db", "test")):
        assert FILE_STORE not in os.environ
    assert FILE_STORE not in os.environ


def test_file_store_works_and_leaves_the_environment_alone(
    isolated_home: Path, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real MLflow file store answers through the tracker; the opt-in is gone afterwards."""
    monkeypatch.delenv(FILE_STORE, raising=False)
    monkeypatch.delenv(tracking.PROGRESS_BAR, raising=False)
    tracker = tracking.MlflowTracker(tracking.resolve_target("file:./mlruns", home=home))
    assert tracker.aliased("calories", "champion") is None
    assert FILE_STORE not in os.environ
    assert tracking.PROGRESS_BAR not in os.environ


def test_a_target_is_shown_without_its_credentials() -> None:
    """What calops prints and records of a tracking URI hides its password and secret query."""
    target = tracking.TrackingTarget("https://alice:s3cret@mlflow.example/?auth=t0k&x=1", "test")
    assert "s3cret" not in target.shown
    assert "t0k" not in target.shown
    assert target.shown.startswith("https://alice:***@mlflow.example/")
    assert "x=1" in target.shown


def test_an_unanswering_server_is_named_without_its_credentials() -> None:
    """The one-sentence failure names the server, not its password."""
    target = tracking.TrackingTarget("http://bob:hunter2@127.0.0.1:9/", "test")
    with pytest.raises(tracking.TrackingError) as failure:
        tracking.check_reachable(target)
    assert "hunter2" not in str(failure.value)
    assert "bob:***@127.0.0.1:9" in str(failure.value)
