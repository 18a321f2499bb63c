"""The simulator's pure parts: settings, drift, the request plan, answers and the target URL."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import orjson
import pytest
from rich.console import Console

from calapi.errors import CalopsError
from calapi.model.features import NUMERIC_FEATURES, PLAUSIBLE
from calopsctl.simulator.answers import predictions
from calopsctl.simulator.drift import (
    CONCEPT_SCALE,
    RowBlock,
    apply_drift,
    physiology,
    ramp,
)
from calopsctl.simulator.feedback import FeedbackQueue, PendingFeedback
from calopsctl.simulator.plan import RequestPlan
from calopsctl.simulator.rows import load_pool
from calopsctl.simulator.settings import DriftKind, SimulationSettings
from calopsctl.simulator.stats import Stats, summary
from calopsctl.simulator.target import DEFAULT_URL, resolve_url
from calopsctl.simulator.view import RateMeter, print_summary
from calopsctl.state import StackState, save_state


def test_run_length_comes_from_count_or_duration() -> None:
    """--count plans exactly N requests; --duration plans rate x seconds; drift starts at 1/4."""
    assert SimulationSettings(url="u", rps=50, count=7).requests == 7
    timed = SimulationSettings(url="u", rps=100, duration=10)
    assert timed.requests == 1000
    assert timed.drift_start_s == pytest.approx(2.5)
    assert timed.drift_full_s == pytest.approx(2.5 + 7.5 / 2)


def test_drift_ramp_sets_when_full_strength_is_reached() -> None:
    """--drift-ramp 0 puts the drift at full strength from --drift-start on."""
    at_once = SimulationSettings(url="u", rps=100, duration=10, drift_start=0, drift_ramp=0)
    assert at_once.drift_full_s == 0.0
    strength = ramp(np.array([0.01, 5.0, 9.99]), at_once.drift_start_s, at_once.drift_full_s)
    assert strength.tolist() == [1.0, 1.0, 1.0]
    slow = SimulationSettings(url="u", rps=100, duration=10, drift_start=1, drift_ramp=4)
    assert slow.drift_full_s == pytest.approx(5.0)


def test_ramp_is_zero_before_start_linear_then_full() -> None:
    """Drift strength is 0 before the start, rises linearly, and stays at 1 after full strength."""
    times = np.array([0.0, 5.0, 7.5, 10.0, 20.0])
    assert ramp(times, 5.0, 10.0).tolist() == [0.0, 0.0, 0.5, 1.0, 1.0]


def block() -> RowBlock:
    pool = load_pool(None, rows_needed=200, seed=3, need_truth=True)
    return pool.take(0, 200)


def test_concept_drift_scales_truth_and_keeps_inputs() -> None:
    """Concept drift leaves inputs alone and multiplies the truth by up to CONCEPT_SCALE."""
    rows = block()
    strength = np.linspace(0.0, 1.0, len(rows))
    drifted = apply_drift(rows, strength, DriftKind.CONCEPT)
    assert np.array_equal(drifted.numeric, rows.numeric)
    ratio = drifted.truth / rows.truth
    assert ratio[0] == pytest.approx(1.0)
    assert ratio[-1] == pytest.approx(CONCEPT_SCALE)
    assert np.all(np.diff(ratio) >= 0)


def test_covariate_drift_moves_inputs_and_keeps_truth_physical() -> None:
    """Covariate drift shifts inputs within plausible bounds and recomputes truth physically."""
    rows = block()
    drifted = apply_drift(rows, np.ones(len(rows)), DriftKind.COVARIATE)
    duration = NUMERIC_FEATURES.index("Duration")
    assert drifted.numeric[:, duration].mean() > 1.4 * rows.numeric[:, duration].mean()
    for column, name in enumerate(NUMERIC_FEATURES):
        low, high = PLAUSIBLE[name]
        assert np.all((drifted.numeric[:, column] >= low) & (drifted.numeric[:, column] <= high))
    # each row keeps its own deviation from the physiology (noise), so truth/physiology holds
    before = rows.truth / physiology(rows.sex, rows.numeric)
    after = drifted.truth / physiology(drifted.sex, drifted.numeric)
    assert np.allclose(before, after, rtol=1e-6)
    assert drifted.truth.mean() > rows.truth.mean()


def test_no_drift_changes_nothing() -> None:
    """--drift none returns the rows as they were."""
    rows = block()
    same = apply_drift(rows, np.ones(len(rows)), DriftKind.NONE)
    assert np.array_equal(same.numeric, rows.numeric)
    assert np.array_equal(same.truth, rows.truth)


def plan(**overrides: object) -> RequestPlan:
    s = SimulationSettings(**{"url": "u", "rps": 100.0, "count": 1200, **overrides})  # type: ignore[arg-type]
    pool = load_pool(None, rows_needed=s.requests * s.batch_size, seed=s.seed, need_truth=True)
    return RequestPlan(s, pool, run_id="run")


def test_plan_is_on_an_absolute_schedule_with_unique_ids() -> None:
    """Request i is due at i/rps, and every row id in the run is distinct."""
    requests = list(plan(batch_size=3))
    assert len(requests) == 1200
    assert [r.due for r in requests[:3]] == [0.0, 0.01, 0.02]
    assert requests[-1].due == pytest.approx(11.99)
    ids = [row_id for r in requests for row_id in r.ids]
    assert len(ids) == len(set(ids)) == 3600


def test_plan_bodies_have_the_api_shapes() -> None:
    """One row goes as a bare object with every feature; a batch as {"instances": [...]}."""
    single = orjson.loads(next(iter(plan())).body)
    assert set(single) == {"id", "Sex", *NUMERIC_FEATURES}
    assert single["Sex"] in {"male", "female"}
    batch = orjson.loads(next(iter(plan(batch_size=4))).body)
    assert len(batch["instances"]) == 4


def test_plan_is_reproducible_with_a_seed() -> None:
    """The same seed gives the same bodies and the same feedback choices."""
    first, second = list(plan(feedback_fraction=0.3)), list(plan(feedback_fraction=0.3))
    assert [r.body for r in first] == [r.body for r in second]
    chosen = np.concatenate([r.feedback for r in first])
    assert np.array_equal(chosen, np.concatenate([r.feedback for r in second]))
    assert 0.25 < chosen.mean() < 0.35


def test_synthetic_rows_match_the_generator_and_need_no_pandas() -> None:
    """The pool holds generate()'s rows, shuffled; building it never imports pandas."""
    from calapi.model.synthetic import generate

    pool = load_pool(None, rows_needed=500, seed=3, need_truth=True)
    frame = generate(500, 3)
    order = np.random.default_rng(3).permutation(500)
    block = pool.take(0, 500)
    assert block.sex.tolist() == frame["Sex"].to_numpy()[order].tolist()
    assert np.array_equal(block.numeric, frame[list(NUMERIC_FEATURES)].to_numpy()[order])
    assert np.array_equal(block.truth, frame["Calories"].to_numpy()[order])
    code = (
        "import sys; from calopsctl.simulator.rows import load_pool; "
        "load_pool(None, rows_needed=50, seed=1, need_truth=True); "
        "print('pandas' in sys.modules)"
    )
    imported = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              check=True, timeout=120)  # fmt: skip
    assert imported.stdout.strip() == "False"


