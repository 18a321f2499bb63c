"""What serves, and how it moves: the serving pointer, the promotion gate, promote and rollback.

One pointer decides what answers traffic, with two backends behind one interface:

- ``AliasPointer``: an MLflow registry alias (``models:/calories@champion``), what the stack's
  API serves and follows;
- ``FolderPointer``: ``<outputs>/current``, a symlink to a run folder, what ``calops serve``
  on a folder serves when there is no tracking server.

Training never moves it by itself: ``calops train`` asks the gate, which scores the champion
and the new model on the same rows (the new run's holdout), and ``calops promote`` /
``calops rollback`` move it explicitly. Every move is recorded with who made it and why.
"""

from __future__ import annotations

import getpass
import json
import math
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from http import HTTPStatus
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Protocol

from calapi.errors import CalopsError, PickleRefusedError
from calapi.model.runrecord import RunInfo
from calopsctl.runs import RunFolders

if TYPE_CHECKING:
    import pandas as pd

    from calapi.serving.sources import LoadedModel
    from calopsctl.tracking import Tracker

HISTORY_TAG: Final = "calops.promotions"
HISTORY_TAG_MAX_CHARS: Final = 4500  # registry tag values hold 5000 characters in SQL stores
FOLDER_ALIAS: Final = "current"
LEGACY_KEY: Final = "legacy"


@dataclass(frozen=True)
class Promotion:
    """One move of the serving pointer."""

    version: str  # the key `calops promote` takes: registry version or run folder name
    at: str
    by: str
    how: str  # gate | promote | forced | rollback | adopted | found
    reason: str

    def as_json(self) -> dict[str, str]:
        return {
            "version": self.version, "at": self.at, "by": self.by,
            "how": self.how, "reason": self.reason,
        }  # fmt: skip

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Promotion | None:
        try:
            return cls(*(str(raw[key]) for key in ("version", "at", "by", "how", "reason")))
        except KeyError:
            return None


@dataclass(frozen=True)
class Candidate:
    """A model that could serve: a registered version, or a local run folder."""

    key: str  # what `calops promote KEY` takes
    info: RunInfo
    api_version: str  # the model_version the API answers with while serving it
    location: str  # models:/NAME/VERSION or the run folder
    aliases: tuple[str, ...] = ()


def operator() -> str:
    """Who is moving the pointer, for the record: user@host."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


# ---------------------------------------------------------------- the pointer


class ServingPointer(Protocol):
    """What decides which model serves, whatever holds it."""

    kind: str  # "alias" or "folder"
    where: str  # in words, for messages

    def champion(self) -> Candidate | None: ...

    def candidates(self) -> list[Candidate]: ...

    def load(self, candidate: Candidate) -> LoadedModel: ...

    def history(self) -> list[Promotion]: ...

    def remember(self, promotion: Promotion) -> None: ...

    def move(self, candidate: Candidate, promotion: Promotion) -> None: ...


def find_run(pointer: ServingPointer, run_id: str) -> Candidate:
    """The candidate logged as ``run_id`` (version numbers can repeat across stores)."""
    for candidate in pointer.candidates():
        if candidate.info.run_id == run_id:
            return candidate
    raise CalopsError(f"Run {run_id} is not among the versions of {pointer.where}.")


def find(pointer: ServingPointer, key: str) -> Candidate:
    """The candidate named ``key`` (version, run folder name or run id prefix)."""
    candidates = pointer.candidates()
    for candidate in candidates:
        if key in (candidate.key, candidate.info.version):
            return candidate
    by_run = [c for c in candidates if c.info.run_id and c.info.run_id.startswith(key)]
    if len(key) >= 6 and len(by_run) == 1:  # noqa: PLR2004 - a run id prefix must be specific
        return by_run[0]
    known = ", ".join(c.key for c in candidates[-8:]) or "none yet"
    raise CalopsError(
        f"No version {key!r} in {pointer.where} (known: {known}); `calops models` lists them."
    )


class AliasPointer:
    """An MLflow registry alias; the registered model's tag keeps the history of its moves."""

    kind = "alias"

    def __init__(self, tracker: Tracker, model_name: str, alias: str, uri: str) -> None:
        self.tracker = tracker
        self.model_name = model_name
        self.alias = alias
        self.where = f"alias {alias!r} of model {model_name!r} at {uri}"

    def champion(self) -> Candidate | None:
        found = self.tracker.aliased(self.model_name, self.alias)
        return None if found is None else self._candidate(*found)

    def candidates(self) -> list[Candidate]:
        return [self._candidate(*found) for found in self.tracker.versions(self.model_name)]

    def _candidate(self, info: RunInfo, aliases: tuple[str, ...]) -> Candidate:
        version = info.version or "?"
        return Candidate(
            key=version,
            info=info,
            api_version=f"{self.model_name}/{version}",
            location=f"models:/{self.model_name}/{version}",
            aliases=aliases,
        )

    def load(self, candidate: Candidate) -> LoadedModel:
        return self.tracker.load_version(self.model_name, candidate.key)

    def history(self) -> list[Promotion]:
        raw = self.tracker.model_tag(self.model_name, HISTORY_TAG)
        return _parse_history(raw)

    def remember(self, promotion: Promotion) -> None:
        events = [*self.history(), promotion]
        self.tracker.set_model_tag(self.model_name, HISTORY_TAG, _encode_history(events))

    def move(self, candidate: Candidate, promotion: Promotion) -> None:
        self.tracker.set_alias(self.model_name, self.alias, candidate.key)
        self.remember(promotion)


