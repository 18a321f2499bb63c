"""Drift: PSI against the card's reference bins, the time window, the model swap, the gauges."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
import pytest
from prometheus_client import CollectorRegistry

from calapi.model.data import raw_matrix
from calapi.model.features import FEATURES, NUMERIC_FEATURES, FloatArray, encode_sex
from calapi.model.synthetic import generate, true_calories
from calapi.model.train import distribution
from calapi.serving.drift import (
    FLUSH_ROWS,
    PREDICTION,
    PSI_EPSILON,
    DriftMonitor,
    DriftWindow,
    Reference,
    psi,
    reference_from_card,
)
from calapi.serving.metrics import DriftCollector

SHIFT = {"Weight": 1.20, "Duration": 1.50, "Heart_Rate": 1.12}


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def expected_kcal(frame: pd.DataFrame) -> FloatArray:
    """The synthetic physiology's noise-free kcal for generated rows (the stand-in prediction)."""
    return true_calories(raw_matrix(frame))


def rows(n: int, seed: int, shift: dict[str, float] | None = None) -> tuple[FloatArray, FloatArray]:
    """Synthetic rows laid out as FEATURES (optionally shifted) and a stand-in prediction."""
    frame = generate(n, seed)
    for name, factor in (shift or {}).items():
        frame[name] = frame[name] * factor
    raw = np.column_stack(
        [frame["Sex"].map(encode_sex).to_numpy(dtype=np.float64)]
        + [frame[name].to_numpy(dtype=np.float64) for name in NUMERIC_FEATURES]
    )
    return raw, expected_kcal(frame)


def card_for(frame: pd.DataFrame) -> dict[str, Any]:
    """A card's reference section built exactly as the trainer builds it."""
    reference: dict[str, Any] = {
        name: distribution(frame[name].to_numpy(dtype=np.float64)) for name in NUMERIC_FEATURES
    }
    reference[PREDICTION] = distribution(expected_kcal(frame))
    male = float((frame["Sex"] == "male").mean())
    reference["Sex"] = {"male": male, "female": 1.0 - male}
    return {"reference": reference}


@pytest.fixture(scope="module")
def reference() -> Reference:
    """The reference of 20,000 synthetic training rows."""
    found = reference_from_card(card_for(generate(20_000, 1)))
    assert found is not None
    return found


def test_psi_of_identical_fractions_is_zero_and_matches_the_formula() -> None:
    """PSI is 0 for the same fractions and sum((a - e) ln(a / e)) with empty bins floored."""
    expected = np.array([[0.5, 0.5], [0.5, 0.5]])
    observed = np.array([[50, 50], [100, 0]])
    values = psi(observed, expected)
    assert values[0] == pytest.approx(0.0)
    floor = PSI_EPSILON
    by_hand = 0.5 * math.log(2.0) + (floor - 0.5) * math.log(floor / 0.5)
    assert values[1] == pytest.approx(by_hand)


def test_same_distribution_gives_small_psi_everywhere(reference: Reference) -> None:
    """Fresh rows from the training generator stay far below the 0.1 'moving' mark."""
    window = DriftWindow(reference, min_rows=200, clock=FakeClock())
    window.add(*rows(5000, 2))
    snapshot = window.snapshot()
    assert snapshot.rows == 5000
    assert set(snapshot.psi) == {*FEATURES, PREDICTION}
    assert max(snapshot.psi.values()) < 0.02
    assert snapshot.male_share == pytest.approx(snapshot.reference_male_share, abs=0.03)


def test_covariate_shift_gives_large_psi_on_the_shifted_features(reference: Reference) -> None:
    """Weight x1.2, Duration x1.5, Heart_Rate x1.12 lift their PSI above 0.2, not Age's."""
    window = DriftWindow(reference, min_rows=200, clock=FakeClock())
    window.add(*rows(5000, 2, SHIFT))
    shifted = window.snapshot().psi
    for name in SHIFT:
        assert shifted[name] > 0.2, name
    assert shifted["Age"] < 0.02
    assert shifted["Sex"] < 0.02


def test_batches_add_up_like_one_batch(reference: Reference) -> None:
    """Counting row by row, in small batches or at once gives the same window."""
    raw, predicted = rows(300, 3)
    whole = DriftWindow(reference, min_rows=1, clock=FakeClock())
    whole.add(raw, predicted)
    pieces = DriftWindow(reference, min_rows=1, clock=FakeClock())
    for start in range(0, 300, 7):
        pieces.add(raw[start : start + 7], predicted[start : start + 7])
    assert pieces.snapshot() == whole.snapshot()


def test_bins_are_the_trainers_searchsorted_bins(reference: Reference) -> None:
    """A value exactly on an edge lands in the bin the trainer's searchsorted(right) used."""
    raw, predicted = rows(50, 4)
    values = reference.values(raw, predicted)
    column = reference.names.index("Weight")
    edges = reference.edges[column][np.isfinite(reference.edges[column])]
    values[: len(edges), column] = edges
    found = reference.bins(values)[:, column]
    assert found.tolist() == np.searchsorted(edges, values[:, column], side="right").tolist()


def test_a_big_queue_is_binned_without_a_scrape(reference: Reference) -> None:
    """Queued rows are binned once FLUSH_ROWS pile up, and the counts stay exact."""
    clock = FakeClock()
    window = DriftWindow(reference, min_rows=1, clock=clock)
    raw, predicted = rows(FLUSH_ROWS + 10, 6)
    for start in range(0, len(raw), 1000):
        window.add(raw[start : start + 1000], predicted[start : start + 1000])
    assert window._queued_rows < FLUSH_ROWS
    assert window.snapshot().rows == FLUSH_ROWS + 10


