"""Bad input is a 4xx that says why: strict JSON types, bounded bodies and echoes, JSON-only
POSTs, a Host allow-list, ids keyed by type, and clients leaving mid-body are no errors."""

from __future__ import annotations

import re
import socket
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from api_support import JSON_HEADERS, api_client, routed_client, row, sample
from calapi.model.features import encode_sex
from calapi.serving import parsing
from calapi.serving.guard import host_allowed
from calapi.serving.handlers import SMALL_BODY_BYTES
from calapi.serving.schemas import ID_MAX, SEX_PATTERN, Row
from calapi.serving.service import log_key
from calapi.serving.settings import DEFAULT_ALLOWED_HOSTS
from support import api_argv, free_port, running

pytestmark = pytest.mark.anyio
NAMES = frozenset(DEFAULT_ALLOWED_HOSTS.split(","))


def _feedback_body(calories: str) -> bytes:
    return b'{"id": 1, "Calories": ' + calories.encode() + b"}"


@pytest.mark.parametrize("calories", ["NaN", "Infinity", "-Infinity", "1e309", "true", '"185"'])
async def test_feedback_with_a_non_finite_or_non_number_value_is_422(
    trained_model_dir: Path, calories: str
) -> None:
    """NaN, ±Infinity, 1e309 (a double's infinity), booleans and strings are 422 with a message
    per field, never a 500."""
    async with api_client(trained_model_dir) as client:
        await client.post("/predict", json=row(id=1))
        response = await client.post(
            "/feedback", content=_feedback_body(calories), headers=JSON_HEADERS
        )
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["msg"]


async def test_unknown_id_is_404_without_echoing_it_whole(trained_model_dir: Path) -> None:
    """The 404 names the id cut to 128 characters with an ellipsis, not the whole id."""
    long_id = "z" * 128
    async with api_client(trained_model_dir) as client:
        response = await client.post("/feedback", json={"id": long_id, "Calories": 10.0})
    assert response.status_code == 404
    detail = response.json()["detail"]
    assert long_id not in detail
    assert "…" in detail
    assert len(detail) < 250


async def test_a_long_unknown_sex_is_not_echoed_whole(trained_model_dir: Path) -> None:
    """A 10,000-character Sex gets a 422 whose message stays short."""
    async with api_client(trained_model_dir) as client:
        response = await client.post("/predict", json=row(Gender="x" * 10_000))
    assert response.status_code == 422
    assert len(response.text) < 600


async def _chunks(size: int) -> AsyncIterator[bytes]:
    yield b'{"id": 1, "Calories": 10.0, "pad": "'
    for _ in range(size // 4096):
        yield b"x" * 4096
    yield b'"}'


@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "chunked"])
async def test_feedback_body_over_the_limit_is_413(trained_model_dir: Path, declared: bool) -> None:
    """A /feedback body over 64 KiB is refused with 413, declared or streamed."""
    size = SMALL_BODY_BYTES + 8192
    async with api_client(trained_model_dir) as client:
        if declared:
            body = b"".join([part async for part in _chunks(size)])
            response = await client.post("/feedback", content=body, headers=JSON_HEADERS)
        else:
            response = await client.post("/feedback", content=_chunks(size), headers=JSON_HEADERS)
    assert response.status_code == 413
    assert f"{SMALL_BODY_BYTES} bytes" in response.json()["detail"]


async def test_reload_refuses_a_large_body(trained_model_dir: Path) -> None:
    """/reload takes no body: a declared 1 MiB one is 413 before anything loads."""
    async with api_client(trained_model_dir) as client:
        response = await client.post("/reload", content=b"0" * 2**20, headers=JSON_HEADERS)
    assert response.status_code == 413


@pytest.mark.parametrize("path", ["/predict", "/feedback", "/reload"])
@pytest.mark.parametrize(
    "content_type",
    [None, "text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x",
     "application/jsonx", "text/json"],
)  # fmt: skip
async def test_state_changing_posts_need_a_json_content_type(
    trained_model_dir: Path, path: str, content_type: str | None
) -> None:
    """What a page can POST cross-site without a preflight, or no Content-Type, is 415."""
    headers = {} if content_type is None else {"content-type": content_type}
    async with api_client(trained_model_dir) as client:
        response = await client.post(path, content=b'{"id": 1, "Calories": 1}', headers=headers)
        registry = client.registry  # type: ignore[attr-defined]
    assert response.status_code == 415
    assert "application/json" in response.json()["detail"]
    assert sample(registry, "app_requests_total", route=path, method="POST", status="415") == 1


@pytest.mark.parametrize(
    "content_type", ["application/json", "application/json; charset=utf-8", "Application/JSON"]
)
async def test_json_with_parameters_and_any_case_is_accepted(
    trained_model_dir: Path, content_type: str
) -> None:
    """application/json in any case and with parameters is JSON."""
    async with api_client(trained_model_dir) as client:
        response = await client.post(
            "/predict", content=httpx.Request("POST", "/", json=row()).content,
            headers={"content-type": content_type},
        )  # fmt: skip
    assert response.status_code == 200


