"""The serving pointer, the gate, promote and rollback, and waiting for the API to follow."""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, cast

import pytest

from calapi.errors import CalopsError, ModelError
from calapi.model.artifact import file_sha256
from calapi.model.runrecord import RunInfo
from calapi.serving.sources import LoadedModel, LocalSource
from calopsctl import lifecycle
from calopsctl.lifecycle import (
    FOLDER_ALIAS,
    HISTORY_TAG,
    HISTORY_TAG_MAX_CHARS,
    LEGACY_KEY,
    AliasPointer,
    Candidate,
    FolderPointer,
    Promotion,
    ServingPointer,
)
from calopsctl.runs import LEGACY_FILES, RunFolders
from calopsctl.tracking import LoggedRun, Registered, RunRecord, TrackingError
from conftest import small_config
from support import free_port

NAME = "calories"


# ---------------------------------------------------------------- tiny real models


@dataclass(frozen=True)
class Trained:
    """Two models fitted on the same rows: a good one and a deliberately poor one."""

    good: Path
    bad: Path
    evaluation: Any  # the held-out rows (a DataFrame) both are compared on
    good_rmsle: float


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    from calapi.model.train import run

    good = run(small_config(tmp_path_factory.mktemp("good"), rows=1500, max_iter=40))
    bad = run(small_config(tmp_path_factory.mktemp("bad"), rows=1500, max_iter=1))
    assert good.evaluation is not None
    return Trained(good.output_dir, bad.output_dir, good.evaluation, good.metrics["rmsle"])


def add_run(
    root: Path,
    run_id: str,
    version: str | None,
    *,
    model: Path | None = None,
    created: str = "2024-01-01T00:00:00+00:00",
) -> Path:
    """A complete run folder under ``root``; with the model files of ``model`` when given."""
    folders = RunFolders(root)
    staging = folders.staging()
    sha = None
    if model is not None:
        for name in LEGACY_FILES:
            shutil.copy2(model / name, staging / name)
        sha = file_sha256(staging / LEGACY_FILES[0])
    info = RunInfo(
        run_id=run_id,
        model_name=NAME,
        version=version,
        created=created,
        evaluated_on="holdout",
        sha256=sha,
    )
    return folders.finish(staging, info)


def event(version: str, how: str = "promote", reason: str = "by hand") -> Promotion:
    return Promotion(version, "2024-01-01T00:00:00+00:00", "tester@host", how, reason)


def loader(folder: Path) -> Any:
    """What the gate calls to load the challenger."""
    return lambda: LocalSource(folder / "model.skops").load()


# ---------------------------------------------------------------- an in-memory registry


class Registry:
    """The Tracker protocol in memory: registered versions, aliases and model tags."""

    def __init__(self) -> None:
        self.registered: list[tuple[RunInfo, Path | None]] = []
        self.alias_of: dict[str, str] = {}
        self.tags: dict[str, str] = {}
        self.tag_writes: list[str] = []

    def add(self, run_id: str, folder: Path | None = None) -> RunInfo:
        info = RunInfo(run_id, NAME, str(len(self.registered) + 1), "2024-01-01T00:00:00+00:00")
        self.registered.append((info, folder))
        return info

    def log_run(self, record: RunRecord) -> LoggedRun:
        info = self.add(f"run{len(self.registered) + 1:06d}", record.artifacts[0].parent)
        version = info.version or ""
        uri = f"models:/{record.model_name}/{version}"
        return LoggedRun(info.run_id or "", "0", version, "memory:/", uri)

    def _aliases(self, version: str | None) -> tuple[str, ...]:
        return tuple(sorted(a for a, v in self.alias_of.items() if v == version))

    def aliased(self, model_name: str, alias: str) -> Registered | None:
        version = self.alias_of.get(alias)
        found = [info for info, _ in self.registered if info.version == version]
        return (found[0], self._aliases(version)) if found else None

    def versions(self, model_name: str) -> list[Registered]:
        return [(info, self._aliases(info.version)) for info, _ in self.registered]

    def set_alias(self, model_name: str, alias: str, version: str) -> None:
        if all(info.version != version for info, _ in self.registered):
            raise TrackingError(f"no version {version}")
        self.alias_of[alias] = version

    def model_tag(self, model_name: str, key: str) -> str | None:
        return self.tags.get(key)

    def set_model_tag(self, model_name: str, key: str, value: str) -> None:
        self.tags[key] = value
        self.tag_writes.append(value)

    def load_version(self, model_name: str, version: str) -> LoadedModel:
        for info, folder in self.registered:
            if info.version == version and folder is not None:
                return LocalSource(folder / "model.skops").load()
        raise TrackingError(f"MLflow has no files for version {version}.")


