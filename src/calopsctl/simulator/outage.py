"""When the API counts as gone: connection failures with no HTTP answer for a whole window.

Only failures to get any answer count (refused, reset, closed before an answer); an HTTP
status, even a 5xx, proves something still answers. A gateway in front of replicas answers
for a replica that restarts (it retries on another one or says 503), and a single process
that restarts listens again within a second or two, so a window of a few seconds rides
over such blips while a dead API stops the run soon after it died.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

GONE_AFTER_S: Final = 3.0
GONE_AFTER_FAILURES: Final = 3


@dataclass
class Outage:
    """Consecutive connection failures since the last HTTP answer."""

    window: float = GONE_AFTER_S
    min_failures: int = GONE_AFTER_FAILURES
    since: float | None = None
    failures: int = 0
    reason: str = ""

    def answered(self) -> None:
        """An HTTP answer came back: whatever failed before was a blip."""
        self.since = None
        self.failures = 0

    def failed(self, now: float, reason: str) -> bool:
        """Count one failure; True once failures have lasted the whole window."""
        self.since = now if self.since is None else self.since
        self.failures += 1
        self.reason = reason
        return self.failures >= self.min_failures and now - self.since >= self.window
