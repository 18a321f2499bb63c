"""The fast predictor equals the plain model call within 1e-9 kcal, alone and micro-batched."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sklearn.dummy import DummyRegressor

from calapi.model import predictor as predictor_module
from calapi.model.compiled import compiled_model, compiled_walk, pack_forest
from calapi.model.features import FEATURES, PLAUSIBLE, engineer_v1, model_features
from calapi.model.predictor import Layout, PlainPredictor, build_predictor, fast_layout, probe_rows
from calapi.model.sklearn_compat import BinnedTrees, baseline, forest_nodes
from calapi.serving.batching import MicroBatcher
from calapi.serving.sources import LocalSource

TOLERANCE = 1e-9


def _rows(count: int, seed: int) -> np.ndarray:
    rows = probe_rows(None, count)
    jitter = np.random.default_rng(seed).uniform(0.9, 1.1, rows.shape)
    jitter[:, 0] = 1.0
    low = [0.0, *(PLAUSIBLE[name][0] for name in FEATURES[1:])]
    high = [1.0, *(PLAUSIBLE[name][1] for name in FEATURES[1:])]
    return np.clip(rows * jitter, low, high)


def _layout(model: Any) -> Layout:
    layout = fast_layout(model)
    assert layout is not None
    return layout


def test_trainer_model_gets_the_fast_path(any_estimator: Any) -> None:
    """The trainer's estimator layouts (now and before) are served by the fast predictor."""
    assert build_predictor(any_estimator, probe_rows(None)).kind == "fast"


def test_layouts_name_their_features_and_baseline(estimator: Any, v1_estimator: Any) -> None:
    """CalorieModel adds Keytel's column back; the first layout has no baseline column."""
    current, first = _layout(estimator), _layout(v1_estimator)
    assert (current.features, current.baseline_column) == (model_features, 8)
    assert (first.features, first.baseline_column) == (engineer_v1, None)


@pytest.mark.parametrize("count", [1, 2, 7, 64, 65, 500, 3000])
def test_fast_equals_plain_for_singles_and_batches(any_estimator: Any, count: int) -> None:
    """Both fast code paths (packed trees, compiled predict) equal model.predict(DataFrame)."""
    fast = build_predictor(any_estimator, probe_rows(None))
    rows = _rows(count, seed=count)
    expected = PlainPredictor(any_estimator)(rows)
    np.testing.assert_allclose(fast(rows), expected, rtol=0, atol=TOLERANCE)


def test_single_rows_one_by_one(any_estimator: Any) -> None:
    """Row by row, including out-of-training-range values, the two paths agree."""
    fast = build_predictor(any_estimator, probe_rows(None))
    plain = PlainPredictor(any_estimator)
    extremes = np.array([[0, 1, 50, 10, 0, 20, 30], [1, 120, 260, 400, 1440, 250, 45]], float)
    for single in (*_rows(40, seed=1), *extremes):
        assert abs(fast(single[None, :])[0] - plain(single[None, :])[0]) <= TOLERANCE


def test_other_estimators_use_the_plain_call() -> None:
    """An estimator not shaped like the trainer's is served through predict(DataFrame)."""
    rows = probe_rows(None, 5)
    dummy = DummyRegressor(constant=42.0, strategy="constant").fit(rows, np.zeros(5))
    predictor = build_predictor(dummy, rows)
    assert predictor.kind == "plain"
    assert predictor(rows).tolist() == [42.0] * 5


