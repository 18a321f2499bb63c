"""Live drift: how far recent inputs and predictions have moved from the training data.

The model card holds a reference distribution per feature and for the prediction
(``reference``: inner decile edges and the fraction of training rows per bin, see the
card's ``reference_binning``) and the share of male rows. Served rows are binned with
the same edges and the Population Stability Index compares the two:

    PSI = sum over bins of (actual - expected) * ln(actual / expected)

with both fractions floored at ``PSI_EPSILON`` so an empty bin counts as very unlikely,
not impossible. Read it as < 0.1 stable, 0.1-0.25 moving, > 0.25 shifted.

The window is time-based, like the rolling RMSLE: the last ``window_seconds`` (300 s by
default) in ``SLOTS`` steps. Each step keeps bin counts only, so memory is fixed
(slots x columns x bins integers, plus at most FLUSH_ROWS queued rows) whatever the
traffic. The predict worker only queues each micro-batch; binning happens for many
batches at once, at scrape time. A row leaves the window between
``window_seconds - step`` and ``window_seconds`` after it arrived.

With n rows, identical distributions still give a PSI of about (bins - 1) / n from
sampling alone (~0.045 for 10 bins and 200 rows), so the PSI is NaN until the window
holds ``min_rows`` rows.

Rows are added on the predict worker thread and read at scrape time on the event loop,
so the queue and the counts sit behind one lock.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from calapi.model.features import FEATURES, FloatArray

Clock = Callable[[], float]
IntArray = npt.NDArray[np.intp]

PREDICTION: Final = "prediction"
SEX: Final = "Sex"
PSI_EPSILON: Final = 1e-4
SLOTS: Final = 30
DEFAULT_MIN_ROWS: Final = 200
FLUSH_ROWS: Final = 4096
_NEVER: Final = -(2**62)


@dataclass(frozen=True)
class Reference:
    """The card's reference bins, laid out for binning many columns in one numpy call.

    ``names`` are the tracked columns (features in FEATURES order, then the prediction);
    ``edges`` holds each column's inner edges padded with +inf and ``expected`` its
    fractions per bin padded with 0, so padded bins never receive a row and add 0 to PSI.
    Sex is a two-bin column (female, male) with an edge at 0.5.
    """

    names: tuple[str, ...]
    raw_columns: IntArray
    edges: FloatArray
    expected: FloatArray
    male_share: float | None

    @property
    def tracks_prediction(self) -> bool:
        """True when the prediction is one of the columns (always the last)."""
        return bool(self.names) and self.names[-1] == PREDICTION

    def values(self, raw: FloatArray, predictions: FloatArray) -> FloatArray:
        """The tracked columns of raw rows (laid out as FEATURES) and their predictions."""
        picked = raw[:, self.raw_columns]
        if not self.tracks_prediction:
            return picked
        return np.concatenate((picked, predictions.reshape(-1, 1)), axis=1)

    def bins(self, values: FloatArray) -> IntArray:
        """Each value's bin per column, as the trainer's searchsorted(edges, side="right")."""
        # +inf padding is never <= a value, so padded edges leave the bin index alone.
        columns = [
            np.searchsorted(edges, values[:, index], side="right")
            for index, edges in enumerate(self.edges)
        ]
        result: IntArray = np.column_stack(columns)
        return result


def reference_from_card(card: Mapping[str, Any] | None) -> Reference | None:
    """The drift reference in a model card, or None when it has none (or a broken one)."""
    try:
        section = (card or {})["reference"]
        columns = _reference_columns(section)
    except (KeyError, TypeError, ValueError, AttributeError):
        return None
    if not columns:
        return None
    names = tuple(name for name, _, _ in columns)
    width = max(len(fractions) for _, _, fractions in columns)
    edges = np.full((len(columns), width - 1), np.inf)
    expected = np.zeros((len(columns), width))
    for index, (_, inner, fractions) in enumerate(columns):
        edges[index, : len(inner)] = inner
        expected[index, : len(fractions)] = fractions
    raw_columns = np.array([FEATURES.index(n) for n in names if n != PREDICTION], dtype=np.intp)
    return Reference(names, raw_columns, edges, expected, _male_share(section))


def _reference_columns(section: Mapping[str, Any]) -> list[tuple[str, list[float], list[float]]]:
    columns: list[tuple[str, list[float], list[float]]] = []
    male = _male_share(section)
    if male is not None:
        columns.append((SEX, [0.5], [1.0 - male, male]))
    for name in (*FEATURES[1:], PREDICTION):
        entry = section.get(name)
        if entry is None:
            continue
        inner = [float(edge) for edge in entry["edges"]]
        fractions = [float(share) for share in entry["fractions"]]
        if len(fractions) != len(inner) + 1 or inner != sorted(inner):
            raise ValueError(f"reference {name} is not laid out as the card's binning says")
        columns.append((name, inner, fractions))
    return columns


def _male_share(section: Mapping[str, Any]) -> float | None:
    sex = section.get(SEX)
    if not isinstance(sex, Mapping) or "male" not in sex:
        return None
    share = float(sex["male"])
    return share if 0.0 <= share <= 1.0 else None


def psi(observed: npt.NDArray[np.integer[Any]], expected: FloatArray) -> FloatArray:
    """PSI per row of ``observed`` counts (columns x bins) against ``expected`` fractions."""
    rows = observed.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        actual = np.maximum(observed / rows, PSI_EPSILON)
    floor = np.maximum(expected, PSI_EPSILON)
    result: FloatArray = ((actual - floor) * np.log(actual / floor)).sum(axis=1)
    return result


@dataclass(frozen=True, slots=True)
class DriftSnapshot:
    """The drift in the window now: PSI per column (NaN below min_rows) and the male share."""

    window_seconds: float
    min_rows: int
    rows: int
    psi: dict[str, float]
    male_share: float | None
    reference_male_share: float | None

    def as_dict(self) -> dict[str, Any]:
        """For /info: NaN becomes None (JSON null)."""
        return {
            "window_seconds": self.window_seconds,
            "min_rows": self.min_rows,
            "rows": self.rows,
            "psi": {name: _finite_or_none(value) for name, value in self.psi.items()},
            "male_share": {
                "window": _finite_or_none(self.male_share),
                "reference": self.reference_male_share,
            },
        }


def _finite_or_none(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


class DriftWindow:
    """Bin counts of the rows seen in the last ``window_seconds``, in SLOTS time steps.

    ``add`` only queues the batch with its arrival time (the predict worker pays a list
    append); the queue is binned in one vectorised pass at the next snapshot (scrape) or
    once it holds FLUSH_ROWS rows, which also bounds its memory.
    """

    def __init__(
        self,
        reference: Reference,
        window_seconds: float = 300.0,
        *,
        min_rows: int = DEFAULT_MIN_ROWS,
        clock: Clock = time.monotonic,
    ) -> None:
        self.reference = reference
        self.window_seconds = window_seconds
        self.min_rows = max(min_rows, 1)
        self._step = window_seconds / SLOTS
        self._clock = clock
        self._counts = np.zeros((SLOTS, reference.expected.size), dtype=np.int64)
        self._epochs = [_NEVER] * SLOTS
        self._queue: list[tuple[float, FloatArray, FloatArray]] = []
        self._queued_rows = 0
        self._lock = threading.Lock()

    def add(self, raw: FloatArray, predictions: FloatArray) -> None:
        """Count a batch of served rows (raw laid out as FEATURES) and their predictions."""
        with self._lock:
            self._queue.append((self._clock(), raw, predictions))
            self._queued_rows += len(raw)
            if self._queued_rows >= FLUSH_ROWS:
                self._flush()

    def snapshot(self) -> DriftSnapshot:
        """PSI per column and the male share over the rows still in the window."""
        with self._lock:
            self._flush()
            now = self._epoch(self._clock())
            live = [slot for slot, epoch in enumerate(self._epochs) if epoch > now - SLOTS]
            total = self._counts[live].sum(axis=0)
        return self._describe(total.reshape(self.reference.expected.shape))

    def _describe(self, observed: npt.NDArray[np.int64]) -> DriftSnapshot:
        reference = self.reference
        rows = int(observed[0].sum())
        if rows >= self.min_rows:
            values = psi(observed, reference.expected)
        else:
            values = np.full(len(reference.names), np.nan)
        male = float(observed[0, 1] / rows) if rows and reference.names[0] == SEX else None
        return DriftSnapshot(
            window_seconds=self.window_seconds,
            min_rows=self.min_rows,
            rows=rows,
            psi=dict(zip(reference.names, values.tolist(), strict=True)),
            male_share=male,
            reference_male_share=reference.male_share,
        )

    def _flush(self) -> None:
        """Bin the queued batches into their time slots; batches already too old are dropped."""
        queue, self._queue, self._queued_rows = self._queue, [], 0
        oldest = self._epoch(self._clock()) - SLOTS + 1
        kept = [(self._epoch(at), raw, kcal) for at, raw, kcal in queue]
        kept = [entry for entry in kept if entry[0] >= oldest and len(entry[1])]
        if not kept:
            return
        for epoch in {entry[0] for entry in kept}:
            slot = epoch % SLOTS
            if self._epochs[slot] != epoch:
                self._epochs[slot] = epoch
                self._counts[slot] = 0
        raw = np.concatenate([entry[1] for entry in kept])
        kcal = np.concatenate([entry[2].reshape(-1) for entry in kept])
        slots = np.repeat([entry[0] % SLOTS for entry in kept], [len(entry[1]) for entry in kept])
        self._counts += self._slot_counts(slots, self.reference.values(raw, kcal))

    def _slot_counts(self, slots: IntArray, values: FloatArray) -> npt.NDArray[np.int64]:
        size = self.reference.expected.size
        width = self.reference.expected.shape[1]
        cells = self.reference.bins(values) + np.arange(len(self.reference.names)) * width
        flat = (cells + (slots * size)[:, None]).ravel()
        counts: npt.NDArray[np.int64] = np.bincount(flat, minlength=SLOTS * size)
        return counts.reshape(SLOTS, size)

    def _epoch(self, at: float) -> int:
        return math.floor(at / self._step)


class DriftMonitor:
    """The drift window of the model answering now; a new model starts a fresh one."""

    def __init__(
        self,
        window_seconds: float = 300.0,
        *,
        min_rows: int = DEFAULT_MIN_ROWS,
        clock: Clock = time.monotonic,
    ) -> None:
        self._window_seconds = window_seconds
        self._min_rows = min_rows
        self._clock = clock
        # (model, window) in one attribute: the worker thread reads both at once.
        self._current: tuple[object, DriftWindow | None] = (None, None)

    def reset(self, model: object, card: Mapping[str, Any] | None) -> None:
        """Track ``model`` from now on, against its card's reference (none: no drift)."""
        reference = reference_from_card(card)
        window = None
        if reference is not None:
            window = DriftWindow(
                reference, self._window_seconds, min_rows=self._min_rows, clock=self._clock
            )
        self._current = (model, window)

    def observe(self, model: object, raw: FloatArray, predictions: FloatArray) -> None:
        """Count rows predicted by ``model``; rows of a model already swapped out are ignored."""
        tracked, window = self._current
        if window is not None and tracked is model:
            window.add(raw, predictions)

    def snapshot(self) -> DriftSnapshot | None:
        """The current drift, or None when the model has no reference to compare with."""
        window = self._current[1]
        return None if window is None else window.snapshot()
