"""POST /predict before FastAPI's routing: the same answers and metrics as the documented route."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from api_support import JSON_HEADERS, api_client, routed_client, row, sample
from calapi.serving.app import create_app
from calapi.serving.settings import ApiSettings

pytestmark = pytest.mark.anyio

BODIES = [
    orjson.dumps(row(id=3)),
    orjson.dumps({"instances": [row(id=1), row(id=2, Duration=5)]}),
    orjson.dumps([row(id="a"), row(id="b", Gender=None, Sex="Female")]),
    orjson.dumps(row(Age=500, Weight=-1)),
    orjson.dumps([row(), row(Heart_Rate="fast")]),
    b'{"Gender":"male","Age":NaN}',
    b"not json",
    orjson.dumps([row()] * 4),
    orjson.dumps([row(id="x" * 3000)]),
]


@pytest.mark.parametrize("body", BODIES)
async def test_fast_path_answers_like_the_documented_route(
    trained_model_dir: Path, body: bytes
) -> None:
    """Status, body and content type are the same whether FastAPI routes the request or not."""
    async with api_client(trained_model_dir, max_batch_rows=3, max_body_bytes=2000) as client:
        fast = await client.post("/predict", content=body, headers=JSON_HEADERS)
        async with routed_client(client) as routed:
            documented = await routed.post("/predict", content=body, headers=JSON_HEADERS)
        registry = client.registry  # type: ignore[attr-defined]
    counted = sample(registry, "app_requests_total", route="/predict", method="POST",
                     status=str(fast.status_code))  # fmt: skip
    assert counted == 2
    assert fast.status_code == documented.status_code
    assert fast.headers["content-type"] == documented.headers["content-type"]
    assert fast.headers["content-length"] == str(len(fast.content))
    fast_json, documented_json = fast.json(), documented.json()
    if fast.status_code == 200 and "predictions" not in fast_json:
        assert fast_json == documented_json
    elif fast.status_code == 200:
        assert [p["Calories"] for p in fast_json["predictions"]] == [
            p["Calories"] for p in documented_json["predictions"]
        ]
    else:
        assert fast_json == documented_json


async def test_other_methods_and_paths_still_reach_fastapi(trained_model_dir: Path) -> None:
    """GET /predict is FastAPI's 405 and /predict/ its redirect, counted as before."""
    async with api_client(trained_model_dir) as client:
        wrong_method = await client.get("/predict")
        slash = await client.post("/predict/", json=row(), follow_redirects=False)
        registry = client.registry  # type: ignore[attr-defined]
    assert wrong_method.status_code == 405
    assert slash.status_code == 307
    assert sample(registry, "app_requests_total", route="/predict", method="GET",
                  status="405") == 1  # fmt: skip


async def test_fast_path_is_counted_and_timed_under_the_route_template(
    trained_model_dir: Path,
) -> None:
    """Every status the fast path gives lands in app_requests_total{route="/predict"}."""
    async with api_client(trained_model_dir) as client:
        await client.post("/predict", json=row())
        await client.post("/predict", json=row(Age=500))
        registry = client.registry  # type: ignore[attr-defined]
    for status in ("200", "422"):
        assert sample(registry, "app_requests_total", route="/predict", method="POST",
                      status=status) == 1  # fmt: skip
    assert sample(registry, "app_request_latency_seconds_count", route="/predict") == 2


async def test_openapi_still_documents_predict(trained_model_dir: Path) -> None:
    """/openapi.json describes POST /predict with its body schema."""
    async with api_client(trained_model_dir) as client:
        schema = (await client.get("/openapi.json")).json()
    operation = schema["paths"]["/predict"]["post"]
    assert "application/json" in operation["requestBody"]["content"]
    assert {"200", "413", "422", "503"} <= set(operation["responses"])


async def test_middleware_added_after_create_app_is_refused_at_start_up(
    trained_model_dir: Path,
) -> None:
    """The fast path would skip a middleware added later, so start-up fails and names it."""
    from starlette.middleware.gzip import GZipMiddleware

    served = create_app(ApiSettings(model=str(trained_model_dir), reload_interval_seconds=0))
    served.app.add_middleware(GZipMiddleware)
    with pytest.raises(RuntimeError, match="GZipMiddleware"):
        async with served.app.router.lifespan_context(served.app):
            pass


async def test_exception_handler_added_after_create_app_is_refused_at_start_up(
    trained_model_dir: Path,
) -> None:
    """An exception handler added later would not see /predict's errors: start-up fails."""
    served = create_app(ApiSettings(model=str(trained_model_dir), reload_interval_seconds=0))
    served.app.add_exception_handler(ValueError, lambda request, exc: None)  # type: ignore[arg-type]
    with pytest.raises(RuntimeError, match="ValueError"):
        async with served.app.router.lifespan_context(served.app):
            pass
