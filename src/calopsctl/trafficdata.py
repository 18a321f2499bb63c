"""Labelled traffic of the running stack (or of a given prediction log) as a DataFrame.

The local runtime's log is the SQLite file ``<home>/predictions.db``, read here directly. The
Docker stack's log lives in its ``redis`` service, reachable only on the compose network, so
an ``api`` container reads it (``python -m calapi.serving.predlog.labelled``) and hands the
CSV back.
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Final

from calapi.errors import CalopsError
from calopsctl.runtime.local import PREDICTION_LOG
from calopsctl.services import API
from calopsctl.state import load_state

if TYPE_CHECKING:
    import pandas as pd

LABELLED_MODULE: Final = "calapi.serving.predlog.labelled"
UNIT_SECONDS: Final = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86_400.0}
_DURATION: Final = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*([smhd]?)")


def parse_duration(text: str) -> float:
    """Seconds in ``90s``, ``30m``, ``1h``, ``2d`` or a bare number of seconds; ValueError
    with the accepted forms otherwise."""
    found = _DURATION.fullmatch(text.strip().lower())
    seconds = float(found[1]) * UNIT_SECONDS[found[2] or "s"] if found else math.nan
    if not 0 < seconds < math.inf:
        raise ValueError(f"{text!r} is not a duration above 0; use e.g. 90s, 30m, 1h or 2d")
    return seconds


def labelled_traffic(
    home: Path, since_seconds: float | None, log: str | None = None, *,
    compose_files: Sequence[Path] | None = None,
) -> pd.DataFrame:  # fmt: skip
    """The answered predictions made in the last ``since_seconds`` (None: all kept), from
    ``log`` when given, else from the stack recorded in ``home``; CalopsError when none can
    be read. ``compose_files``: the Docker stack's overrides (default CALOPS_COMPOSE_FILES)."""
    if log is not None:
        return _read(log, since_seconds)
    state = load_state(home)
    if state is not None and state.runtime == "docker":
        return _from_docker(home, since_seconds, compose_files)
    default = home / PREDICTION_LOG
    if state is None and not default.is_file():
        raise CalopsError(
            f"No stack was started from {home} and it holds no prediction log; run "
            "`calops up` (or `calops serve`) and send traffic, or pass --log LOCATION."
        )
    return _read(str(default), since_seconds)


def _read(location: str, since_seconds: float | None) -> pd.DataFrame:
    from calapi.serving.predlog.base import LogUnavailableError
    from calapi.serving.predlog.labelled import read_labelled

    try:
        return read_labelled(location, since_seconds)
    except LogUnavailableError as exc:
        raise CalopsError(str(exc)) from None


def _from_docker(
    home: Path, since_seconds: float | None, compose_files: Sequence[Path] | None
) -> pd.DataFrame:
    import pandas as pd
    from python_on_whales.exceptions import DockerException

    from calopsctl.runtime.docker import DockerRuntime

    if compose_files is None:
        from calopsctl.settings import CliSettings, build

        compose_files = build(CliSettings).compose_files
    argv = ["python", "-m", LABELLED_MODULE]
    if since_seconds is not None:
        argv += ["--since", repr(float(since_seconds))]
    runtime = DockerRuntime(home, overrides=compose_files)
    try:
        text = runtime.client.compose.execute(API.name, argv, tty=False)
    except DockerException as exc:
        lines = (exc.stderr or str(exc)).strip().splitlines()
        reason = lines[-1].removeprefix("Error: ") if lines else "no output"
        raise CalopsError(
            f"The Docker stack's API could not read its prediction log: {reason}"
        ) from None
    from calapi.serving.predlog.labelled import COLUMNS

    return pd.read_csv(
        io.StringIO(text or ",".join(COLUMNS)), dtype={"id": str, "model_version": str, "Sex": str}
    )


def export_csv(frame: pd.DataFrame, out: Path, *, since: str | None, all_columns: bool) -> str:
    """Write the rows in the trainer's layout (``-``: stdout); what was written, in a line."""
    import sys
    from datetime import UTC, datetime

    from calapi.model.features import FEATURES, TARGET

    if frame.empty:
        window = f"in the last {since}" if since else "in the prediction log"
        raise CalopsError(
            f"No labelled predictions {window}; send traffic with feedback (`calops simulate`) "
            "or widen --since, then export again."
        )
    columns = ["id", *FEATURES, TARGET]
    if all_columns:
        columns += [name for name in frame.columns if name not in columns]
    try:
        frame[columns].to_csv(sys.stdout if str(out) == "-" else out, index=False)
    except OSError as exc:
        raise CalopsError(
            f"Cannot write {out} ({exc.strerror or exc}); check that its folder exists and is "
            "writable."
        ) from None
    first, last = (
        datetime.fromtimestamp(float(moment), UTC).isoformat(timespec="seconds")
        for moment in (frame["predicted_at"].min(), frame["predicted_at"].max())
    )
    return f"Wrote {len(frame)} labelled rows (predicted {first} to {last}) to {out}."