@pytest.mark.parametrize("path", ["/healthz", "/metrics", "/info", "/predict"])
async def test_an_unknown_host_is_400_on_every_route(trained_model_dir: Path, path: str) -> None:
    """A page that rebound its name to the API's address sends that name: refused everywhere."""
    async with api_client(trained_model_dir) as client:
        response = await client.request(
            "GET" if path != "/predict" else "POST", path, json=row(),
            headers={"host": "attacker.example:8000"},
        )  # fmt: skip
    assert response.status_code == 400
    assert "attacker.example:8000" in response.json()["detail"]
    assert "CALOPS_ALLOWED_HOSTS" in response.json()["detail"]


async def test_allowed_hosts_setting_extends_or_opens_the_list(trained_model_dir: Path) -> None:
    """CALOPS_ALLOWED_HOSTS names the hosts; '*' answers any."""
    headers = {"host": "calories.example.org"}
    async with api_client(trained_model_dir, allowed_hosts="calories.example.org") as client:
        assert (await client.get("/healthz", headers=headers)).status_code == 200
        assert (await client.get("/healthz")).status_code == 400  # localhost is not listed
    async with api_client(trained_model_dir, allowed_hosts="*") as client:
        assert (await client.get("/healthz", headers={"host": "x.y"})).status_code == 200


@pytest.mark.parametrize(
    "host",
    ["localhost", "localhost:8010", "LOCALHOST:8010", "localhost.", "127.0.0.1", "127.0.0.1:8010",
     "[::1]", "[::1]:8000", "api:8000", "gateway:8000", "api.calops:8000",
     "api.calops.svc.cluster.local:8000", "10.42.0.17:8000", "172.18.0.5:8000"],
)  # fmt: skip
def test_loopback_service_names_and_addresses_are_allowed(host: str) -> None:
    """Local runtime, compose (gateway, Prometheus by container IP) and Kubernetes Hosts pass."""
    assert host_allowed(host, NAMES)


@pytest.mark.parametrize(
    "host",
    ["attacker.example", "localhost.attacker.example", "api.example:8000", "localhost:", "",
     "localhost:80x", "localhost:\uff11\uff12", "::1", "[::1", "[::1]x", "[localhost]:80",
     "1.2.3.4.5", "127.0.0.1:8000:1", "localhost:123456"],
)  # fmt: skip
def test_other_hosts_and_malformed_values_are_refused(host: str) -> None:
    """Unknown names, names posing as subdomains and malformed Host values are refused."""
    assert not host_allowed(host, NAMES)


@pytest.mark.parametrize(
    ("field", "value"),
    [("Age", True), ("Height", False), ("Duration", "30"), ("id", True), ("id", 1.5),
     ("id", ID_MAX + 1), ("Sex", 1)],
)  # fmt: skip
async def test_booleans_strings_and_out_of_range_ids_are_not_numbers(
    trained_model_dir: Path, field: str, value: Any
) -> None:
    """JSON booleans are no numbers, strings no measures, ids within ±(2**53 - 1): 422 for one
    row, small and large batches (the fast reader's two ways), routed or not."""
    bad = row(**{field: value})
    bodies = [bad, [row(), bad], {"instances": [row(id=n) for n in range(20)] + [bad]}]
    async with api_client(trained_model_dir) as client:
        for api in (client, routed_client(client)):
            for body in bodies:
                response = await api.post("/predict", json=body)
                assert response.status_code == 422, (body, response.text)


@pytest.mark.parametrize(
    "bad", [{"Age": True}, {"Height": False}, {"id": True}, {"id": ID_MAX + 1}]
)
def test_the_fast_reader_passes_on_and_row_refuses_booleans(bad: dict[str, Any]) -> None:
    """The fast reader leaves a boolean or an id past ID_MAX to Row, which refuses it."""
    rows = [row(**bad)]
    assert parsing._plain_rows(rows, single=True) is None
    assert parsing._plain_rows(rows * 20, single=False) is None
    with pytest.raises(ValidationError):
        Row.model_validate(rows[0])


async def test_feedback_booleans_are_not_calories(trained_model_dir: Path) -> None:
    """``"Calories": false`` is not 0 kcal, ``"id": true`` not id 1."""
    async with api_client(trained_model_dir) as client:
        await client.post("/predict", json=row(id=1))
        for body in ({"id": 1, "Calories": False}, {"id": True, "Calories": 10.0}):
            assert (await client.post("/feedback", json=body)).status_code == 422


async def test_integer_and_string_ids_are_different_feedback_keys(trained_model_dir: Path) -> None:
    """``1``, ``"1"`` and ``"#1"`` are three predictions, each answered once, echoed as sent."""
    async with api_client(trained_model_dir) as client:
        for row_id in (1, "1", "#1"):
            predicted = await client.post("/predict", json=row(id=row_id))
            assert predicted.json()["id"] == row_id
        for row_id in (1, "1", "#1"):
            answer = await client.post("/feedback", json={"id": row_id, "Calories": 100.0})
            assert answer.status_code == 200, answer.text
            assert answer.json()["id"] == row_id
        again = await client.post("/feedback", json={"id": 1, "Calories": 100.0})
    assert again.status_code == 409


