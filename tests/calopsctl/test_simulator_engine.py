"""The simulator's engine against an in-process fake of the API (the real one: integration)."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import pytest

from calapi.errors import CalopsError
from calapi.model.features import NUMERIC_FEATURES
from calopsctl.simulator.drift import physiology
from calopsctl.simulator.outage import Outage
from calopsctl.simulator.run import simulate
from calopsctl.simulator.settings import DriftKind, SimulationSettings
from calopsctl.simulator.transport import (
    ConnectionFailedError,
    HttpxTransport,
    Reply,
    Transport,
)
from calopsctl.simulator.view import QuietView, Snapshot

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class FakeApi:
    """A tiny ASGI app with the API's contract: predictions kept by id, feedback answered once."""

    def __init__(self, *, scale: float = 1.0, delay: float = 0.0, status: int = 200) -> None:
        self.scale = scale
        self.delay = delay
        self.status = status
        self.health = 200
        self.health_delay = 0.0
        self.predicted: dict[str, float] = {}
        self.feedback: dict[str, float] = {}
        self.requests = 0
        self.in_flight = 0
        self.max_in_flight = 0

    async def __call__(self, scope: Message, receive: Receive, send: Send) -> None:
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        status, answer = await self.route(scope["method"], scope["path"], body)
        headers = [(b"content-type", b"application/json")]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": orjson.dumps(answer)})

    async def route(self, method: str, path: str, body: bytes) -> tuple[int, Any]:
        if (method, path) == ("GET", "/healthz"):
            await asyncio.sleep(self.health_delay)
            return self.health, {"status": "ok"}
        if (method, path) == ("POST", "/predict"):
            return await self.predict(orjson.loads(body))
        if (method, path) == ("POST", "/feedback"):
            return self.answer(orjson.loads(body))
        return 404, {"detail": "not found"}

    async def predict(self, document: Any) -> tuple[int, Any]:
        self.requests += 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.delay:
                await asyncio.sleep(self.delay)
        finally:
            self.in_flight -= 1
        if self.status != 200:
            return self.status, {"detail": "failed"}
        rows = document.get("instances", [document])
        answers = [{"id": row["id"], "Calories": self.calories(row)} for row in rows]
        for answer in answers:
            self.predicted[answer["id"]] = answer["Calories"]
        if "instances" in document:
            return 200, {"predictions": answers, "model_version": "7"}
        return 200, {**answers[0], "model_version": "7"}

    def calories(self, row: dict[str, Any]) -> float:
        """The noise-free physiology: what a perfect model of undrifted data would say."""
        numeric = np.array([[float(row[name]) for name in NUMERIC_FEATURES]])
        return float(physiology(np.array([row["Sex"]]), numeric)[0]) * self.scale

    def answer(self, document: dict[str, Any]) -> tuple[int, Any]:
        row_id = document["id"]
        if row_id not in self.predicted:
            return 404, {"detail": "unknown id"}
        if row_id in self.feedback:
            return 409, {"detail": "already answered"}
        self.feedback[row_id] = float(document["Calories"])
        return 200, {"ok": True}

    def rmsle(self) -> float:
        pairs = [(self.predicted[k], v) for k, v in self.feedback.items()]
        predicted, truth = np.array(pairs).T
        return float(np.sqrt(np.mean((np.log1p(predicted) - np.log1p(truth)) ** 2)))


def settings(**overrides: Any) -> SimulationSettings:
    """A fast run: 40 requests at 400/s, feedback after 20 ms."""
    values: dict[str, Any] = {
        "url": "http://fake",
        "rps": 400.0,
        "count": 40,
        "feedback_delay": 0.02,
    }
    return SimulationSettings(**{**values, **overrides})


def over(app: FakeApi) -> Callable[[SimulationSettings], Transport]:
    """A transport factory that talks to ``app`` in-process."""

    def factory(s: SimulationSettings) -> Transport:
        return HttpxTransport(
            s.url, connections=8, timeout=s.timeout, transport=httpx.ASGITransport(app=app)
        )

    return factory


def run(app: FakeApi, **overrides: Any) -> dict[str, Any]:
    return simulate(settings(**overrides), view=QuietView(), transport=over(app))


def test_every_request_answered_and_every_truth_sent_back() -> None:
    """A clean run sends the planned requests, gets them all answered and feeds back every truth."""
    app = FakeApi()
    report = run(app)
    assert (report["sent"], report["ok"], report["errors"], report["skipped"]) == (40, 40, 0, 0)
    assert app.requests == 40
    assert report["feedback"]["ok"] == len(app.feedback) == 40
    assert report["model_versions"] == ["7"]
    assert not report["interrupted"]


def test_summary_rmsle_matches_what_the_server_saw() -> None:
    """The summary's RMSLE of the rows fed back equals the RMSLE computed from the server's side."""
    app = FakeApi()
    report = run(app)
    assert report["rmsle_feedback"] == pytest.approx(app.rmsle(), abs=1e-4)
    assert report["rmsle"] == pytest.approx(app.rmsle(), abs=1e-4)


