"""The fence around scikit-learn internals: the supported range and what happens outside it."""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import pytest

from calapi.model import sklearn_compat
from calapi.model.compiled import pack_forest
from calapi.model.predictor import build_predictor, fast_layout, probe_rows


@pytest.fixture(scope="module")
def gbm(estimator: Any) -> Any:
    """The HistGradientBoostingRegressor inside it."""
    found = fast_layout(estimator)
    assert found is not None
    return found.gbm


def test_installed_scikit_learn_is_in_the_supported_range() -> None:
    """The installed scikit-learn is one the internals were checked against, or this fails."""
    reason = sklearn_compat.unsupported_reason(sklearn_compat.installed_version())
    assert reason is None, reason


@pytest.mark.parametrize(
    ("version", "supported"),
    [
        ("1.5.0", True),
        ("1.9.1", True),
        ("1.7.dev0", True),
        ("1.4.2", False),
        ("1.10.0", False),
        ("2.0.0", False),
        ("nightly", False),
    ],
)
def test_supported_range_bounds(version: str, supported: bool) -> None:
    """1.5 up to before 1.10 is supported; anything else, or unparseable, is not."""
    reason = sklearn_compat.unsupported_reason(version)
    assert (reason is None) is supported
    if reason is not None:
        assert version in reason
        assert "widen SUPPORTED" in reason


def test_outside_the_range_the_plain_call_serves_and_says_why(
    estimator: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """On an unsupported scikit-learn, model.predict serves the trainer's model; one log line."""
    monkeypatch.setattr(sklearn_compat, "installed_version", lambda: "1.99.0")
    with caplog.at_level(logging.WARNING, logger="calapi"):
        predictor = build_predictor(estimator, probe_rows(None))
    assert predictor.kind == "plain"
    (record,) = [r for r in caplog.records if r.name.startswith("calapi")]
    assert "1.99.0" in record.getMessage()
    assert "model.predict serves" in record.getMessage()


def test_forest_nodes_describe_every_tree(gbm: Any) -> None:
    """One node table per fitted tree, leaves and splits flagged, no categorical splits."""
    nodes = sklearn_compat.forest_nodes(gbm)
    assert len(nodes.sizes) == gbm.n_iter_
    assert int(nodes.sizes.sum()) == len(nodes.value) == len(nodes.leaf)
    assert not nodes.categorical
    assert nodes.leaf.sum() == (~nodes.leaf).sum() + len(nodes.sizes)  # binary trees


def test_categorical_splits_are_not_packed(gbm: Any) -> None:
    """A forest with a categorical split is left to the model's own trees."""
    nodes = dataclasses.replace(sklearn_compat.forest_nodes(gbm), categorical=True)
    assert pack_forest(nodes, sklearn_compat.baseline(gbm)) is None
    assert pack_forest(dataclasses.replace(nodes, categorical=False), 0.0) is not None


def test_baseline_is_the_prediction_of_no_trees(gbm: Any) -> None:
    """The baseline is the mean of what the trees were fitted to, a plain float: for
    CalorieModel a small log correction to Keytel's equations."""
    value = sklearn_compat.baseline(gbm)
    assert isinstance(value, float)
    assert abs(value) < 0.5
