"""Labelled traffic: the answered predictions of a prediction log, in the trainer's layout.

``python -m calapi.serving.predlog.labelled [--since SECONDS] [--log LOCATION]`` writes them
as CSV on stdout (the Docker stack runs it inside an API container, which reaches Redis).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Final

import numpy as np
import pandas as pd

from calapi.model.features import FEATURES, NUMERIC_FEATURES, TARGET, sex_labels
from calapi.serving.predlog import REDIS_SCHEMES
from calapi.serving.predlog.base import Answered, LogUnavailableError, PredictionLog

COLUMNS: Final = ("id", "predicted_at", "answered_at", "model_version", *FEATURES, "predicted",
                  TARGET)  # fmt: skip


def read_labelled(
    log: PredictionLog | str, since_seconds: float | None, *, now: float | None = None
) -> pd.DataFrame:
    """The answered predictions made in the last ``since_seconds`` (None: all the log keeps),
    sorted by prediction time, as ``COLUMNS``; LogUnavailableError when it cannot be read."""
    since = None if since_seconds is None else (time.time() if now is None else now) - since_seconds
    rows = read_location(log, since) if isinstance(log, str) else log.answered(since)
    return labelled_frame(rows)


def read_location(location: str, since: float | None) -> list[Answered]:
    """The answered rows of the log at ``location``, read without opening it for writing."""
    if location.startswith(REDIS_SCHEMES):
        from calapi.serving.predlog.redis import read_answered_at

        return read_answered_at(location, since)
    from calapi.serving.predlog.sqlite import read_answered

    return read_answered(Path(location.removeprefix("sqlite:///")), since)


def labelled_frame(rows: list[Answered]) -> pd.DataFrame:
    """Stored rows as ``COLUMNS``: features decoded from their ``<f8`` bytes, Sex as text."""
    raw = np.frombuffer(b"".join(row.features for row in rows), dtype="<f8")
    raw = raw.reshape(len(rows), len(FEATURES)).astype(np.float64)
    frame = pd.DataFrame(
        {
            "id": pd.Series([row.key for row in rows], dtype=str),
            "predicted_at": np.array([row.at for row in rows], dtype=np.float64),
            "answered_at": np.array([row.answered_at for row in rows], dtype=np.float64),
            "model_version": pd.Series([row.version for row in rows], dtype=str),
            "Sex": pd.Series(sex_labels(raw[:, 0]), dtype=str),
        }
    )
    for index, name in enumerate(NUMERIC_FEATURES, start=1):
        frame[name] = raw[:, index]
    frame["predicted"] = np.array([row.predicted for row in rows], dtype=np.float64)
    frame[TARGET] = np.array([row.actual for row in rows], dtype=np.float64)
    return frame[list(COLUMNS)]


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m calapi.serving.predlog.labelled",
        description="Write the answered predictions of a prediction log as CSV on stdout.",
    )
    parser.add_argument(
        "--since", type=float, default=None, metavar="SECONDS",
        help="only predictions made in the last SECONDS (default: all the log keeps)",
    )  # fmt: skip
    parser.add_argument(
        "--log", default=None, metavar="LOCATION",
        help="SQLite path or redis:// URL (default: CALOPS_PREDICTION_LOG, as the API reads it)",
    )  # fmt: skip
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Write the CSV; one sentence on stderr and exit 1 when the log cannot be read."""
    arguments = _arguments(argv)
    if arguments.log is None:
        from calapi.serving.settings import ApiSettings

        arguments.log = ApiSettings().prediction_log
    try:
        frame = read_labelled(arguments.log, arguments.since)
    except LogUnavailableError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    frame.to_csv(sys.stdout, index=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