def test_concurrent_mixed_requests_through_the_batcher(
    trained_model_dir: Path, estimator: Any
) -> None:
    """Hundreds of concurrent singles and batches, merged by the batcher, equal the plain call."""
    model = LocalSource(trained_model_dir).load()
    requests = [_rows(1 + (i % 5) * (i % 3) * 7, seed=100 + i) for i in range(300)]

    async def run_all() -> tuple[list[np.ndarray], list[int]]:
        sizes: list[int] = []
        batcher = MicroBatcher(
            lambda: model, max_rows=256, on_batch=lambda raw, _kcal, _model: sizes.append(len(raw))
        )
        answers = await asyncio.gather(*(batcher.predict(rows) for rows in requests))
        batcher.close()
        return [kcal for kcal, _ in answers], sizes

    answers, batch_sizes = asyncio.run(run_all())
    expected = PlainPredictor(estimator)(np.concatenate(requests))
    np.testing.assert_allclose(np.concatenate(answers), expected, rtol=0, atol=TOLERANCE)
    assert [len(kcal) for kcal in answers] == [len(rows) for rows in requests]
    assert sum(batch_sizes) == sum(len(rows) for rows in requests)
    assert len(batch_sizes) < len(requests)  # concurrent requests really were merged


def test_a_predictor_that_disagrees_is_not_used(
    estimator: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If the fast path ever differs from the plain call at load time, the plain one serves."""

    def off_by_a_little(*args: Any) -> Any:
        forest = pack_forest(*args)
        assert forest is not None
        return dataclasses.replace(forest, baseline=forest.baseline + 1e-6)

    monkeypatch.setattr(predictor_module, "pack_forest", off_by_a_little)
    assert build_predictor(estimator, probe_rows(None)).kind == "plain"


def test_binned_trees_equal_the_model_trees_bit_for_bit(any_estimator: Any) -> None:
    """The trees walked on binned rows give gbm.predict's sums exactly, in and far out of range."""
    layout = _layout(any_estimator)
    trees = BinnedTrees(layout.gbm)
    low = [0.0, *(PLAUSIBLE[name][0] for name in FEATURES[1:])]
    high = [1.0, *(PLAUSIBLE[name][1] for name in FEATURES[1:])]
    rows = np.vstack([_rows(500, seed=3), low, high])
    engineered = layout.features(rows)
    np.testing.assert_array_equal(trees(engineered), layout.gbm.predict(engineered))


@pytest.mark.parametrize("count", [1, 4, 64])
def test_compiled_walk_equals_the_model_trees(any_estimator: Any, count: int) -> None:
    """The compiled walk of the packed trees gives gbm.predict within 1e-9, out of range too."""
    layout = _layout(any_estimator)
    forest = pack_forest(forest_nodes(layout.gbm), baseline(layout.gbm))
    assert forest is not None
    rows = layout.features(np.vstack([_rows(count, seed=count), probe_rows(None, 2) * 1.5]))
    np.testing.assert_allclose(
        compiled_walk(forest)(rows), layout.gbm.predict(rows), rtol=0, atol=TOLERANCE
    )


@pytest.mark.parametrize("count", [1, 4, 64])
def test_compiled_model_equals_calorie_model_predict(estimator: Any, count: int) -> None:
    """Features, trees and Keytel's baseline in one compiled loop give CalorieModel.predict."""
    layout = _layout(estimator)
    forest = pack_forest(forest_nodes(layout.gbm), baseline(layout.gbm))
    assert forest is not None
    rows = np.vstack([_rows(count, seed=count), probe_rows(None, 2) * 1.5])
    kcal = compiled_model(forest)(rows)
    assert kcal is not None
    np.testing.assert_allclose(kcal, estimator.predict(rows), rtol=0, atol=TOLERANCE)


def test_compiled_model_leaves_rows_it_cannot_compute_to_the_trees(estimator: Any) -> None:
    """A row with a missing measure is not walked: the compiled loop says so, and the predictor
    falls back to the trees' own missing-value rules, as CalorieModel.predict does."""
    layout = _layout(estimator)
    forest = pack_forest(forest_nodes(layout.gbm), baseline(layout.gbm))
    assert forest is not None
    rows = _rows(3, seed=5)
    rows[1, 5] = np.nan
    assert compiled_model(forest)(rows) is None
    fast = build_predictor(estimator, probe_rows(None))
    np.testing.assert_allclose(fast(rows), estimator.predict(rows), rtol=0, atol=TOLERANCE)