def test_batches_go_as_instances_and_every_row_is_counted() -> None:
    """--batch-size sends {"instances": [...]}; rows and feedback count per row."""
    app = FakeApi()
    report = run(app, count=10, batch_size=5)
    assert (report["sent"], report["ok"], report["rows_predicted"]) == (10, 10, 50)
    assert len(app.predicted) == 50
    assert report["feedback"]["ok"] == 50


def test_feedback_fraction_picks_a_share_of_rows() -> None:
    """--feedback-fraction 0.5 sends the truth back for about half of the rows, none for 0."""
    app = FakeApi()
    half = run(app, count=200, rps=2000.0, feedback_fraction=0.5)
    assert 70 <= half["feedback"]["ok"] <= 130
    none = run(FakeApi(), feedback_fraction=0.0)
    assert none["feedback"]["sent"] == 0
    assert none["rmsle_feedback"] is None


def test_server_errors_are_counted_and_get_no_feedback() -> None:
    """5xx and 4xx answers are counted by class, and no feedback is sent for them."""
    failing = run(FakeApi(status=500))
    assert (failing["ok"], failing["status_5xx"], failing["feedback"]["sent"]) == (0, 40, 0)
    rejected = run(FakeApi(status=422))
    assert rejected["status_4xx"] == 40


class DyingTransport:
    """Wraps a transport and refuses every connection after ``alive`` predictions.

    With ``down_for``, connections are refused only for that many predictions, then answered
    again (a process restarting).
    """

    def __init__(self, inner: Transport, alive: int, down_for: int | None = None) -> None:
        self.inner = inner
        self.predictions = 0
        self.alive = alive
        self.down_for = down_for

    async def get(self, path: str) -> Reply:
        return await self.inner.get(path)

    async def post(self, path: str, body: bytes) -> Reply:
        self.predictions += path == "/predict"
        if self.down():
            raise ConnectionFailedError("[Errno 111] refused", reason="connection refused")
        return await self.inner.post(path, body)

    def down(self) -> bool:
        past = self.predictions - self.alive
        return past > 0 and (self.down_for is None or past <= self.down_for)

    async def aclose(self) -> None:
        await self.inner.aclose()


def dying(app: FakeApi, alive: int, down_for: int | None = None) -> Callable[..., Transport]:
    def factory(s: SimulationSettings) -> Transport:
        return DyingTransport(over(app)(s), alive=alive, down_for=down_for)

    return factory


def test_failures_shorter_than_the_window_are_counted_and_the_run_goes_on() -> None:
    """Connections failing for less than the window (here 0.06 s of 3 s) are counted, no more."""
    report = simulate(settings(), view=QuietView(), transport=dying(FakeApi(), alive=15))
    assert report["sent"] == 40
    assert report["ok"] == 15
    assert report["connection_errors"] == 25
    assert report["api_gone"] is None
    assert report["feedback"]["errors"] + report["feedback"]["ok"] == report["feedback"]["sent"]


def test_api_gone_for_the_whole_window_stops_the_run() -> None:
    """Refused for longer than the window with no answer: sending stops and the report says why."""
    s = settings(count=4000, rps=200.0, gone_after=0.3)
    report = simulate(s, view=QuietView(), transport=dying(FakeApi(), alive=20))
    assert report["api_gone"] == "connection refused"
    assert not report["interrupted"]
    assert report["ok"] == 20
    assert report["sent"] < 200  # 0.1 s alive + 0.3 s window at 200/s, far from 4000
    assert report["elapsed_s"] < 5.0


def test_a_blip_shorter_than_the_window_does_not_stop_the_run() -> None:
    """A restart refusing connections for 0.1 s, then answering again: the run goes to its end."""
    s = settings(count=200, rps=200.0, gone_after=0.5)
    report = simulate(s, view=QuietView(), transport=dying(FakeApi(), alive=20, down_for=20))
    assert report["api_gone"] is None
    assert report["sent"] == 200
    assert 0 < report["connection_errors"] <= 20
    assert report["ok"] == 200 - report["connection_errors"]


def test_http_errors_never_count_as_the_api_gone() -> None:
    """Every answer a 503 for longer than the window: counted as 5xx, the run is not stopped."""
    report = run(FakeApi(status=503), count=100, rps=200.0, gone_after=0.1)
    assert report["api_gone"] is None
    assert (report["sent"], report["status_5xx"]) == (100, 100)


def test_outage_needs_the_whole_window_and_resets_on_any_answer() -> None:
    """Failures count toward 'gone' only while no HTTP answer comes between them."""
    outage = Outage(window=3.0, min_failures=3)
    assert not outage.failed(10.0, "connection refused")
    assert not outage.failed(12.0, "connection refused")
    outage.answered()
    assert not outage.failed(13.5, "connection reset")
    assert not outage.failed(16.0, "connection reset")
    assert outage.failed(16.5, "connection reset")
    assert outage.reason == "connection reset"
    slow = Outage(window=1.0, min_failures=3)
    assert not slow.failed(0.0, "x")
    assert not slow.failed(5.0, "x")
    assert slow.failed(6.0, "x")


