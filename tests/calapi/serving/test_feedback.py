"""The pending-prediction store and the rolling RMSLE window, on an injected clock."""

from __future__ import annotations

import math

import pytest

from calapi.serving.feedback import (
    AlreadyAnsweredError,
    PendingStore,
    RollingRmsle,
    UnknownIdError,
    squared_log_error,
)


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_rolling_window_enters_ages_out_and_is_nan_when_empty() -> None:
    """Entries count for 300 s after arrival, then leave; an empty window reads NaN."""
    clock = Clock()
    window = RollingRmsle(300.0, clock=clock)
    assert math.isnan(window.value())
    window.add(0.04)
    clock.now += 100
    window.add(0.16)
    assert window.value() == pytest.approx(math.sqrt(0.10))
    clock.now += 199.9
    assert len(window) == 2
    clock.now += 0.1  # the first entry is now exactly 300 s old
    assert len(window) == 1
    assert window.value() == pytest.approx(0.4)
    clock.now += 100
    assert math.isnan(window.value())


def test_rolling_value_is_the_exact_rmsle() -> None:
    """The window's value equals RMSLE computed directly from the pairs."""
    window = RollingRmsle(300.0, clock=Clock())
    pairs = [(100.0, 120.0), (5.0, 3.0), (250.0, 251.0), (0.0, 10.0)]
    for predicted, actual in pairs:
        window.add(squared_log_error(predicted, actual))
    expected = math.sqrt(sum((math.log1p(p) - math.log1p(a)) ** 2 for p, a in pairs) / len(pairs))
    assert window.value() == pytest.approx(expected, rel=1e-12)


def test_store_answers_once_then_409_and_unknown_is_404() -> None:
    """A pending id is answered once with its lag; again -> AlreadyAnswered; unknown -> Unknown."""
    clock = Clock()
    store = PendingStore(10, 60.0, clock=clock)
    store.add("a", 100.0, "v1")
    clock.now += 2.5
    outcome = store.answer("a", 110.0)
    assert outcome.lag_seconds == 2.5
    assert outcome.predicted == 100.0
    assert outcome.model_version == "v1"
    with pytest.raises(AlreadyAnsweredError):
        store.answer("a", 110.0)
    with pytest.raises(UnknownIdError):
        store.answer("b", 1.0)
    assert store.awaiting == 0


def test_store_is_bounded_by_count_and_counts_evictions() -> None:
    """Past max_items the oldest unanswered prediction goes, counted as a capacity eviction."""
    evicted: list[tuple[str, int]] = []
    store = PendingStore(2, 60.0, clock=Clock(), on_evict=lambda r, n: evicted.append((r, n)))
    for key in ("a", "b", "c"):
        store.add(key, 1.0, "v")
    assert len(store) == 2
    assert evicted == [("capacity", 1)]
    with pytest.raises(UnknownIdError):
        store.answer("a", 1.0)


def test_store_expires_by_age() -> None:
    """A prediction older than max_age is gone (404) and counted as an age eviction."""
    clock = Clock()
    evicted: list[tuple[str, int]] = []
    store = PendingStore(10, 60.0, clock=clock, on_evict=lambda r, n: evicted.append((r, n)))
    store.add("old", 1.0, "v")
    clock.now += 30
    store.add("young", 1.0, "v")
    clock.now += 31
    store.expire()
    assert evicted == [("age", 1)]
    assert store.awaiting == 1
    with pytest.raises(UnknownIdError):
        store.answer("old", 1.0)
    store.answer("young", 1.0)


def test_reused_id_starts_over() -> None:
    """Predicting again under an answered id makes it pending again (the seed reuses ids)."""
    store = PendingStore(10, 60.0, clock=Clock())
    store.add("1", 10.0, "v")
    store.answer("1", 12.0)
    store.add("1", 20.0, "v")
    assert store.answer("1", 12.0).predicted == 20.0


def test_add_many_equals_one_add_per_row() -> None:
    """A request's rows added at once leave the same store and eviction counts as one by one."""
    keys = ["a", "b", "a", "c", "d", "e"]
    values = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    one: list[tuple[str, int]] = []
    many: list[tuple[str, int]] = []
    single = PendingStore(3, 60.0, clock=Clock(), on_evict=lambda r, n: one.append((r, n)))
    batched = PendingStore(3, 60.0, clock=Clock(), on_evict=lambda r, n: many.append((r, n)))
    single.add("e", 0.5, "v")
    single.answer("e", 1.0)
    batched.add("e", 0.5, "v")
    batched.answer("e", 1.0)
    for key, value in zip(keys, values, strict=True):
        single.add(key, value, "v")
    batched.add_many(keys, values, "v")
    assert single.awaiting == batched.awaiting == 3
    assert sum(n for _, n in one) == sum(n for _, n in many) == 2
    assert {reason for reason, _ in many} == {"capacity"}
    for key in ("c", "d", "e"):
        assert single.answer(key, 1.0).predicted == batched.answer(key, 1.0).predicted
