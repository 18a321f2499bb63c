"""Which stack a command means: the nearest ``.calops`` folder, found the way git finds ``.git``.

``calops up`` run in ``/proj`` keeps its state in ``/proj/.calops``; later commands run from
``/proj/sub`` must find that folder, not invent ``/proj/sub/.calops``. A user-level index of the
stacks that are up (``$XDG_STATE_HOME/calops/stacks.json``) lets a command run from an unrelated
folder say where a stack runs instead of only "nothing is up".

Pure standard library and only file-system reads: the CLI calls it on every stack command and
``calops --help`` must stay fast.
"""

from __future__ import annotations

import json
import os
import shlex
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

DIRNAME: Final = ".calops"
STATE_FILE: Final = "stack.json"  # the record calopsctl.state keeps in a home

Origin = Literal["CALOPS_HOME", "found", "new"]


@dataclass(frozen=True)
class Home:
    """A command's state folder and how it was chosen (for the line naming it)."""

    path: Path  # absolute
    origin: Origin
    start: Path  # the folder the search started from (the working directory)

    @property
    def project_root(self) -> Path:
        """The folder the stack belongs to: the one holding ``.calops``."""
        return self.path.parent


# ---------------------------------------------------------------- finding the home


def find_home(start: Path) -> Path | None:
    """The first ``<dir>/.calops`` folder in ``start`` or above it; a ``.calops`` file is skipped.

    Mirrors git's search for ``.git`` so every folder of a project reaches the same stack.
    """
    for folder in (start, *start.parents):
        candidate = folder / DIRNAME
        if candidate.is_dir():
            return candidate
    return None


def locate(explicit: Path | None, cwd: Path) -> Home:
    """CALOPS_HOME when given, else the nearest ``.calops`` up from ``cwd``, else ``cwd/.calops``.

    The new folder is not created here: read-only commands must not leave one behind.
    """
    start = cwd.resolve()
    if explicit is not None:
        return Home((start / explicit).resolve(), "CALOPS_HOME", start)
    found = find_home(start)
    if found is not None:
        return Home(found, "found", start)
    return Home(start / DIRNAME, "new", start)


# ---------------------------------------------------------------- the index of running stacks


def index_path() -> Path:
    """``$XDG_STATE_HOME/calops/stacks.json`` (default ``~/.local/state/...``).

    Read here rather than in CliSettings because ``state.save_state`` records a stack without
    any settings at hand. A relative XDG_STATE_HOME is ignored, as the XDG spec asks.
    """
    base = os.environ.get("XDG_STATE_HOME", "")
    root = Path(base) if os.path.isabs(base) else Path.home() / ".local" / "state"
    return root / "calops" / "stacks.json"


def remember_stack(home: Path) -> None:
    """Add ``home`` to the index of stacks that are up (``calops up`` recorded it)."""
    entry = home.resolve()
    stacks = _read_index()
    if entry not in stacks:
        _write_index([*stacks, entry])


def forget_stack(home: Path) -> None:
    """Drop ``home`` from the index (``calops down`` removed its record)."""
    entry = home.resolve()
    stacks = _read_index()
    if entry in stacks:
        _write_index([stack for stack in stacks if stack != entry])


def running_stacks(excluding: Path | None = None) -> list[Path]:
    """Homes whose ``stack.json`` still exists, minus ``excluding``; the index drops the rest.

    A record deleted by hand (or by a crashed ``down``) must not be named forever.
    """
    stacks = _read_index()
    alive = [stack for stack in stacks if (stack / STATE_FILE).is_file()]
    if len(alive) < len(stacks):
        _write_index(alive)
    skip = excluding.resolve() if excluding is not None else None
    return [stack for stack in alive if stack != skip]


def _read_index() -> list[Path]:
    """The indexed homes; an absent, unreadable or corrupt index counts as empty.

    The index is only a hint for messages, so it must never make a command fail.
    """
    try:
        data = json.loads(index_path().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    entries = data.get("stacks") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        return []
    return [Path(entry) for entry in entries if isinstance(entry, str) and os.path.isabs(entry)]


def _write_index(stacks: list[Path]) -> None:
    """Replace the index atomically; skip silently when it cannot be written (read-only home)."""
    path = index_path()
    body = json.dumps({"stacks": [str(stack) for stack in stacks]}, indent=2) + "\n"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=".stacks.", suffix=".tmp")
    except OSError:
        return
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as file:
            file.write(body)
        os.replace(tmp, path)
    except OSError:
        Path(tmp).unlink(missing_ok=True)


# ---------------------------------------------------------------- the line naming the stack


def describe(home: Home, *, starting: bool = False) -> str:
    """One sentence for a command's first line: which stack folder it uses and why.

    ``starting`` is for ``calops up``, which creates the folder rather than missing it.
    """
    if home.origin == "new":
        return _describe_new(home, starting=starting)
    where = f"Stack: {home.path} ({_how_found(home)})"
    if starting or (home.path / STATE_FILE).is_file():
        return f"{where}."
    others = running_stacks(excluding=home.path)
    if not others:
        return f"{where}."
    return f"{where}, where nothing is up; {_elsewhere(others)}."


def _how_found(home: Home) -> str:
    if home.origin == "CALOPS_HOME":
        return "CALOPS_HOME"
    if home.project_root == home.start:
        return "in the current folder"
    return f"found from {home.start}"


def _describe_new(home: Home, *, starting: bool) -> str:
    others = running_stacks(excluding=home.path)
    if starting:
        sentence = f"New stack: {home.path} (none in {home.start} or its parents)"
    else:
        sentence = f"No calops stack in {home.start} or its parents"
    return f"{sentence}; {_elsewhere(others)}." if others else f"{sentence}."


def _elsewhere(stacks: list[Path]) -> str:
    """Where other stacks run and how to reach one, e.g. "a stack runs from /proj (...)"."""
    first = stacks[0]
    use_first = f"CALOPS_HOME={shlex.quote(str(first))}"
    if len(stacks) > 1:
        places = ", ".join(str(_place(stack)) for stack in stacks)
        return f"stacks run from {places} (set {use_first} or run from one of them)"
    if first.name == DIRNAME:
        return f"a stack runs from {first.parent} (set {use_first} or run from there)"
    return f"a stack runs in {first} (set {use_first} to use it)"


def _place(stack: Path) -> Path:
    """The folder to run from to reach ``stack``: its project root, or itself when not found."""
    return stack.parent if stack.name == DIRNAME else stack