def alias_pointer(registry: Registry) -> AliasPointer:
    return AliasPointer(registry, NAME, "champion", "memory:/")


# ---------------------------------------------------------------- the champion stack


@pytest.mark.parametrize(
    ("moves", "stack"),
    [
        ([], []),
        ([("1", "gate")], ["1"]),
        ([("1", "gate"), ("2", "gate")], ["1", "2"]),
        ([("1", "gate"), ("1", "promote")], ["1"]),
        ([("1", "gate"), ("2", "promote"), ("1", "rollback")], ["1"]),
        ([("1", "gate"), ("2", "gate"), ("3", "forced"), ("2", "rollback")], ["1", "2"]),
        (
            [("1", "gate"), ("2", "gate"), ("3", "gate"), ("2", "rollback"), ("1", "rollback")],
            ["1"],
        ),
        ([("1", "gate"), ("2", "gate"), ("1", "rollback"), ("3", "promote")], ["1", "3"]),
        (
            [("1", "gate"), ("2", "gate"), ("1", "rollback"), ("2", "promote"), ("1", "rollback")],
            ["1"],
        ),
        ([("5", "rollback")], ["5"]),  # history whose start was dropped
        ([("1", "gate"), ("3", "rollback")], ["3"]),  # a rollback the replay cannot pair
    ],
)
def test_champion_stack_replays_the_history(moves: list[tuple[str, str]], stack: list[str]) -> None:
    """Each promotion pushes; each rollback undoes the move before it."""
    assert lifecycle.champion_stack([event(v, how) for v, how in moves]) == stack


def test_last_promotions_keep_the_latest_move_per_version() -> None:
    history = [event("1", "gate"), event("2", "gate"), event("1", "rollback")]
    latest = lifecycle.last_promotions(history)
    assert {v: p.how for v, p in latest.items()} == {"1": "rollback", "2": "gate"}


def test_promote_and_rollback_walk_back_through_the_champions(tmp_path: Path) -> None:
    """Promote 1, 2, 3; roll back to 2, then 1, then fail; promote 3; roll back to 1."""
    folders = {key: add_run(tmp_path, f"run-{key}-000", key) for key in ("1", "2", "3")}
    pointer = FolderPointer(tmp_path, NAME)
    for key in ("1", "2", "3"):
        moved = lifecycle.promote(pointer, key)
        assert moved.current.key == key
        assert moved.promotion.how == "promote"
    assert RunFolders(tmp_path).served() == folders["3"].resolve()
    back = lifecycle.rollback(pointer)
    assert (back.previous and back.previous.key, back.current.key) == ("3", "2")
    assert back.promotion.how == "rollback"
    assert "back from version 3" in back.promotion.reason
    assert lifecycle.rollback(pointer).current.key == "1"
    assert RunFolders(tmp_path).served() == folders["1"].resolve()
    with pytest.raises(CalopsError, match=r"no earlier champion"):
        lifecycle.rollback(pointer)
    lifecycle.promote(pointer, "3")
    assert lifecycle.rollback(pointer).current.key == "1"
    assert [(p.version, p.how) for p in pointer.history()] == [
        ("1", "promote"), ("2", "promote"), ("3", "promote"), ("2", "rollback"),
        ("1", "rollback"), ("3", "promote"), ("1", "rollback"),
    ]  # fmt: skip


@pytest.mark.parametrize("promoted", [[], ["1"], ["1", "1"]])
def test_rollback_without_an_earlier_champion_is_one_sentence(
    tmp_path: Path, promoted: list[str]
) -> None:
    """Nothing to go back to: one sentence naming what holds the pointer and what to do."""
    add_run(tmp_path, "run-1-000000", "1")
    pointer = FolderPointer(tmp_path, NAME)
    for key in promoted:
        lifecycle.promote(pointer, key)
    with pytest.raises(CalopsError) as raised:
        lifecycle.rollback(pointer)
    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith("There is no earlier champion to roll back to")
    assert ("holds version 1" if promoted else "holds nothing") in message
    assert message.endswith("`calops promote VERSION` picks one.")
    assert len(pointer.history()) == len(promoted)


