"""Progress while the run goes (rich Live on a terminal, plain lines otherwise) and the summary."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Protocol

from calopsctl.simulator.stats import RATE_NEEDS_SENDS, Stats

if TYPE_CHECKING:
    from rich.console import Console
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


def snapshot(stats: Stats, elapsed: float, planned_s: float, rate: float | None) -> Snapshot:
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
    )


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
        self.console.print(
            f"[{snap.elapsed:6.1f}s] sent {snap.sent} ok {snap.ok} errors {snap.errors} "
            f"rate {_num(snap.rate, '.1f')}/s p95 {_num(snap.p95_ms, '.1f')} ms "
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
        self._live.update(_table(snap), refresh=True)

    def stop(self) -> None:
        self._live.stop()


def _table(snap: Snapshot) -> Table:
    from rich.table import Table

    table = Table(title="calops simulate", show_header=True, header_style="bold")
    for column in ("elapsed", "sent", "ok", "errors", "rate/s", "p95 ms", "RMSLE", "RMSLE 30s"):
        table.add_column(column, justify="right")
    table.add_column("feedback", justify="right")
    table.add_row(
        f"{snap.elapsed:.0f}/{snap.planned_s:.0f}s",
        str(snap.sent),
        f"[green]{snap.ok}[/]",
        f"[red]{snap.errors}[/]" if snap.errors else "0",
        _num(snap.rate, ".1f"),
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
