"""Truth waiting to be sent back: a heap ordered by due time."""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field


@dataclass(order=True, frozen=True)
class PendingFeedback:
    """The truth for one predicted row, due at ``due`` (clock seconds)."""

    due: float
    row_id: str = field(compare=False)
    truth: float = field(compare=False)
    predicted: float = field(compare=False)


class FeedbackQueue:
    """Pending feedback in due order."""

    def __init__(self) -> None:
        self._heap: list[PendingFeedback] = []

    def __len__(self) -> int:
        return len(self._heap)

    def push(self, item: PendingFeedback) -> None:
        heapq.heappush(self._heap, item)

    def pop_due(self, now: float, limit: int) -> list[PendingFeedback]:
        """Up to ``limit`` items due at ``now`` or earlier, earliest first."""
        due: list[PendingFeedback] = []
        while self._heap and self._heap[0].due <= now and len(due) < limit:
            due.append(heapq.heappop(self._heap))
        return due

    def next_due(self) -> float | None:
        return self._heap[0].due if self._heap else None

    def clear(self) -> int:
        """Drop everything pending; return how many were dropped."""
        dropped = len(self._heap)
        self._heap.clear()
        return dropped