class FolderPointer:
    """``<outputs>/current``, a symlink to a run folder; ``promotions.jsonl`` beside it."""

    kind = "folder"

    def __init__(self, root: Path, model_name: str) -> None:
        self.folders = RunFolders(root)
        self.model_name = model_name
        self.where = str(self.folders.pointer)

    def champion(self) -> Candidate | None:
        served = self.folders.served()
        if served is not None:
            return next((c for c in self.candidates() if Path(c.location) == served), None)
        return self._legacy()

    def candidates(self) -> list[Candidate]:
        served = self.folders.served()
        found = [
            self._candidate(folder, info, served == folder)
            for folder, info in self.folders.listing()
        ]
        legacy = self._legacy()
        return [legacy, *found] if legacy else found

    def _candidate(self, folder: Path, info: RunInfo, serving: bool) -> Candidate:
        sha = (info.sha256 or "")[:12]
        return Candidate(
            key=info.version or folder.name,
            info=info,
            api_version=f"{info.model_name}/{info.version}" if info.version else sha,
            location=str(folder),
            aliases=(FOLDER_ALIAS,) if serving else (),
        )

    def _legacy(self) -> Candidate | None:
        """A model written straight into the outputs folder, served as it is until adopted."""
        model = self.folders.legacy_model()
        if model is None:
            return None
        info = _legacy_info(model, self.model_name)
        return Candidate(
            LEGACY_KEY, info, (info.sha256 or "")[:12], str(model.parent), (FOLDER_ALIAS,)
        )

    def load(self, candidate: Candidate) -> LoadedModel:
        from calapi.serving.sources import LocalSource

        return LocalSource(Path(candidate.location) / candidate.info.model_file).load()

    def adopt_legacy(self, promotion: Promotion | None = None) -> Path | None:
        """Give a model written straight into the folder its own run folder and point at it.

        Recorded like any move (``promotion``, else an "adopted" event), so a later rollback
        can return to it.
        """
        legacy = self._legacy()
        if legacy is None:
            return None
        info = legacy.info
        folder = self.folders.adopt_legacy(
            self.model_name, info.sha256 or "", info.created, info.model_file
        )
        adopted = promotion or Promotion(
            folder.name, now(), operator(), "adopted", f"served from {self.folders.root} as it was"
        )
        self.folders.record(replace(adopted, version=folder.name).as_json())
        return folder

    def history(self) -> list[Promotion]:
        events = (Promotion.from_json(raw) for raw in self.folders.promotions())
        return [event for event in events if event is not None]

    def move(self, candidate: Candidate, promotion: Promotion) -> None:
        if candidate.key == LEGACY_KEY:
            self.adopt_legacy(promotion)
            return
        self.adopt_legacy()  # a model served from the folder itself stays reachable by rollback
        self.folders.point(Path(candidate.location))
        self.remember(promotion)

    def remember(self, promotion: Promotion) -> None:
        self.folders.record(promotion.as_json())


def _legacy_info(model: Path, model_name: str) -> RunInfo:
    from calapi.model.artifact import file_sha256

    card = _read_json(model.with_name("model_card.json"))
    metrics = _read_json(model.with_name("metrics.json"))
    data: dict[str, Any] = card["data"] if isinstance(card.get("data"), dict) else {}
    rmsle = metrics.get("rmsle")
    sha256 = file_sha256(model)
    return RunInfo(
        run_id=None,
        model_name=model_name,
        version=None,
        created=str(card.get("created") or _mtime(model)),
        data_source=str(data.get("source", "unknown")),
        synthetic=bool(data.get("synthetic", False)),
        evaluated_on=str(metrics.get("evaluated_on", "holdout")) if metrics else None,
        rmsle=float(rmsle) if isinstance(rmsle, int | float) else None,
        trainer=f"written into {model.parent} directly",
        sha256=sha256,
        model_file=model.name,
    )


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}
    return value if isinstance(value, dict) else {}


def _mtime(path: Path) -> str:
    return datetime.fromtimestamp(path.stat().st_mtime, UTC).isoformat(timespec="seconds")


