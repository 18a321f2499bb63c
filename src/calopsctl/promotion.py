"""``calops models``, ``promote`` and ``rollback``: the pointer, the versions, the API following.

Finds the serving pointer exactly as ``calops train`` does (the stack's registry alias, the
folder the stack serves, or the outputs folder's ``current`` without a tracking server), moves
it, and waits (bounded) until the API says it answers with the new version.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from calapi.errors import CalopsError
from calapi.serving.settings import ApiSettings
from calopsctl import lifecycle, tracking
from calopsctl.lifecycle import ApiFollow, Candidate, Moved, ServingPointer
from calopsctl.services import loopback_url
from calopsctl.state import load_state
from calopsctl.training import pointer_for, serving_names

Say = Callable[[str], None]


@dataclass(frozen=True)
class Where:
    """Where to look: the tracking option, the state folder, the project folder, the config."""

    home: Path
    base: Path
    tracking: str | None = None
    config: Path | None = None
    url: str | None = None  # the API to watch; default the stack's, else the default port


def open_pointer(where: Where, say: Say) -> ServingPointer:
    """The serving pointer, said in the first line; a tracking server is checked first."""
    name, alias, outputs = serving_names(where.config, where.base)
    target = tracking.resolve_target(where.tracking, home=where.home)
    folder = target.local_default or (target.serves and not target.serves.startswith("models:/"))
    tracker = None
    if not folder:
        tracking.check_reachable(target)
        tracker = tracking.MlflowTracker(target)
    pointer = pointer_for(target, tracker, name, alias, outputs)
    say(f"Serving pointer: {pointer.where}.")
    return pointer


def api_url(where: Where) -> str:
    """The API to watch: ``--url``, else the stack's, else the API's default port."""
    if where.url:
        return where.url.rstrip("/")
    state = load_state(where.home)
    if state is not None and "api" in state.services:
        return state.url("api")
    return loopback_url(ApiSettings.model_fields["port"].default)


# ---------------------------------------------------------------- models


def listing(where: Where, say: Say) -> dict[str, Any]:
    """Every version (or local run) with its numbers and history, and which one serves."""
    pointer = open_pointer(where, say)
    url = api_url(where)
    serving = lifecycle.api_serving(url)
    answers = serving[0] if serving else None
    promoted = lifecycle.last_promotions(pointer.history())
    champion = pointer.champion()
    rows = [
        _row(candidate, promoted.get(candidate.key), champion, answers)
        for candidate in reversed(pointer.candidates())
    ]
    return {
        "pointer": pointer.where,
        "kind": pointer.kind,
        "champion": champion.key if champion else None,
        "api": {
            "url": url,
            "answered": serving is not None,
            "model_version": answers,
            "source": serving[1] if serving else None,
        },
        "versions": rows,
    }


def _row(
    candidate: Candidate,
    promotion: lifecycle.Promotion | None,
    champion: Candidate | None,
    answers: str | None,
) -> dict[str, Any]:
    info = candidate.info
    return {
        "version": candidate.key,
        "run_id": info.run_id,
        "created": info.created,
        "data_source": info.data_source,
        "synthetic": info.synthetic,
        "rmsle": info.rmsle,
        "evaluated_on": info.evaluated_on,
        "trainer": info.trainer,
        "aliases": list(candidate.aliases),
        "champion": champion is not None and champion.key == candidate.key,
        "promoted": None if promotion is None else promotion.as_json(),
        "api_version": candidate.api_version,
        "serving": answers is not None and answers == candidate.api_version,
        "location": candidate.location,
    }


# ---------------------------------------------------------------- promote and rollback


@dataclass(frozen=True)
class Outcome:
    """What moved, and whether the API followed."""

    moved: Moved
    api: ApiFollow
    wait: float

    def as_json(self) -> dict[str, Any]:
        previous = self.moved.previous
        return {
            "pointer": self.moved.where,
            "from": previous.key if previous else None,
            "to": self.moved.current.key,
            "promotion": self.moved.promotion.as_json(),
            "api": {
                "url": self.api.url,
                "answered": self.api.answered,
                "model_version": self.api.serving,
                "expected": self.moved.current.api_version,
                "followed": self.api.followed,
                "seconds": round(self.api.seconds, 2),
            },
        }


def promote(where: Where, key: str, wait: float, say: Say) -> Outcome:
    pointer = open_pointer(where, say)
    return _follow(lifecycle.promote(pointer, key), where, wait, say)


def rollback(where: Where, wait: float, say: Say) -> Outcome:
    pointer = open_pointer(where, say)
    return _follow(lifecycle.rollback(pointer), where, wait, say)


def _follow(moved: Moved, where: Where, wait: float, say: Say) -> Outcome:
    previous = f"version {moved.previous.key}" if moved.previous else "nothing"
    say(f"Moved {moved.where} from {previous} to version {moved.current.key}.")
    url = api_url(where)
    expected = moved.current.api_version
    if wait > 0:
        say(f"Waiting up to {wait:g} s for the API at {url} to answer with {expected}...")
    return Outcome(moved, lifecycle.follow(url, expected, wait, agreeing=_agreeing(where)), wait)


def _agreeing(where: Where) -> int:
    """Answers in a row that show every replica of the stack took the new version: twice as
    many as replicas, since each check may reach any of them."""
    state = None if where.url else load_state(where.home)
    return 2 * state.replicas if state is not None else 1


def verdict(outcome: Outcome) -> tuple[bool, str]:
    """Whether the API followed, and one sentence saying so (or why it did not)."""
    api, expected = outcome.api, outcome.moved.current.api_version
    if api.followed:
        return True, f"The API at {api.url} answers with {expected} ({api.seconds:.1f} s)."
    if outcome.wait <= 0 and api.answered:
        return True, (
            f"The API at {api.url} answers with {api.serving or 'no model'} and takes "
            f"{expected} at its next check (--wait 0: not waited for)."
        )
    if not api.answered:
        return True, (
            f"No API answers at {api.url}; an API serving {outcome.moved.where} takes "
            f"{expected} when it next checks (pass --url to watch another)."
        )
    return False, (
        f"The API at {api.url} still answers with {api.serving or 'no model'} after "
        f"{api.seconds:.0f} s (it serves {api.source or 'an unknown source'}, not "
        f"{outcome.moved.where}?); check `calops info` and its log."
    )


def require_known(key: str) -> str:
    key = key.strip()
    if not key:
        raise CalopsError("Name a version to promote, e.g. `calops promote 3`.")
    return key