def test_rollback_with_alias_pointer_moves_the_alias_back() -> None:
    registry = Registry()
    for index in range(3):
        registry.add(f"r{index}")
    pointer = alias_pointer(registry)
    lifecycle.promote(pointer, "1")
    lifecycle.promote(pointer, "3")
    moved = lifecycle.rollback(pointer)
    assert moved.current.key == "1"
    assert registry.alias_of == {"champion": "1"}
    assert [p.how for p in pointer.history()] == ["promote", "promote", "rollback"]


# ---------------------------------------------------------------- find


def test_find_by_version_folder_name_and_run_id_prefix(tmp_path: Path) -> None:
    add_run(tmp_path, "0a1b2c3d4e5f60718293", "1", created="2024-01-01T00:00:00+00:00")
    add_run(tmp_path, "ffee00112233445566", "2", created="2024-01-02T00:00:00+00:00")
    legacy = RunFolders(tmp_path).finish(
        RunFolders(tmp_path).staging(),
        RunInfo(None, NAME, None, "2023-01-01T00:00:00+00:00", sha256="cd" * 32),
    )
    pointer = FolderPointer(tmp_path, NAME)
    assert lifecycle.find(pointer, "2").info.run_id == "ffee00112233445566"
    assert lifecycle.find(pointer, legacy.name).location == str(legacy)
    assert lifecycle.find(pointer, "0a1b2c").key == "1"
    assert lifecycle.find(pointer, "ffee00112233445566").key == "2"


@pytest.mark.parametrize("key", ["0a1b2", "nope", "3", "0a1b2c-no"])
def test_find_unknown_lists_the_known_versions(tmp_path: Path, key: str) -> None:
    """Too short a prefix, or nothing matching: one sentence listing what exists."""
    add_run(tmp_path, "0a1b2c3d4e5f60718293", "1", created="2024-01-01T00:00:00+00:00")
    add_run(tmp_path, "ffee00112233445566", "2", created="2024-01-02T00:00:00+00:00")
    pointer = FolderPointer(tmp_path, NAME)
    with pytest.raises(CalopsError) as raised:
        lifecycle.find(pointer, key)
    message = str(raised.value)
    assert f"No version {key!r} in {pointer.where}" in message
    assert "(known: 1, 2)" in message
    assert "`calops models` lists them" in message


def test_find_ambiguous_run_id_prefix_is_refused(tmp_path: Path) -> None:
    add_run(tmp_path, "abcdef111111", "1")
    add_run(tmp_path, "abcdef222222", "2")
    with pytest.raises(CalopsError, match=r"No version 'abcdef'"):
        lifecycle.find(FolderPointer(tmp_path, NAME), "abcdef")


def test_find_with_nothing_registered_says_none_yet(tmp_path: Path) -> None:
    with pytest.raises(CalopsError, match=r"known: none yet"):
        lifecycle.find(FolderPointer(tmp_path, NAME), "1")


def test_find_lists_only_the_newest_eight(tmp_path: Path) -> None:
    for number in range(1, 11):
        add_run(tmp_path, f"run{number:04d}xx", str(number), created=f"2024-01-{number:02d}")
    with pytest.raises(CalopsError) as raised:
        lifecycle.find(FolderPointer(tmp_path, NAME), "99")
    assert "(known: 3, 4, 5, 6, 7, 8, 9, 10)" in str(raised.value)


# ---------------------------------------------------------------- the alias pointer


def test_alias_pointer_candidates_and_champion() -> None:
    registry = Registry()
    registry.add("r1")
    registry.add("r2")
    pointer = alias_pointer(registry)
    assert pointer.kind == "alias"
    assert pointer.champion() is None
    assert pointer.history() == []
    lifecycle.promote(pointer, "2")
    champion = pointer.champion()
    assert champion is not None
    assert (champion.key, champion.api_version, champion.location, champion.aliases) == (
        "2", f"{NAME}/2", f"models:/{NAME}/2", ("champion",)
    )  # fmt: skip
    assert [c.aliases for c in pointer.candidates()] == [(), ("champion",)]
    assert pointer.where == "alias 'champion' of model 'calories' at memory:/"


