"""What a simulation run is asked to do, built once by the command and passed around.

The bounds of each number are checked where the values come in (the ``calops simulate``
options), so this module names no command-line flag.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from calopsctl.simulator.outage import GONE_AFTER_S

DEFAULT_DURATION_S = 60.0
# Feedback arrives at delay x U(1 - JITTER, 1 + JITTER): real labels never come in lockstep.
FEEDBACK_JITTER = 0.1
# The drift ramps from no shift to full strength over this fraction of the remaining run.
DRIFT_RAMP_FRACTION = 0.5
DEFAULT_DRIFT_START_FRACTION = 0.25


class DriftKind(StrEnum):
    """How the traffic changes over the run."""

    NONE = "none"
    COVARIATE = "covariate"  # the inputs move (heavier, longer, harder sessions)
    CONCEPT = "concept"  # same inputs, more calories burnt
    BOTH = "both"

    @property
    def covariate(self) -> bool:
        return self in (DriftKind.COVARIATE, DriftKind.BOTH)

    @property
    def concept(self) -> bool:
        return self in (DriftKind.CONCEPT, DriftKind.BOTH)


@dataclass(frozen=True)
class SimulationSettings:
    """One run: target, rate, length, feedback, rows and drift."""

    url: str
    rps: float = 20.0
    duration: float | None = None
    count: int | None = None
    feedback_delay: float = 5.0
    feedback_fraction: float = 1.0
    data: Path | None = None
    drift: DriftKind = DriftKind.NONE
    drift_start: float | None = None
    drift_ramp: float | None = None  # seconds from start to full strength; None: half the rest
    seed: int = 0
    batch_size: int = 1
    max_in_flight: int = 128
    timeout: float = 10.0
    gone_after: float = GONE_AFTER_S  # connection failures this long, no answer: the API is gone

    @property
    def requests(self) -> int:
        """How many /predict requests the run plans to send."""
        if self.count is not None:
            return self.count
        return max(1, math.ceil(self.rps * (self.duration or DEFAULT_DURATION_S)))

    @property
    def planned_seconds(self) -> float:
        """Length of the sending phase when the schedule is kept."""
        return self.requests / self.rps

    @property
    def drift_start_s(self) -> float:
        if self.drift_start is not None:
            return self.drift_start
        return DEFAULT_DRIFT_START_FRACTION * self.planned_seconds

    @property
    def drift_full_s(self) -> float:
        """When the drift reaches full strength."""
        if self.drift_ramp is not None:
            return self.drift_start_s + self.drift_ramp
        remaining = max(self.planned_seconds - self.drift_start_s, 0.0)
        return self.drift_start_s + DRIFT_RAMP_FRACTION * remaining

    @property
    def feedback_wait_s(self) -> float:
        """Longest wait for a feedback after its prediction answered."""
        return self.feedback_delay * (1.0 + FEEDBACK_JITTER)