def _parse_history(raw: str | None) -> list[Promotion]:
    try:
        items = json.loads(raw) if raw else []
    except json.JSONDecodeError:
        return []
    events = (Promotion.from_json(item) for item in items if isinstance(item, dict))
    return [event for event in events if event is not None]


def _encode_history(events: list[Promotion]) -> str:
    """The newest events that fit in one registry tag (oldest dropped first)."""
    kept = list(events)
    while True:
        encoded = json.dumps([event.as_json() for event in kept], separators=(",", ":"))
        if len(encoded) <= HISTORY_TAG_MAX_CHARS or len(kept) <= 1:
            return encoded
        kept.pop(0)


# ---------------------------------------------------------------- the gate


@dataclass(frozen=True)
class Verdict:
    """Whether the pointer moves to the new model, and the reason in words."""

    move: bool
    reason: str
    how: str = "gate"
    challenger_rmsle: float | None = None
    champion_rmsle: float | None = None
    rows: int = 0


def score(model: LoadedModel, evaluation: pd.DataFrame) -> float:
    """RMSLE of ``model`` on ``evaluation``, predicted exactly as the API would."""
    return metrics_on(model, evaluation)["rmsle"]


def metrics_on(model: LoadedModel, evaluation: pd.DataFrame) -> dict[str, float]:
    """RMSLE, RMSE, MAE and R² of ``model`` on ``evaluation``, predicted as the API would."""
    import numpy as np

    from calapi.model.data import raw_matrix
    from calapi.model.features import TARGET
    from calapi.model.train import regression_metrics

    predicted = model.predict(raw_matrix(evaluation, where="the evaluation rows"))
    truth = evaluation[TARGET].to_numpy(dtype=np.float64)
    return regression_metrics(truth, predicted)


@dataclass(frozen=True)
class Scores:
    """Both models' RMSLE on the same rows; the champion's is the error that kept it unscored."""

    challenger: float
    champion: float | CalopsError
    rows: int


def champion_score(
    pointer: ServingPointer, champion: Candidate, evaluation: pd.DataFrame
) -> float | CalopsError:
    """The champion's RMSLE on the rows, or why it could not be loaded to score."""
    try:
        return score(pointer.load(champion), evaluation)
    except CalopsError as exc:
        return exc


def gate(
    pointer: ServingPointer,
    champion: Candidate | None,
    *,
    key: str,
    challenger: Callable[[], LoadedModel],
    evaluation: pd.DataFrame | None,
    no_evaluation: str,
    force: bool,
    strict: bool = False,
    rows_named: str | None = None,
    scored: Scores | None = None,
) -> Verdict:
    """Move to the new model only when it is no worse than the champion on the same rows.

    Both models are scored on the new run's holdout, through the predictor the API uses, so
    two runs trained on different data or splits are still compared fairly. When the
    champion saw some of those rows in training it looks better than it is, which errs on the
    side of keeping it. ``strict``: only a better model moves; ``rows_named`` names the rows
    (default: the run's holdout); ``scored``: both scores, already computed on ``evaluation``.
    """
    if force:
        return Verdict(True, "forced with --promote", how="forced")
    if champion is None:
        return Verdict(True, f"nothing held {pointer.where} yet")
    if evaluation is None:
        return Verdict(False, f"{no_evaluation}; `calops promote {key}` moves it")
    if scored is None:
        old = champion_score(pointer, champion, evaluation)
        new = math.nan if isinstance(old, CalopsError) else score(challenger(), evaluation)
        scored = Scores(new, old, len(evaluation))
    named = rows_named or f"this run's {scored.rows:,} holdout rows"
    if isinstance(scored.champion, CalopsError):
        return _unscored(champion, scored.champion, key, rows_named or "this run's holdout")
    return _compared(
        champion, scored.challenger, scored.champion, rows=scored.rows, key=key, named=named,
        strict=strict,
    )  # fmt: skip


def _compared(
    champion: Candidate, new: float, old: float, *, rows: int, key: str, named: str, strict: bool
) -> Verdict:
    compared = f"RMSLE {new:.5f} vs {old:.5f} for version {champion.key}, both on {named}"
    kept = math.isnan(new) or new > old or (strict and new == old)
    if kept:
        word = "not better" if strict else "worse"
        return Verdict(
            False, f"{compared}: {word}; `calops promote {key}` forces it", "gate", new, old, rows
        )
    return Verdict(
        True, f"{compared}: {'better' if strict else 'no worse'}", "gate", new, old, rows
    )


