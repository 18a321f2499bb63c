"""Progress while the run goes (rich Live on a terminal, plain lines otherwise) and the summary."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Protocol

from calopsctl.simulator.stats import RATE_NEEDS_SENDS, Stats

if TYPE_CHECKING:
    from rich.console import Console, Group
    from rich.live import Live
    from rich.table import Table

LIVE_INTERVAL_S: Final = 0.25
PLAIN_INTERVAL_S: Final = 5.0
RATE_WINDOW_S: Final = 2.0


@dataclass(frozen=True)
class Snapshot:
    """What the progress shows at one moment."""

    elapsed: float
    planned_s: float
    sent: int
    ok: int
    errors: int
    rate: float | None
    p95_ms: float | None
    rmsle: float | None
    rmsle_recent: float | None
    feedback_ok: int
    feedback_left: int | None = None  # set once sending is over: truths still to go back

    @property
    def draining(self) -> bool:
        """Sending is over; the run waits for the last answers and feedback."""
        return self.feedback_left is not None

    @property
    def progress(self) -> str:
        """``23/40s``; once sending is over ``40/40s sent · draining feedback, 12 left``.

        The drain can outlast the planned seconds; the clock stops at them rather than read
        45/40s, and the rate is said to be done rather than shown as a stalled 0.0.
        """
        if self.feedback_left is None:
            return f"{self.elapsed:.0f}/{self.planned_s:.0f}s"
        sent = f"{min(self.elapsed, self.planned_s):.0f}/{self.planned_s:.0f}s sent"
        if not self.feedback_left:
            return f"{sent} · no feedback left"
        return f"{sent} · draining feedback, {self.feedback_left} left"

    @property
    def rate_text(self) -> str:
        """Requests per second, or ``done`` once sending is over."""
        return "done" if self.draining else _num(self.rate, ".1f")


class RateMeter:
    """Current send rate over the last ``RATE_WINDOW_S`` seconds."""

    def __init__(self) -> None:
        self._points: deque[tuple[float, int]] = deque()

    def __call__(self, now: float, sent: int) -> float | None:
        self._points.append((now, sent))
        while len(self._points) > RATE_NEEDS_SENDS and self._points[1][0] <= now - RATE_WINDOW_S:
            self._points.popleft()
        then, before = self._points[0]
        return (sent - before) / (now - then) if now > then else None


def snapshot(
    stats: Stats,
    elapsed: float,
    planned_s: float,
    rate: float | None,
    feedback_left: int | None = None,
) -> Snapshot:
    """What to show now; ``feedback_left`` only once sending is over (the drain)."""
    return Snapshot(
        elapsed=elapsed,
        planned_s=planned_s,
        sent=stats.sent,
        ok=stats.ok,
        errors=stats.errors,
        rate=rate,
        p95_ms=stats.recent_p95_ms(),
        rmsle=stats.accuracy.value,
        rmsle_recent=stats.accuracy.recent_value,
        feedback_ok=stats.feedback.ok,
        feedback_left=feedback_left,
    )


def announce(console: Console, text: str) -> None:
    """The run's opening lines; a terminal gets them wrapped between words, a pipe whole.

    The console soft-wraps (no line breaks of its own, for logs), which on a terminal lets the
    terminal break a long line mid-word.
    """
    console.print(text, markup=False, highlight=False, soft_wrap=not console.is_terminal)


class View(Protocol):
    """Shows progress; ``interval`` is how often ``show`` is called."""

    interval: float

    def start(self) -> None: ...

    def show(self, snap: Snapshot) -> None: ...

    def stop(self) -> None: ...


class QuietView:
    """No progress (``--json``)."""

    interval = PLAIN_INTERVAL_S

    def start(self) -> None:
        pass

    def show(self, snap: Snapshot) -> None:
        pass

    def stop(self) -> None:
        pass


class PlainView:
    """One line every few seconds, for logs and pipes."""

    interval = PLAIN_INTERVAL_S

    def __init__(self, console: Console) -> None:
        self.console = console

    def start(self) -> None:
        pass

    def show(self, snap: Snapshot) -> None:
        rate = "rate done" if snap.draining else f"rate {snap.rate_text}/s"
        self.console.print(
            f"[{snap.progress}] sent {snap.sent} ok {snap.ok} errors {snap.errors} "
            f"{rate} p95 {_num(snap.p95_ms, '.1f')} ms "
            f"rmsle {_num(snap.rmsle, '.4f')} (30s {_num(snap.rmsle_recent, '.4f')}) "
            f"feedback {snap.feedback_ok}",
            markup=False,
            highlight=False,
        )

    def stop(self) -> None:
        pass


class LiveView:
    """A table redrawn in place about four times a second."""

    interval = LIVE_INTERVAL_S

    def __init__(self, console: Console) -> None:
        from rich.live import Live

        self._live: Live = Live(console=console, auto_refresh=False, transient=False)

    def start(self) -> None:
        self._live.start()

    def show(self, snap: Snapshot) -> None:
        self._live.update(frame(snap), refresh=True)

    def stop(self) -> None:
        self._live.stop()


def frame(snap: Snapshot) -> Group:
    """One live frame: a line saying where the run is, then the counters' table.

    Narrow enough for an 80-column terminal: the progress is a line of its own (it grows
    while draining), headers are short words that may stack, and there is no outer border.
    """
    from rich.console import Group
    from rich.text import Text

    return Group(Text(f"calops simulate · {snap.progress}", style="bold"), _table(snap))


def _table(snap: Snapshot) -> Table:
    from rich import box
    from rich.table import Table

    table = Table(box=box.SIMPLE_HEAD, show_edge=False, header_style="bold")
    for column in ("sent", "ok", "errors", "rate/s", "p95 ms", "RMSLE", "RMSLE 30s", "feedback"):
        table.add_column(column, justify="right")
    table.add_row(
        str(snap.sent),
        f"[green]{snap.ok}[/]",
        f"[red]{snap.errors}[/]" if snap.errors else "0",
        snap.rate_text,
        _num(snap.p95_ms, ".1f"),
        _num(snap.rmsle, ".4f"),
        _num(snap.rmsle_recent, ".4f"),
        str(snap.feedback_ok),
    )
    return table


def print_summary(console: Console, report: dict[str, Any]) -> None:
    """The end-of-run report as aligned ``name: value`` lines (rich or plain alike)."""
    latency = report["latency_ms"]
    feedback = report["feedback"]
    state = "interrupted" if report["interrupted"] else "done"
    state = "stopped (the API went away)" if report["api_gone"] else state
    lines = [
        ("run", f"{state} after {report['elapsed_s']:.1f}s against {report['url']}"),
        ("rows", f"{report['rows_source']}, drift {report['drift']}, batch {report['batch_size']}"),
        ("sent", f"{report['sent']} of {report['planned']} planned"),
        ("ok", str(report["ok"])),
        ("errors", _errors(report)),
        ("rate", f"{_num(report['achieved_rps'], '.1f')}/s (target {report['target_rps']:g}/s)"),
        ("latency", _latency(latency)),
        ("feedback", _feedback(feedback)),
        (
            "rmsle",
            f"{_num(report['rmsle'], '.4f')} (rows fed back: "
            f"{_num(report['rmsle_feedback'], '.4f')})",
        ),
    ]
    width = max(len(name) for name, _ in lines)
    for name, value in lines:
        console.print(f"{name:>{width}}: {value}", markup=False, highlight=False)


def _errors(report: dict[str, Any]) -> str:
    return (
        f"4xx {report['status_4xx']}, 5xx {report['status_5xx']}, "
        f"connection {report['connection_errors']}, timeouts {report['timeouts']}, "
        f"late {report['late']}, skipped {report['skipped']}"
    )


def _latency(latency: dict[str, float | None]) -> str:
    return " ".join(f"{k} {_num(latency[k], '.1f')}" for k in ("p50", "p95", "p99")) + " ms"


def _feedback(feedback: dict[str, int]) -> str:
    return (
        f"{feedback['sent']} sent, {feedback['ok']} ok, {feedback['not_found']} unknown id, "
        f"{feedback['conflict']} already answered, {feedback['errors']} errors, "
        f"{feedback['dropped']} dropped"
    )


def _num(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)