def test_alias_history_stays_within_the_tag_limit_and_drops_the_oldest() -> None:
    """Hundreds of moves: the tag never exceeds its bound and keeps the newest events."""
    registry = Registry()
    for index in range(3):
        registry.add(f"r{index}")
    pointer = alias_pointer(registry)
    moves = [
        event(str(index % 3 + 1), "gate", f"RMSLE 0.{index:05d} vs 0.1 on 1,234 rows: no worse")
        for index in range(300)
    ]
    candidates = {c.key: c for c in pointer.candidates()}
    for promotion in moves:
        pointer.move(candidates[promotion.version], promotion)
    assert max(len(value) for value in registry.tag_writes) <= HISTORY_TAG_MAX_CHARS
    kept = pointer.history()
    assert 10 < len(kept) < len(moves)
    assert kept == moves[-len(kept) :]  # round-trips exactly, newest last
    assert registry.alias_of["champion"] == moves[-1].version
    encoded = registry.tags[HISTORY_TAG]
    assert json.loads(encoded)[-1]["reason"] == moves[-1].reason
    longer = json.dumps([*json.loads(encoded), moves[0].as_json()], separators=(",", ":"))
    assert len(longer) > HISTORY_TAG_MAX_CHARS  # the tag is as full as it can be


def test_alias_history_tolerates_a_broken_tag() -> None:
    """A tag someone edited by hand does not stop promotions: unreadable entries are skipped."""
    registry = Registry()
    registry.add("r1")
    pointer = alias_pointer(registry)
    registry.tags[HISTORY_TAG] = "{not json"
    assert pointer.history() == []
    registry.tags[HISTORY_TAG] = json.dumps([{"version": "1"}, 3, event("1").as_json()])
    assert pointer.history() == [event("1")]
    lifecycle.promote(pointer, "1")
    assert [p.how for p in pointer.history()] == ["promote", "promote"]


# ---------------------------------------------------------------- the folder pointer


def test_folder_pointer_on_real_folders(tmp_path: Path, trained: Trained) -> None:
    """Candidates are the run folders; the served one carries the `current` alias."""
    pointer = FolderPointer(tmp_path, NAME)
    assert pointer.kind == "folder"
    assert pointer.where == str(tmp_path / "current")
    assert pointer.champion() is None
    assert pointer.candidates() == []
    first = add_run(tmp_path, "aaaaaaaa11", "1", model=trained.good, created="2024-01-01")
    second = add_run(tmp_path, "bbbbbbbb22", "2", model=trained.bad, created="2024-01-02")
    assert pointer.champion() is None  # nothing points yet
    lifecycle.move_to(pointer, lifecycle.find(pointer, "2"), "gate", "first")
    champion = pointer.champion()
    assert champion is not None
    assert (champion.key, champion.location, champion.api_version) == (
        "2", str(second), f"{NAME}/2"
    )  # fmt: skip
    assert [(c.key, c.aliases) for c in pointer.candidates()] == [
        ("1", ()), ("2", (FOLDER_ALIAS,))
    ]  # fmt: skip
    assert RunFolders(tmp_path).served() == second.resolve()
    loaded = pointer.load(lifecycle.find(pointer, "1"))
    assert loaded.sha256 == file_sha256(first / "model.skops")
    assert [(p.version, p.how, p.reason) for p in pointer.history()] == [("2", "gate", "first")]


def test_folder_pointer_through_a_symlinked_outputs_folder(tmp_path: Path) -> None:
    """/tmp on macOS, a mounted home: the served run is the champion however it is reached."""
    real = tmp_path / "real"
    real.mkdir()
    link = tmp_path / "link"
    link.symlink_to(real)
    add_run(link, "aaaaaaaa11", "1")
    pointer = FolderPointer(link, NAME)
    lifecycle.promote(pointer, "1")
    champion = pointer.champion()
    assert champion is not None
    assert champion.key == "1"
    assert [c.aliases for c in pointer.candidates()] == [(FOLDER_ALIAS,)]


def legacy_layout(root: Path, trained: Trained) -> str:
    """The model written straight into ``root``, as before run folders; its sha256."""
    root.mkdir(parents=True, exist_ok=True)
    for name in LEGACY_FILES:
        shutil.copy2(trained.good / name, root / name)
    return file_sha256(root / "model.skops")