def test_in_flight_bound_holds_and_late_requests_are_counted() -> None:
    """A slow server never sees more than --max-in-flight requests; waiting ones count as late."""
    app = FakeApi(delay=0.05)
    report = run(app, count=20, rps=1000.0, max_in_flight=3)
    assert app.max_in_flight <= 3
    assert report["late"] > 0
    assert report["ok"] == 20


def test_unreachable_api_at_start_is_one_sentence() -> None:
    """No API at the URL: a CalopsError that says how to start one, before anything is sent."""

    def refused(s: SimulationSettings) -> Transport:
        return HttpxTransport("http://127.0.0.1:9", connections=1, timeout=1.0)

    with pytest.raises(CalopsError, match=r"Cannot reach the API at http://fake; start it"):
        simulate(settings(), view=QuietView(), transport=refused)


def test_nothing_is_announced_before_the_api_answered() -> None:
    """An API that is down is said to be down, without a "Sending ..." line before it."""

    def refused(s: SimulationSettings) -> Transport:
        return HttpxTransport("http://127.0.0.1:9", connections=1, timeout=1.0)

    said: list[str] = []
    with pytest.raises(CalopsError, match="Cannot reach the API"):
        simulate(settings(), view=QuietView(), announce=said.append, transport=refused)
    assert said == []
    simulate(settings(), view=QuietView(), announce=said.append, transport=over(FakeApi()))
    assert said[0].startswith("Sending 40 requests at 400/s to http://fake; Ctrl-C stops.")


def test_api_silent_at_start_is_one_sentence_after_a_short_wait() -> None:
    """/healthz never answering: a sentence naming the wait within the check's timeout."""
    app = FakeApi()
    app.health_delay = 30.0
    started = time.monotonic()
    with pytest.raises(CalopsError, match=r"did not answer /healthz within 0\.3s; check it"):
        run(app, timeout=0.3)
    assert time.monotonic() - started < 5.0
    assert app.requests == 0


class RecordingView:
    """Keeps every snapshot it is shown, ten times a second."""

    interval = 0.1

    def __init__(self) -> None:
        self.shown: list[Snapshot] = []

    def start(self) -> None:
        pass

    def show(self, snap: Snapshot) -> None:
        self.shown.append(snap)

    def stop(self) -> None:
        pass


def test_progress_after_sending_is_the_feedback_drain() -> None:
    """Once every request went, progress counts the truths left and stops the clock."""
    view = RecordingView()
    simulate(settings(feedback_delay=0.6), view=view, transport=over(FakeApi()))
    draining = [snap for snap in view.shown if snap.draining]
    assert draining, view.shown
    assert all(snap.sent == 40 and snap.rate_text == "done" for snap in draining)
    assert 0 < (draining[0].feedback_left or 0) <= 40
    assert all(snap.progress.startswith("0/0s sent · ") for snap in draining)
    assert draining[0].progress.startswith("0/0s sent · draining feedback, ")
    assert view.shown[-1].progress == "0/0s sent · no feedback left"  # the frame left on screen


def test_api_without_a_model_is_one_sentence() -> None:
    """/healthz answering 503 (no model yet) stops the run with a sentence naming the fix."""
    app = FakeApi()
    app.health = 503
    with pytest.raises(CalopsError, match="has no model loaded; train one"):
        run(app)
    assert app.requests == 0


def test_concept_drift_raises_the_error_the_server_sees() -> None:
    """Concept drift scales the truth up, so the RMSLE of fed-back rows rises above a clean run."""
    clean = run(FakeApi(), count=100, rps=1000.0)
    drifted = run(FakeApi(), count=100, rps=1000.0, drift=DriftKind.CONCEPT, drift_start=0.0)
    assert clean["rmsle_feedback"] < 0.1
    assert drifted["rmsle_feedback"] > clean["rmsle_feedback"] + 0.05


def test_duplicate_ids_never_happen_across_runs() -> None:
    """Two runs against the same server use distinct ids, so no feedback is refused as answered."""
    app = FakeApi()
    first = run(app)
    second = run(app)
    assert first["run_id"] != second["run_id"]
    assert second["feedback"]["conflict"] == 0
    assert len(app.predicted) == 80


def test_csv_rows_are_replayed_with_their_truth(tmp_path: Path) -> None:
    """--data replays a CSV (original Kaggle layout) and sends its Calories back."""
    csv = tmp_path / "exercise.csv"
    csv.write_text(
        "User_ID,Gender,Age,Height,Weight,Duration,Heart_Rate,Body_Temp,Calories\n"
        "1,male,30,180,80,20,100,40.0,120\n"
        "2,female,40,165,60,10,90,39.5,40\n",
        encoding="utf-8",
    )
    app = FakeApi()
    report = run(app, data=csv, count=6)
    assert report["ok"] == 6
    assert sorted(set(app.feedback.values())) == [40.0, 120.0]
    assert report["rows_source"] == str(csv)
    assert math.isfinite(report["rmsle"])
