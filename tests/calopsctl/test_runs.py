"""Run folders: staging, finishing, discarding, listing, the `current` pointer, the history."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest

from calapi.errors import CalopsError
from calapi.model.runrecord import POINTER, RUN_FILE, RUN_SCHEMA, RunInfo
from calopsctl.runs import (
    LEGACY_FILES,
    PROMOTIONS,
    STAGING_PREFIX,
    RunFolders,
    read_run,
)

SHA = "ab" * 32


def run_info(
    run_id: str | None, *, version: str | None = "1", created: str = "2024-01-01T00:00:00+00:00"
) -> RunInfo:
    return RunInfo(
        run_id=run_id,
        model_name="calories",
        version=version,
        created=created,
        data_source="synthetic",
        synthetic=True,
        evaluated_on="holdout",
        rmsle=0.1,
        trainer="calapi.model.train",
        sha256=SHA,
    )


def finished(
    folders: RunFolders,
    run_id: str | None,
    *,
    version: str | None = "1",
    created: str = "2024-01-01T00:00:00+00:00",
) -> Path:
    """A complete run folder holding a (fake) model file."""
    staging = folders.staging()
    (staging / "model.joblib").write_bytes(b"model")
    return folders.finish(staging, run_info(run_id, version=version, created=created))


# -- writing a run --------------------------------------------------------------------------------


def test_staging_is_a_fresh_dot_folder_under_runs(tmp_path: Path) -> None:
    """Each staging folder is new, hidden by its dot name, and created with runs/ itself."""
    folders = RunFolders(tmp_path / "artifacts")
    first, second = folders.staging(), folders.staging()
    assert first != second
    for folder in (first, second):
        assert folder.is_dir()
        assert folder.parent == tmp_path / "artifacts" / "runs"
        assert folder.name.startswith(STAGING_PREFIX)
    assert folders.listing() == []


def test_staging_in_an_unwritable_place_is_one_sentence(tmp_path: Path) -> None:
    """An outputs folder that cannot hold runs/ fails with a CalopsError naming it."""
    blocker = tmp_path / "artifacts"
    blocker.write_text("a file where the outputs folder should be", encoding="utf-8")
    with pytest.raises(CalopsError, match=r"Could not create a run folder in .*outputs\.dir"):
        RunFolders(blocker).staging()


def test_finish_writes_run_json_last_and_renames(tmp_path: Path) -> None:
    """finish() writes run.json and gives the folder its run id; no staging or temp file stays."""
    folders = RunFolders(tmp_path)
    staging = folders.staging()
    (staging / "model.joblib").write_bytes(b"model")
    final = folders.finish(staging, run_info("0123456789abcdef"))
    assert final == tmp_path / "runs" / "0123456789abcdef"
    assert not staging.exists()
    assert sorted(p.name for p in final.iterdir()) == ["model.joblib", RUN_FILE]
    raw = json.loads((final / RUN_FILE).read_text(encoding="utf-8"))
    assert raw["schema"] == RUN_SCHEMA
    assert raw["run_id"] == "0123456789abcdef"
    assert read_run(final) == run_info("0123456789abcdef")


def test_finish_without_run_id_names_the_folder_by_sha(tmp_path: Path) -> None:
    """An adopted model has no run id: its folder is legacy-<sha12>."""
    folder = finished(RunFolders(tmp_path), None, version=None)
    assert folder.name == f"legacy-{SHA[:12]}"


def test_discard_removes_a_failed_run(tmp_path: Path) -> None:
    """Without anything to keep, the staging folder disappears entirely."""
    folders = RunFolders(tmp_path)
    staging = folders.staging()
    (staging / "model.joblib").write_bytes(b"half")
    RunFolders.discard(staging)
    assert not staging.exists()


def test_discard_keeps_only_the_log(tmp_path: Path) -> None:
    """keep=("train.log",) leaves the log (the error points at it) and nothing else."""
    folders = RunFolders(tmp_path)
    staging = folders.staging()
    (staging / "train.log").write_text("fitting\nboom\n", encoding="utf-8")
    (staging / "model.joblib").write_bytes(b"half")
    (staging / "nested").mkdir()
    (staging / "nested" / "x.bin").write_bytes(b"x")
    os.symlink(tmp_path, staging / "link")  # a link to a folder is removed, not followed
    RunFolders.discard(staging, keep=("train.log", "missing.txt"))
    assert sorted(p.name for p in staging.iterdir()) == ["train.log"]
    assert (staging / "train.log").read_text(encoding="utf-8") == "fitting\nboom\n"
    assert tmp_path.is_dir()
    assert folders.listing() == []


def test_discard_with_nothing_to_keep_present_removes_all(tmp_path: Path) -> None:
    """A failure before the log was written leaves no folder behind."""
    staging = RunFolders(tmp_path).staging()
    (staging / "model.joblib").write_bytes(b"half")
    RunFolders.discard(staging, keep=("train.log",))
    assert not staging.exists()


# -- reading runs ---------------------------------------------------------------------------------


def test_listing_has_only_complete_runs_oldest_first(tmp_path: Path) -> None:
    """Dot folders, folders without (or with a broken) run.json, and files are not runs."""
    folders = RunFolders(tmp_path)
    newer = finished(folders, "bbbbbbbb", version="2", created="2024-05-01T00:00:00+00:00")
    older = finished(folders, "aaaaaaaa", version="1", created="2024-01-01T00:00:00+00:00")
    hidden = folders.staging()
    (hidden / RUN_FILE).write_text(json.dumps(run_info("hidden").as_json()), encoding="utf-8")
    (tmp_path / "runs" / "no-record").mkdir()
    (tmp_path / "runs" / "broken").mkdir()
    (tmp_path / "runs" / "broken" / RUN_FILE).write_text("{not json", encoding="utf-8")
    (tmp_path / "runs" / "not-a-dict").mkdir()
    (tmp_path / "runs" / "not-a-dict" / RUN_FILE).write_text("[1, 2]", encoding="utf-8")
    (tmp_path / "runs" / "missing-keys").mkdir()
    (tmp_path / "runs" / "missing-keys" / RUN_FILE).write_text('{"a": 1}', encoding="utf-8")
    (tmp_path / "runs" / "stray.txt").write_text("x", encoding="utf-8")
    listed = folders.listing()
    assert [folder for folder, _ in listed] == [older, newer]
    assert [found.version for _, found in listed] == ["1", "2"]


def test_listing_without_runs_folder_is_empty(tmp_path: Path) -> None:
    assert RunFolders(tmp_path / "nothing").listing() == []


def test_run_info_round_trip_ignores_unknown_keys() -> None:
    """A newer calops's run.json (extra keys) still reads; the schema key is not a field."""
    original = run_info("abc", version="7")
    raw = {**original.as_json(), "future_field": {"x": 1}, "schema": 99}
    assert RunInfo.from_json(raw) == original
    assert RunInfo.from_json(json.loads(json.dumps(original.as_json()))) == original