def test_rows_queued_longer_than_the_window_are_dropped(reference: Reference) -> None:
    """A batch that waited in the queue past the window length never counts."""
    clock = FakeClock()
    window = DriftWindow(reference, 300.0, min_rows=1, clock=clock)
    window.add(*rows(100, 2))
    clock.now = 400.0
    window.add(*rows(40, 3))
    assert window.snapshot().rows == 40


def test_window_ages_rows_out_with_the_clock(reference: Reference) -> None:
    """Rows leave the window after its length; the window then reports only the new rows."""
    clock = FakeClock()
    window = DriftWindow(reference, 300.0, min_rows=200, clock=clock)
    window.add(*rows(1000, 2))
    clock.now = 200.0
    window.add(*rows(1000, 5, SHIFT))
    mixed = window.snapshot()
    assert mixed.rows == 2000
    clock.now = 305.0
    recent = window.snapshot()
    assert recent.rows == 1000
    assert recent.psi["Duration"] > 0.2
    assert recent.psi["Duration"] > mixed.psi["Duration"]
    clock.now = 1000.0
    empty = window.snapshot()
    assert empty.rows == 0
    assert all(math.isnan(value) for value in empty.psi.values())
    assert empty.male_share is None


def test_too_few_rows_give_nan(reference: Reference) -> None:
    """An empty window and one below min_rows report NaN, never a noisy number."""
    window = DriftWindow(reference, min_rows=200, clock=FakeClock())
    assert all(math.isnan(value) for value in window.snapshot().psi.values())
    window.add(*rows(199, 2))
    assert all(math.isnan(value) for value in window.snapshot().psi.values())
    window.add(*rows(1, 3))
    assert not any(math.isnan(value) for value in window.snapshot().psi.values())


@pytest.mark.parametrize(
    "card",
    [
        None,
        {},
        {"reference": None},
        {"reference": {"Weight": {"edges": [2.0, 1.0], "fractions": [0.3, 0.3, 0.4]}}},
        {"reference": {"Weight": {"edges": [1.0], "fractions": [1.0]}}},
        {"reference": {"Weight": {"edges": "x"}}},
    ],
)
def test_missing_or_broken_reference_means_no_drift(card: dict[str, Any] | None) -> None:
    """A card without a usable reference (or no card) gives no drift at all."""
    assert reference_from_card(card) is None
    monitor = DriftMonitor()
    model = object()
    monitor.reset(model, card)
    monitor.observe(model, *rows(10, 2))
    assert monitor.snapshot() is None


def test_partial_reference_tracks_what_it_has() -> None:
    """A reference with only some features tracks just those (no Sex, no prediction)."""
    found = reference_from_card(
        {"reference": {"Weight": {"edges": [70.0], "fractions": [0.5, 0.5]}}}
    )
    assert found is not None
    window = DriftWindow(found, min_rows=1, clock=FakeClock())
    window.add(*rows(100, 2))
    snapshot = window.snapshot()
    assert list(snapshot.psi) == ["Weight"]
    assert snapshot.male_share is None


def test_a_new_model_starts_an_empty_window(reference: Reference) -> None:
    """After reset, the new model's window is empty and late rows of the old model are ignored."""
    card = card_for(generate(5000, 1))
    monitor = DriftMonitor(min_rows=1, clock=FakeClock())
    old, new = object(), object()
    monitor.reset(old, card)
    monitor.observe(old, *rows(100, 2))
    assert (monitor.snapshot() or pytest.fail("no drift")).rows == 100
    monitor.reset(new, card)
    monitor.observe(old, *rows(100, 2))
    assert (monitor.snapshot() or pytest.fail("no drift")).rows == 0
    monitor.observe(new, *rows(30, 2))
    assert (monitor.snapshot() or pytest.fail("no drift")).rows == 30
    monitor.reset(object(), None)
    assert monitor.snapshot() is None


def gauge(registry: CollectorRegistry, name: str, **labels: str) -> float:
    """A sample that must exist."""
    value = registry.get_sample_value(name, labels)
    assert value is not None, (name, labels)
    return value


def test_gauges_follow_the_monitor(reference: Reference) -> None:
    """The drift gauges appear with a reference, are NaN until min_rows, and vanish without one."""
    registry = CollectorRegistry()
    monitor = DriftMonitor(min_rows=200, clock=FakeClock())
    registry.register(DriftCollector(monitor.snapshot))
    assert registry.get_sample_value("app_drift_window_rows") is None
    model = object()
    monitor.reset(model, card_for(generate(5000, 1)))
    assert math.isnan(gauge(registry, "app_feature_drift_psi", feature="Weight"))
    monitor.observe(model, *rows(1000, 2, SHIFT))
    assert gauge(registry, "app_drift_window_rows") == 1000
    assert gauge(registry, "app_feature_drift_psi", feature="Weight") > 0.2
    assert gauge(registry, "app_feature_drift_psi", feature="Age") < 0.1
    for label in ("window", "reference"):
        assert 0.3 < gauge(registry, "app_drift_male_share_ratio", distribution=label) < 0.7
    monitor.reset(object(), None)
    assert registry.get_sample_value("app_feature_drift_psi", {"feature": "Weight"}) is None
