"""The simulator's progress as a terminal shows it: fits the width, says when it drains."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
from rich.console import Console

from calopsctl.simulator.run import announcement
from calopsctl.simulator.settings import DriftKind, SimulationSettings
from calopsctl.simulator.view import PlainView, Snapshot, announce, frame

BOX_DRAWING = re.compile("[\u2500-\u257f]")

SENDING = Snapshot(
    elapsed=23.4,
    planned_s=40.0,
    sent=1_234_567,
    ok=1_234_560,
    errors=7,
    rate=1000.0,
    p95_ms=1234.5,
    rmsle=0.12345,
    rmsle_recent=0.23456,
    feedback_ok=1_100_000,
)
DRAINING = Snapshot(
    elapsed=45.2,
    planned_s=40.0,
    sent=800,
    ok=800,
    errors=0,
    rate=0.0,
    p95_ms=3.2,
    rmsle=0.05,
    rmsle_recent=0.06,
    feedback_ok=788,
    feedback_left=12,
)


def opening() -> str:
    """The announcement of a run with long names: drift, a CSV path, a fractional feedback."""
    settings = SimulationSettings(
        url="http://127.0.0.1:8000",
        duration=60.0,
        data=Path("/data/exercise.csv"),
        drift=DriftKind.COVARIATE,
        feedback_fraction=0.5,
    )
    return announcement(settings, "/home/someone/datasets/calories/exercise-2024.csv")


def rendered(width: int) -> list[str]:
    """What a terminal ``width`` columns wide shows: the announcement, then both live frames."""
    console = Console(width=width, force_terminal=True, color_system=None)
    with console.capture() as capture:
        announce(console, opening())
        console.print(frame(SENDING))
        console.print(frame(DRAINING))
    return capture.get().splitlines()


def words(text: str) -> set[str]:
    return set(BOX_DRAWING.sub(" ", text).split())


def expected_words() -> set[str]:
    """Every word the output may hold: the announcement's, and each frame's texts and cells."""
    headers = "calops simulate · sent ok errors rate/s p95 ms RMSLE 30s feedback done"
    cells = [SENDING.progress, DRAINING.progress, headers]
    for snap in (SENDING, DRAINING):
        numbers = [snap.sent, snap.ok, snap.errors, snap.feedback_ok, snap.rate_text]
        cells += [str(n) for n in numbers] + [f"{snap.p95_ms:.1f}"]
        cells += [f"{snap.rmsle:.4f}", f"{snap.rmsle_recent:.4f}"]
    return words(opening()) | words(" ".join(cells))


@pytest.mark.parametrize("width", [120, 80])
def test_live_output_fits_the_terminal_and_splits_no_word(width: int) -> None:
    """At 120 and 80 columns no line is wider than the terminal and every word stays whole."""
    lines = rendered(width)
    assert max(len(line) for line in lines) <= width
    output = "\n".join(lines)
    assert "…" not in output
    assert words(output) <= expected_words()


def test_announcement_says_what_goes_where_then_which_rows() -> None:
    """Two lines: length, rate and target with how to stop; then rows, drift and feedback."""
    first, second = opening().splitlines()
    assert first == "Sending 60s (1200 requests) at 20/s to http://127.0.0.1:8000; Ctrl-C stops."
    assert second.startswith("Rows: /home/someone/datasets/calories/exercise-2024.csv, ")
    assert second.endswith("covariate drift from 15s; feedback for 50% of rows after 5s.")


def test_drain_frame_stops_the_clock_and_says_what_is_left() -> None:
    """While feedback drains: 40/40s sent, how many truths are left, and the rate is done."""
    console = Console(width=80, force_terminal=True, color_system=None)
    with console.capture() as capture:
        console.print(frame(DRAINING))
    lines = capture.get().splitlines()
    assert lines[0] == "calops simulate · 40/40s sent · draining feedback, 12 left"
    header, _, row = lines[1:4]
    assert header.split()[3] == "rate/s"
    assert row.split()[3] == "done"
    assert "45/40s" not in capture.get()
    assert "0.0" not in row.split()


def test_last_frame_says_nothing_is_left() -> None:
    """When the drain is over the frame says so instead of a count of zero."""
    done = dataclasses.replace(DRAINING, feedback_left=0)
    assert done.progress == "40/40s sent · no feedback left"
    assert done.rate_text == "done"


def test_sending_frame_shows_the_clock_and_the_rate() -> None:
    """While sending: elapsed over planned seconds, and the measured rate."""
    assert SENDING.progress == "23/40s"
    assert SENDING.rate_text == "1000.0"
    assert not SENDING.draining


def test_plain_line_says_draining_instead_of_a_zero_rate() -> None:
    """The line logs get every few seconds also reads 'draining', never 'rate 0.0/s'."""
    console = Console(width=200, color_system=None)
    with console.capture() as capture:
        PlainView(console).show(DRAINING)
    line = capture.get().strip()
    assert line.startswith("[40/40s sent · draining feedback, 12 left] sent 800 ok 800")
    assert "rate done" in line
    assert "0.0/s" not in line