def test_folder_pointer_serves_a_legacy_model_until_adopted(
    tmp_path: Path, trained: Trained
) -> None:
    """A model written into the outputs folder is the champion (key "legacy") as it is."""
    sha = legacy_layout(tmp_path, trained)
    add_run(tmp_path, "aaaaaaaa11", "1", model=trained.bad)
    pointer = FolderPointer(tmp_path, NAME)
    champion = pointer.champion()
    assert champion is not None
    assert (champion.key, champion.api_version, champion.aliases) == (
        LEGACY_KEY, sha[:12], (FOLDER_ALIAS,)
    )  # fmt: skip
    assert champion.info.sha256 == sha
    assert champion.info.rmsle == pytest.approx(trained.good_rmsle)
    assert champion.info.synthetic
    assert [c.key for c in pointer.candidates()] == [LEGACY_KEY, "1"]
    assert pointer.load(champion).sha256 == sha
    # The API reading the folder answers with the sha prefix, before and after adoption.
    assert LocalSource(tmp_path).load().version == sha[:12]
    adopted = pointer.adopt_legacy()
    assert adopted == tmp_path / "runs" / f"legacy-{sha[:12]}"
    assert LocalSource(tmp_path).load().version == sha[:12]
    after = pointer.champion()
    assert after is not None
    assert (after.key, after.api_version, after.info.sha256) == (adopted.name, sha[:12], sha)
    assert pointer.adopt_legacy() is None  # once only


def test_promoting_the_legacy_model_adopts_it(tmp_path: Path, trained: Trained) -> None:
    sha = legacy_layout(tmp_path, trained)
    pointer = FolderPointer(tmp_path, NAME)
    lifecycle.promote(pointer, LEGACY_KEY)
    assert RunFolders(tmp_path).served() == (tmp_path / "runs" / f"legacy-{sha[:12]}").resolve()
    assert not (tmp_path / "model.skops").exists()
    assert [p.version for p in pointer.history()] == [f"legacy-{sha[:12]}"]


# ---------------------------------------------------------------- the gate


@pytest.fixture
def two_runs(tmp_path: Path, trained: Trained) -> FolderPointer:
    """Run "1" (good model) and run "2" (poor model) in a fresh outputs folder."""
    add_run(tmp_path, "good000001", "1", model=trained.good, created="2024-01-01")
    add_run(tmp_path, "bad0000002", "2", model=trained.bad, created="2024-01-02")
    return FolderPointer(tmp_path, NAME)


def champion_at(pointer: FolderPointer, key: str | None) -> Candidate | None:
    if key is None:
        return None
    candidate = lifecycle.find(pointer, key)
    lifecycle.move_to(pointer, candidate, "promote", "set up")
    return pointer.champion()


def gate(
    pointer: ServingPointer,
    champion: Candidate | None,
    challenger: Path,
    evaluation: Any,
    *,
    force: bool = False,
) -> lifecycle.Verdict:
    return lifecycle.gate(
        pointer,
        champion,
        key="9",
        challenger=loader(challenger),
        evaluation=evaluation,
        no_evaluation="this run has no holdout",
        force=force,
    )


@dataclass(frozen=True)
class GateCase:
    champion: str | None  # the run holding the pointer: "1" good, "2" poor, None nothing
    challenger: str  # "good" or "bad"
    force: bool
    moves: bool
    how: str
    words: str


GATE_CASES = [
    GateCase("1", "bad", False, False, "gate", ": worse; `calops promote 9` forces it"),
    GateCase("2", "good", False, True, "gate", ": no worse"),
    GateCase("1", "good", False, True, "gate", ": no worse"),  # a tie: the new one serves
    GateCase("1", "bad", True, True, "forced", "forced with --promote"),
    GateCase(None, "bad", False, True, "gate", "nothing held"),
]


