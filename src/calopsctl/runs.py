"""Run folders: each ``calops train`` writes into its own folder, never over what serves.

Layout under the training config's outputs folder (default ``artifacts/``)::

    runs/<run-id>/        model, metrics.json, model_card.json, train.log, run.json
    runs/.staging-<x>/    a run being trained or logged; removed when it fails
    current -> runs/<id>  the local serving pointer (a relative symlink), switched atomically
    promotions.jsonl      every move of that pointer: what, when, who, why

``run.json`` is written last, when the run has been logged, and the folder only then takes
its final name, so a folder under ``runs/`` without a dot is always complete.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from pathlib import Path
from typing import Any, Final

from calapi.errors import CalopsError
from calapi.model.runrecord import POINTER, RUN_FILE, RUNS, RunInfo
from calapi.model.runrecord import read_run as read_record

PROMOTIONS: Final = "promotions.jsonl"
STAGING_PREFIX: Final = ".staging-"
LEGACY_PREFIX: Final = "legacy-"
# The model first: the safe format, else the pickle older calops wrote alone.
LEGACY_FILES: Final = ("model.skops", "model.joblib", "metrics.json", "model_card.json")
LEGACY_MODELS: Final = LEGACY_FILES[:2]


class RunFolders:
    """The run folders and the serving pointer under one outputs folder."""

    def __init__(self, root: Path) -> None:
        # Resolved, so run folders compare equal to where the pointer leads (realpath) even
        # when the outputs folder is reached through a symlink.
        self.root = root.resolve()
        self.runs = self.root / RUNS
        self.pointer = self.root / POINTER

    # -- writing a run ------------------------------------------------------------------------

    def staging(self) -> Path:
        """A fresh folder for a run in progress; its dot name keeps it out of every listing."""
        folder = self.runs / f"{STAGING_PREFIX}{secrets.token_hex(6)}"
        try:
            folder.mkdir(parents=True)
        except OSError as exc:
            raise CalopsError(
                f"Could not create a run folder in {self.runs} ({exc.strerror or exc}); "
                "choose a writable outputs.dir."
            ) from None
        return folder

    def finish(self, staging: Path, info: RunInfo) -> Path:
        """Write run.json into ``staging`` and give it its final name, ``runs/<run-id>``."""
        name = info.run_id or f"{LEGACY_PREFIX}{(info.sha256 or 'model')[:12]}"
        write_json_atomic(staging / RUN_FILE, info.as_json())
        final = self.runs / name
        os.replace(staging, final)
        return final

    @staticmethod
    def discard(staging: Path, keep: tuple[str, ...] = ()) -> None:
        """Remove a failed run, except the files named in ``keep`` (its log, which the error
        message points at); the dot name keeps what is left out of every listing."""
        kept = [staging / name for name in keep if (staging / name).is_file()]
        if not kept:
            shutil.rmtree(staging, ignore_errors=True)
            return
        for entry in staging.iterdir():
            if entry in kept:
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)

    # -- reading runs ---------------------------------------------------------------------------

    def listing(self) -> list[tuple[Path, RunInfo]]:
        """Every complete run folder with its run.json, oldest first."""
        if not self.runs.is_dir():
            return []
        found = []
        for folder in self.runs.iterdir():
            if folder.name.startswith(".") or not folder.is_dir():
                continue
            info = read_run(folder)
            if info is not None:
                found.append((folder, info))
        return sorted(found, key=lambda item: item[1].created)

    def served(self) -> Path | None:
        """The run folder the pointer leads to (None without a pointer)."""
        if not self.pointer.is_symlink() and not self.pointer.exists():
            return None
        return Path(os.path.realpath(self.pointer))

    def legacy_model(self) -> Path | None:
        """A model written straight into the outputs folder (the layout before run folders)."""
        if self.served() is not None:
            return None
        return next((self.root / n for n in LEGACY_MODELS if (self.root / n).is_file()), None)

    # -- the pointer ----------------------------------------------------------------------------

    def point(self, folder: Path) -> None:
        """Switch ``current`` to ``folder`` atomically: readers see the old run or the new one."""
        target = os.path.relpath(folder, self.root)
        temporary = self.root / f".{POINTER}-{secrets.token_hex(4)}"
        os.symlink(target, temporary)
        os.replace(temporary, self.pointer)

    def adopt_legacy(self, model_name: str, sha256: str, created: str, model_file: str) -> Path:
        """Move a model written straight into the outputs folder into a run folder, and serve it.

        The API serving the folder reloads the same bytes (same sha256, same version), and
        from then on nothing written into the outputs folder can reach traffic.
        """
        staging = self.staging()
        for name in LEGACY_FILES:
            if (self.root / name).is_file():
                os.replace(self.root / name, staging / name)
        info = RunInfo(
            run_id=None,
            model_name=model_name,
            version=None,
            created=created,
            trainer="adopted from the outputs folder",
            sha256=sha256,
            model_file=model_file,
        )
        folder = self.finish(staging, info)
        self.point(folder)
        return folder

    # -- the history ----------------------------------------------------------------------------

    def promotions(self) -> list[dict[str, Any]]:
        path = self.root / PROMOTIONS
        if not path.is_file():
            return []
        events = []
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                continue  # a torn last line from a crash is skipped, not fatal
            if isinstance(event, dict):
                events.append(event)
        return events

    def record(self, event: dict[str, Any]) -> None:
        path = self.root / PROMOTIONS
        with path.open("a+b") as handle:
            # After a crash mid-line, start a new line so this event is not glued to the torn one.
            torn = handle.tell() > 0 and not _ends_with_newline(handle)
            handle.write((("\n" if torn else "") + json.dumps(event) + "\n").encode())


def _ends_with_newline(handle: Any) -> bool:
    handle.seek(-1, os.SEEK_END)
    last: bytes = handle.read(1)
    return last == b"\n"


def read_run(folder: Path) -> RunInfo | None:
    """The record of run ``folder``, or None when it is missing, unreadable or incomplete."""
    info = read_record(folder / RUN_FILE)[0]
    return info if info is not None and info.model_name and info.created else None


def write_json_atomic(path: Path, value: Any) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(json.dumps(value, indent=2) + "\n", encoding="utf-8")
    os.replace(temporary, path)