def test_csv_without_calories_is_refused_when_feedback_is_wanted(tmp_path: Path) -> None:
    """A CSV with no Calories column cannot feed back truth: a DataError saying so."""
    csv = tmp_path / "test.csv"
    csv.write_text(
        "id,Sex,Age,Height,Weight,Duration,Heart_Rate,Body_Temp\n1,male,30,180,80,20,100,40\n"
    )
    with pytest.raises(CalopsError, match="has no Calories column"):
        load_pool(csv, rows_needed=10, seed=0, need_truth=True)
    pool = load_pool(csv, rows_needed=10, seed=0, need_truth=False)
    assert not pool.has_truth


@pytest.mark.parametrize(
    ("body", "ids", "expected"),
    [
        ({"id": "a", "Calories": 10.0, "model_version": "3"}, ("a",), ([10.0], "3")),
        ({"id": "z", "Calories": 10.0, "model_version": "3"}, ("a",), ([None], "3")),
        (
            {
                "predictions": [{"id": "b", "Calories": 2}, {"id": "a", "Calories": 1}],
                "model_version": "4",
            },
            ("a", "b", "c"),
            ([1.0, 2.0, None], "4"),
        ),
    ],
    ids=["single", "single with another id", "batch out of order, one row missing"],
)
def test_answers_are_read_with_the_api_schemas_and_matched_by_id(
    body: object, ids: tuple[str, ...], expected: tuple[list[float | None], str | None]
) -> None:
    """A SinglePrediction or BatchPrediction gives one value per id sent (NaN when not echoed)."""
    values, version = predictions(orjson.dumps(body), ids)
    assert [None if np.isnan(v) else v for v in values] == expected[0]
    assert version == expected[1]