@pytest.mark.parametrize(
    "case", GATE_CASES, ids=["worse", "better", "tie", "forced", "no-champion"]
)
def test_gate_decision_table(two_runs: FolderPointer, trained: Trained, case: GateCase) -> None:
    """Moves when no worse on the same rows, when forced, or when nothing serves yet."""
    champion = champion_at(two_runs, case.champion)
    model = trained.good if case.challenger == "good" else trained.bad
    verdict = gate(two_runs, champion, model, trained.evaluation, force=case.force)
    assert (verdict.move, verdict.how) == (case.moves, case.how)
    assert case.words in verdict.reason
    if champion is not None and not case.force:
        rows = len(trained.evaluation)
        assert verdict.rows == rows
        assert f"both on this run's {rows:,} holdout rows" in verdict.reason
        assert f"version {case.champion}" in verdict.reason
        assert verdict.challenger_rmsle is not None
        assert verdict.champion_rmsle is not None
    else:
        assert verdict.rows == 0


def test_gate_scores_like_the_trainer(two_runs: FolderPointer, trained: Trained) -> None:
    """Both RMSLEs come from the API's predictor on the given rows: on the good model's own
    holdout the champion scores exactly what its training reported."""
    champion = champion_at(two_runs, "1")
    verdict = gate(two_runs, champion, trained.bad, trained.evaluation)
    assert verdict.champion_rmsle == pytest.approx(trained.good_rmsle, rel=1e-9)
    bad = json.loads((trained.bad / "metrics.json").read_text(encoding="utf-8"))["rmsle"]
    assert verdict.challenger_rmsle == pytest.approx(bad, rel=1e-9)
    assert verdict.challenger_rmsle is not None
    assert verdict.champion_rmsle is not None
    assert verdict.challenger_rmsle > verdict.champion_rmsle
    assert f"RMSLE {verdict.challenger_rmsle:.5f} vs {verdict.champion_rmsle:.5f}" in (
        verdict.reason
    )


def test_gate_without_evaluation_rows_keeps_the_champion(
    two_runs: FolderPointer, trained: Trained
) -> None:
    champion = champion_at(two_runs, "2")
    verdict = gate(two_runs, champion, trained.good, None)
    assert not verdict.move
    assert verdict.reason == "this run has no holdout; `calops promote 9` moves it"
    assert verdict.rows == 0


@pytest.mark.parametrize("damage", ["corrupt", "missing"])
def test_gate_keeps_a_champion_it_cannot_load(
    two_runs: FolderPointer, trained: Trained, damage: str
) -> None:
    """A champion that cannot be scored is not replaced silently: the reason says why."""
    champion = champion_at(two_runs, "1")
    assert champion is not None
    model = Path(champion.location) / "model.skops"
    if damage == "corrupt":
        model.write_bytes(b"not a pickle")
    else:
        model.unlink()
    verdict = gate(two_runs, champion, trained.good, trained.evaluation)
    assert not verdict.move
    assert "version 1 could not be loaded to score it on this run's holdout" in verdict.reason
    assert "`calops promote 9` moves it anyway" in verdict.reason


def test_gate_replaces_a_champion_of_older_calops_the_api_refuses(
    two_runs: FolderPointer, trained: Trained
) -> None:
    """A champion run holding only a pickle (older calops) cannot serve: the new run replaces it."""
    champion = champion_at(two_runs, "1")
    assert champion is not None
    folder = Path(champion.location)
    (folder / "model.skops").unlink()
    record = json.loads((folder / "run.json").read_text(encoding="utf-8"))
    record.update(model_file="model.joblib", sha256=file_sha256(folder / "model.joblib"))
    (folder / "run.json").write_text(json.dumps(record), encoding="utf-8")
    champion = two_runs.champion()
    assert champion is not None
    verdict = gate(two_runs, champion, trained.good, trained.evaluation)
    assert verdict.move
    assert "version 1 cannot serve" in verdict.reason
    assert "is a pickle" in verdict.reason


def test_gate_with_an_alias_champion_the_registry_cannot_load(trained: Trained) -> None:
    registry = Registry()
    registry.add("r1")  # registered, but its files are gone
    pointer = alias_pointer(registry)
    champion = champion_at_alias(pointer, "1")
    verdict = gate(pointer, champion, trained.good, trained.evaluation)
    assert not verdict.move
    assert "MLflow has no files for version 1" in verdict.reason


def test_gate_with_an_alias_champion_scores_it(trained: Trained) -> None:
    registry = Registry()
    registry.add("r1", trained.good)
    pointer = alias_pointer(registry)
    champion = champion_at_alias(pointer, "1")
    verdict = gate(pointer, champion, trained.bad, trained.evaluation)
    assert not verdict.move
    assert verdict.champion_rmsle == pytest.approx(trained.good_rmsle, rel=1e-9)