def test_read_run_is_none_for_missing_or_unreadable(tmp_path: Path) -> None:
    assert read_run(tmp_path) is None
    (tmp_path / RUN_FILE).write_text("null", encoding="utf-8")
    assert read_run(tmp_path) is None


# -- the pointer ----------------------------------------------------------------------------------


def test_point_writes_a_relative_symlink(tmp_path: Path) -> None:
    """`current` is relative, so the outputs folder can be moved or mounted elsewhere."""
    folders = RunFolders(tmp_path / "artifacts")
    assert folders.served() is None
    run = finished(folders, "aaaaaaaa")
    folders.point(run)
    assert folders.pointer.is_symlink()
    assert os.readlink(folders.pointer) == os.path.join("runs", "aaaaaaaa")
    assert folders.served() == run.resolve()
    moved = tmp_path / "moved"
    (tmp_path / "artifacts").rename(moved)
    assert RunFolders(moved).served() == (moved / "runs" / "aaaaaaaa").resolve()


def test_point_replaces_an_existing_pointer_and_leaves_no_temporary(tmp_path: Path) -> None:
    folders = RunFolders(tmp_path)
    first, second = finished(folders, "aaaaaaaa"), finished(folders, "bbbbbbbb")
    folders.point(first)
    folders.point(second)
    assert folders.served() == second.resolve()
    folders.point(first)
    assert folders.served() == first.resolve()
    assert sorted(p.name for p in tmp_path.iterdir()) == [POINTER, "runs"]


