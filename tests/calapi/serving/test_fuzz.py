"""Property-based fuzzing: no body, however wrong, makes /predict or /feedback answer 5xx."""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Callable, Iterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from api_support import JSON_HEADERS, SEED_ROW, api_client
from calapi.serving import parsing
from calapi.serving.schemas import ROWS

ANSWERS = {200, 413, 422}
FIELDS = ["id", "Sex", "Gender", "Age", "Height", "Weight", "Duration", "Heart_Rate", "Body_Temp"]

json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8)
values = st.one_of(
    json_scalars,
    st.sampled_from(["male", "FEMALE", " m ", "", "NaN"]),
    st.lists(json_scalars, max_size=3),
    st.dictionaries(st.text(max_size=4), json_scalars, max_size=2),
)
rows = st.fixed_dictionaries({}, optional=dict.fromkeys(FIELDS, values)).map(
    lambda changes: {**SEED_ROW, **changes}
)
bodies = st.one_of(
    rows,
    st.lists(rows, max_size=5),
    st.fixed_dictionaries({"instances": st.lists(rows, max_size=5) | values}),
    values,
)


def _encode(body: Any) -> bytes:
    """JSON as Python writes it: NaN and Infinity as the literals lenient parsers accept."""
    return json.dumps(body, default=str).encode()


@pytest.fixture
def call(trained_model_dir: Path) -> Iterator[Callable[[str, bytes], httpx.Response]]:
    """A synchronous caller into one running app (lifespan included)."""
    loop = asyncio.new_event_loop()
    stack = AsyncExitStack()
    client = loop.run_until_complete(stack.enter_async_context(api_client(trained_model_dir)))

    def post(path: str, content: bytes) -> httpx.Response:
        return loop.run_until_complete(client.post(path, content=content, headers=JSON_HEADERS))

    try:
        yield post
    finally:
        loop.run_until_complete(stack.aclose())
        loop.close()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=bodies)
def _check_predict(call: Callable[[str, bytes], httpx.Response], body: Any) -> None:
    response = call("/predict", _encode(body))
    assert response.status_code in ANSWERS, response.text
    if response.status_code == 200:
        data = response.json()
        for prediction in data.get("predictions", [data]):
            assert math.isfinite(prediction["Calories"])


def test_predict_never_answers_5xx(call: Callable[[str, bytes], httpx.Response]) -> None:
    """Random rows, batches and non-rows (NaN, Infinity, wrong types) get 200, 413 or 422."""
    _check_predict(call)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=st.fixed_dictionaries({}, optional={"id": values, "Calories": values}) | values)
def _check_feedback(call: Callable[[str, bytes], httpx.Response], body: Any) -> None:
    response = call("/feedback", _encode(body))
    assert response.status_code in {200, 404, 409, 422}, response.text


def test_feedback_never_answers_5xx(call: Callable[[str, bytes], httpx.Response]) -> None:
    """Random feedback bodies get 200, 404, 409 or 422, never a server error."""
    _check_feedback(call)


@settings(max_examples=300, deadline=None)
@given(items=st.lists(rows, min_size=1, max_size=20))
def test_numeric_fast_parse_accepts_only_what_the_schema_accepts(items: list[Any]) -> None:
    """Whenever the fast row reader accepts rows, pydantic accepts them with the same values."""
    fast = parsing._plain_rows(items, single=False)
    if fast is None:
        return
    validated = ROWS.validate_python(items)
    np.testing.assert_array_equal(fast.raw, parsing._encode(validated))
    assert fast.ids == [item.id for item in validated]


@settings(max_examples=300, deadline=None)
@given(odd=rows, position=st.integers(0, 39), size=st.integers(16, 40))
def test_many_row_fast_parse_matches_the_row_by_row_reader(
    odd: dict[str, Any], position: int, size: int
) -> None:
    """Batches big enough for the vectorised reader: it accepts what the row-by-row one does."""
    items: list[Any] = [{**SEED_ROW, "id": i, "Duration": 1 + i % 30} for i in range(size)]
    items[position % size] = odd
    fast = parsing._plain_rows(items, single=False)
    table = parsing._plain_table(items)
    if table is None or not parsing._in_bounds(table[0]):
        assert fast is None
        return
    assert fast is not None
    np.testing.assert_array_equal(fast.raw, np.array(table[0], dtype=np.float64))
    assert fast.ids == table[1]
    validated = ROWS.validate_python(items)
    np.testing.assert_array_equal(fast.raw, parsing._encode(validated))