@pytest.mark.parametrize(
    ("body", "ids"),
    [
        (b'{"detail": "nope"}', ("a",)),
        (b'{"id": "a", "Calories": 10.0}', ("a",)),
        (b'[{"id": "a", "Calories": 5.0}, {"id": "b", "Calories": 6.0}]', ("a", "b")),
        (b'{"id": "a", "Calories": 10.0, "model_version": "3"}', ("a", "b")),
        (b"not json", ("a", "b")),
    ],
    ids=["problem", "no model_version", "bare list", "single for a batch", "not json"],
)
def test_answers_not_of_the_schema_count_as_no_prediction(
    body: bytes, ids: tuple[str, ...]
) -> None:
    """A reply that does not validate gives NaN for every row and no model version."""
    values, version = predictions(body, ids)
    assert all(np.isnan(v) for v in values)
    assert len(values) == len(ids)
    assert version is None


def test_feedback_queue_releases_in_due_order() -> None:
    """Pending feedback comes out earliest first, only once due, at most ``limit`` at a time."""
    queue = FeedbackQueue()
    for due in (3.0, 1.0, 2.0):
        queue.push(PendingFeedback(due, str(due), 1.0, 1.0))
    assert queue.pop_due(0.5, 10) == []
    assert [p.due for p in queue.pop_due(2.5, 1)] == [1.0]
    assert [p.due for p in queue.pop_due(2.5, 10)] == [2.0]
    assert queue.clear() == 1


def test_url_comes_from_option_then_seed_url_then_stack_then_default(tmp_path: Path) -> None:
    """--url wins, then $URL (the seed's way), then the running stack's API, then 127.0.0.1:8000."""
    assert resolve_url(None, seed_url=None, home=tmp_path) == DEFAULT_URL == "http://127.0.0.1:8000"
    save_state(tmp_path, StackState(runtime="local", ports={"api": 8123}))
    assert resolve_url(None, seed_url=None, home=tmp_path) == "http://127.0.0.1:8123"
    seed = "http://127.0.0.1:8010/"
    assert resolve_url(None, seed_url=seed, home=tmp_path) == "http://127.0.0.1:8010"
    assert resolve_url("http://h:1", seed_url=seed, home=tmp_path) == "http://h:1"


def test_rate_meter_reads_the_last_seconds() -> None:
    """The live rate is the send rate over the last couple of seconds, not since the start."""
    meter = RateMeter()
    assert meter(0.0, 0) is None
    meter(1.0, 10)
    meter(2.0, 20)
    assert meter(4.0, 220) == pytest.approx(100.0)


def test_summary_lines_name_every_count() -> None:
    """The printed summary shows sent, ok, each error class, rate, latency, feedback and RMSLE."""
    stats = Stats(target_rps=10.0, planned=3)
    for now in (0.0, 0.1, 0.2):
        stats.on_send(now, 0.0)
    stats.on_reply(200, 0.01)
    stats.on_reply(503, 0.02)
    stats.connection_errors = 1
    report = summary(
        stats,
        run={
            "url": "http://x",
            "interrupted": False,
            "api_gone": None,
            "elapsed_s": 0.3,
            "rows_source": "synthetic",
            "drift": "none",
            "batch_size": 1,
        },
    )
    console = Console(file=io.StringIO(), width=200)
    print_summary(console, report)
    text = console.file.getvalue()  # type: ignore[attr-defined]
    assert "sent: 3 of 3 planned" in text
    assert "4xx 0, 5xx 1, connection 1" in text
    assert "rate: 10.0/s (target 10/s)" in text
    assert report["errors"] == 2
    assert "run: done after 0.3s" in text
    console = Console(file=io.StringIO(), width=200)
    print_summary(console, {**report, "api_gone": "connection refused"})
    gone = console.file.getvalue()  # type: ignore[attr-defined]
    assert "run: stopped (the API went away) after 0.3s" in gone