def test_point_is_atomic_for_readers(tmp_path: Path) -> None:
    """A reader polling `current` while it is switched always sees one of the two runs."""
    folders = RunFolders(tmp_path)
    runs = (finished(folders, "aaaaaaaa"), finished(folders, "bbbbbbbb"))
    folders.point(runs[0])
    expected = {str(run.resolve()) for run in runs}
    seen: list[str] = []
    done = threading.Event()

    def read() -> None:
        while not done.is_set():
            seen.append(os.path.realpath(folders.pointer) if folders.pointer.exists() else "none")

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for index in range(300):
            folders.point(runs[index % 2])
    finally:
        done.set()
        reader.join()
    assert seen
    assert set(seen) <= expected


def test_served_follows_a_dangling_pointer(tmp_path: Path) -> None:
    """A pointer to a removed run still counts as a pointer (no legacy model is guessed)."""
    folders = RunFolders(tmp_path)
    folders.point(tmp_path / "runs" / "gone")
    (tmp_path / LEGACY_FILES[0]).write_bytes(b"model")
    assert folders.served() == (tmp_path / "runs" / "gone").resolve()
    assert folders.legacy_model() is None


# -- the legacy layout ----------------------------------------------------------------------------


def test_legacy_model_is_found_only_without_a_pointer(tmp_path: Path) -> None:
    folders = RunFolders(tmp_path)
    assert folders.legacy_model() is None
    (tmp_path / "model.joblib").write_bytes(b"model")
    assert folders.legacy_model() == tmp_path / "model.joblib"
    (tmp_path / "model.skops").write_bytes(b"model")
    assert folders.legacy_model() == tmp_path / "model.skops"  # the safe format first
    folders.point(finished(folders, "aaaaaaaa"))
    assert folders.legacy_model() is None


def test_adopt_legacy_moves_the_files_into_a_run_and_points_there(tmp_path: Path) -> None:
    """The three legacy files move into runs/legacy-<sha12>, which `current` then serves."""
    folders = RunFolders(tmp_path)
    for name in LEGACY_FILES:
        (tmp_path / name).write_text(name, encoding="utf-8")
    folder = folders.adopt_legacy("calories", SHA, "2023-01-01T00:00:00+00:00", "model.skops")
    assert folder == tmp_path / "runs" / f"legacy-{SHA[:12]}"
    assert folders.served() == folder.resolve()
    assert not any((tmp_path / name).exists() for name in LEGACY_FILES)
    assert sorted(p.name for p in folder.iterdir()) == sorted([*LEGACY_FILES, RUN_FILE])
    adopted = read_run(folder)
    assert adopted is not None
    assert (adopted.run_id, adopted.version, adopted.sha256) == (None, None, SHA)
    assert adopted.model_file == "model.skops"
    assert adopted.created == "2023-01-01T00:00:00+00:00"


# -- the history ----------------------------------------------------------------------------------


def test_promotions_round_trip_in_order(tmp_path: Path) -> None:
    folders = RunFolders(tmp_path)
    assert folders.promotions() == []
    folders.record({"version": "1", "how": "gate"})
    folders.record({"version": "2", "how": "promote"})
    assert folders.promotions() == [
        {"version": "1", "how": "gate"},
        {"version": "2", "how": "promote"},
    ]


def test_promotions_skip_a_torn_last_line_and_non_objects(tmp_path: Path) -> None:
    """A crash mid-write leaves half a line: it is skipped, not fatal."""
    (tmp_path / PROMOTIONS).write_text(
        '{"version": "1"}\n[1, 2]\n\n{"version": "2"}\n{"vers', encoding="utf-8"
    )
    assert RunFolders(tmp_path).promotions() == [{"version": "1"}, {"version": "2"}]


def test_record_after_a_torn_last_line_keeps_the_new_event(tmp_path: Path) -> None:
    """The first promotion after a crash must still be in the history."""
    (tmp_path / PROMOTIONS).write_text('{"version": "1"}\n{"vers', encoding="utf-8")
    folders = RunFolders(tmp_path)
    folders.record({"version": "2"})
    assert folders.promotions() == [{"version": "1"}, {"version": "2"}]
