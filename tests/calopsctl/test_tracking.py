"""Choosing the tracking store and checking it answers (calopsctl.tracking)."""

from __future__ import annotations

from pathlib import Path

import pytest

from calapi.errors import CalopsError
from calopsctl import tracking
from calopsctl.state import DEFAULT_PORTS, StackState, save_state
from support import free_port


def test_explicit_sqlite_keeps_artifacts_beside_the_database(isolated_home: Path) -> None:
    """A given sqlite URI is used as is, with artifacts in mlartifacts/ next to the .db file."""
    target = tracking.resolve_target(f"sqlite:///{isolated_home}/store/runs.db")
    assert target.uri == f"sqlite:///{isolated_home}/store/runs.db"
    assert target.artifact_root == isolated_home / "store" / "mlartifacts"
    assert not target.is_remote


def test_explicit_file_store_is_used_as_given(isolated_home: Path) -> None:
    """file:./mlruns is accepted, made absolute, and keeps artifacts inside the file store."""
    target = tracking.resolve_target("file:./mlruns")
    assert target.uri == (isolated_home / "mlruns").as_uri()
    assert target.artifact_root is None


def test_http_target_is_remote(isolated_home: Path) -> None:
    """An http URI is a remote server (checked with /health before training)."""
    assert tracking.resolve_target("http://127.0.0.1:5000").is_remote


def test_unknown_scheme_is_one_sentence(isolated_home: Path) -> None:
    """An unsupported URI scheme fails with a CalopsError naming the supported ones."""
    with pytest.raises(CalopsError, match=r"not supported; use file:\./mlruns"):
        tracking.resolve_target("ftp://example/store")


def test_default_is_local_sqlite_under_calops_home(isolated_home: Path) -> None:
    """With nothing given and no stack, runs go to <CALOPS_HOME>/mlflow.db, artifacts beside."""
    target = tracking.resolve_target(None)
    home = isolated_home / ".calops"
    assert target.uri == f"sqlite:///{home / 'mlflow.db'}"
    assert target.artifact_root == home / "mlartifacts"
    assert target.origin == "local SQLite store"


def test_a_recorded_stack_that_does_not_answer_is_skipped(isolated_home: Path) -> None:
    """A stack record whose MLflow port is closed falls back to the local SQLite store."""
    save_state(StackState(runtime="local", ports={**DEFAULT_PORTS, "mlflow": free_port()}))
    assert tracking.resolve_target(None).uri.startswith("sqlite:///")


def test_unreachable_server_fails_before_training(isolated_home: Path) -> None:
    """check_reachable raises one sentence for an http server that does not answer."""
    target = tracking.resolve_target(f"http://127.0.0.1:{free_port()}")
    with pytest.raises(tracking.TrackingError, match=r"does not answer on /health"):
        tracking.check_reachable(target)


def test_local_stores_need_no_reachability_check(isolated_home: Path) -> None:
    """File and SQLite stores are not probed over HTTP."""
    tracking.check_reachable(tracking.resolve_target("file:./mlruns"))
    tracking.check_reachable(tracking.resolve_target(f"sqlite:///{isolated_home}/x.db"))