def _unscored(champion: Candidate, exc: CalopsError, key: str, named: str) -> Verdict:
    """The verdict when the champion could not be loaded to score it."""
    held = f"version {champion.key}"
    if isinstance(exc, PickleRefusedError):
        # The API refuses it too (a pickle of older calops): nothing serves that could be kept.
        return Verdict(True, f"{held} cannot serve ({exc}); this run replaces it")
    return Verdict(
        False,
        f"{held} could not be loaded to score it on {named} ({exc}); "
        f"`calops promote {key}` moves it anyway",
    )


# ---------------------------------------------------------------- promote and rollback


@dataclass(frozen=True)
class Moved:
    """What a promotion or rollback changed."""

    previous: Candidate | None
    current: Candidate
    promotion: Promotion
    where: str


def move_to(pointer: ServingPointer, candidate: Candidate, how: str, reason: str) -> Moved:
    """Point at ``candidate`` and record who did it and why."""
    previous = pointer.champion()
    stack = champion_stack(pointer.history())
    unrecorded = previous is not None and (not stack or stack[-1] != previous.key)
    if previous is not None and unrecorded and previous.key not in (candidate.key, LEGACY_KEY):
        # The pointer was moved outside calops (the MLflow UI, a hand-made symlink): record
        # who held it, so a rollback can return to it.
        found = "held the pointer before this move; it was not moved by calops"
        pointer.remember(Promotion(previous.key, now(), "unknown", "found", found))
    promotion = Promotion(candidate.key, now(), operator(), how, reason)
    pointer.move(candidate, promotion)
    return Moved(previous, candidate, promotion, pointer.where)


def promote(pointer: ServingPointer, key: str) -> Moved:
    """Move the pointer to version ``key``, whatever its metrics (the operator decides)."""
    candidate = find(pointer, key)
    return move_to(pointer, candidate, "promote", "promoted by hand (calops promote)")


def rollback(pointer: ServingPointer) -> Moved:
    """Move the pointer back to the champion before the current one."""
    champion = pointer.champion()
    stack = champion_stack(pointer.history())
    while stack and champion is not None and stack[-1] == champion.key:
        stack.pop()
    if not stack:
        held = f"version {champion.key}" if champion else "nothing"
        raise CalopsError(
            f"There is no earlier champion to roll back to ({pointer.where} holds {held} and "
            "its history has no other); `calops promote VERSION` picks one."
        )
    candidate = find(pointer, stack[-1])
    since = f" (back from version {champion.key})" if champion else ""
    return move_to(pointer, candidate, "rollback", f"rolled back{since}")


def champion_stack(history: list[Promotion]) -> list[str]:
    """The champions in order, replaying each move: a rollback undoes the move before it."""
    stack: list[str] = []
    for event in history:
        if event.how == "rollback":
            if stack:
                stack.pop()
            if not stack or stack[-1] != event.version:
                stack.append(event.version)
        elif not stack or stack[-1] != event.version:
            stack.append(event.version)
    return stack


def last_promotions(history: list[Promotion]) -> dict[str, Promotion]:
    """The latest move to each version: who put it in service, when and how."""
    return {event.version: event for event in history}


# ---------------------------------------------------------------- the API follows


@dataclass(frozen=True)
class ApiFollow:
    """Whether the API took the new model, as it said itself."""

    url: str
    answered: bool
    serving: str | None
    followed: bool
    seconds: float
    source: str | None = None


def api_serving(url: str, timeout: float = 3.0) -> tuple[str | None, str | None] | None:
    """(model_version, source) the API at ``url`` answers with, or None if it does not answer."""
    import httpx

    try:
        health = httpx.get(f"{url}/healthz", timeout=timeout)
    except httpx.HTTPError:
        return None
    version: str | None = None
    if health.status_code in (HTTPStatus.OK, HTTPStatus.SERVICE_UNAVAILABLE):
        body = _json(health)
        version = body.get("model_version")
    try:
        source = _json(httpx.get(f"{url}/info", timeout=timeout)).get("model", {}).get("source")
    except httpx.HTTPError:
        source = None
    return version, source


def _json(response: Any) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def follow(
    url: str, expected: str, timeout: float, poll: float = 0.25, *, agreeing: int = 1
) -> ApiFollow:
    """Wait (at most ``timeout`` s) until the API at ``url`` answers with ``expected``
    ``agreeing`` times in a row: behind one address several replicas each reload on their own,
    and every check is a new connection, so a run of answers reaches each of them."""
    started = time.monotonic()
    seen: tuple[str | None, str | None] | None = None
    streak = 0
    while True:
        seen = api_serving(url)
        elapsed = time.monotonic() - started
        if seen is None:
            return ApiFollow(url, False, None, False, elapsed)
        streak = streak + 1 if seen[0] == expected else 0
        if streak >= agreeing or elapsed >= timeout:
            return ApiFollow(url, True, seen[0], streak >= agreeing, elapsed, seen[1])
        if streak == 0:
            time.sleep(poll)