def champion_at_alias(pointer: AliasPointer, key: str) -> Candidate | None:
    lifecycle.promote(pointer, key)
    return pointer.champion()


def test_operator_and_now_are_recorded() -> None:
    assert "@" in lifecycle.operator()
    assert lifecycle.now().endswith("+00:00")


# ---------------------------------------------------------------- following the API


class Peer(ThreadingHTTPServer):
    """An API stand-in: /healthz answers each version of ``answers`` in turn (the last stays)."""

    def __init__(self, answers: list[str | None], status: int = HTTPStatus.OK) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.answers = answers
        self.status = status
        self.calls = 0
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def next_answer(self) -> str | None:
        with self.lock:
            answer = self.answers[min(self.calls, len(self.answers) - 1)]
            self.calls += 1
            return answer


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        peer = cast(Peer, self.server)
        if self.path == "/healthz":
            self._send(peer.status, {"status": "ok", "model_version": peer.next_answer()})
        elif self.path == "/info":
            self._send(HTTPStatus.OK, {"model": {"source": "artifacts/current"}})
        else:
            self._send(HTTPStatus.NOT_FOUND, None)

    def _send(self, status: int, body: Any) -> None:
        data = b"not json" if body is None else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        return None


@contextmanager
def peer(answers: list[str | None], status: int = HTTPStatus.OK) -> Iterator[Peer]:
    server = Peer(answers, status)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02})
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_follow_waits_until_the_api_switches() -> None:
    with peer(["calories/1", "calories/1", "calories/1", "calories/2"]) as api:
        followed = lifecycle.follow(api.url, "calories/2", timeout=10, poll=0.01)
        calls = api.calls
    assert followed.answered
    assert followed.followed
    assert followed.serving == "calories/2"
    assert followed.source == "artifacts/current"
    assert followed.url == api.url
    assert calls == 4
    assert followed.seconds < 5


def test_follow_waits_until_every_replica_behind_the_address_agrees() -> None:
    """Replicas reload on their own: one answer with the new version is not enough when the
    next check reaches a replica still on the old one; ``agreeing`` answers in a row are."""
    answers: list[str | None] = [
        "calories/2",
        "calories/1",
        "calories/2",
        "calories/2",
        "calories/2",
    ]
    with peer(answers) as api:
        followed = lifecycle.follow(api.url, "calories/2", timeout=10, poll=0.01, agreeing=3)
        calls = api.calls
    assert followed.followed
    assert calls == 5


def test_follow_gives_up_after_the_timeout() -> None:
    with peer(["calories/1"]) as api:
        started = time.monotonic()
        followed = lifecycle.follow(api.url, "calories/2", timeout=0.3, poll=0.05)
        elapsed = time.monotonic() - started
    assert followed.answered
    assert not followed.followed
    assert followed.serving == "calories/1"
    assert 0.3 <= followed.seconds < 3
    assert elapsed < 3


def test_follow_with_no_wait_asks_once() -> None:
    with peer(["calories/1", "calories/2"]) as api:
        followed = lifecycle.follow(api.url, "calories/2", timeout=0)
        calls = api.calls
    assert (followed.answered, followed.followed, followed.serving, calls) == (
        True, False, "calories/1", 1
    )  # fmt: skip


def test_api_serving_reads_a_503_without_model() -> None:
    """An API that is up but has no model yet answers 503 with model_version null."""
    with peer([None], status=HTTPStatus.SERVICE_UNAVAILABLE) as api:
        assert lifecycle.api_serving(api.url) == (None, "artifacts/current")
        followed = lifecycle.follow(api.url, "calories/1", timeout=0)
    assert followed.answered
    assert followed.serving is None


def test_follow_against_a_closed_port_answers_false_quickly() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    followed = lifecycle.follow(url, "calories/1", timeout=30)
    assert time.monotonic() - started < 2
    assert not followed.answered
    assert not followed.followed
    assert followed.serving is None
    assert lifecycle.api_serving(url) is None


def test_errors_from_the_model_are_calops_errors() -> None:
    """The gate catches CalopsError; the loaders' failures must be of that family."""
    assert issubclass(ModelError, CalopsError)
    assert issubclass(TrackingError, CalopsError)
