"""The run record: ``run.json`` in each run folder, and the names of the run-folder layout.

``calops train`` writes one per run (``<outputs>/runs/<run-id>/run.json``) and switches the
``<outputs>/current`` pointer; the API reads the record of the run ``current`` leads to, to
answer with the registry version ("calories/2") rather than a file hash. One format, read by
both, so it lives with the model.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Final

from calapi.model.safeformat import SAFE_FILE

RUNS: Final = "runs"
POINTER: Final = "current"
RUN_FILE: Final = "run.json"
RUN_SCHEMA: Final = 1
MODEL_FILE: Final = SAFE_FILE  # what a record without ``model_file`` serves


@dataclass(frozen=True)
class RunInfo:
    """What is known of one registered training run (``run.json``, or MLflow's record of it)."""

    run_id: str | None
    model_name: str
    version: str | None  # the registered model version; None for an adopted legacy model
    created: str
    data_source: str = "unknown"
    synthetic: bool = False
    evaluated_on: str | None = None
    rmsle: float | None = None
    trainer: str | None = None
    sha256: str | None = None
    model_file: str = MODEL_FILE
    tracking_uri: str | None = None
    experiment: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {"schema": RUN_SCHEMA, **asdict(self)}

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> RunInfo:
        """The record, tolerant of hand edits: unknown keys are ignored, numbers taken as text
        where text is meant (``"version": 3``), a wrong-typed value as absent."""
        text = {f.name for f in fields(cls)} - {"synthetic", "rmsle"}
        values: dict[str, Any] = {name: _text(raw.get(name)) for name in text}
        values["model_name"] = values["model_name"] or ""
        values["created"] = values["created"] or ""
        values["data_source"] = values["data_source"] or "unknown"
        values["model_file"] = _plain_name(values["model_file"])
        values["synthetic"] = raw.get("synthetic") is True
        rmsle = raw.get("rmsle")
        values["rmsle"] = float(rmsle) if isinstance(rmsle, int | float) else None
        return cls(**values)


def read_run(path: Path) -> tuple[RunInfo | None, str | None]:
    """The record at ``path`` and None, or None and why it is ignored.

    Never raises: a bad record must not stop a good model from serving; it only costs the
    registry version, and the note says so.
    """
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None, f"No {RUN_FILE} at {path}; the version shown is the model's sha256."
    except (OSError, ValueError) as exc:
        return None, f"The run record {path} is unreadable ({exc}); versioned by sha256."
    if not isinstance(raw, dict):
        return None, f"The run record {path} is not a JSON object; versioned by sha256."
    return RunInfo.from_json(raw), None


def _text(value: Any) -> str | None:
    """A non-empty identifier as text (a version may be written as a number)."""
    if isinstance(value, bool) or not isinstance(value, str | int) or value == "":
        return None
    return str(value)


def _plain_name(name: str | None) -> str:
    """``model_file`` only when it is a plain file name inside the run folder."""
    if name is not None and name not in {".", ".."} and Path(name).name == name:
        return name
    return MODEL_FILE