@given(st.one_of(st.integers(), st.text(max_size=20)))
def test_log_keys_of_different_ids_never_meet(row_id: int | str) -> None:
    """An integer's key is never a string's key (``#n`` against strings escaped by a ``#``)."""
    other: int | str = str(row_id) if isinstance(row_id, int) else row_id
    if isinstance(row_id, int):
        assert log_key(row_id) != log_key(other)
        assert log_key(row_id) != log_key(f"#{row_id}")
    assert log_key(row_id) == log_key(row_id)


@given(st.text(alphabet=st.sampled_from("mMaAlLeEfFxX \t\n\u00a0\u2003\x1c-"), max_size=9))
def test_the_documented_sex_pattern_is_exactly_what_the_api_accepts(text: str) -> None:
    """OpenAPI's Sex pattern matches a spelling iff encode_sex accepts it."""
    try:
        encode_sex(text)
        accepted = True
    except ValueError:
        accepted = False
    assert (re.search(SEX_PATTERN, text) is not None) == accepted


async def test_openapi_states_what_is_accepted_and_every_status(trained_model_dir: Path) -> None:
    """Sex spellings, batch bounds, id bounds, and the guard's and handlers' statuses."""
    async with api_client(trained_model_dir, max_batch_rows=77) as client:
        schema = (await client.get("/openapi.json")).json()
    components = schema["components"]["schemas"]
    with_sex, with_gender = components["Row"]["anyOf"]
    assert (with_sex["required"][0], with_gender["required"][0]) == ("Sex", "Gender")
    for branch in (with_sex, with_gender):
        properties = branch["properties"]
        assert properties["Sex"]["pattern"] == properties["Gender"]["pattern"] == SEX_PATTERN
        integer_id = properties["id"]["anyOf"][0]
        assert (integer_id["type"], integer_id["minimum"], integer_id["maximum"]) == (
            "integer", -ID_MAX, ID_MAX,
        )  # fmt: skip
    body = schema["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"]
    batches = [branch for branch in body["schema"]["anyOf"] if branch.get("type") == "array"]
    assert (batches[0]["minItems"], batches[0]["maxItems"]) == (1, 77)
    expected = {
        ("post", "/predict"): {"200", "400", "413", "415", "422", "503"},
        ("post", "/feedback"): {"200", "400", "404", "409", "413", "415", "422", "503"},
        ("post", "/reload"): {"200", "400", "413", "415"},
        ("get", "/metrics"): {"200", "400"},
    }
    for (method, path), statuses in expected.items():
        assert statuses <= set(schema["paths"][path][method]["responses"]), path


# --- a real server: clients that leave mid-body ---------------------------------------------


@pytest.fixture(scope="module")
def api_with_log(
    trained_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, Path]]:
    """uvicorn serving the trained model, its log kept for reading."""
    port = free_port()
    log = tmp_path_factory.mktemp("api-log") / "api.log"
    url = f"http://127.0.0.1:{port}"
    env = {"CALOPS_MODEL": str(trained_model_dir)}
    with running(api_argv(port), ready_url=f"{url}/readyz", env=env, log=log):
        yield url, log


def _leave_mid_body(url: str, path: str) -> None:
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(
            f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
            'Content-Length: 5000\r\n\r\n{"id": 1, '.encode()
        )
        time.sleep(0.2)


@pytest.mark.integration
@pytest.mark.parametrize("path", ["/predict", "/feedback"])
def test_a_client_leaving_mid_body_is_499_and_no_error(
    api_with_log: tuple[str, Path], path: str
) -> None:
    """No ERROR traceback in the log and no 500 in app_requests_total: a 499, as nginx counts."""
    url, log = api_with_log
    for _ in range(3):
        _leave_mid_body(url, path)
    deadline = time.monotonic() + 10
    metrics = ""
    closed = f'app_requests_total{{method="POST",route="{path}",status="499"}} 3.0'
    while closed not in metrics and time.monotonic() < deadline:
        time.sleep(0.1)
        metrics = httpx.get(f"{url}/metrics", timeout=5).text
    assert closed in metrics
    assert 'status="500"' not in metrics
    text = log.read_text()
    assert "ERROR" not in text, text[-2000:]
    assert "Traceback" not in text, text[-2000:]


async def test_gender_beside_sex_must_be_a_spelling_too(trained_model_dir: Path) -> None:
    """Sex is used when both keys come, but a Gender that is no spelling is a 422, as documented."""
    async with api_client(trained_model_dir) as client:
        both = await client.post("/predict", json=row(Sex="female", Gender="MALE"))
        bad = await client.post("/predict", json=row(Sex="female", Gender="robot"))
    assert both.status_code == 200
    assert bad.status_code == 422
    assert "Gender must be" in bad.text
