"""Where calops finds the stack files it ships and the checkout it runs from.

The per-project state folder is ``CliSettings.home`` (``CALOPS_HOME``, else the nearest
``.calops`` up from the working folder: calopsctl.project); its parent is the project folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from calopsctl.project import Home


def stack_dir() -> Path:
    """The stack files: the copy inside the wheel, else the checkout's ``stack/`` folder."""
    packaged = Path(__file__).with_name("_stack")
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parents[2] / "stack"


def source_root() -> Path | None:
    """The checkout this package runs from (needed to build the API image), if any."""
    root = Path(__file__).resolve().parents[2]
    return root if (root / "pyproject.toml").is_file() else None


def project_base(home: Home) -> Path:
    """The folder relative config paths are read from: the project (the folder holding the
    stack's ``.calops``), else the working folder."""
    if home.origin == "found" or (home.origin == "CALOPS_HOME" and home.path.name == ".calops"):
        return home.project_root
    return home.start
